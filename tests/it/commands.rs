//! The operator's commands: `status`, `releases`, `rollback` (hooks, pinning, the lock).

use std::fs;

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

/// Publish `version` at the local ZIP remote of `env` and deploy it with -f.
fn deploy(env: &Env, remote: &std::path::Path, version: &str) {
    let tmp = env.root.join("next.zip");
    zip(&tmp, &app(version));
    fs::rename(&tmp, remote).expect("publish");
    env.fetch(remote.to_str().expect("utf8")).expect_code(0);
    assert_eq!(live_version(env), version);
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
        daemon.stderr().contains("SIGUSR2: rollback requested"),
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
