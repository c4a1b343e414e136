//! Signals and concurrency (issue #5, part 6).
//!
//! SIGTERM before the switch (during the download, the unpacking, a pre-update hook) cancels
//! the update and cleans up: `-f` exits 1, the daemon 0, `current` is untouched and nothing is
//! left behind. SIGTERM after the switch (during a post-update hook) lets the update finish,
//! rollback included, before the agent exits: never a half-done switch. One agent per deploy
//! directory: a second one exits 5 at once while a daemon runs, idle or busy; a lock left by a
//! SIGKILLed agent does not block the next start.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::origin::{Answer, Origin};
use crate::common::*;
use rand::{Rng, SeedableRng};

const YEARLY: &str = "0 0 1 1 *";

fn app(version: &str) -> Vec<Entry> {
    vec![
        file("version.txt", format!("{version}\n"), 0o644),
        file("bin/run.sh", format!("#!/bin/sh\necho {version}\n"), 0o755),
        link("run", "bin/run.sh"),
    ]
}

/// v2 with 1 MiB that does not compress: a download that takes a while from a slow origin.
fn heavy(version: &str) -> Vec<Entry> {
    let mut noise = vec![0u8; 1 << 20];
    rand::rngs::StdRng::seed_from_u64(2).fill(&mut noise[..]);
    let mut entries = app(version);
    entries.push(file("data/noise.bin", noise, 0o644));
    entries
}

/// v2 with thousands of files: an unpacking that takes a while.
fn many(version: &str) -> Vec<Entry> {
    let mut entries = app(version);
    for i in 0..8000 {
        entries.push(file(
            &format!("many/{:02}/f{i:04}.txt", i % 40),
            format!("file {i} of {version}\n").repeat(8),
            0o644,
        ));
    }
    entries
}

fn version_of(release: &Path) -> String {
    fs::read_to_string(release.join("version.txt")).expect("version.txt")
}

/// Processes a test started through hooks: killed on drop if still there, and the gate file
/// that blocked hooks wait for is created, so a failing test leaves nothing behind.
struct Cleanup {
    gate: PathBuf,
    pids: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::write(&self.gate, "");
        for file in &self.pids {
            if let Some(pid) = read_pid(file) {
                // SAFETY: kill(2) of a pid our hook recorded; at worst it is gone already.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn read_pid(file: &Path) -> Option<i32> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// A hook body that records its pid in `out/<tag>.pid` and the pid of a grandchild it starts
/// in `out/<tag>.child`, then waits for `out/go`; then appends `<tag> done <version>` to
/// `out/hooks.log` and exits with `status`.
fn blocking_hook(env: &Env, tag: &str, status: i32) -> String {
    let out = env.out.display();
    format!(
        "echo \"$DEPLOY_PHASE $DEPLOY_VERSION rollback=$DEPLOY_ROLLBACK\" >> {out}/hooks.log\n\
         [ \"$DEPLOY_ROLLBACK\" = 1 ] && exit 0\n\
         sleep 300 &\n\
         echo $! > {out}/{tag}.child.tmp && mv {out}/{tag}.child.tmp {out}/{tag}.child\n\
         echo $$ > {out}/{tag}.pid.tmp && mv {out}/{tag}.pid.tmp {out}/{tag}.pid\n\
         while [ ! -e {out}/go ]; do sleep 0.02; done\n\
         kill $!\n\
         echo \"{tag} done $DEPLOY_VERSION\" >> {out}/hooks.log\n\
         exit {status}"
    )
}

fn cleanup(env: &Env, tags: &[&str]) -> Cleanup {
    let mut pids = Vec::new();
    for tag in tags {
        pids.push(env.out(&format!("{tag}.pid")));
        pids.push(env.out(&format!("{tag}.child")));
    }
    Cleanup {
        gate: env.out("go"),
        pids,
    }
}

/// A `-f` run (or a daemon) that was signalled must exit with `code` within 10 s; returns how
/// long that took.
#[track_caller]
fn exits(run: &mut Daemon, code: i32) -> Duration {
    let started = Instant::now();
    let status = run.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(code),
        "exit status\n--- stderr ---\n{}",
        run.stderr()
    );
    started.elapsed()
}

/// v1 live from a local ZIP; returns its release.
fn deploy_v1(env: &Env) -> PathBuf {
    let path = env.root.join("v1.zip");
    zip(&path, &app("v1"));
    env.fetch(path.to_str().expect("utf8")).expect_code(0);
    env.live_release()
}

/// After a cancelled update: v1 still live and complete, the same releases, nothing left.
#[track_caller]
fn untouched(env: &Env, v1: &Path) {
    assert_eq!(env.live_release(), v1, "current unchanged");
    assert_tree(v1, &expected_tree(&app("v1")));
    assert_eq!(env.releases(), vec![v1.to_path_buf()], "no release added");
    env.assert_clean();
}

/// Wait for a `download-*` file in the cache that has bytes in it.
fn downloading(env: &Env) -> bool {
    list(&env.deploy.join("cache")).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("download-"))
            && fs::metadata(p).is_ok_and(|m| m.len() > 0)
    })
}

/// A slow origin serving `heavy("v2")`: about 6 s for the whole body.
fn slow_origin() -> (Origin, usize) {
    let origin = Origin::start();
    let body = zip_bytes(&heavy("v2"));
    let len = body.len();
    origin.publish("\"v2\"", body);
    origin.answer(Answer::Serve {
        chunk: 16 * 1024,
        pause: Duration::from_millis(100),
    });
    (origin, len)
}

#[test]
fn sigterm_during_the_download_cancels_it_and_cleans_up() {
    let env = Env::new();
    let v1 = deploy_v1(&env);
    let (origin, len) = slow_origin();

    let mut run = env.cmd().args(["-f", "-r", &origin.url("app.zip")]).spawn();
    run.wait_for("the download to start", || downloading(&env));
    run.signal(libc::SIGTERM);

    let took = exits(&mut run, 1);
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    assert!(
        run.stderr().contains("interrupted"),
        "the log says the check was interrupted\n{}",
        run.stderr()
    );
    assert!(
        origin.sent() < len as u64,
        "the download was cut short, not finished ({} of {len} bytes)",
        origin.sent()
    );
    untouched(&env, &v1);

    // The next check downloads it whole.
    origin.answer(Answer::serve());
    env.fetch(&origin.url("app.zip")).expect_code(0);
    assert_tree(&env.live_release(), &expected_tree(&heavy("v2")));
    env.assert_clean();
}

#[test]
fn daemon_sigterm_during_the_download_exits_0_and_cleans_up() {
    let env = Env::new();
    let v1 = deploy_v1(&env);
    let (origin, _) = slow_origin();

    let mut d = env
        .cmd()
        .args(["-r", &origin.url("app.zip"), "-s", YEARLY])
        .spawn();
    d.wait_for("the download to start", || downloading(&env));
    d.signal(libc::SIGTERM);

    let took = exits(&mut d, 0);
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    untouched(&env, &v1);
}

#[test]
fn sigterm_during_the_unpacking_cancels_it_and_cleans_up() {
    let env = Env::new();
    let v1 = deploy_v1(&env);
    let path = env.root.join("many.zip");
    zip(&path, &many("v2"));
    let staging_has_files = || {
        list(&env.releases_dir()).iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".staging"))
                && list(&p.join("many")).len() > 2
        })
    };

    let mut run = env
        .cmd()
        .args(["-f", "-r", path.to_str().expect("utf8")])
        .spawn();
    run.wait_for("the unpacking to start", staging_has_files);
    run.signal(libc::SIGTERM);

    exits(&mut run, 1);
    let log = run.stderr();
    assert!(log.contains("interrupted"), "{log}");
    assert!(
        !log.contains(" unpacked "),
        "the signal came during the unpacking, which never finished\n{log}"
    );
    untouched(&env, &v1);

    env.fetch(path.to_str().expect("utf8")).expect_code(0);
    assert_eq!(version_of(&env.live_release()), "v2\n");
    env.assert_clean();
}

/// Start an update to v2 (from a local ZIP) whose pre-update hook blocks; returns the run once
/// the hook is waiting, with the remote.
fn blocked_in_pre_hook(env: &Env, daemon: bool) -> (Daemon, String) {
    env.pre_hook("50-block", &blocking_hook(env, "pre", 0));
    let path = env.root.join("v2.zip");
    zip(&path, &app("v2"));
    let remote = path.to_str().expect("utf8").to_string();
    let mut run = if daemon {
        env.cmd().args(["-r", &remote, "-s", YEARLY]).spawn()
    } else {
        env.cmd().args(["-f", "-r", &remote]).spawn()
    };
    run.wait_for("the pre-update hook to block", || {
        env.out("pre.pid").exists()
    });
    (run, remote)
}

/// The hook and its grandchild were killed with their process group.
#[track_caller]
fn hook_killed(env: &Env, tag: &str) {
    for file in [format!("{tag}.pid"), format!("{tag}.child")] {
        let pid = read_pid(&env.out(&file)).expect("pid");
        assert!(
            eventually(Duration::from_secs(5), || process_gone(pid)),
            "{file} ({pid}) is still running"
        );
    }
    assert!(
        !env.out_lines("hooks.log")
            .iter()
            .any(|l| l.contains("done")),
        "the hook did not finish"
    );
}

#[test]
fn sigterm_during_a_pre_update_hook_kills_it_and_keeps_current() {
    let env = Env::new();
    let v1 = deploy_v1(&env);
    let _cleanup = cleanup(&env, &["pre"]);
    let (mut run, remote) = blocked_in_pre_hook(&env, false);

    run.signal(libc::SIGTERM);

    let took = exits(&mut run, 1);
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    assert!(run.stderr().contains("interrupted"), "{}", run.stderr());
    hook_killed(&env, "pre");
    untouched(&env, &v1);

    // Tried again at the next check, it goes through.
    fs::write(env.out("go"), "").expect("gate");
    env.fetch(&remote).expect_code(0);
    assert_eq!(version_of(&env.live_release()), "v2\n");
    env.assert_clean();
}

#[test]
fn daemon_sigterm_during_a_pre_update_hook_exits_0_and_keeps_current() {
    let env = Env::new();
    let v1 = deploy_v1(&env);
    let _cleanup = cleanup(&env, &["pre"]);
    let (mut d, _) = blocked_in_pre_hook(&env, true);

    d.signal(libc::SIGTERM);

    let took = exits(&mut d, 0);
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    hook_killed(&env, "pre");
    untouched(&env, &v1);
}

/// Start an update to v2 whose post-update hook blocks (then exits `status`); SIGTERM it
/// once the hook waits, and check that the agent keeps going: switched, hook still running.
fn sigterm_in_post_hook(env: &Env, daemon: bool, status: i32) -> Daemon {
    env.post_hook("50-block", &blocking_hook(env, "post", status));
    let path = env.root.join("v2.zip");
    zip(&path, &app("v2"));
    let remote = path.to_str().expect("utf8").to_string();
    let mut run = if daemon {
        env.cmd().args(["-r", &remote, "-s", YEARLY]).spawn()
    } else {
        env.cmd().args(["-f", "-r", &remote]).spawn()
    };
    run.wait_for("the post-update hook to block", || {
        env.out("post.pid").exists()
    });
    assert_eq!(
        version_of(&env.live_release()),
        "v2\n",
        "the switch came before the post-update hook"
    );

    run.signal(libc::SIGTERM);
    seen(&mut run, "SIGTERM");

    // The update is past the switch: the agent waits for the hook instead of leaving it.
    let hook = read_pid(&env.out("post.pid")).expect("hook pid");
    assert!(run.is_running(), "the agent waits for the post-update hook");
    assert!(!process_gone(hook), "the post-update hook is left running");
    assert_eq!(version_of(&env.live_release()), "v2\n");
    fs::write(env.out("go"), "").expect("gate");
    run
}

/// Wait until the agent's log says `needle`.
#[track_caller]
fn seen(run: &mut Daemon, needle: &str) {
    eventually(WAIT, || run.stderr().contains(needle) || !run.is_running());
    assert!(
        run.stderr().contains(needle),
        "the agent never logged {needle:?}\n--- stderr ---\n{}",
        run.stderr()
    );
}

#[test]
fn sigterm_during_a_post_update_hook_lets_the_update_finish() {
    let env = Env::new();
    deploy_v1(&env);
    let _cleanup = cleanup(&env, &["post"]);

    let mut run = sigterm_in_post_hook(&env, false, 0);

    exits(&mut run, 0);
    assert_eq!(version_of(&env.live_release()), "v2\n");
    assert!(
        env.out_lines("hooks.log")
            .iter()
            .any(|l| l.starts_with("post done")),
        "the post-update hook ran to its end: {:?}",
        env.out_lines("hooks.log")
    );
    assert_eq!(env.releases().len(), 2, "v1 is kept for a rollback");
    env.assert_clean();
    // The validators were stored: the next check finds nothing new.
    let out = env.fetch(env.root.join("v2.zip").to_str().expect("utf8"));
    out.expect_code(0);
    assert!(out.stderr.contains("unchanged"), "{}", out.dump());
}

#[test]
fn sigterm_during_a_failing_post_update_hook_rolls_back_before_exiting() {
    let env = Env::new();
    let v1 = deploy_v1(&env);
    let _cleanup = cleanup(&env, &["post"]);

    let mut run = sigterm_in_post_hook(&env, false, 1);

    exits(&mut run, 4);
    let hooks = env.out_lines("hooks.log");
    assert!(
        hooks.iter().any(|l| l.ends_with("rollback=1")),
        "the post-update hooks ran again for the restored release: {hooks:?}"
    );
    untouched(&env, &v1);
}

#[test]
fn daemon_sigterm_during_a_post_update_hook_finishes_then_exits_0() {
    let env = Env::new();
    deploy_v1(&env);
    let _cleanup = cleanup(&env, &["post"]);

    let mut d = sigterm_in_post_hook(&env, true, 0);

    exits(&mut d, 0);
    assert_eq!(version_of(&env.live_release()), "v2\n");
    env.assert_clean();
}

#[test]
fn a_second_agent_exits_5_at_once_while_a_daemon_runs() {
    let env = Env::new();
    let v1 = deploy_v1(&env);
    let _cleanup = cleanup(&env, &["pre"]);

    // Busy: the daemon is in the middle of an update, blocked in a pre-update hook.
    let (mut d, remote) = blocked_in_pre_hook(&env, true);
    for args in [
        vec!["-f", "-r", remote.as_str()],
        vec!["-r", remote.as_str(), "-s", YEARLY],
    ] {
        let out = env.cmd().args(&args).run();
        out.expect_code(5);
        assert!(
            out.elapsed < Duration::from_secs(5),
            "exit 5 at once, not after {:?}",
            out.elapsed
        );
        assert!(
            out.stderr.contains("lock"),
            "the refusal names the lock\n{}",
            out.dump()
        );
    }
    assert!(d.is_running(), "the daemon was not disturbed");
    assert_eq!(env.live_release(), v1, "nothing switched under the daemon");

    // Idle: the update done, the daemon waits for its next slot.
    fs::write(env.out("go"), "").expect("gate");
    d.wait_for("v2 live", || {
        env.live().is_some_and(|r| version_of(&r) == "v2\n")
    });
    seen(&mut d, "deployed");
    let out = env.fetch(&remote);
    out.expect_code(5);
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);

    // Stopped, it lets the next one in.
    d.signal(libc::SIGTERM);
    exits(&mut d, 0);
    env.fetch(&remote).expect_code(0);
}

#[test]
fn the_lock_of_a_sigkilled_agent_does_not_block_the_next_start() {
    let env = Env::new();
    let v1 = deploy_v1(&env);
    let remote = env.root.join("v1.zip").display().to_string();

    // Idle daemon, killed.
    let mut d = env.cmd().args(["-r", &remote, "-s", YEARLY]).spawn();
    seen(&mut d, "unchanged");
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    let out = env.fetch(&remote);
    out.expect_code(0);
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    assert_eq!(env.live_release(), v1);

    // A daemon killed in the middle of a post-update hook, which lives on as an orphan: the
    // lock did not leak into it, so the next start runs and converges.
    let _cleanup = cleanup(&env, &["post"]);
    env.post_hook("50-block", &blocking_hook(&env, "post", 0));
    let path = env.root.join("v2.zip");
    zip(&path, &app("v2"));
    let remote = path.display().to_string();
    let mut d = env.cmd().args(["-r", &remote, "-s", YEARLY]).spawn();
    d.wait_for("the post-update hook to block", || {
        env.out("post.pid").exists()
    });
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    let orphan = read_pid(&env.out("post.pid")).expect("pid");
    assert!(!process_gone(orphan), "the hook outlived the agent");

    fs::remove_file(env.post.join("50-block")).expect("remove the hook");
    let out = env.fetch(&remote);
    out.expect_code(0);
    assert_eq!(version_of(&env.live_release()), "v2\n");
    env.assert_clean();
}
