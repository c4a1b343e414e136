//! Running git: one command with its environment set (credentials through a helper that reads
//! the child's environment, the user's git settings that would redirect us cleared), in a
//! session of its own with stdin closed, bounded by a total time or by a silence on stderr,
//! and killed with its whole process group on timeout or cancellation. What it printed on
//! stderr is reduced to the lines that say why it failed ([`summarize`]).
//!
//! The rest of the agent's environment reaches git as is: `GIT_SSH_COMMAND`, `GIT_SSH`,
//! `SSH_AUTH_SOCK` and the user's ssh configuration are how an operator points git's ssh at
//! a key, a `known_hosts` or a host alias.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::endpoint::{Credentials, Endpoint};
use crate::remote::mask;

/// Bound on a local git command (reading trees, writing files): generous, a backstop only.
const LOCAL_LIMIT: Duration = Duration::from_secs(3600);
/// After git exits, how long its output pipes may stay open (a backgrounded ssh master).
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How much of a command's stderr is kept for its error message.
const STDERR_TAIL: usize = 16 * 1024;

/// Environment of the credential helper, set on the git child only.
const ENV_PROTOCOL: &str = "REPO_DEPLOY_GIT_PROTOCOL";
const ENV_HOST: &str = "REPO_DEPLOY_GIT_HOST";
const ENV_USERNAME: &str = "REPO_DEPLOY_GIT_USERNAME";
const ENV_PASSWORD: &str = "REPO_DEPLOY_GIT_PASSWORD";

/// A credential helper (`git help credentials`) that answers `get` with the URL's credentials,
/// only for the protocol and host they were given for (not a submodule's or a redirect's
/// other host). It sees names of environment variables, never the secret itself.
const HELPER: &str = "!f() { test \"$1\" = get || exit 0; p=; h=; \
while IFS= read -r l; do case \"$l\" in protocol=*) p=${l#protocol=};; host=*) h=${l#host=};; esac; done; \
test \"$p\" = \"$REPO_DEPLOY_GIT_PROTOCOL\" && test \"$h\" = \"$REPO_DEPLOY_GIT_HOST\" || exit 0; \
printf 'username=%s\\npassword=%s\\n' \"$REPO_DEPLOY_GIT_USERNAME\" \"$REPO_DEPLOY_GIT_PASSWORD\"; }; f";

/// Variables that would point git at another repository, index or configuration than ours.
const CLEARED_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_GRAFT_FILE",
    "GIT_REPLACE_REF_BASE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_QUARANTINE_PATH",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_PROTOCOL_FROM_USER",
];

/// How long a git command may run.
#[derive(Debug, Clone, Copy)]
pub(super) enum Limit {
    /// At most this long in all (a question to a remote; local work).
    Total(Duration),
    /// Until its stderr has been silent this long (a transfer with `--progress`).
    Silence(Duration),
}

/// Why a git command failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum GitError {
    #[error("cannot run `git` (git remotes need git installed and on PATH): {0}")]
    Spawn(io::Error),
    #[error("git {0} did not finish within {1}s and was stopped")]
    TimedOut(&'static str, u64),
    #[error("git {0} stalled: no progress for {1}s (stall-timeout)")]
    Stalled(&'static str, u64),
    #[error("interrupted")]
    Cancelled,
    #[error("git {what} failed ({status}): {message}")]
    Failed {
        what: &'static str,
        status: String,
        message: String,
    },
    #[error("cannot {0}: {1}")]
    Io(&'static str, io::Error),
}

/// One git command.
pub(super) struct Git<'a> {
    /// The subcommand, for messages.
    pub(super) what: &'static str,
    pub(super) git_dir: Option<&'a Path>,
    pub(super) args: Vec<OsString>,
    pub(super) envs: Vec<(&'static str, OsString)>,
    pub(super) credentials: Option<Credentials>,
    pub(super) untrusted: bool,
    pub(super) limit: Limit,
}

impl<'a> Git<'a> {
    pub(super) fn new(what: &'static str, git_dir: Option<&'a Path>) -> Git<'a> {
        Git {
            what,
            git_dir,
            args: Vec::new(),
            envs: Vec::new(),
            credentials: None,
            untrusted: false,
            limit: Limit::Total(LOCAL_LIMIT),
        }
    }

    /// Talk to this endpoint: its credentials and protocol policy.
    pub(super) fn endpoint(mut self, endpoint: &Endpoint) -> Self {
        self.credentials = endpoint.credentials.clone();
        self.untrusted = endpoint.untrusted;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        for (key, _) in std::env::vars_os() {
            let name = key.as_encoded_bytes();
            let cleared = name.starts_with(b"REPO_DEPLOY_")
                || name.starts_with(b"GIT_CONFIG_KEY_")
                || name.starts_with(b"GIT_CONFIG_VALUE_")
                || CLEARED_ENV.iter().any(|c| c.as_bytes() == name);
            if cleared {
                cmd.env_remove(&key);
            }
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0");
        if let Limit::Silence(stall) = self.limit {
            // HTTP transfers slower than 1 byte/s for `stall` seconds are aborted by git itself.
            cmd.env("GIT_HTTP_LOW_SPEED_LIMIT", "1").env(
                "GIT_HTTP_LOW_SPEED_TIME",
                stall.as_secs().max(1).to_string(),
            );
        }
        if let Some(c) = &self.credentials {
            // An empty helper first resets the user's helpers: the URL's credentials win.
            cmd.env("GIT_CONFIG_COUNT", "2")
                .env("GIT_CONFIG_KEY_0", "credential.helper")
                .env("GIT_CONFIG_VALUE_0", "")
                .env("GIT_CONFIG_KEY_1", "credential.helper")
                .env("GIT_CONFIG_VALUE_1", HELPER)
                .env(ENV_PROTOCOL, &c.protocol)
                .env(ENV_HOST, &c.host)
                .env(ENV_USERNAME, &c.username)
                .env(ENV_PASSWORD, c.password.expose());
        }
        if self.untrusted {
            cmd.env("GIT_PROTOCOL_FROM_USER", "0");
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (*k, v)));
        if let Some(dir) = self.git_dir {
            let mut arg = OsString::from("--git-dir=");
            arg.push(dir);
            cmd.arg(arg);
        }
        cmd.args(&self.args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: between fork and exec only async-signal-safe system calls run (setsid,
        // umask), touching no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own: no terminal for ssh or git to prompt on, and one
                // process group to kill.
                rustix::process::setsid()?;
                // Checked-out files get the committed modes (0644/0755), whatever our umask.
                rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
                Ok(())
            });
        }
        cmd
    }

    /// Run to completion; stdout on success.
    pub(super) async fn run(self, cancel: &CancellationToken) -> Result<Vec<u8>, GitError> {
        let what = self.what;
        let (status, out, message) = self.output(cancel).await?;
        if status.success() {
            if !message.is_empty() {
                tracing::debug!("git {what}: {message}");
            }
            Ok(out)
        } else {
            Err(GitError::Failed {
                what,
                status: describe(status),
                message,
            })
        }
    }

    /// Run to completion, whatever the exit status: the status, stdout and a summary of
    /// stderr (for `verify-commit`, whose verdict is its status, never its words).
    pub(super) async fn output(
        self,
        cancel: &CancellationToken,
    ) -> Result<(ExitStatus, Vec<u8>, String), GitError> {
        let what = self.what;
        let mut child = self.command().spawn().map_err(GitError::Spawn)?;
        let group = child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?));
        let kill = || {
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
        };
        let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut out_buf, mut err_buf) = (vec![0u8; 64 * 1024], vec![0u8; 8 * 1024]);
        let (span, silence) = match self.limit {
            Limit::Total(d) => (d, false),
            Limit::Silence(d) => (d, true),
        };
        let mut deadline = Instant::now() + span;
        let mut status: Option<ExitStatus> = None;
        let mut grace = Instant::now();
        while status.is_none() || stdout.is_some() || stderr.is_some() {
            tokio::select! {
                s = child.wait(), if status.is_none() => {
                    status = Some(s.map_err(|e| GitError::Io("wait for git", e))?);
                    grace = Instant::now() + EXIT_GRACE;
                }
                n = read_some(&mut stdout, &mut out_buf) => match n {
                    Ok(0) | Err(_) => stdout = None,
                    Ok(n) => out.extend_from_slice(&out_buf[..n]),
                },
                n = read_some(&mut stderr, &mut err_buf) => match n {
                    Ok(0) | Err(_) => stderr = None,
                    Ok(n) => {
                        err.extend_from_slice(&err_buf[..n]);
                        if err.len() > 2 * STDERR_TAIL {
                            err.drain(..err.len() - STDERR_TAIL);
                        }
                        if silence {
                            deadline = Instant::now() + span;
                        }
                    }
                },
                () = tokio::time::sleep_until(deadline), if status.is_none() => {
                    kill();
                    let _ = child.wait().await;
                    let secs = span.as_secs();
                    return Err(if silence { GitError::Stalled(what, secs) } else { GitError::TimedOut(what, secs) });
                }
                () = tokio::time::sleep_until(grace), if status.is_some() => break,
                () = cancel.cancelled(), if status.is_none() => {
                    kill();
                    let _ = child.wait().await;
                    return Err(GitError::Cancelled);
                }
            }
        }
        let message = summarize(&err);
        match status {
            Some(s) => Ok((s, out, message)),
            None => Err(GitError::Io(
                "wait for git",
                io::Error::other("no exit status"),
            )),
        }
    }
}

/// Read from a stream that may be closed already (then wait forever: `select!` moves on).
async fn read_some<R: AsyncRead + Unpin>(
    stream: &mut Option<R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// What ssh (or a server) prints before git's own `fatal:` when it says why: kept in the
/// summary, since git's line ("Could not read from remote repository") says only that it
/// failed (bug 9 of issue 11). Lines starting with `ssh:` are kept too.
const REASONS: &[&str] = &[
    "Host key verification failed",
    "host key",
    "HOST IDENTIFICATION HAS CHANGED",
    "Permission denied",
    "Too many authentication failures",
    "Connection refused",
    "Connection timed out",
    "Connection closed",
    "Connection reset",
    "Could not resolve hostname",
    "No route to host",
    "Network is unreachable",
    "kex_exchange_identification",
    "Load key",
    "no such identity",
    "Bad owner or permissions",
    "ERROR:",
];

/// What to do about the commonest SSH failures, after ssh's reason.
const HINT_UNKNOWN_HOST: &str = "hint: ssh does not know the server's host key; add it to the \
known_hosts of the user running the agent, e.g. `ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts` \
(after checking its fingerprint), or name a file with `UserKnownHostsFile` in that user's ssh config";
const HINT_CHANGED_HOST: &str = "hint: the server's host key is not the one in known_hosts; if \
the change is expected, replace the old entry (`ssh-keygen -R HOST`, then `ssh-keyscan`), \
otherwise something may be intercepting the connection";
const HINT_REFUSED_KEY: &str = "hint: the server refused every key offered; check the key the \
agent's user offers (`IdentityFile` in its ssh config, or `GIT_SSH_COMMAND`) and that its public \
half is in the server's authorized_keys for the user in the URL";

/// git's stderr in one line: what ssh said about why (see [`REASONS`]), then git's first
/// `fatal:`/`error:` line on (a few lines), else its last lines; progress meters dropped, URLs
/// masked, and a hint for the commonest SSH failures.
fn summarize(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("% (") && !l.ends_with(", done."))
        .collect();
    let first_error = lines
        .iter()
        .position(|l| l.starts_with("fatal:") || l.starts_with("error:"));
    let mut chosen: Vec<&str> = Vec::new();
    match first_error {
        Some(i) => {
            let why = lines[..i]
                .iter()
                .filter(|l| l.starts_with("ssh:") || REASONS.iter().any(|r| l.contains(r)));
            for line in why {
                if !chosen.contains(line) && chosen.len() < 3 {
                    chosen.push(line);
                }
            }
            chosen.extend(&lines[i..lines.len().min(i + 4)]);
        }
        None => chosen.extend(&lines[lines.len().saturating_sub(2)..]),
    }
    let mut summary = chosen.iter().map(|l| mask(l)).collect::<Vec<_>>().join(" ");
    if let Some(hint) = ssh_hint(&lines) {
        summary.push_str(" (");
        summary.push_str(hint);
        summary.push(')');
    }
    summary
}

/// The hint for an SSH failure that ssh's own lines identify.
fn ssh_hint(lines: &[&str]) -> Option<&'static str> {
    let said = |what: &str| lines.iter().any(|l| l.contains(what));
    if said("HOST IDENTIFICATION HAS CHANGED") {
        Some(HINT_CHANGED_HOST)
    } else if said("Host key verification failed") {
        Some(HINT_UNKNOWN_HOST)
    } else if said("Permission denied (publickey") {
        Some(HINT_REFUSED_KEY)
    } else {
        None
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::endpoint::Endpoint;
    use super::*;

    #[tokio::test]
    async fn the_credential_helper_answers_only_for_its_host() {
        let endpoint =
            Endpoint::parse("https://deploy:pa55word@git.example/app.git").expect("parse");
        let ask = |host: &'static str| {
            let endpoint = endpoint.clone();
            async move {
                let mut git = Git::new("credential", None).endpoint(&endpoint);
                git.args = vec!["credential".into(), "fill".into()];
                let mut cmd = git.command();
                cmd.stdin(Stdio::piped())
                    .env("GIT_CONFIG_NOSYSTEM", "1")
                    .env("HOME", "/nonexistent")
                    .env_remove("GIT_ASKPASS")
                    .env_remove("SSH_ASKPASS");
                let mut child = cmd.spawn().expect("spawn git credential");
                let mut stdin = child.stdin.take().expect("stdin");
                tokio::io::AsyncWriteExt::write_all(
                    &mut stdin,
                    format!("protocol=https\nhost={host}\n\n").as_bytes(),
                )
                .await
                .expect("write");
                drop(stdin);
                let out = child.wait_with_output().await.expect("wait");
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        let answer = ask("git.example").await;
        assert!(
            answer.contains("username=deploy") && answer.contains("password=pa55word"),
            "{answer}"
        );
        let other = ask("evil.example").await;
        assert!(!other.contains("pa55word"), "{other}");
    }

    const READ_FAILED: &str = "fatal: Could not read from remote repository.\n\n\
        Please make sure you have the correct access rights\nand the repository exists.\n";

    #[test]
    fn ssh_says_why_before_gits_fatal_line_and_that_is_kept_with_a_hint() {
        let unknown = format!(
            "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\n\
             Host key verification failed.\r\n{READ_FAILED}"
        );
        let s = summarize(unknown.as_bytes());
        assert!(
            s.starts_with("No ED25519 host key is known for [127.0.0.1]:2222")
                && s.contains("Host key verification failed. fatal: Could not read"),
            "{s}"
        );
        assert!(
            s.contains("ssh-keyscan") && s.contains("known_hosts"),
            "{s}"
        );

        let refused = format!("git@127.0.0.1: Permission denied (publickey).\r\n{READ_FAILED}");
        let s = summarize(refused.as_bytes());
        assert!(
            s.starts_with("git@127.0.0.1: Permission denied (publickey). fatal:"),
            "{s}"
        );
        assert!(s.contains("IdentityFile"), "{s}");

        let changed = format!(
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
             @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
             Host key verification failed.\n{READ_FAILED}"
        );
        assert!(summarize(changed.as_bytes()).contains("ssh-keygen -R"));

        let refused_port =
            format!("ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n{READ_FAILED}");
        let s = summarize(refused_port.as_bytes());
        assert!(
            s.starts_with("ssh: connect to host 127.0.0.1 port 1"),
            "{s}"
        );
        assert!(
            !s.contains("hint"),
            "no hint for what it does not know: {s}"
        );
    }

    #[test]
    fn progress_and_chatter_before_an_error_are_left_out() {
        let out = b"remote: Enumerating objects: 3, done.\r\n\
            Receiving objects:  50% (1/2)\rReceiving objects: 100% (2/2), done.\n\
            Warning: Permanently added '[127.0.0.1]:2222' (ED25519) to the list of known hosts.\n\
            fatal: remote error: upload-pack: not our ref 1234\n";
        assert_eq!(
            summarize(out),
            "fatal: remote error: upload-pack: not our ref 1234"
        );
        assert_eq!(summarize(b"one\ntwo\nthree\n"), "two three");
    }
}
