//! Crash safety: `current` always names a complete release, a reader never finds it missing
//! during a switch, and the next start cleans up what a crash left and converges.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::common::*;

fn app(version: &str) -> Vec<Entry> {
    vec![
        file("version.txt", format!("{version}\n"), 0o644),
        file("data/payload.bin", version.repeat(200), 0o644),
    ]
}

fn live_version(env: &Env) -> String {
    fs::read_to_string(env.live_release().join("version.txt")).expect("version.txt")
}

#[test]
fn leftovers_of_a_crash_are_removed_at_the_next_start() {
    let env = Env::new();
    let path = env.root.join("app.zip");
    zip(&path, &app("v1"));
    let remote = path.to_str().expect("utf8");
    env.fetch(remote).expect_code(0);
    let live = env.live_release();

    // What a kill -9 in the middle of a run leaves: a staging directory and a download.
    let staging = env.releases_dir().join(".staging-crashed");
    fs::create_dir_all(staging.join("sub")).expect("mkdir staging");
    fs::write(staging.join("sub/half.txt"), "half").expect("write");
    fs::create_dir_all(env.deploy.join("cache")).expect("mkdir cache");
    let download = env.deploy.join("cache/download-crashed");
    fs::write(&download, "partial").expect("write");

    env.fetch(remote).expect_code(0);

    assert!(!staging.exists(), "the staging directory is swept at start");
    assert!(!download.exists(), "the partial download is swept at start");
    assert_eq!(env.live_release(), live);
    env.assert_clean();
}

/// Releases a blocked hook when dropped, so a failing test leaves no process behind.
struct Gate(PathBuf);

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = fs::write(&self.0, "");
    }
}

#[test]
fn kill_9_during_the_pre_hooks_keeps_current_and_the_next_run_converges() {
    let env = Env::new();
    let path = env.root.join("app.zip");
    zip(&path, &app("v1"));
    let remote = path.to_str().expect("utf8").to_string();
    env.fetch(&remote).expect_code(0);
    let r1 = env.live_release();

    // While out/block exists, the pre hook reports its pid and waits for out/go.
    let (block, started, go) = (env.out("block"), env.out("started"), env.out("go"));
    env.pre_hook(
        "50-wait",
        &format!(
            "if [ -e {b} ]; then echo $$ > {s}.tmp && mv {s}.tmp {s}; while [ ! -e {g} ]; do sleep 0.05; done; fi",
            b = block.display(),
            s = started.display(),
            g = go.display()
        ),
    );
    fs::write(&block, "").expect("block");
    let gate = Gate(go.clone());
    zip(&path, &app("v2"));

    let mut run = env.cmd().args(["-f", "-r", &remote]).spawn();
    run.wait_for("the pre hook to start", || started.exists());
    run.signal(libc::SIGKILL);
    run.wait_exit(Duration::from_secs(10));
    let hook_pid: i32 = fs::read_to_string(&started)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");

    assert_eq!(
        env.live_release(),
        r1,
        "current still names the old release"
    );
    assert_eq!(live_version(&env), "v1\n");

    // The orphaned hook is still running: the lock must not have leaked into it.
    fs::remove_file(&block).expect("unblock");
    let out = env.fetch(&remote);
    out.expect_code(0);
    assert_eq!(live_version(&env), "v2\n", "the next run converges");
    assert_eq!(
        fs::read_to_string(env.live_release().join("data/payload.bin")).expect("payload"),
        "v2".repeat(200),
        "the live release is complete"
    );
    env.assert_clean();

    drop(gate);
    assert!(
        eventually(Duration::from_secs(5), || process_gone(hook_pid)),
        "the orphaned hook ended"
    );
}

#[test]
fn current_is_never_missing_during_switches() {
    let env = Env::new();
    let path = env.root.join("app.zip");
    zip(&path, &app("v0"));
    let remote = path.to_str().expect("utf8").to_string();
    env.fetch(&remote).expect_code(0);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let version_file = env.current().join("version.txt");
    let reader = {
        let (stop, reads) = (Arc::clone(&stop), Arc::clone(&reads));
        thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                match fs::read_to_string(&version_file) {
                    Ok(v) if v.starts_with('v') && v.ends_with('\n') => {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(v) => return Err(format!("read an incomplete version file: {v:?}")),
                    Err(e) => {
                        return Err(format!(
                            "current/version.txt could not be read during a switch: {e}"
                        ));
                    }
                }
            }
            Ok(())
        })
    };
    for i in 1..=6 {
        zip(&path, &app(&format!("v{i}")));
        env.fetch(&remote).expect_code(0);
    }
    stop.store(true, Ordering::Relaxed);
    let result = reader.join().expect("reader thread");

    assert_eq!(result, Ok(()));
    assert!(
        reads.load(Ordering::Relaxed) > 100,
        "the reader ran during the switches"
    );
    assert_eq!(live_version(&env), "v6\n");
}

/// A post-update hook that kills the agent (its parent) with SIGKILL the first time it runs
/// for `version`, and records every later run in `out/post`.
fn post_hook_that_kills_the_agent_once(env: &Env, version: &str, then_exit: i32) {
    let flag = env.out("killed");
    let body = format!(
        "v=$(cat \"$CURRENT_CONFIG/version.txt\")\n\
         if [ \"$v\" = {version} ] && [ ! -e {flag} ]; then touch {flag}; kill -9 $PPID; sleep 5; fi\n\
         echo \"$v rollback=$DEPLOY_ROLLBACK previous=$PREVIOUS_CONFIG\" >> {out}\n\
         [ \"$v\" = {version} ] && exit {then_exit}\n\
         exit 0\n",
        flag = flag.display(),
        out = env.out("post").display(),
    );
    env.post_hook("10-record", &body);
}

#[test]
fn post_update_hooks_cut_short_by_a_crash_run_again_at_the_next_start() {
    let env = Env::new();
    let path = env.root.join("app.zip");
    let remote = path.to_str().expect("utf8");
    zip(&path, &app("v1"));
    env.fetch(remote).expect_code(0);
    let v1 = env.live_release();
    env.clear_out("post");
    post_hook_that_kills_the_agent_once(&env, "v2", 0);

    zip(&path, &app("v2"));
    let killed = env.fetch(remote);
    assert_eq!(
        killed.code(),
        None,
        "the hook killed the agent: {}",
        killed.dump()
    );
    assert_eq!(
        live_version(&env),
        "v2\n",
        "the switch happened before the kill"
    );
    assert!(env.out_lines("post").is_empty(), "the hooks never finished");

    let next = env.fetch(remote);
    next.expect_code(0);
    assert!(
        next.stderr.contains("running them again"),
        "{}",
        next.dump()
    );
    assert_eq!(
        env.out_lines("post"),
        vec![format!("v2 rollback=0 previous={}", v1.display())],
        "the post-update hooks of v2 ran once more, with v1 as the previous release"
    );
    assert_eq!(live_version(&env), "v2\n");
    assert!(!env.deploy.join("post-hooks.json").exists());

    // Done now: a third run neither re-runs the hooks nor deploys.
    env.fetch(remote).expect_code(0);
    assert_eq!(
        env.out_lines("post").len(),
        1,
        "the hooks ran again: {:?}",
        env.out_lines("post")
    );
    env.assert_clean();
}

#[test]
fn a_resumed_post_update_hook_that_fails_rolls_back() {
    let env = Env::new();
    let path = env.root.join("app.zip");
    let remote = path.to_str().expect("utf8");
    zip(&path, &app("v1"));
    env.fetch(remote).expect_code(0);
    let v1 = env.live_release();
    env.clear_out("post");
    post_hook_that_kills_the_agent_once(&env, "v2", 1);

    zip(&path, &app("v2"));
    assert_eq!(env.fetch(remote).code(), None);
    assert_eq!(live_version(&env), "v2\n");

    let next = env.fetch(remote);
    next.expect_code(4);
    assert_eq!(env.live_release(), v1, "v1 is live again: {}", next.dump());
    let runs = env.out_lines("post");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[0].starts_with("v2 rollback=0"), "{runs:?}");
    assert!(runs[1].starts_with("v1 rollback=1"), "{runs:?}");
    assert!(!env.deploy.join("post-hooks.json").exists());
    env.assert_clean();
}

/// Bug 7: sync mode removes a failed first deploy's `current` by renaming it to
/// `.current.trash-PID` and then deleting that; a crash in between left the copy for ever.
/// The next start removes it, and the temporary files of an interrupted write of
/// `active.json`.
#[test]
fn sync_mode_leftovers_beside_current_are_removed_at_the_next_start() {
    let env = Env::new();
    env.config("activate = sync\n");
    let path = env.root.join("app.zip");
    zip(&path, &app("v1"));
    let remote = path.to_str().expect("utf8");
    env.fetch(remote).expect_code(0);

    let trash = env.deploy.join(".current.trash-4242");
    fs::create_dir_all(trash.join("data")).expect("mkdir trash");
    fs::write(trash.join("data/payload.bin"), "old").expect("write");
    let marker_tmp = env.deploy.join(".active.json.tmp-4242-0badf00d");
    fs::write(&marker_tmp, "{").expect("write");

    env.fetch(remote).expect_code(0);
    assert!(!trash.exists(), "the trash of a removed current is swept");
    assert!(!marker_tmp.exists(), "the marker's temporary file is swept");
    assert_eq!(
        fs::read_to_string(env.current().join("version.txt")).expect("version"),
        "v1\n"
    );
    env.assert_clean();
}
