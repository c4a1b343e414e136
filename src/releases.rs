//! `${directory}/releases`: staging, naming, durability and retention of release directories.
//!
//! Crash-safety invariants:
//! - A release is built in a hidden staging directory (`.staging-*`) that no one else looks
//!   at, made durable with `syncfs(2)`, and only then renamed to its final name; so every
//!   visible release is complete and on disk.
//! - A release is removed by first renaming it to a hidden `.trash-*` name, so a crash in the
//!   middle of a removal never leaves a half-deleted release that looks whole.
//! - Hidden entries are leftovers by definition: [`Releases::sweep`] deletes them at start
//!   and before each check, under the deploy lock.
//!
//! Everything here is synchronous and may block for long (`syncfs`, `remove_dir_all` of a
//! whole tree): async callers (`cycle.rs`, the commands) run it with `spawn_blocking`.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fsutil::unique_suffix;

/// The releases directory of a deploy directory.
#[derive(Debug, Clone)]
pub struct Releases {
    root: PathBuf,
}

/// A staging directory; deleted when dropped unless published.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    published: bool,
}

impl Staging {
    /// Where to unpack.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published
            && let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove staging {}: {e}", self.path.display());
        }
    }
}

/// Keep what is safe in a directory name: ASCII letters, digits, `.`, `_` and `-`.
fn sanitize(version: &str) -> String {
    let s: String = version
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(12)
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() { "release".into() } else { s }
}

impl Releases {
    /// Open (creating if needed) `${directory}/releases`, by its real path.
    pub fn open(directory: &Path) -> io::Result<Releases> {
        let root = directory.join("releases");
        fs::create_dir_all(&root)?;
        Ok(Releases {
            root: root.canonicalize()?,
        })
    }

    /// The real path of the releases directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `${directory}/manifests`: the manifest of each release unpacked from a ZIP
    /// (`incremental.rs`), kept outside `releases/`, where nothing but releases may stay.
    pub fn manifests(&self) -> PathBuf {
        self.root.with_file_name("manifests")
    }

    /// The manifest of release `name`; [`Releases::remove`] deletes it with the release.
    pub fn manifest_path(&self, name: &str) -> PathBuf {
        self.manifests().join(format!("{name}.jsonl"))
    }

    /// Delete hidden leftovers (staging and trash) of interrupted runs. Call under the lock.
    pub fn sweep(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_name().as_bytes().starts_with(b".") {
                let path = entry.path();
                let result = if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                match result {
                    Ok(()) => {
                        tracing::info!("removed leftover {}", path.display());
                        removed += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// A fresh, empty, hidden staging directory.
    pub fn stage(&self) -> io::Result<Staging> {
        let path = self.root.join(format!(".staging-{}", unique_suffix()));
        fs::create_dir(&path)?;
        Ok(Staging {
            path,
            published: false,
        })
    }

    /// Make the staging durable and give it its final name, `<UTC time>-<version>`. Returns
    /// the release's path.
    pub fn publish(&self, mut staging: Staging, version: &str) -> io::Result<PathBuf> {
        // One syncfs flushes every file and directory of the release (and anything else on
        // that filesystem): far cheaper than an fsync per file, with the same guarantee.
        let dir = File::open(&staging.path)?;
        rustix::fs::syncfs(&dir)?;
        let base = format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
            sanitize(version)
        );
        let mut name = base.clone();
        let mut n = 1;
        while fs::symlink_metadata(self.root.join(&name)).is_ok() {
            n += 1;
            name = format!("{base}-{n}");
        }
        let target = self.root.join(&name);
        fs::rename(&staging.path, &target)?;
        staging.published = true;
        crate::fsutil::fsync_dir(&self.root)?;
        Ok(target)
    }

    /// Names of the releases on disk, oldest first.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            if !name.as_bytes().starts_with(b".") && entry.file_type()?.is_dir() {
                names.push(name.to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Remove a release: rename it out of sight first, then delete it.
    pub fn remove(&self, release: &Path) -> io::Result<()> {
        if release.parent() != Some(self.root.as_path()) {
            return Err(io::Error::other(format!(
                "{} is not a release under {}",
                release.display(),
                self.root.display()
            )));
        }
        // The manifest first: one left by a crash here names no release and is swept.
        if let Some(name) = release.file_name().and_then(|n| n.to_str()) {
            match fs::remove_file(self.manifest_path(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let trash = self.root.join(format!(".trash-{}", unique_suffix()));
        fs::rename(release, &trash)?;
        fs::remove_dir_all(&trash)
    }

    /// Remove the oldest releases until `keep` remain; those in `protect` (the live one and
    /// the one before it) always stay and count toward `keep`. Returns the removed names.
    pub fn prune(&self, keep: usize, protect: &[&Path]) -> io::Result<Vec<String>> {
        let names = self.list()?;
        // Named as `list` names them, so that a protected release is always recognised.
        let protected: Vec<String> = protect
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        let protected: Vec<&str> = protected.iter().map(String::as_str).collect();
        let mut removed = Vec::new();
        for name in crate::decide::retention(&names, keep, &protected) {
            self.remove(&self.root.join(name))?;
            removed.push(name.to_string());
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_hidden_and_removed_unless_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Releases::open(dir.path()).expect("open");
        let s = r.stage().expect("stage");
        fs::write(s.path().join("f"), b"x").expect("write");
        assert!(
            s.path()
                .file_name()
                .expect("name")
                .as_bytes()
                .starts_with(b".")
        );
        drop(s);
        assert!(r.list().expect("list").is_empty());
        assert_eq!(fs::read_dir(r.root()).expect("ls").count(), 0);

        let s = r.stage().expect("stage");
        fs::write(s.path().join("f"), b"x").expect("write");
        let p = r.publish(s, "\"etag/../x\"").expect("publish");
        assert!(p.join("f").is_file());
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        assert!(!name.contains('/') && !name.contains('"'), "{name}");
        assert_eq!(r.list().expect("list"), vec![name]);
    }

    #[test]
    fn same_second_names_are_unique() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Releases::open(dir.path()).expect("open");
        let a = r.publish(r.stage().expect("stage"), "v").expect("a");
        let b = r.publish(r.stage().expect("stage"), "v").expect("b");
        assert_ne!(a, b);
        assert_eq!(r.list().expect("list").len(), 2);
    }

    #[test]
    fn sweep_removes_hidden_leftovers_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Releases::open(dir.path()).expect("open");
        fs::create_dir(r.root().join(".staging-1-dead")).expect("mkdir");
        fs::create_dir(r.root().join(".trash-1-dead")).expect("mkdir");
        fs::write(r.root().join(".tmp"), b"").expect("write");
        fs::create_dir(r.root().join("20260101T000000Z-v1")).expect("mkdir");
        assert_eq!(r.sweep().expect("sweep"), 3);
        assert_eq!(
            r.list().expect("list"),
            vec!["20260101T000000Z-v1".to_string()]
        );
    }

    #[test]
    fn prune_keeps_newest_and_protected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Releases::open(dir.path()).expect("open");
        for n in 1..=6 {
            fs::create_dir(r.root().join(format!("2026010{n}T000000Z-v{n}"))).expect("mkdir");
        }
        let old_live = r.root().join("20260101T000000Z-v1");
        let removed = r.prune(3, &[&old_live]).expect("prune");
        assert_eq!(
            removed,
            vec![
                "20260104T000000Z-v4",
                "20260103T000000Z-v3",
                "20260102T000000Z-v2"
            ]
        );
        assert_eq!(
            r.list().expect("list"),
            vec![
                "20260101T000000Z-v1",
                "20260105T000000Z-v5",
                "20260106T000000Z-v6"
            ]
        );
    }

    #[test]
    fn remove_refuses_paths_outside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Releases::open(dir.path()).expect("open");
        assert!(r.remove(dir.path()).is_err());
    }
}
