//! The anti-rollback record, `${directory}/trust.json`: the newest signed time this host has
//! ever verified (TUF's rule: not only the live version's), with that bundle's hash, so that
//! neither an older bundle nor a different one signed at the same second can follow it.
//!
//! Written durably before the version it admits is unpacked. A record that cannot be read
//! fails closed: nothing is deployed until an operator removes it, and a missing record next to
//! a live signed release is rebuilt from that release's signature (see `cycle.rs`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The newest signed time verified: a `timestamp:` or a committer date (Unix seconds).
    pub timestamp: u64,
    /// SHA-256 of that version's content (the ZIP's bytes; for git, the commit id).
    pub sha256: String,
    /// Its signer (key id or principal), for operators.
    pub signer: String,
}

#[derive(Debug, Error)]
pub enum RecordError {
    #[error(
        "the anti-rollback record {0} is corrupt ({1}): nothing is deployed until it is mended. Remove it (`rm {0}`): the next check rebuilds it from the live release's signature"
    )]
    Corrupt(String, String),
    #[error("cannot read the anti-rollback record {0}: {1}")]
    Unreadable(String, io::Error),
}

impl Record {
    pub const NAME: &str = "trust.json";

    pub fn path(directory: &Path) -> PathBuf {
        directory.join(Self::NAME)
    }

    /// The record of a deploy directory: `None` when there is none yet.
    pub fn load(directory: &Path) -> Result<Option<Record>, RecordError> {
        let path = Self::path(directory);
        let shown = || path.display().to_string();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RecordError::Corrupt(shown(), e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RecordError::Unreadable(shown(), e)),
        }
    }

    /// Replace the record, durably.
    pub fn save(&self, directory: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        fsutil::write_durable(&Self::path(directory), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(Record::load(dir.path()), Ok(None)));
        let r = Record {
            timestamp: 7,
            sha256: "ab".into(),
            signer: "K".into(),
        };
        r.save(dir.path()).expect("save");
        assert_eq!(Record::load(dir.path()).expect("load"), Some(r));
        fs::write(Record::path(dir.path()), b"{\"timestamp\": 7").expect("write");
        let e = Record::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("rm "), "{e}");
    }
}
