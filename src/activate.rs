//! The atomic switch of `current`.
//!
//! Crash-safety invariants:
//! - `current` changes only by `rename(2)` of a complete symlink over it, so a reader sees
//!   the old release or the new one, never neither.
//! - The new link is made under a unique hidden name beside `current` (pid + random, unlike
//!   git-sync's fixed `tmp-link`), with a relative target; it is deleted if the rename fails,
//!   and [`sweep`] removes any left by a crash.
//! - The parent directory is fsynced after the rename, so the switch survives a power loss.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Why the live release cannot be read.
fn not_a_link(local: &Path) -> io::Error {
    io::Error::other(format!(
        "{} exists and is not a symlink; repo-deploy manages it as a symlink to the live release: move it away (or set `local` elsewhere) and run again",
        local.display()
    ))
}

/// The real path of the live release, or `None` when `local` does not exist (first deploy)
/// or points nowhere.
pub fn live(local: &Path) -> io::Result<Option<PathBuf>> {
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

fn temp_prefix(local: &Path) -> io::Result<Vec<u8>> {
    let name = local
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", local.display())))?;
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(name.as_bytes());
    prefix.extend_from_slice(b".tmp-");
    Ok(prefix)
}

fn parent_of(local: &Path) -> &Path {
    local
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
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

/// Point `local` at `release` atomically. Returns how long after the call the new release
/// became visible at `local` (the rename); the call returns once that is durable too.
pub fn switch(local: &Path, release: &Path) -> io::Result<Duration> {
    let started = Instant::now();
    if let Ok(m) = fs::symlink_metadata(local)
        && !m.file_type().is_symlink()
    {
        return Err(not_a_link(local));
    }
    let parent = parent_of(local);
    fs::create_dir_all(parent)?;
    let real_parent = parent.canonicalize()?;
    let target = relative(&real_parent, release);
    let mut tmp_name = temp_prefix(local)?;
    tmp_name.extend_from_slice(
        format!("{}-{:08x}", std::process::id(), rand::random::<u32>()).as_bytes(),
    );
    let tmp = parent.join(std::ffi::OsStr::from_bytes(&tmp_name));
    std::os::unix::fs::symlink(&target, &tmp)?;
    if let Err(e) = fs::rename(&tmp, local) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let visible = started.elapsed();
    File::open(parent)?.sync_all()?;
    Ok(visible)
}

/// Remove `local` (after a failed first deploy there is nothing to restore).
pub fn deactivate(local: &Path) -> io::Result<()> {
    match fs::symlink_metadata(local) {
        Ok(m) if m.file_type().is_symlink() => fs::remove_file(local)?,
        Ok(_) => return Err(not_a_link(local)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    File::open(parent_of(local))?.sync_all()
}

/// Remove temporary links left beside `local` by an interrupted switch.
pub fn sweep(local: &Path) -> io::Result<()> {
    let prefix = temp_prefix(local)?;
    let entries = match fs::read_dir(parent_of(local)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().as_bytes().starts_with(&prefix) && entry.file_type()?.is_symlink() {
            tracing::info!("removed leftover link {}", entry.path().display());
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_is_relative_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("real");
        let a = root.join("releases/a");
        let b = root.join("releases/b");
        fs::create_dir_all(&a).expect("a");
        fs::create_dir_all(&b).expect("b");
        let local = root.join("current");
        assert_eq!(live(&local).expect("live"), None);
        switch(&local, &a).expect("switch a");
        assert_eq!(
            fs::read_link(&local).expect("link"),
            PathBuf::from("releases/a")
        );
        assert_eq!(live(&local).expect("live"), Some(a.clone()));
        switch(&local, &b).expect("switch b");
        assert_eq!(live(&local).expect("live"), Some(b));
        let names: Vec<_> = fs::read_dir(&root)
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temp link left: {names:?}");
        deactivate(&local).expect("deactivate");
        assert_eq!(live(&local).expect("live"), None);
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
        assert!(live(&local).is_err());
        assert!(switch(&local, dir.path()).is_err());
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

// ---------------------------------------------------------------------------------------------
// Activation modes

/// How `current` is made to show a release (`activate = …`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// `current` is a symlink to the release, replaced by `rename(2)`: atomic.
    #[default]
    Symlink,
    /// `current` is a real directory, swapped with the release by
    /// `renameat2(RENAME_EXCHANGE)`: atomic, for applications that cannot follow a symlink.
    Exchange,
    /// `current` is a real directory whose files are replaced in place (each by rename,
    /// removals last): NOT atomic as a whole, for applications that watch the directory's
    /// inode.
    Sync,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.trim() {
            "symlink" => Ok(Mode::Symlink),
            "exchange" => Ok(Mode::Exchange),
            "sync" => Ok(Mode::Sync),
            _ => Err("expected symlink, exchange or sync".into()),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Symlink => "symlink",
            Mode::Exchange => "exchange",
            Mode::Sync => "sync",
        })
    }
}

/// The live release: its name under `releases/`, and where its files are now (the release
/// directory, or `current` itself in exchange mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRelease {
    pub name: String,
    pub path: PathBuf,
}

/// Where things are after a switch, for the post-update hooks and a rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// The new live release's files.
    pub current: PathBuf,
    /// The previous live release's files, if there was one.
    pub previous: Option<PathBuf>,
    /// From the call to the moment `current` showed the new release (the rest of the call
    /// made that durable).
    pub visible: Duration,
}

/// In exchange and sync modes `current` is a directory, so the name of the release it holds is
/// kept in `${directory}/active.json`, with the switch in progress (if any) so that a crash
/// in the middle is resolved at the next start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Marker {
    name: Option<String>,
    #[serde(default)]
    pending: Option<Pending>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Pending {
    to: String,
    from: Option<String>,
    /// Inode of the new release's directory: after an exchange, `current` has it.
    to_ino: u64,
}

/// The switch of `current` in the configured mode.
#[derive(Debug, Clone)]
pub struct Activator {
    mode: Mode,
    local: PathBuf,
    directory: PathBuf,
}

fn name_of(path: &Path) -> io::Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::other(format!("{} has no name", path.display())))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Activator {
    /// The activator of the configured `activate` mode, `local` and `directory`.
    pub fn for_settings(settings: &crate::config::Settings) -> Activator {
        Activator::new(settings.activate, &settings.local, &settings.directory)
    }

    pub fn new(mode: Mode, local: &Path, directory: &Path) -> Activator {
        Activator {
            mode,
            local: local.to_path_buf(),
            directory: directory.to_path_buf(),
        }
    }

    fn releases(&self) -> PathBuf {
        self.directory.join("releases")
    }

    fn marker_path(&self) -> PathBuf {
        self.directory.join("active.json")
    }

    fn marker(&self) -> io::Result<Marker> {
        match fs::read(self.marker_path()) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| io::Error::other(format!("{}: {e}", self.marker_path().display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Marker::default()),
            Err(e) => Err(e),
        }
    }

    fn save_marker(&self, marker: &Marker) -> io::Result<()> {
        let tmp = self
            .directory
            .join(format!(".active.json.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec(marker).map_err(io::Error::other)?;
        let mut file = File::create(&tmp)?;
        io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, self.marker_path())?;
        fsync_dir(&self.directory)
    }

    /// `current` as a real directory (exchange and sync modes), or `None` if absent.
    fn local_dir(&self) -> io::Result<Option<fs::Metadata>> {
        match fs::symlink_metadata(&self.local) {
            Ok(m) if m.is_dir() => Ok(Some(m)),
            Ok(_) => Err(io::Error::other(format!(
                "{} is not a directory, but activate = {}: move it away (or set `local` elsewhere) and run again",
                self.local.display(),
                self.mode
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The live release, or `None` before the first deploy.
    pub fn live(&self) -> io::Result<Option<LiveRelease>> {
        match self.mode {
            Mode::Symlink => live(&self.local)?
                .map(|path| {
                    Ok(LiveRelease {
                        name: name_of(&path)?,
                        path,
                    })
                })
                .transpose(),
            Mode::Exchange | Mode::Sync => {
                if self.local_dir()?.is_none() {
                    return Ok(None);
                }
                let Some(name) = self.marker()?.name else {
                    return Err(io::Error::other(format!(
                        "{} exists but repo-deploy did not make it (no {}): move it away and run again",
                        self.local.display(),
                        self.marker_path().display()
                    )));
                };
                let path = if self.mode == Mode::Exchange {
                    self.local.canonicalize()?
                } else {
                    self.releases().canonicalize()?.join(&name)
                };
                Ok(Some(LiveRelease { name, path }))
            }
        }
    }

    /// Make `release` (a directory under `releases/`) live.
    pub fn switch(&self, release: &Path) -> io::Result<Switched> {
        let started = Instant::now();
        let before = self.live()?;
        match self.mode {
            Mode::Symlink => {
                let looked_up = started.elapsed();
                let visible = looked_up + switch(&self.local, release)?;
                Ok(Switched {
                    current: release.to_path_buf(),
                    previous: before.map(|l| l.path),
                    visible,
                })
            }
            Mode::Sync => {
                let to = name_of(release)?;
                self.save_marker(&Marker {
                    name: before.as_ref().map(|l| l.name.clone()),
                    pending: Some(Pending {
                        to: to.clone(),
                        from: None,
                        to_ino: 0,
                    }),
                })?;
                crate::treesync::sync_tree(release, &self.local)?;
                let visible = started.elapsed();
                self.save_marker(&Marker {
                    name: Some(to),
                    pending: None,
                })?;
                Ok(Switched {
                    current: release.to_path_buf(),
                    previous: before.map(|l| l.path),
                    visible,
                })
            }
            Mode::Exchange => {
                let to = name_of(release)?;
                let to_ino = std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(release)?);
                let from = before.as_ref().map(|l| l.name.clone());
                self.save_marker(&Marker {
                    name: from.clone(),
                    pending: Some(Pending {
                        to: to.clone(),
                        from: from.clone(),
                        to_ino,
                    }),
                })?;
                let (previous, visible) = match &from {
                    None => {
                        fs::rename(release, &self.local)?;
                        (None, started.elapsed())
                    }
                    Some(from) => {
                        rustix::fs::renameat_with(
                            rustix::fs::CWD,
                            release,
                            rustix::fs::CWD,
                            &self.local,
                            rustix::fs::RenameFlags::EXCHANGE,
                        )?;
                        let visible = started.elapsed();
                        // `release` now holds the previous files: give them their name back.
                        let back = self.releases().join(from);
                        fs::rename(release, &back)?;
                        (Some(back.canonicalize()?), visible)
                    }
                };
                fsync_dir(&self.releases())?;
                fsync_dir(parent_of(&self.local))?;
                self.save_marker(&Marker {
                    name: Some(to),
                    pending: None,
                })?;
                Ok(Switched {
                    current: self.local.canonicalize()?,
                    previous,
                    visible,
                })
            }
        }
    }

    /// Undo a failed first deploy of `release`: nothing was live before, so `current` goes.
    pub fn deactivate(&self, release: &Path) -> io::Result<()> {
        match self.mode {
            Mode::Symlink => deactivate(&self.local),
            Mode::Exchange => {
                fs::rename(&self.local, release)?;
                fsync_dir(parent_of(&self.local))?;
                self.save_marker(&Marker::default())
            }
            Mode::Sync => {
                let trash = parent_of(&self.local).join(format!(
                    ".{}.trash-{}",
                    name_of(&self.local)?,
                    std::process::id()
                ));
                fs::rename(&self.local, &trash)?;
                fs::remove_dir_all(&trash)?;
                self.save_marker(&Marker::default())
            }
        }
    }

    /// At start, under the lock: remove temporary links, and finish or undo a switch that a
    /// crash interrupted.
    pub fn recover(&self) -> io::Result<()> {
        sweep(&self.local)?;
        let marker = self.marker()?;
        let Some(pending) = marker.pending else {
            return Ok(());
        };
        match self.mode {
            Mode::Symlink => self.save_marker(&Marker::default()),
            Mode::Sync => {
                // Sync again to whichever release still exists, preferring the new one.
                let target = [Some(&pending.to), marker.name.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|n| self.releases().join(n).is_dir())
                    .cloned();
                if let Some(name) = target {
                    tracing::info!(
                        "finishing the interrupted sync of {} to {name}",
                        self.local.display()
                    );
                    crate::treesync::sync_tree(&self.releases().join(&name), &self.local)?;
                    self.save_marker(&Marker {
                        name: Some(name),
                        pending: None,
                    })
                } else {
                    self.save_marker(&Marker {
                        name: marker.name,
                        pending: None,
                    })
                }
            }
            Mode::Exchange => {
                let local_ino = self
                    .local_dir()?
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
                let name = if local_ino == Some(pending.to_ino) {
                    // The exchange happened: the previous files may still sit under the new name.
                    let stale = self.releases().join(&pending.to);
                    if let (Some(from), true) = (&pending.from, stale.is_dir()) {
                        fs::rename(&stale, self.releases().join(from))?;
                    }
                    Some(pending.to)
                } else {
                    pending.from
                };
                tracing::info!(
                    "resolved an interrupted switch of {}: {} is live",
                    self.local.display(),
                    name.as_deref().unwrap_or("nothing")
                );
                self.save_marker(&Marker {
                    name,
                    pending: None,
                })
            }
        }
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;

    fn setup(mode: Mode) -> (tempfile::TempDir, Activator, PathBuf, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().canonicalize().expect("real");
        let (a, b) = (root.join("releases/a"), root.join("releases/b"));
        for (dir, text) in [(&a, "A"), (&b, "B")] {
            fs::create_dir_all(dir).expect("mkdir");
            fs::write(dir.join("f"), text).expect("write");
        }
        let act = Activator::new(mode, &root.join("current"), &root);
        (d, act, a, b)
    }

    fn content(act: &Activator) -> String {
        fs::read_to_string(act.local.join("f")).expect("current/f")
    }

    #[test]
    fn every_mode_switches_and_switches_back() {
        for mode in [Mode::Symlink, Mode::Exchange, Mode::Sync] {
            let (_d, act, a, b) = setup(mode);
            assert_eq!(act.live().expect("live"), None, "{mode}");
            let s = act.switch(&a).expect("switch a");
            assert_eq!(content(&act), "A", "{mode}");
            assert_eq!(s.previous, None);
            assert_eq!(act.live().expect("live").expect("some").name, "a", "{mode}");
            let s = act.switch(&b).expect("switch b");
            assert_eq!(content(&act), "B", "{mode}");
            assert_eq!(
                fs::read_to_string(s.current.join("f")).expect("current"),
                "B",
                "{mode}"
            );
            let prev = s.previous.expect("previous");
            assert_eq!(
                fs::read_to_string(prev.join("f")).expect("previous"),
                "A",
                "{mode}: previous files"
            );
            assert_eq!(act.live().expect("live").expect("some").name, "b", "{mode}");
            // Roll back to the previous release, as the cycle does.
            act.switch(&prev).expect("back");
            assert_eq!(content(&act), "A", "{mode}");
            assert_eq!(act.live().expect("live").expect("some").name, "a", "{mode}");
            assert_eq!(
                fs::read_to_string(act.releases().join("b/f")).expect("b"),
                "B",
                "{mode}: b keeps its files"
            );
        }
    }

    #[test]
    fn every_mode_can_undo_a_first_deploy() {
        for mode in [Mode::Symlink, Mode::Exchange, Mode::Sync] {
            let (_d, act, a, _b) = setup(mode);
            act.switch(&a).expect("switch");
            act.deactivate(&a).expect("deactivate");
            assert!(
                fs::symlink_metadata(&act.local).is_err(),
                "{mode}: current removed"
            );
            assert_eq!(
                fs::read_to_string(a.join("f")).expect("a"),
                "A",
                "{mode}: the release is back"
            );
            assert_eq!(act.live().expect("live"), None);
        }
    }

    #[test]
    fn exchange_keeps_current_a_directory_with_a_new_inode() {
        let (_d, act, a, b) = setup(Mode::Exchange);
        act.switch(&a).expect("a");
        let m = fs::symlink_metadata(&act.local).expect("current");
        assert!(m.is_dir() && !m.file_type().is_symlink());
        act.switch(&b).expect("b");
        assert!(!b.exists(), "b's files are at current");
        assert!(a.is_dir(), "a's files are back under releases/a");
    }

    #[test]
    fn exchange_interrupted_after_the_swap_is_finished_at_recovery() {
        let (_d, act, a, b) = setup(Mode::Exchange);
        act.switch(&a).expect("a");
        // Simulate a crash right after the exchange, before the rename back.
        let to_ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&b).expect("b"));
        act.save_marker(&Marker {
            name: Some("a".into()),
            pending: Some(Pending {
                to: "b".into(),
                from: Some("a".into()),
                to_ino,
            }),
        })
        .expect("marker");
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &b,
            rustix::fs::CWD,
            &act.local,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .expect("exchange");
        act.recover().expect("recover");
        assert_eq!(act.live().expect("live").expect("some").name, "b");
        assert_eq!(content(&act), "B");
        assert_eq!(
            fs::read_to_string(act.releases().join("a/f")).expect("a"),
            "A"
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!("exchange".parse::<Mode>(), Ok(Mode::Exchange));
        assert!("copy".parse::<Mode>().is_err());
    }
}
