//! The status page (SPEC § Status page): one self-contained HTML document served at `GET /`,
//! and the JSON it polls, `GET /status.json` (this host) and `GET /fleet.json` (the group).
//!
//! The page is a file of its own (`index.html`, included at build time): inline style and
//! script, nothing from elsewhere, so it works on hosts without internet. Its
//! `Content-Security-Policy` allows exactly that inline style and script by their SHA-256 and
//! nothing else, so a version name or an error message that looks like HTML can never run.
//! The page only reads: every route here is a GET, and no JSON holds a secret (credentials
//! are masked as in the logs).
//!
//! The listener (`telemetry.rs`) owns the HTTP side; this module builds what it serves and
//! keeps the short history of checks that the page draws as a timeline (in memory: a
//! restarted daemon starts a new timeline, and `state.json` keeps the releases either way).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::fleet::FleetStatus;

/// The page.
pub const HTML: &str = include_str!("index.html");

/// Checks kept for the timeline: at a check a minute, about a day.
const HISTORY: usize = 1440;

/// The policy that allows the page's own inline style and script and nothing else.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |open: &str| {
            let inline = between(HTML, open, "</").unwrap_or_default();
            let digest = Sha256::digest(inline.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script>"),
            hash("<style>")
        )
    })
}

/// The text between the first `open` and the next `close`.
fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// One check, as the timeline draws it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckRecord {
    /// Seconds since the Unix epoch when the check ended.
    pub time: f64,
    /// `unchanged`, `deployed`, `failed`, `blocked`, `rolled_back`, `halted`, `refused`.
    pub result: &'static str,
    /// The version the check was about, when it knew one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The error, one line, secrets masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The recent checks, oldest first, at most [`HISTORY`].
#[derive(Debug, Default)]
pub struct History {
    checks: VecDeque<CheckRecord>,
}

impl History {
    /// Remember a check; the oldest goes when the history is full.
    pub fn record(&mut self, check: CheckRecord) {
        if self.checks.len() == HISTORY {
            self.checks.pop_front();
        }
        self.checks.push_back(check);
    }

    /// The checks, oldest first.
    pub fn checks(&self) -> impl Iterator<Item = &CheckRecord> {
        self.checks.iter()
    }
}

/// `/status.json`: what `status --json` prints, plus the page's extras: this agent's
/// history of checks and the time the JSON was made.
pub fn status_json(settings: &Settings, history: &History, now: f64) -> Result<Value, String> {
    let view = crate::commands::status(settings).map_err(|e| format!("{e:#}"))?;
    let mut value = serde_json::to_value(view).map_err(|e| e.to_string())?;
    if let Value::Object(map) = &mut value {
        map.insert(
            "history".into(),
            json!(history.checks().collect::<Vec<_>>()),
        );
        map.insert("now".into(), json!(now));
    }
    Ok(value)
}

/// How the listener asks the daemon for the group's state (fleet mode only): a call that
/// reads etcd. The daemon sets it; the page module never knows the fleet's connection.
pub type FleetSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<FleetView, String>> + Send>> + Send + Sync>;

/// The group as the page shows it: `fleet status --json` plus each version's progress and
/// canaries.
#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    #[serde(flatten)]
    pub status: FleetStatus,
    /// Every version live on a host, most hosts first.
    pub versions: Vec<VersionProgress>,
}

/// One version across the group.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionProgress {
    pub version: String,
    /// Hosts with it live.
    pub live: usize,
    /// Live hosts in the group.
    pub of: usize,
    /// Its canaries, when its rollout has any.
    pub canaries: Vec<String>,
}

impl FleetView {
    /// Count each version's hosts; `rolling_out` are the versions hosts hold or ask places
    /// for (shown from 0 of N on); `canaries` gives a version's canaries (from its rollout).
    pub fn new(
        status: FleetStatus,
        rolling_out: &[String],
        canaries: impl Fn(&str) -> Vec<String>,
    ) -> FleetView {
        let of = status.hosts.len();
        let mut versions: Vec<VersionProgress> = Vec::new();
        for host in &status.hosts {
            let Some(v) = &host.version else { continue };
            match versions.iter_mut().find(|p| &p.version == v) {
                Some(p) => p.live += 1,
                None => versions.push(VersionProgress {
                    version: v.clone(),
                    live: 1,
                    of,
                    canaries: Vec::new(),
                }),
            }
        }
        for v in rolling_out {
            if !versions.iter().any(|p| &p.version == v) {
                versions.push(VersionProgress {
                    version: v.clone(),
                    live: 0,
                    of,
                    canaries: Vec::new(),
                });
            }
        }
        versions.sort_by(|a, b| b.live.cmp(&a.live).then_with(|| a.version.cmp(&b.version)));
        for p in &mut versions {
            p.canaries = canaries(&p.version);
        }
        FleetView { status, versions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::HostStatus;

    #[test]
    fn the_policy_allows_the_inline_script_and_style_and_nothing_external() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("http"),
            "{csp}"
        );
        // Nothing in the page points elsewhere (the SVG namespace is a name, not a request).
        let page = HTML.replace("\"http://www.w3.org/2000/svg\"", "");
        for external in [
            "http:", "https:", "src=", "href=", "@import", "url(", "//fonts",
        ] {
            assert!(
                !page.contains(external),
                "index.html holds {external:?}: the page must be self-contained"
            );
        }
        assert!(HTML.len() <= 60 * 1024, "the page is {} bytes", HTML.len());
    }

    #[test]
    fn the_history_keeps_the_newest_checks() {
        let mut h = History::default();
        for i in 0..HISTORY + 5 {
            h.record(CheckRecord {
                time: i as f64,
                result: "unchanged",
                version: None,
                error: None,
            });
        }
        assert_eq!(h.checks().count(), HISTORY);
        assert_eq!(h.checks().next().map(|c| c.time), Some(5.0));
    }

    #[test]
    fn versions_are_counted_across_the_group() {
        let host = |name: &str, version: &str| HostStatus {
            host: name.into(),
            version: Some(version.into()),
            phase: "idle".into(),
            last_check: None,
            last_result: None,
        };
        let status = FleetStatus {
            fleet: "web".into(),
            hosts: vec![host("a", "v2"), host("b", "v1"), host("c", "v2")],
            updating: Vec::new(),
            halted: Vec::new(),
            gone: Vec::new(),
        };
        let view = FleetView::new(status, &["v3".to_owned(), "v2".to_owned()], |v| {
            if v == "v2" {
                vec!["a".into()]
            } else {
                Vec::new()
            }
        });
        let got: Vec<(&str, usize, usize)> = view
            .versions
            .iter()
            .map(|p| (p.version.as_str(), p.live, p.of))
            .collect();
        assert_eq!(got, [("v2", 2, 3), ("v1", 1, 3), ("v3", 0, 3)]);
        assert_eq!(view.versions[0].canaries, ["a"]);
    }
}
