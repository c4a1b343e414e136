//! Fleet rollouts (issue 12, SPEC § Fleet rollouts): real `repo-deploy` daemons, each with its
//! own deploy directory and configuration, one local ZIP as the remote, and real etcd members
//! (`common::etcd`, Debian's etcd-server). What happened is read from the hooks' own
//! timestamped lines in one shared file (`start`, `end`, `fail`, `rollback`, `health`), so the
//! limits are checked by sweeping the intervals the hooks saw, not by trusting the agent.
//!
//! The tests that start many daemons take a module-wide lock: on two cores they must not run
//! at the same time as each other. Every wait polls a condition with a deadline.

use std::fs;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::etcd::Cluster;
use crate::common::*;

/// The schedule of daemons that only check at start and on `fleet notify`.
const YEARLY: &str = "0 0 1 1 *";
/// How long a whole rollout may take before the test fails.
const ROLLOUT: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One host of the group: its name, deploy directory, configuration file and daemon.
struct Host {
    name: String,
    dir: PathBuf,
    cfg: PathBuf,
    daemon: Option<Daemon>,
}

/// A group of hosts on one etcd, one remote (`app.zip`) and shared hooks that log to
/// `out/events`.
struct Group {
    env: Env,
    etcd: Cluster,
    remote: PathBuf,
    health: PathBuf,
    hosts: Vec<Host>,
}

/// A line of `out/events`.
#[derive(Debug, Clone)]
struct Event {
    kind: String,
    host: String,
    version: String,
    time: f64,
    canary: String,
}

impl Group {
    /// An etcd of `members`, `hosts` configurations with `extra` settings, hooks, and `v1`
    /// published. Nothing started yet.
    fn new(members: usize, hosts: usize, extra: &str) -> Group {
        let env = Env::new();
        let etcd = Cluster::start(members);
        let health = env.root.join("health.d");
        fs::create_dir(&health).expect("health hooks dir");
        let out = env.out.display().to_string();
        let who = r#"h=$(basename "$(dirname "$DEPLOY_DIR")"); v=$(cat "$CURRENT_CONFIG/version.txt"); t=$(date +%s.%N)"#;
        env.pre_hook(
            "10-log",
            &format!(
                "{who}\n[ -e {out}/pre-sleep-$v ] && mkdir {out}/sleeper 2>/dev/null && {{ echo $$ > {out}/sleeper/pid; echo \"start $h $v $t $DEPLOY_CANARY\" >> {out}/events; sleep 60; }}\n\
                 echo \"start $h $v $t $DEPLOY_CANARY\" >> {out}/events\n"
            ),
        );
        env.post_hook(
            "10-log",
            &format!(
                "{who}\n\
                 if [ \"$DEPLOY_ROLLBACK\" = 1 ]; then echo \"rollback $h $v $t\" >> {out}/events; exit 0; fi\n\
                 sleep 0.2\n\
                 t=$(date +%s.%N)\n\
                 if [ -e \"$CURRENT_CONFIG/fail-post\" ] && [ ! -e {out}/pass ]; then echo \"fail $h $v $t\" >> {out}/events; exit 1; fi\n\
                 echo \"end $h $v $t\" >> {out}/events\n"
            ),
        );
        write_script(
            &health.join("10-check"),
            &format!(
                "#!/bin/sh\n{who}\n\
                 echo \"health $h $v $t\" >> {out}/events\n\
                 if [ -e \"$CURRENT_CONFIG/fail-third-health\" ]; then\n\
                   mkdir {out}/slot1 2>/dev/null && exit 0\n\
                   mkdir {out}/slot2 2>/dev/null && exit 0\n\
                   echo \"unhealthy $h $v $t\" >> {out}/events; exit 1\n\
                 fi\n"
            ),
        );
        let remote = env.root.join("app.zip");
        let mut group = Group {
            env,
            etcd,
            remote,
            health,
            hosts: Vec::new(),
        };
        group.publish("v1", &[]);
        for i in 0..hosts {
            let name = format!("h{i:02}");
            let dir = group.env.root.join(&name);
            let cfg = group.env.root.join(format!("{name}.cfg"));
            group.hosts.push(Host {
                name,
                dir,
                cfg,
                daemon: None,
            });
        }
        group.configure(extra);
        group
    }

    /// Write every host's configuration with `extra` settings.
    fn configure(&self, extra: &str) {
        for host in &self.hosts {
            write_atomic(&host.cfg, self.config_text(&host.name, extra).as_bytes());
        }
    }

    fn config_text(&self, host: &str, extra: &str) -> String {
        let schedule = if extra.contains("schedule") {
            String::new()
        } else {
            format!("schedule = {YEARLY}\n")
        };
        format!(
            "remote = {}\n{schedule}etcd = {}\nfleet = web\nhost = {host}\nhealth-hooks = {}\n{extra}\n",
            self.remote.display(),
            self.etcd.endpoints().join(","),
            self.health.display(),
        )
    }

    /// Publish a version: `version.txt` holds its name; `markers` are empty files the hooks
    /// look for (`fail-post`, `fail-third-health`).
    fn publish(&self, version: &str, markers: &[&str]) -> String {
        let mut entries = vec![file("version.txt", version, 0o644)];
        entries.extend(markers.iter().map(|m| file(m, "", 0o644)));
        let bytes = zip_bytes(&entries);
        write_atomic(&self.remote, &bytes);
        sha256_hex(&bytes)
    }

    fn cmd(&self, i: usize) -> Cmd<'_> {
        let host = &self.hosts[i];
        self.env.cmd().config_file(&host.cfg).deploy_dir(&host.dir)
    }

    fn start(&mut self, i: usize) {
        let daemon = self.cmd(i).spawn();
        self.hosts[i].daemon = Some(daemon);
    }

    fn start_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.start(i);
        }
    }

    /// A `fleet` command with the first host's configuration.
    fn fleet(&self, args: &[&str]) -> Output {
        self.cmd(0).arg("fleet").args(args).run()
    }

    fn status_json(&self) -> (Option<i32>, serde_json::Value) {
        let out = self.fleet(&["status", "--json"]);
        let json = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("fleet status --json is not JSON: {e}\n{}", out.dump()));
        (out.code(), json)
    }

    fn live_version(&self, i: usize) -> Option<String> {
        let live = fs::canonicalize(self.hosts[i].dir.join("current")).ok()?;
        fs::read_to_string(live.join("version.txt")).ok()
    }

    fn live_release(&self, i: usize) -> Option<PathBuf> {
        fs::canonicalize(self.hosts[i].dir.join("current")).ok()
    }

    /// Wait until every host has `version` live and its post-update hooks passed (the switch
    /// comes before them); fail with the stragglers' logs.
    fn wait_all_live(&self, version: &str) {
        let ok = eventually(ROLLOUT, || {
            let events = self.events();
            self.hosts.iter().enumerate().all(|(i, h)| {
                self.live_version(i).as_deref() == Some(version)
                    && events
                        .iter()
                        .any(|e| e.kind == "end" && e.version == version && e.host == h.name)
            })
        });
        if !ok {
            let lagging: Vec<String> = (0..self.hosts.len())
                .filter(|&i| self.live_version(i).as_deref() != Some(version))
                .map(|i| {
                    format!(
                        "--- {} has {:?}; its stderr:\n{}",
                        self.hosts[i].name,
                        self.live_version(i),
                        self.hosts[i]
                            .daemon
                            .as_ref()
                            .map(Daemon::stderr)
                            .unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "{version} not live everywhere within {ROLLOUT:?}\n{}\nevents:\n{}",
                lagging.join("\n"),
                fs::read_to_string(self.env.out.join("events")).unwrap_or_default()
            );
        }
    }

    fn events(&self) -> Vec<Event> {
        read_lines(&self.env.out.join("events"))
            .iter()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                (f.len() >= 4).then(|| Event {
                    kind: f[0].to_owned(),
                    host: f[1].to_owned(),
                    version: f[2].to_owned(),
                    time: f[3].parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
                    canary: f.get(4).copied().unwrap_or_default().to_owned(),
                })
            })
            .collect()
    }

    /// Each daemon's stderr, by host.
    fn logs(&self) -> String {
        self.hosts
            .iter()
            .map(|h| {
                format!(
                    "--- {}:\n{}",
                    h.name,
                    h.daemon.as_ref().map(Daemon::stderr).unwrap_or_default()
                )
            })
            .collect()
    }
}

/// The intervals from each `start` to the same host's next `end`, `fail` or `rollback` (a
/// start with none yet lasts until now).
fn intervals(events: &[Event]) -> Vec<(String, String, f64, f64)> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.kind != "start" {
            continue;
        }
        let end = events[i + 1..]
            .iter()
            .find(|x| x.host == e.host && matches!(x.kind.as_str(), "end" | "fail" | "rollback"))
            .map_or(f64::INFINITY, |x| x.time);
        out.push((e.host.clone(), e.version.clone(), e.time, end));
    }
    out
}

/// The most intervals open at one moment.
fn most_at_once(intervals: &[(String, String, f64, f64)]) -> usize {
    let mut edges: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|(_, _, s, e)| [(*s, 1), (*e, -1)])
        .collect();
    // At equal times an end comes before a start: a place handed over is not two at once.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Issue tests 1 and 6: twenty daemons, `max-parallel = 3` then `25%`; the limit holds and is
/// used; `fleet notify` wakes every daemon on an hourly-at-best schedule within 2 s.
#[test]
fn twenty_hosts_roll_out_a_few_at_a_time_and_notify_wakes_them_all() {
    let _serial = serial();
    let mut g = Group::new(1, 20, "max-parallel = 3");
    g.start_all();
    g.wait_all_live("v1");
    let v1 = intervals(&g.events());
    assert_eq!(v1.len(), 20, "one start per host: {v1:?}");
    let most = most_at_once(&v1);
    assert!(
        (2..=3).contains(&most),
        "max-parallel = 3: {most} hosts updated at once (expected 2 or 3: at most the limit, and the limit used)\n{v1:?}"
    );

    // Test 6: the daemons only check at start and on notify.
    g.publish("v2", &[]);
    let before: Vec<usize> = g
        .hosts
        .iter()
        .map(|h| {
            count(
                &h.daemon.as_ref().expect("daemon").stderr(),
                "fleet notify: checking",
            )
        })
        .collect();
    let notified = Instant::now();
    g.fleet(&["notify"]).expect_code(0);
    let mut woken = vec![None; g.hosts.len()];
    let all = eventually(Duration::from_secs(10), || {
        for (i, h) in g.hosts.iter().enumerate() {
            if woken[i].is_none()
                && count(
                    &h.daemon.as_ref().expect("daemon").stderr(),
                    "fleet notify: checking",
                ) > before[i]
            {
                woken[i] = Some(notified.elapsed());
            }
        }
        woken.iter().all(Option::is_some)
    });
    assert!(all, "not every daemon was woken: {woken:?}\n{}", g.logs());
    let slowest = woken.iter().flatten().max().copied().unwrap_or_default();
    eprintln!("fleet notify: the last of 20 daemons checked {slowest:?} after the notify");
    assert!(
        slowest <= Duration::from_secs(2),
        "fleet notify took {slowest:?} to wake all 20 daemons (bar: 2 s)"
    );
    g.wait_all_live("v2");
    let v2: Vec<_> = intervals(&g.events())
        .into_iter()
        .filter(|i| i.1 == "v2")
        .collect();
    assert_eq!(v2.len(), 20, "{v2:?}");
    let most = most_at_once(&v2);
    assert!((2..=3).contains(&most), "v2: {most} at once\n{v2:?}");

    // The same with a percentage: 25% of 20 live hosts is 5.
    g.configure("max-parallel = 25%");
    for h in &mut g.hosts {
        let d = h.daemon.as_ref().expect("daemon");
        let before = count(&d.stderr(), "joined fleet web");
        d.signal(libc::SIGHUP);
        assert!(
            eventually(WAIT, || count(&d.stderr(), "joined fleet web") > before),
            "{}: no new join after SIGHUP\n{}",
            h.name,
            d.stderr()
        );
    }
    // This time through `publish --notify` (a ready ZIP onto the remote, then the wake-up).
    let v3_zip = g.env.root.join("v3.zip");
    write_atomic(&v3_zip, &zip_bytes(&[file("version.txt", "v3", 0o644)]));
    let published = g
        .cmd(0)
        .arg("publish")
        .arg(&v3_zip)
        .arg(&g.remote)
        .arg("--notify")
        .run();
    published.expect_code(0);
    assert!(
        published.stdout.contains("notified fleet web"),
        "{}",
        published.dump()
    );
    g.wait_all_live("v3");
    let v3: Vec<_> = intervals(&g.events())
        .into_iter()
        .filter(|i| i.1 == "v3")
        .collect();
    assert_eq!(v3.len(), 20, "{v3:?}");
    let most = most_at_once(&v3);
    assert!(
        (4..=5).contains(&most),
        "max-parallel = 25% of 20: {most} at once (expected 4 or 5)\n{v3:?}"
    );
}

/// Issue test 2: `canary = 2`, `bake = 3`: nobody else starts before both canaries ended their
/// post-update hooks and baked 3 s; `DEPLOY_CANARY` is 1 on exactly the two canaries.
#[test]
fn canaries_go_first_and_the_rest_wait_for_their_bake() {
    let _serial = serial();
    let mut g = Group::new(1, 6, "max-parallel = 2\ncanary = 2\nbake = 3");
    g.start_all();
    g.wait_all_live("v1");
    let events = g.events();
    let starts: Vec<&Event> = events.iter().filter(|e| e.kind == "start").collect();
    assert_eq!(starts.len(), 6, "{events:?}");
    let canaries: Vec<&str> = starts
        .iter()
        .filter(|e| e.canary == "1")
        .map(|e| e.host.as_str())
        .collect();
    assert_eq!(
        canaries.len(),
        2,
        "DEPLOY_CANARY=1 on exactly two hosts: {events:?}"
    );
    let canary_done = events
        .iter()
        .filter(|e| e.kind == "end" && canaries.contains(&e.host.as_str()))
        .map(|e| e.time)
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(
        canary_done.is_finite(),
        "the canaries' post-update ends: {events:?}"
    );
    let first_other = starts
        .iter()
        .filter(|e| e.canary != "1")
        .map(|e| e.time)
        .fold(f64::INFINITY, f64::min);
    assert!(
        first_other >= canary_done + 3.0,
        "a non-canary started {:.2} s after the last canary's post-update hook ended (bake 3 s)\n{events:?}",
        first_other - canary_done
    );
    // The health hooks ran on each canary during its bake.
    for c in &canaries {
        assert!(
            events.iter().any(|e| e.kind == "health" && e.host == *c),
            "no health hook on canary {c}: {events:?}"
        );
    }
}

/// Issue test 3, post-update hook: with `canary = 1` the version that fails on the first host
/// is halted everywhere; status names it and exits 1; `fleet resume` lets it roll out once its
/// hook passes; a newer version rolls out without a resume.
#[test]
fn a_failed_post_update_hook_halts_the_version_for_the_whole_group() {
    let _serial = serial();
    let mut g = Group::new(1, 5, "max-parallel = 2\ncanary = 1");
    g.start_all();
    g.wait_all_live("v1");
    let v1_releases: Vec<_> = (0..5).map(|i| g.live_release(i)).collect();

    g.publish("bad", &["fail-post"]);
    g.fleet(&["notify"]).expect_code(0);
    let halted = || {
        let (_, json) = g.status_json();
        json["halted"].as_array().is_some_and(|a| !a.is_empty())
    };
    assert!(eventually(ROLLOUT, halted), "no halt\n{}", g.logs());
    // Every daemon has seen the halt on its check (a refusal or its own rollback).
    let ok = eventually(ROLLOUT, || {
        g.hosts.iter().all(|h| {
            let log = h.daemon.as_ref().expect("daemon").stderr();
            log.contains("is halted for the fleet") || log.contains("rolled back")
        })
    });
    assert!(ok, "not every host saw the halt\n{}", g.logs());
    let events = g.events();
    let bad_starts: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == "start" && e.version == "bad")
        .collect();
    assert_eq!(
        bad_starts.len(),
        1,
        "exactly one host ran its pre-update hook for the failing version: {events:?}"
    );
    let culprit = bad_starts[0].host.clone();
    for (i, release) in v1_releases.iter().enumerate() {
        assert_eq!(
            g.live_version(i).as_deref(),
            Some("v1"),
            "{}",
            g.hosts[i].name
        );
        assert_eq!(
            g.live_release(i),
            *release,
            "{}: the release changed",
            g.hosts[i].name
        );
    }
    let (code, json) = g.status_json();
    assert_eq!(
        code,
        Some(1),
        "fleet status exits 1 with a halted version: {json}"
    );
    let halt = &json["halted"][0];
    let version = halt["version"].as_str().expect("halted version").to_owned();
    assert_eq!(halt["host"], culprit.as_str(), "{json}");
    let reason = halt["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("post-update"), "{json}");
    assert!(
        halt["time"].is_string() || halt["time"].is_number(),
        "{json}"
    );
    let text = g.fleet(&["status"]);
    assert!(
        text.stdout.contains(&version) && text.stdout.contains(&culprit),
        "{}",
        text.dump()
    );

    // Resume, with no notify and no change at the remote: the hook passes now, and every
    // host takes the version, the one that failed it (its last check rolled back) first, as
    // the canary it was.
    fs::write(g.env.out.join("pass"), "").expect("pass marker");
    g.fleet(&["resume", &version]).expect_code(0);
    g.wait_all_live("bad");
    let (code, json) = g.status_json();
    assert_eq!(code, Some(0), "{json}");
    assert!(
        json["halted"].as_array().is_some_and(Vec::is_empty),
        "{json}"
    );

    // Another failing version halts; a newer one rolls out without a resume, and the halt
    // stays until resumed.
    fs::remove_file(g.env.out.join("pass")).expect("remove the pass marker");
    g.publish("bad2", &["fail-post"]);
    g.fleet(&["notify"]).expect_code(0);
    assert!(eventually(ROLLOUT, halted), "no halt of bad2\n{}", g.logs());
    g.publish("v2", &[]);
    g.fleet(&["notify"]).expect_code(0);
    g.wait_all_live("v2");
    let (code, json) = g.status_json();
    assert_eq!(
        code,
        Some(1),
        "bad2 is still halted: {json}\n{:?}\n{}",
        g.events(),
        g.logs()
    );
    assert_eq!(
        json["halted"].as_array().map(Vec::len),
        Some(1),
        "{json}\n{:?}\n{}",
        g.events(),
        g.logs()
    );
    let starts = g
        .events()
        .iter()
        .filter(|e| e.kind == "start" && e.version == "bad2")
        .count();
    assert_eq!(starts, 1, "one host tried bad2 (canary = 1)");
}

/// Issue test 3, health hook and `on-halt = revert`: the third host's health hook fails during
/// its bake; it rolls back, the version halts, and the two hosts already on it go back to
/// their previous release, never more at once than `max-parallel`.
#[test]
fn a_failed_health_hook_halts_and_on_halt_revert_takes_the_others_back() {
    let _serial = serial();
    let mut g = Group::new(1, 4, "max-parallel = 2\nbake = 2\non-halt = revert");
    g.start_all();
    g.wait_all_live("v1");
    g.publish("sick", &["fail-third-health"]);
    g.fleet(&["notify"]).expect_code(0);
    let reverted = || {
        let ev = g.events();
        let unhealthy = ev.iter().any(|e| e.kind == "unhealthy");
        let healthy_hosts: Vec<&str> = ev
            .iter()
            .filter(|e| e.kind == "end" && e.version == "sick")
            .map(|e| e.host.as_str())
            .collect();
        unhealthy
            && healthy_hosts.len() >= 2
            && (0..4).all(|i| g.live_version(i).as_deref() == Some("v1"))
    };
    assert!(
        eventually(ROLLOUT, reverted),
        "no halt and revert\nevents:\n{:?}\n{}",
        g.events(),
        g.logs()
    );
    let events = g.events();
    // The first two hosts to bake it were healthy; any host after them is not (two may be
    // baking at once, so one or two fail).
    let unhealthy: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "unhealthy")
        .map(|e| e.host.as_str())
        .collect();
    assert!((1..=2).contains(&unhealthy.len()), "{events:?}");
    let sick_ok: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "end" && e.version == "sick" && !unhealthy.contains(&e.host.as_str()))
        .map(|e| e.host.as_str())
        .collect();
    assert_eq!(
        sick_ok.len(),
        2,
        "two hosts had the version live: {events:?}"
    );
    // Each host that had the sick version live ran its hooks again for v1 (the revert).
    for h in &sick_ok {
        let took_sick = events
            .iter()
            .position(|e| e.kind == "end" && e.version == "sick" && e.host == *h)
            .expect("end");
        assert!(
            events[took_sick..]
                .iter()
                .any(|e| e.kind == "start" && e.version == "v1" && e.host == *h),
            "{h} did not revert to v1: {events:?}"
        );
    }
    let most = most_at_once(&intervals(&events));
    assert!(
        most <= 2,
        "{most} hosts updating or reverting at once (limit 2): {events:?}"
    );
    let (code, json) = g.status_json();
    assert_eq!(code, Some(1), "{json}");
    assert!(
        json["halted"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("health")),
        "{json}"
    );
    assert!(
        json["halted"][0]["host"]
            .as_str()
            .is_some_and(|h| unhealthy.contains(&h)),
        "the halt names an unhealthy host: {json}"
    );
}

/// Issue test 4: a daemon SIGKILLed while its pre-update hook holds a place; the others go on
/// within `fleet-lease` + 2 s.
#[test]
fn a_host_killed_holding_a_place_frees_it_when_its_lease_expires() {
    let _serial = serial();
    let mut g = Group::new(1, 3, "max-parallel = 1\nfleet-lease = 3");
    g.start_all();
    g.wait_all_live("v1");
    fs::write(g.env.out.join("pre-sleep-v2"), "").expect("marker");
    g.publish("v2", &[]);
    g.fleet(&["notify"]).expect_code(0);
    let pid_file = g.env.out.join("sleeper/pid");
    assert!(
        eventually(ROLLOUT, || fs::read_to_string(&pid_file)
            .is_ok_and(|p| !p.trim().is_empty())),
        "no host started v2\n{}",
        g.logs()
    );
    let sleeper = g
        .events()
        .into_iter()
        .find(|e| e.kind == "start" && e.version == "v2")
        .expect("the sleeper's start")
        .host;
    let index = g
        .hosts
        .iter()
        .position(|h| h.name == sleeper)
        .expect("host");
    // Kill the daemon, then its hook's process group (it would outlive the daemon).
    let killed = now();
    g.hosts[index]
        .daemon
        .as_mut()
        .expect("daemon")
        .signal(libc::SIGKILL);
    let hook: i32 = fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number");
    // SAFETY: kill(2) of the hook's process group, which the test started through the agent.
    unsafe { libc::kill(-hook, libc::SIGKILL) };
    let others: Vec<usize> = (0..3).filter(|&i| i != index).collect();
    let ok = eventually(ROLLOUT, || {
        others
            .iter()
            .all(|&i| g.live_version(i).as_deref() == Some("v2"))
    });
    assert!(ok, "the others did not go on\n{}", g.logs());
    let next = g
        .events()
        .into_iter()
        .filter(|e| e.kind == "start" && e.version == "v2" && e.host != sleeper)
        .map(|e| e.time)
        .fold(f64::INFINITY, f64::min);
    let waited = next - killed;
    eprintln!("the next host started {waited:.2} s after the holder was killed (lease 3 s)");
    assert!(
        waited <= 5.0,
        "the place came free {waited:.2} s after the kill (bar: fleet-lease 3 s + 2 s)"
    );
}

/// Issue test 5: a three-member etcd loses its leader in the middle of a rollout (it
/// completes, the limit holds); then all of etcd stops (nothing new is deployed, checks fail
/// and are logged, no daemon exits) and comes back (the rollout completes).
#[test]
fn etcd_losing_its_leader_or_all_members_never_breaks_the_rollout() {
    let _serial = serial();
    let mut g = Group::new(3, 10, "max-parallel = 2\nschedule = */2 * * * * *");
    g.start_all();
    // Kill the leader once a few hosts are through.
    assert!(
        eventually(ROLLOUT, || g
            .events()
            .iter()
            .filter(|e| e.kind == "end")
            .count()
            >= 3),
        "the rollout did not start\n{}",
        g.logs()
    );
    let leader = g
        .etcd
        .members
        .iter()
        .position(|m| m.is_leader())
        .expect("a leader");
    g.etcd.members[leader].kill();
    g.wait_all_live("v1");
    let most = most_at_once(&intervals(&g.events()));
    assert!(
        most <= 2,
        "{most} at once across the leader change (limit 2)"
    );
    g.etcd.members[leader].restart();
    g.etcd.wait_healthy();

    // All of etcd stopped: nothing new goes live.
    let releases: Vec<_> = (0..10).map(|i| g.live_release(i)).collect();
    for m in &mut g.etcd.members {
        m.kill();
    }
    let failures: Vec<usize> = g
        .hosts
        .iter()
        .map(|h| {
            count(
                &h.daemon.as_ref().expect("daemon").stderr(),
                "etcd unreachable",
            )
        })
        .collect();
    g.publish("v2", &[]);
    let ok = eventually(ROLLOUT, || {
        g.hosts.iter().enumerate().all(|(i, h)| {
            count(
                &h.daemon.as_ref().expect("daemon").stderr(),
                "etcd unreachable",
            ) > failures[i]
        })
    });
    assert!(ok, "not every daemon logged a failed check\n{}", g.logs());
    for (i, release) in releases.iter().enumerate() {
        assert_eq!(
            g.live_release(i),
            *release,
            "{} deployed without etcd",
            g.hosts[i].name
        );
        assert!(
            g.hosts[i].daemon.as_mut().expect("daemon").is_running(),
            "{} exited without etcd",
            g.hosts[i].name
        );
    }
    for m in &mut g.etcd.members {
        m.restart();
    }
    g.etcd.wait_healthy();
    g.wait_all_live("v2");
    let v2: Vec<_> = intervals(&g.events())
        .into_iter()
        .filter(|i| i.1 == "v2")
        .collect();
    assert_eq!(v2.len(), 10, "{v2:?}");
    assert!(most_at_once(&v2) <= 2, "{v2:?}");
}

/// Issue test 7: bad fleet settings are configuration errors (exit 2 naming the key); a wrong
/// etcd password is exit 2; unreachable endpoints fail in bounded time with exit 1 and leave
/// `current` alone; the password shows nowhere.
#[test]
fn bad_fleet_settings_wrong_passwords_and_unreachable_etcd() {
    let env = Env::new();
    let remote = env.root.join("app.zip");
    write_atomic(&remote, &zip_bytes(&[file("version.txt", "v1", 0o644)]));
    let base = format!("remote = {}\n", remote.display());
    let cases: &[(&str, &str)] = &[
        ("etcd = http://127.0.0.1:1\nfleet = web/eu\n", "fleet"),
        (
            "etcd = http://127.0.0.1:1\nfleet = web\nmax-parallel = 0\n",
            "max-parallel",
        ),
        (
            "etcd = http://127.0.0.1:1\nfleet = web\nmax-parallel = 150%\n",
            "max-parallel",
        ),
        ("etcd = http://127.0.0.1:1\n", "fleet"),
        ("canary = 2\n", "canary"),
        ("fleet = web\n", "etcd"),
    ];
    for (text, key) in cases {
        env.config(&format!("{base}{text}"));
        for args in [&["-f"][..], &["check-config"][..]] {
            let out = env.run(args);
            out.expect_code(2);
            assert!(
                out.stderr.contains(key),
                "{text:?} with {args:?}: the message does not name `{key}`\n{}",
                out.dump()
            );
        }
    }
    assert!(!env.current().exists());

    // A live release, then unreachable endpoints: exit 1 in bounded time, current untouched.
    env.config(&base);
    env.run(&["-f"]).expect_code(0);
    let live = env.live_release();
    write_atomic(&remote, &zip_bytes(&[file("version.txt", "v2", 0o644)]));
    env.config(&format!(
        "{base}etcd = http://127.0.0.1:1,http://127.0.0.1:2\nfleet = web\n"
    ));
    let out = env.run(&["-f"]);
    out.expect_code(1);
    assert!(
        out.elapsed < Duration::from_secs(15),
        "unreachable etcd took {:?}",
        out.elapsed
    );
    assert!(out.stderr.contains("127.0.0.1:1"), "{}", out.dump());
    assert_eq!(env.live_release(), live, "current changed without etcd");

    let _serial = serial();
    let etcd = Cluster::start(1);
    write_atomic(&remote, &zip_bytes(&[file("version.txt", "v3", 0o644)]));
    let endpoint = etcd.endpoints().join(",");
    // canary larger than the group: one host, canary 3.
    env.config(&format!(
        "{base}etcd = {endpoint}\nfleet = web\ncanary = 3\n"
    ));
    let out = env.run(&["-f"]);
    out.expect_code(2);
    assert!(out.stderr.contains("canary"), "{}", out.dump());
    assert_eq!(env.live_release(), live);

    // A wrong password, with authentication on.
    let password = "pw-Zq81xKd0";
    etcd.members[0].enable_auth("root", password);
    env.pre_hook("10-env", &format!("env > {}/hook-env", env.out.display()));
    env.config(&format!(
        "{base}etcd = {endpoint}\nfleet = web\netcd-user = root\netcd-password = not-{password}\n"
    ));
    let out = env.run(&["-f"]);
    out.expect_code(2);
    assert!(out.stderr.contains("etcd-password"), "{}", out.dump());
    assert!(!out.all().contains(password), "{}", out.dump());

    // The right one: a deploy; the password in no log, argument, hook environment or status.
    write_atomic(&remote, &zip_bytes(&[file("version.txt", "v4", 0o644)]));
    let cfg = format!(
        "{base}etcd = {endpoint}\nfleet = web\netcd-user = root\netcd-password = {password}\n"
    );
    env.config(&cfg);
    let mut d = env.cmd().args(["-s", YEARLY]).spawn();
    d.wait_for("v4 live", || {
        env.live()
            .and_then(|l| fs::read_to_string(l.join("version.txt")).ok())
            .as_deref()
            == Some("v4")
    });
    let args = fs::read(format!("/proc/{}/cmdline", d.pid())).expect("cmdline");
    assert!(!contains_bytes(&args, password.as_bytes()));
    let hook_env = fs::read_to_string(env.out.join("hook-env")).expect("hook env");
    assert!(
        !hook_env.contains(password),
        "the password reached the hooks"
    );
    assert!(hook_env.contains("DEPLOY_FLEET=web"), "{hook_env}");
    let status = env.run(&["fleet", "status", "--json"]);
    status.expect_code(0);
    assert!(!status.all().contains(password));
    let described = env.run(&["check-config"]);
    assert!(!described.all().contains(password), "{}", described.dump());
    assert!(!d.stderr().contains(password));
    assert!(files_containing(&env.deploy, password.as_bytes()).is_empty());
}

/// Issue 14, tests 2 and 3: the status page of one of three daemons (etcd with a password)
/// shows the group; a rollout with `max-parallel = 1` moves the version's bar from 0 of 3 to
/// 3 of 3 on the open page; a halt appears at the top, with host and reason, within 2 s. No
/// secret, no console error, nothing from elsewhere.
#[test]
fn the_status_page_follows_a_rollout_and_a_halt() {
    let _serial = serial();
    let mut g = Group::new(1, 3, "");
    let password = "etcd-Pw-71c3";
    g.etcd.members[0].enable_auth("root", password);
    let extra = format!("max-parallel = 1\nbake = 3\netcd-user = root\netcd-password = {password}");
    g.configure(&extra);
    let h00 = format!("{}listen = 127.0.0.1:0\n", g.config_text("h00", &extra));
    write_atomic(&g.hosts[0].cfg, h00.as_bytes());
    g.start_all();
    g.wait_all_live("v1");
    let port = listener_port(g.hosts[0].daemon.as_ref().expect("daemon"));
    let origin = format!("http://127.0.0.1:{port}");
    let browser = crate::common::browser::Browser::start();
    let mut page = browser.open(&format!("{origin}/"));
    page.wait_for(
        "three hosts",
        "document.querySelectorAll('#hosts tr').length === 3",
    );

    // The rollout, watched on the open page.
    page.eval("window.__notReloaded = true");
    let v2 = g.publish("v2", &[]);
    g.fleet(&["notify"]).expect_code(0);
    let count = format!(
        "(document.querySelector('[data-version=\"{v2}\"] .count') || {{}}).textContent || ''"
    );
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + ROLLOUT;
    while seen.last().map(String::as_str) != Some("3 of 3") {
        assert!(
            Instant::now() < deadline,
            "the bar did not reach 3 of 3: {seen:?}"
        );
        let now = page.eval(&count).as_str().unwrap_or_default().to_owned();
        if !now.is_empty() && seen.last() != Some(&now) {
            if let Some(dir) = std::env::var_os("REPO_DEPLOY_SCREENSHOTS")
                && now == "1 of 3"
            {
                page.screenshot(&PathBuf::from(dir).join("page-fleet.png"));
            }
            seen.push(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("the open page showed {seen:?}");
    assert!(
        seen.len() >= 3,
        "the bar moved through {seen:?}: fewer than three states"
    );
    let numbers: Vec<u32> = seen
        .iter()
        .filter_map(|s| s.split(' ').next()?.parse().ok())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(
        page.eval("window.__notReloaded === true"),
        true,
        "the page reloaded"
    );

    // A halt: at the top within 2 s of etcd having it.
    g.publish("bad", &["fail-post"]);
    g.fleet(&["notify"]).expect_code(0);
    let mut halted_at = None;
    let ok = eventually(ROLLOUT, || {
        let (_, json) = g.status_json();
        let halted = json["halted"].as_array().is_some_and(|a| !a.is_empty());
        if halted {
            halted_at = Some(Instant::now());
        }
        halted
    });
    assert!(ok, "no halt\n{}", g.logs());
    let top = page.wait_for(
        "the halt at the top",
        "(document.querySelector('#alerts > :first-child[data-halted]') || {}).textContent",
    );
    let shown = halted_at.expect("halt time").elapsed();
    let (_, json) = g.status_json();
    let halt = &json["halted"][0];
    let top = top.as_str().unwrap_or_default();
    eprintln!("the halt was on the page {shown:?} after `fleet status` saw it");
    assert!(
        shown <= Duration::from_secs(2),
        "the halt took {shown:?} to show"
    );
    assert!(
        top.contains(halt["host"].as_str().unwrap_or("?")) && top.contains("post-update hook"),
        "the halt names host and reason: {top}"
    );
    if let Some(dir) = std::env::var_os("REPO_DEPLOY_SCREENSHOTS") {
        page.screenshot(&PathBuf::from(dir).join("page-fleet-halted.png"));
    }

    // Nothing secret, nothing broken, nothing from elsewhere.
    let html = page.eval("document.documentElement.outerHTML");
    assert!(!html.as_str().unwrap_or_default().contains(password));
    for path in ["/status.json", "/fleet.json"] {
        let reply = request(port, "GET", path, &[]);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert!(
            !reply.body.contains(password),
            "{path} holds the etcd password"
        );
    }
    page.settle();
    assert!(
        page.errors.is_empty(),
        "errors in the browser: {:?}",
        page.errors
    );
    assert!(
        page.requests
            .iter()
            .all(|u| u.starts_with(&format!("{origin}/"))),
        "{:?}",
        page.requests
    );
}

/// Signed releases in fleet mode: a version refused as untrusted (exit 6) halts nothing; the
/// good signature then rolls out as usual.
#[test]
fn a_refused_signature_halts_nothing_in_the_fleet() {
    let _serial = serial();
    let keys = tempfile::tempdir().expect("tempdir");
    let (public, secret) = crate::common::minisign::keypair_unencrypted(keys.path(), "k");
    let g = Group::new(1, 2, &format!("trusted-keys = {}", public.display()));
    let t = 1_790_000_000u64;
    let sign = |ts: u64| {
        let comment = format!("timestamp:{ts}\tfile:app.zip\thashed");
        crate::common::minisign::sign(&secret, &g.remote, Some(&comment));
    };
    sign(t);
    for i in 0..2 {
        g.cmd(i).arg("-f").run().expect_code(0);
    }
    // v2 under v1's signature: refused by both hosts.
    g.publish("v2", &[]);
    for i in 0..2 {
        let out = g.cmd(i).arg("-f").run();
        out.expect_code(6);
        assert!(out.stderr.contains("bad signature"), "{}", out.dump());
        assert_eq!(g.live_version(i).as_deref(), Some("v1"));
    }
    let (code, json) = g.status_json();
    assert_eq!(code, Some(0), "{json}");
    assert!(
        json["halted"].as_array().is_some_and(Vec::is_empty),
        "a refusal halts nothing: {json}"
    );
    // Signed, it rolls out.
    sign(t + 10);
    for i in 0..2 {
        g.cmd(i).arg("-f").run().expect_code(0);
        assert_eq!(g.live_version(i).as_deref(), Some("v2"));
    }
}
