//! Signed releases (SPEC § Signed releases): whoever can write to the bucket, the web origin
//! or the repository must not be able to run code on the fleet, nor replay an older version.
//!
//! This module knows keys, signatures, the anti-rollback record and why a version is refused;
//! it knows no remote. The sources fetch `<remote>.minisig` and hash the ZIP while it
//! downloads (`source/signed.rs`); the cycle asks [`Trust`] for a verdict before anything is
//! unpacked, and keeps the [`Record`].

mod minisig;
mod record;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use minisig::{Prehash, Signature, TrustedKeys};
pub use record::Record;

/// The trust settings of a configuration.
#[derive(Debug, Clone)]
pub enum Trust {
    /// `trusted-keys`: every ZIP needs a minisign signature from one of these keys.
    Minisign {
        keys: TrustedKeys,
        /// The file the keys came from, for messages.
        file: PathBuf,
        max_age: Option<Duration>,
    },
    /// `allowed-signers`: every commit (or tag) needs a good SSH signature, checked by git.
    Git {
        allowed_signers: PathBuf,
        verify: GitVerify,
        max_age: Option<Duration>,
    },
}

/// `git-verify`: what git must find signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitVerify {
    /// The deployed commit itself.
    Commit,
    /// The ref is an annotated tag signed by an allowed signer (its commit is deployed).
    Tag,
}

impl std::fmt::Display for GitVerify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GitVerify::Commit => "commit",
            GitVerify::Tag => "tag",
        })
    }
}

impl Trust {
    /// What a refusal was judged under: the keys (or the allowed-signers file's content, read
    /// now), the git mode and the age limit, hashed.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        match self {
            Trust::Minisign { keys, .. } => h.update(keys.fingerprint()),
            Trust::Git {
                allowed_signers,
                verify,
                ..
            } => {
                h.update(std::fs::read(allowed_signers).unwrap_or_default());
                h.update(verify.to_string());
            }
        }
        h.update(self.max_age().map_or(0, |d| d.as_secs()).to_le_bytes());
        hex::encode(h.finalize())
    }

    /// `max-signature-age`, whichever the kind.
    pub fn max_age(&self) -> Option<Duration> {
        match self {
            Trust::Minisign { max_age, .. } | Trust::Git { max_age, .. } => *max_age,
        }
    }
}

/// What a verified version was signed with and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `DEPLOY_SIGNER`: the minisign key id (16 hex digits) or the git signer's principal.
    pub signer: String,
    /// The signed time: the trusted comment's `timestamp:` or the commit's committer date.
    pub timestamp: u64,
}

/// Why a version was refused as untrusted (exit 6). Each names what was wrong and what to do.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "no signature at {at}: publish the bundle with `repo-deploy publish --sign`, or sign it with `minisign -S` and upload the .minisig next to it"
    )]
    Missing { at: String },
    #[error("the signature {at} is malformed ({why}): publish it again")]
    Malformed { at: String, why: String },
    #[error(
        "the signature was made by key {key}, which is not in trusted-keys ({file}): add its public key there, or sign with a trusted key"
    )]
    UnknownKey { key: String, file: String },
    #[error(
        "bad signature by key {key}: the bundle or its trusted comment was changed after signing, or the signature belongs to another bundle (a publish in progress is retried at the next check)"
    )]
    BadSignature { key: String },
    #[error(
        "signed at {signed}, older than {newest}, the newest version this host has verified: an older version cannot replace a newer one (an operator can still run `repo-deploy rollback`)"
    )]
    Older { signed: String, newest: String },
    #[error(
        "a different bundle carries the same signed time {signed} as the newest version this host has verified: sign every new bundle anew"
    )]
    Replayed { signed: String },
    #[error(
        "the signature was made at {signed}, more than max-signature-age ({max}) ago: publish the version again (a frozen mirror must not hold the fleet back)"
    )]
    Expired { signed: String, max: String },
    #[error("the signature is for file {signed:?}, not {expected:?}: it belongs to another bundle")]
    WrongFile { signed: String, expected: String },
    #[error(
        "commit {commit} is not signed (git-verify = {what}): sign it with an allowed key (`git commit -S` with gpg.format = ssh)"
    )]
    Unsigned { commit: String, what: &'static str },
    #[error("{what} {id} is not signed by a key in allowed-signers ({file}): {detail}")]
    SignerNotAllowed {
        what: &'static str,
        id: String,
        file: String,
        detail: String,
    },
    #[error(
        "commit {commit} is older than the live commit {live} (committed {committed}, the live one {live_committed}): an older commit cannot replace a newer one"
    )]
    OlderCommit {
        commit: String,
        live: String,
        committed: String,
        live_committed: String,
    },
}

impl Refusal {
    /// The `reason` label of `repo_deploy_refusals_total` and of `status`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing { .. } => "missing",
            Refusal::Malformed { .. } => "malformed",
            Refusal::UnknownKey { .. } => "unknown_key",
            Refusal::BadSignature { .. } => "bad_signature",
            Refusal::Older { .. } | Refusal::Replayed { .. } | Refusal::OlderCommit { .. } => {
                "older"
            }
            Refusal::Expired { .. } => "expired",
            Refusal::WrongFile { .. } => "wrong_file",
            Refusal::Unsigned { .. } => "unsigned",
            Refusal::SignerNotAllowed { .. } => "signer_not_allowed",
        }
    }

    /// Every label, for the metric's zero values.
    pub const REASONS: [&'static str; 9] = [
        "missing",
        "malformed",
        "unknown_key",
        "bad_signature",
        "older",
        "expired",
        "wrong_file",
        "unsigned",
        "signer_not_allowed",
    ];
}

/// A Unix time as RFC 3339, for messages.
pub fn show_time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(|| format!("{secs} (Unix time)"), |t| t.to_rfc3339())
}

/// The checks that follow a good signature: not expired (`max-signature-age`, against this
/// host's clock `now`), and not older than the newest version this host has verified (the
/// record), nor (with `one_per_second`: minisign's timestamps, which `publish` makes anew for
/// every bundle) a different bundle with the same signed time. Two git commits may share
/// their committer second; only an earlier one is refused.
pub fn check_freshness(
    signed: u64,
    sha256: &str,
    record: Option<&Record>,
    max_age: Option<Duration>,
    now: u64,
    one_per_second: bool,
) -> Result<(), Refusal> {
    if let Some(max) = max_age
        && now.saturating_sub(signed) > max.as_secs()
    {
        return Err(Refusal::Expired {
            signed: show_time(signed),
            max: humanize(max),
        });
    }
    let Some(record) = record else {
        return Ok(());
    };
    if signed < record.timestamp {
        return Err(Refusal::Older {
            signed: show_time(signed),
            newest: show_time(record.timestamp),
        });
    }
    if one_per_second && signed == record.timestamp && sha256 != record.sha256 {
        return Err(Refusal::Replayed {
            signed: show_time(signed),
        });
    }
    Ok(())
}

/// `max-signature-age` as written back: `30d`, `12h`, `90m` or seconds.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s >= 86_400 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s >= 3_600 && s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s >= 60 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Parse `max-signature-age`: whole seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_age(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().last()? {
        (i, 's') => (&t[..i], 1),
        (i, 'm') => (&t[..i], 60),
        (i, 'h') => (&t[..i], 3_600),
        (i, 'd') => (&t[..i], 86_400),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(unit)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(timestamp: u64, sha256: &str) -> Record {
        Record {
            timestamp,
            sha256: sha256.into(),
            signer: "K".into(),
        }
    }

    #[test]
    fn ages_parse_with_units() {
        assert_eq!(parse_age("30d"), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_age("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_age("5m"), Some(Duration::from_secs(300)));
        for bad in ["", "0", "-1d", "1w", "d", "1.5h"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
        assert_eq!(humanize(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(humanize(Duration::from_secs(61)), "61s");
    }

    #[test]
    fn freshness_refuses_older_replayed_and_expired() {
        let r = record(1_000, "aa");
        assert_eq!(
            check_freshness(1_001, "bb", Some(&r), None, 2_000, true),
            Ok(())
        );
        assert_eq!(
            check_freshness(1_000, "aa", Some(&r), None, 2_000, true),
            Ok(())
        );
        let older = check_freshness(999, "bb", Some(&r), None, 2_000, true).unwrap_err();
        assert_eq!(older.reason(), "older");
        let replayed = check_freshness(1_000, "bb", Some(&r), None, 2_000, true).unwrap_err();
        assert!(matches!(replayed, Refusal::Replayed { .. }), "{replayed}");
        assert_eq!(
            check_freshness(1_000, "bb", Some(&r), None, 2_000, false),
            Ok(())
        );
        let max = Some(Duration::from_secs(100));
        let expired = check_freshness(1_500, "bb", None, max, 1_601, true).unwrap_err();
        assert_eq!(expired.reason(), "expired");
        assert_eq!(check_freshness(1_500, "bb", None, max, 1_600, true), Ok(()));
    }
}
