//! Settings, resolved once: command line > `REPO_DEPLOY_*` environment > configuration file >
//! defaults. Everything below `main` sees only [`Settings`], never clap types or raw strings.
//!
//! The file format is the seed tool's: `key = value` lines, split at the first `=`, both sides
//! trimmed; blank lines and lines starting with `#` or `;` ignored; keys accept `-` or `_`. An
//! unknown key is an error naming the file, the line and the closest known key.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::cli::Cli;
use crate::remote::{self, Remote, RemoteError};
use crate::schedule::{Schedule, ScheduleError};
use crate::secret::Secret;
use crate::unpack::Limits;

/// The default configuration file (its absence is fine).
pub const DEFAULT_CONFIG: &str = "/etc/repo-deploy/repo-deploy.cfg";
const DEFAULT_DIRECTORY: &str = "/var/deploy";
const DEFAULT_PRE_HOOKS: &str = "/etc/repo-deploy/pre-update.d";
const DEFAULT_POST_HOOKS: &str = "/etc/repo-deploy/post-update.d";
const DEFAULT_SCHEDULE: &str = "* * * * *";
const ENV_PREFIX: &str = "REPO_DEPLOY_";

/// Every key the file and the environment accept: canonical name, then aliases.
pub const KEYS: &[(&str, &[&str])] = &[
    ("remote", &["repository"]),
    ("local", &[]),
    ("directory", &[]),
    ("cache", &[]),
    ("schedule", &[]),
    ("id", &["identity"]),
    ("pre-hooks", &[]),
    ("post-hooks", &[]),
    ("aws-access-key", &[]),
    ("aws-secret-key", &[]),
    ("aws-region", &[]),
    ("s3-endpoint", &[]),
    ("keep", &[]),
    ("hook-timeout", &[]),
    ("max-size", &[]),
    ("max-files", &[]),
    ("connect-timeout", &[]),
    ("stall-timeout", &[]),
    ("activate", &[]),
    ("listen", &[]),
    ("health-periods", &[]),
    ("trigger-token", &[]),
    ("trigger-min-interval", &[]),
    ("splay", &[]),
    ("reuse", &[]),
    ("etcd", &[]),
    ("fleet", &[]),
    ("host", &[]),
    ("etcd-prefix", &[]),
    ("etcd-ca", &[]),
    ("etcd-cert", &[]),
    ("etcd-key", &[]),
    ("etcd-user", &[]),
    ("etcd-password", &[]),
    ("max-parallel", &[]),
    ("canary", &[]),
    ("bake", &[]),
    ("health-hooks", &[]),
    ("on-halt", &[]),
    ("fleet-lease", &[]),
    ("trusted-keys", &[]),
    ("max-signature-age", &[]),
    ("allowed-signers", &[]),
    ("git-verify", &[]),
];

/// S3 settings from the configuration (the rest of the chain is the AWS SDK's).
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// `aws-access-key`; `None` (with `secret_key`): `~/.amazon/account-key`, else the AWS chain.
    pub access_key: Option<Secret>,
    /// `aws-secret-key`, set together with `access_key`; `None`: neither is set.
    pub secret_key: Option<Secret>,
    /// `aws-region`; `None`: the AWS chain's region, or us-east-1 with an `endpoint`.
    pub region: Option<String>,
    /// `s3-endpoint`: the http(s) URL of an S3-compatible store, addressed path-style;
    /// `None`: AWS S3 itself.
    pub endpoint: Option<String>,
}

/// Everything a run needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// The remote as configured, after `{id}` substitution (may hold credentials).
    pub remote_url: Secret,
    /// The remote, parsed.
    pub remote: Remote,
    /// The remote with credentials masked: the only form that is ever printed.
    pub remote_display: String,
    /// The live path the application watches (`current`): a symlink to the live release, or
    /// in the exchange and sync activation modes a real directory that holds its files.
    pub local: PathBuf,
    /// The deploy directory: `releases/`, `state.json`, `.lock`.
    pub directory: PathBuf,
    /// Downloads and other work files.
    pub cache: PathBuf,
    /// Directory of the pre-update hooks: a non-zero exit blocks the update.
    pub pre_hooks: PathBuf,
    /// Directory of the post-update hooks: a non-zero exit rolls back.
    pub post_hooks: PathBuf,
    /// When the daemon checks (validated even with `-f`, which does not use it).
    pub schedule: Schedule,
    /// Releases kept on disk, the live one included (at least 2).
    pub keep: usize,
    /// A hook running longer is killed with its process group and counts as failed.
    pub hook_timeout: Duration,
    /// Unpacking limits against archive bombs.
    pub limits: Limits,
    /// Time allowed to connect to a remote.
    pub connect_timeout: Duration,
    /// A download that receives nothing for this long fails.
    pub stall_timeout: Duration,
    /// How `current` shows a release: symlink (default), exchange or sync.
    pub activate: crate::activate::Mode,
    /// `reuse`: where an update takes the files that did not change (see `incremental.rs`).
    pub reuse: crate::incremental::ReuseMode,
    /// S3 credentials, region and endpoint, for an S3 remote.
    pub aws: AwsSettings,
    /// `-f`: check once and exit.
    pub once: bool,
    /// `-v`: debug logging.
    pub verbose: bool,
    /// The opt-in HTTP listener: metrics, health, trigger (see `telemetry.rs`).
    pub telemetry: TelemetrySettings,
    /// Most delay after each scheduled time; each host waits its own stable part of it.
    pub splay: Duration,
    /// Fleet rollouts (`etcd` and `fleet` set); `None`: this host deploys alone.
    pub fleet: Option<FleetSettings>,
    /// Signed releases (`trusted-keys` or `allowed-signers`); `None`: nothing is verified.
    pub(crate) trust: Option<crate::trust::Trust>,
}

/// Fleet mode (SPEC § Fleet rollouts): where the group lives, and this host's rollout settings.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// etcd endpoints and credentials, the group's name and keys, this host's name, the lease.
    pub(crate) options: crate::fleet::FleetOptions,
    /// `max-parallel`, `canary`, `bake`, `on-halt`: used for a version only if this host is the
    /// first of the group to ask for it.
    pub(crate) rollout: crate::fleet::RolloutSettings,
    /// `health-hooks`: run when the bake starts and every 5 s during it.
    pub(crate) health_hooks: PathBuf,
}

/// Settings of the metrics/health/trigger listener.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `listen`: where to serve `/metrics`, `/healthz` and `/trigger`; `None`: no listener.
    pub listen: Option<SocketAddr>,
    /// `health-periods`: schedule periods without a successful check before `/healthz` fails.
    pub health_periods: u32,
    /// `trigger-token`: the bearer token of `POST /trigger` (a secret); `None`: no trigger.
    pub trigger_token: Option<Secret>,
    /// `trigger-min-interval`: the least time between two accepted triggers.
    pub trigger_min_interval: Duration,
}

/// Shortest `trigger-token` accepted: a webhook secret must not be guessable.
const MIN_TOKEN_LEN: usize = 16;

/// The `listen`, `health-periods`, `trigger-token` and `trigger-min-interval` keys.
fn telemetry_settings(layers: &Layers) -> Result<TelemetrySettings, ConfigError> {
    let listen = match layers.get("listen") {
        Some(raw) => Some(raw.value.trim().parse::<SocketAddr>().map_err(|_| {
            value_error(
                raw,
                "listen",
                "expected an IP address and port such as 127.0.0.1:9469 or [::1]:9469",
            )
        })?),
        None => None,
    };
    let health_periods = match layers.get("health-periods") {
        Some(raw) => match parse_u64(raw, "health-periods")? {
            n @ 1..=10_000 => n as u32,
            _ => {
                return Err(value_error(
                    raw,
                    "health-periods",
                    "expected a number of schedule periods from 1 to 10000",
                ));
            }
        },
        None => 3,
    };
    let trigger_token = match layers.get("trigger-token") {
        Some(raw) => {
            let token = raw.value.trim();
            if token.len() < MIN_TOKEN_LEN
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                // Say why without echoing the value: it is a secret, even when too short.
                return Err(ConfigError::Value {
                    source_name: raw.origin.clone(),
                    key: "trigger-token".into(),
                    value: "***".into(),
                    reason: format!(
                        "expected at least {MIN_TOKEN_LEN} characters without spaces (try `openssl rand -hex 32`)"
                    ),
                });
            }
            Some(Secret::new(token))
        }
        None => None,
    };
    let trigger_min_interval = match layers.get("trigger-min-interval") {
        Some(raw) => parse_seconds(raw, "trigger-min-interval")?,
        None => Duration::from_secs(10),
    };
    Ok(TelemetrySettings {
        listen,
        health_periods,
        trigger_token,
        trigger_min_interval,
    })
}

/// The keys of signed releases (SPEC § Signed releases): `trusted-keys` with a ZIP remote,
/// `allowed-signers` (and `git-verify`) with a git remote, `max-signature-age` with either.
/// The keys file is read here, so a bad key is a configuration error at start or `SIGHUP`.
fn trust_settings(
    layers: &Layers,
    remote: &Remote,
    cwd: &Path,
) -> Result<Option<crate::trust::Trust>, ConfigError> {
    use crate::trust::{GitVerify, Trust, TrustedKeys};
    let max_age = match layers.get("max-signature-age") {
        Some(raw) => Some(crate::trust::parse_age(&raw.value).ok_or_else(|| {
            value_error(
                raw,
                "max-signature-age",
                "expected a duration such as 30d, 12h or 3600 (seconds)",
            )
        })?),
        None => None,
    };
    let git_verify = match layers.get("git-verify") {
        Some(raw) => Some(match raw.value.trim() {
            "commit" => (GitVerify::Commit, raw),
            "tag" => (GitVerify::Tag, raw),
            _ => return Err(value_error(raw, "git-verify", "expected commit or tag")),
        }),
        None => None,
    };
    match (layers.get("trusted-keys"), layers.get("allowed-signers")) {
        (Some(raw), Some(_)) => Err(value_error(
            raw,
            "trusted-keys",
            "set trusted-keys (a ZIP remote) or allowed-signers (a git remote), not both",
        )),
        (Some(raw), None) => {
            let file = cwd.join(raw.value.trim());
            let zip_remote = match remote {
                Remote::Http(_) | Remote::S3 { .. } => true,
                Remote::Local(path) => !path.is_dir(),
                Remote::Git(_) => false,
            };
            if !zip_remote {
                return Err(value_error(
                    raw,
                    "trusted-keys",
                    "signatures are checked for ZIP remotes (HTTP, S3, a local .zip); a git remote uses allowed-signers, and a local directory cannot be signed: publish a ZIP",
                ));
            }
            if let Some((_, raw)) = git_verify {
                return Err(value_error(
                    raw,
                    "git-verify",
                    "git-verify goes with allowed-signers and a git remote",
                ));
            }
            let text = fs::read_to_string(&file).map_err(|e| {
                value_error(
                    raw,
                    "trusted-keys",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let keys = TrustedKeys::parse(&text).map_err(|e| {
                value_error(raw, "trusted-keys", format!("{}: {e}", file.display()))
            })?;
            Ok(Some(Trust::Minisign {
                keys,
                file,
                max_age,
            }))
        }
        (None, Some(raw)) => {
            let file = cwd.join(raw.value.trim());
            if !matches!(remote, Remote::Git(_)) {
                return Err(value_error(
                    raw,
                    "allowed-signers",
                    "allowed-signers is for git remotes; a ZIP remote uses trusted-keys",
                ));
            }
            if let Err(e) = fs::File::open(&file) {
                return Err(value_error(
                    raw,
                    "allowed-signers",
                    format!(
                        "cannot read {}: {e} (git's allowed signers file: `PRINCIPAL ssh-ed25519 KEY` lines)",
                        file.display()
                    ),
                ));
            }
            Ok(Some(Trust::Git {
                allowed_signers: file,
                verify: git_verify.map_or(GitVerify::Commit, |(v, _)| v),
                max_age,
            }))
        }
        (None, None) => {
            let set = [
                ("git-verify", git_verify.map(|(_, r)| r)),
                ("max-signature-age", layers.get("max-signature-age")),
            ];
            match set.into_iter().find_map(|(k, r)| r.map(|r| (k, r))) {
                Some((key, raw)) => Err(value_error(
                    raw,
                    key,
                    "this needs trusted-keys (a ZIP remote) or allowed-signers (a git remote)",
                )),
                None => Ok(None),
            }
        }
    }
}

const DEFAULT_HEALTH_HOOKS: &str = "/etc/repo-deploy/health.d";

/// The fleet keys (SPEC § Fleet rollouts): `None` without `etcd`; `etcd` without `fleet`, or
/// a fleet key without `etcd`, is an error (a host must not deploy alone by mistake).
fn fleet_settings(layers: &Layers) -> Result<Option<FleetSettings>, ConfigError> {
    use crate::fleet::{ClientOptions, FleetOptions, MaxParallel, RolloutSettings};
    const FLEET_KEYS: [&str; 14] = [
        "fleet",
        "host",
        "etcd-prefix",
        "etcd-ca",
        "etcd-cert",
        "etcd-key",
        "etcd-user",
        "etcd-password",
        "max-parallel",
        "canary",
        "bake",
        "health-hooks",
        "on-halt",
        "fleet-lease",
    ];
    let Some(etcd) = layers.get("etcd") else {
        if let Some((key, raw)) = FLEET_KEYS
            .iter()
            .find_map(|k| layers.get(k).map(|r| (*k, r)))
        {
            return Err(value_error(
                raw,
                key,
                "fleet settings need `etcd` (the etcd endpoints) and `fleet` (the group's name)",
            ));
        }
        return Ok(None);
    };
    let mut endpoints = Vec::new();
    for endpoint in etcd
        .value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let ok = url::Url::parse(endpoint).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.username().is_empty()
                && u.password().is_none()
                && u.path().trim_end_matches('/').is_empty()
        });
        if !ok {
            return Err(value_error(
                etcd,
                "etcd",
                format!(
                    "{endpoint:?} is not an etcd endpoint: write http://HOST:PORT or https://HOST:PORT, comma-separated (credentials go in etcd-user and etcd-password)"
                ),
            ));
        }
        endpoints.push(endpoint.trim_end_matches('/').to_owned());
    }
    if endpoints.is_empty() {
        return Err(value_error(
            etcd,
            "etcd",
            "expected at least one endpoint such as http://127.0.0.1:2379",
        ));
    }
    let Some(fleet_raw) = layers.get("fleet") else {
        return Err(value_error(
            etcd,
            "etcd",
            "fleet mode needs `fleet`, the group's name (hosts with the same name roll out together)",
        ));
    };
    let fleet = fleet_raw.value.trim().to_owned();
    crate::fleet::validate_fleet(&fleet)
        .map_err(|e| value_error(fleet_raw, "fleet", e.to_string()))?;
    let host = match layers.get("host") {
        Some(raw)
            if raw.value.trim().is_empty()
                || raw.value.contains('/')
                || raw.value.chars().any(char::is_control) =>
        {
            return Err(value_error(
                raw,
                "host",
                "expected this host's name in the group, without '/'",
            ));
        }
        Some(raw) => raw.value.trim().to_owned(),
        None => fqdn(),
    };
    let prefix = match layers.get("etcd-prefix") {
        Some(raw) if !raw.value.trim().starts_with('/') => {
            return Err(value_error(
                raw,
                "etcd-prefix",
                "expected a key prefix starting with '/', such as /repo-deploy",
            ));
        }
        Some(raw) => raw.value.trim().to_owned(),
        None => "/repo-deploy".to_owned(),
    };
    let file = |key: &str| layers.get(key).map(|r| PathBuf::from(r.value.trim()));
    let mut client = ClientOptions::new(endpoints);
    client.tls.ca = file("etcd-ca");
    client.tls.cert = file("etcd-cert");
    client.tls.key = file("etcd-key");
    if let (Some(raw), None) | (None, Some(raw)) = (layers.get("etcd-cert"), layers.get("etcd-key"))
    {
        let key = if layers.get("etcd-cert").is_some() {
            "etcd-cert"
        } else {
            "etcd-key"
        };
        return Err(value_error(
            raw,
            key,
            "etcd-cert and etcd-key go together: set both for a client certificate, or neither",
        ));
    }
    client.user = layers.get("etcd-user").map(|r| r.value.trim().to_owned());
    client.password = layers
        .get("etcd-password")
        .map(|r| Secret::new(r.value.clone()));
    if let (Some(raw), None) | (None, Some(raw)) =
        (layers.get("etcd-user"), layers.get("etcd-password"))
    {
        let key = if client.user.is_some() {
            "etcd-user"
        } else {
            "etcd-password"
        };
        return Err(value_error(
            raw,
            key,
            "etcd-user and etcd-password go together: set both, or neither",
        ));
    }
    let max_parallel = match layers.get("max-parallel") {
        Some(raw) => raw
            .value
            .parse::<MaxParallel>()
            .map_err(|e| value_error(raw, "max-parallel", e.to_string()))?,
        None => MaxParallel::Count(1),
    };
    let canary = match layers.get("canary") {
        Some(raw) => u32::try_from(parse_u64(raw, "canary")?)
            .map_err(|_| value_error(raw, "canary", "expected a number of hosts"))?,
        None => 0,
    };
    let bake = match layers.get("bake") {
        Some(raw) => match parse_u64(raw, "bake")? {
            n @ 0..=86_400 => n,
            _ => {
                return Err(value_error(
                    raw,
                    "bake",
                    "expected seconds from 0 to 86400 (a day)",
                ));
            }
        },
        None => 0,
    };
    let on_halt = match layers.get("on-halt") {
        Some(raw) => match raw.value.trim() {
            v @ ("stay" | "revert") => v.to_owned(),
            _ => return Err(value_error(raw, "on-halt", "expected stay or revert")),
        },
        None => "stay".to_owned(),
    };
    let lease_secs = match layers.get("fleet-lease") {
        Some(raw) => match parse_u64(raw, "fleet-lease")? {
            n @ 2..=3600 => n,
            _ => {
                return Err(value_error(
                    raw,
                    "fleet-lease",
                    "expected seconds from 2 to 3600",
                ));
            }
        },
        None => 10,
    };
    Ok(Some(FleetSettings {
        options: FleetOptions {
            client,
            prefix,
            fleet,
            host,
            lease_secs,
        },
        rollout: RolloutSettings {
            max_parallel,
            canary,
            bake,
            on_halt,
        },
        health_hooks: file("health-hooks").unwrap_or_else(|| PathBuf::from(DEFAULT_HEALTH_HOOKS)),
    }))
}

/// `splay`: seconds, 0 (the default) for none.
fn splay_setting(layers: &Layers) -> Result<Duration, ConfigError> {
    let Some(raw) = layers.get("splay") else {
        return Ok(Duration::ZERO);
    };
    let v = raw.value.trim();
    match v.strip_suffix('s').unwrap_or(v).parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=86_400.0).contains(&secs) => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(value_error(
            raw,
            "splay",
            "expected seconds from 0 to 86400",
        )),
    }
}

/// A configuration problem: exit status 2, nothing touched.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The configuration file cannot be read: the one named by `-c` is missing, or a file
    /// that exists is unreadable or too large.
    #[error("cannot read configuration file {0}: {1}")]
    Read(PathBuf, io::Error),
    /// A line of the file is neither blank, a comment, nor `key = value`.
    #[error(
        "{file}:{line}: expected `key = value`, found a line without `=` starting with `{text}`"
    )]
    Syntax {
        /// The configuration file.
        file: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// The start of the line only (the rest may be a secret), shown escaped.
        text: String,
    },
    /// The file is not UTF-8.
    #[error("{file}:{line}: not valid UTF-8; save the file as UTF-8")]
    Encoding {
        /// The configuration file.
        file: PathBuf,
        /// The line of the first byte that is not UTF-8, from 1.
        line: usize,
    },
    /// An error about a value, with where the value came from (`file:line`, a variable, a flag).
    #[error("{origin}: {error}")]
    At {
        /// Where the value came from: `file:line`, a `REPO_DEPLOY_*` variable, or a flag.
        origin: String,
        /// What is wrong with the value.
        error: Box<ConfigError>,
    },
    /// The file sets a key that is neither a name nor an alias in [`KEYS`].
    #[error("{file}:{line}: unknown key `{key}`{hint}")]
    UnknownKey {
        /// The configuration file.
        file: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// The key as written, shown escaped and shortened.
        key: String,
        /// "; did you mean `…`?" naming the closest known key, or empty when none is close.
        hint: String,
    },
    /// A known key has a value that cannot be used.
    #[error("{source_name}: invalid value `{value}` for `{key}`: {reason}")]
    Value {
        /// Where the value came from: `file:line`, a `REPO_DEPLOY_*` variable, or a flag.
        source_name: String,
        /// The key's canonical name.
        key: String,
        /// The value as it may be shown: escaped and shortened, a remote's credentials
        /// masked, a secret's as `***`.
        value: String,
        /// What was expected instead.
        reason: String,
    },
    /// No remote is set by a flag, the environment or the file: there is nothing to deploy.
    #[error(
        "no remote configured: set `remote` in the configuration file, REPO_DEPLOY_REMOTE, or pass -r URL"
    )]
    NoRemote,
    /// The remote is not one of the accepted forms.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The schedule is not a valid cron expression.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The current directory, against which relative paths are resolved, cannot be read.
    #[error("cannot determine the current directory: {0}")]
    Cwd(io::Error),
}

/// Where a raw value came from, for error messages.
#[derive(Debug, Clone)]
struct Raw {
    value: String,
    origin: String,
}

/// The file and environment layers, merged (environment over file).
#[derive(Debug, Default)]
struct Layers {
    values: HashMap<&'static str, Raw>,
}

impl Layers {
    fn get(&self, key: &str) -> Option<&Raw> {
        self.values.get(key)
    }
}

/// Canonical name of `key` (`_` → `-`, lower case, aliases folded), if it is known.
fn canonical(key: &str) -> Option<&'static str> {
    let key = key.trim().to_ascii_lowercase().replace('_', "-");
    KEYS.iter()
        .find(|(name, aliases)| *name == key || aliases.contains(&key.as_str()))
        .map(|(n, _)| *n)
}

/// The closest known key, for "did you mean".
fn closest(key: &str) -> Option<&'static str> {
    if key.len() > SHOWN_MAX {
        return None; // binary noise, not a typo (and edit distances are quadratic)
    }
    let key = key.to_ascii_lowercase().replace('_', "-");
    KEYS.iter()
        .flat_map(|(n, aliases)| std::iter::once(*n).chain(aliases.iter().copied()))
        .map(|k| (strsim::damerau_levenshtein(&key, k), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| canonical(k).unwrap_or(k))
}

/// Strip one pair of matching quotes around a value (`schedule = "*/5 * * * *"`).
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// Parse the text of a configuration file into (key, value, line) triples.
pub fn parse_file_text(
    file: &Path,
    text: &str,
) -> Result<Vec<(&'static str, String, usize)>, ConfigError> {
    let mut out = Vec::new();
    // Some editors start a UTF-8 file with a byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            let start = trimmed
                .split(|c: char| c.is_whitespace() || c == ':')
                .next()
                .unwrap_or_default();
            return Err(ConfigError::Syntax {
                file: file.into(),
                line: n,
                text: shown(start),
            });
        };
        let key = key.trim();
        let Some(name) = canonical(key) else {
            let hint = closest(key)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            return Err(ConfigError::UnknownKey {
                file: file.into(),
                line: n,
                key: shown(key),
                hint,
            });
        };
        out.push((name, unquote(value.trim()).to_string(), n));
    }
    Ok(out)
}

fn read_layers(
    config: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<(Layers, Option<PathBuf>), ConfigError> {
    let mut layers = Layers::default();
    let (path, required) = match config {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let mut read_file = None;
    match read_bounded(&path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|e| {
                let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
                ConfigError::Encoding {
                    file: path.clone(),
                    line,
                }
            })?;
            for (key, value, line) in parse_file_text(&path, &text)? {
                let origin = format!("{}:{line}", path.display());
                layers.values.insert(key, Raw { value, origin });
            }
            read_file = Some(path);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && !required => {}
        Err(e) => return Err(ConfigError::Read(path, e)),
    }
    for (name, value) in env {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // Unknown REPO_DEPLOY_* variables are ignored: the environment is shared with other
        // programs, and a typo there must not stop a fleet.
        if let Some(key) = canonical(key) {
            layers.values.insert(
                key,
                Raw {
                    value: value.clone(),
                    origin: name.clone(),
                },
            );
        }
    }
    layers.values.retain(|_, raw| !raw.value.trim().is_empty());
    for (key, raw) in &layers.values {
        // `main` turns a variable that is not UTF-8 into U+FFFD; no real value holds one.
        if raw.value.contains('\u{fffd}') && !raw.origin.contains(':') {
            return Err(value_error(raw, key, "not valid UTF-8"));
        }
        if raw.value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(value_error(
                raw,
                key,
                "contains a control character (a NUL, a newline, an escape…)",
            ));
        }
    }
    Ok((layers, read_file))
}

/// Most bytes a configuration file may hold: more is the wrong file (`-c /dev/zero`), which
/// must not fill the memory.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(io::Error::other(
            "larger than 1 MiB, so not a configuration file",
        ));
    }
    Ok(bytes)
}

/// Longest key or value shown in an error; the rest is elided.
const SHOWN_MAX: usize = 64;

/// Text from a configuration as an error shows it: control characters escaped, at most
/// [`SHOWN_MAX`] characters (a file may be binary noise or one huge line).
fn shown(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == SHOWN_MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Keys whose values are never shown in an error.
const SECRET_KEYS: &[&str] = &[
    "aws-access-key",
    "aws-secret-key",
    "trigger-token",
    "etcd-password",
];

/// `error`, prefixed with where `raw` came from.
fn at(raw: &Raw, error: ConfigError) -> ConfigError {
    ConfigError::At {
        origin: raw.origin.clone(),
        error: Box::new(error),
    }
}

/// Pick the command-line value, else the environment/file value, as a string with its origin.
fn pick(cli: Option<String>, flag: &str, layers: &Layers, key: &str) -> Option<Raw> {
    cli.map(|value| Raw {
        value,
        origin: flag.to_string(),
    })
    .or_else(|| layers.get(key).cloned())
}

fn value_error(raw: &Raw, key: &str, reason: impl Into<String>) -> ConfigError {
    let value = match key {
        _ if SECRET_KEYS.contains(&key) => "***".to_string(),
        "remote" => shown(&remote::mask(&raw.value)),
        _ => shown(&raw.value),
    };
    ConfigError::Value {
        source_name: raw.origin.clone(),
        key: key.into(),
        value,
        reason: reason.into(),
    }
}

fn parse_u64(raw: &Raw, key: &str) -> Result<u64, ConfigError> {
    raw.value
        .trim()
        .parse::<u64>()
        .map_err(|_| value_error(raw, key, "expected a whole number"))
}

fn parse_seconds(raw: &Raw, key: &str) -> Result<Duration, ConfigError> {
    let v = raw.value.trim();
    let secs: f64 = v
        .strip_suffix('s')
        .unwrap_or(v)
        .parse()
        .map_err(|_| value_error(raw, key, "expected seconds"))?;
    // At least a millisecond: `1e-12` is "above 0" but would be a zero `Duration`.
    if !(0.001..=31_536_000.0).contains(&secs) {
        return Err(value_error(
            raw,
            key,
            "expected a number of seconds from 0.001 to 31536000 (a year)",
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Sizes accept K, M, G, T suffixes (powers of 1024).
fn parse_size(raw: &Raw, key: &str) -> Result<u64, ConfigError> {
    let v = raw.value.trim().to_ascii_uppercase();
    let v = v
        .strip_suffix("IB")
        .or_else(|| v.strip_suffix('B'))
        .unwrap_or(&v);
    let (num, mult) = match v.chars().last() {
        Some('K') => (&v[..v.len() - 1], 1u64 << 10),
        Some('M') => (&v[..v.len() - 1], 1 << 20),
        Some('G') => (&v[..v.len() - 1], 1 << 30),
        Some('T') => (&v[..v.len() - 1], 1 << 40),
        _ => (v, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| value_error(raw, key, "expected a size such as 500M or 10G"))
}

fn path_of(raw: Option<Raw>, cwd: &Path) -> Option<PathBuf> {
    raw.map(|r| cwd.join(r.value.trim()))
}

impl Settings {
    /// Resolve settings from the command line, an environment and the configuration file.
    pub fn resolve(cli: &Cli, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let cwd = std::env::current_dir().map_err(ConfigError::Cwd)?;
        Self::resolve_in(cli, env, &cwd)
    }

    /// As [`Settings::resolve`], with relative paths taken from `cwd`.
    pub fn resolve_in(
        cli: &Cli,
        env: &HashMap<String, String>,
        cwd: &Path,
    ) -> Result<Settings, ConfigError> {
        let config = cli.config.as_ref().map(|p| cwd.join(p));
        let (layers, config_file) = read_layers(config.as_deref(), env)?;
        let os = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());

        let local = path_of(pick(os(&cli.local), "--local", &layers, "local"), cwd);
        let directory = path_of(
            pick(os(&cli.directory), "--directory", &layers, "directory"),
            cwd,
        )
        .or_else(|| {
            local
                .as_ref()
                .and_then(|l| l.parent().map(Path::to_path_buf))
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIRECTORY));
        let local = local.unwrap_or_else(|| directory.join("current"));
        let cache = path_of(pick(os(&cli.cache), "--cache", &layers, "cache"), cwd)
            .unwrap_or_else(|| directory.join("cache"));
        let pre_hooks = path_of(
            pick(os(&cli.pre_hooks), "--pre-hooks", &layers, "pre-hooks"),
            cwd,
        )
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PRE_HOOKS));
        let post_hooks = path_of(
            pick(os(&cli.post_hooks), "--post-hooks", &layers, "post-hooks"),
            cwd,
        )
        .unwrap_or_else(|| PathBuf::from(DEFAULT_POST_HOOKS));

        let schedule_raw = pick(cli.schedule.clone(), "--schedule", &layers, "schedule");
        let schedule = match &schedule_raw {
            Some(raw) => Schedule::parse(&raw.value).map_err(|e| at(raw, e.into()))?,
            None => Schedule::parse(DEFAULT_SCHEDULE)?,
        };

        let keep = match layers.get("keep") {
            Some(raw) => match parse_u64(raw, "keep")? {
                n if n >= 2 => usize::try_from(n).unwrap_or(usize::MAX),
                _ => {
                    return Err(value_error(
                        raw,
                        "keep",
                        "at least 2 (the live release and the one before it)",
                    ));
                }
            },
            None => 5,
        };
        let seconds = |key: &str, default: u64| -> Result<Duration, ConfigError> {
            layers
                .get(key)
                .map_or(Ok(Duration::from_secs(default)), |raw| {
                    parse_seconds(raw, key)
                })
        };
        let hook_timeout = seconds("hook-timeout", 300)?;
        let connect_timeout = seconds("connect-timeout", 10)?;
        let stall_timeout = seconds("stall-timeout", 60)?;
        let activate = match layers.get("activate") {
            Some(raw) => raw
                .value
                .parse()
                .map_err(|reason: String| value_error(raw, "activate", reason))?,
            None => crate::activate::Mode::default(),
        };
        let reuse = match layers.get("reuse") {
            Some(raw) => crate::incremental::ReuseMode::parse(&raw.value)
                .ok_or_else(|| value_error(raw, "reuse", "expected copy, hardlink or off"))?,
            None => crate::incremental::ReuseMode::default(),
        };
        let telemetry = telemetry_settings(&layers)?;
        let splay = splay_setting(&layers)?;
        let fleet = fleet_settings(&layers)?;
        let max_bytes = layers
            .get("max-size")
            .map_or(Ok(16 << 30), |r| parse_size(r, "max-size"))?;
        let max_entries = match layers.get("max-files") {
            Some(raw) => parse_u64(raw, "max-files").and_then(|n| {
                if n == 0 {
                    Err(value_error(raw, "max-files", "at least 1"))
                } else {
                    Ok(n)
                }
            })?,
            None => 1_000_000,
        };

        let aws = AwsSettings {
            access_key: layers
                .get("aws-access-key")
                .map(|r| Secret::new(r.value.clone())),
            secret_key: layers
                .get("aws-secret-key")
                .map(|r| Secret::new(r.value.clone())),
            region: layers.get("aws-region").map(|r| r.value.clone()),
            endpoint: layers.get("s3-endpoint").map(|r| r.value.clone()),
        };
        if let (Some(raw), None) | (None, Some(raw)) =
            (layers.get("aws-access-key"), layers.get("aws-secret-key"))
        {
            let key = if aws.access_key.is_some() {
                "aws-access-key"
            } else {
                "aws-secret-key"
            };
            return Err(ConfigError::Value {
                source_name: raw.origin.clone(),
                key: key.into(),
                value: "***".into(),
                reason: "aws-access-key and aws-secret-key go together: set both, or neither to use ~/.amazon/account-key or the AWS chain".into(),
            });
        }
        if let Some(raw) = layers.get("s3-endpoint")
            && url::Url::parse(&raw.value).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        {
            return Err(value_error(
                raw,
                "s3-endpoint",
                "expected an http:// or https:// URL",
            ));
        }
        if let Some(raw) = layers.get("aws-region")
            && !raw
                .value
                .trim()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(value_error(
                raw,
                "aws-region",
                "expected a region name such as eu-west-1",
            ));
        }

        let remote_raw =
            pick(cli.remote.clone(), "--remote", &layers, "remote").ok_or(ConfigError::NoRemote)?;
        let id = pick(cli.id.clone(), "--id", &layers, "id").map(|r| r.value);
        let remote_url = if remote_raw.value.contains("{id}") {
            let id = match id {
                Some(id) => id,
                None => reversed_fqdn(),
            };
            remote_raw.value.replace("{id}", &id)
        } else {
            remote_raw.value.clone()
        };
        let remote = remote::parse(&remote_url, cwd).map_err(|e| at(&remote_raw, e.into()))?;
        let remote_display = remote::mask(&remote_url);
        let trust = trust_settings(&layers, &remote, cwd)?;

        Ok(Settings {
            config_file,
            remote_url: Secret::new(remote_url),
            remote,
            remote_display,
            local,
            directory,
            cache,
            pre_hooks,
            post_hooks,
            schedule,
            keep,
            hook_timeout,
            limits: Limits {
                max_bytes,
                max_entries,
            },
            connect_timeout,
            stall_timeout,
            activate,
            reuse,
            aws,
            once: cli.fetch,
            verbose: cli.verbose,
            telemetry,
            splay,
            fleet,
            trust,
        })
    }

    /// Every secret these settings hold, for the log writer to mask.
    pub fn secrets(&self) -> Vec<String> {
        let mut s = remote::secrets(self.remote_url.expose());
        let others = [
            &self.aws.access_key,
            &self.aws.secret_key,
            &self.telemetry.trigger_token,
            &self
                .fleet
                .as_ref()
                .and_then(|f| f.options.client.password.clone()),
        ];
        s.extend(others.into_iter().flatten().map(|x| x.expose().to_string()));
        s
    }

    /// The effective settings as `key = value` lines, secrets masked (`check-config`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &dyn std::fmt::Display| {
            let _ = writeln!(out, "{k} = {v}");
        };
        line("remote", &self.remote_display);
        line("local", &self.local.display());
        line("directory", &self.directory.display());
        line("cache", &self.cache.display());
        line("pre-hooks", &self.pre_hooks.display());
        line("post-hooks", &self.post_hooks.display());
        line("schedule", &self.schedule.as_str());
        line("keep", &self.keep);
        line("hook-timeout", &self.hook_timeout.as_secs_f64());
        line("max-size", &self.limits.max_bytes);
        line("max-files", &self.limits.max_entries);
        line("connect-timeout", &self.connect_timeout.as_secs_f64());
        line("stall-timeout", &self.stall_timeout.as_secs_f64());
        line("activate", &self.activate);
        line("reuse", &self.reuse.as_str());
        if let Some(addr) = &self.telemetry.listen {
            line("listen", addr);
        }
        line("health-periods", &self.telemetry.health_periods);
        if self.telemetry.trigger_token.is_some() {
            line("trigger-token", &"***");
        }
        line(
            "trigger-min-interval",
            &self.telemetry.trigger_min_interval.as_secs_f64(),
        );
        line("splay", &self.splay.as_secs_f64());
        if self.aws.access_key.is_some() {
            line("aws-access-key", &"***");
        }
        if self.aws.secret_key.is_some() {
            line("aws-secret-key", &"***");
        }
        if let Some(r) = &self.aws.region {
            line("aws-region", r);
        }
        if let Some(e) = &self.aws.endpoint {
            line("s3-endpoint", e);
        }
        if let Some(f) = &self.fleet {
            let o = &f.options;
            line("etcd", &o.client.endpoints.join(","));
            line("fleet", &o.fleet);
            line("host", &o.host);
            line("etcd-prefix", &o.prefix);
            let tls = &o.client.tls;
            for (key, path) in [
                ("etcd-ca", &tls.ca),
                ("etcd-cert", &tls.cert),
                ("etcd-key", &tls.key),
            ] {
                if let Some(p) = path {
                    line(key, &p.display());
                }
            }
            if let Some(u) = &o.client.user {
                line("etcd-user", u);
            }
            if o.client.password.is_some() {
                line("etcd-password", &"***");
            }
            line("max-parallel", &f.rollout.max_parallel);
            line("canary", &f.rollout.canary);
            line("bake", &f.rollout.bake);
            line("health-hooks", &f.health_hooks.display());
            line("on-halt", &f.rollout.on_halt);
            line("fleet-lease", &o.lease_secs);
        }
        match &self.trust {
            Some(crate::trust::Trust::Minisign { file, .. }) => {
                line("trusted-keys", &file.display());
            }
            Some(crate::trust::Trust::Git {
                allowed_signers,
                verify,
                ..
            }) => {
                line("allowed-signers", &allowed_signers.display());
                line("git-verify", verify);
            }
            None => {}
        }
        if let Some(age) = self.trust.as_ref().and_then(crate::trust::Trust::max_age) {
            line("max-signature-age", &crate::trust::humanize(age));
        }
        out
    }
}

impl Settings {
    /// The switch of `current` in the configured `activate` mode, `local` and `directory`
    /// (built here so that `activate` never imports the configuration).
    pub fn activator(&self) -> crate::activate::Activator {
        crate::activate::Activator::new(self.activate, &self.local, &self.directory)
    }
}

/// The host's fully qualified name, reversed (`app.example.com` → `com.example.app`), the
/// default `{id}`.
pub fn reversed_fqdn() -> String {
    let fqdn = fqdn();
    fqdn.split('.').rev().collect::<Vec<_>>().join(".")
}

/// The host name, qualified through the resolver when it has no dot (like Python's
/// `socket.getfqdn`, which the seed tool used).
fn fqdn() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy().into_owned();
    if host.contains('.') {
        return host;
    }
    let hints = dns_lookup::AddrInfoHints {
        flags: libc::AI_CANONNAME,
        ..Default::default()
    };
    dns_lookup::getaddrinfo(Some(&host), None, Some(hints))
        .ok()
        .and_then(|mut it| it.find_map(|a| a.ok().and_then(|a| a.canonname)))
        .filter(|c| c.contains('.'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["repo-deploy"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("cli")
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write_cfg(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rd.cfg");
        fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn file_syntax_comments_aliases_and_underscores() {
        let (_d, path) = write_cfg(
            "# c\n; c\n\nrepository = /srv/app.zip\npre_hooks=/h\nkeep = 3\nschedule = \"*/10 * * * * *\"\n",
        );
        let c = cli(&["-c", path.to_str().expect("utf8")]);
        let s = Settings::resolve_in(&c, &env(&[]), Path::new("/")).expect("settings");
        assert_eq!(s.remote, Remote::Local("/srv/app.zip".into()));
        assert_eq!(s.pre_hooks, PathBuf::from("/h"));
        assert_eq!(s.keep, 3);
        assert_eq!(s.schedule.as_str(), "*/10 * * * * *");
        assert_eq!(s.directory, PathBuf::from("/var/deploy"));
        assert_eq!(s.local, PathBuf::from("/var/deploy/current"));
        assert_eq!(s.cache, PathBuf::from("/var/deploy/cache"));
    }

    #[test]
    fn unknown_key_names_file_line_and_closest_key() {
        let (_d, path) = write_cfg("remote = /a.zip\n\nschedul = * * * * *\n");
        let err = Settings::resolve_in(
            &cli(&["-c", path.to_str().expect("utf8")]),
            &env(&[]),
            Path::new("/"),
        )
        .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("rd.cfg:3"), "{msg}");
        assert!(msg.contains("`schedule`"), "{msg}");
    }

    #[test]
    fn line_without_equals_is_a_syntax_error() {
        let (_d, path) = write_cfg("remote /a.zip\n");
        let err = Settings::resolve_in(
            &cli(&["-c", path.to_str().expect("utf8")]),
            &env(&[]),
            Path::new("/"),
        )
        .expect_err("syntax");
        assert!(matches!(err, ConfigError::Syntax { line: 1, .. }));
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let err = Settings::resolve_in(
            &cli(&["-c", "/nonexistent/x.cfg", "-r", "/a.zip"]),
            &env(&[]),
            Path::new("/"),
        )
        .expect_err("missing");
        assert!(matches!(err, ConfigError::Read(..)));
    }

    #[test]
    fn precedence_cli_over_env_over_file() {
        let (_d, path) = write_cfg("remote = /file.zip\nkeep = 3\nhook-timeout = 7\n");
        let p = path.to_str().expect("utf8");
        let e = env(&[
            ("REPO_DEPLOY_REMOTE", "/env.zip"),
            ("REPO_DEPLOY_HOOK_TIMEOUT", "9"),
        ]);
        let s = Settings::resolve_in(&cli(&["-c", p]), &e, Path::new("/")).expect("settings");
        assert_eq!(s.remote, Remote::Local("/env.zip".into()));
        assert_eq!(s.hook_timeout, Duration::from_secs(9));
        assert_eq!(s.keep, 3);
        let s = Settings::resolve_in(&cli(&["-c", p, "-r", "/cli.zip"]), &e, Path::new("/"))
            .expect("settings");
        assert_eq!(s.remote, Remote::Local("/cli.zip".into()));
    }

    #[test]
    fn directory_is_the_parent_of_local_when_only_local_is_given() {
        let s = Settings::resolve_in(
            &cli(&["-r", "/a.zip", "-l", "/srv/app/live"]),
            &env(&[]),
            Path::new("/"),
        )
        .expect("settings");
        assert_eq!(s.directory, PathBuf::from("/srv/app"));
        let s = Settings::resolve_in(
            &cli(&["-r", "/a.zip", "-l", "/srv/app/live", "-d", "/d"]),
            &env(&[]),
            Path::new("/"),
        )
        .expect("settings");
        assert_eq!(s.directory, PathBuf::from("/d"));
    }

    #[test]
    fn id_is_substituted() {
        let s = Settings::resolve_in(
            &cli(&["-r", "https://h/{id}.zip", "-i", "web"]),
            &env(&[]),
            Path::new("/"),
        )
        .expect("settings");
        assert_eq!(s.remote_url.expose(), "https://h/web.zip");
        let s = Settings::resolve_in(
            &cli(&["-r", "https://h/{id}.zip"]),
            &env(&[]),
            Path::new("/"),
        )
        .expect("settings");
        assert!(!s.remote_url.expose().contains("{id}"));
    }

    #[test]
    fn bad_values_are_errors() {
        for (k, v) in [
            ("KEEP", "1"),
            ("KEEP", "x"),
            ("HOOK_TIMEOUT", "-1"),
            ("MAX_SIZE", "lots"),
            ("MAX_FILES", "0"),
            ("SCHEDULE", "* *"),
        ] {
            let e = env(&[
                ("REPO_DEPLOY_REMOTE", "/a.zip"),
                (&format!("REPO_DEPLOY_{k}"), v),
            ]);
            assert!(
                Settings::resolve_in(&cli(&[]), &e, Path::new("/")).is_err(),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn half_an_s3_key_pair_is_a_configuration_error() {
        let e = env(&[
            ("REPO_DEPLOY_REMOTE", "s3://b/a.zip"),
            ("REPO_DEPLOY_AWS_SECRET_KEY", "sekrit99"),
        ]);
        let err = Settings::resolve_in(&cli(&[]), &e, Path::new("/")).expect_err("half a pair");
        let msg = err.to_string();
        assert!(
            msg.contains("go together") && !msg.contains("sekrit99"),
            "{msg}"
        );
        let e = env(&[
            ("REPO_DEPLOY_REMOTE", "s3://b/a.zip"),
            ("REPO_DEPLOY_S3_ENDPOINT", "localhost:9000"),
        ]);
        assert!(Settings::resolve_in(&cli(&[]), &e, Path::new("/")).is_err());
    }

    #[test]
    fn sizes_take_suffixes() {
        let raw = |v: &str| Raw {
            value: v.into(),
            origin: "t".into(),
        };
        assert_eq!(parse_size(&raw("10G"), "k").expect("10G"), 10 << 30);
        assert_eq!(parse_size(&raw("500MiB"), "k").expect("500MiB"), 500 << 20);
        assert_eq!(parse_size(&raw("4096"), "k").expect("4096"), 4096);
    }

    #[test]
    fn git_remotes_are_accepted() {
        let s = Settings::resolve_in(
            &cli(&["-r", "https://u:t0ken@h/org/a.git/site#v1"]),
            &env(&[]),
            Path::new("/"),
        )
        .expect("git remote");
        assert!(matches!(s.remote, Remote::Git(_)));
        assert_eq!(s.remote_display, "https://***@h/org/a.git/site#v1");
    }

    #[test]
    fn describe_masks_secrets() {
        let e = env(&[
            ("REPO_DEPLOY_AWS_SECRET_KEY", "sekrit123"),
            ("REPO_DEPLOY_AWS_ACCESS_KEY", "AKIAEXAMPLE1"),
        ]);
        let s = Settings::resolve_in(&cli(&["-r", "https://u:pw123@h/a.zip"]), &e, Path::new("/"))
            .expect("settings");
        let d = s.describe();
        assert!(!d.contains("sekrit123") && !d.contains("pw123"), "{d}");
        assert!(s.secrets().contains(&"sekrit123".to_string()));
    }

    /// Issue 11, bug 6: a `{:?}` of the settings (in a panic, a debug log) showed the remote
    /// URL with its password, and the S3 keys of a source.
    #[test]
    fn debug_of_the_settings_shows_no_secret() {
        let e = env(&[
            ("REPO_DEPLOY_AWS_SECRET_KEY", "sekrit123"),
            ("REPO_DEPLOY_AWS_ACCESS_KEY", "AKIAEXAMPLE1"),
            ("REPO_DEPLOY_TRIGGER_TOKEN", "tok-0123456789abcdef"),
        ]);
        for remote in [
            "https://u:pw123@h/a.zip?token=qtok987",
            "https://u:pw123@h/org/app.git/site#main",
            "https://tok987xyz@h/org/app.git",
        ] {
            let s =
                Settings::resolve_in(&cli(&["-r", remote]), &e, Path::new("/")).expect("settings");
            let shown = format!("{s:?} {s:#?}");
            for secret in [
                "pw123",
                "qtok987",
                "tok987xyz",
                "sekrit123",
                "AKIAEXAMPLE1",
                "tok-0123456789abcdef",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn telemetry_keys_have_defaults_and_are_validated() {
        let s = Settings::resolve_in(&cli(&["-r", "/a.zip"]), &env(&[]), Path::new("/"))
            .expect("settings");
        assert_eq!(s.telemetry.listen, None);
        assert_eq!(s.telemetry.health_periods, 3);
        assert_eq!(s.telemetry.trigger_token, None);
        assert_eq!(s.telemetry.trigger_min_interval, Duration::from_secs(10));
        assert_eq!(s.splay, Duration::ZERO);

        let e = env(&[
            ("REPO_DEPLOY_LISTEN", "127.0.0.1:9469"),
            ("REPO_DEPLOY_HEALTH_PERIODS", "2"),
            ("REPO_DEPLOY_TRIGGER_TOKEN", "s3cret-token-0123456789"),
            ("REPO_DEPLOY_TRIGGER_MIN_INTERVAL", "30"),
            ("REPO_DEPLOY_SPLAY", "90"),
        ]);
        let s =
            Settings::resolve_in(&cli(&["-r", "/a.zip"]), &e, Path::new("/")).expect("settings");
        assert_eq!(
            s.telemetry.listen,
            Some("127.0.0.1:9469".parse().expect("addr"))
        );
        assert_eq!(s.telemetry.health_periods, 2);
        assert_eq!(s.telemetry.trigger_min_interval, Duration::from_secs(30));
        assert_eq!(s.splay, Duration::from_secs(90));
        assert!(s.secrets().contains(&"s3cret-token-0123456789".to_string()));
        let described = s.describe();
        assert!(described.contains("listen = 127.0.0.1:9469"), "{described}");
        assert!(
            !described.contains("s3cret-token") && described.contains("trigger-token = ***"),
            "{described}"
        );
        assert!(!format!("{s:?}").contains("s3cret-token"));

        for (k, v) in [
            ("LISTEN", "localhost"),
            ("LISTEN", "127.0.0.1"),
            ("LISTEN", "127.0.0.1:99999"),
            ("HEALTH_PERIODS", "0"),
            ("HEALTH_PERIODS", "x"),
            ("TRIGGER_TOKEN", "short"),
            ("TRIGGER_TOKEN", "has a space in the middle"),
            ("TRIGGER_MIN_INTERVAL", "0"),
            ("SPLAY", "-1"),
            ("SPLAY", "soon"),
        ] {
            let e = env(&[
                ("REPO_DEPLOY_REMOTE", "/a.zip"),
                (&format!("REPO_DEPLOY_{k}"), v),
            ]);
            let err =
                Settings::resolve_in(&cli(&[]), &e, Path::new("/")).expect_err(&format!("{k}={v}"));
            assert!(matches!(err, ConfigError::Value { .. }), "{k}={v}: {err}");
        }
    }

    #[test]
    fn a_refused_trigger_token_is_not_echoed() {
        let e = env(&[
            ("REPO_DEPLOY_REMOTE", "/a.zip"),
            ("REPO_DEPLOY_TRIGGER_TOKEN", "tooshort1"),
        ]);
        let err = Settings::resolve_in(&cli(&[]), &e, Path::new("/")).expect_err("short token");
        assert!(!err.to_string().contains("tooshort1"), "{err}");
    }
}
