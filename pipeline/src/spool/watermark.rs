//! The committed watermark: one small file saying "every record below this sequence number is
//! done", replaced atomically (write a temporary file, fsync it, rename it over, fsync the
//! directory).
//!
//! Format, 20 bytes: magic `IOMTWM01`, the watermark as u64 LE, CRC-32 of the first 16 bytes
//! as u32 LE.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use tracing::warn;

use super::segment::sync_dir;
use super::{SpoolError, SpoolOp};

/// The watermark's file name.
pub(crate) const FILE: &str = "committed";

/// The temporary file a new watermark is written to before the rename.
pub(crate) const TEMP: &str = "committed.tmp";

const MAGIC: [u8; 8] = *b"IOMTWM01";
const LEN: usize = 20;

fn encode(upto: u64) -> [u8; LEN] {
    let mut bytes = [0; LEN];
    bytes[..8].copy_from_slice(&MAGIC);
    bytes[8..16].copy_from_slice(&upto.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != LEN || bytes[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[16..].try_into().ok()?);
    if crc32fast::hash(&bytes[..16]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(bytes[8..16].try_into().ok()?))
}

/// Reads the watermark; `None` if there is none yet. An unreadable watermark is logged and
/// read as `None`: the spool then replays everything still on disk, which is safe, as
/// replays are harmless and loss is not.
pub(crate) fn read(dir: &Path) -> Result<Option<u64>, SpoolError> {
    let path = dir.join(FILE);
    let mut bytes = Vec::with_capacity(LEN);
    match File::open(&path) {
        Ok(file) => {
            // One byte more than a watermark, to notice a longer file without reading it all.
            file.take(LEN as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| SpoolError::io(SpoolOp::Read, &path, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io(SpoolOp::Open, &path, e)),
    }
    match decode(&bytes) {
        Some(upto) => Ok(Some(upto)),
        None => {
            warn!(
                path = %path.display(),
                "Spool watermark is damaged; replaying every record still on disk."
            );
            Ok(None)
        }
    }
}

/// Persists `upto` as the watermark. Returns the number of fsyncs done. On error the
/// previous watermark is still in place.
pub(crate) fn write(dir: &Path, upto: u64) -> Result<u64, SpoolError> {
    let temp = dir.join(TEMP);
    let result = File::create(&temp)
        .map_err(|e| SpoolError::io(SpoolOp::Create, &temp, e))
        .and_then(|mut file| {
            file.write_all(&encode(upto))
                .map_err(|e| SpoolError::io(SpoolOp::Write, &temp, e))?;
            file.sync_all()
                .map_err(|e| SpoolError::io(SpoolOp::Sync, &temp, e))
        })
        .and_then(|()| {
            let path = dir.join(FILE);
            fs::rename(&temp, &path).map_err(|e| SpoolError::io(SpoolOp::Rename, &path, e))
        });
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let bytes = encode(123_456);
        assert_eq!(decode(&bytes), Some(123_456));
        for at in 0..LEN {
            let mut damaged = bytes;
            damaged[at] ^= 0x80;
            assert_eq!(decode(&damaged), None, "byte {at}");
        }
        assert_eq!(decode(&bytes[..LEN - 1]), None);
        assert_eq!(decode(&[bytes.as_slice(), &[0]].concat()), None);
    }
}
