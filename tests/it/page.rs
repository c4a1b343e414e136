//! The status page (issue 14, SPEC § Status page) in a real browser (Debian's headless
//! chromium through `common::browser`): what this host's view shows, that it updates without
//! a reload, that it loads nothing from elsewhere and logs no error, that no secret reaches it,
//! and what serving it costs the agent under load. The fleet view is tested with real daemons
//! and etcd in `fleet.rs`.
//!
//! `REPO_DEPLOY_SCREENSHOTS=DIR` also writes the screenshots the README shows.

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::browser::Browser;
use crate::common::*;

const YEARLY: &str = "0 0 1 1 *";
const EVERY_SECOND: &str = "*/1 * * * * *";

/// The app's ZIP at `<root>/app.zip`; its SHA-256 is the version of a local ZIP remote.
fn publish(env: &Env, version: &str, markers: &[&str]) -> String {
    let mut entries = vec![file("version.txt", version, 0o644)];
    entries.extend(markers.iter().map(|m| file(m, "", 0o644)));
    let bytes = zip_bytes(&entries);
    write_atomic(&env.root.join("app.zip"), &bytes);
    sha256_hex(&bytes)
}

fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("REPO_DEPLOY_SCREENSHOTS").map(PathBuf::from)
}

/// Issue test 1, and the page updating itself: a deploy and a rolled-back version on the
/// timeline, the live version and the error; then a new deploy appears without a reload. No
/// console error, no request to another origin.
#[test]
fn the_host_view_shows_deploys_and_rollbacks_and_updates_itself() {
    let env = Env::new();
    let v1 = publish(&env, "v1", &[]);
    env.post_hook(
        "10-check",
        "[ -e \"$CURRENT_CONFIG/fail\" ] && [ \"$DEPLOY_ROLLBACK\" = 0 ] && { echo 'smoke test failed: 502 from /health' >&2; exit 1; }\nexit 0\n",
    );
    env.config(&format!(
        "remote = {}\nlisten = 127.0.0.1:0\nschedule = {YEARLY}\n",
        env.root.join("app.zip").display()
    ));
    let mut d = env.cmd().spawn();
    let port = listener_port(&d);
    d.wait_for("v1 live", || env.live().is_some());
    let bad = publish(&env, "v2", &["fail"]);
    d.signal_until(libc::SIGUSR1, "v2 rolled back", || {
        d_log_has(&env, "rolled_back")
    });

    let browser = Browser::start();
    let origin = format!("http://127.0.0.1:{port}");
    let mut page = browser.open(&format!("{origin}/"));
    page.wait_for(
        "both marks on the timeline",
        "!!(document.querySelector('#timeline [data-result=deployed]') && document.querySelector('#timeline [data-result=rolled_back]'))",
    );
    let live = page.eval("document.querySelector('#live-version code').textContent");
    assert_eq!(live.as_str(), Some(v1.as_str()), "the live version");
    let error = page.wait_for(
        "the last error",
        "document.querySelector('#last-error') && document.querySelector('#last-error').textContent",
    );
    let error = error.as_str().unwrap_or_default();
    assert!(
        error.contains("post-update") && error.contains(&bad[..12]),
        "the error names the hook and the version: {error}"
    );
    let titles = page.eval(
        "[...document.querySelectorAll('#timeline [data-result=rolled_back] title')].map(t => t.textContent).join('\\n')",
    );
    assert!(
        titles.as_str().is_some_and(|t| t.contains(&bad)),
        "the rollback's mark names its version: {titles}"
    );

    // A new version goes live; the open page shows it without a reload.
    page.eval("window.__notReloaded = true");
    let v3 = publish(&env, "v3", &[]);
    d.signal_until(libc::SIGUSR1, "v3 deployed", || {
        fs::read_to_string(env.live_release().join("version.txt")).is_ok_and(|v| v == "v3")
    });
    page.wait_for(
        "the new version on the open page",
        &format!("document.querySelector('#live-version code').textContent === '{v3}'"),
    );
    assert_eq!(
        page.eval("window.__notReloaded === true"),
        true,
        "the page reloaded"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#timeline [data-result=deployed]').length"),
        2
    );
    if let Some(dir) = screenshot_dir() {
        page.screenshot(&dir.join("page-host.png"));
    }

    page.settle();
    assert!(
        page.errors.is_empty(),
        "errors in the browser: {:?}",
        page.errors
    );
    let elsewhere: Vec<&String> = page
        .requests
        .iter()
        .filter(|u| !u.starts_with(&format!("{origin}/")))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "requests to another origin: {elsewhere:?}"
    );
    assert!(
        page.requests.iter().any(|u| u.ends_with("/status.json")),
        "{:?}",
        page.requests
    );
}

fn d_log_has(env: &Env, result: &str) -> bool {
    fs::read_to_string(env.deploy.join("status.json")).is_ok_and(|s| s.contains(result))
}

/// The page and its JSON: security headers, nothing external, 404 for the fleet outside fleet
/// mode, and no secret (credentials in the remote URL, the trigger token) anywhere.
#[test]
fn the_page_and_its_json_hold_no_secret_and_forbid_anything_external() {
    let env = Env::new();
    let password = "Pw-s3cret-9";
    let token = "trigger-token-0b5e1f9c2d7a4e38";
    env.config(&format!(
        "remote = http://deployer:{password}@127.0.0.1:1/app.zip\nlisten = 127.0.0.1:0\nschedule = {YEARLY}\ntrigger-token = {token}\n"
    ));
    let d = env.cmd().spawn();
    let port = listener_port(&d);
    assert!(
        eventually(WAIT, || d_log_has(&env, "failed")),
        "no failed check\n{}",
        d.stderr()
    );
    let page = request(port, "GET", "/", &[]);
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(
        csp.contains("connect-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
    assert!(page.body.len() <= 60 * 1024, "{} bytes", page.body.len());
    let status = request(port, "GET", "/status.json", &[]);
    assert_eq!(status.status, 200, "{}", status.body);
    let json: serde_json::Value = serde_json::from_str(&status.body).expect("JSON");
    assert_eq!(json["last_check"]["result"], "failed", "{json}");
    assert!(
        json["history"].as_array().is_some_and(|h| !h.is_empty()),
        "{json}"
    );
    assert!(
        json["remote"]
            .as_str()
            .is_some_and(|r| r.contains("127.0.0.1:1")),
        "{json}"
    );
    let fleet = request(port, "GET", "/fleet.json", &[]);
    assert_eq!(fleet.status, 404, "{}", fleet.body);
    assert!(fleet.body.contains("fleet mode"), "{}", fleet.body);
    for reply in [&page, &status, &fleet] {
        for secret in [password, token] {
            assert!(!reply.body.contains(secret) && !reply.head.contains(secret));
        }
    }
    // The page only reads: other methods are refused.
    assert_eq!(request(port, "POST", "/status.json", &[]).status, 405);
}

/// Issue test 4: 200 clients polling the page and its JSON and 50 clients sending one header
/// byte a second, for 30 s, against a daemon on a per-second schedule: checks stay on time,
/// `/healthz` answers fast, memory stays small and comes back, nothing is logged as an error.
/// The figures go to stderr (and docs/RELIABILITY.md).
#[test]
fn the_page_under_load_costs_the_agent_nothing_that_matters() {
    const SECONDS: u64 = 30;
    let env = Env::new();
    publish(&env, "v1", &[]);
    env.config(&format!(
        "remote = {}\nlisten = 127.0.0.1:0\nschedule = {EVERY_SECOND}\n",
        env.root.join("app.zip").display()
    ));
    let mut d = env.cmd().spawn();
    let port = listener_port(&d);
    d.wait_for("v1 live", || env.live().is_some());
    // Idle: a few scheduled checks, a few polls, then the figure.
    for _ in 0..3 {
        request(port, "GET", "/status.json", &[]);
    }
    thread::sleep(Duration::from_secs(3));
    let idle = rss_kib(d.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..200 {
        let (stop, served) = (stop.clone(), served.clone());
        clients.push(thread::spawn(move || {
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                let paths: &[&str] = if first {
                    &["/", "/status.json", "/fleet.json"]
                } else {
                    &["/status.json", "/fleet.json"]
                };
                first = false;
                for p in paths {
                    let r = request(port, "GET", p, &[]);
                    assert!(r.status == 200 || r.status == 404, "{p}: {}", r.status);
                    served.fetch_add(1, Ordering::Relaxed);
                }
                // Spread the pollers over the 2 s period, as open pages are.
                thread::sleep(Duration::from_millis(1500 + (i % 10) * 100));
            }
        }));
    }
    for _ in 0..50 {
        let stop = stop.clone();
        clients.push(thread::spawn(move || {
            let request = b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                for byte in request {
                    if stop.load(Ordering::Relaxed) || s.write_all(&[*byte]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_secs(1));
                }
            }
        }));
    }
    let started = Instant::now();
    let log_start = d.stderr().len();
    let (mut worst_health, mut peak) = (Duration::ZERO, idle);
    while started.elapsed() < Duration::from_secs(SECONDS) {
        let t = Instant::now();
        let health = request(port, "GET", "/healthz", &[]);
        worst_health = worst_health.max(t.elapsed());
        assert_eq!(health.status, 200, "{}", health.body);
        peak = peak.max(rss_kib(d.pid()));
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let during = d.stderr()[log_start..].to_owned();
    // Memory comes back once the clients are gone.
    let mut after = rss_kib(d.pid());
    eventually(Duration::from_secs(10), || {
        after = rss_kib(d.pid());
        after <= idle + 2048
    });
    let checks: Vec<f64> = during
        .lines()
        .filter(|l| l.contains("unchanged:"))
        .filter_map(|l| chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok())
        .map(|t| t.timestamp_micros() as f64 / 1e6)
        .collect();
    let late = checks.iter().map(|t| t - t.floor()).fold(0.0f64, f64::max);
    let gap = checks
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max);
    eprintln!(
        "under load ({} requests served in {SECONDS} s): {} checks, latest {late:.3} s after its second, longest gap {gap:.2} s; \
         /healthz worst {worst_health:?}; RSS idle {idle} KiB, peak {peak} KiB, after {after} KiB",
        served.load(Ordering::Relaxed),
        checks.len()
    );
    assert!(
        checks.len() as u64 >= SECONDS - 2,
        "{} checks in {SECONDS} s",
        checks.len()
    );
    assert!(
        late < 1.0 && gap < 2.0,
        "checks late: {late:.3} s, gap {gap:.2} s"
    );
    assert!(
        worst_health < Duration::from_millis(100),
        "/healthz took {worst_health:?}"
    );
    assert!(peak < 32 * 1024, "peak RSS {peak} KiB");
    assert!(
        after <= idle + 2048,
        "RSS {after} KiB after, {idle} KiB idle"
    );
    assert!(
        !during.contains(" ERROR "),
        "errors logged under load:\n{during}"
    );
}

fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
