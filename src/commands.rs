//! The operator's commands beside the agent: `status`, `releases` and `rollback`. They read
//! the same files the agent writes (`current`, `releases/`, `state.json`, `status.json`), so
//! `status` and `releases` are safe while a daemon runs; `rollback` changes `current` and so
//! takes the deploy lock like a check does.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::cycle::{self, CycleError};
use crate::exit::Exit;
use crate::hooks::{HookEnv, Phase};
use crate::lock::{self, LockError};
use crate::releases::Releases;
use crate::state::{LastCheck, Pin, State};

/// One release on disk, as the commands show it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseView {
    pub name: String,
    pub path: PathBuf,
    /// Empty when the state does not know it.
    pub version: String,
    pub created: String,
    pub live: bool,
}

/// What `status` shows.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub remote: String,
    pub live: Option<ReleaseView>,
    pub last_check: Option<LastCheck>,
    pub pinned: Option<Pin>,
    pub releases: Vec<ReleaseView>,
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
        releases,
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
    line("releases:", format!("{} on disk", view.releases.len()));
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
/// pin it. When a running agent holds the deploy lock, it is asked to do the rollback (a
/// request file and SIGUSR2) and this waits for its answer.
pub async fn rollback(settings: &Settings, to: Option<&str>) -> Exit {
    let _lock = match lock::acquire(&settings.directory) {
        Ok(l) => l,
        Err(LockError::Held(path)) => return delegate_rollback(settings, to, &path).await,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Failed;
        }
    };
    let (exit, message) = rollback_now(settings, to).await;
    if exit != Exit::Ok {
        tracing::error!("{message}");
    }
    exit
}

/// Run a rollback; the caller holds the deploy lock. Returns the exit status and a message.
pub async fn rollback_now(settings: &Settings, to: Option<&str>) -> (Exit, String) {
    match rollback_locked(settings, to).await {
        Ok(name) => (Exit::Ok, format!("rolled back to {name}")),
        Err(e) => (e.exit(), format!("rollback failed: {e}")),
    }
}

/// A rollback asked of the running agent: `${directory}/rollback-request.json`, answered in
/// `${directory}/rollback-result.json` with the same id.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RollbackRequest {
    pub id: String,
    pub to: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct RollbackResult {
    id: String,
    exit: i32,
    message: String,
}

fn request_path(settings: &Settings) -> PathBuf {
    settings.directory.join("rollback-request.json")
}

fn result_path(settings: &Settings) -> PathBuf {
    settings.directory.join("rollback-result.json")
}

async fn delegate_rollback(
    settings: &Settings,
    to: Option<&str>,
    lock_path: &std::path::Path,
) -> Exit {
    let Some(pid) = lock::holder(&settings.directory).and_then(rustix::process::Pid::from_raw)
    else {
        tracing::error!(
            "another repo-deploy holds the lock {} and did not say which: stop it and run the rollback again",
            lock_path.display()
        );
        return Exit::Locked;
    };
    let request = RollbackRequest {
        id: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
        to: to.map(str::to_string),
    };
    let written = serde_json::to_vec(&request)
        .map_err(std::io::Error::other)
        .and_then(|b| crate::state::write_atomic(&request_path(settings), &b));
    if let Err(e) = written {
        tracing::error!("cannot write {}: {e}", request_path(settings).display());
        return Exit::Failed;
    }
    if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::USR2) {
        let _ = std::fs::remove_file(request_path(settings));
        tracing::error!(
            "the agent holding {} (pid {}) cannot be asked to roll back: {e}",
            lock_path.display(),
            pid.as_raw_nonzero()
        );
        return Exit::Locked;
    }
    tracing::info!(
        "asked the running agent (pid {}) to roll back",
        pid.as_raw_nonzero()
    );
    // Both hook chains may run, each up to hook-timeout, plus a rollback of its own.
    let deadline = tokio::time::Instant::now()
        + settings.hook_timeout * 4
        + std::time::Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if let Some(result) = std::fs::read(result_path(settings))
            .ok()
            .and_then(|b| serde_json::from_slice::<RollbackResult>(&b).ok())
            && result.id == request.id
        {
            let _ = std::fs::remove_file(result_path(settings));
            if result.exit == 0 {
                tracing::info!("{}", result.message);
            } else {
                tracing::error!("{}", result.message);
            }
            return [
                Exit::Ok,
                Exit::Failed,
                Exit::Usage,
                Exit::Blocked,
                Exit::RolledBack,
                Exit::Locked,
            ]
            .into_iter()
            .find(|e| e.code() == result.exit)
            .unwrap_or(Exit::Failed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tracing::error!(
        "the running agent (pid {}) did not answer the rollback request in time; see its log",
        pid.as_raw_nonzero()
    );
    Exit::Failed
}

/// In the agent, on SIGUSR2: serve a pending rollback request, if any.
pub async fn serve_rollback_request(settings: &Settings) {
    let Some(request) = std::fs::read(request_path(settings))
        .ok()
        .and_then(|b| serde_json::from_slice::<RollbackRequest>(&b).ok())
    else {
        tracing::warn!(
            "SIGUSR2 without a readable {}: nothing to do",
            request_path(settings).display()
        );
        return;
    };
    let _ = std::fs::remove_file(request_path(settings));
    tracing::info!(
        "SIGUSR2: rollback requested{}",
        request
            .to
            .as_deref()
            .map(|t| format!(" to {t}"))
            .unwrap_or_default()
    );
    let (exit, message) = rollback_now(settings, request.to.as_deref()).await;
    if exit == Exit::Ok {
        tracing::info!("{message}");
    } else {
        tracing::error!("{message}");
    }
    let result = RollbackResult {
        id: request.id,
        exit: exit.code(),
        message,
    };
    let written = serde_json::to_vec(&result)
        .map_err(std::io::Error::other)
        .and_then(|b| crate::state::write_atomic(&result_path(settings), &b));
    if let Err(e) = written {
        tracing::error!("cannot write {}: {e}", result_path(settings).display());
    }
}

async fn rollback_locked(settings: &Settings, to: Option<&str>) -> Result<String, CycleError> {
    cycle::recover(settings)?;
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
    };
    cycle::go_live(settings, env, &CancellationToken::new()).await?;
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
