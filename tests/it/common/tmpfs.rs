//! A small tmpfs for the tests that fill a disk (disk.rs, crash.rs).

use super::*;

/// A tmpfs mounted on a directory for the life of the value; unmounted (lazily if busy) on drop.
/// Only root can mount: [`Tmpfs::mount`] says why it could not, so the caller can skip.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs with `options` (such as `size=8m,nr_inodes=400`) on `dir`, created if
    /// missing. Drop the `Tmpfs` before the [`Env`] that holds `dir`.
    pub fn mount(dir: &Path, options: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root, so no tmpfs can be mounted".into());
        }
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "repo-deploy-test"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (an orphaned hook still has its working directory there): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
