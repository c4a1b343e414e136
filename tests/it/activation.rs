//! Activation modes (`activate = symlink | exchange | sync`): every mode deploys, rolls back
//! after a failing post-update hook, and serves the `rollback` command.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::common::*;

fn publish(env: &Env, version: &str) -> String {
    publish_with_id(env, version).0
}

/// As [`publish`]; also returns the version id (the ZIP's SHA-256 for a local remote).
fn publish_with_id(env: &Env, version: &str) -> (String, String) {
    let remote = env.root.join("app.zip");
    let tmp = env.root.join("next.zip");
    let bytes = zip(
        &tmp,
        &[
            file("version.txt", format!("{version}\n"), 0o644),
            file(&format!("only-{version}"), "x", 0o600),
        ],
    );
    fs::rename(&tmp, &remote).expect("publish");
    (
        remote.to_str().expect("utf8").to_string(),
        sha256_hex(&bytes),
    )
}

fn current_version(env: &Env) -> String {
    fs::read_to_string(env.current().join("version.txt"))
        .expect("current/version.txt")
        .trim()
        .to_string()
}

fn run_mode(env: &Env, mode: &str, args: &[&str]) -> Output {
    env.config(&format!("activate = {mode}\n"));
    env.run(args)
}

#[test]
fn directory_modes_deploy_into_a_real_directory() {
    for mode in ["exchange", "sync"] {
        let env = Env::new();
        let r = publish(&env, "v1");
        run_mode(&env, mode, &["-f", "-r", &r]).expect_code(0);
        let meta = fs::symlink_metadata(env.current()).expect("current");
        assert!(
            meta.is_dir() && !meta.file_type().is_symlink(),
            "{mode}: current is a directory"
        );
        assert_eq!(current_version(&env), "v1", "{mode}");
        let inode = meta.ino();

        let r = publish(&env, "v2");
        run_mode(&env, mode, &["-f", "-r", &r]).expect_code(0);
        assert_eq!(current_version(&env), "v2", "{mode}");
        assert!(
            !env.current().join("only-v1").exists(),
            "{mode}: files of v1 are gone"
        );
        assert!(env.current().join("only-v2").exists(), "{mode}");
        let same_inode = fs::metadata(env.current()).expect("current").ino() == inode;
        assert_eq!(
            same_inode,
            mode == "sync",
            "{mode}: sync keeps the directory, exchange swaps it"
        );

        // Unchanged: nothing moves.
        run_mode(&env, mode, &["-f", "-r", &r]).expect_code(0);
        assert_eq!(current_version(&env), "v2", "{mode}");
        let status = run_mode(&env, mode, &["-r", &r, "status", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
        assert!(
            json["live"]["name"].as_str().is_some(),
            "{mode}: {}",
            status.dump()
        );
        let hidden: Vec<_> = list(&env.releases_dir())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        assert!(hidden.is_empty(), "{mode}: leftovers {hidden:?}");
    }
}

#[test]
fn every_mode_rolls_back_after_a_failing_post_hook() {
    for mode in ["symlink", "exchange", "sync"] {
        let env = Env::new();
        let r = publish(&env, "v1");
        run_mode(&env, mode, &["-f", "-r", &r]).expect_code(0);
        let log = env.out("post.log");
        env.post_hook(
            "10-check",
            &format!(
                "echo \"$DEPLOY_ROLLBACK $(cat \"$CURRENT_CONFIG/version.txt\") $(cat \"$PREVIOUS_CONFIG/version.txt\")\" >> {}\n[ \"$DEPLOY_ROLLBACK\" = 1 ] || exit 1",
                log.display()
            ),
        );
        let r = publish(&env, "v2");
        run_mode(&env, mode, &["-f", "-r", &r]).expect_code(4);
        assert_eq!(current_version(&env), "v1", "{mode}: v1 restored");
        assert_eq!(
            read_lines(&log),
            vec!["0 v2 v1".to_string(), "1 v1 v2".to_string()],
            "{mode}: hooks saw the right trees"
        );
        // In exchange mode the live release's files are `current` itself, not under releases/.
        let on_disk = if mode == "exchange" { 0 } else { 1 };
        assert_eq!(
            env.releases().len(),
            on_disk,
            "{mode}: the failed release is removed"
        );
    }
}

#[test]
fn every_mode_undoes_a_failed_first_deploy() {
    for mode in ["symlink", "exchange", "sync"] {
        let env = Env::new();
        env.post_hook("10-no", "exit 1");
        let r = publish(&env, "v1");
        run_mode(&env, mode, &["-f", "-r", &r]).expect_code(4);
        assert!(
            fs::symlink_metadata(env.current()).is_err(),
            "{mode}: current removed"
        );
        assert!(env.releases().is_empty(), "{mode}");
    }
}

#[test]
fn every_mode_serves_the_rollback_command() {
    for mode in ["symlink", "exchange", "sync"] {
        let env = Env::new();
        for v in ["v1", "v2"] {
            let r = publish(&env, v);
            run_mode(&env, mode, &["-f", "-r", &r]).expect_code(0);
        }
        let r = publish(&env, "v2");
        run_mode(&env, mode, &["-r", &r, "rollback"]).expect_code(0);
        assert_eq!(current_version(&env), "v1", "{mode}");
        run_mode(&env, mode, &["-f", "-r", &r]).expect_code(0);
        assert_eq!(current_version(&env), "v1", "{mode}: pinned");
    }
}

#[test]
fn a_bad_mode_is_a_configuration_error() {
    let env = Env::new();
    let r = publish(&env, "v1");
    let out = run_mode(&env, "copy", &["-f", "-r", &r]);
    out.expect_code(2);
    assert!(out.stderr.contains("activate"), "{}", out.dump());
}

/// The log gives, for every mode, the time until `current` showed the new release and the
/// time until that was durable; the first is part of the second.
#[test]
fn every_mode_logs_when_the_switch_was_visible_and_when_durable() {
    for mode in ["symlink", "exchange", "sync"] {
        let env = Env::new();
        let r = publish(&env, "v1");
        run_mode(&env, mode, &["-f", "-r", &r]).expect_code(0);
        let r = publish(&env, "v2");
        let out = run_mode(&env, mode, &["-f", "-r", &r]);
        out.expect_code(0);
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(" switched "))
            .unwrap_or_else(|| panic!("{mode}: no switch logged: {}", out.dump()));
        let micros = |after: &str| -> u64 {
            let rest = &line[line.find(after).unwrap_or_else(|| panic!("{line}")) + after.len()..];
            rest[..rest.find("µs").unwrap_or_else(|| panic!("{line}"))]
                .parse()
                .unwrap_or_else(|e| panic!("{mode}: {line}: {e}"))
        };
        let (visible, durable) = (micros(" in "), micros("durable after "));
        assert!(visible <= durable, "{mode}: {line}");
    }
}

/// `GET /metrics` from the daemon's listener.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the listener");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the reply");
    text
}

/// Whether a scrape has `series` with the value 1.
fn has_series(scrape: &str, series: &str) -> bool {
    scrape.lines().any(|l| l.trim() == format!("{series} 1"))
}

/// Bug 2: after a check that fails (here, blocked by a pre-update hook), the live version was
/// read through the symlink-only path, so in the directory modes it vanished from the metrics
/// (and systemd's STATUS) although the release was still live.
#[test]
fn directory_modes_keep_the_live_version_in_the_metrics_after_a_failed_check() {
    for mode in ["exchange", "sync"] {
        let env = Env::new();
        let (remote, v1) = publish_with_id(&env, "v1");
        env.config(&format!(
            "activate = {mode}\nlisten = 127.0.0.1:0\nschedule = 0 0 1 1 *\n"
        ));
        let mut d = env.cmd().args(["-r", &remote]).spawn();
        let port = listener_port(&d);
        let live_v1 = format!("repo_deploy_live_version_info{{version=\"{v1}\"}}");
        d.wait_for("v1 deployed and shown as live", || {
            has_series(&scrape(port), &live_v1)
        });

        env.pre_hook("50-no", "exit 1");
        publish(&env, "v2");
        d.signal_until(libc::SIGUSR1, "a blocked check counted", || {
            has_series(
                &scrape(port),
                "repo_deploy_checks_total{result=\"blocked\"}",
            )
        });
        let m = scrape(port);
        assert!(
            has_series(&m, &live_v1),
            "{mode}: v1 is still live and must stay in the metrics:\n{m}"
        );
        assert_eq!(current_version(&env), "v1", "{mode}");
        d.signal(libc::SIGTERM);
        let status = d.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "{mode}: {}", d.stderr());
    }
}
