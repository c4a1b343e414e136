//! What the agent remembers between runs, in `${directory}/state.json`: the version of every
//! release on disk and the remote's validators (ETag, Last-Modified, size and mtime) for the
//! live version, so a restarted agent neither redeploys what is live nor downloads it again.
//!
//! The file is replaced atomically (temp file, fsync, rename, fsync of the directory). It is
//! advisory: `current` is the truth about what is live, and a missing or unreadable state only
//! costs one full download (whose content hash then matches the live release's).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil;

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
    /// With `trusted-keys`: the `.minisig` it was verified with (the anti-rollback record is
    /// rebuilt from the live release's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// `DEPLOY_SIGNER`: the key id or principal that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Its signed time (Unix seconds): the anti-rollback record is rebuilt from the live
    /// release's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
}

/// A version refused as untrusted, remembered so that the next checks ask the remote only
/// whether the ZIP or its signature changed (SPEC § Signed releases).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The remote it was refused from (credentials masked); another remote forgets it.
    #[serde(default)]
    pub remote: String,
    /// The trust settings it was refused under (`Trust::fingerprint`); other settings
    /// forget it.
    #[serde(default)]
    pub trust: String,
    /// The refused ZIP's (or commit's) validators.
    pub zip: Stamp,
    /// Its signature's validators; `None` when it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Stamp>,
    /// The metric's label (`missing`, `bad_signature`, …).
    pub reason: String,
    /// The whole reason, as logged.
    pub message: String,
    /// RFC 3339 time of the first refusal.
    pub time: String,
}

impl Refused {
    pub fn of(refusal: &crate::trust::Refusal, zip: Stamp, signature: Option<Stamp>) -> Refused {
        Refused {
            remote: String::new(),
            trust: String::new(),
            zip,
            signature,
            reason: refusal.reason().to_string(),
            message: refusal.to_string(),
            time: chrono::Utc::now().to_rfc3339(),
        }
    }
}

/// The result of the last check, for operators (`${directory}/status.json`). Rewritten after
/// every check, atomically but without fsync: losing it to a power cut costs nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheck {
    /// RFC 3339 time the check ended.
    pub time: String,
    /// `unchanged`, `deployed`, `failed`, `blocked`, `rolled_back` or `interrupted`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 time of the last check that did not fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
}

impl LastCheck {
    fn path(directory: &Path) -> PathBuf {
        directory.join("status.json")
    }

    /// The last check's record, if any.
    pub fn load(directory: &Path) -> Option<LastCheck> {
        let bytes = fs::read(Self::path(directory)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Record a check's result, keeping the time of the last success.
    pub fn record(directory: &Path, result: &str, error: Option<String>) {
        let time = chrono::Utc::now().to_rfc3339();
        let last_success = if error.is_none() {
            Some(time.clone())
        } else {
            Self::load(directory).and_then(|c| c.last_success)
        };
        let check = LastCheck {
            time,
            result: result.to_string(),
            error,
            last_success,
        };
        let written = serde_json::to_vec_pretty(&check)
            .map_err(io::Error::other)
            .and_then(|bytes| fsutil::write_atomic(&Self::path(directory), &bytes));
        if let Err(e) = written {
            tracing::warn!("cannot write {}: {e}", Self::path(directory).display());
        }
    }
}

/// A switch whose post-update hooks have not passed yet, in `${directory}/post-hooks.json`:
/// written durably before the switch and removed once the hooks passed or the rollback is
/// done. Found at the next check while its release is live, it means the agent died between
/// the switch and the end of the hooks, so they run again (hooks run at least once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostHooksDue {
    /// Name of the release switched to.
    pub release: String,
    /// Name of the release that was live before, if any.
    pub previous: Option<String>,
    pub version: String,
    pub previous_version: String,
}

impl PostHooksDue {
    const NAME: &str = "post-hooks.json";

    /// The record of a deploy directory, if any (an unreadable one is logged and
    /// ignored: `current` stays what it is).
    pub fn load(directory: &Path) -> Option<PostHooksDue> {
        let path = directory.join(Self::NAME);
        let bytes = fs::read(&path).ok()?;
        serde_json::from_slice(&bytes)
            .inspect_err(|e| tracing::warn!("ignoring unreadable {}: {e}", path.display()))
            .ok()
    }

    /// Record, durably, that the post-update hooks of this switch are due.
    pub fn save(&self, directory: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        fsutil::write_durable(&directory.join(Self::NAME), &bytes)
    }

    /// The hooks are done (passed, or rolled back): forget the record. Not fsynced: if a power
    /// cut brings it back, the hooks run once more.
    pub fn clear(directory: &Path) {
        let path = directory.join(Self::NAME);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
        }
    }
}

/// A version chosen by `repo-deploy rollback`: the agent does not redeploy the version it
/// rolled back from until the remote offers another one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The release rolled back to.
    pub release: String,
    /// The version rolled back from, skipped while the remote still offers it.
    pub from_version: String,
    /// RFC 3339 time of the rollback.
    pub since: String,
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
    /// Set by `rollback`, cleared when the remote offers another version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<Pin>,
    /// The last version refused as untrusted while it is still offered (cleared by any other
    /// outcome); for the remote of `remote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refused>,
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
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        fsutil::write_durable(&Self::path(directory), &bytes)
    }

    /// Remove the temporary files of a `save` (or a status record) that a crash or `kill -9`
    /// interrupted: `.state.json.tmp-*`, `.status.json.tmp-*`, `.post-hooks.json.tmp-*`. Call at start, under the lock.
    pub fn sweep(directory: &Path) -> io::Result<()> {
        let entries = match fs::read_dir(directory) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.as_encoded_bytes();
            let leftover = [
                ".state.json.tmp-",
                ".status.json.tmp-",
                ".post-hooks.json.tmp-",
                ".trust.json.tmp-",
            ]
            .iter()
            .any(|p| name.starts_with(p.as_bytes()));
            if leftover {
                match fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!("removed leftover {}", entry.path().display()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// The stamp to offer the remote, valid only while the live release holds its version
    /// and the remote is the same one.
    pub fn stamp_for(&self, remote: &str, live: Option<&str>) -> Option<&Stamp> {
        let info = self.releases.get(live?)?;
        let stamp = self.stamp.as_ref()?;
        // After a rollback the live version is not the remote's; the remote's validators stay
        // useful, so an unchanged remote still costs one request.
        let pinned = self
            .pin
            .as_ref()
            .is_some_and(|p| p.from_version == stamp.version);
        (self.remote == remote && (stamp.version == info.version || pinned)).then_some(stamp)
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
        let mut s = State {
            remote: "r".into(),
            ..State::default()
        };
        s.releases.insert(
            "a".into(),
            ReleaseInfo {
                version: "v1".into(),
                ..Default::default()
            },
        );
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
        let mut s = State {
            remote: "r".into(),
            ..State::default()
        };
        s.stamp = Some(Stamp {
            version: "v1".into(),
            ..Default::default()
        });
        s.releases.insert(
            "rel1".into(),
            ReleaseInfo {
                version: "v1".into(),
                ..Default::default()
            },
        );
        s.releases.insert(
            "rel0".into(),
            ReleaseInfo {
                version: "v0".into(),
                ..Default::default()
            },
        );
        assert!(s.stamp_for("r", Some("rel1")).is_some());
        assert!(
            s.stamp_for("r", Some("rel0")).is_none(),
            "rolled back by hand"
        );
        assert!(s.stamp_for("other", Some("rel1")).is_none());
        assert!(s.stamp_for("r", None).is_none());
    }
}
