//! The daemon: first check at start, scheduled checks, SIGUSR1 (check now), SIGHUP (reload,
//! keeping the old configuration when the new one is broken), SIGTERM (exit 0), the lock held
//! while idle, no redeploy after a restart, and a control socket that no client can stall.
//! Waits poll with a deadline.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

/// Never fires during a test: only the first check at start and SIGUSR1 run.
const YEARLY: &str = "0 0 1 1 *";
const EVERY_SECOND: &str = "*/1 * * * * *";

fn app(version: &str) -> Vec<Entry> {
    vec![file("version.txt", format!("{version}\n"), 0o644)]
}

fn live_version(env: &Env) -> Option<String> {
    let live = env.live()?;
    fs::read_to_string(live.join("version.txt")).ok()
}

fn is_live(env: &Env, version: &str) -> bool {
    live_version(env).as_deref() == Some(&format!("{version}\n"))
}

/// SIGTERM and expect a prompt exit 0.
#[track_caller]
fn stop(d: &mut Daemon) {
    d.signal(libc::SIGTERM);
    let started = Instant::now();
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exits 0\n--- stderr ---\n{}",
        d.stderr()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        started.elapsed()
    );
}

#[test]
fn deploys_at_start_and_picks_up_changes_on_schedule() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));

    let mut d = env
        .cmd()
        .args(["-r", &nginx.url("app.zip"), "-s", EVERY_SECOND])
        .spawn();
    d.wait_for("v1 live", || is_live(&env, "v1"));
    let first = env.live_release();
    d.wait_for("a scheduled check finding no change (304)", || {
        nginx.access_log().iter().any(|a| a.status == 304)
    });

    nginx.publish_zip("app.zip", &app("v2"));
    d.wait_for("v2 live through a scheduled check", || is_live(&env, "v2"));

    assert_ne!(env.live_release(), first);
    assert!(first.is_dir(), "the previous release is kept");
    stop(&mut d);
    env.assert_clean();
}

#[test]
fn first_check_runs_at_start_and_sigusr1_checks_now() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));

    let mut d = env
        .cmd()
        .args(["-r", &nginx.url("app.zip"), "-s", YEARLY])
        .spawn();
    d.wait_for("the first check at start", || is_live(&env, "v1"));
    assert_eq!(nginx.access_log().len(), 1);

    d.signal_until(libc::SIGUSR1, "a second request", || {
        nginx.access_log().len() >= 2
    });
    let log = nginx.access_log();
    assert_eq!((log[1].status, log[1].bytes), (304, 0), "{log:?}");

    nginx.publish_zip("app.zip", &app("v2"));
    d.signal_until(libc::SIGUSR1, "v2 live", || is_live(&env, "v2"));
    assert!(d.is_running());
    stop(&mut d);
    env.assert_clean();
}

#[test]
fn sighup_reloads_the_configuration() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("a.zip", &app("from-a"));
    nginx.publish_zip("b.zip", &app("from-b"));
    env.config(&format!(
        "remote = {}\nschedule = {YEARLY}\n",
        nginx.url("a.zip")
    ));

    let mut d = env.cmd().spawn();
    d.wait_for("a deployed", || is_live(&env, "from-a"));

    env.config(&format!(
        "remote = {}\nschedule = {YEARLY}\n",
        nginx.url("b.zip")
    ));
    d.signal(libc::SIGHUP);
    d.signal_until(libc::SIGUSR1, "b deployed after the reload", || {
        is_live(&env, "from-b")
    });

    let uris: Vec<String> = nginx.access_log().into_iter().map(|a| a.uri).collect();
    assert!(uris.contains(&"/b.zip".to_string()), "{uris:?}");
    stop(&mut d);
}

#[test]
fn sighup_with_a_broken_configuration_keeps_the_old_one() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));
    let good = format!("remote = {}\nschedule = {YEARLY}\n", nginx.url("app.zip"));
    env.config(&good);

    let mut d = env.cmd().spawn();
    d.wait_for("v1 live", || is_live(&env, "v1"));

    env.config(&format!("{good}bogus-key = 1\n"));
    d.signal(libc::SIGHUP);
    let mentions = |s: &str| {
        let s = s.to_lowercase();
        s.contains("keep") && s.contains("old")
    };
    let ok = eventually(WAIT, || mentions(&d.stderr()));
    assert!(
        ok,
        "stderr should say the old configuration is kept:\n{}",
        d.stderr()
    );
    assert!(d.is_running(), "a broken reload must not stop the daemon");

    // Still working with the old configuration.
    nginx.publish_zip("app.zip", &app("v2"));
    d.signal_until(libc::SIGUSR1, "v2 live with the old configuration", || {
        is_live(&env, "v2")
    });
    stop(&mut d);
}

#[test]
fn sigterm_exits_zero_promptly() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));
    let mut d = env
        .cmd()
        .args(["-r", &nginx.url("app.zip"), "-s", YEARLY])
        .spawn();
    d.wait_for("v1 live", || is_live(&env, "v1"));
    stop(&mut d);
    env.assert_current_is_relative_link();
    env.assert_clean();
}

#[test]
fn daemon_holds_the_lock_while_idle() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));
    let mut d = env
        .cmd()
        .args(["-r", &nginx.url("app.zip"), "-s", YEARLY])
        .spawn();
    d.wait_for("v1 live", || is_live(&env, "v1"));

    let out = env.fetch(&nginx.url("app.zip"));
    out.expect_code(5);
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);

    stop(&mut d);
    env.fetch(&nginx.url("app.zip")).expect_code(0);
}

#[test]
fn failed_checks_do_not_stop_the_daemon() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);

    // Nothing published yet: every check is a 404.
    let mut d = env
        .cmd()
        .args(["-r", &nginx.url("app.zip"), "-s", EVERY_SECOND])
        .spawn();
    d.wait_for("two failed checks", || {
        nginx
            .access_log()
            .iter()
            .filter(|a| a.status == 404)
            .count()
            >= 2
    });
    assert!(d.is_running(), "a failed check must not stop the daemon");
    assert!(env.live().is_none());

    nginx.publish_zip("app.zip", &app("v1"));
    d.wait_for("v1 live after the failures", || is_live(&env, "v1"));
    stop(&mut d);
    env.assert_clean();
}

#[test]
fn restarted_daemon_does_not_redeploy() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));
    let hook_log = env.out("hooks.log");
    env.post_hook(
        "10-log",
        &format!("echo \"$DEPLOY_VERSION\" >> {}", hook_log.display()),
    );
    let args = ["-r", &nginx.url("app.zip"), "-s", YEARLY];

    let mut d = env.cmd().args(args).spawn();
    d.wait_for("v1 live", || {
        is_live(&env, "v1") && env.out_lines("hooks.log").len() == 1
    });
    let live = env.live_release();
    stop(&mut d);

    let mut d = env.cmd().args(args).spawn();
    d.wait_for("the restarted daemon's first check", || {
        nginx.access_log().len() >= 2
    });
    let log = nginx.access_log();
    assert_eq!(
        log[1].status, 304,
        "the restart validates instead of downloading: {log:?}"
    );
    stop(&mut d);

    assert_eq!(env.live_release(), live);
    assert_eq!(env.releases(), vec![live]);
    assert_eq!(
        env.out_lines("hooks.log").len(),
        1,
        "no hook ran after the restart"
    );
}

#[test]
fn configuration_error_at_start_exits_2() {
    let env = Env::new();
    let mut d = env
        .cmd()
        .args(["-r", "/srv/app.zip", "-s", "not a schedule"])
        .spawn();
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{}", d.stderr());
    assert!(!env.deploy.exists());
}

/// Clients of the control socket that connect and say nothing, or half a request, are read
/// with a timeout by tasks of their own: checks, SIGTERM and the clean-up go on.
#[test]
fn silent_control_socket_clients_do_not_stall_the_daemon() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));
    let mut d = env
        .cmd()
        .args(["-r", &nginx.url("app.zip"), "-s", YEARLY])
        .spawn();
    d.wait_for("v1 live", || is_live(&env, "v1"));
    let socket = env.deploy.join(".control.sock");
    let _silent = UnixStream::connect(&socket).expect("connect");
    let mut half = UnixStream::connect(&socket).expect("connect");
    half.write_all(b"{\"rollback\"").expect("half a request");

    nginx.publish_zip("app.zip", &app("v2"));
    d.signal_until(libc::SIGUSR1, "v2 live", || is_live(&env, "v2"));
    stop(&mut d);
    assert!(!socket.exists(), "the socket is removed at exit");
    env.assert_clean();
}
