//! `activate = symlink` (the default): `current` is a symlink to the release, replaced by
//! `rename(2)` of a complete new link over it.
//!
//! Invariants:
//! - A reader sees the old link or the new one, never neither (`rename(2)` is atomic).
//! - The new link is made under a unique hidden name beside `current`
//!   (`.NAME.tmp-PID-RANDOM`, unlike git-sync's fixed `tmp-link`), with a relative target; it
//!   is deleted if the rename fails, and [`sweep`] removes any left by a crash.
//! - The parent directory is fsynced after the rename, so the switch survives a power loss.
//!
//! These functions are private to `activate`: [`super::Activator`] is the API for every mode.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use super::{Steps, SwitchError, Switched};
use crate::fsutil::{self, parent_of};

/// Why the live release cannot be read.
fn not_a_link(local: &Path) -> io::Error {
    io::Error::other(format!(
        "{} exists and is not a symlink; repo-deploy manages it as a symlink to the live release: move it away (or set `local` elsewhere) and run again",
        local.display()
    ))
}

/// The real path `local` points to, or `None` when `local` does not exist (first deploy) or
/// points nowhere.
pub(super) fn read_target(local: &Path) -> io::Result<Option<PathBuf>> {
    match fs::symlink_metadata(local) {
        Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(local) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(
                    "{} points to a missing release; treating this as a first deploy",
                    local.display()
                );
                Ok(None)
            }
            Err(e) => Err(e),
        },
        Ok(_) => Err(not_a_link(local)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `.NAME.tmp-`: the prefix of the temporary links beside `local`.
fn temp_prefix(local: &Path) -> io::Result<Vec<u8>> {
    let name = local
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", local.display())))?;
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(name.as_bytes());
    prefix.extend_from_slice(b".tmp-");
    Ok(prefix)
}

/// `to` relative to the directory `from` (both absolute, real paths).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to_c: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to_c).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to_c[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Point `local` at `release` atomically (`previous` is what it showed). The switch records
/// how long after `started` the new release became visible at `local` (the rename); the call
/// returns once that is durable too. The rename is the point of no return: an error after it
/// is [`SwitchError::NotDurable`].
pub(super) fn replace(
    steps: &Steps,
    local: &Path,
    release: &Path,
    previous: Option<PathBuf>,
    started: Instant,
) -> Result<Switched, SwitchError> {
    if let Ok(m) = fs::symlink_metadata(local)
        && !m.file_type().is_symlink()
    {
        return Err(not_a_link(local).into());
    }
    let parent = parent_of(local);
    fs::create_dir_all(parent)?;
    let real_parent = parent.canonicalize()?;
    let target = relative(&real_parent, release);
    let mut tmp_name = temp_prefix(local)?;
    tmp_name.extend_from_slice(fsutil::unique_suffix().as_bytes());
    let tmp = parent.join(std::ffi::OsStr::from_bytes(&tmp_name));
    steps.run("create the new link beside current", || {
        std::os::unix::fs::symlink(&target, &tmp)
    })?;
    if let Err(e) = steps.run("rename the new link over current", || {
        fs::rename(&tmp, local)
    }) {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    let switched = Switched {
        current: release.to_path_buf(),
        previous,
        visible: started.elapsed(),
    };
    match steps.run("fsync the directory of current", || {
        fsutil::fsync_dir(parent)
    }) {
        Ok(()) => Ok(switched),
        Err(error) => Err(SwitchError::NotDurable { switched, error }),
    }
}

/// Remove `local` (after a failed first deploy there is nothing to restore).
pub(super) fn remove(steps: &Steps, local: &Path) -> io::Result<()> {
    match fs::symlink_metadata(local) {
        Ok(m) if m.file_type().is_symlink() => {
            steps.run("remove current", || fs::remove_file(local))?;
        }
        Ok(_) => return Err(not_a_link(local)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    steps.run("fsync the directory of current", || {
        fsutil::fsync_dir(parent_of(local))
    })
}

/// Remove temporary links left beside `local` by an interrupted switch.
pub(super) fn sweep(local: &Path) -> io::Result<()> {
    let prefix = temp_prefix(local)?;
    let Some(entries) = fsutil::not_found_is_none(fs::read_dir(parent_of(local)))? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().as_bytes().starts_with(&prefix) && entry.file_type()?.is_symlink() {
            tracing::info!("removed leftover link {}", entry.path().display());
            fsutil::not_found_is_ok(fs::remove_file(entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_relative_and_leaves_no_temporary_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("real");
        let a = root.join("releases/a");
        let b = root.join("releases/b");
        fs::create_dir_all(&a).expect("a");
        fs::create_dir_all(&b).expect("b");
        let local = root.join("current");
        assert_eq!(read_target(&local).expect("live"), None);
        let steps = Steps::default();
        replace(&steps, &local, &a, None, Instant::now()).expect("switch a");
        assert_eq!(
            fs::read_link(&local).expect("link"),
            PathBuf::from("releases/a")
        );
        assert_eq!(read_target(&local).expect("live"), Some(a.clone()));
        replace(&steps, &local, &b, None, Instant::now()).expect("switch b");
        assert_eq!(read_target(&local).expect("live"), Some(b));
        let names: Vec<_> = fs::read_dir(&root)
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temp link left: {names:?}");
        remove(&steps, &local).expect("remove");
        assert_eq!(read_target(&local).expect("live"), None);
    }

    #[test]
    fn relative_targets() {
        assert_eq!(
            relative(Path::new("/srv/app"), Path::new("/srv/app/releases/x")),
            PathBuf::from("releases/x")
        );
        assert_eq!(
            relative(Path::new("/srv/live"), Path::new("/var/deploy/releases/x")),
            PathBuf::from("../../var/deploy/releases/x")
        );
    }

    #[test]
    fn a_real_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = dir.path().join("current");
        fs::create_dir(&local).expect("mkdir");
        assert!(read_target(&local).is_err());
        assert!(replace(&Steps::default(), &local, dir.path(), None, Instant::now()).is_err());
    }

    #[test]
    fn sweep_removes_temp_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = dir.path().join("current");
        std::os::unix::fs::symlink("x", dir.path().join(".current.tmp-1-dead")).expect("link");
        std::os::unix::fs::symlink("x", dir.path().join(".other")).expect("link");
        sweep(&local).expect("sweep");
        assert!(fs::symlink_metadata(dir.path().join(".current.tmp-1-dead")).is_err());
        assert!(fs::symlink_metadata(dir.path().join(".other")).is_ok());
    }
}
