//! One agent per deploy directory: an exclusive `flock` on `${directory}/.lock`.
//!
//! The kernel drops the lock when the holder dies, so a lock left by a `kill -9`ed agent never
//! blocks the next start; the file itself is left in place on purpose (unlinking it would
//! let two agents lock two different inodes).
//!
//! Almost never: a hook that the killed agent was spawning holds a copy of the lock's file
//! descriptor from `fork` until its `exec` closes it, some milliseconds on a loaded machine
//! (tests/it/crash.rs caught a restart in that window exiting 5). So a held lock is tried again
//! for [`GRACE`] before a start gives up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};
use thiserror::Error;

/// Held for as long as it lives.
#[derive(Debug)]
pub struct DeployLock {
    _file: File,
    path: PathBuf,
}

impl DeployLock {
    /// Where the lock lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why the lock could not be taken.
#[derive(Debug, Error)]
pub enum LockError {
    #[error("another repo-deploy holds the lock {0}; stop it, or use another --directory")]
    Held(PathBuf),
    #[error("cannot open the lock {0}: {1}")]
    Io(PathBuf, io::Error),
}

/// How long a held lock is tried again before [`acquire`] reports it held: far longer than a
/// fork-to-exec window, short enough that a second agent still exits 5 at once.
pub const GRACE: Duration = Duration::from_millis(500);

/// Take the lock of `directory` (created if missing), waiting at most [`GRACE`] for it.
pub fn acquire(directory: &Path) -> Result<DeployLock, LockError> {
    let path = directory.join(".lock");
    fs::create_dir_all(directory).map_err(|e| LockError::Io(path.clone(), e))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LockError::Io(path.clone(), e))?;
    let deadline = Instant::now() + GRACE;
    let mut locked = flock(&file, FlockOperation::NonBlockingLockExclusive);
    while locked == Err(rustix::io::Errno::WOULDBLOCK) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        locked = flock(&file, FlockOperation::NonBlockingLockExclusive);
    }
    match locked {
        Ok(()) => {
            // The holder's pid, so `rollback` can ask a running agent to do it.
            let _ = file
                .set_len(0)
                .and_then(|()| (&file).write_all(format!("{}\n", std::process::id()).as_bytes()));
            Ok(DeployLock { _file: file, path })
        }
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Held(path)),
        Err(e) => Err(LockError::Io(path, e.into())),
    }
}

/// The pid of the process holding the lock of `directory`, as it wrote it.
pub fn holder(directory: &Path) -> Option<i32> {
    fs::read_to_string(directory.join(".lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_drop_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = acquire(dir.path()).expect("first");
        assert_eq!(holder(dir.path()), Some(std::process::id() as i32));
        assert!(matches!(acquire(dir.path()), Err(LockError::Held(_))));
        drop(first);
        acquire(dir.path()).expect("free again");
    }
}
