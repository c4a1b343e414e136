//! `${directory}/active.json`: in exchange and sync modes `current` is a directory, so the name
//! of the release it holds is recorded here, with the switch in progress (if any) so that a
//! crash in the middle is resolved at the next start.
//!
//! Invariant: the record is replaced atomically and durably ([`fsutil::write_durable`]); a
//! reader finds the old record or the new one. Its temporary files are swept at start.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil;

const FILE: &str = "active.json";

/// What `current` holds, and the switch under way.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Marker {
    pub name: Option<String>,
    /// Kept as `pending` on disk: the name `active.json` has always used.
    #[serde(default, rename = "pending")]
    pub switching: Option<Switching>,
}

/// A switch that has started and not yet been recorded as done.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Switching {
    pub to: String,
    pub from: Option<String>,
    /// Inode of the new release's directory: after an exchange, `current` has it.
    pub to_ino: u64,
}

pub(super) fn path(directory: &Path) -> PathBuf {
    directory.join(FILE)
}

/// The record, or the empty one if there is none yet.
pub(super) fn load(directory: &Path) -> io::Result<Marker> {
    let path = path(directory);
    match fsutil::not_found_is_none(fs::read(&path))? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::other(format!(
                "{} is not a valid record of the live release ({e}): remove it and run again",
                path.display()
            ))
        }),
        None => Ok(Marker::default()),
    }
}

/// Replace the record atomically and durably.
pub(super) fn save(directory: &Path, marker: &Marker) -> io::Result<()> {
    let bytes = serde_json::to_vec(marker).map_err(io::Error::other)?;
    fsutil::write_durable(&path(directory), &bytes)
}

/// Remove the temporary files of a write that a crash interrupted.
pub(super) fn sweep(directory: &Path) -> io::Result<()> {
    let Some(entries) = fsutil::not_found_is_none(fs::read_dir(directory))? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        if fsutil::is_temp_of(&entry.file_name().to_string_lossy(), FILE) {
            fsutil::not_found_is_ok(fs::remove_file(entry.path()))?;
            tracing::info!("removed leftover {}", entry.path().display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sweep() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(d.path()).expect("empty"), Marker::default());
        let m = Marker {
            name: Some("a".into()),
            switching: Some(Switching {
                to: "b".into(),
                from: Some("a".into()),
                to_ino: 7,
            }),
        };
        save(d.path(), &m).expect("save");
        assert_eq!(load(d.path()).expect("load"), m);
        let leftover = d.path().join(".active.json.tmp-1-dead");
        fs::write(&leftover, "{").expect("leftover");
        sweep(d.path()).expect("sweep");
        assert!(!leftover.exists());
        assert!(path(d.path()).exists());
    }
}
