//! Segment files: names, header, listing, the tail scan at open, and the forward search for
//! the next intact frame after a damaged one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::record::{frame_crc, payload_seq, plausible_len, read_frame, BadFrame, Frame};
use super::record::{FRAME_HEADER, MIN_PAYLOAD};
use super::{SpoolError, SpoolOp};

/// The first bytes of every segment: a magic and the format version (1).
pub(crate) const HEADER: [u8; 8] = *b"IOMTSP\x00\x01";

/// Length of [`HEADER`].
pub(crate) const HEADER_LEN: u64 = HEADER.len() as u64;

const PREFIX: &str = "segment-";
const SUFFIX: &str = ".log";

/// The file name of the segment whose first record has sequence number `first_seq`.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{PREFIX}{first_seq:020}{SUFFIX}")
}

/// The first sequence number of a segment, from its file name.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment file found on disk.
#[derive(Debug, Clone)]
pub(crate) struct SegmentFile {
    /// Sequence number of its first record (from its name).
    pub first_seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
}

/// The segments in `dir`, oldest first. Other files are left alone.
pub(crate) fn list(dir: &Path) -> Result<Vec<SegmentFile>, SpoolError> {
    let read_dir = |e| SpoolError::io(SpoolOp::ListDir, dir, e);
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir)? {
        let entry = entry.map_err(read_dir)?;
        let name = entry.file_name();
        let Some(first_seq) = name.to_str().and_then(parse_file_name) else {
            continue;
        };
        let path = entry.path();
        let len = entry
            .metadata()
            .map_err(|e| SpoolError::io(SpoolOp::Stat, &path, e))?
            .len();
        segments.push(SegmentFile {
            first_seq,
            path,
            len,
        });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// Creates (or empties) the segment starting at `first_seq` and writes its header. On
/// error the file is removed again, as far as possible.
pub(crate) fn create(dir: &Path, first_seq: u64) -> Result<(PathBuf, File), SpoolError> {
    let path = dir.join(file_name(first_seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| SpoolError::io(SpoolOp::Create, &path, e))?;
    if let Err(e) = (&file).write_all(&HEADER) {
        drop(file);
        let _ = fs::remove_file(&path);
        return Err(SpoolError::io(SpoolOp::Write, &path, e));
    }
    Ok((path, file))
}

/// `fsync` of a directory, so that files created or renamed in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| SpoolError::io(SpoolOp::SyncDir, dir, e))
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened for syncing here; the file system orders renames.
        let _ = dir;
        Ok(())
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub(crate) fn read_exact_at(mut file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Whether the segment's first bytes are [`HEADER`].
pub(crate) fn check_header<R: Read>(reader: &mut R) -> io::Result<bool> {
    let mut header = [0; HEADER_LEN as usize];
    reader.read_exact(&mut header)?;
    Ok(header == HEADER)
}

/// Bytes read per step of [`find_frame`].
const SCAN_WINDOW: usize = 64 * 1024;

/// Bytes a candidate frame start needs in view: its header and its sequence number.
const PEEK: usize = FRAME_HEADER as usize + 8;

/// Searches `[from, end)` of a segment for the first intact frame (plausible length, inside
/// the segment, sequence number in `seqs`, checksum right) and returns its offset and
/// sequence number. This is how replay gets past a damaged record without giving up the
/// records behind it; the sequence number check keeps it from taking a fragment for a frame.
pub(crate) fn find_frame(
    file: &File,
    from: u64,
    end: u64,
    seqs: Range<u64>,
) -> io::Result<Option<(u64, u64)>> {
    let mut window = vec![0; SCAN_WINDOW + PEEK];
    let mut base = from;
    while base.saturating_add(FRAME_HEADER + MIN_PAYLOAD) <= end {
        let n = (end - base).min(window.len() as u64) as usize;
        read_exact_at(file, base, &mut window[..n])?;
        // Offsets in this window with a whole peek in view; at least one, as n >= PEEK.
        let candidates = n + 1 - PEEK;
        for i in 0..candidates {
            let at = base + i as u64;
            let peek = &window[i..i + PEEK];
            let len_bytes = [peek[0], peek[1], peek[2], peek[3]];
            let len = u64::from(u32::from_le_bytes(len_bytes));
            if !plausible_len(len) || at + FRAME_HEADER + len > end {
                continue;
            }
            let Some(seq) = payload_seq(&peek[FRAME_HEADER as usize..]) else {
                continue;
            };
            if !seqs.contains(&seq) {
                continue;
            }
            let crc = u32::from_le_bytes([peek[4], peek[5], peek[6], peek[7]]);
            if crc_matches(file, at + FRAME_HEADER, len, len_bytes, crc)? {
                return Ok(Some((at, seq)));
            }
        }
        base += candidates as u64;
    }
    Ok(None)
}

/// Whether the `len` payload bytes at `offset` have checksum `crc`, read in steps so that a
/// large candidate costs no large allocation.
fn crc_matches(
    file: &File,
    offset: u64,
    len: u64,
    len_bytes: [u8; 4],
    crc: u32,
) -> io::Result<bool> {
    if len <= SCAN_WINDOW as u64 {
        let mut payload = vec![0; len as usize];
        read_exact_at(file, offset, &mut payload)?;
        return Ok(frame_crc(len_bytes, &payload) == crc);
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_bytes);
    let mut chunk = vec![0; SCAN_WINDOW];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(SCAN_WINDOW as u64) as usize;
        read_exact_at(file, offset + done, &mut chunk[..n])?;
        hasher.update(&chunk[..n]);
        done += n as u64;
    }
    Ok(hasher.finalize() == crc)
}

/// What the scan of the last segment at open found.
#[derive(Debug)]
pub(crate) struct TailScan {
    /// One past the highest sequence number found (the segment's first if none).
    pub next_seq: u64,
    /// The torn tail, if any: where it starts (the intact log ends there) and what is wrong.
    pub torn: Option<(u64, BadFrame)>,
    /// Damaged regions with intact frames behind them (reported again by the replay).
    pub damaged: Vec<(u64, BadFrame)>,
}

/// Scans the last segment (of `len` bytes, header already checked) to find where its intact
/// log ends. A damaged frame with no intact frame anywhere after it is a torn tail (a write
/// cut short by a crash); one followed by an intact frame is damage in the middle, which is
/// kept so the records behind it are not lost.
pub(crate) fn scan_tail(
    file: &File,
    path: &Path,
    first_seq: u64,
    len: u64,
) -> Result<TailScan, SpoolError> {
    let read = |e| SpoolError::io(SpoolOp::Read, path, e);
    let mut reader = BufReader::with_capacity(SCAN_WINDOW, file);
    reader.seek(SeekFrom::Start(HEADER_LEN)).map_err(read)?;
    let mut pos = HEADER_LEN;
    let mut next_seq = first_seq;
    let mut payload = Vec::new();
    let mut damaged = Vec::new();
    loop {
        let reason = match read_frame(&mut reader, len - pos, &mut payload).map_err(read)? {
            Frame::End => {
                return Ok(TailScan {
                    next_seq,
                    torn: None,
                    damaged,
                })
            }
            Frame::Valid => match payload_seq(&payload) {
                Some(seq) if seq >= next_seq => {
                    next_seq = seq.saturating_add(1);
                    pos += FRAME_HEADER + payload.len() as u64;
                    continue;
                }
                _ => "sequence number out of order",
            },
            Frame::Bad(reason) => reason,
        };
        match find_frame(file, pos + 1, len, next_seq..u64::MAX).map_err(read)? {
            Some((at, _)) => {
                damaged.push((pos, reason));
                pos = at;
                reader.seek(SeekFrom::Start(pos)).map_err(read)?;
            }
            None => {
                return Ok(TailScan {
                    next_seq,
                    torn: Some((pos, reason)),
                    damaged,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_sort() {
        assert_eq!(file_name(7), "segment-00000000000000000007.log");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        for other in [
            "committed",
            "lock",
            "segment-7.log",
            "segment-0000000000000000000x.log",
            "segment-00000000000000000007.log.tmp",
            "segment-99999999999999999999.log",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }
}
