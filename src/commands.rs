//! The operator's commands beside the agent: `status`, `releases` and `rollback`. They read
//! the same files the agent writes (`current`, `releases/`, `state.json`, `status.json`), so
//! `status` and `releases` are safe while a daemon runs; `rollback` changes `current` and so
//! takes the deploy lock like a check does, or, when a daemon holds it, hands the rollback to
//! that daemon through its control socket (`handover.rs`) and ends with its answer.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::cycle::{self, CycleError};
use crate::exit::Exit;
use crate::fleet::Place;
use crate::handover::{self, AskError, Request, Rollback};
use crate::hooks::{HookEnv, Phase};
use crate::lock::{self, LockError};
use crate::releases::Releases;
use crate::rollout::{Member, NoPlace};
use crate::state::{LastCheck, Pin, State};

/// One release on disk, as the commands show it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseView {
    /// The release directory's name under `releases/`, which orders releases by age.
    pub name: String,
    /// Where its files are: `releases/<name>`, or the live path when exchange mode keeps the
    /// live release's files there.
    pub path: PathBuf,
    /// The version it was deployed from. Empty when the state does not know it.
    pub version: String,
    /// RFC 3339 time the release was made; empty when the state does not know it.
    pub created: String,
    /// Whether `current` shows this release.
    pub live: bool,
    /// Signed releases: who signed it (minisign key id or git principal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// What `status` shows.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// The configured remote, credentials masked.
    pub remote: String,
    /// The release `current` shows; `None`: nothing is live.
    pub live: Option<ReleaseView>,
    /// The result of the last check (`status.json`); `None`: no check has run.
    pub last_check: Option<LastCheck>,
    /// The pin a rollback left; `None`: no version is pinned.
    pub pinned: Option<Pin>,
    /// Signed releases: the version refused as untrusted that the remote still offers.
    pub refused: Option<crate::state::Refused>,
    /// The releases on disk, newest first.
    pub releases: Vec<ReleaseView>,
    /// Fleet mode: this host's phase as the agent last published it; `None` outside fleet mode.
    pub fleet: Option<FleetPhaseView>,
}

/// This host in its fleet, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetPhaseView {
    /// The group's name.
    pub fleet: String,
    /// This host's name in the group.
    pub host: String,
    /// `idle`, `waiting`, `updating`, `baking` or `halted` (as last published; a stopped agent
    /// leaves its last phase here).
    pub phase: String,
}

/// The releases on disk, newest first.
pub fn releases(settings: &Settings) -> Result<Vec<ReleaseView>> {
    let releases = Releases::open(&settings.directory)
        .with_context(|| format!("cannot open {}/releases", settings.directory.display()))?;
    let state = State::load(&settings.directory);
    let live = settings
        .activator()
        .live()
        .with_context(|| format!("cannot read {}", settings.local.display()))?;
    let mut names = releases
        .list()
        .with_context(|| format!("cannot list {}", releases.root().display()))?;
    // In exchange mode the live release's files are at `current`, not under releases/.
    if let Some(l) = &live
        && !names.contains(&l.name)
    {
        names.push(l.name.clone());
        names.sort();
    }
    names.reverse();
    Ok(names
        .into_iter()
        .map(|name| {
            let is_live = live.as_ref().is_some_and(|l| l.name == name);
            let path = match &live {
                Some(l) if is_live => l.path.clone(),
                _ => releases.root().join(&name),
            };
            let info = state.releases.get(&name);
            ReleaseView {
                live: is_live,
                version: info.map(|i| i.version.clone()).unwrap_or_default(),
                created: info.map(|i| i.created.clone()).unwrap_or_default(),
                signer: info.and_then(|i| i.signer.clone()),
                name,
                path,
            }
        })
        .collect())
}

/// Everything `status` shows.
pub fn status(settings: &Settings) -> Result<StatusView> {
    let releases = releases(settings)?;
    let state = State::load(&settings.directory);
    Ok(StatusView {
        remote: settings.remote_display.clone(),
        live: releases.iter().find(|r| r.live).cloned(),
        last_check: LastCheck::load(&settings.directory),
        pinned: state.pin,
        refused: state
            .refused
            .filter(|r| r.remote == settings.remote_display),
        releases,
        fleet: settings.fleet.as_ref().map(|f| FleetPhaseView {
            fleet: f.options.fleet.clone(),
            host: f.options.host.clone(),
            phase: crate::rollout::load_status(&settings.directory)
                .map_or_else(|| "unknown".into(), |s| s.phase),
        }),
    })
}

/// `status` as text.
pub fn render_status(view: &StatusView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line("remote:", view.remote.clone());
    line(
        "live:",
        view.live.as_ref().map_or("nothing is live".into(), |r| {
            format!("{} ({})", or_unknown(&r.version), r.path.display())
        }),
    );
    match &view.last_check {
        Some(c) => {
            line("last check:", format!("{} {}", c.time, c.result));
            if let Some(e) = &c.error {
                line("last error:", e.clone());
            }
            line(
                "last success:",
                c.last_success.clone().unwrap_or_else(|| "never".into()),
            );
        }
        None => line("last check:", "never".into()),
    }
    line(
        "pinned:",
        view.pinned.as_ref().map_or("no".into(), |p| {
            format!(
                "yes, to {} since {}; {} is skipped until the remote offers another version",
                p.release, p.since, p.from_version
            )
        }),
    );
    if let Some(signer) = view.live.as_ref().and_then(|r| r.signer.as_ref()) {
        line("signed by:", signer.clone());
    }
    if let Some(r) = &view.refused {
        line(
            "refused:",
            format!(
                "version {} since {} ({}): {}",
                r.zip.version, r.time, r.reason, r.message
            ),
        );
    }
    line("releases:", format!("{} on disk", view.releases.len()));
    if let Some(f) = &view.fleet {
        line(
            "fleet:",
            format!("{} as {}, phase {}", f.fleet, f.host, f.phase),
        );
    }
    out
}

/// `releases` as text: one line per release, newest first.
pub fn render_releases(list: &[ReleaseView]) -> String {
    list.iter()
        .map(|r| {
            format!(
                "{}{}  {}  {}\n",
                if r.live { "* " } else { "  " },
                r.name,
                or_unknown(&r.version),
                r.created
            )
        })
        .collect()
}

fn or_unknown(v: &str) -> &str {
    if v.is_empty() { "(unknown version)" } else { v }
}

/// Switch `current` to the release before the live one, or to the one named by `to` (a
/// release name or a unique prefix of its version), running the hooks as for an update, and
/// pin it. When a daemon holds the deploy lock, it is asked to do the rollback through its
/// control socket (`handover.rs`) and this waits for its answer; when a run that takes no
/// requests holds it (`-f`, another `rollback`), this exits 5 at once.
pub async fn rollback(settings: &Settings, to: Option<&str>) -> Exit {
    let _lock = match lock::acquire_async(&settings.directory).await {
        Ok(l) => l,
        Err(LockError::Held(_)) => return hand_over(settings, to).await,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Failed;
        }
    };
    // No daemon runs (we hold the lock): a socket here is a killed daemon's.
    if let Err(e) = handover::sweep(&settings.directory) {
        tracing::warn!(
            "cannot remove a control socket left in {}: {e}",
            settings.directory.display()
        );
    }
    let (exit, message) = rollback_now(settings, to).await;
    if exit != Exit::Ok {
        tracing::error!("{message}");
    }
    exit
}

/// Run a rollback; the caller holds the deploy lock. Returns the exit status and a message.
pub async fn rollback_now(settings: &Settings, to: Option<&str>) -> (Exit, String) {
    match rollback_locked(settings, to, None).await {
        Ok(name) => (Exit::Ok, format!("rolled back to {name}")),
        Err(e) => (e.exit(), format!("rollback failed: {e}")),
    }
}

/// How long a requester waits for the daemon: it may be in a check (both hook chains and a
/// rollback of its own, each up to hook-timeout) before it runs our rollback (the same again).
fn answer_deadline(settings: &Settings) -> Duration {
    settings.hook_timeout * 4 + Duration::from_secs(60)
}

/// Ask the daemon that holds the lock to roll back, and end with its answer.
async fn hand_over(settings: &Settings, to: Option<&str>) -> Exit {
    let dir = &settings.directory;
    let request = Request {
        rollback: Rollback {
            to: to.map(str::to_string),
        },
    };
    tracing::info!(
        "a repo-deploy agent holds the lock of {}: asking it to roll back",
        dir.display()
    );
    match handover::ask(dir, &request, answer_deadline(settings)).await {
        Ok(answer) => {
            let exit = answer.exit();
            if exit == Exit::Ok {
                tracing::info!("{}", answer.message);
            } else {
                tracing::error!("{}", answer.message);
            }
            exit
        }
        Err(AskError::NoListener(..)) => {
            tracing::error!(
                "another repo-deploy run holds the lock of {} and takes no requests (a one-shot -f run or another rollback): wait for it to finish and run the rollback again",
                dir.display()
            );
            Exit::Locked
        }
        Err(e @ AskError::Connect(..)) => {
            tracing::error!(
                "another repo-deploy holds the lock of {} and cannot be asked to roll back: {e}",
                dir.display()
            );
            Exit::Locked
        }
        Err(e) => {
            tracing::error!("rollback through the running agent: {e}");
            Exit::Failed
        }
    }
}

/// Fleet mode, `on-halt = revert` (SPEC § Fleet rollouts, rule 4): when the live version is
/// halted and its rollout says `revert`, go back to the release before it through a place of
/// that version (so no more hosts go back at once than `max-parallel`). No pin: the halt
/// keeps the version off this host, and `fleet resume` lets it come back. `None`: nothing to
/// revert. The caller holds the deploy lock.
pub async fn revert_if_halted(
    settings: &Settings,
    member: &Member,
    cancel: &CancellationToken,
) -> Option<Result<String, CycleError>> {
    let live = releases(settings).ok()?.into_iter().find(|r| r.live)?;
    if live.version.is_empty() {
        return None;
    }
    let halt = match member.halted(&live.version).await {
        Ok(h) => h?,
        Err(e) => {
            tracing::warn!(
                "cannot ask etcd whether the live {} is halted: {e}",
                live.version
            );
            return None;
        }
    };
    match member.reverts(&live.version).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => {
            tracing::warn!(
                "cannot read the rollout of the halted {}: {e}",
                live.version
            );
            return None;
        }
    }
    member.saw_halt();
    tracing::warn!(
        "the live version {} is halted for the fleet (by {}: {}); on-halt = revert: going back to the previous release",
        live.version,
        halt.host,
        halt.reason
    );
    let place = match member.revert_place(&live.version, cancel).await {
        Ok(p) => p,
        Err(NoPlace::Cancelled) => return Some(Err(CycleError::Interrupted)),
        // A revert's wait ends with a place, an etcd error or a stop; never with a halt.
        Err(NoPlace::Fleet(e)) => {
            return Some(Err(CycleError::Failed(anyhow!(e).context(format!(
                "no place to go back from the halted {}",
                live.version
            )))));
        }
        Err(NoPlace::Halted(_)) => return None,
    };
    member
        .set_phase(crate::rollout::Phase::Updating, None)
        .await;
    let result = rollback_locked(settings, None, Some(&place)).await;
    member.release(place, false).await;
    Some(result)
}

/// Switch back (see [`rollback`]). With `revert` (fleet mode's `on-halt = revert`) the place
/// is confirmed before the switch and no pin is set.
async fn rollback_locked(
    settings: &Settings,
    to: Option<&str>,
    revert: Option<&Place>,
) -> Result<String, CycleError> {
    // Sweeps and removals: on the blocking pool, not on an async worker.
    let owned = settings.clone();
    tokio::task::spawn_blocking(move || cycle::recover(&owned))
        .await
        .map_err(|e| anyhow!("recovery panicked: {e}"))??;
    let dir = &settings.directory;
    let mut state = State::load(dir);
    let list = releases(settings)?;
    let live = list.iter().find(|r| r.live).cloned().ok_or_else(|| {
        anyhow!(
            "nothing is live in {}: nothing to roll back",
            settings.local.display()
        )
    })?;
    let target = choose(&list, &live, to)?;
    tracing::info!(
        "rolling back from {} to {}",
        or_unknown(&live.version),
        or_unknown(&target.version)
    );
    let env = HookEnv {
        phase: Phase::Pre,
        current: target.path.clone(),
        previous: Some(live.path.clone()),
        version: target.version.clone(),
        previous_version: live.version.clone(),
        rollback: false,
        deploy_dir: settings.local.clone(),
        remote: settings.remote_display.clone(),
        signer: state
            .releases
            .get(&target.name)
            .and_then(|i| i.signer.clone())
            .unwrap_or_default(),
        fleet: cycle::fleet_env(settings, None),
    };
    cycle::go_live(settings, env, revert, &CancellationToken::new()).await?;
    if revert.is_some() {
        tracing::info!(
            "reverted to {} ({})",
            target.name,
            or_unknown(&target.version)
        );
        return Ok(target.name);
    }
    state.pin = Some(Pin {
        release: target.name.clone(),
        from_version: live.version.clone(),
        since: chrono::Utc::now().to_rfc3339(),
    });
    state
        .save(dir)
        .with_context(|| format!("cannot write {}", State::path(dir).display()))?;
    tracing::info!(
        "rolled back to {}; pinned until the remote offers a version other than {}",
        target.name,
        or_unknown(&live.version)
    );
    Ok(target.name)
}

/// The release to roll back to.
fn choose(list: &[ReleaseView], live: &ReleaseView, to: Option<&str>) -> Result<ReleaseView> {
    let others = list.iter().filter(|r| !r.live);
    let Some(to) = to else {
        // `list` is newest first: the newest release older than the live one, else the newest other.
        return others
            .clone()
            .find(|r| r.name < live.name)
            .or_else(|| others.clone().next())
            .cloned()
            .ok_or_else(|| anyhow!("no other release on disk to roll back to"));
    };
    let matches: Vec<&ReleaseView> = list
        .iter()
        .filter(|r| r.name == to || (!r.version.is_empty() && r.version.starts_with(to)))
        .collect();
    match matches.as_slice() {
        [] => {
            bail!("no release on disk has the version or name `{to}` (see `repo-deploy releases`)")
        }
        [one] if one.live => bail!("`{to}` is already live"),
        [one] => Ok((*one).clone()),
        many => bail!(
            "`{to}` matches {} releases ({}); give more of the version or the release name",
            many.len(),
            many.iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, version: &str, live: bool) -> ReleaseView {
        ReleaseView {
            name: name.into(),
            path: PathBuf::from(name),
            version: version.into(),
            created: String::new(),
            live,
            signer: None,
        }
    }

    #[test]
    fn default_target_is_the_release_before_the_live_one() {
        let list = vec![
            view("3", "ccc", false),
            view("2", "bbb", true),
            view("1", "aaa", false),
        ];
        assert_eq!(choose(&list, &list[1], None).expect("target").name, "1");
        let list = vec![view("3", "ccc", true), view("2", "bbb", false)];
        assert_eq!(choose(&list, &list[0], None).expect("target").name, "2");
        let list = vec![view("3", "ccc", true)];
        assert!(choose(&list, &list[0], None).is_err());
    }

    #[test]
    fn named_target_by_version_prefix_or_name() {
        let list = vec![
            view("3", "abc1", true),
            view("2", "abd2", false),
            view("1", "xyz", false),
        ];
        assert_eq!(
            choose(&list, &list[0], Some("xy")).expect("prefix").name,
            "1"
        );
        assert_eq!(choose(&list, &list[0], Some("2")).expect("name").name, "2");
        assert!(choose(&list, &list[0], Some("ab")).is_err(), "ambiguous");
        assert!(
            choose(&list, &list[0], Some("abc1")).is_err(),
            "already live"
        );
        assert!(choose(&list, &list[0], Some("nope")).is_err());
    }
}
