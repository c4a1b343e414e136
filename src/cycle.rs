//! ONE check, readable top to bottom:
//! probe/fetch → unpack → durable → pre-hooks → switch → post-hooks → (roll back) → prune.
//!
//! This module owns the order of the steps and the rollback rules; the modules it calls know
//! nothing of each other. Crash-safety invariants it keeps:
//! - Before the switch, every failure leaves `current` exactly as it was and removes what
//!   this check created (staging, release, download); a cancelled check does the same.
//! - A release's version is recorded in the state before it can become live, and the remote's
//!   validators only once it is live and its post-update hooks passed, so a blocked or
//!   reverted version is fetched and tried again at the next check.
//! - Once `current` has switched, the check runs to its end (hooks, rollback) even when
//!   cancelled: an activation is completed or undone, never left half-done.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::activate::{Activator, SwitchError, Switched};
use crate::config::Settings;
use crate::decide::{self, Decision};
use crate::events::Event;
use crate::exit::Exit;
use crate::fleet::Place;
use crate::hooks::{self, FleetEnv, HookEnv, HookError, Phase};
use crate::releases::Releases;
use crate::rollout::{Member, NoPlace};
use crate::source::{Fetched, SignedFetch, Source};
use crate::state::{PostHooksDue, Refused, ReleaseInfo, State};
use crate::trust::{Record, Signed, Trust};

/// What a successful check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The live version is the remote's.
    Unchanged { version: Option<String> },
    /// A new version is live.
    Deployed { version: String, release: PathBuf },
}

/// Why a check did not end with the remote's version live.
#[derive(Debug, Error)]
pub enum CycleError {
    /// The check or update failed; `current` is unchanged.
    /// Printed with its whole chain of causes, so it is no `source` (that would print twice).
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// A pre-update hook refused the new version; `current` is unchanged.
    #[error("update to {version} blocked by a pre-update hook: {hook}")]
    Blocked { version: String, hook: HookError },
    /// A post-update hook failed; the previous release is live again (or, on a first deploy,
    /// `current` was removed).
    #[error(
        "{} hook failed for {version}: {hook}; {restored}",
        if *health { "health" } else { "post-update" }
    )]
    RolledBack {
        version: String,
        hook: HookError,
        restored: String,
        /// A health hook of the fleet bake failed, not a post-update hook.
        health: bool,
    },
    /// Stopped by a signal before the switch; `current` is unchanged.
    #[error("interrupted before the switch; current is unchanged")]
    Interrupted,
    /// A setting or credential is wrong (fleet mode: etcd refused the password, `canary`
    /// larger than the group); `current` is unchanged.
    #[error("{0:#}")]
    Misconfigured(anyhow::Error),
    /// Signed releases: the new version was refused as untrusted; `current` is unchanged.
    /// Never halts the fleet: a tampered upload is the remote's fault, not the version's.
    #[error("refused {what}: {message}; current is unchanged")]
    Refused {
        what: String,
        reason: String,
        message: String,
    },
    /// Fleet mode: the version is halted for the group; `current` is unchanged.
    #[error(
        "version {version} is halted for the fleet (by {host}: {reason}); current is unchanged. Fix it and run `repo-deploy fleet resume {version}`, or publish a new version"
    )]
    Halted {
        version: String,
        host: String,
        reason: String,
    },
}

impl From<anyhow::Error> for CycleError {
    fn from(e: anyhow::Error) -> Self {
        CycleError::Failed(e)
    }
}

impl CycleError {
    /// The SPEC's exit status for this failure.
    pub fn exit(&self) -> Exit {
        match self {
            CycleError::Failed(_) | CycleError::Interrupted | CycleError::Halted { .. } => {
                Exit::Failed
            }
            CycleError::Blocked { .. } => Exit::Blocked,
            CycleError::Misconfigured(_) => Exit::Usage,
            CycleError::RolledBack { .. } => Exit::RolledBack,
            CycleError::Refused { .. } => Exit::Untrusted,
        }
    }
}

/// Remove what a crashed or killed run left behind. Call once at start, under the lock.
pub fn recover(settings: &Settings) -> anyhow::Result<()> {
    let releases = Releases::open(&settings.directory)
        .with_context(|| format!("cannot open {}/releases", settings.directory.display()))?;
    releases
        .sweep()
        .with_context(|| format!("cannot clean {}", releases.root().display()))?;
    let activator = settings.activator();
    activator
        .recover()
        .with_context(|| format!("cannot recover {}", settings.local.display()))?;
    let live = activator.live();
    // In exchange mode the live release is `current`, not under releases/: keep its manifest.
    let live_name = live
        .as_ref()
        .ok()
        .and_then(|l| l.as_ref())
        .map(|l| l.name.as_str());
    if let Err(e) = crate::incremental::sweep(&releases, live_name) {
        tracing::warn!("cannot clean {}: {e}", releases.manifests().display());
    }
    crate::source::sweep_cache(&settings.cache)
        .with_context(|| format!("cannot clean {}", settings.cache.display()))?;
    State::sweep(&settings.directory)
        .with_context(|| format!("cannot clean {}", settings.directory.display()))?;
    // Step 7 again: a kill after the post-update hooks but before the retention, or a lower
    // `keep`, left releases too many. The newest other release stays (`keep` is at least 2):
    // the one before the live one. With post-update hooks due, the first check runs them
    // (and may roll back) and prunes after them; with `current` unreadable, nothing is pruned.
    if let Ok(live) = live
        && PostHooksDue::load(&settings.directory).is_none()
    {
        let live = live.map(|l| releases.root().join(l.name));
        let protect: Vec<&Path> = live.iter().map(PathBuf::as_path).collect();
        retain(
            settings,
            &releases,
            &mut State::load(&settings.directory),
            &protect,
        );
    }
    Ok(())
}

/// Run one check against `source`. The caller holds the deploy lock. In fleet mode `fleet`
/// is this host's membership: a new version is refused while halted, and once unpacked it
/// waits for a place, is confirmed just before the switch, and bakes before the place is
/// given back (SPEC § Fleet rollouts).
pub async fn check(
    settings: &Settings,
    source: &Source,
    fleet: Option<&Member>,
    cancel: &CancellationToken,
) -> Result<Outcome, CycleError> {
    let dir = &settings.directory;
    let releases =
        Releases::open(dir).with_context(|| format!("cannot open {}/releases", dir.display()))?;
    let mut state = State::load(dir);
    let live = settings
        .activator()
        .live()
        .with_context(|| format!("cannot read {}", settings.local.display()))?;
    // A crash between a switch and the end of its post-update hooks: finish that first.
    if let Some(done) = resume(settings, &releases, live.as_ref()).await? {
        let protect: Vec<PathBuf> = std::iter::once(done.release)
            .chain(done.previous)
            .map(|name| releases.root().join(name))
            .collect();
        let protect: Vec<&Path> = protect.iter().map(PathBuf::as_path).collect();
        retain_off(settings, &releases, &mut state, &protect).await;
    }
    let live_name = live.as_ref().map(|l| l.name.clone());
    let live_info = live_name
        .as_deref()
        .and_then(|n| state.releases.get(n))
        .cloned();
    // What an update can take from the live release instead of downloading and unpacking it.
    let live_files = live.as_ref().map(|l| (l.name.as_str(), l.path.as_path()));
    let base = crate::incremental::Base::load(
        settings.reuse,
        &releases,
        live_files,
        live_info.as_ref().map(|i| i.sha256.as_str()),
    );

    // 1. Ask the remote; download only if it changed.
    let known = state
        .stamp_for(&settings.remote_display, live_name.as_deref())
        .cloned();
    let fetch_started = Instant::now();
    let (fetched, admitted) = match &settings.trust {
        Some(trust) => {
            // A refusal is remembered for this remote and these trust settings only: a key
            // added to trusted-keys (or allowed-signers) is tried at the next check.
            let refused = state
                .refused
                .clone()
                .filter(|r| r.remote == settings.remote_display && r.trust == trust.fingerprint());
            let known = known.as_ref();
            let found = match trust {
                Trust::Minisign { keys, file, .. } => {
                    let shown = file.display().to_string();
                    let refused = refused.as_ref();
                    source
                        .fetch_signed(keys, &shown, known, refused, cancel)
                        .await
                }
                Trust::Git { .. } => {
                    source
                        .fetch_git_signed(known, refused.as_ref(), cancel)
                        .await
                }
            };
            match found {
                Ok(found) => admit(settings, &mut state, live_info.as_ref(), found)?,
                Err(e) => (Err(e), None),
            }
        }
        None => {
            let fetched = source
                .fetch_reusing(known.as_ref(), base.as_ref(), cancel)
                .await;
            (fetched, None)
        }
    };
    crate::progress::finish();
    let artifact = match fetched {
        Ok(Fetched::Unchanged) => {
            tracing::info!("unchanged: {} is live", version_of(&live_info));
            return Ok(Outcome::Unchanged {
                version: live_info.map(|i| i.version),
            });
        }
        Ok(Fetched::New(artifact)) => {
            crate::events::emit(Event::Fetched {
                took: fetch_started.elapsed(),
                bytes: artifact.zip_size(),
            });
            artifact
        }
        Err(_) if cancel.is_cancelled() => return Err(CycleError::Interrupted),
        Err(e) => return Err(CycleError::Failed(e)),
    };
    let version = artifact.stamp.version.clone();
    let offer = decide::Offer {
        version: &version,
        sha256: &artifact.sha256,
    };
    let decision = decide::offer(state.pin.as_ref(), live_info.as_ref(), offer);
    if let Decision::SameBytes { lift_pin: true } | Decision::Deploy { lift_pin: true } = decision
        && let Some(pin) = state.pin.take()
    {
        tracing::info!(
            "the remote moved on to {version}: the rollback pin to {} is lifted",
            pin.release
        );
    }
    match decision {
        Decision::StayPinned => {
            if let Some(pin) = &state.pin {
                tracing::info!(
                    "unchanged: pinned to {} by a rollback; the remote still offers {version}",
                    pin.release
                );
            }
            state.remote = settings.remote_display.clone();
            state.stamp = Some(artifact.stamp.clone());
            save(&state, dir)?;
            return Ok(Outcome::Unchanged {
                version: live_info.map(|i| i.version),
            });
        }
        Decision::SameBytes { .. } => {
            // Same bytes under a new validator (touched file, new ETag): remember it, no deploy.
            tracing::info!(
                "unchanged: the remote's content is the live version {}",
                version_of(&live_info)
            );
            state.remote = settings.remote_display.clone();
            state.stamp = Some(artifact.stamp.clone());
            if let Some(i) = live_name.as_ref().and_then(|n| state.releases.get_mut(n)) {
                i.version = artifact.stamp.version.clone();
            }
            save(&state, dir)?;
            return Ok(Outcome::Unchanged {
                version: Some(version),
            });
        }
        Decision::Deploy { .. } => {}
    }
    tracing::info!("new version {version} from {}", settings.remote_display);
    if let Some(member) = fleet {
        refuse_if_halted(member, &version).await?;
    }

    // 2. Unpack into a hidden staging directory; 3. make it durable and give it its name.
    let started = Instant::now();
    let staging = releases.stage().with_context(|| {
        format!(
            "cannot create a staging directory in {}",
            releases.root().display()
        )
    })?;
    let (target, limits, token) = (
        staging.path().to_path_buf(),
        settings.limits,
        cancel.clone(),
    );
    let reuse = settings.reuse;
    let (artifact, summary) = tokio::task::spawn_blocking(move || {
        let summary = artifact.extract_reusing(&target, &limits, &token, reuse, base.as_deref());
        (artifact, summary)
    })
    .await
    .map_err(|e| anyhow!("unpacking panicked: {e}"))?;
    crate::progress::finish();
    let (summary, manifest) = match summary {
        Ok(s) => s,
        Err(_) if cancel.is_cancelled() => return Err(CycleError::Interrupted),
        Err(e) => {
            return Err(CycleError::Failed(anyhow!(e).context(format!(
                "cannot unpack {version} from {}",
                settings.remote_display
            ))));
        }
    };
    // syncfs can take seconds on a busy disk: on the blocking pool, not on an async worker.
    let (publisher, named) = (releases.clone(), version.clone());
    let release = tokio::task::spawn_blocking(move || publisher.publish(staging, &named))
        .await
        .map_err(|e| anyhow!("publishing panicked: {e}"))?
        .with_context(|| format!("cannot publish the release of {version}"))?;
    let (stamp, sha256) = (artifact.stamp.clone(), artifact.sha256.clone());
    drop(artifact);
    let reused = match summary.reused {
        0 => String::new(),
        n => format!(" ({n} taken from the live release)"),
    };
    tracing::info!(
        "unpacked {} files{reused}, {} bytes into {} in {:.3}s",
        summary.files,
        summary.bytes,
        release.display(),
        started.elapsed().as_secs_f64()
    );
    let name = release_name(&release)
        .ok_or_else(|| anyhow!("release {} has no name", release.display()))?;
    if let Some(manifest) = manifest
        && let Err(e) = manifest.save(&releases.manifest_path(&name))
    {
        tracing::warn!(
            "cannot write the manifest of {name} (the next update unpacks everything): {e}"
        );
    }
    state.releases.insert(
        name.clone(),
        ReleaseInfo {
            version: version.clone(),
            sha256,
            remote: settings.remote_display.clone(),
            created: chrono::Utc::now().to_rfc3339(),
            signature: admitted.as_ref().and_then(|a| a.signature.clone()),
            signer: admitted.as_ref().map(|a| a.signed.signer.clone()),
            signed_at: admitted.as_ref().map(|a| a.signed.timestamp),
        },
    );
    if let Err(e) = save(&state, dir) {
        discard(settings, &releases, &release).await;
        return Err(e);
    }

    // Fleet mode: unpacked and verified, the release waits for a place in the group.
    let place = match fleet {
        None => None,
        Some(member) => match member.place(&version, cancel).await {
            Ok(place) => Some(place),
            Err(no) => {
                if discard(settings, &releases, &release).await {
                    forget(&mut state, &name, dir);
                }
                return Err(no_place(&version, no));
            }
        },
    };

    // 4.–6. Pre-update hooks, the switch, post-update hooks (and the rollback).
    let env = HookEnv {
        phase: Phase::Pre,
        current: release.clone(),
        previous: live.as_ref().map(|l| l.path.clone()),
        version: version.clone(),
        previous_version: live_info
            .as_ref()
            .map(|i| i.version.clone())
            .unwrap_or_default(),
        rollback: false,
        deploy_dir: settings.local.clone(),
        remote: settings.remote_display.clone(),
        signer: admitted.map(|a| a.signed.signer).unwrap_or_default(),
        fleet: fleet_env(settings, place.as_ref()),
    };
    if let Some(member) = fleet {
        member
            .set_phase(crate::rollout::Phase::Updating, None)
            .await;
    }
    let activator = settings.activator();
    let mut result = go_live_with(settings, &activator, env.clone(), place.as_ref(), cancel).await;
    // Fleet mode: the bake keeps the place while the health hooks watch the new release.
    let mut baked = false;
    if let (Ok(switched), Some(member), Some(place)) = (&result, fleet, &place) {
        let secs = place.rollout().settings.bake;
        if secs > 0 {
            member.set_phase(crate::rollout::Phase::Baking, None).await;
            let env = HookEnv {
                phase: Phase::Health,
                current: switched.current.clone(),
                previous: switched.previous.clone(),
                ..env
            };
            match bake(settings, &activator, &env, &release, secs, cancel).await {
                Ok(healthy) => baked = healthy,
                Err(e) => result = Err(e),
            }
        } else {
            baked = true;
        }
    }
    if let (Some(member), Some(place)) = (fleet, place) {
        if let Err(e) = &result
            && let Some(reason) = halt_reason(e)
        {
            member.halt(&version, &reason).await;
        }
        member.release(place, baked && result.is_ok()).await;
    }
    let switched = match result {
        Ok(s) => s,
        Err(e) => {
            // A release `current` still shows (its switch back failed) keeps its record.
            if discard(settings, &releases, &release).await {
                forget(&mut state, &name, dir);
            }
            return Err(e);
        }
    };

    // The version is live and accepted: remember the remote's validators for it.
    state.remote = settings.remote_display.clone();
    state.stamp = Some(stamp);
    save(&state, dir)?;
    tracing::info!("deployed {version}");

    // 7. Retention: never the live release or the one before it.
    let mut protect: Vec<&Path> = vec![&release];
    if let Some(prev) = switched.previous.as_deref() {
        protect.push(prev);
    }
    retain_off(settings, &releases, &mut state, &protect).await;
    Ok(Outcome::Deployed { version, release })
}

/// Fleet mode: a halted version is not deployed (and nothing is unpacked for it).
async fn refuse_if_halted(member: &Member, version: &str) -> Result<(), CycleError> {
    match member.halted(version).await {
        Ok(None) => Ok(()),
        Ok(Some(halt)) => {
            member.saw_halt();
            Err(CycleError::Halted {
                version: version.to_owned(),
                host: halt.host,
                reason: halt.reason,
            })
        }
        Err(e) => Err(fleet_failure(
            e,
            format!("cannot ask etcd whether {version} is halted: nothing deployed"),
        )),
    }
}

/// The error of a wait for a place that ended without one.
fn no_place(version: &str, no: NoPlace) -> CycleError {
    match no {
        NoPlace::Cancelled => CycleError::Interrupted,
        NoPlace::Halted(halt) => CycleError::Halted {
            version: version.to_owned(),
            host: halt.host,
            reason: halt.reason,
        },
        NoPlace::Fleet(e) => fleet_failure(
            e,
            format!("no place in the fleet for {version}: nothing deployed"),
        ),
    }
}

/// An etcd failure of a check: a wrong setting or credential is the operator's to fix
/// (exit 2), anything else failed the check (exit 1).
fn fleet_failure(e: crate::fleet::FleetError, context: String) -> CycleError {
    if e.is_configuration() {
        CycleError::Misconfigured(anyhow!(e).context(context))
    } else {
        CycleError::Failed(anyhow!(e).context(context))
    }
}

/// `DEPLOY_FLEET` and `DEPLOY_CANARY` for hooks run in fleet mode.
pub fn fleet_env(settings: &Settings, place: Option<&Place>) -> Option<FleetEnv> {
    settings.fleet.as_ref().map(|f| FleetEnv {
        fleet: f.options.fleet.clone(),
        canary: place.is_some_and(Place::is_canary),
    })
}

/// Why a failed update halts the version for the group (rule 4), if it does: it got as far
/// as the switch and failed in a post-update or health hook. A blocking pre-update hook, a
/// failed download or a lost place halts nothing.
fn halt_reason(e: &CycleError) -> Option<String> {
    match e {
        CycleError::RolledBack { hook, health, .. } => Some(format!(
            "{} {hook}",
            if *health { "health" } else { "post-update" }
        )),
        CycleError::Failed(e) => {
            let text = e.to_string();
            (text.starts_with("post-update hook failed") || text.starts_with("health hook failed"))
                .then_some(text)
        }
        _ => None,
    }
}

/// Fleet mode's bake: the health hooks run at its start and every 5 s until `secs` have
/// passed (this host's monotonic clock); an unhealthy release is rolled back like a failed
/// post-update hook. `Ok(false)`: the agent is stopping, so the bake ended early (not a
/// healthy bake: a canary does not record it).
async fn bake(
    settings: &Settings,
    activator: &Activator,
    env: &HookEnv,
    release: &Path,
    secs: u64,
    cancel: &CancellationToken,
) -> Result<bool, CycleError> {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    let Some(hooks_dir) = settings.fleet.as_ref().map(|f| f.health_hooks.clone()) else {
        return Ok(true);
    };
    let end = Instant::now() + std::time::Duration::from_secs(secs);
    let never = CancellationToken::new();
    tracing::info!("baking {} for {secs}s", env.version);
    loop {
        if let Err(e) = hooks::run_parts(&hooks_dir, env, settings.hook_timeout, &never).await {
            let failed = HookEnv {
                phase: Phase::Post,
                ..env.clone()
            };
            return Err(
                match roll_back(activator, settings, &failed, release, &never).await {
                    Ok(restored) => CycleError::RolledBack {
                        version: env.version.clone(),
                        hook: e,
                        restored,
                        health: true,
                    },
                    Err(failed) => CycleError::Failed(anyhow!(
                        "health hook failed for {}: {e}; {failed}",
                        env.version
                    )),
                },
            );
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(left.min(EVERY)) => {}
            () = cancel.cancelled() => {
                tracing::warn!("stopping during the bake of {}: it is live, the bake is not recorded", env.version);
                return Ok(false);
            }
        }
        if Instant::now() >= end {
            break;
        }
    }
    tracing::info!("{} baked healthy for {secs}s", env.version);
    Ok(true)
}

/// [`retain`] (whole directory trees removed) on the blocking pool, not on an async worker.
async fn retain_off(
    settings: &Settings,
    releases: &Releases,
    state: &mut State,
    protect: &[&Path],
) {
    let (settings, releases) = (settings.clone(), releases.clone());
    let protect: Vec<PathBuf> = protect.iter().map(|p| p.to_path_buf()).collect();
    let mut owned = state.clone();
    let pruned = tokio::task::spawn_blocking(move || {
        let protect: Vec<&Path> = protect.iter().map(PathBuf::as_path).collect();
        retain(&settings, &releases, &mut owned, &protect);
        owned
    })
    .await;
    match pruned {
        Ok(pruned) => *state = pruned,
        Err(e) => tracing::warn!("removing old releases panicked: {e}"),
    }
}

/// Step 7: remove old releases beyond `keep`, never one in `protect`, nor the live one as
/// read again now ([`live_now`]).
fn retain(settings: &Settings, releases: &Releases, state: &mut State, protect: &[&Path]) {
    let live = match live_now(settings, releases) {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!("no old release is removed: {e:#}");
            return;
        }
    };
    let protect: Vec<&Path> = protect.iter().copied().chain(live.as_deref()).collect();
    let protect = protect.as_slice();
    // In exchange mode the live release's files are `current`, not under releases/.
    let keep = decide::kept_under_releases(
        settings.keep,
        settings.activate == crate::activate::Mode::Exchange,
    );
    match releases.prune(keep, protect) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!("removed old releases: {}", removed.join(", "));
            if let Ok(names) = releases.list() {
                state.retain_releases(&names);
                let _ = save(state, &settings.directory);
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot remove old releases: {e}"),
    }
}

/// Steps 4 to 6, for a release that is on disk but not live (a new one, or an old one for
/// `rollback`): pre-update hooks (a failure blocks), the atomic switch, post-update hooks (a
/// failure switches back and re-runs them with `DEPLOY_ROLLBACK=1`). `env` describes the
/// pre-update run. `cancel` is honoured until the switch, never after it. The caller removes
/// the release if it should not stay.
///
/// In fleet mode `place` is the place held for this switch: it is confirmed (one etcd
/// transaction) after the pre-update hooks and just before the switch; a place that is no
/// longer held (lease expired while paused) means no switch.
pub async fn go_live(
    settings: &Settings,
    env: HookEnv,
    place: Option<&Place>,
    cancel: &CancellationToken,
) -> Result<Switched, CycleError> {
    go_live_with(settings, &settings.activator(), env, place, cancel).await
}

/// [`go_live`] with the given activator (a unit test injects its failures).
async fn go_live_with(
    settings: &Settings,
    activator: &Activator,
    env: HookEnv,
    place: Option<&Place>,
    cancel: &CancellationToken,
) -> Result<Switched, CycleError> {
    let version = env.version.clone();
    if let Err(e) = hooks::run_parts(&settings.pre_hooks, &env, settings.hook_timeout, cancel).await
    {
        return Err(match e {
            HookError::Cancelled { .. } => CycleError::Interrupted,
            e => CycleError::Blocked { version, hook: e },
        });
    }
    if cancel.is_cancelled() {
        return Err(CycleError::Interrupted);
    }
    if let Some(place) = place {
        place.confirm().await.map_err(|e| {
            CycleError::Failed(anyhow!(e).context(format!("{version} not switched")))
        })?;
    }

    // The switch. From here on this runs to its end, whatever the signals say.
    let release = env.current.clone();
    let dir = &settings.directory;
    let due = PostHooksDue {
        release: release_name(&release)
            .ok_or_else(|| anyhow!("release {} has no name", release.display()))?,
        previous: activator
            .live()
            .with_context(|| format!("cannot read {}", settings.local.display()))?
            .map(|l| l.name),
        version: env.version.clone(),
        previous_version: env.previous_version.clone(),
    };
    due.save(dir)
        .with_context(|| format!("cannot write {}/post-hooks.json", dir.display()))?;
    let switch_started = Instant::now();
    let switched = match switch(activator, &release).await {
        Ok(s) => s,
        // `current` shows the new release: it is live, so its post-update hooks run (and may
        // roll back); only the durability of the switch is in doubt.
        Err(SwitchError::NotDurable { switched, error }) => {
            tracing::warn!(
                "switched {} to {}, but {error}: a power cut may bring the previous release back (the next start finishes the switch)",
                settings.local.display(),
                release.display()
            );
            switched
        }
        Err(SwitchError::NotSwitched(e)) => {
            return Err(CycleError::Failed(anyhow!(e).context(format!(
                "cannot switch {} to {}; it is unchanged",
                settings.local.display(),
                release.display()
            ))));
        }
    };
    tracing::info!(
        "switched {} to {} in {}µs (durable after {}µs)",
        settings.local.display(),
        release.display(),
        switched.visible.as_micros(),
        switch_started.elapsed().as_micros()
    );

    // In exchange mode the files moved: the post-update hooks see where they are now.
    let env = HookEnv {
        phase: Phase::Post,
        current: switched.current.clone(),
        previous: switched.previous.clone(),
        ..env
    };
    post_hooks(settings, activator, &env, &release).await?;
    Ok(switched)
}

/// A new version admitted by its signature.
struct Admitted {
    signed: Signed,
    /// The `.minisig` text, kept with the release; `None` for git.
    signature: Option<String>,
}

/// Signed releases, step 1's verdict: a version with a good signature is admitted if it is
/// not older than the newest this host has verified (the anti-rollback record, then moved
/// forward durably) nor expired; anything else is refused, and the refused pair remembered so
/// that the next checks cost conditional requests only.
fn admit(
    settings: &Settings,
    state: &mut State,
    live: Option<&ReleaseInfo>,
    found: SignedFetch,
) -> Result<(anyhow::Result<Fetched>, Option<Admitted>), CycleError> {
    let dir = &settings.directory;
    match found {
        SignedFetch::Unchanged => Ok((Ok(Fetched::Unchanged), None)),
        SignedFetch::StillRefused => {
            let Some(refused) = state.refused.clone() else {
                return Err(anyhow!("a refusal was remembered, then lost (a bug)").into());
            };
            let message = format!("{} (the same pair since {})", refused.message, refused.time);
            Err(refusal(&refused, message))
        }
        SignedFetch::Refused { remember, .. } => Err(remember_refusal(settings, state, remember)),
        SignedFetch::Verified {
            artifact,
            signed,
            signature,
            sig_stamp,
        } => {
            let record = anti_rollback_record(dir, live)?;
            let now = chrono::Utc::now().timestamp().max(0).unsigned_abs();
            let max_age = settings.trust.as_ref().and_then(Trust::max_age);
            let minisign = matches!(settings.trust, Some(Trust::Minisign { .. }));
            if let Err(refused) = crate::trust::check_freshness(
                signed.timestamp,
                &artifact.sha256,
                record.as_ref(),
                max_age,
                now,
                minisign,
            ) {
                let remember = Refused::of(&refused, artifact.stamp.clone(), sig_stamp);
                return Err(remember_refusal(settings, state, remember));
            }
            if record
                .as_ref()
                .is_none_or(|r| signed.timestamp > r.timestamp)
            {
                let newest = Record {
                    timestamp: signed.timestamp,
                    sha256: artifact.sha256.clone(),
                    signer: signed.signer.clone(),
                };
                newest
                    .save(dir)
                    .with_context(|| format!("cannot write {}", Record::path(dir).display()))?;
            }
            state.refused = None;
            tracing::info!(
                "good signature by key {}, signed at {}",
                signed.signer,
                crate::trust::show_time(signed.timestamp)
            );
            let admitted = Admitted { signed, signature };
            Ok((Ok(Fetched::New(artifact)), Some(admitted)))
        }
    }
}

/// The anti-rollback record; a missing one next to a live signed release is rebuilt from that
/// release's signature (never silently started from zero), a corrupt one fails closed.
fn anti_rollback_record(
    dir: &Path,
    live: Option<&ReleaseInfo>,
) -> Result<Option<Record>, CycleError> {
    if let Some(record) = Record::load(dir).map_err(|e| CycleError::Failed(anyhow!(e)))? {
        return Ok(Some(record));
    }
    let Some((info, signed_at)) = live.and_then(|i| i.signed_at.map(|t| (i, t))) else {
        if live.is_some() {
            tracing::info!(
                "no anti-rollback record and the live release is unsigned: the first verified version starts {}",
                Record::path(dir).display()
            );
        }
        return Ok(None);
    };
    let record = Record {
        timestamp: signed_at,
        sha256: info.sha256.clone(),
        signer: info.signer.clone().unwrap_or_default(),
    };
    record
        .save(dir)
        .with_context(|| format!("cannot write {}", Record::path(dir).display()))?;
    tracing::warn!(
        "rebuilt the anti-rollback record {} from the live release's signature (signed at {})",
        Record::path(dir).display(),
        crate::trust::show_time(record.timestamp)
    );
    Ok(Some(record))
}

/// Remember a refused pair in the state, and say why.
fn remember_refusal(settings: &Settings, state: &mut State, mut remember: Refused) -> CycleError {
    remember.remote = settings.remote_display.clone();
    remember.trust = settings
        .trust
        .as_ref()
        .map(Trust::fingerprint)
        .unwrap_or_default();
    let message = remember.message.clone();
    state.refused = Some(remember.clone());
    if let Err(e) = state.save(&settings.directory) {
        tracing::warn!(
            "cannot write {}: {e}",
            State::path(&settings.directory).display()
        );
    }
    refusal(&remember, message)
}

fn refusal(refused: &Refused, message: String) -> CycleError {
    let reason = crate::trust::Refusal::REASONS
        .into_iter()
        .find(|r| *r == refused.reason)
        .unwrap_or("malformed");
    crate::events::emit(Event::Refused { reason });
    CycleError::Refused {
        what: format!("version {}", refused.zip.version),
        reason: reason.to_string(),
        message,
    }
}

/// The switch, off the async workers: a sync-mode tree copy or an fsync may block for long.
async fn switch(activator: &Activator, release: &Path) -> Result<Switched, SwitchError> {
    let (activator, release) = (activator.clone(), release.to_path_buf());
    tokio::task::spawn_blocking(move || activator.switch(&release))
        .await
        .unwrap_or_else(|e| {
            Err(SwitchError::NotSwitched(std::io::Error::other(format!(
                "the switch panicked: {e}"
            ))))
        })
}

/// [`Activator::deactivate`], off the async workers.
async fn deactivate(activator: &Activator, release: &Path) -> std::io::Result<()> {
    let (activator, release) = (activator.clone(), release.to_path_buf());
    tokio::task::spawn_blocking(move || activator.deactivate(&release))
        .await
        .unwrap_or_else(|e| {
            Err(std::io::Error::other(format!(
                "the removal of current panicked: {e}"
            )))
        })
}

/// Step 6: the post-update hooks of a switch to `release`; a failure switches back. Either
/// way the switch's [`PostHooksDue`] record is then done with.
async fn post_hooks(
    settings: &Settings,
    activator: &Activator,
    env: &HookEnv,
    release: &Path,
) -> Result<(), CycleError> {
    let never = CancellationToken::new();
    let result = hooks::run_parts(&settings.post_hooks, env, settings.hook_timeout, &never).await;
    let result = match result {
        Ok(_) => Ok(()),
        Err(e) => match roll_back(activator, settings, env, release, &never).await {
            Ok(restored) => Err(CycleError::RolledBack {
                version: env.version.clone(),
                hook: e,
                restored,
                health: false,
            }),
            // Not "rolled back": the failed release is still live.
            Err(failed) => Err(CycleError::Failed(anyhow!(
                "post-update hook failed for {}: {e}; {failed}",
                env.version
            ))),
        },
    };
    PostHooksDue::clear(&settings.directory);
    result
}

/// Finish a switch whose post-update hooks a crash cut short (see [`PostHooksDue`]): if its
/// release is still live, run the hooks again, and roll back if they fail. Returns the
/// switch whose hooks passed, if any.
async fn resume(
    settings: &Settings,
    releases: &Releases,
    live: Option<&crate::activate::LiveRelease>,
) -> Result<Option<PostHooksDue>, CycleError> {
    let dir = &settings.directory;
    let Some(due) = PostHooksDue::load(dir) else {
        return Ok(None);
    };
    let Some(live) = live.filter(|l| l.name == due.release) else {
        // The switch never happened, or its rollback did: nothing is half-done.
        PostHooksDue::clear(dir);
        return Ok(None);
    };
    tracing::warn!(
        "the agent stopped before the post-update hooks of {} had finished: running them again",
        due.version
    );
    let release = releases.root().join(&due.release);
    let env = HookEnv {
        phase: Phase::Post,
        current: live.path.clone(),
        previous: due
            .previous
            .as_ref()
            .map(|name| releases.root().join(name))
            .filter(|p| p.is_dir()),
        version: due.version.clone(),
        previous_version: due.previous_version.clone(),
        rollback: false,
        deploy_dir: settings.local.clone(),
        remote: settings.remote_display.clone(),
        signer: State::load(dir)
            .releases
            .get(&due.release)
            .and_then(|i| i.signer.clone())
            .unwrap_or_default(),
        fleet: fleet_env(settings, None),
    };
    post_hooks(settings, &settings.activator(), &env, &release).await?;
    tracing::info!("post-update hooks of {} passed", due.version);
    Ok(Some(due))
}

/// Switch back after a failed post-update hook and re-run the post-update hooks for the
/// restored release with `DEPLOY_ROLLBACK=1`; on a first deploy, remove `current`. Returns
/// what was done, for the error message; or, when `current` could not be switched back, what
/// failed and what is live.
async fn roll_back(
    activator: &Activator,
    settings: &Settings,
    failed: &HookEnv,
    release: &Path,
    never: &CancellationToken,
) -> Result<String, String> {
    let local = settings.local.display();
    let Some(previous) = failed.previous.clone() else {
        return match deactivate(activator, release).await {
            Ok(()) => Ok(format!("first deploy: {local} removed")),
            Err(e) => {
                tracing::error!("cannot remove {local} after a failed first deploy: {e}");
                Err(format!(
                    "first deploy: the removal of {local} FAILED ({e}); {}",
                    live_description(activator)
                ))
            }
        };
    };
    let back = match switch(activator, &previous).await {
        Ok(s) => s,
        Err(SwitchError::NotDurable { switched, error }) => {
            tracing::warn!(
                "switched {local} back to {}, but {error}: a power cut may bring the failed release back (the next start finishes the switch)",
                previous.display()
            );
            switched
        }
        Err(SwitchError::NotSwitched(e)) => {
            tracing::error!("cannot switch {local} back to {}: {e}", previous.display());
            return Err(format!(
                "the rollback to {} FAILED ({e}); {}",
                previous.display(),
                live_description(activator)
            ));
        }
    };
    tracing::warn!("rolled back {local} to {}", previous.display());
    let env = HookEnv {
        phase: Phase::Post,
        current: back.current,
        previous: back.previous,
        version: failed.previous_version.clone(),
        previous_version: failed.version.clone(),
        rollback: true,
        deploy_dir: failed.deploy_dir.clone(),
        remote: failed.remote.clone(),
        // Who signed the restored release is in the state, not here: left empty.
        signer: String::new(),
        fleet: failed.fleet.clone(),
    };
    if let Err(e) = hooks::run_parts(&settings.post_hooks, &env, settings.hook_timeout, never).await
    {
        tracing::error!("post-update hooks failed again after the rollback: {e}");
    }
    Ok(format!("rolled back to {}", previous.display()))
}

/// What `current` shows now, read again, for an error message.
fn live_description(activator: &Activator) -> String {
    let local = activator.local().display();
    match activator.live() {
        Ok(Some(live)) => format!("{local} still shows {}", live.name),
        Ok(None) => format!("{local} shows nothing"),
        Err(e) => format!("{local} cannot be read: {e}"),
    }
}

/// The directory name of a release path.
fn release_name(path: &Path) -> Option<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn version_of(info: &Option<ReleaseInfo>) -> &str {
    info.as_ref()
        .map_or("(unknown version)", |i| i.version.as_str())
}

fn save(state: &State, dir: &Path) -> Result<(), CycleError> {
    state
        .save(dir)
        .with_context(|| format!("cannot write {}", State::path(dir).display()))
        .map_err(CycleError::Failed)
}

/// Remove a release this check created and will not keep, unless `current` shows it now
/// (a switch back that failed): see [`live_now`]. The tree is removed on the blocking pool,
/// not on an async worker. Returns whether it was removed.
async fn discard(settings: &Settings, releases: &Releases, release: &Path) -> bool {
    match live_now(settings, releases) {
        Ok(live) if live.as_deref().and_then(Path::file_name) != release.file_name() => {
            let (remover, path) = (releases.clone(), release.to_path_buf());
            match tokio::task::spawn_blocking(move || remover.remove(&path)).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!("cannot remove {}: {e}", release.display());
                    false
                }
                Err(e) => {
                    tracing::warn!("removing {} panicked: {e}", release.display());
                    false
                }
            }
        }
        Ok(_) => {
            tracing::warn!(
                "{} is not removed: {} shows it",
                release.display(),
                settings.local.display()
            );
            false
        }
        Err(e) => {
            tracing::warn!("{} is not removed: {e:#}", release.display());
            false
        }
    }
}

/// The one rule of every removal of a release: nothing deletes the release that `current`
/// resolves to now. This reads it again from disk (never a value read earlier in the check)
/// and returns its path under `releases/`; an error means it cannot be known, and then
/// nothing may be removed.
fn live_now(settings: &Settings, releases: &Releases) -> anyhow::Result<Option<PathBuf>> {
    let live = settings.activator().live().with_context(|| {
        format!(
            "cannot read what {} shows, so no release may be removed",
            settings.local.display()
        )
    })?;
    Ok(live.map(|l| releases.root().join(l.name)))
}

/// Drop a discarded release from the state (best effort: the next prune forgets it anyway).
fn forget(state: &mut State, name: &str, dir: &Path) {
    state.releases.remove(name);
    if let Err(e) = state.save(dir) {
        tracing::warn!("cannot write {}: {e}", State::path(dir).display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activate::Mode;
    use clap::Parser;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// A deploy directory with releases `a` (live) and `b` (each holding `f`: "A", "B"), in
    /// `mode`, and a post-update hook that fails except on the rollback's re-run.
    fn setup(mode: Mode) -> (tempfile::TempDir, Settings, PathBuf, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().canonicalize().expect("real");
        let (deploy, pre, post) = (root.join("d"), root.join("pre"), root.join("post"));
        for (name, text) in [("a", "A"), ("b", "B")] {
            let dir = deploy.join("releases").join(name);
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join("f"), text).expect("write");
        }
        fs::create_dir_all(&pre).expect("pre");
        fs::create_dir_all(&post).expect("post");
        let hook = post.join("10-fail");
        fs::write(&hook, "#!/bin/sh\n[ \"$DEPLOY_ROLLBACK\" = 1 ] || exit 1\n").expect("hook");
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod");
        let config = root.join("rd.cfg");
        fs::write(&config, format!("activate = {mode}\n")).expect("config");
        let os = |p: &Path| p.to_str().expect("utf8").to_string();
        let cli = crate::cli::Cli::try_parse_from([
            "repo-deploy".to_string(),
            "-c".into(),
            os(&config),
            "-d".into(),
            os(&deploy),
            "--pre-hooks".into(),
            os(&pre),
            "--post-hooks".into(),
            os(&post),
            "-r".into(),
            os(&root.join("app.zip")),
        ])
        .expect("cli");
        let settings = Settings::resolve_in(&cli, &Default::default(), &root).expect("settings");
        let (a, b) = (deploy.join("releases/a"), deploy.join("releases/b"));
        settings.activator().switch(&a).expect("a is live");
        (d, settings, a, b)
    }

    fn env(settings: &Settings, b: &Path) -> HookEnv {
        let live = settings.activator().live().expect("live").expect("a");
        HookEnv {
            phase: Phase::Pre,
            current: b.to_path_buf(),
            previous: Some(live.path),
            version: "v2".into(),
            previous_version: "v1".into(),
            rollback: false,
            deploy_dir: settings.local.clone(),
            remote: "test".into(),
            signer: String::new(),
            fleet: None,
        }
    }

    /// Bug 1, the rollback: the post-update hook fails, and step N of the activator fails
    /// (of the switch, then of the switch back), for every N and every mode. Whatever
    /// happened, after the check removes what it will not keep, `current` shows a release
    /// that still exists, and an outcome that reads "rolled back" means it was.
    #[tokio::test]
    async fn a_failed_switch_back_never_deletes_what_current_shows() {
        for mode in [Mode::Symlink, Mode::Exchange, Mode::Sync] {
            for n in 1.. {
                let (_d, settings, _a, b) = setup(mode);
                let releases = Releases::open(&settings.directory).expect("releases");
                let (activator, fail) = settings.activator().failing_at(n);
                let never = CancellationToken::new();
                let result =
                    go_live_with(&settings, &activator, env(&settings, &b), None, &never).await;
                let step = fail.log().get(n - 1).copied().unwrap_or("none");
                let at = format!("{mode}, step {n} ({step})");
                let Err(e) = result else {
                    panic!("{at}: the post-update hook failed, yet the switch stands");
                };
                // What `check` does with a release that did not go live.
                discard(&settings, &releases, &b).await;
                let live = settings
                    .activator()
                    .live()
                    .expect("live")
                    .unwrap_or_else(|| panic!("{at}: current is gone or dangles ({e})"));
                let shown = fs::read_to_string(settings.local.join("f"))
                    .unwrap_or_else(|e| panic!("{at}: current shows nothing: {e}"));
                assert_eq!(shown, live.name.to_uppercase(), "{at}");
                if mode != Mode::Exchange {
                    assert!(
                        releases.root().join(&live.name).is_dir(),
                        "{at}: the live release {} was deleted",
                        live.name
                    );
                }
                match &e {
                    CycleError::RolledBack { .. } => assert_eq!(live.name, "a", "{at}: {e}"),
                    CycleError::Failed(_) if live.name == "b" => {
                        assert!(e.to_string().contains("FAILED"), "{at}: {e}")
                    }
                    _ => {}
                }
                if fail.seen() < n {
                    assert!(matches!(e, CycleError::RolledBack { .. }), "{at}: {e}");
                    break;
                }
            }
        }
    }

    #[test]
    fn a_blocking_hooks_cause_is_printed_once() {
        let blocked = CycleError::Blocked {
            version: "v1".into(),
            hook: HookError::List(PathBuf::from("/x"), std::io::Error::from_raw_os_error(20)),
        };
        let chain = format!("{:#}", anyhow::Error::new(blocked));
        assert_eq!(chain.matches("Not a directory").count(), 1, "{chain}");
    }
}
