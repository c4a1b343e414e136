//! The operator's commands: `status`, `releases`, `rollback` (hooks, pinning, the lock, and
//! the hand-over to a running daemon through `${directory}/.control.sock`).

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use crate::common::*;

fn app(version: &str) -> Vec<Entry> {
    vec![file("version.txt", format!("{version}\n"), 0o644)]
}

fn live_version(env: &Env) -> String {
    fs::read_to_string(env.live_release().join("version.txt"))
        .expect("version.txt")
        .trim()
        .to_string()
}

/// Publish `version` at the local ZIP remote of `env`.
fn publish(env: &Env, remote: &std::path::Path, version: &str) {
    let tmp = env.root.join("next.zip");
    zip(&tmp, &app(version));
    fs::rename(&tmp, remote).expect("publish");
}

/// Publish `version` at the local ZIP remote of `env` and deploy it with -f.
fn deploy(env: &Env, remote: &std::path::Path, version: &str) {
    publish(env, remote, version);
    env.fetch(remote.to_str().expect("utf8")).expect_code(0);
    assert_eq!(live_version(env), version);
}

/// A pre-update hook that, while `out/gate` exists, says so in `out/entered` and waits for the
/// gate to go: it makes whatever runs it hold the deploy lock as long as the test wants.
fn gate_pre_hooks(env: &Env) {
    let (gate, entered) = (env.out("gate"), env.out("entered"));
    env.pre_hook(
        "10-gate",
        &format!(
            "echo \"pre $(cat \"$CURRENT_CONFIG/version.txt\")\" >> {log}\n\
             if [ -e {gate} ]; then touch {entered}; while [ -e {gate} ]; do sleep 0.05; done; fi",
            log = env.out("hooks.log").display(),
            gate = gate.display(),
            entered = entered.display()
        ),
    );
    env.post_hook(
        "10-log",
        &format!(
            "echo \"post $(cat \"$CURRENT_CONFIG/version.txt\")\" >> {}",
            env.out("hooks.log").display()
        ),
    );
    fs::write(&gate, "").expect("close the gate");
}

/// The message of a `rollback` refused because the lock holder takes no requests.
const TAKES_NO_REQUESTS: &str = "takes no requests (a one-shot -f run or another rollback)";

/// A `rollback` that meets a lock held by a run without a control socket: exit 5 at once,
/// with the message, and nothing changed.
#[track_caller]
fn expect_refused_at_once(env: &Env, r: &str) {
    let out = env.run(&["-r", r, "rollback"]);
    out.expect_code(5);
    assert!(
        out.elapsed < Duration::from_secs(10),
        "exit 5 at once, not after waiting: {:?}",
        out.elapsed
    );
    assert!(out.stderr.contains(TAKES_NO_REQUESTS), "{}", out.dump());
    assert!(
        out.stderr.contains(env.deploy.to_str().expect("utf8")),
        "the message names the directory: {}",
        out.dump()
    );
}

#[test]
fn status_and_releases_show_the_live_release_and_the_last_check() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    deploy(&env, &remote, "v2");
    let r = remote.to_str().expect("utf8");

    let out = env.run(&["-r", r, "status"]);
    out.expect_code(0);
    assert!(out.stdout.contains("deployed"), "{}", out.dump());
    assert!(out.stdout.contains("2 on disk"), "{}", out.dump());
    assert!(
        out.stdout
            .contains(env.live_release().to_str().expect("utf8")),
        "{}",
        out.dump()
    );

    let out = env.run(&["-r", r, "status", "--json"]);
    out.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
    assert_eq!(json["last_check"]["result"], "deployed");
    assert_eq!(
        json["live"]["path"],
        env.live_release().to_str().expect("utf8")
    );
    assert!(json["pinned"].is_null());

    let out = env.run(&["-r", r, "releases"]);
    out.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.dump());
    assert!(
        lines[0].starts_with("* "),
        "newest first, live marked: {}",
        out.dump()
    );
    let live_name = env
        .live_release()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(lines[0].contains(&live_name), "{}", out.dump());
}

#[test]
fn status_records_a_failed_check_and_keeps_the_last_success() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    fs::write(&remote, b"not a zip").expect("break the remote");
    let r = remote.to_str().expect("utf8");
    env.fetch(r).expect_code(1);
    let out = env.run(&["-r", r, "status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["last_check"]["result"], "failed", "{}", out.dump());
    assert!(
        json["last_check"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(
        json["last_check"]["last_success"].as_str().is_some(),
        "{}",
        out.dump()
    );
}

#[test]
fn rollback_switches_back_runs_hooks_and_pins_until_the_remote_changes() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    let v1 = env.live_release();
    deploy(&env, &remote, "v2");
    let v2 = env.live_release();
    let r = remote.to_str().expect("utf8");
    let log = env.out("hooks.log");
    for (phase, hook) in [("pre", &env.pre), ("post", &env.post)] {
        env.hook(
            hook,
            "10-log",
            &format!(
                "echo \"{phase} $CURRENT_CONFIG $PREVIOUS_CONFIG $DEPLOY_ROLLBACK\" >> {}",
                log.display()
            ),
        );
    }

    env.run(&["-r", r, "rollback"]).expect_code(0);
    assert_eq!(env.live_release(), v1);
    assert_eq!(
        read_lines(&log),
        vec![
            format!("pre {} {} 0", v1.display(), v2.display()),
            format!("post {} {} 0", v1.display(), v2.display())
        ]
    );
    assert!(v2.is_dir(), "the release rolled back from stays on disk");

    // The remote still offers v2: the pinned v1 stays live and no hook runs.
    env.clear_out("hooks.log");
    env.fetch(r).expect_code(0);
    assert_eq!(env.live_release(), v1);
    assert!(read_lines(&log).is_empty(), "no hook may run while pinned");
    let out = env.run(&["-r", r, "status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert!(
        json["pinned"]["release"].as_str().is_some(),
        "{}",
        out.dump()
    );

    // The remote moves on: the pin is lifted and v3 deploys.
    deploy(&env, &remote, "v3");
    let out = env.run(&["-r", r, "status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert!(json["pinned"].is_null(), "{}", out.dump());
}

#[test]
fn rollback_to_a_named_version() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    for v in ["v1", "v2", "v3"] {
        deploy(&env, &remote, v);
    }
    let first = env.releases().into_iter().min().expect("a release");
    let name = first
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let r = remote.to_str().expect("utf8");
    env.run(&["-r", r, "rollback", "--to", &name])
        .expect_code(0);
    assert_eq!(live_version(&env), "v1");
    let out = env.run(&["-r", r, "rollback", "--to", "no-such-version"]);
    out.expect_code(1);
    assert!(out.stderr.contains("no-such-version"), "{}", out.dump());
    assert_eq!(live_version(&env), "v1");
}

#[test]
fn rollback_blocked_by_a_pre_hook_changes_nothing() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    deploy(&env, &remote, "v2");
    env.pre_hook("10-no", "exit 1");
    let r = remote.to_str().expect("utf8");
    env.run(&["-r", r, "rollback"]).expect_code(3);
    assert_eq!(live_version(&env), "v2");
    assert_eq!(
        env.releases().len(),
        2,
        "no release is removed by a blocked rollback"
    );
}

#[test]
fn rollback_with_a_failing_post_hook_restores_the_live_release() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    deploy(&env, &remote, "v2");
    env.post_hook("10-no", "test \"$DEPLOY_ROLLBACK\" = 1");
    let r = remote.to_str().expect("utf8");
    env.run(&["-r", r, "rollback"]).expect_code(4);
    assert_eq!(live_version(&env), "v2");
    assert_eq!(env.releases().len(), 2);
}

#[test]
fn rollback_without_another_release_fails_cleanly() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    let out = env.run(&["-r", remote.to_str().expect("utf8"), "rollback"]);
    out.expect_code(1);
    assert!(out.stderr.contains("no other release"), "{}", out.dump());
    assert_eq!(live_version(&env), "v1");
}

#[test]
fn rollback_while_a_daemon_runs_is_done_by_the_daemon() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    deploy(&env, &remote, "v2");
    let r = remote.to_str().expect("utf8");
    let mut daemon = env.cmd().args(["-r", r, "-s", "0 0 1 1 *"]).spawn();
    let status = env.deploy.join("status.json");
    daemon.wait_for("the first check", || {
        fs::read_to_string(&status).is_ok_and(|s| s.contains("unchanged"))
    });
    let out = env.run(&["-r", r, "rollback"]);
    out.expect_code(0);
    assert_eq!(live_version(&env), "v1");
    assert!(
        daemon.stderr().contains("rollback requested"),
        "{}",
        daemon.stderr()
    );
    // The daemon keeps the pin: a check now leaves v1 live.
    fs::remove_file(&status).expect("clear status");
    daemon.signal(libc::SIGUSR1);
    daemon.wait_for("a check after the rollback", || {
        fs::read_to_string(&status).is_ok_and(|s| s.contains("unchanged"))
    });
    assert_eq!(live_version(&env), "v1");
    assert!(daemon.is_running());
}

#[test]
fn rollback_refused_by_the_daemon_reports_its_exit_code() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    let r = remote.to_str().expect("utf8");
    let mut daemon = env.cmd().args(["-r", r, "-s", "0 0 1 1 *"]).spawn();
    daemon.wait_for("the first check", || {
        fs::read_to_string(env.deploy.join("status.json")).is_ok_and(|s| s.contains("unchanged"))
    });
    let out = env.run(&["-r", r, "rollback"]);
    out.expect_code(1);
    assert!(out.stderr.contains("no other release"), "{}", out.dump());
    assert!(!env.deploy.join("rollback-request.json").exists());
    assert!(!env.deploy.join("rollback-result.json").exists());
}

/// Issue 11, bug 4: the old hand-over sent SIGUSR2 to the pid in the lock file; a `-f` run
/// holding the lock never answered, and the rollback waited 4 × hook-timeout + 60 s.
#[test]
fn issue_11_rollback_while_a_one_shot_run_holds_the_lock_exits_5_and_leaves_it_running() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    deploy(&env, &remote, "v2");
    let r = remote.to_str().expect("utf8");
    gate_pre_hooks(&env);
    publish(&env, &remote, "v3");
    let mut once = env.cmd().args(["-f", "-r", r]).spawn();
    once.wait_for("the -f run in its pre-update hook", || {
        env.out("entered").exists()
    });

    expect_refused_at_once(&env, r);

    assert!(once.is_running(), "the -f run is not killed");
    fs::remove_file(env.out("gate")).expect("open the gate");
    let status = once.wait_exit(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", once.stderr());
    assert_eq!(live_version(&env), "v3");
    assert_eq!(env.out_lines("hooks.log"), vec!["pre v3", "post v3"]);
}

/// Issue 11, bug 4: the old hand-over killed a `rollback` holding the lock with SIGUSR2 (it
/// has no handler: the default action ends it).
#[test]
fn issue_11_rollback_while_another_rollback_holds_the_lock_exits_5_and_leaves_it_running() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    deploy(&env, &remote, "v2");
    let r = remote.to_str().expect("utf8");
    gate_pre_hooks(&env);
    let mut first = env.cmd().args(["-r", r, "rollback"]).spawn();
    first.wait_for("the first rollback in its pre-update hook", || {
        env.out("entered").exists()
    });

    expect_refused_at_once(&env, r);

    assert!(first.is_running(), "the first rollback is not killed");
    fs::remove_file(env.out("gate")).expect("open the gate");
    let status = first.wait_exit(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", first.stderr());
    assert_eq!(live_version(&env), "v1");
    assert_eq!(env.out_lines("hooks.log"), vec!["pre v1", "post v1"]);
}

/// A rollback asked during the daemon's check waits for it, then runs: never both at once.
#[test]
fn rollback_requested_during_a_daemon_check_runs_after_it() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    deploy(&env, &remote, "v2");
    let r = remote.to_str().expect("utf8");
    gate_pre_hooks(&env);
    publish(&env, &remote, "v3");
    let mut daemon = env.cmd().args(["-r", r, "-s", "0 0 1 1 *"]).spawn();
    daemon.wait_for("the first check in its pre-update hook", || {
        env.out("entered").exists()
    });
    let mut rollback = env.cmd().args(["-r", r, "rollback"]).spawn();
    rollback.wait_for("the request queued by the daemon", || {
        daemon.stderr().contains("rollback requested")
    });
    assert!(rollback.is_running(), "{}", rollback.stderr());
    assert_eq!(
        env.out_lines("hooks.log"),
        vec!["pre v3"],
        "nothing ran meanwhile"
    );

    fs::remove_file(env.out("gate")).expect("open the gate");
    let status = rollback.wait_exit(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", rollback.stderr());
    assert_eq!(live_version(&env), "v2", "the release before v3");
    assert_eq!(
        env.out_lines("hooks.log"),
        vec!["pre v3", "post v3", "pre v2", "post v2"],
        "the check's hooks, then the rollback's"
    );
    assert!(daemon.is_running());
}

/// A daemon killed with SIGKILL leaves its socket; the next daemon takes the name over (it
/// holds the lock) and serves rollbacks; a clean stop removes it.
#[test]
fn a_socket_left_by_a_killed_daemon_is_rebound_by_the_next_one() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    deploy(&env, &remote, "v2");
    let r = remote.to_str().expect("utf8");
    let socket = env.deploy.join(".control.sock");
    let status = env.deploy.join("status.json");
    let args = ["-r", r, "-s", "0 0 1 1 *"];

    let mut killed = env.cmd().args(args).spawn();
    killed.wait_for("the first check", || {
        fs::read_to_string(&status).is_ok_and(|s| s.contains("unchanged"))
    });
    let meta = fs::symlink_metadata(&socket).expect("the control socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner only");
    killed.signal(libc::SIGKILL);
    killed.wait_exit(Duration::from_secs(10));
    assert!(socket.exists(), "SIGKILL leaves the socket");

    fs::remove_file(&status).expect("clear status");
    let mut daemon = env.cmd().args(args).spawn();
    daemon.wait_for("the new daemon's first check", || {
        fs::read_to_string(&status).is_ok_and(|s| s.contains("unchanged"))
    });
    let out = env.run(&["-r", r, "rollback"]);
    out.expect_code(0);
    assert_eq!(live_version(&env), "v1");
    assert!(
        daemon.stderr().contains("rollback requested"),
        "{}",
        daemon.stderr()
    );

    daemon.signal(libc::SIGTERM);
    let stopped = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(stopped.code(), Some(0), "{}", daemon.stderr());
    assert!(!socket.exists(), "a clean stop removes the socket");
    env.assert_clean();
}

/// With no agent running, a socket a killed daemon left is only a file: `rollback` takes the
/// lock, does the work itself, and removes it.
#[test]
fn rollback_without_an_agent_ignores_and_removes_a_stale_socket() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    deploy(&env, &remote, "v1");
    deploy(&env, &remote, "v2");
    let socket = env.deploy.join(".control.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("a stale socket"));
    env.run(&["-r", remote.to_str().expect("utf8"), "rollback"])
        .expect_code(0);
    assert_eq!(live_version(&env), "v1");
    assert!(!socket.exists());
}
