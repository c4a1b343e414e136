//! `activate = exchange`: `current` is a real directory, swapped with the release directory by
//! `renameat2(RENAME_EXCHANGE)`, for applications that cannot follow a symlink.
//!
//! Invariants:
//! - A reader of `current` sees the old tree or the new one: the exchange is one atomic call.
//! - Before the exchange, `active.json` records the switch as switching with the inode of the
//!   new release's directory; after it, `current` has that inode. So whether the exchange
//!   happened is always decidable ([`resolve`]), after a crash or a failed step.
//! - After the exchange, the previous files sit under the new release's name in `releases/`
//!   until they are renamed back to their own name; [`finish`] does that when it was cut short.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use super::marker::{self, Marker, Switching};
use super::{Activator, LiveRelease, SwitchError, Switched, name_of};
use crate::fsutil::{fsync_dir, parent_of};

/// Make `release` live; `before` is the live release. The exchange (or, on a first deploy,
/// the rename into `current`) is the point of no return.
pub(super) fn switch(
    act: &Activator,
    before: Option<LiveRelease>,
    release: &Path,
    started: Instant,
) -> Result<Switched, SwitchError> {
    let steps = &act.steps;
    let to = name_of(release)?;
    let to_ino = fs::symlink_metadata(release)?.ino();
    let from = before.as_ref().map(|l| l.name.clone());
    steps.run("record the switch as switching in active.json", || {
        marker::save(
            &act.directory,
            &Marker {
                name: from.clone(),
                switching: Some(Switching {
                    to: to.clone(),
                    from: from.clone(),
                    to_ino,
                }),
            },
        )
    })?;
    let swapped = match &from {
        None => steps.run("rename the release to current", || {
            fs::rename(release, &act.local)
        }),
        Some(_) => steps.run("exchange the release with current", || {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                release,
                rustix::fs::CWD,
                &act.local,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(io::Error::from)
        }),
    };
    if let Err(e) = swapped {
        // Nothing moved. Best effort: a switching record is resolved by the inode anyway.
        let _ = marker::save(
            &act.directory,
            &Marker {
                name: from,
                switching: None,
            },
        );
        return Err(e.into());
    }
    let releases = act.releases();
    let back = from.as_ref().map(|from| {
        releases
            .canonicalize()
            .unwrap_or(releases.clone())
            .join(from)
    });
    let switched = Switched {
        current: act.local.canonicalize().unwrap_or(act.local.clone()),
        previous: back.clone(),
        visible: started.elapsed(),
    };
    let durable = (|| {
        if let Some(back) = &back {
            // `release` now holds the previous files: give them their name back.
            steps.run("rename the previous release back to its name", || {
                fs::rename(release, back)
            })?;
        }
        steps.run("fsync releases/", || fsync_dir(&releases))?;
        steps.run("fsync the directory of current", || {
            fsync_dir(parent_of(&act.local))
        })?;
        steps.run("record the switch as done in active.json", || {
            marker::save(
                &act.directory,
                &Marker {
                    name: Some(to),
                    switching: None,
                },
            )
        })
    })();
    match durable {
        Ok(()) => Ok(switched),
        Err(error) => Err(SwitchError::NotDurable { switched, error }),
    }
}

/// Undo a failed first deploy: `current`'s files go back under `release`.
pub(super) fn deactivate(act: &Activator, release: &Path) -> io::Result<()> {
    let steps = &act.steps;
    steps.run("rename current back to its release", || {
        fs::rename(&act.local, release)
    })?;
    steps.run("fsync the directory of current", || {
        fsync_dir(parent_of(&act.local))
    })?;
    steps.run("record in active.json that nothing is live", || {
        marker::save(&act.directory, &Marker::default())
    })
}

/// Which release `current` holds according to `marker`, a switching switch resolved by the inode
/// of `current` (`local_ino`, `None` if it is absent).
pub(super) fn resolve(marker: &Marker, local_ino: Option<u64>) -> Option<String> {
    match &marker.switching {
        Some(p) if local_ino == Some(p.to_ino) => Some(p.to.clone()),
        Some(p) => p.from.clone(),
        None => marker.name.clone(),
    }
}

/// Finish or undo a switch that was cut short (by a crash or a failed step): give the previous
/// files their name back and record which release is live.
pub(super) fn finish(act: &Activator) -> io::Result<()> {
    let marker = marker::load(&act.directory)?;
    let Some(switching) = &marker.switching else {
        return Ok(());
    };
    let steps = &act.steps;
    let local_ino = act.local_dir()?.map(|m| m.ino());
    let name = resolve(&marker, local_ino);
    if local_ino == Some(switching.to_ino) {
        // The exchange happened: the previous files may still sit under the new name.
        let stale = act.releases().join(&switching.to);
        if let (Some(from), true) = (&switching.from, stale.is_dir()) {
            steps.run("rename the previous release back to its name", || {
                fs::rename(&stale, act.releases().join(from))
            })?;
            steps.run("fsync releases/", || fsync_dir(&act.releases()))?;
        }
    }
    tracing::info!(
        "resolved an interrupted switch of {}: {} is live",
        act.local.display(),
        name.as_deref().unwrap_or("nothing")
    );
    steps.run("record the resolved switch in active.json", || {
        marker::save(
            &act.directory,
            &Marker {
                name,
                switching: None,
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::Mode;
    use super::super::tests::{content, setup};
    use super::*;

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
        let to_ino = fs::metadata(&b).expect("b").ino();
        marker::save(
            &act.directory,
            &Marker {
                name: Some("a".into()),
                switching: Some(Switching {
                    to: "b".into(),
                    from: Some("a".into()),
                    to_ino,
                }),
            },
        )
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
}
