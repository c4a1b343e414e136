//! Plain events that the check emits from deep inside (a download finished, a hook ended), for
//! whoever observes the check: today the daemon's metrics, tomorrow a status page.
//!
//! Why a leaf module: the cycle and the hooks must not know telemetry (telemetry reads the
//! cycle's results, so knowing it back would make an import cycle), just as ripgrep's searcher
//! pushes into a caller's `Sink` and never knows the printer. The observer is set for the
//! length of one check with [`observe`]; [`emit`] hands each event to it, and does nothing
//! outside an observed check (`-f`, `rollback`, unit tests).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Something that happened during a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The remote had a new version and it is in the cache: how long that took, and how many
    /// bytes it brought (`None` for a directory remote, which counts none).
    Fetched { took: Duration, bytes: Option<u64> },
    /// One hook ended.
    HookRan {
        hook: &'a Path,
        phase: HookPhase,
        outcome: HookOutcome,
    },
    /// Fleet mode: etcd was reached (`true`) or could not be (`false`).
    FleetConnected(bool),
    /// Fleet mode: how long this host waited for a place (canaries and the limit).
    PlaceWaited { took: Duration },
    /// Fleet mode: a check met a halted version, or this host halted one.
    HaltSeen,
    /// A new version was refused as untrusted, for this reason (`Refusal::reason`).
    Refused { reason: &'static str },
}

/// Which hook chain a hook belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPhase {
    Pre,
    Post,
    /// The health hooks of a fleet bake.
    Health,
}

/// How a hook ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOutcome {
    Success,
    /// Exited non-zero or was killed by a signal.
    Failed,
    /// Outlived `hook-timeout` and was killed.
    TimedOut,
    /// Stopped because the agent is stopping.
    Cancelled,
    /// Could not be listed or started.
    Error,
}

/// Receives the events of the checks it observes.
pub trait Sink: Send + Sync {
    /// One event; called on the check's task, so it must be quick and never block.
    fn event(&self, event: &Event<'_>);
}

tokio::task_local! {
    /// The observer of the check running on this task, set by [`observe`].
    static SINK: Arc<dyn Sink>;
}

/// Run `check` with its events going to `sink`.
pub async fn observe<T>(sink: Arc<dyn Sink>, check: impl Future<Output = T>) -> T {
    SINK.scope(sink, check).await
}

/// Hand `event` to the observer of the running check, if there is one.
pub fn emit(event: Event<'_>) {
    let _ = SINK.try_with(|sink| sink.event(&event));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Record(Mutex<Vec<String>>);

    impl Sink for Record {
        fn event(&self, event: &Event<'_>) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(format!("{event:?}"));
            }
        }
    }

    #[tokio::test]
    async fn events_reach_the_observer_of_their_check_only() {
        let fetched = Event::Fetched {
            took: Duration::from_millis(5),
            bytes: Some(10),
        };
        emit(fetched); // Outside any check: nowhere, and no panic.
        let record = Arc::new(Record::default());
        observe(record.clone(), async {
            emit(fetched);
            emit(Event::HookRan {
                hook: Path::new("/hooks/10-check"),
                phase: HookPhase::Pre,
                outcome: HookOutcome::Failed,
            });
        })
        .await;
        emit(fetched);
        let seen = record.0.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].starts_with("Fetched"), "{seen:?}");
        assert!(seen[1].contains("10-check") && seen[1].contains("Failed"));
    }
}
