//! Progress bars for interactive runs: when `-f` runs on a terminal, the download and the
//! unpacking show a bar on standard error; otherwise (a daemon, cron, a pipe) nothing of the
//! kind is drawn and these calls cost one relaxed atomic load.
//!
//! A process-wide switch rather than a handle threaded through every source: progress is a
//! presentation concern, like logging, and the code that moves bytes only says "n more".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Turn bars on when standard error is a terminal. Call once, for `-f` runs.
pub fn enable_on_terminal() {
    if rustix::termios::isatty(std::io::stderr()) {
        ENABLED.store(true, Ordering::Relaxed);
    }
}

/// Whether bars are drawn.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Start a bar for `what` (`download`, `unpack`): `total` in `unit`s, if known.
pub fn start(what: &str, total: Option<u64>, bytes: bool) {
    if !enabled() {
        return;
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let template = match (total.is_some(), bytes) {
        (true, true) => "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        (true, false) => "{prefix:>8} [{bar:30}] {pos}/{len} files",
        (false, true) => "{prefix:>8} {bytes} {bytes_per_sec}",
        (false, false) => "{prefix:>8} {pos} files",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_string());
    if let Some(old) = BAR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .replace(bar)
    {
        old.finish_and_clear();
    }
}

/// Advance the current bar by `n`.
pub fn advance(n: u64) {
    if !enabled() {
        return;
    }
    if let Some(bar) = BAR.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
        bar.inc(n);
    }
}

/// Remove the current bar.
pub fn finish() {
    if !enabled() {
        return;
    }
    if let Some(bar) = BAR.lock().unwrap_or_else(PoisonError::into_inner).take() {
        bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn disabled_bars_are_no_ops() {
        assert!(!super::enabled(), "tests do not run on a terminal");
        super::start("download", Some(10), true);
        super::advance(5);
        super::finish();
        assert!(super::BAR.lock().expect("lock").is_none());
    }
}
