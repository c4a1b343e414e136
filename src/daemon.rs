//! The agent's life: the deploy lock, start-up recovery, signals, and the schedule loop that
//! runs one check at a time. With `-f` it runs one check and returns its exit status.
//!
//! Signals: SIGTERM and SIGINT cancel a check that has not switched yet (it cleans up) and
//! let one that has switched finish, then stop the agent; SIGHUP re-reads the configuration
//! (a broken one is logged and the old one kept); SIGUSR1 checks now. A check that overruns
//! its slot skips the slots it missed: the next time is computed after it ends.

use std::future::Future;
use std::time::Duration;

use chrono::Local;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::cycle::{self, CycleError, Outcome};
use crate::exit::Exit;
use crate::lock::{self, DeployLock, LockError};
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
    usr2: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// What arrived while a check ran.
#[derive(Default)]
struct Pending {
    stop: bool,
    reload: bool,
    check_now: bool,
}

fn take_lock(settings: &Settings) -> Result<DeployLock, Exit> {
    lock::acquire(&settings.directory).map_err(|e| {
        tracing::error!("{e}");
        match e {
            LockError::Held(_) => Exit::Locked,
            LockError::Io(..) => Exit::Failed,
        }
    })
}

/// Run the agent: once (`settings.once`) or as a daemon until SIGTERM/SIGINT. `reload`
/// re-reads the configuration on SIGHUP.
pub async fn run(
    mut settings: Settings,
    reload: impl Fn() -> Result<Settings, ConfigError>,
) -> Exit {
    let mut held = match take_lock(&settings) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return Exit::Failed;
        }
    };
    if let Err(e) = cycle::recover(&settings) {
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
        let (result, _) = guarded_check(&settings, &source, &mut signals).await;
        return report(&settings, &result);
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
    let mut check_now = true;
    loop {
        if check_now {
            let (result, pending) = telemetry
                .observe(guarded_check(&settings, &source, &mut signals))
                .await;
            report(&settings, &result);
            telemetry.checked(&result, &settings);
            if pending.stop {
                break;
            }
            if pending.reload {
                reload_with(&telemetry, &mut settings, &mut source, &mut held, &reload).await;
            }
            check_now = pending.check_now;
            if check_now {
                continue;
            }
        }
        let wait = next_wait(&settings);
        tokio::select! {
            () = sleep_or_forever(wait) => check_now = true,
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => reload_with(&telemetry, &mut settings, &mut source, &mut held, &reload).await,
            _ = signals.usr1.recv() => {
                tracing::info!("SIGUSR1: checking now");
                check_now = true;
            }
            // `repo-deploy rollback` asks through a request file (we hold the lock); one that
            // arrives during a check waits for it, as the signal stays pending until here.
            _ = signals.usr2.recv() => crate::commands::serve_rollback_request(&settings).await,
            () = telemetry.triggered() => check_now = true,
        }
    }
    telemetry.stopping();
    tracing::info!("stopped");
    Exit::Ok
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
/// that means at its current step); a reload or a check-now waits for it to end.
async fn guarded_check(
    settings: &Settings,
    source: &Source,
    signals: &mut Signals,
) -> (Result<Outcome, CycleError>, Pending) {
    let cancel = CancellationToken::new();
    let mut pending = Pending::default();
    let check = cycle::check(settings, source, &cancel);
    let result = with_signals(check, signals, &cancel, &mut pending).await;
    (result, pending)
}

async fn with_signals<T>(
    work: impl Future<Output = T>,
    signals: &mut Signals,
    cancel: &CancellationToken,
    pending: &mut Pending,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = signals.term.recv() => {
                tracing::info!("SIGTERM: stopping after the current step");
                pending.stop = true;
                cancel.cancel();
            }
            _ = signals.int.recv() => {
                tracing::info!("SIGINT: stopping after the current step");
                pending.stop = true;
                cancel.cancel();
            }
            _ = signals.hup.recv() => pending.reload = true,
            _ = signals.usr1.recv() => pending.check_now = true,
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
            let result = match e {
                CycleError::Failed(_) => "failed",
                CycleError::Blocked { .. } => "blocked",
                CycleError::RolledBack { .. } => "rolled_back",
                CycleError::Interrupted => "interrupted",
            };
            LastCheck::record(dir, result, Some(crate::logging::mask(&e.to_string())));
        }
    }
    result.as_ref().map_or_else(CycleError::exit, |_| Exit::Ok)
}

/// SIGHUP, told to systemd (RELOADING … READY) and to telemetry (which applies the new
/// `listen`, token and health settings).
async fn reload_with(
    telemetry: &Telemetry,
    settings: &mut Settings,
    source: &mut Source,
    held: &mut DeployLock,
    reload: &impl Fn() -> Result<Settings, ConfigError>,
) {
    telemetry.reloading();
    reconfigure(settings, source, held, reload).await;
    telemetry.reloaded(settings).await;
}

/// SIGHUP: re-read the configuration; keep the old one if the new one is broken.
async fn reconfigure(
    settings: &mut Settings,
    source: &mut Source,
    held: &mut DeployLock,
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
        match lock::acquire(&fresh.directory) {
            Ok(l) => *held = l,
            Err(e) => {
                tracing::error!("SIGHUP: configuration not reloaded, keeping the old one: {e}");
                return;
            }
        }
        if let Err(e) = cycle::recover(&fresh) {
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
