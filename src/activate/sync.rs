//! `activate = sync`: `current` is a real directory whose files are replaced in place, for
//! applications that watch the directory's inode (as the seed tool's users did): they see
//! their files replaced one by one instead of a new directory.
//!
//! Invariants:
//! - Each file and symlink that differs is written under a hidden temporary name beside its
//!   target and renamed over it, so a reader sees every *file* whole; the *tree* is NOT
//!   switched atomically as a whole (a reader may see some files old and some new while it
//!   runs). Removals come last, so nothing the new release needs disappears before its
//!   replacement is in place.
//! - `active.json` records the sync as switching before it starts; running it again after a
//!   crash finishes the job ([`recover`]).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, FileTimes};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::marker::{self, Marker, Switching};
use super::{Activator, LiveRelease, SwitchError, Switched, name_of};
use crate::fsutil::{self, parent_of};

/// Make `release` live; `before` is the live release. The end of the tree sync is the point
/// of no return: a sync that fails midway puts back the files of `before` (or removes
/// `current` on a first deploy) and reports that nothing switched.
pub(super) fn switch(
    act: &Activator,
    before: Option<LiveRelease>,
    release: &Path,
    started: Instant,
) -> Result<Switched, SwitchError> {
    let steps = &act.steps;
    let to = name_of(release)?;
    let name = before.as_ref().map(|l| l.name.clone());
    steps.run("record the sync as switching in active.json", || {
        marker::save(
            &act.directory,
            &Marker {
                name: name.clone(),
                switching: Some(Switching {
                    to: to.clone(),
                    from: None,
                    to_ino: 0,
                }),
            },
        )
    })?;
    if let Err(e) = steps.run("sync the release into current", || {
        sync_tree(release, &act.local)
    }) {
        return Err(restore(act, before.as_ref(), e).into());
    }
    let switched = Switched {
        current: release.to_path_buf(),
        previous: before.map(|l| l.path),
        visible: started.elapsed(),
    };
    match steps.run("record the sync as done in active.json", || {
        marker::save(
            &act.directory,
            &Marker {
                name: Some(to),
                switching: None,
            },
        )
    }) {
        Ok(()) => Ok(switched),
        Err(error) => Err(SwitchError::NotDurable { switched, error }),
    }
}

/// After a sync that failed midway, put back what was live (`before`), so that `current` is
/// as it was; returns the error to report, which says so if that failed too.
fn restore(act: &Activator, before: Option<&LiveRelease>, error: io::Error) -> io::Error {
    let steps = &act.steps;
    let restored = match before {
        Some(b) => steps
            .run("sync the previous release back into current", || {
                sync_tree(&b.path, &act.local)
            })
            .map(drop),
        None => steps.run("remove the partly synced current", || {
            remove_any(&act.local)
        }),
    }
    .and_then(|()| {
        steps.run("record in active.json that nothing switched", || {
            marker::save(
                &act.directory,
                &Marker {
                    name: before.map(|b| b.name.clone()),
                    switching: None,
                },
            )
        })
    });
    match restored {
        Ok(()) => error,
        Err(e) => io::Error::new(
            error.kind(),
            format!(
                "{error}; putting back what was live failed too ({e}): {} holds files of both releases until the next start finishes the sync",
                act.local.display()
            ),
        ),
    }
}

/// Which release `current` holds according to `marker`: a switching sync counts as done if its
/// release still exists, as [`recover`] will finish it.
pub(super) fn resolve(act: &Activator, marker: &Marker) -> Option<String> {
    match &marker.switching {
        Some(p) if act.releases().join(&p.to).is_dir() => Some(p.to.clone()),
        _ => marker.name.clone(),
    }
}

/// Undo a failed first deploy: `current` goes (renamed aside first, so that it disappears at
/// once rather than file by file). A crash between the rename and the removal leaves the
/// trash; [`sweep_trash`] removes it.
pub(super) fn deactivate(act: &Activator) -> io::Result<()> {
    let steps = &act.steps;
    let trash = parent_of(&act.local).join(format!(
        "{}{}",
        trash_prefix(&act.local)?,
        fsutil::unique_suffix()
    ));
    steps.run("rename current to its trash", || {
        fs::rename(&act.local, &trash)
    })?;
    steps.run("remove the trash of current", || fs::remove_dir_all(&trash))?;
    steps.run("record in active.json that nothing is live", || {
        marker::save(&act.directory, &Marker::default())
    })
}

/// `.NAME.trash-`: what [`deactivate`] renames `current` to before removing it.
fn trash_prefix(local: &Path) -> io::Result<String> {
    Ok(format!(".{}.trash-", name_of(local)?))
}

/// Remove the trash that a crash in [`deactivate`] left beside `local`.
pub(super) fn sweep_trash(local: &Path) -> io::Result<()> {
    let prefix = trash_prefix(local)?;
    let Some(entries) = fsutil::not_found_is_none(fs::read_dir(parent_of(local)))? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            remove_any(&entry.path())?;
            tracing::info!("removed leftover {}", entry.path().display());
        }
    }
    Ok(())
}

/// Finish a sync that a crash interrupted: sync again to whichever release still exists,
/// preferring the new one.
pub(super) fn recover(act: &Activator) -> io::Result<()> {
    let marker = marker::load(&act.directory)?;
    let Some(switching) = &marker.switching else {
        return Ok(());
    };
    let target = [Some(&switching.to), marker.name.as_ref()]
        .into_iter()
        .flatten()
        .find(|n| act.releases().join(n).is_dir())
        .cloned();
    if let Some(name) = &target {
        tracing::info!(
            "finishing the interrupted sync of {} to {name}",
            act.local.display()
        );
        sync_tree(&act.releases().join(name), &act.local)?;
    } else if act.local_dir()?.is_some() {
        // Nothing to sync to: at least remove the engine's temporary files.
        sweep_temporaries(&act.local)?;
    }
    marker::save(
        &act.directory,
        &Marker {
            name: target.or(marker.name),
            switching: None,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The engine: make one directory tree hold what another holds, file by file.

/// Temporary names start with this (then `PID-RANDOM-NAME`); a leftover one is removed by the
/// next sync of its directory.
const TEMP_PREFIX: &str = ".repo-deploy-sync-";

/// Make `dst` hold exactly what `src` holds (files, symlinks, directories, modes, mtimes).
/// Returns how many entries were written or removed.
fn sync_tree(src: &Path, dst: &Path) -> io::Result<u64> {
    if !dst.is_dir() {
        fs::create_dir_all(dst)?;
    }
    let mut changed = 0;
    sync_dir(src, dst, &mut changed)?;
    File::open(dst).and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from))?;
    Ok(changed)
}

/// Remove the engine's temporary files anywhere under `dir` (a sync does it as it goes).
fn sweep_temporaries(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            remove_any(&path)?;
            tracing::info!("removed leftover {}", path.display());
        } else if entry.file_type()?.is_dir() {
            sweep_temporaries(&path)?;
        }
    }
    Ok(())
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{TEMP_PREFIX}{}-{name}", fsutil::unique_suffix()))
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `to` already holds `from`: same size, mtime and mode, and — because two versions
/// written within one timestamp tick look alike — the same bytes.
fn same_file(from: &Path, a: &fs::Metadata, to: &Path, b: &fs::Metadata) -> io::Result<bool> {
    if !(b.is_file()
        && a.len() == b.len()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
        && a.mode() == b.mode())
    {
        return Ok(false);
    }
    let (mut x, mut y) = (File::open(from)?, File::open(to)?);
    let (mut bx, mut by) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = io::Read::read(&mut x, &mut bx)?;
        if n == 0 {
            return Ok(true);
        }
        if io::Read::read_exact(&mut y, &mut by[..n]).is_err() || bx[..n] != by[..n] {
            return Ok(false);
        }
    }
}

fn sync_dir(src: &Path, dst: &Path, changed: &mut u64) -> io::Result<()> {
    let mut wanted: HashSet<OsString> = HashSet::new();
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        let (from, to) = (src.join(&name), dst.join(&name));
        let meta = fs::symlink_metadata(&from)?;
        let existing = fs::symlink_metadata(&to).ok();
        wanted.insert(name);
        if meta.is_dir() {
            if !existing.as_ref().is_some_and(fs::Metadata::is_dir) {
                remove_any(&to)?;
                fs::create_dir(&to)?;
                *changed += 1;
            }
            sync_dir(&from, &to, changed)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&from)?;
            if existing
                .as_ref()
                .is_some_and(|m| m.file_type().is_symlink())
                && fs::read_link(&to)? == target
            {
                continue;
            }
            let tmp = temp_beside(&to);
            remove_any(&tmp)?;
            std::os::unix::fs::symlink(&target, &tmp)?;
            replace(&tmp, &to, existing.as_ref())?;
            *changed += 1;
        } else if meta.is_file() {
            if let Some(m) = &existing
                && same_file(&from, &meta, &to, m)?
            {
                continue;
            }
            let tmp = temp_beside(&to);
            remove_any(&tmp)?;
            fs::copy(&from, &tmp)?;
            let file = File::open(&tmp)?;
            file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            file.set_times(FileTimes::new().set_modified(meta.modified()?))?;
            drop(file);
            replace(&tmp, &to, existing.as_ref())?;
            *changed += 1;
        }
    }
    // Removals last: what the new release does not hold, and leftovers of an interrupted sync.
    for entry in fs::read_dir(dst)? {
        let entry = entry?;
        if !wanted.contains(&entry.file_name()) {
            remove_any(&entry.path())?;
            *changed += 1;
        }
    }
    Ok(())
}

/// Rename `tmp` over `to`; a directory in the way (a type change) is removed first.
fn replace(tmp: &Path, to: &Path, existing: Option<&fs::Metadata>) -> io::Result<()> {
    if existing.is_some_and(fs::Metadata::is_dir) {
        fs::remove_dir_all(to)?;
    }
    fs::rename(tmp, to)
}

#[cfg(test)]
mod tests {
    use super::super::Mode;
    use super::super::tests::setup;
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn recovery_removes_the_trash_of_an_interrupted_deactivate_and_stray_temporaries() {
        let (_d, act, a, _b) = setup(Mode::Sync);
        act.switch(&a).expect("switch");
        let trash = act.directory.join(".current.trash-1-dead");
        fs::create_dir_all(trash.join("sub")).expect("trash");
        fs::write(trash.join("sub/f"), "A").expect("write");
        let other = act.directory.join(".current.other");
        fs::write(&other, "").expect("write");
        // A sync cut short whose releases are both gone since: only the sweep cleans up.
        let stray = act.local.join(format!("{TEMP_PREFIX}1-dead-f"));
        fs::write(&stray, "half").expect("write");
        marker::save(
            &act.directory,
            &Marker {
                name: Some("gone".into()),
                switching: Some(Switching {
                    to: "gone-too".into(),
                    from: None,
                    to_ino: 0,
                }),
            },
        )
        .expect("marker");
        act.recover().expect("recover");
        assert!(!trash.exists(), "trash swept");
        assert!(!stray.exists(), "temporary swept");
        assert!(other.exists(), "only what repo-deploy names is removed");
        assert!(act.local.join("f").exists());
    }

    #[test]
    fn syncs_contents_in_place_and_keeps_the_directory_inode() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, b, live) = (
            d.path().join("a"),
            d.path().join("b"),
            d.path().join("live"),
        );
        fs::create_dir_all(a.join("sub")).expect("mkdir");
        fs::write(a.join("sub/keep"), "same").expect("write");
        fs::write(a.join("old"), "old").expect("write");
        symlink("sub/keep", a.join("link")).expect("link");
        fs::create_dir_all(b.join("sub")).expect("mkdir");
        fs::write(b.join("sub/keep"), "same").expect("write");
        fs::write(b.join("new"), "new").expect("write");
        fs::create_dir(b.join("link")).expect("a dir where a link was");
        fs::set_permissions(b.join("new"), fs::Permissions::from_mode(0o750)).expect("chmod");

        sync_tree(&a, &live).expect("sync a");
        let inode = fs::metadata(&live).expect("live").ino();
        assert_eq!(fs::read_to_string(live.join("old")).expect("old"), "old");
        assert_eq!(
            fs::read_link(live.join("link")).expect("link"),
            PathBuf::from("sub/keep")
        );

        sync_tree(&b, &live).expect("sync b");
        assert_eq!(
            fs::metadata(&live).expect("live").ino(),
            inode,
            "same directory"
        );
        assert!(!live.join("old").exists());
        assert!(live.join("link").is_dir());
        assert_eq!(fs::read_to_string(live.join("new")).expect("new"), "new");
        assert_eq!(
            fs::metadata(live.join("new")).expect("new").mode() & 0o777,
            0o750
        );
        let names: Vec<_> = fs::read_dir(&live)
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(names.len(), 3, "no temp file left: {names:?}");
        assert_eq!(
            sync_tree(&b, &live).expect("again"),
            0,
            "a second sync changes nothing"
        );
    }
}
