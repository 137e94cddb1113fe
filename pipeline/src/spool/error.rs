//! The spool's errors.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The file operation an I/O error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolOp {
    /// Creating the spool directory.
    CreateDir,
    /// Listing the spool directory.
    ListDir,
    /// Reading a file's metadata.
    Stat,
    /// Locking the spool directory.
    Lock,
    /// Opening a file.
    Open,
    /// Creating a file.
    Create,
    /// Reading a file.
    Read,
    /// Writing a file.
    Write,
    /// Truncating a file.
    Truncate,
    /// Fsyncing a file.
    Sync,
    /// Fsyncing the spool directory.
    SyncDir,
    /// Renaming a file.
    Rename,
    /// Deleting a file.
    Remove,
}

impl fmt::Display for SpoolOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpoolOp::CreateDir => "create directory",
            SpoolOp::ListDir => "list directory",
            SpoolOp::Stat => "stat",
            SpoolOp::Lock => "lock",
            SpoolOp::Open => "open",
            SpoolOp::Create => "create",
            SpoolOp::Read => "read",
            SpoolOp::Write => "write",
            SpoolOp::Truncate => "truncate",
            SpoolOp::Sync => "fsync",
            SpoolOp::SyncDir => "fsync directory",
            SpoolOp::Rename => "rename to",
            SpoolOp::Remove => "delete",
        })
    }
}

/// What can go wrong in the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: SpoolOp,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another process (or another `Spool` in this one) has the directory open.
    #[error("spool directory is in use by another process (it holds the lock on {})", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The last segment is not a segment of this format version; appending to it is unsafe.
    #[error(
        "{} is not a spool segment of this version (bad header); move it out of the spool \
         directory to start",
        path.display()
    )]
    BadHeader {
        /// The segment file.
        path: PathBuf,
    },
    /// Records on disk are damaged and cannot be read back (reported by [`Replay`](super::Replay), which
    /// carries on after them).
    #[error(
        "damaged spool data in {} at byte {offset}: {reason}; records {}..{} are lost",
        path.display(),
        lost.start,
        lost.end
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damage in the file.
        offset: u64,
        /// What is wrong there.
        reason: &'static str,
        /// Sequence numbers of the records lost (never empty).
        lost: Range<u64>,
    },
    /// A record is too large to spool.
    #[error("spool record of {len} bytes is larger than the limit of {max} bytes")]
    RecordTooLarge {
        /// The record's encoded size (or a lower bound of it).
        len: u64,
        /// [`MAX_RECORD_BYTES`](super::MAX_RECORD_BYTES).
        max: u64,
    },
    /// `commit` was asked to cover sequence numbers not yet handed out.
    #[error("cannot commit below sequence number {upto}: the next one to be handed out is {next}")]
    CommitBeyondEnd {
        /// The watermark asked for.
        upto: u64,
        /// The next sequence number `append` would hand out.
        next: u64,
    },
    /// An fsync failed earlier; records since the last good sync may be gone, so the spool
    /// takes no more writes. Reopen it.
    #[error(
        "spool in {} failed an fsync earlier and takes no more writes; records appended since \
         the last successful sync must not be acknowledged; reopen the spool",
        path.display()
    )]
    Poisoned {
        /// The spool directory.
        path: PathBuf,
    },
    /// A record's properties could not be encoded.
    #[error("cannot encode spool record properties: {0}")]
    Encode(#[source] serde_json::Error),
}

impl SpoolError {
    pub(crate) fn io(op: SpoolOp, path: &Path, source: io::Error) -> SpoolError {
        SpoolError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether this is the file system running out of space (or quota): the caller should
    /// stop reading, let commits free space, and retry, rather than give up.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SpoolError::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull
                    || source.kind() == io::ErrorKind::QuotaExceeded
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_told_apart() {
        let io = |kind| SpoolError::io(SpoolOp::Write, Path::new("/s"), io::Error::from(kind));
        assert!(io(io::ErrorKind::StorageFull).is_disk_full());
        assert!(io(io::ErrorKind::QuotaExceeded).is_disk_full());
        assert!(!io(io::ErrorKind::PermissionDenied).is_disk_full());
        let enospc = SpoolError::io(
            SpoolOp::Write,
            Path::new("/s"),
            io::Error::from_raw_os_error(28),
        );
        assert_eq!(enospc.is_disk_full(), cfg!(target_os = "linux"));
        let message = io(io::ErrorKind::StorageFull).to_string();
        assert!(message.contains("cannot write /s"), "{message}");
    }
}
