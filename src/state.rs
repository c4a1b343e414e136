//! What the agent remembers between runs, in `${directory}/state.json`: the version of every
//! release on disk and the remote's validators (ETag, Last-Modified, size and mtime) for the
//! live version, so a restarted agent neither redeploys what is live nor downloads it again.
//!
//! The file is replaced atomically (temp file, fsync, rename, fsync of the directory). It is
//! advisory: `current` is the truth about what is live, and a missing or unreadable state only
//! costs one full download (whose content hash then matches the live release's).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The remote's answer that identifies a version, kept to make the next check cheap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The version id (`DEPLOY_VERSION`): ETag without quotes, commit id, or SHA-256.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// Local remotes: size and mtime (nanoseconds) of the file, or a digest of a tree's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
}

/// What is known of one release directory under `releases/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub version: String,
    /// SHA-256 of the downloaded content (the ZIP's bytes, or the tree's digest).
    pub sha256: String,
    /// The remote it came from, credentials masked.
    pub remote: String,
    /// RFC 3339 time of publication.
    pub created: String,
}

/// The result of the last check, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheck {
    pub time: String,
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The remote (masked) that `stamp` belongs to; a different remote ignores the stamp.
    #[serde(default)]
    pub remote: String,
    /// Validators of the version that is live.
    #[serde(default)]
    pub stamp: Option<Stamp>,
    /// Release directory name → what it holds.
    #[serde(default)]
    pub releases: BTreeMap<String, ReleaseInfo>,
    #[serde(default)]
    pub last_check: Option<LastCheck>,
}

impl State {
    /// The state file of a deploy directory.
    pub fn path(directory: &Path) -> PathBuf {
        directory.join("state.json")
    }

    /// Load the state; a missing file is an empty state, an unreadable one is logged and
    /// treated as empty (the agent converges instead of wedging).
    pub fn load(directory: &Path) -> State {
        let path = Self::path(directory);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring unreadable state {}: {e}", path.display());
                State::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                tracing::warn!("ignoring unreadable state {}: {e}", path.display());
                State::default()
            }
        }
    }

    /// Write the state atomically and durably.
    pub fn save(&self, directory: &Path) -> io::Result<()> {
        let path = Self::path(directory);
        let tmp = directory.join(format!(".state.json.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(directory)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The stamp to offer the remote, valid only while the live release holds its version
    /// and the remote is the same one.
    pub fn stamp_for(&self, remote: &str, live: Option<&str>) -> Option<&Stamp> {
        let info = self.releases.get(live?)?;
        let stamp = self.stamp.as_ref()?;
        (self.remote == remote && stamp.version == info.version).then_some(stamp)
    }

    /// Forget releases that are no longer on disk.
    pub fn retain_releases(&mut self, on_disk: &[String]) {
        self.releases.retain(|name, _| on_disk.contains(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(State::load(dir.path()), State::default());
        let mut s = State { remote: "r".into(), ..State::default() };
        s.releases.insert("a".into(), ReleaseInfo { version: "v1".into(), ..Default::default() });
        s.save(dir.path()).expect("save");
        assert_eq!(State::load(dir.path()), s);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temp file left");
    }

    #[test]
    fn corrupt_file_is_an_empty_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(State::path(dir.path()), b"{not json").expect("write");
        assert_eq!(State::load(dir.path()), State::default());
    }

    #[test]
    fn stamp_only_for_the_live_version_of_the_same_remote() {
        let mut s = State { remote: "r".into(), ..State::default() };
        s.stamp = Some(Stamp { version: "v1".into(), ..Default::default() });
        s.releases.insert("rel1".into(), ReleaseInfo { version: "v1".into(), ..Default::default() });
        s.releases.insert("rel0".into(), ReleaseInfo { version: "v0".into(), ..Default::default() });
        assert!(s.stamp_for("r", Some("rel1")).is_some());
        assert!(s.stamp_for("r", Some("rel0")).is_none(), "rolled back by hand");
        assert!(s.stamp_for("other", Some("rel1")).is_none());
        assert!(s.stamp_for("r", None).is_none());
    }
}
