//! The spool directory's lock: `flock` on a `lock` file, held while a spool is open.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::{SpoolError, SpoolOp};

/// The lock file's name.
const LOCK_FILE: &str = "lock";

/// Attempts at taking the directory's lock, and the pause between them (half a second in
/// all) before `open` reports [`SpoolError::Locked`].
#[cfg(unix)]
const LOCK_ATTEMPTS: u32 = 20;
#[cfg(unix)]
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(25);

/// Opens and locks the directory's lock file (released when the file is closed).
pub(crate) fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| SpoolError::io(SpoolOp::Open, &path, e))?;
    #[cfg(unix)]
    {
        use rustix::fs::{flock, FlockOperation};
        // A lock can also be held for a moment by a child process of ours that has forked
        // but not yet exec'd (which closes its copy of the descriptor: it is close-on-exec).
        // So wait a little before concluding that another spool has the directory.
        let mut attempts = 0;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    attempts += 1;
                    if attempts == LOCK_ATTEMPTS {
                        return Err(SpoolError::Locked { path });
                    }
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(e) => return Err(SpoolError::io(SpoolOp::Lock, &path, e.into())),
            }
        }
    }
    Ok(file)
}
