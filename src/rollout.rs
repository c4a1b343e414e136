//! This host as a member of its fleet (SPEC § Fleet rollouts), between the check cycle and
//! the etcd layer (`fleet/`).
//!
//! A [`Member`] lives as long as the agent: it keeps one connection (lease and presence) across
//! checks, connects again after etcd was unreachable or the lease was lost, publishes this
//! host's phase at every step, and hands the cycle the few calls a rollout needs: is this
//! version halted, wait for a place (giving the request back when the wait ends without one),
//! halt a version. The daemon's watcher ([`Member::watch`]) keeps a copy of the halted
//! versions and wakes the daemon on `fleet notify` and on every halt or resume, so an idle
//! host sends etcd nothing but its lease keep-alives.
//!
//! Invariants: nothing here switches releases or runs hooks; a failure to publish a status is
//! logged and never fails a check; every error that could let a host deploy unchecked (the
//! halt cannot be read, the place cannot be held) is returned, so the cycle deploys nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::FleetSettings;
use crate::events::{Event, Sink};
use crate::fleet::{Fleet, FleetError, Halt, HostStatus, Place};

/// What this host is doing, as published in `hosts/{host}` (rule 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing to do, or the live version is the remote's.
    Idle,
    /// A new version is unpacked and waits for a place (canaries, `max-parallel`).
    Waiting,
    /// Holding a place: pre-update hooks, switch, post-update hooks.
    Updating,
    /// Holding a place after the post-update hooks: the health hooks run.
    Baking,
    /// The version the remote offers (or the live one) is halted.
    Halted,
}

impl Phase {
    /// The name in `fleet status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Waiting => "waiting",
            Phase::Updating => "updating",
            Phase::Baking => "baking",
            Phase::Halted => "halted",
        }
    }
}

/// Why no place was held.
#[derive(Debug)]
pub enum NoPlace {
    /// etcd failed, the lease was lost, or a setting is wrong.
    Fleet(FleetError),
    /// The version was halted while this host waited.
    Halted(Halt),
    /// The agent is stopping.
    Cancelled,
}

/// The file, beside the state, where `status` reads this host's last published status.
pub fn status_path(dir: &Path) -> PathBuf {
    dir.join("fleet-status.json")
}

/// This host's status as the agent last published it, if fleet mode ran here.
pub fn load_status(dir: &Path) -> Option<HostStatus> {
    let bytes = std::fs::read(status_path(dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// This host in its group.
pub struct Member {
    settings: FleetSettings,
    /// The deploy directory, where the status is written for `status`.
    dir: PathBuf,
    connection: tokio::sync::Mutex<Option<Arc<Fleet>>>,
    /// When the last attempt to connect failed, and why: further attempts within a second
    /// fail at once with that error, so a check with etcd away is not slowed by one retry
    /// budget per step (the watcher keeps trying in the background).
    last_failure: Mutex<Option<(Instant, String)>>,
    status: Mutex<HostStatus>,
    /// Halted versions as the watcher last saw them; `None` while no watch runs.
    halts: Mutex<Option<HashMap<String, Halt>>>,
    sink: Option<Arc<dyn Sink>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("fleet", &self.settings.options.fleet)
            .field("host", &self.settings.options.host)
            .finish_non_exhaustive()
    }
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Member {
    /// A member that connects at its first use; `sink` receives the fleet metrics' events.
    pub fn new(settings: &FleetSettings, dir: &Path, sink: Option<Arc<dyn Sink>>) -> Member {
        Member {
            settings: settings.clone(),
            dir: dir.to_path_buf(),
            connection: tokio::sync::Mutex::new(None),
            last_failure: Mutex::new(None),
            status: Mutex::new(HostStatus {
                host: settings.options.host.clone(),
                version: None,
                phase: Phase::Idle.as_str().into(),
                last_check: None,
                last_result: None,
            }),
            halts: Mutex::new(None),
            sink,
        }
    }

    /// The group's name (`DEPLOY_FLEET`).
    pub fn fleet_name(&self) -> &str {
        &self.settings.options.fleet
    }

    fn emit(&self, event: Event<'_>) {
        if let Some(sink) = &self.sink {
            sink.event(&event);
        }
    }

    /// The connection, made (lease granted, presence published) if there is none or its
    /// lease was lost.
    pub async fn fleet(&self) -> Result<Arc<Fleet>, FleetError> {
        let mut connection = self.connection.lock().await;
        if let Some(fleet) = connection.as_ref() {
            if fleet.check_lease().is_ok() {
                return Ok(fleet.clone());
            }
            tracing::warn!(
                "the etcd lease of {} was lost: connecting again",
                self.settings.options.host
            );
        }
        *connection = None;
        if let Some((at, why)) = guard(&self.last_failure).as_ref()
            && at.elapsed() < Duration::from_secs(1)
        {
            return Err(FleetError::Recent(why.clone()));
        }
        let joined = async {
            let fleet = Arc::new(Fleet::connect(&self.settings.options).await?);
            let status = guard(&self.status).clone();
            fleet.publish_status(&status).await?;
            fleet.register().await?;
            Ok::<_, FleetError>(fleet)
        };
        let fleet = match joined.await {
            Ok(f) => f,
            Err(e) => {
                self.emit(Event::FleetConnected(false));
                *guard(&self.last_failure) = Some((Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        *guard(&self.last_failure) = None;
        tracing::info!(
            "joined fleet {} as {} (lease {} s)",
            self.settings.options.fleet,
            self.settings.options.host,
            self.settings.options.lease_secs
        );
        self.emit(Event::FleetConnected(true));
        *connection = Some(fleet.clone());
        Ok(fleet)
    }

    /// Publish `phase` (and the live version when given); a failure is logged only.
    pub async fn set_phase(&self, phase: Phase, live: Option<&str>) {
        let status = {
            let mut status = guard(&self.status);
            status.phase = phase.as_str().into();
            if let Some(v) = live {
                status.version = Some(v.to_owned());
            }
            status.clone()
        };
        self.publish(status).await;
    }

    /// A check ended: record its result and the live version, back to `idle` unless halted.
    pub async fn checked(&self, live: Option<String>, result: &str, halted: bool) {
        let status = {
            let mut status = guard(&self.status);
            status.version = live;
            status.last_check =
                Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            status.last_result = Some(result.to_owned());
            status.phase = if halted { Phase::Halted } else { Phase::Idle }
                .as_str()
                .into();
            status.clone()
        };
        self.publish(status).await;
    }

    async fn publish(&self, status: HostStatus) {
        if let Ok(json) = serde_json::to_vec_pretty(&status)
            && let Err(e) = crate::fsutil::write_atomic(&status_path(&self.dir), &json)
        {
            tracing::debug!("cannot record the fleet status for `status`: {e}");
        }
        let fleet = match self.fleet().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot publish this host's fleet status: {e}");
                return;
            }
        };
        if let Err(e) = fleet.publish_status(&status).await {
            tracing::warn!("cannot publish this host's fleet status: {e}");
        }
    }

    /// The halt of `version`, if any: from the watcher's copy when one runs, else asked.
    pub async fn halted(&self, version: &str) -> Result<Option<Halt>, FleetError> {
        if let Some(known) = guard(&self.halts).as_ref() {
            return Ok(known.get(version).cloned());
        }
        self.fleet().await?.is_halted(version).await
    }

    /// Wait for a place for `version`: canaries first, then `max-parallel`. Ends early when
    /// the version is halted or the agent stops; then the request is withdrawn.
    pub async fn place(&self, version: &str, cancel: &CancellationToken) -> Result<Place, NoPlace> {
        self.wait_for_place(version, cancel, false).await
    }

    /// Wait for a place to go back from the halted `version` (`on-halt = revert`).
    pub async fn revert_place(
        &self,
        version: &str,
        cancel: &CancellationToken,
    ) -> Result<Place, NoPlace> {
        self.wait_for_place(version, cancel, true).await
    }

    async fn wait_for_place(
        &self,
        version: &str,
        cancel: &CancellationToken,
        revert: bool,
    ) -> Result<Place, NoPlace> {
        let fleet = self.fleet().await.map_err(NoPlace::Fleet)?;
        self.set_phase(Phase::Waiting, None).await;
        let started = Instant::now();
        let wanted = &self.settings.rollout;
        let result = if revert {
            tokio::select! {
                place = fleet.acquire_revert_place(version, wanted) => place.map_err(NoPlace::Fleet),
                () = cancel.cancelled() => Err(NoPlace::Cancelled),
            }
        } else {
            tokio::select! {
                place = fleet.acquire_place(version, wanted) => place.map_err(NoPlace::Fleet),
                halt = fleet.wait_halted(version) => Err(match halt {
                    Ok(h) => NoPlace::Halted(h),
                    Err(e) => NoPlace::Fleet(e),
                }),
                () = cancel.cancelled() => Err(NoPlace::Cancelled),
            }
        };
        self.emit(Event::PlaceWaited {
            took: started.elapsed(),
        });
        match &result {
            Ok(place) => tracing::info!(
                "holding a place for {version}{} after {:.1}s",
                if place.is_canary() { " (canary)" } else { "" },
                started.elapsed().as_secs_f64()
            ),
            Err(_) => {
                // The wait was cut short: the put may have happened. A lost lease took it anyway.
                if let Err(e) = fleet.withdraw_place(version).await {
                    tracing::warn!("cannot withdraw the place request for {version}: {e}");
                }
                self.set_phase(Phase::Idle, None).await;
            }
        }
        if let Err(NoPlace::Halted(_)) = &result {
            self.emit(Event::HaltSeen);
        }
        result
    }

    /// Halt `version` for the whole group with `reason` (the first halt's story stays).
    /// A failure is logged: the host already rolled back, and its place expires with it.
    pub async fn halt(&self, version: &str, reason: &str) {
        self.emit(Event::HaltSeen);
        let reason = crate::logging::mask(reason);
        let result = match self.fleet().await {
            Ok(fleet) => fleet.halt(version, &reason).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => {
                tracing::error!("halted {version} for fleet {}: {reason}", self.fleet_name())
            }
            Ok(false) => tracing::info!("{version} was already halted for the fleet"),
            Err(e) => tracing::error!(
                "cannot halt {version} for the fleet ({e}): other hosts may still try it; run `repo-deploy fleet halt {version}`"
            ),
        }
    }

    /// Count a check that met a halted version.
    pub fn saw_halt(&self) {
        self.emit(Event::HaltSeen);
    }

    /// Give back `place`: after a canary's healthy bake, record it first. Failures are
    /// logged (the place expires with the lease anyway).
    pub async fn release(&self, place: Place, baked: bool) {
        let version = place.version().to_owned();
        if baked && let Err(e) = place.record_baked().await {
            tracing::warn!("cannot record the bake of {version}: {e}");
        }
        if let Err(e) = place.release().await {
            tracing::warn!(
                "cannot release the place for {version} (it expires with the lease): {e}"
            );
        }
    }

    /// The rollout settings of this host's files (used when it is first to ask).
    pub fn on_halt_revert(&self) -> bool {
        self.settings.rollout.on_halt == "revert"
    }

    /// `on-halt` of the rollout of `version` as stored by its first host, else this host's.
    pub async fn reverts(&self, version: &str) -> Result<bool, FleetError> {
        let fleet = self.fleet().await?;
        Ok(fleet
            .rollout(version)
            .await?
            .map_or(self.on_halt_revert(), |r| r.settings.on_halt == "revert"))
    }

    /// The group's status (`fleet.json`, the status page).
    pub async fn group(&self) -> Result<crate::fleet::FleetStatus, FleetError> {
        self.fleet().await?.status().await
    }

    /// Keep the copy of the halted versions and call `wake` on every `fleet notify` and
    /// every halt or resume; reconnects with backoff while etcd is away. Runs until dropped.
    pub async fn watch(&self, wake: impl Fn(Wake)) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.watch_once(&wake).await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    *guard(&self.halts) = None;
                    tracing::warn!("fleet watch: {e}; retrying in {}s", backoff.as_secs());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn watch_once(&self, wake: &impl Fn(Wake)) -> Result<(), FleetError> {
        let fleet = self.fleet().await?;
        let mut notify = fleet.watch_notify().await?;
        let (halts, mut halt_watch) = fleet.watch_halts().await?;
        self.keep_halts(halts);
        loop {
            tokio::select! {
                n = notify.next() => {
                    n?;
                    wake(Wake::Notify);
                }
                h = halt_watch.next() => {
                    h?;
                    let (halts, watch) = fleet.watch_halts().await?;
                    halt_watch = watch;
                    self.keep_halts(halts);
                    wake(Wake::Halts);
                }
                lost = fleet.lease_lost() => return Err(lost),
            }
        }
    }

    fn keep_halts(&self, halts: Vec<Halt>) {
        let map = halts.into_iter().map(|h| (h.version.clone(), h)).collect();
        *guard(&self.halts) = Some(map);
    }

    /// Leave the group: revoke the lease, so the presence goes at once.
    pub async fn leave(&self) {
        if let Some(fleet) = self.connection.lock().await.take()
            && let Err(e) = fleet.leave().await
        {
            tracing::debug!("cannot revoke the etcd lease (it expires on its own): {e}");
        }
    }
}

/// Why the watcher woke the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// `fleet notify`: check now (after this host's splay).
    Notify,
    /// A version was halted or resumed: a host on it may have to go back.
    Halts,
}
