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
use crate::source::Source;

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
pub async fn run(mut settings: Settings, reload: impl Fn() -> Result<Settings, ConfigError>) -> Exit {
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
        return report(&result);
    }

    tracing::info!(
        "repo-deploy {} watching {} on schedule \"{}\" (lock {})",
        env!("CARGO_PKG_VERSION"),
        settings.remote_display,
        settings.schedule.as_str(),
        held.path().display()
    );
    let mut check_now = true;
    loop {
        if check_now {
            let (result, pending) = guarded_check(&settings, &source, &mut signals).await;
            report(&result);
            if pending.stop {
                break;
            }
            if pending.reload {
                reconfigure(&mut settings, &mut source, &mut held, &reload).await;
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
            _ = signals.hup.recv() => reconfigure(&mut settings, &mut source, &mut held, &reload).await,
            _ = signals.usr1.recv() => {
                tracing::info!("SIGUSR1: checking now");
                check_now = true;
            }
        }
    }
    tracing::info!("stopped");
    Exit::Ok
}

/// Time until the schedule's next slot after now (`None`: it never fires again).
fn next_wait(settings: &Settings) -> Option<Duration> {
    let now = Local::now();
    let next = settings.schedule.next_after(&now)?;
    Some((next - now).to_std().unwrap_or(Duration::ZERO))
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Run one check while listening to signals: a stop cancels it (the cycle decides what
/// that means at its current step); a reload or a check-now waits for it to end.
async fn guarded_check(settings: &Settings, source: &Source, signals: &mut Signals) -> (Result<Outcome, CycleError>, Pending) {
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

/// Log a check's result and map it to an exit status.
fn report(result: &Result<Outcome, CycleError>) -> Exit {
    match result {
        Ok(_) => Exit::Ok,
        Err(e) => {
            tracing::error!("check failed: {e}");
            e.exit()
        }
    }
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
    tracing::info!("SIGHUP: configuration reloaded: {} on schedule \"{}\"", settings.remote_display, settings.schedule.as_str());
}
