//! One agent per deploy directory: an exclusive `flock` on `${directory}/.lock`.
//!
//! The kernel drops the lock when the holder dies, so a lock left by a `kill -9`ed agent never
//! blocks the next start; the file itself is left in place on purpose (unlinking it would
//! let two agents lock two different inodes). It holds nothing: who holds the lock is not
//! written anywhere, and `rollback` reaches a running daemon through its control socket
//! (`handover.rs`), never through a pid.
//!
//! Almost never: a hook that the killed agent was spawning holds a copy of the lock's file
//! descriptor from `fork` until its `exec` closes it, some milliseconds on a loaded machine
//! (tests/it/crash.rs caught a restart in that window exiting 5). So a held lock is tried again
//! for [`GRACE`] before a start gives up. That wait blocks a thread: async code calls
//! [`acquire_async`], which runs it on tokio's blocking pool, not on an async worker.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The pause between two tries of a held lock.
const STEP: Duration = Duration::from_millis(10);

/// Take the lock of `directory` (created if missing, owner-only), waiting at most [`GRACE`]
/// for it. Blocks the calling thread: from async code, use [`acquire_async`].
pub fn acquire(directory: &Path) -> Result<DeployLock, LockError> {
    let path = directory.join(".lock");
    fs::create_dir_all(directory).map_err(|e| LockError::Io(path.clone(), e))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| LockError::Io(path.clone(), e))?;
    let try_once = || match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Attempt::Taken(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Attempt::Busy,
        Err(e) => Attempt::Failed(e.into()),
    };
    match retry(GRACE, STEP, try_once, std::thread::sleep) {
        Attempt::Taken(()) => Ok(DeployLock { _file: file, path }),
        Attempt::Busy => Err(LockError::Held(path)),
        Attempt::Failed(e) => Err(LockError::Io(path, e)),
    }
}

/// [`acquire`] on tokio's blocking pool, so that its retries (and a slow `open`) never hold
/// up an async worker.
pub async fn acquire_async(directory: &Path) -> Result<DeployLock, LockError> {
    let dir = directory.to_path_buf();
    tokio::task::spawn_blocking(move || acquire(&dir))
        .await
        .unwrap_or_else(|e| {
            Err(LockError::Io(
                directory.join(".lock"),
                io::Error::other(format!("taking the lock panicked: {e}")),
            ))
        })
}

/// What one try at the lock found.
#[derive(Debug)]
enum Attempt<T> {
    Taken(T),
    /// Someone else holds it.
    Busy,
    Failed(io::Error),
}

/// Try `try_once` until it is not [`Attempt::Busy`], pausing `step` (with `sleep`) between
/// tries, for `grace` in all: at most `grace / step` pauses, so the deadline holds without a
/// clock, and a fake `sleep` makes the loop testable without time passing.
fn retry<T>(
    grace: Duration,
    step: Duration,
    mut try_once: impl FnMut() -> Attempt<T>,
    mut sleep: impl FnMut(Duration),
) -> Attempt<T> {
    let pauses = grace.as_millis() / step.as_millis().max(1);
    let mut attempt = try_once();
    for _ in 0..pauses {
        if !matches!(attempt, Attempt::Busy) {
            break;
        }
        sleep(step);
        attempt = try_once();
    }
    attempt
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock that is busy for the first `busy` tries, then taken.
    fn busy_for(busy: usize) -> impl FnMut() -> Attempt<usize> {
        let mut tries = 0;
        move || {
            tries += 1;
            if tries > busy {
                Attempt::Taken(tries)
            } else {
                Attempt::Busy
            }
        }
    }

    #[test]
    fn a_lock_freed_within_the_grace_is_taken() {
        let mut slept = Duration::ZERO;
        let got = retry(GRACE, STEP, busy_for(3), |d| slept += d);
        assert!(matches!(got, Attempt::Taken(4)), "{got:?}");
        assert_eq!(slept, STEP * 3);
    }

    #[test]
    fn a_free_lock_is_taken_without_waiting() {
        let mut slept = Duration::ZERO;
        let got = retry(GRACE, STEP, busy_for(0), |d| slept += d);
        assert!(matches!(got, Attempt::Taken(1)), "{got:?}");
        assert_eq!(slept, Duration::ZERO);
    }

    #[test]
    fn a_lock_held_past_the_grace_is_reported_busy_after_the_grace() {
        let mut slept = Duration::ZERO;
        let got = retry(GRACE, STEP, busy_for(usize::MAX), |d| slept += d);
        assert!(matches!(got, Attempt::Busy), "{got:?}");
        assert_eq!(slept, GRACE, "waits the whole grace, and no longer");
        // Freed exactly at the last try: still taken.
        let tries = (GRACE.as_millis() / STEP.as_millis()) as usize;
        let got = retry(GRACE, STEP, busy_for(tries), |_| {});
        assert!(matches!(got, Attempt::Taken(_)), "{got:?}");
        let got = retry(GRACE, STEP, busy_for(tries + 1), |_| {});
        assert!(matches!(got, Attempt::Busy), "{got:?}");
    }

    #[test]
    fn an_error_ends_the_retries_at_once() {
        let mut tries = 0;
        let mut slept = Duration::ZERO;
        let got: Attempt<()> = retry(
            GRACE,
            STEP,
            || {
                tries += 1;
                if tries < 3 {
                    Attempt::Busy
                } else {
                    Attempt::Failed(io::Error::other("disk gone"))
                }
            },
            |d| slept += d,
        );
        assert!(matches!(got, Attempt::Failed(_)), "{got:?}");
        assert_eq!(tries, 3);
        assert_eq!(slept, STEP * 2);
    }

    #[test]
    fn second_holder_is_refused_and_drop_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = acquire(dir.path()).expect("first");
        assert!(matches!(acquire(dir.path()), Err(LockError::Held(_))));
        drop(first);
        acquire(dir.path()).expect("free again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn acquire_async_takes_and_refuses_like_acquire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = acquire_async(dir.path()).await.expect("first");
        let started = std::time::Instant::now();
        assert!(matches!(
            acquire_async(dir.path()).await,
            Err(LockError::Held(_))
        ));
        assert!(started.elapsed() >= GRACE, "the grace was waited");
        drop(first);
        acquire_async(dir.path()).await.expect("free again");
    }
}
