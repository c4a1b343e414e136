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
//! - [`Activator::live`] reads the disk every time; it never caches what is live, and it
//!   resolves a switch that was cut short the way [`Activator::recover`] will finish it, so
//!   it names the release whose files `current` shows (or will show after recovery).
//!
//! The switch's result says whether the switch became visible ([`SwitchError`]): each mode
//! has a point of no return (the rename of the link, the exchange, the end of the tree sync);
//! a failure before it leaves `current` as it was ([`SwitchError::NotSwitched`]); a failure
//! after it (an fsync, the rename back of the previous files, the record in `active.json`)
//! is [`SwitchError::NotDurable`]: `current` shows the new release, and only its durability
//! or bookkeeping is in doubt. The caller must then treat the new release as live (run its
//! post-update hooks, never delete it); the next switch or start finishes the bookkeeping.
//! Whoever deletes a release re-reads [`Activator::live`] just before, and spares it.
//!
//! Every filesystem step of a switch or a deactivation goes through [`Steps::run`], the seam
//! where unit tests make step N fail (as gix-lock injects its `try_lock`); in production it
//! only runs the step.

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

/// Why a switch did not end as asked, and whether `current` shows the new release anyway.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// `current` still shows what it showed before the call.
    #[error("{0}")]
    NotSwitched(io::Error),
    /// `current` shows the new release, but a later step failed: a power cut may bring the
    /// previous one back, and `active.json` may still record the switch as switching (the next
    /// switch or start finishes it).
    #[error("the switch is visible but not durable: {error}")]
    NotDurable {
        switched: Switched,
        error: io::Error,
    },
}

impl From<io::Error> for SwitchError {
    /// An error before the point of no return.
    fn from(e: io::Error) -> SwitchError {
        SwitchError::NotSwitched(e)
    }
}

/// The switch of `current` in the configured mode.
#[derive(Debug, Clone)]
pub struct Activator {
    mode: Mode,
    local: PathBuf,
    directory: PathBuf,
    steps: Steps,
}

/// The seam through which every filesystem step of a switch or a deactivation runs. In
/// production it runs the step and names it in the step's error; a unit test can make the
/// Nth step fail ([`Activator::failing_at`]). Not a global: each activator has its own.
#[derive(Debug, Clone, Default)]
struct Steps {
    #[cfg(test)]
    fail_at: Option<std::sync::Arc<FailAt>>,
}

impl Steps {
    /// Run the step `what` (a phrase such as "fsync releases/").
    fn run<T>(&self, what: &'static str, step: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        #[cfg(test)]
        if let Some(fail) = &self.fail_at {
            fail.check(what)?;
        }
        step().map_err(|e| io::Error::new(e.kind(), format!("cannot {what}: {e}")))
    }
}

/// Test only: fails the Nth step run through an activator's [`Steps`] (and its clones).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct FailAt {
    n: usize,
    seen: std::sync::atomic::AtomicUsize,
    log: std::sync::Mutex<Vec<&'static str>>,
}

#[cfg(test)]
impl FailAt {
    fn check(&self, what: &'static str) -> io::Result<()> {
        let i = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.log.lock().expect("log").push(what);
        if i == self.n {
            return Err(io::Error::other(format!(
                "injected failure at step {i} ({what})"
            )));
        }
        Ok(())
    }

    /// How many steps ran (or were attempted) so far.
    pub(crate) fn seen(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The names of the steps so far, in order.
    pub(crate) fn log(&self) -> Vec<&'static str> {
        self.log.lock().expect("log").clone()
    }
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
            steps: Steps::default(),
        }
    }

    /// Test only: this activator, whose Nth filesystem step (counted from now, across its
    /// clones) fails; and the counter, to see how many steps ran.
    #[cfg(test)]
    pub(crate) fn failing_at(mut self, n: usize) -> (Activator, std::sync::Arc<FailAt>) {
        let fail = std::sync::Arc::new(FailAt {
            n,
            seen: Default::default(),
            log: Default::default(),
        });
        self.steps.fail_at = Some(std::sync::Arc::clone(&fail));
        (self, fail)
    }

    /// The live path this activator switches.
    pub fn local(&self) -> &Path {
        &self.local
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
                let marker = marker::load(&self.directory)?;
                let name = if self.mode == Mode::Exchange {
                    let ino = self
                        .local_dir()?
                        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
                    exchange::resolve(&marker, ino)
                } else {
                    sync::resolve(self, &marker)
                };
                let Some(name) = name else {
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

    /// Make `release` (a directory under `releases/`) live. The error says whether `current`
    /// shows it anyway (see [`SwitchError`]).
    pub fn switch(&self, release: &Path) -> Result<Switched, SwitchError> {
        let started = Instant::now();
        if self.mode == Mode::Exchange {
            // A switch cut short (by a failed step) is finished first, so that the previous
            // files are back under their own name before anything else moves.
            exchange::finish(self)?;
        }
        let before = self.live()?;
        match self.mode {
            Mode::Symlink => symlink::replace(
                &self.steps,
                &self.local,
                release,
                before.map(|l| l.path),
                started,
            ),
            Mode::Exchange => exchange::switch(self, before, release, started),
            Mode::Sync => sync::switch(self, before, release, started),
        }
    }

    /// Undo a failed first deploy of `release`: nothing was live before, so `current` goes.
    /// After an error, `current` may still show `release`: read [`Activator::live`] again.
    pub fn deactivate(&self, release: &Path) -> io::Result<()> {
        match self.mode {
            Mode::Symlink => symlink::remove(&self.steps, &self.local),
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
                if marker::load(&self.directory)?.switching.is_some() {
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

    /// Bug 1: fail each filesystem step of a switch in turn, in every mode, on a first deploy
    /// and on an update. The report must match what `current` shows: "not switched" leaves
    /// it as it was; a switch that became visible is reported as switched, `live()` names the
    /// new release (so the cycle's "never delete the live release" rule spares it), and the
    /// cycle's switch back to the previous release, or the next start, converges.
    #[test]
    fn every_failed_step_of_a_switch_is_reported_as_what_current_shows() {
        for mode in [Mode::Symlink, Mode::Exchange, Mode::Sync] {
            for update in [false, true] {
                for then in ["switch back", "recover"] {
                    let mut not_durable = 0;
                    for n in 1.. {
                        let (_d, act, a, b) = setup(mode);
                        if update {
                            act.switch(&a).expect("a");
                        }
                        let before = act.live().expect("live").map(|l| l.name);
                        let (act, fail) = act.failing_at(n);
                        let result = act.switch(&b);
                        let step = fail.log().get(n - 1).copied().unwrap_or("none");
                        let at = format!("{mode}, update {update}, step {n} ({step})");
                        let live = act.live().expect("live").map(|l| l.name);
                        match result {
                            Ok(_) => {
                                assert!(fail.seen() < n, "{at}: the failure was not reported");
                                assert_eq!(live.as_deref(), Some("b"), "{at}");
                                assert!(not_durable > 0, "{mode}: no step after the switch");
                                break;
                            }
                            Err(SwitchError::NotSwitched(e)) => {
                                assert_eq!(live, before, "{at}: reported not switched: {e}");
                                match &before {
                                    Some(_) => assert_eq!(content(&act), "A", "{at}: {e}"),
                                    None => assert!(
                                        fs::symlink_metadata(&act.local).is_err(),
                                        "{at}: {e}"
                                    ),
                                }
                                assert_eq!(
                                    fs::read_to_string(b.join("f")).expect("b"),
                                    "B",
                                    "{at}: the release is intact"
                                );
                            }
                            Err(SwitchError::NotDurable { switched, error }) => {
                                not_durable += 1;
                                assert_eq!(live.as_deref(), Some("b"), "{at}: {error}");
                                assert_eq!(content(&act), "B", "{at}");
                                assert_eq!(
                                    fs::read_to_string(switched.current.join("f"))
                                        .expect("current"),
                                    "B",
                                    "{at}"
                                );
                                assert_eq!(switched.previous.is_some(), update, "{at}");
                                let want = match (then, switched.previous) {
                                    ("switch back", Some(prev)) => {
                                        act.switch(&prev).expect("switch back");
                                        "a"
                                    }
                                    _ => {
                                        act.recover().expect("recover");
                                        "b"
                                    }
                                };
                                let live = act.live().expect("live").expect("some");
                                assert_eq!(live.name, want, "{at}, then {then}");
                                assert_eq!(content(&act), want.to_uppercase(), "{at}, {then}");
                                for (name, text) in [("a", "A"), ("b", "B")] {
                                    if update && name != want || !update && name == "a" {
                                        let f = act.releases().join(name).join("f");
                                        assert_eq!(
                                            fs::read_to_string(&f).ok().as_deref(),
                                            Some(text),
                                            "{at}, {then}: {}",
                                            f.display()
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!("exchange".parse::<Mode>(), Ok(Mode::Exchange));
        assert!("copy".parse::<Mode>().is_err());
    }
}
