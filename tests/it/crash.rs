//! Crashes (issue #5, part 3): SIGKILL at random moments of an update, at least 200 times.
//!
//! Each round publishes a new version on a loopback origin, starts `repo-deploy -f -v`, and
//! kills it after a delay drawn from a seeded RNG over the length of a whole update (process
//! start, download, unpack, durability, pre-update hook, switch, post-update hook, retention),
//! as measured by the recent complete runs. After each kill, `current` must resolve to a
//! complete release (every file, mode and link equal to the archive it came from) and so must
//! every visible release; then a normal `-f` run must remove every leftover and converge.
//!
//! The 2,000-kill soak is `crash_soak` (ignored here; `bench/crash-soak.sh` runs it).
//! `CRASH_SEED` picks the seed, `CRASH_KILLS` the number of kills of the soak.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::common::origin::{Answer, Origin};
use crate::common::*;
use rand::{Rng, SeedableRng};

const DEFAULT_SEED: u64 = 0x5eed_c0de;

/// Version `n` of a small application: ~60 KB in 30 entries, every file's bytes depending on
/// `n`, with a nested directory, an executable and a symlink.
fn app(n: u32) -> Vec<Entry> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(n));
    let mut entries = vec![
        file("version.txt", format!("{n}\n"), 0o644),
        file("bin/start", format!("#!/bin/sh\necho version {n}\n"), 0o755),
        link("start", "bin/start"),
        file("a/b/c/deep.txt", format!("deep {n}\n").repeat(50), 0o640),
    ];
    for k in 0..24 {
        let mut data = vec![0u8; rng.random_range(256..4096)];
        rng.fill(&mut data[..]);
        entries.push(file(&format!("data/blob-{k:02}.bin"), data, 0o644));
    }
    entries
}

/// The version a release directory holds, if it is complete: every entry of that version's
/// archive, byte for byte, with its mode, and nothing else.
fn complete(release: &Path) -> Result<u32, String> {
    let text = fs::read_to_string(release.join("version.txt"))
        .map_err(|e| format!("{}: no readable version.txt: {e}", release.display()))?;
    let n: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{}: version.txt holds {text:?}", release.display()))?;
    let (expected, actual) = (expected_tree(&app(n)), tree(release));
    if expected != actual {
        let missing: Vec<_> = expected
            .keys()
            .filter(|k| actual.get(*k) != expected.get(*k))
            .collect();
        let extra: Vec<_> = actual
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        return Err(format!(
            "{} is not a complete release of version {n}: missing or different {missing:?}, unexpected {extra:?}",
            release.display()
        ));
    }
    Ok(n)
}

/// What a kill can leave behind: hidden entries in `releases/`, dot files beside `current`
/// other than the lock, downloads in the cache.
fn leftovers(env: &Env) -> Vec<PathBuf> {
    let hidden = |p: &PathBuf| {
        p.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"."))
    };
    let mut found: Vec<PathBuf> = list(&env.releases_dir())
        .into_iter()
        .filter(hidden)
        .collect();
    found.extend(
        list(&env.deploy)
            .into_iter()
            .filter(|p| hidden(p) && p.file_name().is_some_and(|n| n != ".lock")),
    );
    found.extend(list(&env.deploy.join("cache")).into_iter().filter(|p| {
        p.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"download-"))
    }));
    found
}

/// The kind of a leftover, for the statistics: `.staging`, `.trash`, `.current.tmp`, ...
fn kind_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = name.split(['-']).next().unwrap_or_default().to_string();
    if name.starts_with("download-") {
        "cache/download".into()
    } else {
        kind
    }
}

/// Where a killed run was, from its `-v` log and whether its request reached the origin.
fn phase(log: &str, requested: bool) -> &'static str {
    if log.contains(" deployed ") {
        "6 retention+exit"
    } else if log.contains(" switched ") {
        "5 post-hook"
    } else if log.contains(" unpacked ") {
        "4 pre-hook+switch"
    } else if log.contains("new version") {
        "3 unpack+durable"
    } else if requested {
        "2 download"
    } else {
        "1 start"
    }
}

/// The agent with the test's flags, stderr to a file: unlike a pipe, it holds every line
/// written before the kill as soon as the process is gone.
fn agent(env: &Env, url: &str, log: &Path) -> Command {
    let mut c = Command::new(binary(env));
    c.arg("-c")
        .arg(&env.cfg)
        .arg("-d")
        .arg(&env.deploy)
        .arg("--pre-hooks")
        .arg(&env.pre)
        .arg("--post-hooks")
        .arg(&env.post)
        .args(["-v", "-f", "-r", url]);
    for (k, _) in std::env::vars_os() {
        if k.as_bytes().starts_with(b"REPO_DEPLOY_") {
            c.env_remove(&k);
        }
    }
    c.current_dir(&env.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("create the run's log"));
    c
}

/// The binary under test, hard-linked into the test directory on first use: a long run must
/// not fail because a concurrent `cargo build` replaced `target/debug/repo-deploy`.
fn binary(env: &Env) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_repo-deploy"));
    let pinned = env.root.join("repo-deploy");
    if pinned.exists() || fs::hard_link(&built, &pinned).is_ok() {
        pinned
    } else {
        built
    }
}

/// A run that is not killed, timed from spawn to exit as closely as the kill delays are
/// (the harness's `Cmd::run` polls, which would stretch the span past the update), with the
/// moments its steps ended.
fn complete_run(env: &Env, url: &str, origin: &Origin) -> (Output, Timeline) {
    let log = env.out("complete.log");
    let (started, wall) = (Instant::now(), SystemTime::now());
    let requests = origin.request_times().len();
    let mut child = agent(env, url, &log).spawn().expect("start repo-deploy");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("repo-deploy -f -r {url} did not finish within {RUN_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_micros(200));
    };
    let elapsed = started.elapsed();
    let stderr = fs::read_to_string(&log).unwrap_or_default();
    let request = origin
        .request_times()
        .get(requests)
        .map(|t| t.saturating_duration_since(started));
    let timeline = Timeline::of(&stderr, wall, request, elapsed);
    let out = Output {
        what: format!("repo-deploy -v -f -r {url}"),
        status,
        stdout: String::new(),
        stderr,
        elapsed,
    };
    (out, timeline)
}

/// When the steps of a complete update ended, from its start.
#[derive(Debug, Clone, Default)]
struct Timeline {
    /// The request reached the origin (HTTP only).
    request: Option<Duration>,
    fetched: Option<Duration>,
    unpacked: Option<Duration>,
    switched: Option<Duration>,
    deployed: Option<Duration>,
    end: Duration,
}

impl Timeline {
    /// Read the moments off the `-v` log, whose lines start with an RFC 3339 time.
    fn of(log: &str, wall: SystemTime, request: Option<Duration>, end: Duration) -> Timeline {
        let at = |needle: &str| {
            let line = log.lines().find(|l| l.contains(needle))?;
            let stamp = chrono::DateTime::parse_from_rfc3339(line.split(' ').next()?).ok()?;
            SystemTime::from(stamp).duration_since(wall).ok()
        };
        Timeline {
            request,
            fetched: at("new version"),
            unpacked: at(" unpacked "),
            switched: at(" switched "),
            deployed: at(" deployed "),
            end,
        }
    }

    /// The phases as `(name, from, to)`, the names of [`phase`].
    fn phases(&self) -> Vec<(&'static str, Duration, Duration)> {
        let marks = [
            ("1 start", Some(Duration::ZERO)),
            ("2 download", self.request),
            ("3 unpack+durable", self.fetched),
            ("4 pre-hook+switch", self.unpacked),
            ("5 post-hook", self.switched),
            ("6 retention+exit", self.deployed),
            ("end", Some(self.end)),
        ];
        let known: Vec<(&'static str, Duration)> = marks
            .iter()
            .filter_map(|(name, t)| t.map(|t| (*name, t)))
            .collect();
        known
            .windows(2)
            .filter(|w| w[1].1 > w[0].1)
            .map(|w| (w[0].0, w[0].1, w[1].1))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Stats {
    rounds: usize,
    kills: usize,
    /// Runs that ended before their kill came.
    finished: usize,
    by_phase: BTreeMap<&'static str, usize>,
    by_kind: BTreeMap<Kind, usize>,
    /// Next runs that found a switch whose post-update hooks had not finished, and ran them.
    post_hook_reruns: usize,
    /// Kills after which `current` named the new version (it had switched).
    switched: usize,
    /// Leftovers found after a kill and removed by the next run, by kind.
    leftovers: BTreeMap<String, usize>,
    /// Kills that left at least one leftover.
    kills_with_leftovers: usize,
    max_releases: usize,
    /// Median time of a complete update, by remote (the last 9).
    medians: BTreeMap<Kind, Duration>,
    elapsed: Duration,
}

impl Stats {
    fn report(&self, seed: u64) -> String {
        let mut s = format!(
            "seed {seed:#x}: {} kills in {} rounds ({} runs finished before their kill) in {:.1}s\n",
            self.kills,
            self.rounds,
            self.finished,
            self.elapsed.as_secs_f64()
        );
        s.push_str("  kills by phase:");
        for (p, n) in &self.by_phase {
            s.push_str(&format!(" [{p}: {n}]"));
        }
        s.push_str("\n  kills by remote:");
        for (k, n) in &self.by_kind {
            s.push_str(&format!(" [{k:?}: {n}]"));
        }
        s.push_str("\n  a complete update took (median of the last 9):");
        for (k, d) in &self.medians {
            s.push_str(&format!(" [{k:?}: {:.0} ms]", d.as_secs_f64() * 1000.0));
        }
        s.push_str(&format!(
            "\n  current named the new version after {} kills, the old one after {}\n",
            self.switched,
            self.kills - self.switched
        ));
        s.push_str(&format!(
            "  {} kills left leftovers, all removed by the next run:",
            self.kills_with_leftovers
        ));
        for (k, n) in &self.leftovers {
            s.push_str(&format!(" [{k}: {n}]"));
        }
        s.push_str(&format!(
            "\n  at most {} releases on disk (keep = 2)\n  {} next runs re-ran the post-update hooks of a switch a kill had cut short\n",
            self.max_releases, self.post_hook_reruns
        ));
        s
    }
}

/// The median of the recent complete update times.
fn median(timelines: &[Timeline]) -> Duration {
    let mut recent: Vec<Duration> = timelines.iter().rev().take(9).map(|t| t.end).collect();
    recent.sort();
    recent[recent.len() / 2]
}

/// When to kill a run.
#[derive(Debug, Clone, Copy)]
struct Aim {
    /// Wait for this first.
    after: Marker,
    /// Then wait this long.
    delay: Duration,
}

/// An event of a run, seen from outside.
#[derive(Debug, Clone, Copy)]
enum Marker {
    Spawn,
    /// The request reached the origin.
    Request,
    /// The run's log holds this text.
    Log(&'static str),
}

/// Half the time anywhere in the update: a delay from the spawn, uniform over the median
/// length of a complete update (plus 5%). Half the time in a phase drawn uniformly: once the
/// run's own log (or the origin) shows the phase began, a delay uniform over that phase's
/// length in the latest complete update — so that short phases (the switch, retention) are
/// hit too, not only the long ones, whatever the jitter of a process start.
fn aim(rng: &mut impl Rng, timelines: &[Timeline]) -> Aim {
    if rng.random_bool(0.5) {
        return Aim {
            after: Marker::Spawn,
            delay: median(timelines).mul_f64(1.05 * rng.random::<f64>()),
        };
    }
    let phases = timelines.last().expect("a timeline").phases();
    let (name, from, to) = phases[rng.random_range(0..phases.len())];
    let after = match name {
        "2 download" => Marker::Request,
        "3 unpack+durable" => Marker::Log("new version"),
        "4 pre-hook+switch" => Marker::Log(" unpacked "),
        "5 post-hook" => Marker::Log(" switched "),
        "6 retention+exit" => Marker::Log(" deployed "),
        _ => Marker::Spawn,
    };
    Aim {
        after,
        delay: (to - from).mul_f64(rng.random::<f64>()),
    }
}

/// The three kinds of remote the rounds draw from: a loopback HTTP origin (slowed down a
/// little, so a kill can land in the download), a local ZIP and a local directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Http,
    Zip,
    Dir,
}

struct Remotes {
    origin: Origin,
    zip: PathBuf,
    dir: PathBuf,
}

impl Remotes {
    fn new(env: &Env) -> Remotes {
        let origin = Origin::start();
        origin.answer(Answer::Serve {
            chunk: 8 * 1024,
            pause: Duration::from_millis(4),
        });
        Remotes {
            origin,
            zip: env.root.join("app.zip"),
            dir: env.root.join("site"),
        }
    }

    fn url(&self, kind: Kind) -> String {
        match kind {
            Kind::Http => self.origin.url("app.zip"),
            Kind::Zip => self.zip.display().to_string(),
            Kind::Dir => format!("{}/", self.dir.display()),
        }
    }

    /// Offer version `n` on `kind` (no agent runs while this is done).
    fn publish(&self, kind: Kind, n: u32) {
        match kind {
            Kind::Http => self
                .origin
                .publish(&format!("\"v{n}\""), zip_bytes(&app(n))),
            Kind::Zip => {
                zip(&self.zip, &app(n));
            }
            Kind::Dir => {
                let fresh = self.dir.with_extension("new");
                let _ = fs::remove_dir_all(&fresh);
                write_entries(&fresh, &app(n));
                let old = self.dir.with_extension("old");
                if self.dir.exists() {
                    fs::rename(&self.dir, &old).expect("move the old site away");
                }
                fs::rename(&fresh, &self.dir).expect("move the new site in");
                let _ = fs::remove_dir_all(&old);
            }
        }
    }
}

/// Write `entries` as a directory tree under `root`.
fn write_entries(root: &Path, entries: &[Entry]) {
    use std::os::unix::fs::PermissionsExt;
    for e in entries {
        match e {
            Entry::File(name, data, mode) => {
                let path = root.join(name);
                fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                fs::write(&path, data).expect("write");
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).expect("chmod");
            }
            Entry::Dir(name, _) => fs::create_dir_all(root.join(name)).expect("mkdir"),
            Entry::Link(name, target) => {
                let path = root.join(name);
                fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::os::unix::fs::symlink(target, &path).expect("symlink");
            }
        }
    }
}

/// The processes that have `lock` open, for a failure message: `pid comm`.
fn lock_holders(lock: &Path) -> Vec<String> {
    let mut holders = Vec::new();
    for proc in list(Path::new("/proc")) {
        if list(&proc.join("fd"))
            .iter()
            .any(|fd| fs::read_link(fd).is_ok_and(|t| t == lock))
        {
            let comm = fs::read_to_string(proc.join("comm")).unwrap_or_default();
            holders.push(format!("{} {}", proc.display(), comm.trim()));
        }
    }
    holders
}

/// Kill `kills` runs; panic at the first broken invariant, naming the round, seed and delay.
fn crash_rounds(kills: usize, seed: u64) -> Stats {
    let started = Instant::now();
    let env = Env::new();
    let _tmpfs = on_tmpfs(&env);
    env.config("keep = 2\nhook-timeout = 30\n");
    let hooks_log = env.out("hooks.log");
    env.pre_hook(
        "50-check",
        &format!(
            "test -f \"$CURRENT_CONFIG/version.txt\" || exit 1\nsleep 0.005\necho \"pre $(cat \"$CURRENT_CONFIG/version.txt\")\" >> {}",
            hooks_log.display()
        ),
    );
    env.post_hook(
        "50-reload",
        &format!(
            "sleep 0.005\necho \"post $(cat \"$CURRENT_CONFIG/version.txt\")\" >> {}",
            hooks_log.display()
        ),
    );
    let remotes = Remotes::new(&env);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut stats = Stats::default();
    let mut timelines: BTreeMap<Kind, Vec<Timeline>> = BTreeMap::new();

    // Version 0, then two complete updates from each kind of remote to measure them.
    let mut n = 0u32;
    for kind in [
        Kind::Http,
        Kind::Http,
        Kind::Http,
        Kind::Zip,
        Kind::Zip,
        Kind::Dir,
        Kind::Dir,
    ] {
        remotes.publish(kind, n);
        let (out, timeline) = complete_run(&env, &remotes.url(kind), &remotes.origin);
        out.expect_code(0);
        if n > 0 {
            timelines.entry(kind).or_default().push(timeline);
        }
        n += 1;
    }
    n -= 1;

    while stats.kills < kills {
        assert!(
            stats.rounds < kills * 3 + 50,
            "too few kills landed: {}",
            stats.report(seed)
        );
        n += 1;
        stats.rounds += 1;
        let kind = match rng.random_range(0..10) {
            0..=2 => Kind::Http,
            3..=7 => Kind::Zip,
            _ => Kind::Dir,
        };
        remotes.publish(kind, n);
        let url = remotes.url(kind);
        let requests = remotes.origin.requests().len();
        let aim = aim(&mut rng, &timelines[&kind]);
        let run_log = env.out("run.log");
        let mut child = agent(&env, &url, &run_log)
            .spawn()
            .expect("start repo-deploy");
        let reached = || match aim.after {
            Marker::Spawn => true,
            Marker::Request => remotes.origin.request_times().len() > requests,
            Marker::Log(text) => fs::read_to_string(&run_log).is_ok_and(|l| l.contains(text)),
        };
        let watching = Instant::now();
        while !reached() && watching.elapsed() < RUN_TIMEOUT {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            thread::sleep(Duration::from_micros(100));
        }
        thread::sleep(aim.delay);
        let _ = child.kill(); // SIGKILL; a no-op if it has exited (it is not reaped yet)
        let status = child.wait().expect("wait for repo-deploy");
        let text = fs::read_to_string(&run_log).unwrap_or_default();
        let ctx = format!(
            "round {} (version {n} from {kind:?}, seed {seed:#x}, kill {aim:?})",
            stats.rounds
        );
        let killed = status.signal() == Some(libc::SIGKILL);
        let at = phase(&text, remotes.origin.requests().len() > requests);
        if killed {
            stats.kills += 1;
            if kills > 200 && stats.kills % 250 == 0 {
                eprintln!(
                    "{} kills, {} rounds, {:.0}s",
                    stats.kills,
                    stats.rounds,
                    started.elapsed().as_secs_f64()
                );
            }
            *stats.by_kind.entry(kind).or_default() += 1;
            *stats.by_phase.entry(at).or_default() += 1;
        } else {
            assert_eq!(
                status.code(),
                Some(0),
                "{ctx}: a run that was not killed failed\n{text}"
            );
            stats.finished += 1;
        }

        // 1. current resolves to a complete release: the old version or the new one.
        let fail =
            |what: String| -> ! { panic!("{ctx}: {what}\n--- log of the killed run ---\n{text}") };
        let live = env
            .live()
            .unwrap_or_else(|| fail("current is missing".into()));
        let target = fs::read_link(env.current()).unwrap_or_else(|e| fail(format!("current: {e}")));
        if target.is_absolute() || live.parent() != Some(env.releases_dir().as_path()) {
            fail(format!(
                "current -> {} is not a relative link into releases/",
                target.display()
            ));
        }
        let v = complete(&live).unwrap_or_else(|e| fail(e));
        if v != n && v != n - 1 {
            fail(format!("current holds version {v}"));
        }
        if v == n && killed {
            stats.switched += 1;
        }
        // ... and so is every visible release.
        for release in env.releases() {
            complete(&release).unwrap_or_else(|e| fail(format!("visible release: {e}")));
        }
        stats.max_releases = stats.max_releases.max(env.releases().len());
        let left = leftovers(&env);
        if !left.is_empty() {
            stats.kills_with_leftovers += 1;
            for p in &left {
                *stats.leftovers.entry(kind_of(p)).or_default() += 1;
            }
        }

        // 2. The next run removes the leftovers and converges.
        let (out, timeline) = complete_run(&env, &url, &remotes.origin);
        if out.code() != Some(0) {
            fail(format!(
                "the next run failed\n{}\nprocesses with {}/.lock open: {:?}",
                out.dump(),
                env.deploy.display(),
                lock_holders(&env.deploy.join(".lock"))
            ));
        }
        let deployed = out.stderr.contains(" deployed ");
        if deployed {
            timelines.entry(kind).or_default().push(timeline);
        }
        let now = env
            .live()
            .unwrap_or_else(|| fail("current is missing after the next run".into()));
        match complete(&now) {
            Ok(v) if v == n => {}
            Ok(v) => fail(format!(
                "the next run left version {v} live, not {n}\n{}",
                out.dump()
            )),
            Err(e) => fail(format!("after the next run: {e}")),
        }
        let still = leftovers(&env);
        if !still.is_empty() {
            fail(format!("the next run left {still:?}\n{}", out.dump()));
        }
        // Every next run prunes to `keep`: at its start (a kill after the post-update hooks
        // but before the retention), after the hooks of a switch a kill cut short, or after
        // its own deploy.
        let resumed = out.stderr.contains("running them again");
        if resumed {
            stats.post_hook_reruns += 1;
        }
        if env.releases().len() > 2 {
            fail(format!(
                "{} releases on disk after the next run with keep = 2: {:?}",
                env.releases().len(),
                env.releases()
            ));
        }
        // The post-update hook ran for the live version, at least once: the next run re-runs
        // the hooks of a switch that a kill cut short. (The killed run's orphaned hook may
        // also still be finishing.)
        let post = format!("post {n}");
        if !read_lines(&hooks_log).contains(&post) {
            fail(format!(
                "version {n} is live but its post-update hook never ran\n{}",
                out.dump()
            ));
        }
    }
    stats.elapsed = started.elapsed();
    stats.medians = timelines.iter().map(|(k, v)| (*k, median(v))).collect();
    stats
}

/// The deploy directory on a tmpfs when we may mount one (and `CRASH_ON_DISK` is not set):
/// SIGKILL loses nothing a write(2) handed to the kernel, so the disk adds nothing to what is
/// tested here but time (fsync, syncfs and deletes on a shared disk), which would go to fewer
/// kills.
fn on_tmpfs(env: &Env) -> Option<Tmpfs> {
    if std::env::var_os("CRASH_ON_DISK").is_some_and(|v| v != "0") {
        return None;
    }
    match Tmpfs::mount(&env.deploy, "size=256m") {
        Ok(t) => Some(t),
        Err(why) => {
            eprintln!("the deploy directory stays on the disk: {why}");
            None
        }
    }
}

fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        })
        .unwrap_or(DEFAULT_SEED)
}

#[test]
fn sigkill_at_random_moments_never_tears_current_and_the_next_run_converges() {
    let seed = seed();
    let stats = crash_rounds(200, seed);
    eprintln!("{}", stats.report(seed));
    assert!(stats.kills >= 200, "{}", stats.report(seed));
    for p in [
        "2 download",
        "3 unpack+durable",
        "4 pre-hook+switch",
        "5 post-hook",
        "6 retention+exit",
    ] {
        assert!(
            stats.by_phase.get(p).copied().unwrap_or(0) > 0,
            "no kill landed in phase {p}: the delays do not span the update\n{}",
            stats.report(seed)
        );
    }
}

/// The soak: `CRASH_KILLS` kills (default 2,000). Run by `bench/crash-soak.sh`.
#[test]
#[ignore = "a soak of several minutes: run bench/crash-soak.sh"]
fn crash_soak() {
    let seed = seed();
    let kills = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2000);
    let stats = crash_rounds(kills, seed);
    println!("crash soak: {}", stats.report(seed));
    assert!(stats.kills >= kills);
}
