//! run-parts for deploy hooks: which files run, in what order, with what environment, and how
//! a hook that hangs is stopped.
//!
//! Every regular executable file directly in the directory (symlinks followed) runs, in
//! byte-wise order of name; names starting with `.` or ending in `~` are skipped; a missing
//! directory means no hooks. The first failure stops the chain. Each hook runs in its own
//! process group with stdin closed; its stdout and stderr are logged line by line under its
//! name; past the timeout the whole group is killed. This module knows nothing of releases or
//! rollback: the cycle decides what a failure means.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, HookOutcome};

/// Which chain a hook runs in; the events' own type, so telemetry reads it without knowing
/// this module.
pub use crate::events::HookPhase as Phase;

/// The SPEC's hook environment.
#[derive(Debug, Clone)]
pub struct HookEnv {
    pub phase: Phase,
    /// `CURRENT_CONFIG`: the release the hooks are about (absolute, real path).
    pub current: PathBuf,
    /// `PREVIOUS_CONFIG`: the other release, or `None` on a first deploy.
    pub previous: Option<PathBuf>,
    pub version: String,
    pub previous_version: String,
    /// `DEPLOY_ROLLBACK=1` for the post-update re-run after a rollback.
    pub rollback: bool,
    /// `DEPLOY_DIR`: the live path.
    pub deploy_dir: PathBuf,
    /// `DEPLOY_REMOTE`, credentials already masked.
    pub remote: String,
    /// `DEPLOY_SIGNER`: who signed `version` (minisign key id or git principal); empty
    /// without signed releases.
    pub signer: String,
    /// Fleet mode: `DEPLOY_FLEET` (the group) and `DEPLOY_CANARY` (this host is one of the
    /// version's canaries); `None`: both are left out.
    pub fleet: Option<FleetEnv>,
}

/// The hook variables of fleet mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetEnv {
    /// `DEPLOY_FLEET`.
    pub fleet: String,
    /// `DEPLOY_CANARY=1`.
    pub canary: bool,
}

impl HookEnv {
    fn vars(&self) -> Vec<(&'static str, OsString)> {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.as_os_str().to_owned())
                .unwrap_or_default()
        };
        let mut vars = vec![
            ("CURRENT_CONFIG", self.current.as_os_str().to_owned()),
            ("PREVIOUS_CONFIG", path(&self.previous)),
            ("DEPLOY_VERSION", self.version.clone().into()),
            (
                "DEPLOY_PREVIOUS_VERSION",
                self.previous_version.clone().into(),
            ),
            (
                "DEPLOY_PHASE",
                match self.phase {
                    Phase::Pre => "pre",
                    Phase::Post => "post",
                    Phase::Health => "health",
                }
                .into(),
            ),
            (
                "DEPLOY_ROLLBACK",
                if self.rollback { "1" } else { "0" }.into(),
            ),
            ("DEPLOY_DIR", self.deploy_dir.as_os_str().to_owned()),
            ("DEPLOY_REMOTE", self.remote.clone().into()),
            ("DEPLOY_SIGNER", self.signer.clone().into()),
        ];
        if let Some(fleet) = &self.fleet {
            vars.push(("DEPLOY_FLEET", fleet.fleet.clone().into()));
            vars.push(("DEPLOY_CANARY", if fleet.canary { "1" } else { "0" }.into()));
        }
        vars
    }
}

/// Variables never passed to hooks: the agent's own configuration (which may hold a remote
/// with credentials or S3 keys) and the AWS secrets the agent may have been given.
fn is_withheld(name: &[u8]) -> bool {
    name.starts_with(b"REPO_DEPLOY_")
        || matches!(
            name,
            b"AWS_SECRET_ACCESS_KEY" | b"AWS_SESSION_TOKEN" | b"AWS_ACCESS_KEY_ID"
        )
}

/// Why the chain stopped.
#[derive(Debug, Error)]
pub enum HookError {
    #[error("cannot list hook directory {0}: {1}")]
    List(PathBuf, io::Error),
    #[error("hook {name} could not be started: {error}")]
    Spawn { name: String, error: io::Error },
    #[error("hook {name} failed: {status}")]
    Failed { name: String, status: String },
    #[error(
        "hook {name} timed out after {secs}s and was killed with its process group (raise hook-timeout if it needs longer)"
    )]
    TimedOut { name: String, secs: u64 },
    #[error("hook {name} was stopped: repo-deploy is shutting down")]
    Cancelled { name: String },
}

/// The hooks of `dir`, in the order they run.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, HookError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HookError::List(dir.into(), e)),
    };
    let mut hooks = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HookError::List(dir.into(), e))?;
        let name = entry.file_name();
        let bytes = name.as_bytes();
        let path = entry.path();
        if bytes.starts_with(b".") || bytes.ends_with(b"~") {
            tracing::debug!("skipping {}: hidden or backup file name", path.display());
            continue;
        }
        // fs::metadata follows symlinks; a dangling one is skipped like any non-file.
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => hooks.push(path),
            Ok(_) => tracing::debug!(
                "skipping {}: not an executable regular file",
                path.display()
            ),
            Err(e) => tracing::debug!("skipping {}: {e}", path.display()),
        }
    }
    hooks.sort_by(|a, b| {
        a.file_name()
            .map(OsStrExt::as_bytes)
            .cmp(&b.file_name().map(OsStrExt::as_bytes))
    });
    Ok(hooks)
}

/// Run the hooks of `dir` in order, stopping at the first failure. `cancel` stops the
/// running hook (its process group is killed) and ends the chain with
/// [`HookError::Cancelled`]. Returns how many hooks ran.
pub async fn run_parts(
    dir: &Path,
    env: &HookEnv,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<usize, HookError> {
    let hooks = list(dir)?;
    for hook in &hooks {
        let result = run_one(hook, env, timeout, cancel).await;
        crate::events::emit(Event::HookRan {
            hook,
            phase: env.phase,
            outcome: match &result {
                Ok(()) => HookOutcome::Success,
                Err(HookError::Failed { .. }) => HookOutcome::Failed,
                Err(HookError::TimedOut { .. }) => HookOutcome::TimedOut,
                Err(HookError::Cancelled { .. }) => HookOutcome::Cancelled,
                Err(HookError::Spawn { .. } | HookError::List(..)) => HookOutcome::Error,
            },
        });
        result?;
    }
    Ok(hooks.len())
}

async fn run_one(
    hook: &Path,
    env: &HookEnv,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(), HookError> {
    let name = hook.file_name().map_or_else(
        || hook.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut cmd = Command::new(hook);
    for (key, _) in std::env::vars_os() {
        if is_withheld(key.as_bytes()) {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(env.vars())
        .current_dir(&env.current)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    tracing::debug!("running hook {name} ({:?})", env.phase);
    let mut child = cmd.spawn().map_err(|error| HookError::Spawn {
        name: name.clone(),
        error,
    })?;
    let pgid = child
        .id()
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(log_lines(s, name.clone())));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(log_lines(s, name.clone())));
    let kill_group = || {
        if let Some(pgid) = pgid {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    };
    let result = tokio::select! {
        status = child.wait() => status.map_err(|error| HookError::Spawn { name: name.clone(), error }),
        () = tokio::time::sleep(timeout) => {
            kill_group();
            let _ = child.wait().await;
            Err(HookError::TimedOut { name: name.clone(), secs: timeout.as_secs() })
        }
        () = cancel.cancelled() => {
            kill_group();
            let _ = child.wait().await;
            Err(HookError::Cancelled { name: name.clone() })
        }
    };
    // The hook has exited. Its output is drained until every writer closes the pipes; a
    // process it left running in the background may hold them open forever, so give the
    // readers a bounded time and then stop listening (that process is left alone).
    for task in [out, err].into_iter().flatten() {
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let status = result?;
    if status.success() {
        tracing::debug!("hook {name} succeeded");
        Ok(())
    } else {
        Err(HookError::Failed {
            name,
            status: describe(status),
        })
    }
}

/// "exit code N" or "killed by signal N".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Longest line logged whole; longer lines are split, so a hook cannot grow our memory.
const MAX_LINE: usize = 8 * 1024;

/// Log a hook's output line by line under its name, holding at most one line in memory.
async fn log_lines(mut stream: impl AsyncRead + Unpin, name: String) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' || line.len() >= MAX_LINE {
                emit(&name, &line);
                line.clear();
                if b == b'\n' {
                    continue;
                }
            }
            line.push(b);
        }
    }
    if !line.is_empty() {
        emit(&name, &line);
    }
}

fn emit(name: &str, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    tracing::info!("hook {name}: {}", text.trim_end_matches('\r'));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// An error names its cause in its message, so it must not also be its `source`: a chain
    /// printed with `{:#}` (as the daemon logs) would show the cause twice.
    #[test]
    fn a_cause_is_printed_once_in_a_chain() {
        let cause = || io::Error::from_raw_os_error(20);
        let errors = [
            HookError::List(PathBuf::from("/etc/passwd"), cause()),
            HookError::Spawn {
                name: "10-x".into(),
                error: cause(),
            },
        ];
        for e in errors {
            let chain = format!("{:#}", anyhow::Error::new(e).context("check failed"));
            assert_eq!(chain.matches("Not a directory").count(), 1, "{chain}");
        }
    }

    fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write hook");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn env(current: &Path) -> HookEnv {
        HookEnv {
            phase: Phase::Pre,
            current: current.into(),
            previous: None,
            version: "v2".into(),
            previous_version: String::new(),
            rollback: false,
            deploy_dir: "/d/current".into(),
            remote: "https://***@h/a.zip".into(),
            signer: String::new(),
            fleet: None,
        }
    }

    #[test]
    fn listing_order_and_skipping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        script(d, "20-b", "true", 0o755);
        script(d, "10-a", "true", 0o755);
        script(d, "B-upper", "true", 0o755);
        script(d, ".hidden", "true", 0o755);
        script(d, "backup~", "true", 0o755);
        script(d, "noexec", "true", 0o644);
        fs::create_dir(d.join("subdir")).expect("mkdir");
        symlink(d.join("10-a"), d.join("30-link")).expect("symlink");
        symlink(d.join("missing"), d.join("40-dangling")).expect("symlink");
        let names: Vec<String> = list(d)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-a", "20-b", "30-link", "B-upper"]);
        assert!(list(&d.join("nope")).expect("missing dir").is_empty());
    }

    #[tokio::test]
    async fn environment_and_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let hooks = dir.path().join("hooks");
        fs::create_dir(&hooks).expect("mkdir");
        let l = log.display();
        script(
            &hooks,
            "1",
            &format!(
                "echo \"1 $DEPLOY_PHASE $DEPLOY_VERSION [$PREVIOUS_CONFIG] $DEPLOY_ROLLBACK $DEPLOY_REMOTE $(pwd)\" >> {l}"
            ),
            0o755,
        );
        script(
            &hooks,
            "2",
            &format!("echo \"2 ${{REPO_DEPLOY_SECRET:-unset}}\" >> {l}"),
            0o755,
        );
        let n = run_parts(
            &hooks,
            &env(dir.path()),
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await
        .expect("hooks");
        assert_eq!(n, 2);
        let text = fs::read_to_string(&log).expect("log");
        let cwd = dir.path().canonicalize().expect("real");
        assert_eq!(
            text,
            format!(
                "1 pre v2 [] 0 https://***@h/a.zip {}\n2 unset\n",
                cwd.display()
            )
        );
    }

    #[tokio::test]
    async fn first_failure_stops_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        script(dir.path(), "1", "exit 3", 0o755);
        script(
            dir.path(),
            "2",
            &format!("touch {}", marker.display()),
            0o755,
        );
        let err = run_parts(
            dir.path(),
            &env(dir.path()),
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await
        .expect_err("fails");
        assert!(
            matches!(&err, HookError::Failed { name, status } if name == "1" && status == "exit code 3"),
            "{err}"
        );
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("grandchild.pid");
        script(
            dir.path(),
            "hang",
            &format!("sleep 300 & echo $! > {}\nwait", pidfile.display()),
            0o755,
        );
        let err = run_parts(
            dir.path(),
            &env(dir.path()),
            Duration::from_millis(500),
            &CancellationToken::new(),
        )
        .await
        .expect_err("times out");
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
        let pid: i32 = fs::read_to_string(&pidfile)
            .expect("pid")
            .trim()
            .parse()
            .expect("number");
        // The grandchild was killed with the group; it may linger only as a zombie of init.
        // SIGKILL is delivered asynchronously: a process on its way out still shows `R` for a
        // moment, so allow it a few seconds to die (an unkilled `sleep 300` never would).
        let stat = || fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let dead = |state: &str| state.is_empty() || state.contains(") Z");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !dead(&stat()) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let state = stat();
        assert!(dead(&state), "grandchild still running: {state}");
    }

    #[tokio::test]
    async fn cancel_stops_a_running_hook() {
        let dir = tempfile::tempdir().expect("tempdir");
        script(dir.path(), "hang", "sleep 300", 0o755);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move { c.cancel() });
        let err = run_parts(
            dir.path(),
            &env(dir.path()),
            Duration::from_secs(60),
            &cancel,
        )
        .await
        .expect_err("cancelled");
        assert!(matches!(err, HookError::Cancelled { .. }), "{err}");
    }

    #[tokio::test]
    async fn background_process_holding_stdout_does_not_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        script(dir.path(), "bg", "sleep 5 &\necho started", 0o755);
        let n = run_parts(
            dir.path(),
            &env(dir.path()),
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await
        .expect("ok");
        assert_eq!(n, 1);
    }
}
