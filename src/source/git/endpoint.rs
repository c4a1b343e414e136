//! URLs and credentials: what git is given as the repository URL (never with a password in
//! it), the credentials an HTTP(S) URL carried (for the credential helper of `command.rs`),
//! and how a submodule's URL is resolved against its superproject's.

use std::fmt;

use anyhow::{Result, bail};

use crate::remote::decode_userinfo;
use crate::secret::Secret;

/// A repository URL as git gets it (no credentials), and the credentials it carried.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) url: String,
    pub(super) credentials: Option<Credentials>,
    /// A submodule URL of another scheme than the superproject's: git's submodule protocol
    /// policy applies (`GIT_PROTOCOL_FROM_USER=0`).
    pub(super) untrusted: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub(super) struct Credentials {
    pub(super) protocol: String,
    /// `host[:port]` as git's credential protocol names it.
    pub(super) host: String,
    pub(super) username: String,
    pub(super) password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ {}://***@{} }}", self.protocol, self.host)
    }
}

impl Endpoint {
    /// Split the credentials off a URL: HTTP(S) user and password go to the credential helper;
    /// other schemes keep their user name (`ssh://git@host`) and lose any password (ssh does not
    /// take one from a URL).
    pub(super) fn parse(url: &str) -> Result<Endpoint> {
        if url.contains(['\n', '\0']) {
            bail!("the URL contains a control character");
        }
        let Some(scheme_end) = url.find("://") else {
            return Ok(Endpoint {
                url: url.to_string(),
                credentials: None,
                untrusted: false,
            });
        };
        let protocol = url[..scheme_end].to_ascii_lowercase();
        let start = scheme_end + 3;
        let end = url[start..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| start + i);
        let Some(at) = url[start..end].rfind('@').map(|i| start + i) else {
            return Ok(Endpoint {
                url: url.to_string(),
                credentials: None,
                untrusted: false,
            });
        };
        let (userinfo, host) = (&url[start..at], &url[at + 1..end]);
        let (user, password) = userinfo
            .split_once(':')
            .map_or((userinfo, None), |(u, p)| (u, Some(p)));
        if protocol == "http" || protocol == "https" {
            let credentials = Credentials {
                protocol,
                host: host.to_string(),
                username: decode_userinfo(user, "user name")?,
                password: Secret::new(decode_userinfo(password.unwrap_or(""), "password")?),
            };
            let bare = format!("{}{}", &url[..start], &url[at + 1..]);
            return Ok(Endpoint {
                url: bare,
                credentials: Some(credentials),
                untrusted: false,
            });
        }
        let bare = format!("{}{user}@{}", &url[..start], &url[at + 1..]);
        Ok(Endpoint {
            url: bare,
            credentials: None,
            untrusted: false,
        })
    }
}

/// The transport of a URL as git's protocol policy names it.
pub(super) fn scheme(url: &str) -> String {
    match url.find("://") {
        Some(i) => url[..i].to_ascii_lowercase(),
        None if url.starts_with('/') || url.starts_with('.') => "file".into(),
        None => "ssh".into(),
    }
}

/// A relative submodule URL (`../lib.git`, `./lib`) resolved against the superproject's URL,
/// as git does: each `../` drops one path component of the superproject URL.
pub(super) fn resolve_relative(base: &str, relative: &str) -> Option<String> {
    let mut base = base.trim_end_matches('/').to_string();
    // Components may not be removed past the host of `scheme://host/…` or `host:` (scp-like).
    let floor = match base.find("://") {
        Some(i) => base[i + 3..].find('/').map_or(base.len(), |j| i + 3 + j),
        None => base.find(':').map_or(0, |i| i + 1),
    };
    let mut rest = relative;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            let cut = base[floor..].rfind('/').map_or(floor, |i| floor + i);
            if cut == floor && base.len() == floor {
                return None;
            }
            base.truncate(cut);
            rest = r;
        } else {
            break;
        }
    }
    let sep = if base.len() == floor && base.ends_with(':') {
        ""
    } else {
        "/"
    };
    Some(format!("{base}{sep}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_http_urls_and_stay_out_of_debug_output() {
        let e =
            Endpoint::parse("https://deploy:s%40cret@git.example:8443/org/app.git").expect("parse");
        assert_eq!(e.url, "https://git.example:8443/org/app.git");
        let c = e.credentials.clone().expect("credentials");
        assert_eq!(
            (c.protocol.as_str(), c.host.as_str()),
            ("https", "git.example:8443")
        );
        assert_eq!(
            (c.username.as_str(), c.password.expose()),
            ("deploy", "s@cret")
        );
        let debug = format!("{e:?}");
        assert!(
            !debug.contains("s@cret") && !debug.contains("deploy"),
            "{debug}"
        );

        let token = Endpoint::parse("https://tok3n@h/app.git").expect("parse");
        assert_eq!(token.url, "https://h/app.git");
        assert_eq!(
            token.credentials.expect("credentials").password.expose(),
            ""
        );
        let ssh = Endpoint::parse("ssh://git:pw@h/app.git").expect("parse");
        assert_eq!(
            (ssh.url.as_str(), ssh.credentials.is_none()),
            ("ssh://git@h/app.git", true)
        );
        let scp = Endpoint::parse("git@h:org/app.git").expect("parse");
        assert_eq!(scp.url, "git@h:org/app.git");
        assert!(Endpoint::parse("https://u:a%0Ab@h/x.git").is_err());
    }

    #[test]
    fn relative_submodule_urls_resolve_like_git() {
        let r = |base, rel| resolve_relative(base, rel);
        assert_eq!(
            r("https://h/org/app.git", "../lib.git").as_deref(),
            Some("https://h/org/lib.git")
        );
        assert_eq!(
            r("https://h/org/app.git/", "./lib").as_deref(),
            Some("https://h/org/app.git/lib")
        );
        assert_eq!(
            r("https://h/org/app.git", "../../other/lib.git").as_deref(),
            Some("https://h/other/lib.git")
        );
        assert_eq!(r("https://h/app.git", "../../x.git"), None);
        assert_eq!(
            r("git@h:org/app.git", "../lib.git").as_deref(),
            Some("git@h:org/lib.git")
        );
        assert_eq!(
            r("git@h:app.git", "../lib.git").as_deref(),
            Some("git@h:lib.git")
        );
        assert_eq!(
            r("file:///srv/git/app.git", "../lib.git").as_deref(),
            Some("file:///srv/git/lib.git")
        );
    }
}
