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

use crate::activate::{Activator, Switched};
use crate::config::Settings;
use crate::exit::Exit;
use crate::hooks::{self, HookEnv, HookError, Phase};
use crate::releases::Releases;
use crate::source::{Fetched, Source};
use crate::state::{PendingPost, ReleaseInfo, State};

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
    #[error("post-update hook failed for {version}: {hook}; {restored}")]
    RolledBack {
        version: String,
        hook: HookError,
        restored: String,
    },
    /// Stopped by a signal before the switch; `current` is unchanged.
    #[error("interrupted before the switch; current is unchanged")]
    Interrupted,
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
            CycleError::Failed(_) | CycleError::Interrupted => Exit::Failed,
            CycleError::Blocked { .. } => Exit::Blocked,
            CycleError::RolledBack { .. } => Exit::RolledBack,
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
    let activator = Activator::for_settings(settings);
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
    // the one before the live one. With post-update hooks pending, the first check runs them
    // (and may roll back) and prunes after them; with `current` unreadable, nothing is pruned.
    if let Ok(live) = live
        && PendingPost::load(&settings.directory).is_none()
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

/// Run one check against `source`. The caller holds the deploy lock.
pub async fn check(
    settings: &Settings,
    source: &Source,
    cancel: &CancellationToken,
) -> Result<Outcome, CycleError> {
    let dir = &settings.directory;
    let releases =
        Releases::open(dir).with_context(|| format!("cannot open {}/releases", dir.display()))?;
    let mut state = State::load(dir);
    let live = Activator::for_settings(settings)
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
    let fetched = source
        .fetch_reusing(known.as_ref(), base.as_ref(), cancel)
        .await;
    crate::progress::finish();
    let artifact = match fetched {
        Ok(Fetched::Unchanged) => {
            tracing::info!("unchanged: {} is live", version_of(&live_info));
            return Ok(Outcome::Unchanged {
                version: live_info.map(|i| i.version),
            });
        }
        Ok(Fetched::New(artifact)) => {
            crate::telemetry::fetched(&artifact, fetch_started.elapsed());
            artifact
        }
        Err(_) if cancel.is_cancelled() => return Err(CycleError::Interrupted),
        Err(e) => return Err(CycleError::Failed(e)),
    };
    let version = artifact.stamp.version.clone();
    if let Some(pin) = state.pin.clone() {
        if pin.from_version == version {
            tracing::info!(
                "unchanged: pinned to {} by a rollback; the remote still offers {version}",
                pin.release
            );
            state.remote = settings.remote_display.clone();
            state.stamp = Some(artifact.stamp.clone());
            save(&state, dir)?;
            return Ok(Outcome::Unchanged {
                version: live_info.map(|i| i.version),
            });
        }
        tracing::info!(
            "the remote moved on to {version}: the rollback pin to {} is lifted",
            pin.release
        );
        state.pin = None;
    }
    if let Some(info) = live_info.as_ref().filter(|i| i.sha256 == artifact.sha256) {
        // Same bytes under a new validator (touched file, new ETag): remember it, no deploy.
        tracing::info!(
            "unchanged: the remote's content is the live version {}",
            info.version
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
    tracing::info!("new version {version} from {}", settings.remote_display);

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
        },
    );
    if let Err(e) = save(&state, dir) {
        discard(&releases, &release).await;
        return Err(e);
    }

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
    };
    let switched = match go_live(settings, env, cancel).await {
        Ok(s) => s,
        Err(e) => {
            discard(&releases, &release).await;
            forget(&mut state, &name, dir);
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

/// Step 7: remove old releases beyond `keep`, never one in `protect`.
fn retain(settings: &Settings, releases: &Releases, state: &mut State, protect: &[&Path]) {
    // In exchange mode the live release's files are `current`, not under releases/.
    let keep = if settings.activate == crate::activate::Mode::Exchange {
        settings.keep - 1
    } else {
        settings.keep
    };
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
pub async fn go_live(
    settings: &Settings,
    env: HookEnv,
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

    // The switch. From here on this runs to its end, whatever the signals say.
    let release = env.current.clone();
    let activator = Activator::for_settings(settings);
    let dir = &settings.directory;
    let pending = PendingPost {
        release: release_name(&release)
            .ok_or_else(|| anyhow!("release {} has no name", release.display()))?,
        previous: activator
            .live()
            .with_context(|| format!("cannot read {}", settings.local.display()))?
            .map(|l| l.name),
        version: env.version.clone(),
        previous_version: env.previous_version.clone(),
    };
    pending
        .save(dir)
        .with_context(|| format!("cannot write {}/post-hooks.json", dir.display()))?;
    let switch_started = Instant::now();
    let switched = activator.switch(&release).map_err(|e| {
        CycleError::Failed(anyhow!(e).context(format!(
            "cannot switch {} to {}",
            settings.local.display(),
            release.display()
        )))
    })?;
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
    post_hooks(settings, &activator, &env, &release).await?;
    Ok(switched)
}

/// Step 6: the post-update hooks of a switch to `release`; a failure switches back. Either
/// way the switch's [`PendingPost`] record is then done with.
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
        Err(e) => Err(CycleError::RolledBack {
            version: env.version.clone(),
            hook: e,
            restored: roll_back(activator, settings, env, release, &never).await,
        }),
    };
    PendingPost::clear(&settings.directory);
    result
}

/// Finish a switch whose post-update hooks a crash cut short (see [`PendingPost`]): if its
/// release is still live, run the hooks again, and roll back if they fail. Returns the
/// switch whose hooks passed, if any.
async fn resume(
    settings: &Settings,
    releases: &Releases,
    live: Option<&crate::activate::LiveRelease>,
) -> Result<Option<PendingPost>, CycleError> {
    let dir = &settings.directory;
    let Some(pending) = PendingPost::load(dir) else {
        return Ok(None);
    };
    let Some(live) = live.filter(|l| l.name == pending.release) else {
        // The switch never happened, or its rollback did: nothing is half-done.
        PendingPost::clear(dir);
        return Ok(None);
    };
    tracing::warn!(
        "the agent stopped before the post-update hooks of {} had finished: running them again",
        pending.version
    );
    let release = releases.root().join(&pending.release);
    let env = HookEnv {
        phase: Phase::Post,
        current: live.path.clone(),
        previous: pending
            .previous
            .as_ref()
            .map(|name| releases.root().join(name))
            .filter(|p| p.is_dir()),
        version: pending.version.clone(),
        previous_version: pending.previous_version.clone(),
        rollback: false,
        deploy_dir: settings.local.clone(),
        remote: settings.remote_display.clone(),
    };
    post_hooks(settings, &Activator::for_settings(settings), &env, &release).await?;
    tracing::info!("post-update hooks of {} passed", pending.version);
    Ok(Some(pending))
}

/// Switch back after a failed post-update hook and re-run the post-update hooks for the
/// restored release with `DEPLOY_ROLLBACK=1`; on a first deploy, remove `current`. Returns
/// what was done, for the error message.
async fn roll_back(
    activator: &Activator,
    settings: &Settings,
    failed: &HookEnv,
    release: &Path,
    never: &CancellationToken,
) -> String {
    let Some(previous) = failed.previous.clone() else {
        return match activator.deactivate(release) {
            Ok(()) => format!("first deploy: {} removed", settings.local.display()),
            Err(e) => format!(
                "first deploy: cannot remove {}: {e}",
                settings.local.display()
            ),
        };
    };
    let back = match activator.switch(&previous) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                "cannot switch {} back to {}: {e}",
                settings.local.display(),
                previous.display()
            );
            return format!("rollback to {} FAILED: {e}", previous.display());
        }
    };
    tracing::warn!(
        "rolled back {} to {}",
        settings.local.display(),
        previous.display()
    );
    let env = HookEnv {
        phase: Phase::Post,
        current: back.current,
        previous: back.previous,
        version: failed.previous_version.clone(),
        previous_version: failed.version.clone(),
        rollback: true,
        deploy_dir: failed.deploy_dir.clone(),
        remote: failed.remote.clone(),
    };
    if let Err(e) = hooks::run_parts(&settings.post_hooks, &env, settings.hook_timeout, never).await
    {
        tracing::error!("post-update hooks failed again after the rollback: {e}");
    }
    format!("rolled back to {}", previous.display())
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

/// Remove a release this check created and will not keep (on the blocking pool: a whole tree).
async fn discard(releases: &Releases, release: &Path) {
    let (remover, path) = (releases.clone(), release.to_path_buf());
    match tokio::task::spawn_blocking(move || remover.remove(&path)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot remove {}: {e}", release.display()),
        Err(e) => tracing::warn!("removing {} panicked: {e}", release.display()),
    }
}

/// Drop a discarded release from the state (best effort: the next prune forgets it anyway).
fn forget(state: &mut State, name: &str, dir: &Path) {
    state.releases.remove(name);
    if let Err(e) = state.save(dir) {
        tracing::warn!("cannot write {}: {e}", State::path(dir).display());
    }
}
