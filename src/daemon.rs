//! The agent's life: the deploy lock, start-up recovery, signals, the control socket, and the
//! schedule loop that runs one thing at a time (a check or a requested rollback). With `-f` it
//! runs one check and returns its exit status.
//!
//! Signals: SIGTERM and SIGINT cancel a check that has not switched yet (it cleans up) and
//! let one that has switched finish, then stop the agent; SIGHUP re-reads the configuration
//! (a broken one is logged and the old one kept); SIGUSR1 checks now. A check that overruns
//! its slot skips the slots it missed: the next time is computed after it ends.
//!
//! The control socket (`handover.rs`, `${directory}/.control.sock`): the daemon, and only
//! the daemon, binds it right after it takes the lock and before recovery and the first
//! check, so `repo-deploy rollback` can hand it a rollback at any time. Its own tasks accept
//! and read the requests (with timeouts) and queue them; this loop takes one from the queue
//! only between checks, runs it as it would a check (signals heard, never two at once), and
//! answers. A `-f` run binds nothing (a `rollback` meanwhile exits 5) and sweeps a socket a
//! killed daemon left.
//!
//! What runs where: the loop and the checks' async steps on the runtime's two workers; the
//! lock's retries, recovery (sweeps and removals) and the cycle's syncfs and removals on
//! tokio's blocking pool, so a slow disk never stalls signals, telemetry or the socket.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use chrono::Local;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::cycle::{self, CycleError, Outcome};
use crate::exit::Exit;
use crate::handover::{self, Answer, ControlSocket, Incoming};
use crate::lock::{self, DeployLock, LockError};
use crate::rollout::{Member, Wake};
use crate::schedule;
use crate::source::Source;
use crate::state::LastCheck;
use crate::telemetry::Telemetry;

/// The signals the agent listens to.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// What arrived while a check ran.
#[derive(Default)]
struct Deferred {
    stop: bool,
    reload: bool,
    check_now: bool,
}

async fn take_lock(settings: &Settings) -> Result<DeployLock, Exit> {
    lock::acquire_async(&settings.directory).await.map_err(|e| {
        tracing::error!("{e}");
        match e {
            LockError::Held(_) => Exit::Locked,
            LockError::Io(..) => Exit::Failed,
        }
    })
}

/// A daemon that mostly waits needs few malloc arenas. glibc's default (up to 8 per core)
/// keeps what a burst of listener requests freed on many threads, and the RSS stays up after
/// the burst; two arenas bring it back (issue 14's load test: +2.3 MiB after 30 s of 250
/// clients with the default, +1.5 to +1.8 MiB with two).
fn fewer_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; it takes no pointer.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Give the pages that the allocator keeps free back to the system, after each check: what a
/// burst of listener requests or a large check freed then leaves the RSS at the next check
/// instead of staying for the daemon's life. Costs well under a millisecond on its small heap.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Run the agent: once (`settings.once`) or as a daemon until SIGTERM/SIGINT. `reload`
/// re-reads the configuration on SIGHUP.
pub async fn run(
    mut settings: Settings,
    reload: impl Fn() -> Result<Settings, ConfigError>,
) -> Exit {
    fewer_malloc_arenas();
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return Exit::Failed;
        }
    };
    let mut held = match take_lock(&settings).await {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    // Declared after `held`, so dropped before it: the socket goes while the lock is held.
    let mut control = match listen(&settings, &held) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    if let Err(e) = recover(&settings).await {
        tracing::error!("{e:#}");
        return Exit::Failed;
    }
    let mut source = match Source::new(&settings).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e:#}");
            return Exit::Failed;
        }
    };

    if settings.once {
        let member = settings
            .fleet
            .as_ref()
            .map(|f| Member::new(f, &settings.directory, None));
        if let Some(member) = &member
            && let Err(exit) = join(member).await
        {
            return exit;
        }
        let (result, _) = guarded_check(&settings, &source, member.as_ref(), &mut signals).await;
        let exit = report(&settings, &result);
        if let Some(member) = &member {
            member.leave().await;
        }
        return exit;
    }

    let telemetry = match Telemetry::start(&settings).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{e:#}");
            return Exit::Failed;
        }
    };
    tracing::info!(
        "repo-deploy {} watching {} on schedule \"{}\" (lock {})",
        env!("CARGO_PKG_VERSION"),
        settings.remote_display,
        settings.schedule.as_str(),
        held.path().display()
    );
    log_splay(&settings);
    let mut fleet = Membership::start(&settings, &telemetry);
    if let Some(member) = fleet.member()
        && let Err(exit) = join(member).await
    {
        fleet.stop().await;
        return exit;
    }
    let mut check_now = true;
    // `fleet notify`: a check at this time (now plus a random part of `splay`).
    let mut notified: Option<tokio::time::Instant> = None;
    // Whether the last check met a halted version, or failed a hook and so halted it: a
    // resume then wakes this host (the one that failed may be the version's canary, whom
    // the others wait for).
    let mut last_halted = false;
    loop {
        if check_now {
            notified = None;
            let (result, deferred) = telemetry
                .observe(guarded_check(
                    &settings,
                    &source,
                    fleet.member(),
                    &mut signals,
                ))
                .await;
            report(&settings, &result);
            telemetry.checked(&result, &settings);
            release_free_memory();
            last_halted = matches!(
                result,
                Err(CycleError::Halted { .. } | CycleError::RolledBack { .. })
            );
            if deferred.stop {
                break;
            }
            if deferred.reload {
                reload_with(
                    &telemetry,
                    &mut settings,
                    &mut source,
                    &mut held,
                    &mut control,
                    &reload,
                )
                .await;
                fleet.restart(&settings, &telemetry).await;
            }
            check_now = deferred.check_now;
            if check_now {
                continue;
            }
        }
        let mut wait = next_wait(&settings);
        if let Some(at) = notified {
            let until = at.saturating_duration_since(tokio::time::Instant::now());
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        tokio::select! {
            () = sleep_or_forever(wait) => check_now = true,
            Some(wake) = fleet.wakes.recv() => match wake {
                Wake::Notify => {
                    let delay = random_part(settings.splay);
                    tracing::info!("fleet notify: checking in {:.1}s", delay.as_secs_f64());
                    notified = Some(tokio::time::Instant::now() + delay);
                }
                // A halt of the live version (on-halt = revert: go back now), or a resume
                // of the version the last check refused (take it, after the splay).
                Wake::Halts => {
                    if fleet.live_is_halted(&settings).await {
                        check_now = true;
                    } else if last_halted {
                        notified = Some(tokio::time::Instant::now() + random_part(settings.splay));
                    }
                }
            },
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => {
                reload_with(&telemetry, &mut settings, &mut source, &mut held, &mut control, &reload).await;
                fleet.restart(&settings, &telemetry).await;
            }
            _ = signals.usr1.recv() => {
                tracing::info!("SIGUSR1: checking now");
                check_now = true;
            }
            () = telemetry.triggered() => check_now = true,
            // `repo-deploy rollback` through the control socket; one that arrived during a
            // check waited in the queue until here.
            Some(incoming) = next_request(&mut control) => {
                let deferred = serve(&settings, incoming, &mut signals).await;
                if deferred.stop {
                    break;
                }
                if deferred.reload {
                    reload_with(&telemetry, &mut settings, &mut source, &mut held, &mut control, &reload).await;
                    fleet.restart(&settings, &telemetry).await;
                }
                check_now = deferred.check_now;
            }
        }
    }
    fleet.stop().await;
    telemetry.stopping();
    tracing::info!("stopped");
    Exit::Ok
}

/// The daemon binds the control socket (replacing one a killed daemon left); a `-f` run,
/// which takes no requests, only removes such a leftover. Both hold the lock.
fn listen(settings: &Settings, held: &DeployLock) -> Result<Option<ControlSocket>, Exit> {
    if settings.once {
        if let Err(e) = handover::sweep(&settings.directory) {
            tracing::warn!(
                "cannot remove a control socket left in {}: {e}",
                settings.directory.display()
            );
        }
        return Ok(None);
    }
    match ControlSocket::bind(&settings.directory, held) {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            tracing::error!(
                "cannot listen on {} (for `repo-deploy rollback`): {e}; check the permissions of {}",
                handover::socket_path(&settings.directory).display(),
                settings.directory.display()
            );
            Err(Exit::Failed)
        }
    }
}

/// The next queued request; never, without a socket.
async fn next_request(control: &mut Option<ControlSocket>) -> Option<Incoming> {
    match control {
        Some(c) => c.next().await,
        None => None,
    }
}

/// Run a requested rollback as a check is run (signals heard; a stop waits for its end) and
/// answer it. A request whose requester has left is dropped unrun.
async fn serve(settings: &Settings, incoming: Incoming, signals: &mut Signals) -> Deferred {
    let mut deferred = Deferred::default();
    let to = incoming.request.rollback.to.clone();
    let what = to
        .as_deref()
        .map(|t| format!(" to {t}"))
        .unwrap_or_default();
    if incoming.is_withdrawn() {
        tracing::warn!(
            "rollback{what} requested, but the requester left before it started: not rolling back"
        );
        return deferred;
    }
    tracing::info!("serving the rollback{what} requested through the control socket");
    // A rollback, once started, runs to its end: the token is never cancelled.
    let never = CancellationToken::new();
    let rollback = crate::commands::rollback_now(settings, to.as_deref());
    let (exit, message) = with_signals(rollback, signals, &never, &mut deferred).await;
    if exit == Exit::Ok {
        tracing::info!("{message}");
    } else {
        tracing::error!("{message}");
    }
    incoming.answer(Answer::new(exit, message));
    deferred
}

/// `cycle::recover` (sweeps and removals) on the blocking pool.
async fn recover(settings: &Settings) -> anyhow::Result<()> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || cycle::recover(&settings))
        .await
        .map_err(|e| anyhow!("recovery panicked: {e}"))?
}

/// Time until the schedule's next slot after now, plus this host's splay (`None`: it never
/// fires again).
fn next_wait(settings: &Settings) -> Option<Duration> {
    let now = Local::now();
    let next = settings.schedule.next_after(&now)?;
    Some((next - now).to_std().unwrap_or(Duration::ZERO) + splay(settings))
}

/// This host's delay after each scheduled time: a part of `splay` that depends only on the
/// host name and the remote, so it is the same at every start and differs across a fleet.
fn splay(settings: &Settings) -> Duration {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    schedule::splay(
        settings.splay,
        &format!("{host}\n{}", settings.remote_display),
    )
}

fn log_splay(settings: &Settings) {
    if settings.splay.is_zero() {
        return;
    }
    let delay = splay(settings);
    tracing::info!(
        "splay: scheduled checks run {:.1}s after their time (this host's share of splay = {}s)",
        delay.as_secs_f64(),
        settings.splay.as_secs_f64()
    );
    if let Some(period) = settings.schedule.period_after(&Local::now())
        && delay >= period
    {
        tracing::warn!(
            "splay: the delay is longer than the schedule's period ({}s): some scheduled times will be skipped",
            period.as_secs_f64()
        );
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Run one check while listening to signals: a stop cancels it (the cycle decides what
/// that means at its current step); a reload or a check-now waits for it to end. In fleet
/// mode a host whose live version is halted with `on-halt = revert` then goes back, and the
/// check's result is published to the group.
async fn guarded_check(
    settings: &Settings,
    source: &Source,
    member: Option<&Member>,
    signals: &mut Signals,
) -> (Result<Outcome, CycleError>, Deferred) {
    let cancel = CancellationToken::new();
    let mut deferred = Deferred::default();
    let work = async {
        let result = cycle::check(settings, source, member, &cancel).await;
        if let Some(member) = member {
            after_check(settings, member, &result, &cancel).await;
        }
        result
    };
    let result = with_signals(work, signals, &cancel, &mut deferred).await;
    (result, deferred)
}

/// Fleet mode, after a check: go back from a halted live version (`on-halt = revert`), then
/// publish the result, the live version and the phase.
async fn after_check(
    settings: &Settings,
    member: &Member,
    result: &Result<Outcome, CycleError>,
    cancel: &CancellationToken,
) {
    if !matches!(result, Err(CycleError::Interrupted)) {
        match crate::commands::revert_if_halted(settings, member, cancel).await {
            Some(Ok(name)) => tracing::warn!("went back to {name}: the live version was halted"),
            Some(Err(e)) => tracing::error!("cannot go back from the halted version: {e}"),
            None => {}
        }
    }
    let live = live_version(settings);
    let live_halted = match &live {
        Some(v) => matches!(member.halted(v).await, Ok(Some(_))),
        None => false,
    };
    let halted = live_halted
        || matches!(
            result,
            Err(CycleError::Halted { .. } | CycleError::RolledBack { .. })
        );
    member.checked(live, result_label(result), halted).await;
}

/// The live version as the state records it.
fn live_version(settings: &Settings) -> Option<String> {
    crate::commands::releases(settings)
        .ok()?
        .into_iter()
        .find(|r| r.live)
        .map(|r| r.version)
        .filter(|v| !v.is_empty())
}

/// Fleet mode, at start: join the group. Wrong settings or credentials stop the agent (exit
/// 2); an unreachable etcd does not (rule 5: nothing new is deployed until it is back).
async fn join(member: &Member) -> Result<(), Exit> {
    match member.fleet().await {
        Ok(_) => Ok(()),
        Err(e) if e.is_configuration() => {
            tracing::error!("{e}");
            Err(Exit::Usage)
        }
        Err(e) => {
            tracing::error!("{e}; nothing new is deployed until etcd answers");
            Ok(())
        }
    }
}

/// A random part of `splay` (fleet notify: the group must not hit the origin at once).
fn random_part(splay: Duration) -> Duration {
    splay.mul_f64(rand::random::<f64>())
}

/// The daemon's membership of its fleet: the member, its watcher task, and the wake-ups the
/// watcher sends (`fleet notify`, halts and resumes).
struct Membership {
    member: Option<Arc<Member>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    wakes: tokio::sync::mpsc::Receiver<Wake>,
}

impl Membership {
    fn start(settings: &Settings, telemetry: &Telemetry) -> Membership {
        let (tx, wakes) = tokio::sync::mpsc::channel(8);
        let Some(fleet) = &settings.fleet else {
            telemetry.set_fleet(None);
            return Membership {
                member: None,
                watcher: None,
                wakes,
            };
        };
        let member = Arc::new(Member::new(
            fleet,
            &settings.directory,
            Some(telemetry.sink()),
        ));
        telemetry.set_fleet(Some(fleet_source(member.clone())));
        let watching = member.clone();
        let watcher = tokio::spawn(async move {
            watching
                .watch(move |wake| {
                    // A full queue already holds a wake-up of the same effect.
                    let _ = tx.try_send(wake);
                })
                .await;
        });
        Membership {
            member: Some(member),
            watcher: Some(watcher),
            wakes,
        }
    }

    fn member(&self) -> Option<&Member> {
        self.member.as_deref()
    }

    /// After SIGHUP: leave with the old settings, join with the new ones.
    async fn restart(&mut self, settings: &Settings, telemetry: &Telemetry) {
        self.stop().await;
        *self = Membership::start(settings, telemetry);
    }

    async fn stop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        if let Some(member) = self.member.take() {
            member.leave().await;
        }
    }

    /// Whether the live version is halted (the watcher's copy: no request).
    async fn live_is_halted(&self, settings: &Settings) -> bool {
        match (self.member(), live_version(settings)) {
            (Some(member), Some(live)) => matches!(member.halted(&live).await, Ok(Some(_))),
            _ => false,
        }
    }
}

/// How the status page reads the group: the member's connection, each version's canaries
/// from its rollout. Called only while someone has the page open.
fn fleet_source(member: Arc<Member>) -> crate::page::FleetSource {
    Arc::new(move || {
        let member = member.clone();
        Box::pin(async move {
            let fleet = member.fleet().await.map_err(|e| e.to_string())?;
            let status = fleet.status().await.map_err(|e| e.to_string())?;
            let rolling_out = fleet.rolling_out().await.map_err(|e| e.to_string())?;
            let mut canaries = std::collections::HashMap::new();
            let live = status.hosts.iter().filter_map(|h| h.version.as_ref());
            for version in live.chain(&rolling_out) {
                if !canaries.contains_key(version) {
                    let rollout = fleet.rollout(version).await.map_err(|e| e.to_string())?;
                    canaries.insert(
                        version.clone(),
                        rollout.map(|r| r.canaries).unwrap_or_default(),
                    );
                }
            }
            Ok(crate::page::FleetView::new(status, &rolling_out, |v| {
                canaries.get(v).cloned().unwrap_or_default()
            }))
        })
    })
}

async fn with_signals<T>(
    work: impl Future<Output = T>,
    signals: &mut Signals,
    cancel: &CancellationToken,
    deferred: &mut Deferred,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = signals.term.recv() => {
                tracing::info!("SIGTERM: stopping after the current step");
                deferred.stop = true;
                cancel.cancel();
            }
            _ = signals.int.recv() => {
                tracing::info!("SIGINT: stopping after the current step");
                deferred.stop = true;
                cancel.cancel();
            }
            _ = signals.hup.recv() => deferred.reload = true,
            _ = signals.usr1.recv() => deferred.check_now = true,
        }
    }
}

/// Log a check's result, record it for `status`, and map it to an exit status.
fn report(settings: &Settings, result: &Result<Outcome, CycleError>) -> Exit {
    let dir = &settings.directory;
    match result {
        Ok(Outcome::Unchanged { .. }) => LastCheck::record(dir, "unchanged", None),
        Ok(Outcome::Deployed { .. }) => LastCheck::record(dir, "deployed", None),
        Err(e) => {
            tracing::error!("check failed: {e}");
            LastCheck::record(
                dir,
                result_label(result),
                Some(crate::logging::mask(&e.to_string())),
            );
        }
    }
    result.as_ref().map_or_else(CycleError::exit, |_| Exit::Ok)
}

/// A check's result in one word, as `status` and the fleet show it.
fn result_label(result: &Result<Outcome, CycleError>) -> &'static str {
    match result {
        Ok(Outcome::Unchanged { .. }) => "unchanged",
        Ok(Outcome::Deployed { .. }) => "deployed",
        Err(CycleError::Failed(_)) => "failed",
        Err(CycleError::Misconfigured(_)) => "misconfigured",
        Err(CycleError::Blocked { .. }) => "blocked",
        Err(CycleError::RolledBack { .. }) => "rolled_back",
        Err(CycleError::Interrupted) => "interrupted",
        Err(CycleError::Halted { .. }) => "halted",
        Err(CycleError::Refused { .. }) => "refused",
    }
}

/// SIGHUP, told to systemd (RELOADING … READY) and to telemetry (which applies the new
/// `listen`, token and health settings).
async fn reload_with(
    telemetry: &Telemetry,
    settings: &mut Settings,
    source: &mut Source,
    held: &mut DeployLock,
    control: &mut Option<ControlSocket>,
    reload: &impl Fn() -> Result<Settings, ConfigError>,
) {
    telemetry.reloading();
    reconfigure(settings, source, held, control, reload).await;
    telemetry.reloaded(settings).await;
}

/// SIGHUP: re-read the configuration; keep the old one if the new one is broken. A new
/// directory moves the lock and the control socket there.
async fn reconfigure(
    settings: &mut Settings,
    source: &mut Source,
    held: &mut DeployLock,
    control: &mut Option<ControlSocket>,
    reload: &impl Fn() -> Result<Settings, ConfigError>,
) {
    let mut fresh = match reload() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded, keeping the old one: {e}");
            return;
        }
    };
    fresh.once = false;
    for secret in fresh.secrets() {
        crate::logging::register_secret(&secret);
    }
    let new_source = match Source::new(&fresh).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded, keeping the old one: {e:#}");
            return;
        }
    };
    if fresh.directory != settings.directory {
        let lock = match lock::acquire_async(&fresh.directory).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("SIGHUP: configuration not reloaded, keeping the old one: {e}");
                return;
            }
        };
        let socket = match ControlSocket::bind(&fresh.directory, &lock) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "SIGHUP: configuration not reloaded, keeping the old one: cannot listen on {}: {e}",
                    handover::socket_path(&fresh.directory).display()
                );
                return;
            }
        };
        // The old socket is removed while the old lock is still held.
        *control = Some(socket);
        *held = lock;
        if let Err(e) = recover(&fresh).await {
            tracing::warn!("{e:#}");
        }
    }
    *settings = fresh;
    *source = new_source;
    tracing::info!(
        "SIGHUP: configuration reloaded: {} on schedule \"{}\"",
        settings.remote_display,
        settings.schedule.as_str()
    );
}
