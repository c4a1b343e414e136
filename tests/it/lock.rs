//! The deploy lock: `${directory}/.lock`, held with flock(2). A second agent on the same
//! deploy directory exits 5 at once.

use std::fs;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::common::*;

/// Hold an exclusive flock on `path` until dropped.
struct Flock(fs::File);

impl Flock {
    fn take(path: &std::path::Path) -> Flock {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .expect("open lock");
        // SAFETY: flock(2) on a file descriptor we own for the lifetime of `f`.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(
            rc,
            0,
            "cannot take the lock: {}",
            std::io::Error::last_os_error()
        );
        Flock(f)
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: as above; closing the file would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[test]
fn held_lock_exits_5_at_once_and_released_lock_lets_it_run() {
    let env = Env::new();
    let path = env.root.join("app.zip");
    zip(&path, &[file("version.txt", "v1\n", 0o644)]);
    fs::create_dir_all(&env.deploy).expect("mkdir deploy");
    let lock = Flock::take(&env.deploy.join(".lock"));

    let out = env.fetch(path.to_str().expect("utf8"));

    out.expect_code(5);
    assert!(
        out.elapsed < Duration::from_secs(10),
        "exit 5 at once, not after waiting: {:?}",
        out.elapsed
    );
    assert!(env.live().is_none(), "nothing deployed without the lock");
    assert!(!out.stderr.trim().is_empty(), "the refusal is explained");

    drop(lock);
    env.fetch(path.to_str().expect("utf8")).expect_code(0);
    assert_eq!(
        fs::read_to_string(env.live_release().join("version.txt")).expect("v1"),
        "v1\n"
    );
}

/// The lock file holds nothing (no pid another command could signal; issue 11) and only its
/// owner may open it.
#[test]
fn the_lock_file_is_empty_and_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    let env = Env::new();
    let path = env.root.join("app.zip");
    zip(&path, &[file("version.txt", "v1\n", 0o644)]);
    env.fetch(path.to_str().expect("utf8")).expect_code(0);
    let lock = env.deploy.join(".lock");
    let meta = fs::metadata(&lock).expect("the lock file stays");
    assert_eq!(meta.len(), 0, "{:?}", fs::read_to_string(&lock));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}
