//! What the daemon tells the outside world: Prometheus metrics, a health verdict, the
//! check-now webhook, and (through `systemd.rs`) the service manager.
//!
//! All of it is held by one [`Telemetry`] value that the daemon creates and owns; nothing is
//! registered globally, so two daemons in one test process keep apart. The daemon tells it
//! each check's result ([`Telemetry::checked`]). What only the check itself sees (how long a
//! download took, how each hook ended) arrives as [`events`](crate::events), which the cycle
//! and the hooks emit without knowing who listens: [`Telemetry::observe`] makes the
//! daemon's telemetry their observer for the length of one check.
//!
//! The HTTP listener is opt-in (`listen = 127.0.0.1:9469`) and serves these routes:
//! - `GET /`, `GET /status.json`, `GET /fleet.json`: the status page and its JSON
//!   ([`page`](crate::page) builds them; both JSON answers are cached for half a second, so
//!   a room full of open pages costs two reads of the state and of etcd a second);
//! - `GET /metrics`: the Prometheus text format (0.0.4), through `prometheus-client`;
//! - `GET /healthz`: 200 while a check succeeded within `health-periods` schedule periods
//!   (a period is the gap between the schedule's next two fire times; the splay is added),
//!   503 with a one-line reason otherwise, including when checks succeeded once and have
//!   failed since. Before the first success the same window counts from the start (grace);
//! - `POST /trigger` with `Authorization: Bearer <trigger-token>`: check now, at most once per
//!   `trigger-min-interval`. 404 without a configured token, 401 for a missing or wrong one
//!   (compared in constant time), 429 while rate-limited.
//!
//! The server is hyper's own HTTP/1 server (already in the tree through reqwest) rather than a
//! framework: a few fixed routes need no router, and every response is built in one function.
//! Connections are capped, one request each, with a bounded lifetime; a client that has not
//! sent its headers within 3 s is dropped, so slow clients cannot hold the slots that
//! `/healthz` needs.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chrono::Local;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::cycle::{CycleError, Outcome};
use crate::events::{Event, HookOutcome, HookPhase, Sink};
use crate::page;
use crate::schedule::Schedule;
use crate::systemd;

/// Connections served at once; more wait in the kernel's backlog (1024) for the few
/// milliseconds a request takes. Each costs its buffers (8 KiB and up), so the cap bounds the
/// memory a crowd of clients can take.
const MAX_CONNECTIONS: usize = 128;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a JSON answer of the page is reused: an open page polls every second, so what
/// it shows is at most 1.5 s old, and a room full of open pages costs two reads a second.
const PAGE_CACHE: Duration = Duration::from_millis(500);
/// How long `/fleet.json` waits for etcd before answering with the last good state.
const FLEET_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection (one request) that takes longer is closed.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest error text kept for `/healthz` and systemd's STATUS.
const MAX_REASON: usize = 300;
/// Buckets for check, download and deploy durations, in seconds.
const DURATION_BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The events of a check, counted in the metrics.
impl Sink for Shared {
    fn event(&self, event: &Event<'_>) {
        match *event {
            Event::Fetched { took, bytes } => {
                self.metrics.download_duration.observe(took.as_secs_f64());
                if let Some(bytes) = bytes {
                    self.metrics.downloaded_bytes.inc_by(bytes);
                }
            }
            Event::HookRan {
                hook,
                phase,
                outcome,
            } => {
                let labels = HookLabels {
                    hook: hook.file_name().map_or_else(
                        || hook.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    ),
                    phase: match phase {
                        HookPhase::Pre => "pre",
                        HookPhase::Post => "post",
                        HookPhase::Health => "health",
                    },
                    result: match outcome {
                        HookOutcome::Success => "success",
                        HookOutcome::Failed => "failed",
                        HookOutcome::TimedOut => "timeout",
                        HookOutcome::Cancelled => "cancelled",
                        HookOutcome::Error => "error",
                    },
                };
                self.metrics.hook_runs.get_or_create(&labels).inc();
            }
            Event::FleetConnected(up) => {
                self.metrics.fleet_connected.set(i64::from(up));
            }
            Event::PlaceWaited { took } => {
                self.metrics.place_wait.inc_by(took.as_secs_f64());
            }
            Event::HaltSeen => {
                self.metrics.halts_seen.inc();
            }
            Event::Refused { reason } => {
                self.metrics
                    .refusals
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
    phase: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// The results a check is counted under (`repo_deploy_checks_total{result=…}`).
const RESULTS: [&str; 7] = [
    "unchanged",
    "deployed",
    "failed",
    "blocked",
    "rolled_back",
    "halted",
    "refused",
];

/// Every metric, and the registry that encodes them (names are `repo_deploy_` + the name
/// given here + the unit + `_total` for counters).
struct Metrics {
    registry: Registry,
    checks: Family<ResultLabel, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    last_deploy: Gauge<f64, AtomicU64>,
    check_duration: Histogram,
    deploy_duration: Histogram,
    download_duration: Histogram,
    downloaded_bytes: Counter,
    hook_runs: Family<HookLabels, Counter>,
    live_version: Family<VersionLabel, Gauge>,
    fleet_connected: Gauge,
    place_wait: Counter<f64, AtomicU64>,
    halts_seen: Counter,
    refusals: Family<ReasonLabel, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let histogram = || Histogram::new(DURATION_BUCKETS);
        let mut m = Metrics {
            registry: Registry::with_prefix("repo_deploy"),
            checks: Family::default(),
            last_success: Gauge::default(),
            last_deploy: Gauge::default(),
            check_duration: histogram(),
            deploy_duration: histogram(),
            download_duration: histogram(),
            downloaded_bytes: Counter::default(),
            hook_runs: Family::default(),
            live_version: Family::default(),
            fleet_connected: Gauge::default(),
            place_wait: Counter::default(),
            halts_seen: Counter::default(),
            refusals: Family::default(),
        };
        // Every result is shown from the start, at 0, so rate() and alerts work before the
        // first failure.
        for result in RESULTS {
            let _ = m.checks.get_or_create(&ResultLabel { result });
        }
        let r = &mut m.registry;
        r.register(
            "checks",
            "Checks of the remote, by result",
            m.checks.clone(),
        );
        r.register_with_unit(
            "last_success_timestamp",
            "Unix time of the last check that ended with the remote's version live (0: none yet)",
            Unit::Seconds,
            m.last_success.clone(),
        );
        r.register_with_unit(
            "last_deploy_timestamp",
            "Unix time of the last deploy of a new version (0: none since the start)",
            Unit::Seconds,
            m.last_deploy.clone(),
        );
        r.register_with_unit(
            "check_duration",
            "Time taken by each check",
            Unit::Seconds,
            m.check_duration.clone(),
        );
        r.register_with_unit(
            "deploy_duration",
            "Time taken by each check that deployed a new version, download and hooks included",
            Unit::Seconds,
            m.deploy_duration.clone(),
        );
        r.register_with_unit(
            "download_duration",
            "Time taken to fetch each new version from the remote",
            Unit::Seconds,
            m.download_duration.clone(),
        );
        r.register_with_unit(
            "downloaded",
            "Bytes of archives fetched from the remote",
            Unit::Bytes,
            m.downloaded_bytes.clone(),
        );
        r.register(
            "hook_runs",
            "Hook runs, by hook, phase and result",
            m.hook_runs.clone(),
        );
        r.register(
            "live_version_info",
            "The version that is live (value 1)",
            m.live_version.clone(),
        );
        r.register(
            "fleet_connected",
            "Fleet mode: 1 while this host's etcd lease is alive, 0 when etcd cannot be reached",
            m.fleet_connected.clone(),
        );
        r.register_with_unit(
            "fleet_place_wait",
            "Fleet mode: time spent waiting for a place (canaries and max-parallel)",
            Unit::Seconds,
            m.place_wait.clone(),
        );
        r.register(
            "fleet_halts_seen",
            "Fleet mode: checks that met a halted version, and halts this host set",
            m.halts_seen.clone(),
        );
        for reason in crate::trust::Refusal::REASONS {
            let _ = m.refusals.get_or_create(&ReasonLabel { reason });
        }
        r.register(
            "refusals",
            "New versions refused as untrusted (signed releases), by reason",
            m.refusals.clone(),
        );
        m
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        out
    }

    fn set_live(&self, version: Option<&str>) {
        let current = VersionLabel {
            version: version.unwrap_or_default().to_string(),
        };
        if version.is_some() && self.live_version.get(&current).is_some() {
            return;
        }
        self.live_version.clear();
        if version.is_some() {
            self.live_version.get_or_create(&current).set(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Health

/// What the daemon's checks have shown so far.
#[derive(Debug)]
struct Health {
    started: Instant,
    last_success: Option<Instant>,
    last_error: Option<String>,
}

/// `/healthz`'s answer: healthy or not, with a one-line reason.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Healthy(String),
    Unhealthy(String),
}

impl Health {
    /// Judge at `now`, allowing `window` since the last success (or since the start, before
    /// the first one); `None` allows any age (a schedule that no longer fires).
    fn assess(&self, now: Instant, window: Option<Duration>, window_text: &str) -> Verdict {
        let error = self
            .last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        let within =
            |since: Instant| window.is_none_or(|w| now.saturating_duration_since(since) <= w);
        let age = |since: Instant| now.saturating_duration_since(since).as_secs();
        match self.last_success {
            Some(t) if within(t) => {
                Verdict::Healthy(format!("ok: last successful check {}s ago", age(t)))
            }
            Some(t) => Verdict::Unhealthy(format!(
                "unhealthy: no successful check for {}s (allowed {window_text}){error}",
                age(t)
            )),
            None if within(self.started) => Verdict::Healthy(format!(
                "ok: starting, no successful check yet (grace {window_text}){error}"
            )),
            None => Verdict::Unhealthy(format!(
                "unhealthy: no successful check since the start {}s ago (allowed {window_text}){error}",
                age(self.started)
            )),
        }
    }
}

/// The settings telemetry reads, refreshed on SIGHUP.
struct Policy {
    schedule: Schedule,
    periods: u32,
    splay: Duration,
    /// SHA-256 of the trigger token: what is kept and compared (never the token itself).
    token: Option<[u8; 32]>,
    min_interval: Duration,
}

impl Policy {
    fn new(settings: &Settings) -> Policy {
        let t = &settings.telemetry;
        Policy {
            schedule: settings.schedule.clone(),
            periods: t.health_periods,
            splay: settings.splay,
            token: t
                .trigger_token
                .as_ref()
                .map(|tok| Sha256::digest(tok.expose().as_bytes()).into()),
            min_interval: t.trigger_min_interval,
        }
    }

    /// How long a success stays good: `periods` schedule periods, plus the whole `splay` (an
    /// upper bound of this host's delay), and how to say it.
    fn window(&self) -> (Option<Duration>, String) {
        match self
            .schedule
            .period_after(&Local::now())
            .and_then(|p| p.checked_mul(self.periods).map(|w| (p, w)))
        {
            Some((period, window)) => {
                let window = window + self.splay;
                let splay = if self.splay.is_zero() {
                    String::new()
                } else {
                    format!(" + splay {}s", self.splay.as_secs_f64())
                };
                let text = format!(
                    "{}s: {} periods of {}s{splay}",
                    window.as_secs_f64(),
                    self.periods,
                    period.as_secs_f64()
                );
                (Some(window), text)
            }
            None => (
                None,
                "any age: the schedule does not fire again".to_string(),
            ),
        }
    }
}

/// Whether `presented` is the token whose SHA-256 is `expected`. Both sides are hashed, so
/// the time taken does not depend on how much of a guess is right, nor on its length; the
/// fold has no early exit.
fn token_matches(presented: &str, expected: &[u8; 32]) -> bool {
    let digest = Sha256::digest(presented.as_bytes());
    let diff = digest
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

// ---------------------------------------------------------------------------------------------
// The handle

/// What the daemon and the HTTP handlers share.
struct Shared {
    metrics: Metrics,
    health: Mutex<Health>,
    policy: Mutex<Policy>,
    /// Set by `POST /trigger`; the daemon waits on it beside SIGUSR1. A permit is stored when
    /// the daemon is busy, so a trigger during a check runs one more check after it.
    trigger: Notify,
    last_trigger: Mutex<Option<Instant>>,
    /// The recent checks, for the page's timeline.
    history: Mutex<page::History>,
    /// The settings in force (the page reads the deploy directory through them).
    settings: Mutex<Arc<Settings>>,
    /// Fleet mode: how to read the group's state; `None`: `/fleet.json` is 404.
    fleet: Mutex<Option<page::FleetSource>>,
    /// The last JSON answers of the page, each with the time it was made.
    status_cache: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
    fleet_cache: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The listener's task, aborted when replaced or dropped.
struct Server {
    /// The `listen` value it was started for (port 0 picks a free port).
    configured: SocketAddr,
    /// The address it is bound to.
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// The daemon's telemetry: metrics, health, the trigger, the listener and systemd.
pub struct Telemetry {
    shared: Arc<Shared>,
    server: Mutex<Option<Server>>,
    watchdog: Option<JoinHandle<()>>,
    check_started: Mutex<Instant>,
    ready: Mutex<bool>,
}

impl Telemetry {
    /// Start recording, the listener when `listen` is set (an address that cannot be bound
    /// is an error), and the systemd watchdog when systemd asks for one.
    pub async fn start(settings: &Settings) -> anyhow::Result<Telemetry> {
        let shared = Arc::new(Shared {
            metrics: Metrics::new(),
            health: Mutex::new(Health {
                started: Instant::now(),
                last_success: None,
                last_error: None,
            }),
            policy: Mutex::new(Policy::new(settings)),
            trigger: Notify::new(),
            last_trigger: Mutex::new(None),
            history: Mutex::new(page::History::default()),
            settings: Mutex::new(Arc::new(settings.clone())),
            fleet: Mutex::new(None),
            status_cache: tokio::sync::Mutex::new(None),
            fleet_cache: tokio::sync::Mutex::new(None),
        });
        let server = match settings.telemetry.listen {
            Some(addr) => Some(listen(addr, &shared).await?),
            None => None,
        };
        Ok(Telemetry {
            shared,
            server: Mutex::new(server),
            watchdog: systemd::spawn_watchdog(),
            check_started: Mutex::new(Instant::now()),
            ready: Mutex::new(false),
        })
    }

    /// The address the listener is bound to, if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.server).as_ref().map(|s| s.addr)
    }

    /// Fleet mode: how `/fleet.json` reads the group (`None` outside fleet mode).
    pub fn set_fleet(&self, source: Option<page::FleetSource>) {
        *lock(&self.shared.fleet) = source;
    }

    /// Where events from outside a check go (fleet mode's connection, in its own task).
    pub fn sink(&self) -> Arc<dyn Sink> {
        self.shared.clone()
    }

    /// Run one check with its [`events`](crate::events) counted here.
    pub async fn observe<T>(&self, check: impl Future<Output = T>) -> T {
        *lock(&self.check_started) = Instant::now();
        crate::events::observe(self.shared.clone(), check).await
    }

    /// A check ended (the one just run through [`Telemetry::observe`]): count it, update
    /// the health, the live version and systemd's status (READY after the first check).
    pub fn checked(&self, result: &Result<Outcome, CycleError>, settings: &Settings) {
        let took = lock(&self.check_started).elapsed();
        let m = &self.shared.metrics;
        let label = match result {
            Ok(Outcome::Unchanged { .. }) => "unchanged",
            Ok(Outcome::Deployed { .. }) => "deployed",
            Err(CycleError::Failed(_) | CycleError::Misconfigured(_)) => "failed",
            Err(CycleError::Blocked { .. }) => "blocked",
            Err(CycleError::RolledBack { .. }) => "rolled_back",
            Err(CycleError::Halted { .. }) => "halted",
            Err(CycleError::Refused { .. }) => "refused",
            // Stopped by a signal: the agent is going away; nothing to count.
            Err(CycleError::Interrupted) => return,
        };
        m.checks.get_or_create(&ResultLabel { result: label }).inc();
        m.check_duration.observe(took.as_secs_f64());
        let now = unix_now();
        lock(&self.shared.history).record(page::CheckRecord {
            time: now,
            result: label,
            version: match result {
                Ok(Outcome::Deployed { version, .. }) => Some(version.clone()),
                Ok(Outcome::Unchanged { version }) => version.clone(),
                Err(
                    CycleError::Blocked { version, .. }
                    | CycleError::RolledBack { version, .. }
                    | CycleError::Halted { version, .. },
                ) => Some(version.clone()),
                Err(_) => None,
            },
            error: result.as_ref().err().map(|e| one_line(&e.to_string())),
        });
        {
            let mut health = lock(&self.shared.health);
            match result {
                Ok(outcome) => {
                    m.last_success.set(now);
                    health.last_success = Some(Instant::now());
                    health.last_error = None;
                    if matches!(outcome, Outcome::Deployed { .. }) {
                        m.last_deploy.set(now);
                        m.deploy_duration.observe(took.as_secs_f64());
                    }
                }
                Err(e) => health.last_error = Some(one_line(&e.to_string())),
            }
        }

        let live = match result {
            Ok(Outcome::Deployed { version, .. }) => Some(version.clone()),
            Ok(Outcome::Unchanged { version: Some(v) }) => Some(v.clone()),
            _ => live_version_on_disk(settings),
        };
        m.set_live(live.as_deref());

        let mut status = match &live {
            Some(v) => format!(
                "live {v}; last check {label} at {}",
                Local::now().format("%H:%M:%S")
            ),
            None => format!(
                "nothing live; last check {label} at {}",
                Local::now().format("%H:%M:%S")
            ),
        };
        if let Some(e) = &lock(&self.shared.health).last_error {
            let _ = write!(status, ": {e}");
        }
        let mut ready = lock(&self.ready);
        if *ready {
            systemd::status(&status);
        } else {
            systemd::ready(&status);
            *ready = true;
        }
    }

    /// Resolves when `POST /trigger` asks for a check.
    pub async fn triggered(&self) {
        self.shared.trigger.notified().await;
    }

    /// SIGHUP: the configuration is being re-read.
    pub fn reloading(&self) {
        systemd::reloading();
    }

    /// After SIGHUP: apply `settings` (the new ones, or the old ones when the new were
    /// refused). A new `listen` address is bound before the old listener is closed; when it
    /// cannot be bound, the old one stays.
    pub async fn reloaded(&self, settings: &Settings) {
        *lock(&self.shared.policy) = Policy::new(settings);
        *lock(&self.shared.settings) = Arc::new(settings.clone());
        *self.shared.status_cache.lock().await = None;
        let wanted = settings.telemetry.listen;
        let configured = lock(&self.server).as_ref().map(|s| s.configured);
        if wanted != configured {
            let current = self.local_addr();
            let fresh = match wanted {
                Some(addr) => match listen(addr, &self.shared).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        let still = current.map_or_else(
                            || "not listening".to_string(),
                            |a| format!("still listening on {a}"),
                        );
                        tracing::error!("SIGHUP: {e:#}; {still}");
                        systemd::reloaded();
                        return;
                    }
                },
                None => None,
            };
            if let Some(old) = std::mem::replace(&mut *lock(&self.server), fresh) {
                old.task.abort();
                tracing::info!("stopped listening on {}", old.addr);
            }
        }
        systemd::reloaded();
    }

    /// The daemon is stopping.
    pub fn stopping(&self) {
        systemd::stopping();
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.server).take() {
            s.task.abort();
        }
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An error as one short line, secrets masked.
fn one_line(text: &str) -> String {
    let text = crate::logging::mask(text).replace(['\n', '\r'], " ");
    match text.char_indices().nth(MAX_REASON) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The version of the live release (in every `activate` mode), from the state file: after a
/// failed check, whose result does not say.
fn live_version_on_disk(settings: &Settings) -> Option<String> {
    let live = settings.activator().live().ok()??;
    crate::state::State::load(&settings.directory)
        .releases
        .get(&live.name)
        .map(|i| i.version.clone())
}

fn verdict(shared: &Shared) -> Verdict {
    let (window, text) = lock(&shared.policy).window();
    lock(&shared.health).assess(Instant::now(), window, &text)
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Bind `addr` and serve on a task of its own.
async fn listen(addr: SocketAddr, shared: &Arc<Shared>) -> anyhow::Result<Server> {
    let configured = addr;
    let listener =
        bind(addr).with_context(|| format!("cannot listen on {addr} (the `listen` key)"))?;
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        "serving the status page (/), /metrics, /healthz and POST /trigger on http://{addr}"
    );
    let task = tokio::spawn(serve(listener, Arc::clone(shared)));
    Ok(Server {
        configured,
        addr,
        task,
    })
}

/// Bind with a backlog of 1024 (the standard library's 128 overflows when a few hundred open
/// pages poll at the same moment, and a dropped SYN costs its client a second).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("telemetry listener: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(&shared, &req, peer).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("telemetry connection from {peer}: {e}"),
                Err(_) => tracing::debug!("telemetry connection from {peer} timed out"),
            }
        });
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static header"),
    );
    r
}

fn with_header(
    mut r: Response<Body>,
    name: hyper::header::HeaderName,
    value: &str,
) -> Response<Body> {
    if let Ok(v) = value.parse() {
        r.headers_mut().insert(name, v);
    }
    r
}

async fn route<B>(shared: &Shared, req: &Request<B>, peer: SocketAddr) -> Response<Body> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/" | "/index.html" if get => page_html(),
        // Browsers ask for it; an empty answer keeps a 404 out of their consoles.
        "/favicon.ico" if get => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        "/status.json" if get => status_json(shared).await,
        "/fleet.json" if get => fleet_json(shared).await,
        "/metrics" if get => {
            let r = text(StatusCode::OK, shared.metrics.encode());
            with_header(
                r,
                CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
        "/healthz" if get => match verdict(shared) {
            Verdict::Healthy(why) => text(StatusCode::OK, why),
            Verdict::Unhealthy(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        "/trigger" if req.method() == Method::POST => trigger(shared, req.headers(), peer),
        "/metrics" | "/healthz" | "/" | "/index.html" | "/status.json" | "/fleet.json" => {
            with_header(
                text(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
                ALLOW,
                "GET, HEAD",
            )
        }
        "/trigger" => with_header(
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            ALLOW,
            "POST",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the endpoints are GET / (the status page), GET /status.json, GET /fleet.json, GET /metrics, GET /healthz and POST /trigger",
        ),
    }
}

/// The headers of every page answer: nothing cached, nothing framed, nothing sniffed.
fn page_headers(mut r: Response<Body>, content_type: &str) -> Response<Body> {
    for (name, value) in [
        ("content-type", content_type),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::try_from(name),
            hyper::header::HeaderValue::try_from(value),
        ) {
            r.headers_mut().insert(n, v);
        }
    }
    r
}

/// `GET /`: the page, with a policy that allows its own inline style and script only.
fn page_html() -> Response<Body> {
    let r = page_headers(
        Response::new(Full::new(Bytes::from_static(page::HTML.as_bytes()))),
        "text/html; charset=utf-8",
    );
    with_header(
        r,
        hyper::header::CONTENT_SECURITY_POLICY,
        page::content_security_policy(),
    )
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    page_headers(r, "application/json")
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": crate::logging::mask(message) }).to_string();
    json_response(status, Bytes::from(body))
}

/// `GET /status.json`: `status --json` and the history, made at most once a second.
async fn status_json(shared: &Shared) -> Response<Body> {
    let mut cache = shared.status_cache.lock().await;
    if let Some((at, body)) = cache.as_ref()
        && at.elapsed() < PAGE_CACHE
    {
        return json_response(StatusCode::OK, body.clone());
    }
    let settings = Arc::clone(&lock(&shared.settings));
    let history = lock(&shared.history).checks().cloned().collect::<Vec<_>>();
    let made = tokio::task::spawn_blocking(move || {
        let mut h = page::History::default();
        for c in history {
            h.record(c);
        }
        page::status_json(&settings, &h, unix_now())
    })
    .await;
    match made {
        Ok(Ok(value)) => {
            let body = Bytes::from(crate::logging::mask(&value.to_string()));
            *cache = Some((Instant::now(), body.clone()));
            json_response(StatusCode::OK, body)
        }
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `GET /fleet.json`: the group from etcd, at most once a second; 404 outside fleet mode,
/// 503 (with the last good state's time) when etcd does not answer in time.
async fn fleet_json(shared: &Shared) -> Response<Body> {
    let Some(source) = lock(&shared.fleet).clone() else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not in fleet mode: set `etcd` and `fleet` to roll out with a group",
        );
    };
    let mut cache = shared.fleet_cache.lock().await;
    if let Some((at, body)) = cache.as_ref()
        && at.elapsed() < PAGE_CACHE
    {
        return json_response(StatusCode::OK, body.clone());
    }
    match tokio::time::timeout(FLEET_TIMEOUT, source()).await {
        Ok(Ok(view)) => match serde_json::to_string(&view) {
            Ok(text) => {
                let body = Bytes::from(crate::logging::mask(&text));
                *cache = Some((Instant::now(), body.clone()));
                json_response(StatusCode::OK, body)
            }
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Ok(Err(e)) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e),
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("etcd did not answer within {}s", FLEET_TIMEOUT.as_secs()),
        ),
    }
}

/// `POST /trigger`: authenticate, rate-limit, and wake the daemon.
fn trigger(shared: &Shared, headers: &HeaderMap, peer: SocketAddr) -> Response<Body> {
    let (token, min_interval) = {
        let policy = lock(&shared.policy);
        (policy.token, policy.min_interval)
    };
    let Some(expected) = token else {
        return text(
            StatusCode::NOT_FOUND,
            "the trigger is disabled: set `trigger-token` in the configuration",
        );
    };
    if !bearer(headers).is_some_and(|t| token_matches(t, &expected)) {
        tracing::warn!("POST /trigger from {peer} refused: missing or wrong bearer token");
        let r = text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer <trigger-token>`",
        );
        return with_header(r, WWW_AUTHENTICATE, "Bearer realm=\"repo-deploy\"");
    }
    let mut last = lock(&shared.last_trigger);
    let now = Instant::now();
    if let Some(previous) = *last {
        let since = now.saturating_duration_since(previous);
        if since < min_interval {
            let wait = (min_interval - since).as_secs_f64().ceil().max(1.0);
            let r = text(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "a check was triggered {:.1}s ago; try again in {wait}s (trigger-min-interval)",
                    since.as_secs_f64()
                ),
            );
            return with_header(r, RETRY_AFTER, &format!("{wait}"));
        }
    }
    *last = Some(now);
    shared.trigger.notify_one();
    tracing::info!("POST /trigger from {peer}: checking now");
    text(StatusCode::OK, "check requested")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(
        started_ago: u64,
        success_ago: Option<u64>,
        error: Option<&str>,
    ) -> (Health, Instant) {
        let now = Instant::now() + Duration::from_secs(1000);
        let health = Health {
            started: now - Duration::from_secs(started_ago),
            last_success: success_ago.map(|s| now - Duration::from_secs(s)),
            last_error: error.map(str::to_string),
        };
        (health, now)
    }

    fn healthy(v: &Verdict) -> bool {
        matches!(v, Verdict::Healthy(_))
    }

    #[test]
    fn healthy_while_a_check_succeeded_within_the_window() {
        let (h, now) = health(500, Some(100), None);
        assert!(healthy(&h.assess(
            now,
            Some(Duration::from_secs(180)),
            "180s"
        )));
    }

    #[test]
    fn unhealthy_when_checks_succeeded_once_and_failed_since() {
        let (h, now) = health(500, Some(200), Some("cannot reach https://h/a.zip"));
        let v = h.assess(now, Some(Duration::from_secs(180)), "180s");
        let Verdict::Unhealthy(why) = v else {
            panic!("{v:?}")
        };
        assert!(
            why.contains("200s") && why.contains("cannot reach"),
            "{why}"
        );
        assert!(!why.contains('\n'));
    }

    #[test]
    fn grace_before_the_first_success_then_unhealthy() {
        let (h, now) = health(100, None, Some("404"));
        assert!(healthy(&h.assess(
            now,
            Some(Duration::from_secs(180)),
            "180s"
        )));
        let (h, now) = health(200, None, Some("404"));
        let v = h.assess(now, Some(Duration::from_secs(180)), "180s");
        assert!(
            matches!(&v, Verdict::Unhealthy(why) if why.contains("since the start")),
            "{v:?}"
        );
    }

    #[test]
    fn a_schedule_that_never_fires_again_allows_any_age() {
        let (h, now) = health(10_000, Some(9_000), None);
        assert!(healthy(&h.assess(now, None, "any")));
    }

    #[test]
    fn tokens_compare_by_value_only() {
        let expected: [u8; 32] = Sha256::digest(b"0123456789abcdef").into();
        assert!(token_matches("0123456789abcdef", &expected));
        for wrong in ["", "0123456789abcdeF", "0123456789abcdef0", "x"] {
            assert!(!token_matches(wrong, &expected), "{wrong}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "bearer  abc ".parse().expect("header"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn metrics_follow_prometheus_names() {
        let m = Metrics::new();
        m.checks
            .get_or_create(&ResultLabel { result: "deployed" })
            .inc();
        m.downloaded_bytes.inc_by(42);
        m.set_live(Some("v1"));
        m.set_live(Some("v2"));
        m.hook_runs
            .get_or_create(&HookLabels {
                hook: "10-x".into(),
                phase: "post",
                result: "success",
            })
            .inc();
        let text = m.encode();
        for line in [
            "repo_deploy_checks_total{result=\"deployed\"} 1",
            "repo_deploy_checks_total{result=\"failed\"} 0",
            "repo_deploy_downloaded_bytes_total 42",
            "repo_deploy_live_version_info{version=\"v2\"} 1",
            "repo_deploy_hook_runs_total{hook=\"10-x\",phase=\"post\",result=\"success\"} 1",
            "repo_deploy_last_success_timestamp_seconds 0.0",
            "repo_deploy_deploy_duration_seconds_count 0",
            "# TYPE repo_deploy_download_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert!(
            !text.contains("version=\"v1\""),
            "the old version is gone:\n{text}"
        );
    }

    #[test]
    fn one_line_reasons_are_short() {
        let long = "x".repeat(1000) + "\nmore";
        let line = one_line(&long);
        assert!(!line.contains('\n'));
        assert!(line.chars().count() <= MAX_REASON + 1);
    }
}
