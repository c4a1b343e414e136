//! The check's decisions, as pure functions of what the agent knows (the state, the live
//! release) and what the remote said: whether a new version is deployed, kept out by a
//! rollback pin, or is the live one under a new name; and which old releases go.
//!
//! Nothing here touches the filesystem or the network, so every rule is unit-tested on
//! plain values; `cycle.rs` does the I/O around them.

use crate::state::{Pin, ReleaseInfo};

/// What the remote offers, once its content is in the cache.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// The version id (ETag, commit, or SHA-256).
    pub version: &'a str,
    /// The SHA-256 of the content (the ZIP's bytes or the tree's digest).
    pub sha256: &'a str,
}

/// What a check does with an [`Offer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The remote still offers the version an operator rolled back from: stay on the pinned
    /// release, and remember the remote's validators so the next check is cheap.
    StayPinned,
    /// The live release already holds these bytes (a touched file, a new ETag): deploy
    /// nothing; remember the validators and the new version id of the live release.
    /// `lift_pin` as for [`Decision::Deploy`].
    SameBytes { lift_pin: bool },
    /// Deploy the offer. `lift_pin`: a rollback pin is in force, and the remote has moved on
    /// from the version it kept out, so the pin goes.
    Deploy { lift_pin: bool },
}

/// Decide what to do with `offer`, given the rollback pin and the live release's record.
pub fn offer(pin: Option<&Pin>, live: Option<&ReleaseInfo>, offer: Offer<'_>) -> Decision {
    if pin.is_some_and(|p| p.from_version == offer.version) {
        return Decision::StayPinned;
    }
    let lift_pin = pin.is_some();
    if live.is_some_and(|l| l.sha256 == offer.sha256) {
        return Decision::SameBytes { lift_pin };
    }
    Decision::Deploy { lift_pin }
}

/// How many releases stay under `releases/` for a `keep` setting: in exchange mode the live
/// release's files are `current` itself, not under `releases/`, and count toward `keep`.
pub fn kept_under_releases(keep: usize, live_outside: bool) -> usize {
    if live_outside {
        keep.saturating_sub(1)
    } else {
        keep
    }
}

/// Step 7, retention: of `names` (the releases, oldest first), which to remove so that
/// `keep` remain. The `protected` ones (the live release and the one before it) always stay
/// and count toward `keep`; the newest of the others fill what is left.
pub fn retention<'a>(names: &'a [String], keep: usize, protected: &[&str]) -> Vec<&'a str> {
    let is_protected = |name: &str| protected.contains(&name);
    let mut kept = names.iter().filter(|n| is_protected(n)).count();
    let mut remove = Vec::new();
    for name in names.iter().rev() {
        if is_protected(name) {
            continue;
        }
        if kept < keep {
            kept += 1;
            continue;
        }
        remove.push(name.as_str());
    }
    remove
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sha: &str) -> ReleaseInfo {
        ReleaseInfo {
            version: "v1".into(),
            sha256: sha.into(),
            remote: "r".into(),
            created: "t".into(),
            ..ReleaseInfo::default()
        }
    }

    fn pin(from: &str) -> Pin {
        Pin {
            release: "old".into(),
            from_version: from.into(),
            since: "t".into(),
        }
    }

    const OFFER: Offer<'static> = Offer {
        version: "v2",
        sha256: "bbb",
    };

    #[test]
    fn a_new_version_is_deployed() {
        assert_eq!(
            offer(None, Some(&info("aaa")), OFFER),
            Decision::Deploy { lift_pin: false }
        );
        // A first deploy: nothing is live.
        assert_eq!(
            offer(None, None, OFFER),
            Decision::Deploy { lift_pin: false }
        );
    }

    #[test]
    fn the_same_bytes_under_a_new_version_are_not_deployed_again() {
        assert_eq!(
            offer(None, Some(&info("bbb")), OFFER),
            Decision::SameBytes { lift_pin: false }
        );
    }

    #[test]
    fn a_pin_holds_while_the_remote_offers_the_version_rolled_back_from() {
        let p = pin("v2");
        assert_eq!(
            offer(Some(&p), Some(&info("aaa")), OFFER),
            Decision::StayPinned
        );
        // Even when the pinned release happens to hold the same bytes.
        assert_eq!(
            offer(Some(&p), Some(&info("bbb")), OFFER),
            Decision::StayPinned
        );
    }

    #[test]
    fn a_pin_is_lifted_when_the_remote_moves_on() {
        let p = pin("v1");
        assert_eq!(
            offer(Some(&p), Some(&info("aaa")), OFFER),
            Decision::Deploy { lift_pin: true }
        );
        // Moving on to bytes that are live already: nothing to deploy, but the pin goes too.
        assert_eq!(
            offer(Some(&p), Some(&info("bbb")), OFFER),
            Decision::SameBytes { lift_pin: true }
        );
    }

    #[test]
    fn exchange_mode_keeps_one_fewer_under_releases() {
        assert_eq!(kept_under_releases(5, false), 5);
        assert_eq!(kept_under_releases(5, true), 4);
        assert_eq!(kept_under_releases(0, true), 0);
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn retention_removes_the_oldest_beyond_keep() {
        let all = names(&["r1", "r2", "r3", "r4", "r5"]);
        assert_eq!(retention(&all, 3, &["r5", "r4"]), vec!["r2", "r1"]);
        assert_eq!(retention(&all, 5, &["r5"]), Vec::<&str>::new());
        assert_eq!(retention(&all, 9, &[]), Vec::<&str>::new());
    }

    #[test]
    fn retention_never_removes_a_protected_release_however_old() {
        // After a rollback the live release is the oldest one.
        let all = names(&["r1", "r2", "r3", "r4"]);
        assert_eq!(retention(&all, 2, &["r1", "r4"]), vec!["r3", "r2"]);
        // Protected releases count toward keep even past it.
        assert_eq!(retention(&all, 1, &["r1", "r2"]), vec!["r4", "r3"]);
    }
}
