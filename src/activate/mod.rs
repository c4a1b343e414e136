//! The switch of `current` to a release, in the configured mode, and what is live now.
//!
//! [`Activator`] is the only API: the modes (`symlink.rs`, `exchange.rs`, `sync.rs`) and the
//! record of the live release in directory modes (`marker.rs`) are private to this module.
//!
//! Crash-safety invariants, every mode:
//! - `current` shows the old release or the new one: symlink and exchange modes switch with
//!   one atomic `rename(2)`/`renameat2(2)`; sync mode replaces each file atomically, so a
//!   reader sees whole files but, while it runs, a mix of the two trees.
//! - Every temporary name made here is unique (`fsutil::unique_suffix`) and hidden, and
//!   [`Activator::recover`] removes those a crash left and finishes or undoes a switch that
//!   was cut short.
//! - [`Activator::live`] reads the disk every time; it never caches what is live.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod exchange;
mod marker;
mod symlink;
mod sync;

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

/// The switch of `current` in the configured mode.
#[derive(Debug, Clone)]
pub struct Activator {
    mode: Mode,
    local: PathBuf,
    directory: PathBuf,
}

/// The last component of `path`, as a release name.
fn name_of(path: &Path) -> io::Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::other(format!("{} has no name", path.display())))
}

impl Activator {
    /// The activator of `mode` for the live path `local` and the deploy `directory` (which
    /// holds `releases/`).
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
            Mode::Symlink => symlink::read_target(&self.local)?
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
                let Some(name) = marker::load(&self.directory)?.name else {
                    return Err(io::Error::other(format!(
                        "{} exists but repo-deploy did not make it (no {}): move it away and run again",
                        self.local.display(),
                        marker::path(&self.directory).display()
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
                let visible = looked_up + symlink::replace(&self.local, release)?;
                Ok(Switched {
                    current: release.to_path_buf(),
                    previous: before.map(|l| l.path),
                    visible,
                })
            }
            Mode::Exchange => exchange::switch(self, before, release),
            Mode::Sync => sync::switch(self, before, release),
        }
    }

    /// Undo a failed first deploy of `release`: nothing was live before, so `current` goes.
    pub fn deactivate(&self, release: &Path) -> io::Result<()> {
        match self.mode {
            Mode::Symlink => symlink::remove(&self.local),
            Mode::Exchange => exchange::deactivate(self, release),
            Mode::Sync => sync::deactivate(self),
        }
    }

    /// At start, under the lock: remove the temporary links, trash and files a crash left
    /// (whatever the mode now: it may have been changed since), and finish or undo a switch
    /// that a crash interrupted.
    pub fn recover(&self) -> io::Result<()> {
        symlink::sweep(&self.local)?;
        sync::sweep_trash(&self.local)?;
        marker::sweep(&self.directory)?;
        match self.mode {
            Mode::Symlink => {
                if marker::load(&self.directory)?.pending.is_some() {
                    marker::save(&self.directory, &marker::Marker::default())?;
                }
                Ok(())
            }
            Mode::Exchange => exchange::finish(self),
            Mode::Sync => sync::recover(self),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deploy directory with two releases, `a` and `b`, each holding `f` ("A", "B").
    pub(crate) fn setup(mode: Mode) -> (tempfile::TempDir, Activator, PathBuf, PathBuf) {
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

    /// What `current/f` says.
    pub(crate) fn content(act: &Activator) -> String {
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
    fn modes_parse() {
        assert_eq!("exchange".parse::<Mode>(), Ok(Mode::Exchange));
        assert!("copy".parse::<Mode>().is_err());
    }
}
