//! systemd's notification protocol (`Type=notify`), through the `sd-notify` crate: a few
//! lines of `KEY=value` in one datagram to `$NOTIFY_SOCKET`. The crate is tiny, has no
//! dependency beyond libc, and handles the abstract-namespace sockets systemd uses.
//!
//! What the daemon says: `READY=1` after the first check (whatever its result: a failing
//! remote must not fail the service's start), `STATUS=live <version>…` after every check,
//! `RELOADING=1` … `READY=1` around a SIGHUP, `STOPPING=1` on the way out, and `WATCHDOG=1`
//! at half the interval systemd asks for (`WatchdogSec=` → `$WATCHDOG_USEC`).
//!
//! Without `$NOTIFY_SOCKET` (not under systemd, or `-f`) every call is a no-op. A failed send
//! is logged at debug level and otherwise ignored: systemd's view is not worth a failed deploy.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify systemd: {e}");
    }
}

/// The first check has ended: the service is up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A one-line status for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// SIGHUP: re-reading the configuration (systemd ≥ 253 wants the monotonic time with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The reload is over (applied or refused): ready again.
pub fn reloaded() {
    send(&[NotifyState::Ready]);
}

/// On the way out.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Ping systemd's watchdog at half the interval it asked for, from a task of its own, so a
/// long check (a big download, a slow hook, each bounded by its own timeout) is not mistaken
/// for a hang, while a wedged runtime or a stopped process is. `None` without a watchdog.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let every = (interval / 2).max(Duration::from_millis(10));
    tracing::debug!("systemd watchdog: {:?}, pinging every {every:?}", interval);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    }))
}
