//! The daemon as operators watch it: `/metrics`, `/healthz` and `POST /trigger` on the opt-in
//! listener, `--log-format json`, systemd's notifications, and splay. Every daemon runs for
//! real against a local ZIP remote and listens on `127.0.0.1:0` (the kernel picks a free
//! port, which the daemon logs): no port can be taken by a parallel test between choosing and
//! binding it. Waits poll with a deadline.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

/// Never fires during a test: only the first check at start, SIGUSR1 and /trigger run.
const YEARLY: &str = "0 0 1 1 *";
const EVERY_SECOND: &str = "*/1 * * * * *";
const TOKEN: &str = "trigger-token-7c1f0e52a9b34d68";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Write the app's ZIP (one file saying `version`) at `<root>/app.zip`; returns its SHA-256,
/// which is the version id of a local ZIP remote.
fn publish(env: &Env, version: &str) -> String {
    let bytes = zip_files(
        &app_zip(env),
        &[("version.txt", &format!("{version}\n"), 0o644)],
    );
    sha256_hex(&bytes)
}

fn app_zip(env: &Env) -> PathBuf {
    env.root.join("app.zip")
}

/// Start the daemon on `<root>/app.zip` with `config` as its configuration file.
fn start(env: &Env, config: &str) -> Daemon {
    env.config(config);
    env.cmd()
        .args(["-r", app_zip(env).to_str().expect("utf8")])
        .spawn()
}

/// Wait until the daemon's log satisfies `found` (which returns what it found).
fn from_log<T>(d: &Daemon, what: &str, mut found: impl FnMut(&str) -> Option<T>) -> T {
    let mut value = None;
    let ok = eventually(WAIT, || {
        value = found(&d.stderr());
        value.is_some()
    });
    assert!(
        ok,
        "timed out waiting for {what}\n--- stderr ---\n{}",
        d.stderr()
    );
    value.expect("found")
}

/// The port the daemon logged it listens on.
fn port(d: &Daemon) -> u16 {
    from_log(d, "the listener's address in the log", |log| {
        let rest = log.split("on http://127.0.0.1:").nth(1)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

fn get(port: u16, path: &str) -> HttpReply {
    request(port, "GET", path, &[])
}

fn trigger(port: u16, auth: Option<&str>) -> HttpReply {
    match auth {
        Some(a) => request(port, "POST", "/trigger", &[("Authorization", a)]),
        None => request(port, "POST", "/trigger", &[]),
    }
}

fn scrape(port: u16) -> String {
    let r = get(port, "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// The value of one series (`name` or `name{labels}`) in a scrape.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn checks(text: &str, result: &str) -> f64 {
    metric(
        text,
        &format!("repo_deploy_checks_total{{result=\"{result}\"}}"),
    )
    .unwrap_or_else(|| panic!("no checks_total for {result} in\n{text}"))
}

/// SIGTERM and expect exit 0.
#[track_caller]
fn stop(d: &mut Daemon) {
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", d.stderr());
}

// ---------------------------------------------------------------------------------------------
// /metrics

#[test]
fn metrics_count_checks_downloads_hooks_and_show_the_live_version() {
    let env = Env::new();
    let v1 = publish(&env, "v1");
    let size = std::fs::metadata(app_zip(&env)).expect("zip").len();
    env.post_hook("10-ok", "exit 0");
    let mut d = start(
        &env,
        &format!("listen = 127.0.0.1:0\nschedule = {YEARLY}\n"),
    );
    let port = port(&d);

    d.wait_for("the first deploy counted", || {
        metric(
            &scrape(port),
            "repo_deploy_checks_total{result=\"deployed\"}",
        ) == Some(1.0)
    });
    let reply = get(port, "/metrics");
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{reply:?}"
    );
    let m = reply.body;
    assert_eq!(checks(&m, "unchanged"), 0.0, "{m}");
    assert_eq!(checks(&m, "failed"), 0.0, "{m}");
    assert_eq!(checks(&m, "blocked"), 0.0, "{m}");
    assert_eq!(checks(&m, "rolled_back"), 0.0, "{m}");
    assert_eq!(
        metric(
            &m,
            &format!("repo_deploy_live_version_info{{version=\"{v1}\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "repo_deploy_downloaded_bytes_total"),
        Some(size as f64),
        "{m}"
    );
    assert_eq!(
        metric(&m, "repo_deploy_download_duration_seconds_count"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "repo_deploy_deploy_duration_seconds_count"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "repo_deploy_hook_runs_total{hook=\"10-ok\",phase=\"post\",result=\"success\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let now = now_secs() as f64;
    for ts in [
        "repo_deploy_last_success_timestamp_seconds",
        "repo_deploy_last_deploy_timestamp_seconds",
    ] {
        let t = metric(&m, ts).unwrap_or_else(|| panic!("no {ts} in\n{m}"));
        assert!(
            (now - 120.0..=now + 5.0).contains(&t),
            "{ts} = {t}, now {now}"
        );
    }

    // An unchanged check: counted, nothing downloaded, no hook.
    d.signal_until(libc::SIGUSR1, "an unchanged check counted", || {
        checks(&scrape(port), "unchanged") >= 1.0
    });
    let m = scrape(port);
    assert_eq!(checks(&m, "deployed"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "repo_deploy_download_duration_seconds_count"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "repo_deploy_hook_runs_total{hook=\"10-ok\",phase=\"post\",result=\"success\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("repo_deploy_live_version_info{{version=\"{v1}\"}}")
        ),
        Some(1.0),
        "{m}"
    );

    // A new version replaces the info metric's label; a failing pre-update hook counts.
    let v2 = publish(&env, "v2");
    d.signal_until(libc::SIGUSR1, "v2 deployed", || {
        checks(&scrape(port), "deployed") >= 2.0
    });
    let m = scrape(port);
    assert_eq!(
        metric(
            &m,
            &format!("repo_deploy_live_version_info{{version=\"{v2}\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        !m.contains(&v1),
        "the old version is gone from the scrape:\n{m}"
    );

    env.pre_hook("50-no", "exit 1");
    publish(&env, "v3");
    d.signal_until(libc::SIGUSR1, "a blocked check counted", || {
        checks(&scrape(port), "blocked") >= 1.0
    });
    let m = scrape(port);
    assert_eq!(
        metric(
            &m,
            "repo_deploy_hook_runs_total{hook=\"50-no\",phase=\"pre\",result=\"failed\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("repo_deploy_live_version_info{{version=\"{v2}\"}}")
        ),
        Some(1.0),
        "a blocked update leaves v2 live:\n{m}"
    );

    assert_eq!(get(port, "/nope").status, 404);
    assert_eq!(request(port, "POST", "/metrics", &[]).status, 405);
    stop(&mut d);
}

// ---------------------------------------------------------------------------------------------
// /healthz

#[test]
fn healthz_fails_when_checks_fail_for_longer_than_health_periods_and_recovers() {
    let env = Env::new();
    publish(&env, "v1");
    let mut d = start(
        &env,
        &format!("listen = 127.0.0.1:0\nschedule = {EVERY_SECOND}\nhealth-periods = 2\n"),
    );
    let port = port(&d);
    d.wait_for("/healthz 200 after a successful check", || {
        let r = get(port, "/healthz");
        r.status == 200 && r.body.contains("last successful check")
    });

    // The remote breaks: checks keep failing; after 2 periods of 1 s the health fails.
    std::fs::remove_file(app_zip(&env)).expect("break the remote");
    let mut last = None;
    d.wait_for("/healthz 503 after the remote broke", || {
        let r = get(port, "/healthz");
        let done = r.status == 503;
        last = Some(r);
        done
    });
    let r = last.expect("reply");
    assert_eq!(r.body.lines().count(), 1, "one line: {:?}", r.body);
    assert!(
        r.body.contains("no successful check for") && r.body.contains("last error"),
        "{:?}",
        r.body
    );
    assert!(checks(&scrape(port), "failed") >= 2.0);
    assert!(d.is_running());

    // The remote is back: healthy again at the next check.
    publish(&env, "v1");
    d.wait_for("/healthz 200 again", || get(port, "/healthz").status == 200);
    stop(&mut d);
}

#[test]
fn healthz_fails_after_the_grace_when_no_check_ever_succeeded() {
    let env = Env::new();
    // No app.zip: every check fails from the start.
    let mut d = start(
        &env,
        &format!("listen = 127.0.0.1:0\nschedule = {EVERY_SECOND}\nhealth-periods = 2\n"),
    );
    let port = port(&d);
    let mut body = String::new();
    d.wait_for("/healthz 503 once the grace has passed", || {
        let r = get(port, "/healthz");
        body = r.body;
        r.status == 503
    });
    assert!(body.contains("since the start"), "{body:?}");
    assert!(d.is_running(), "failed checks do not stop the daemon");
    stop(&mut d);
}

// ---------------------------------------------------------------------------------------------
// POST /trigger

#[test]
fn trigger_needs_the_token_is_rate_limited_and_checks_now() {
    let env = Env::new();
    publish(&env, "v1");
    let mut d = start(
        &env,
        &format!(
            "listen = 127.0.0.1:0\nschedule = {YEARLY}\ntrigger-token = {TOKEN}\ntrigger-min-interval = 60\n"
        ),
    );
    let port = port(&d);
    d.wait_for("the first deploy", || {
        metric(
            &scrape(port),
            "repo_deploy_checks_total{result=\"deployed\"}",
        ) == Some(1.0)
    });

    let r = trigger(port, None);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").is_some(), "{r:?}");
    assert_eq!(
        trigger(port, Some("Bearer wrong-token-0000000000000")).status,
        401
    );
    assert_eq!(trigger(port, Some(&format!("Basic {TOKEN}"))).status, 401);
    assert_eq!(get(port, "/trigger").status, 405);
    assert_eq!(
        checks(&scrape(port), "unchanged"),
        0.0,
        "refused triggers check nothing"
    );

    let r = trigger(port, Some(&format!("Bearer {TOKEN}")));
    assert_eq!(r.status, 200, "{r:?}");
    d.wait_for("the triggered check", || {
        checks(&scrape(port), "unchanged") == 1.0
    });

    let r = trigger(port, Some(&format!("Bearer {TOKEN}")));
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {r:?}"));
    assert!((1..=60).contains(&retry), "{retry}");

    // The refused call asked for no check: the next one (SIGUSR1) is the second, not the third.
    d.signal_until(libc::SIGUSR1, "a second unchanged check", || {
        checks(&scrape(port), "unchanged") >= 2.0
    });
    assert_eq!(checks(&scrape(port), "unchanged"), 2.0);

    stop(&mut d);
    assert!(
        !d.stderr().contains(TOKEN),
        "the token leaked into the log:\n{}",
        d.stderr()
    );
}

#[test]
fn trigger_is_not_found_without_a_token() {
    let env = Env::new();
    publish(&env, "v1");
    let mut d = start(
        &env,
        &format!("listen = 127.0.0.1:0\nschedule = {YEARLY}\n"),
    );
    let port = port(&d);
    let r = trigger(port, Some(&format!("Bearer {TOKEN}")));
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("trigger-token"), "{r:?}");
    stop(&mut d);
}

#[test]
fn the_token_never_appears_in_logs_even_with_debug() {
    let env = Env::new();
    publish(&env, "v1");
    env.config(&format!(
        "listen = 127.0.0.1:0\nschedule = {YEARLY}\ntrigger-token = {TOKEN}\n"
    ));
    // check-config prints the settings, masked.
    let out = env.run(&["-r", app_zip(&env).to_str().expect("utf8"), "check-config"]);
    out.expect_code(0);
    assert!(out.stdout.contains("trigger-token = ***"), "{}", out.dump());
    assert!(!out.all().contains(TOKEN), "{}", out.dump());

    let mut d = env
        .cmd()
        .args(["-v", "-r", app_zip(&env).to_str().expect("utf8")])
        .spawn();
    let port = port(&d);
    assert_eq!(trigger(port, Some(&format!("Bearer {TOKEN}"))).status, 200);
    assert_eq!(trigger(port, Some(&format!("Bearer {TOKEN}x"))).status, 401);
    from_log(&d, "the trigger logged", |log| {
        log.contains("/trigger").then_some(())
    });
    stop(&mut d);
    assert!(!d.stderr().contains(TOKEN), "{}", d.stderr());
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn bad_telemetry_settings_are_configuration_errors() {
    let env = Env::new();
    publish(&env, "v1");
    let remote = app_zip(&env);
    for (text, key) in [
        ("listen = localhost\n", "listen"),
        ("listen = 127.0.0.1:70000\n", "listen"),
        ("health-periods = 0\n", "health-periods"),
        ("trigger-min-interval = soon\n", "trigger-min-interval"),
        ("splay = -5\n", "splay"),
        ("trigger-token = short-secret\n", "trigger-token"),
    ] {
        env.config(text);
        let out = env.fetch(remote.to_str().expect("utf8"));
        out.expect_code(2);
        assert!(out.stderr.contains(key), "{text}: {}", out.dump());
        assert!(!out.all().contains("short-secret"), "{}", out.dump());
    }
    assert!(env.live().is_none(), "nothing was touched");
}

#[test]
fn a_listen_address_in_use_stops_the_daemon_with_exit_1() {
    let env = Env::new();
    publish(&env, "v1");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let mut d = start(&env, &format!("listen = {addr}\nschedule = {YEARLY}\n"));
    let status = d.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", d.stderr());
    assert!(
        d.stderr().contains(&format!("cannot listen on {addr}")),
        "{}",
        d.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// --log-format json

#[test]
fn json_log_lines_parse_as_json() {
    let env = Env::new();
    publish(&env, "v1");
    env.post_hook("10-say", "echo hello from the hook");
    let out = env.run(&[
        "--log-format",
        "json",
        "-f",
        "-r",
        app_zip(&env).to_str().expect("utf8"),
    ]);
    out.expect_code(0);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(lines.len() >= 3, "{}", out.dump());
    let mut messages = Vec::new();
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", out.dump()));
        for key in ["timestamp", "level", "message"] {
            assert!(
                v.get(key).is_some_and(|x| x.is_string()),
                "no {key}: {line}"
            );
        }
        messages.push(v["message"].as_str().expect("message").to_string());
    }
    assert!(
        messages.iter().any(|m| m.starts_with("deployed")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("hello from the hook")),
        "{messages:?}"
    );

    // The default stays the human format.
    publish(&env, "v2");
    let out = env.fetch(app_zip(&env).to_str().expect("utf8"));
    out.expect_code(0);
    assert!(
        out.stderr
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()),
        "{}",
        out.dump()
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

/// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`; it records each message
/// with whether `current` existed when it arrived.
struct Notifications {
    path: PathBuf,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
    stop: Arc<AtomicBool>,
}

impl Notifications {
    fn bind(env: &Env) -> Notifications {
        let path = env.root.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, current) = (Arc::clone(&seen), Arc::clone(&stop), env.current());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let live = std::fs::symlink_metadata(&current).is_ok();
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    s.lock().expect("seen").push((text, live));
                }
            }
        });
        Notifications { path, seen, stop }
    }

    /// Every `KEY=value` line received so far, with whether `current` existed then.
    fn lines(&self) -> Vec<(String, bool)> {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .flat_map(|(m, live)| {
                m.lines()
                    .map(|l| (l.to_string(), *live))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|(l, _)| l == line).count()
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    let env = Env::new();
    let v1 = publish(&env, "v1");
    let notify = Notifications::bind(&env);
    env.config(&format!("schedule = {YEARLY}\n"));
    let mut d = env
        .cmd()
        .args(["-r", app_zip(&env).to_str().expect("utf8")])
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "200000")
        .spawn();

    d.wait_for("READY=1", || notify.count("READY=1") == 1);
    let lines = notify.lines();
    let ready = lines.iter().find(|(l, _)| l == "READY=1").expect("ready");
    assert!(
        ready.1,
        "READY=1 comes after the first check deployed: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, _)| l.starts_with(&format!("STATUS=live {v1}"))),
        "{lines:?}"
    );
    d.wait_for("watchdog pings", || notify.count("WATCHDOG=1") >= 2);

    // A check updates the status.
    let v2 = publish(&env, "v2");
    d.signal_until(libc::SIGUSR1, "STATUS with v2", || {
        notify
            .lines()
            .iter()
            .any(|(l, _)| l.starts_with(&format!("STATUS=live {v2}")))
    });

    // SIGHUP: RELOADING=1 (with the monotonic time), then READY=1 again.
    d.signal(libc::SIGHUP);
    d.wait_for("READY=1 after the reload", || notify.count("READY=1") == 2);
    let lines: Vec<String> = notify.lines().into_iter().map(|(l, _)| l).collect();
    let reloading = lines
        .iter()
        .position(|l| l == "RELOADING=1")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        lines[reloading + 1].starts_with("MONOTONIC_USEC="),
        "{lines:?}"
    );
    assert_eq!(notify.count("STOPPING=1"), 0);

    let started = Instant::now();
    stop(&mut d);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(notify.count("STOPPING=1"), 1, "{:?}", notify.lines());
}

// ---------------------------------------------------------------------------------------------
// Splay

/// The splay the daemon logged, in seconds, as written.
fn logged_splay(d: &Daemon) -> String {
    from_log(d, "the splay in the log", |log| {
        let rest = log.split("scheduled checks run ").nth(1)?;
        Some(rest.split('s').next()?.to_string())
    })
}

#[test]
fn splay_is_logged_stable_across_restarts_and_spares_the_first_check_and_sigusr1() {
    let env = Env::new();
    publish(&env, "v1");
    let config = format!("listen = 127.0.0.1:0\nschedule = {YEARLY}\nsplay = 3600\n");

    let started = Instant::now();
    let mut d = start(&env, &config);
    let first = logged_splay(&d);
    d.wait_for("v1 live", || env.live().is_some());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the first check is not splayed"
    );
    let port = port(&d);
    let asked = Instant::now();
    d.signal_until(libc::SIGUSR1, "an unchanged check", || {
        checks(&scrape(port), "unchanged") >= 1.0
    });
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "SIGUSR1 is not splayed"
    );
    stop(&mut d);

    let mut d = start(&env, &config);
    assert_eq!(
        logged_splay(&d),
        first,
        "the same host and remote get the same splay"
    );
    stop(&mut d);
    let secs: f64 = first.parse().expect("seconds");
    assert!((0.0..3600.0).contains(&secs), "{secs}");
}
