//! Hooks that misbehave (issue 5, part 5): one that floods its output (50 MB on one line, and
//! 50 MB of short lines) while the agent's peak memory stays bounded; one that closes its
//! stdout (or both streams) early and keeps working, which the agent must wait for; and files
//! in the hook folder that are not hooks (not executable, dot names, backups), skipped and
//! logged at debug level. A hook that hangs with a grandchild is in tests/hooks.rs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;

/// Bytes each flooding hook writes.
const FLOOD: u64 = 50 << 20;
/// How much the agent's peak resident set may grow while the hooks flood it. Holding the
/// output would take at least 50 MB.
const MAX_GROWTH_KB: u64 = 16 << 10;

/// A ZIP at `<root>/app.zip`; returns the remote.
fn publish(env: &Env, version: &str) -> String {
    let path = env.root.join("app.zip");
    zip(&path, &[file("version.txt", format!("{version}\n"), 0o644)]);
    path.to_str().expect("utf8").to_string()
}

/// `VmHWM` (peak resident set, kB) from a `/proc/<pid>/status` dump.
fn peak_kb(dump: &Path) -> u64 {
    let text = fs::read_to_string(dump).unwrap_or_else(|e| panic!("{}: {e}", dump.display()));
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {}: {text}", dump.display()))
}

#[test]
fn a_hook_flooding_its_output_keeps_the_agents_memory_bounded() {
    let env = Env::new();
    // The hooks' parent is the agent: each records the agent's peak RSS when it is done.
    let peak = |name: &str| {
        format!(
            "grep VmHWM /proc/$PPID/status > {}",
            env.out(name).display()
        )
    };
    env.pre_hook("00-baseline", &peak("baseline"));
    env.pre_hook(
        "10-one-line",
        &format!(
            "head -c {FLOOD} /dev/zero | tr '\\0' a\n{}",
            peak("one-line")
        ),
    );
    // 50 MB in 256-byte lines.
    env.pre_hook(
        "20-many-lines",
        &format!(
            "yes {} | head -c {FLOOD}\n{}",
            "l".repeat(255),
            peak("many-lines")
        ),
    );
    env.post_hook("10-flood-stderr", &format!("head -c {FLOOD} /dev/zero >&2"));
    env.post_hook("20-done", &format!("touch {}", env.out("done").display()));

    let out = env.fetch(&publish(&env, "v1"));

    out.expect_code(0);
    assert!(env.out("done").exists(), "the hooks after the floods ran");
    let baseline = peak_kb(&env.out("baseline"));
    for flood in ["one-line", "many-lines"] {
        let peak = peak_kb(&env.out(flood));
        eprintln!("{flood}: agent VmHWM {baseline} kB before, {peak} kB after 50 MB");
        assert!(
            peak < baseline + MAX_GROWTH_KB,
            "{flood}: the agent's peak RSS grew from {baseline} kB to {peak} kB"
        );
    }
    // Everything was logged, split into lines of at most 8 KiB.
    let lines = |prefix: &str| {
        out.stderr
            .lines()
            .filter_map(|l| l.split_once(prefix).map(|(_, rest)| rest.len()))
            .collect::<Vec<_>>()
    };
    let one_line = lines("hook 10-one-line: ");
    assert_eq!(one_line.len() as u64, FLOOD / 8192, "8 KiB pieces");
    assert!(one_line.iter().all(|&n| n == 8192));
    let many = lines("hook 20-many-lines: ");
    assert_eq!(many.len() as u64, FLOOD / 256, "one event per line");
    assert!(many.iter().all(|&n| n == 255));
    let stderr_flood = lines("hook 10-flood-stderr: ");
    assert_eq!(stderr_flood.len() as u64, FLOOD / 8192);
}

#[test]
fn a_hook_that_closes_its_stdout_early_is_waited_for() {
    let env = Env::new();
    let finished = env.out("closer-finished");
    // Closes stdout, then keeps working: the agent must wait for the exit, not for EOF.
    env.pre_hook(
        "10-closer",
        &format!(
            "echo before-close\nexec 1>&-\nsleep 1\necho after-close >&2\ntouch {}",
            finished.display()
        ),
    );
    env.pre_hook(
        "20-next",
        &format!(
            "test -e {} && touch {}",
            finished.display(),
            env.out("next-saw-it").display()
        ),
    );

    let out = env.fetch(&publish(&env, "v1"));

    out.expect_code(0);
    assert!(
        env.out("next-saw-it").exists(),
        "the next hook started only after the first one exited\n{}",
        out.dump()
    );
    assert!(out.stderr.contains("hook 10-closer: before-close"));
    assert!(out.stderr.contains("hook 10-closer: after-close"));
}

#[test]
fn a_hook_that_closes_both_streams_and_then_fails_still_blocks() {
    let env = Env::new();
    let finished = env.out("silent-finished");
    env.pre_hook(
        "10-silent",
        &format!(
            "echo going-quiet\nexec 1>&- 2>&-\nsleep 1\ntouch {}\nexit 7",
            finished.display()
        ),
    );
    let remote = publish(&env, "v1");

    let out = env.fetch(&remote);

    out.expect_code(3);
    assert!(finished.exists(), "the hook ran to its end");
    assert!(
        out.stderr.contains("hook 10-silent failed: exit code 7"),
        "{}",
        out.dump()
    );
    assert!(out.stderr.contains("hook 10-silent: going-quiet"));
    assert!(env.live().is_none(), "blocked: no current");
    env.assert_clean();
}

#[test]
fn files_that_are_not_hooks_are_skipped_and_logged_at_debug_level() {
    let env = Env::new();
    let ran = |name: &str| format!("echo {name} >> {}", env.out("ran").display());
    env.pre_hook("10-hook", &ran("10-hook"));
    let noexec = env.pre_hook("20-not-executable", &ran("20-not-executable"));
    fs::set_permissions(&noexec, fs::Permissions::from_mode(0o644)).expect("chmod");
    env.pre_hook(".30-dotfile", &ran(".30-dotfile"));
    env.pre_hook("40-backup~", &ran("40-backup~"));
    fs::create_dir(env.pre.join("50-directory")).expect("mkdir");

    let quiet = env.fetch(&publish(&env, "v1"));
    quiet.expect_code(0);
    assert!(
        !quiet.stderr.contains("skipping"),
        "skips are debug-level: {}",
        quiet.stderr
    );

    let out = env.run(&["-f", "-v", "-r", &publish(&env, "v2")]);

    out.expect_code(0);
    assert_eq!(env.out_lines("ran"), ["10-hook", "10-hook"]);
    for skipped in [
        "20-not-executable",
        ".30-dotfile",
        "40-backup~",
        "50-directory",
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains("DEBUG") && l.contains("skipping") && l.contains(skipped)),
            "{skipped} is not logged as skipped\n{}",
            out.stderr
        );
    }
}
