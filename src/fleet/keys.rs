//! The key layout of one fleet in etcd, as pure functions.
//!
//! Everything of the group `F` lives under `{etcd-prefix}/F/`:
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `hosts/{host}` | the host's status (JSON) | the host's lease |
//! | `places/{version}/{host}` | empty: a place asked for or held | the host's lease |
//! | `rollouts/{version}` | the version's rollout settings and canary list (JSON) | until removed by hand |
//! | `baked/{version}/{host}` | a canary's "live and baked healthy" record | until removed by hand |
//! | `halted/{version}` | who halted the version, why, when (JSON) | until `resume` |
//! | `notify` | anything: every put wakes the group | kept |
//!
//! Host names and versions are one key segment each: a `/`, a `%` or any byte outside
//! `[A-Za-z0-9._-]` is percent-encoded, so `places/{version}/` never matches a longer version's
//! keys and a version with a `/` (a git ref) cannot escape its directory. The fleet name is
//! validated instead (SPEC: letters, digits, `-`, `_`, `.`), as operators type it.

use super::error::FleetError;

/// The keys of one fleet: built once from the prefix and the fleet name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `{prefix}/{fleet}/`, always ending with one `/`.
    root: String,
    fleet: String,
}

impl Keys {
    /// The layout under `prefix` (e.g. `/repo-deploy`) for the group `fleet`.
    pub fn new(prefix: &str, fleet: &str) -> Result<Keys, FleetError> {
        validate_fleet(fleet)?;
        if !prefix.starts_with('/') {
            return Err(FleetError::Config(format!(
                "etcd-prefix {prefix:?} must start with '/' (the default is /repo-deploy)"
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        Ok(Keys {
            root: format!("{prefix}/{fleet}/"),
            fleet: fleet.to_owned(),
        })
    }

    /// The group's name.
    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    /// `{root}hosts/`: the presence of every live host.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.root)
    }

    /// `{root}hosts/{host}`.
    pub fn host(&self, host: &str) -> String {
        format!("{}{}", self.hosts(), segment(host))
    }

    /// `{root}places/`: every place of the group, whatever its version (the limit is the
    /// group's).
    pub fn all_places(&self) -> String {
        format!("{}places/", self.root)
    }

    /// `{root}places/{version}/`: every place asked for or held for `version`.
    pub fn places(&self, version: &str) -> String {
        format!("{}places/{}/", self.root, segment(version))
    }

    /// `{root}places/{version}/{host}`.
    pub fn place(&self, version: &str, host: &str) -> String {
        format!("{}{}", self.places(version), segment(host))
    }

    /// `{root}rollouts/{version}`: the settings of the first host that asked.
    pub fn rollout(&self, version: &str) -> String {
        format!("{}rollouts/{}", self.root, segment(version))
    }

    /// `{root}baked/{version}/`: the canaries that have `version` live and baked healthy.
    pub fn baked(&self, version: &str) -> String {
        format!("{}baked/{}/", self.root, segment(version))
    }

    /// `{root}baked/{version}/{host}`.
    pub fn baked_host(&self, version: &str, host: &str) -> String {
        format!("{}{}", self.baked(version), segment(host))
    }

    /// `{root}halted/`: every halted version.
    pub fn halted_all(&self) -> String {
        format!("{}halted/", self.root)
    }

    /// `{root}halted/{version}`.
    pub fn halted(&self, version: &str) -> String {
        format!("{}{}", self.halted_all(), segment(version))
    }

    /// `{root}known/`: every host that joined and did not leave cleanly (no lease).
    pub fn known_all(&self) -> String {
        format!("{}known/", self.root)
    }

    /// `{root}known/{host}`.
    pub fn known(&self, host: &str) -> String {
        format!("{}{}", self.known_all(), segment(host))
    }

    /// `{root}notify`: a put wakes every daemon of the group.
    pub fn notify(&self) -> String {
        format!("{}notify", self.root)
    }
}

/// The version of a place key `{dir}{version}/{host}` (`dir` is [`Keys::all_places`]).
pub fn version_of_place(dir: &str, key: &[u8]) -> Option<String> {
    let rest = std::str::from_utf8(key.strip_prefix(dir.as_bytes())?).ok()?;
    let (version, host) = rest.split_once('/')?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    decode_segment(version)
}

/// The last segment of `key` under `dir` (a directory key ending with `/`), decoded: the host
/// of `places/{v}/{host}`, the version of `halted/{version}`. `None` when `key` is not directly
/// under `dir` or does not decode.
pub fn name_under(dir: &str, key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(dir.as_bytes())?;
    if rest.is_empty() || rest.contains(&b'/') {
        return None;
    }
    decode_segment(std::str::from_utf8(rest).ok()?)
}

/// The end of the range of every key that starts with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes (or empty): every key from `prefix` on.
    vec![0]
}

/// Check a fleet name: letters, digits, `-`, `_`, `.`; not empty, not `.` or `..`.
pub fn validate_fleet(fleet: &str) -> Result<(), FleetError> {
    let ok = !fleet.is_empty()
        && fleet != "."
        && fleet != ".."
        && fleet
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::Config(format!(
            "fleet name {fleet:?} is not valid: use letters, digits, '-', '_' and '.' only"
        )))
    }
}

/// One key segment: unreserved bytes as they are, every other byte as `%XX`.
fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`segment`]; `None` on a malformed escape or non-UTF-8 result.
fn decode_segment(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_under_prefix_and_fleet() {
        let k = Keys::new("/repo-deploy/", "web.prod").unwrap();
        assert_eq!(k.host("a1"), "/repo-deploy/web.prod/hosts/a1");
        assert_eq!(k.places("v2"), "/repo-deploy/web.prod/places/v2/");
        assert_eq!(k.place("v2", "a1"), "/repo-deploy/web.prod/places/v2/a1");
        assert_eq!(k.rollout("v2"), "/repo-deploy/web.prod/rollouts/v2");
        assert_eq!(
            k.baked_host("v2", "a1"),
            "/repo-deploy/web.prod/baked/v2/a1"
        );
        assert_eq!(k.halted("v2"), "/repo-deploy/web.prod/halted/v2");
        assert_eq!(k.notify(), "/repo-deploy/web.prod/notify");
    }

    #[test]
    fn versions_and_hosts_are_one_segment_each() {
        let k = Keys::new("/p", "f").unwrap();
        // A version with '/' stays in its directory; "v1" is not a prefix of "v1.1"'s places.
        assert_eq!(k.places("refs/tags/v1"), "/p/f/places/refs%2Ftags%2Fv1/");
        assert!(!k.place("v1.1", "h").starts_with(&k.places("v1")));
        let key = k.place("refs/tags/v1", "host 1");
        assert_eq!(
            name_under(&k.places("refs/tags/v1"), key.as_bytes()).as_deref(),
            Some("host 1")
        );
        assert_eq!(name_under(&k.places("v"), b"/p/f/places/v/a/b"), None);
        assert_eq!(name_under(&k.places("v"), b"/p/f/places/w/a"), None);
        assert_eq!(name_under("/d/", b"/d/%zz"), None);
    }

    #[test]
    fn fleet_names_are_validated() {
        for good in ["web", "web-1", "a_b.c", "X9"] {
            assert!(Keys::new("/p", good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", "a*"] {
            let err = Keys::new("/p", bad).unwrap_err().to_string();
            assert!(err.contains("letters, digits"), "{bad}: {err}");
        }
        let err = Keys::new("p", "web").unwrap_err().to_string();
        assert!(err.contains("must start with '/'"), "{err}");
    }

    #[test]
    fn the_version_of_a_place_key() {
        let k = Keys::new("/p", "f").unwrap();
        let key = k.place("refs/tags/v1", "h1");
        assert_eq!(
            version_of_place(&k.all_places(), key.as_bytes()).as_deref(),
            Some("refs/tags/v1")
        );
        assert_eq!(version_of_place(&k.all_places(), b"/p/f/places/v1"), None);
        assert_eq!(version_of_place(&k.all_places(), b"/p/f/hosts/v1/h"), None);
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
