//! What a remote is: parsing the SPEC's remote forms into a [`Remote`], decoding the
//! credentials a URL's user-info carries (`userinfo`, the one decoder), and masking them
//! before a URL is ever printed.
//!
//! The rule that decides the kind comes from the SPEC: a URL whose path has a segment ending
//! in `.git` is git; otherwise the scheme decides. A string without a scheme (`://`) is git's
//! scp-like form (`[user@]host:path`) when git itself would take it for one, else a local path.
//!
//! git's rule (`url_is_local_not_ssh` in `connect.c`, which `git fetch` and `git ls-remote`
//! apply; the agent runs those) is: no `://`, and a `:` before the first `/`. We follow it as
//! is, so that a remote means what it means to git: `deployhost:/srv/app.git#main` and
//! `deployhost:org/app` (no `user@`, no `.git`) are git, while `./dir:x/` and
//! `/srv/a:b/app.zip` (a `/` first) are local. We do not follow `git clone`'s exception (a
//! local path that exists wins): it would make the meaning of a remote depend on the files of
//! the moment. A relative local path whose first component has a `:` is written `./a:b.zip`.
//! Windows drive letters (`C:…`, git's other exception) do not arise on the hosts we run on.
//! The `:` that ends the host is looked for after a bracketed IPv6 host (`[::1]:app.git`).

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use url::Url;

use crate::secret::Secret;

/// A parsed remote. Its `Debug` masks credentials, like everything that can be printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Remote {
    /// A ZIP over HTTP(S). The URL may carry Basic-auth credentials.
    Http(Url),
    /// A ZIP object in S3 (or an S3-compatible store).
    S3 {
        /// The bucket's name.
        bucket: String,
        /// The object's key: everything after the bucket's `/`.
        key: String,
    },
    /// A git repository.
    Git(GitRemote),
    /// A local ZIP file or directory (absolute path).
    Local(PathBuf),
}

/// A git remote: repository URL (as git understands it), optional sub-directory and ref.
/// Its `Debug` is its `Display`: credentials masked.
#[derive(Clone, PartialEq, Eq)]
pub struct GitRemote {
    /// What `git fetch` is given: `ssh://…`, `https://…`, `git://…`, `file://…` or scp-like.
    pub url: String,
    /// The sub-directory to deploy, without leading or trailing `/`; `None` for the whole tree.
    pub path: Option<String>,
    /// Branch or tag after `#`; `None` for the remote's default branch (HEAD).
    pub reference: Option<String>,
}

impl Remote {
    /// A short name for the kind of remote, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Remote::Http(_) => "http",
            Remote::S3 { .. } => "s3",
            Remote::Git(_) => "git",
            Remote::Local(_) => "local",
        }
    }
}

/// Why a remote string was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RemoteError {
    /// The remote is empty or only spaces.
    #[error("remote is empty: set `remote` to a URL or path")]
    Empty,
    /// The remote (masked) does not parse as a URL, or a `file://` URL names no local path;
    /// with the reason.
    #[error("remote {0}: not a valid URL: {1}")]
    BadUrl(String, String),
    /// The remote (masked) has a scheme the agent cannot fetch from (the second field).
    #[error(
        "remote {0}: unsupported scheme `{1}` (use http(s)://, s3://, a git URL, file:// or a path)"
    )]
    Scheme(String, String),
    /// The `s3://` remote (masked) lacks a bucket or an object key, or its key ends in `/`.
    #[error("remote {0}: an S3 remote needs a bucket and a key, as s3://bucket/path/to/app.zip")]
    S3Form(String),
    /// The git remote (masked) ends in a `#` with no branch or tag after it.
    #[error("remote {0}: empty ref after `#`; write `#branch` or leave it out")]
    EmptyRef(String),
}

/// Parse a remote string (after `{id}` substitution). Relative local paths are resolved
/// against `cwd`.
pub fn parse(input: &str, cwd: &Path) -> Result<Remote, RemoteError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(RemoteError::Empty);
    }
    let shown = mask(input);
    if let Some(scheme_end) = input.find("://") {
        let scheme = input[..scheme_end].to_ascii_lowercase();
        return match scheme.as_str() {
            "git" | "ssh" | "git+ssh" | "git+https" | "git+http" | "git+file" => {
                let url = if scheme.starts_with("git+") {
                    &input[4..]
                } else {
                    input
                };
                split_git(url, &shown).map(Remote::Git)
            }
            _ if has_git_segment(url_path(input)) => split_git(input, &shown).map(Remote::Git),
            "http" | "https" => Url::parse(input)
                .map(Remote::Http)
                .map_err(|e| RemoteError::BadUrl(shown, e.to_string())),
            "s3" => parse_s3(input, &shown),
            "file" => {
                let url = Url::parse(input)
                    .map_err(|e| RemoteError::BadUrl(shown.clone(), e.to_string()))?;
                url.to_file_path()
                    .map(Remote::Local)
                    .map_err(|()| RemoteError::BadUrl(shown, "not a local file URL".into()))
            }
            other => Err(RemoteError::Scheme(shown, other.to_string())),
        };
    }
    if is_scp_like(input) {
        return split_git(input, &shown).map(Remote::Git);
    }
    Ok(Remote::Local(cwd.join(input)))
}

fn parse_s3(input: &str, shown: &str) -> Result<Remote, RemoteError> {
    let rest = &input["s3://".len()..];
    let (bucket, key) = rest
        .split_once('/')
        .ok_or_else(|| RemoteError::S3Form(shown.into()))?;
    if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
        return Err(RemoteError::S3Form(shown.into()));
    }
    Ok(Remote::S3 {
        bucket: bucket.into(),
        key: key.into(),
    })
}

/// The path part of a URL-like string: after the authority, before `?` or `#`.
fn url_path(input: &str) -> &str {
    let after_scheme = input.find("://").map_or(input, |i| &input[i + 3..]);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

fn has_git_segment(path: &str) -> bool {
    path.split('/')
        .any(|seg| seg.len() > 4 && seg.ends_with(".git"))
}

/// git's scp-like form `[user@]host:path` (see the module doc): no scheme (the caller checked),
/// a `:` before the first `/`, and a host before it.
fn is_scp_like(input: &str) -> bool {
    let Some(colon) = input.find(':') else {
        return false;
    };
    let slash_first = input.find('/').is_some_and(|slash| slash < colon);
    !slash_first && scp_separator(input).is_some_and(|i| i > 0 && !input[..i].ends_with('@'))
}

/// The `:` between host and path of an scp-like address, after a bracketed host
/// (`[::1]:app.git`, `git@[::1]:app.git`) as git's `host_end` skips it.
fn scp_separator(input: &str) -> Option<usize> {
    let host = input
        .find('@')
        .filter(|&at| !input[..at].contains(':'))
        .map_or(0, |at| at + 1);
    let from = if input[host..].starts_with('[') {
        host + input[host..].find(']')?
    } else {
        host
    };
    input[from..].find(':').map(|i| from + i)
}

/// Split `URL/app.git/sub/dir#ref` into the repository URL, the sub-directory and the ref.
fn split_git(input: &str, shown: &str) -> Result<GitRemote, RemoteError> {
    let (body, reference) = match input.rsplit_once('#') {
        Some((_, "")) => return Err(RemoteError::EmptyRef(shown.into())),
        Some((b, r)) => (b, Some(r.to_string())),
        None => (input, None),
    };
    // Find the first path segment that ends in `.git`; what follows is the sub-directory.
    let path_start = body.find("://").map_or_else(
        || scp_separator(body).map_or(0, |i| i + 1),
        |i| body[i + 3..].find('/').map_or(body.len(), |j| i + 3 + j),
    );
    let mut offset = path_start;
    let mut split = None;
    for seg in body[path_start..].split('/') {
        let end = offset + seg.len();
        if seg.len() > 4 && seg.ends_with(".git") {
            split = Some(end);
            break;
        }
        offset = end + 1;
    }
    let (url, path) = match split {
        Some(end) => {
            let sub = body[end..].trim_matches('/');
            (&body[..end], (!sub.is_empty()).then(|| sub.to_string()))
        }
        None => (body, None),
    };
    Ok(GitRemote {
        url: url.to_string(),
        path,
        reference,
    })
}

/// Query parameters whose values are secrets (pre-signed URLs, API tokens).
const SECRET_PARAMS: &[&str] = &[
    "signature",
    "token",
    "password",
    "secret",
    "credential",
    "key",
    "auth",
    "sig",
];

/// Mask credentials in a remote string: the whole user-info part of a URL becomes `***`, and
/// so do the values of query parameters that look like secrets. Anything printed goes
/// through this first.
pub fn mask(input: &str) -> String {
    let Some(scheme_end) = input.find("://") else {
        return input.to_string();
    };
    let auth_start = scheme_end + 3;
    let auth_end = input[auth_start..]
        .find(['/', '?', '#'])
        .map_or(input.len(), |i| auth_start + i);
    let mut out = String::with_capacity(input.len());
    out.push_str(&input[..auth_start]);
    let authority = &input[auth_start..auth_end];
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***");
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let rest = &input[auth_end..];
    match rest.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let masked: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&masked.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
        }
        None => out.push_str(rest),
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// The secrets a remote string carries (user-info and secret query values), so the log
/// writer can mask them wherever they appear, even inside a library's error message. Both
/// the user-info as written and as decoded by `decode_userinfo` (what is sent) are listed.
pub fn secrets(input: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(url) = Url::parse(input) {
        let mut add = |raw: &str| {
            found.push(raw.to_string());
            if let Ok(decoded) = decode_userinfo(raw, "secret") {
                found.push(decoded);
            }
        };
        if let Some(p) = url.password() {
            add(p);
        }
        // A user name beside a password is not a secret (masking it would mangle every log
        // line that holds the word, `deploy` say); alone, it is usually a token
        // (`https://TOKEN@host/repo.git`).
        if url.password().is_none() && !url.username().is_empty() {
            add(url.username());
        }
        for (k, v) in url.query_pairs() {
            if is_secret_param(&k) && !v.is_empty() {
                found.push(v.into_owned());
            }
        }
    }
    found.retain(|s| s.len() >= 3);
    found.dedup();
    found
}

/// Why the user-info of a URL cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum UserinfoError {
    #[error(
        "the {0} in the URL is not valid UTF-8 once its %XX escapes are decoded; escape each byte of a UTF-8 character"
    )]
    Utf8(&'static str),
    #[error(
        "the {0} in the URL contains a NUL or a line break (%00, %0A or %0D), which cannot be sent"
    )]
    Control(&'static str),
}

/// The user name and password of a URL, decoded by [`decode_userinfo`]; `None` when the URL
/// has neither. The one decoder of user-info: the HTTP source, the git credential helper and
/// the masking of logs all see the same password.
pub(crate) fn userinfo(url: &Url) -> Result<Option<(String, Option<Secret>)>, UserinfoError> {
    if url.username().is_empty() && url.password().is_none() {
        return Ok(None);
    }
    let user = decode_userinfo(url.username(), "user name")?;
    let password = url
        .password()
        .map(|p| decode_userinfo(p, "password").map(Secret::new))
        .transpose()?;
    Ok(Some((user, password)))
}

/// Decode one part (`what`: "user name", "password") of a URL's user-info: `%XX` escapes
/// only, as RFC 3986 defines it. Not form decoding: a `+` stays a `+` (bug 3 of issue 11:
/// a password `a+b` was sent as `a b`). An escape that is not `%` and two hex digits is kept
/// as written, as the `url` crate and curl do. A NUL or line break is refused: no header or
/// credential protocol can carry one, and git's would read it as the end of a field.
pub(crate) fn decode_userinfo(text: &str, what: &'static str) -> Result<String, UserinfoError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| UserinfoError::Utf8(what))?;
    if decoded.contains(['\0', '\n', '\r']) {
        return Err(UserinfoError::Control(what));
    }
    Ok(decoded)
}

impl fmt::Display for GitRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", mask(&self.url))?;
        if let Some(p) = &self.path {
            write!(f, "/{p}")?;
        }
        if let Some(r) = &self.reference {
            write!(f, "#{r}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for GitRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GitRemote({self})")
    }
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Http(url) => write!(f, "Http({})", mask(url.as_str())),
            Remote::S3 { bucket, key } => write!(f, "S3 {{ bucket: {bucket:?}, key: {key:?} }}"),
            Remote::Git(git) => write!(f, "Git({git})"),
            Remote::Local(path) => write!(f, "Local({path:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Remote {
        parse(s, Path::new("/work")).expect(s)
    }

    fn git(url: &str, path: Option<&str>, reference: Option<&str>) -> Remote {
        Remote::Git(GitRemote {
            url: url.into(),
            path: path.map(Into::into),
            reference: reference.map(Into::into),
        })
    }

    #[test]
    fn http_zip() {
        assert!(matches!(p("https://h.example/app.zip"), Remote::Http(_)));
        assert!(matches!(p("http://u:p@h/a/app.zip?x=1"), Remote::Http(_)));
    }

    #[test]
    fn s3_forms() {
        assert_eq!(
            p("s3://b/path/to/app.zip"),
            Remote::S3 {
                bucket: "b".into(),
                key: "path/to/app.zip".into()
            }
        );
        assert!(parse("s3://bucket", Path::new("/")).is_err());
        assert!(parse("s3://bucket/", Path::new("/")).is_err());
    }

    #[test]
    fn git_forms_from_the_spec() {
        assert_eq!(
            p("git@host:org/app.git/path#branch"),
            git("git@host:org/app.git", Some("path"), Some("branch"))
        );
        assert_eq!(
            p("ssh://git@host/org/app.git"),
            git("ssh://git@host/org/app.git", None, None)
        );
        assert_eq!(
            p("git://host/org/app.git/a/b#v1"),
            git("git://host/org/app.git", Some("a/b"), Some("v1"))
        );
        assert_eq!(
            p("git+ssh://host/org/app.git"),
            git("ssh://host/org/app.git", None, None)
        );
        assert_eq!(
            p("git+https://host/org/app.git#main"),
            git("https://host/org/app.git", None, Some("main"))
        );
        assert_eq!(
            p("https://host/org/app.git/path#branch"),
            git("https://host/org/app.git", Some("path"), Some("branch"))
        );
        assert_eq!(
            p("file:///srv/app.git#branch"),
            git("file:///srv/app.git", None, Some("branch"))
        );
        assert_eq!(p("git://host/repo"), git("git://host/repo", None, None));
    }

    #[test]
    fn git_only_as_a_segment_suffix() {
        assert!(matches!(p("https://host/.github/app.zip"), Remote::Http(_)));
        assert!(matches!(p("https://host/app.gitx/a.zip"), Remote::Http(_)));
    }

    #[test]
    fn local_forms() {
        assert_eq!(
            p("file:///srv/app.zip"),
            Remote::Local("/srv/app.zip".into())
        );
        assert_eq!(p("/srv/app.zip"), Remote::Local("/srv/app.zip".into()));
        assert_eq!(p("./site/"), Remote::Local("/work/./site/".into()));
    }

    #[test]
    fn unknown_scheme_and_empty_ref_are_errors() {
        assert!(matches!(
            parse("ftp://h/a.zip", Path::new("/")),
            Err(RemoteError::Scheme(..))
        ));
        assert!(matches!(
            parse("git://h/a.git#", Path::new("/")),
            Err(RemoteError::EmptyRef(_))
        ));
        assert_eq!(parse("  ", Path::new("/")), Err(RemoteError::Empty));
    }

    #[test]
    fn masking_hides_userinfo_and_secret_params() {
        assert_eq!(
            mask("https://user:pa55@h.example/app.zip"),
            "https://***@h.example/app.zip"
        );
        assert_eq!(
            mask("https://tok3n@h/app.git#main"),
            "https://***@h/app.git#main"
        );
        assert_eq!(
            mask("https://h/a.zip?X-Amz-Signature=abc&x=1#f"),
            "https://h/a.zip?X-Amz-Signature=***&x=1#f"
        );
        assert_eq!(mask("/srv/app.zip"), "/srv/app.zip");
        let err = parse("ftp://u:s3cr3t@h/", Path::new("/")).expect_err("scheme");
        assert!(!err.to_string().contains("s3cr3t"));
    }

    #[test]
    fn secrets_are_listed_for_the_log_writer() {
        let s = secrets("https://user:p%40ss@h/a.zip?token=xyz1");
        assert!(s.contains(&"p%40ss".to_string()));
        assert!(s.contains(&"p@ss".to_string()));
        assert!(s.contains(&"xyz1".to_string()));
        assert!(
            !s.contains(&"user".to_string()),
            "a user name beside a password: {s:?}"
        );
        let token = secrets("https://ghp_t0ken@h/app.git");
        assert_eq!(
            token,
            vec!["ghp_t0ken".to_string()],
            "a lone user name is a token"
        );
    }

    #[test]
    fn userinfo_is_percent_decoded_not_form_decoded() {
        let d = |s| decode_userinfo(s, "password");
        assert_eq!(d("a+b"), Ok("a+b".into()), "a `+` is a plus, not a space");
        assert_eq!(d("a%2Bb"), Ok("a+b".into()));
        assert_eq!(d("p%40ss"), Ok("p@ss".into()));
        assert_eq!(
            d("p%3as%3A"),
            Ok("p:s:".into()),
            "either case of hex digits"
        );
        assert_eq!(d("caf%C3%A9"), Ok("café".into()), "UTF-8 from escapes");
        assert_eq!(d("café"), Ok("café".into()), "UTF-8 as written");
        assert_eq!(d("100%"), Ok("100%".into()), "a bare `%` is kept");
        assert_eq!(d("%zz%4"), Ok("%zz%4".into()), "invalid escapes are kept");
        assert_eq!(d("%FF"), Err(UserinfoError::Utf8("password")));
        for bad in ["a%00b", "a%0Ab", "a%0db"] {
            assert_eq!(d(bad), Err(UserinfoError::Control("password")), "{bad}");
        }
    }

    #[test]
    fn userinfo_of_a_url() {
        let u = |s: &str| userinfo(&Url::parse(s).expect(s));
        let (user, pass) = u("https://de%40ploy:a+b%2Bc@h/x.zip")
            .expect("valid")
            .expect("credentials");
        assert_eq!(user, "de@ploy");
        assert_eq!(pass.as_ref().map(Secret::expose), Some("a+b+c"));
        assert_eq!(u("https://h/x.zip"), Ok(None));
        let (user, pass) = u("https://tok3n@h/x.git").expect("valid").expect("token");
        assert_eq!((user.as_str(), pass), ("tok3n", None));
        let (user, pass) = u("https://:pw@h/x.zip").expect("valid").expect("password");
        assert_eq!(
            (user.as_str(), pass.as_ref().map(Secret::expose)),
            ("", Some("pw"))
        );
        assert!(u("https://u:a%0Ab@h/x.zip").is_err());
    }

    #[test]
    fn the_masked_password_is_the_one_sent() {
        let s = secrets("https://user:s3cret+pa%40ss@h/a.zip");
        assert!(s.contains(&"s3cret+pa@ss".to_string()), "{s:?}");
        assert!(s.contains(&"s3cret+pa%40ss".to_string()), "{s:?}");
        assert!(
            !s.iter().any(|x| x.contains(' ')),
            "no form-decoded `+`: {s:?}"
        );
    }

    #[test]
    fn scp_like_forms_follow_gits_rule() {
        // Bug 9 of issue 11: without `user@`, a `#ref` after `.git` made these local paths.
        let cases = [
            (
                "deployhost:/srv/app.git",
                "deployhost:/srv/app.git",
                None,
                None,
            ),
            (
                "deployhost:org/app.git",
                "deployhost:org/app.git",
                None,
                None,
            ),
            (
                "deployhost:/srv/app.git/site#main",
                "deployhost:/srv/app.git",
                Some("site"),
                Some("main"),
            ),
            (
                "deployhost:/srv/app.git#main",
                "deployhost:/srv/app.git",
                None,
                Some("main"),
            ),
            (
                "deployhost:org/app.git#v1",
                "deployhost:org/app.git",
                None,
                Some("v1"),
            ),
            ("deployhost:org/app", "deployhost:org/app", None, None),
            (
                "git@host:org/app.git/path#branch",
                "git@host:org/app.git",
                Some("path"),
                Some("branch"),
            ),
            (
                "[::1]:/srv/app.git#main",
                "[::1]:/srv/app.git",
                None,
                Some("main"),
            ),
            (
                "git@[::1]:org/app.git/site",
                "git@[::1]:org/app.git",
                Some("site"),
                None,
            ),
        ];
        for (input, url, path, reference) in cases {
            assert_eq!(p(input), git(url, path, reference), "{input}");
        }
    }

    #[test]
    fn a_slash_before_the_colon_is_a_local_path() {
        assert_eq!(p("./dir:x/"), Remote::Local("/work/./dir:x/".into()));
        assert_eq!(
            p("/srv/a:b/app.zip"),
            Remote::Local("/srv/a:b/app.zip".into())
        );
        assert_eq!(
            p("./app:v1.zip"),
            Remote::Local("/work/./app:v1.zip".into())
        );
        assert_eq!(p("site/a:b"), Remote::Local("/work/site/a:b".into()));
        assert_eq!(
            p(":app.zip"),
            Remote::Local("/work/:app.zip".into()),
            "no host"
        );
    }
}
