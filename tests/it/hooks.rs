//! Pre- and post-update hooks: which files run, in what order, with what environment, and
//! what their failures do to `current`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

fn app(version: &str) -> Vec<Entry> {
    vec![
        file("version.txt", format!("{version}\n"), 0o644),
        file("bin/run.sh", "#!/bin/sh\n", 0o755),
    ]
}

/// A ZIP at `<root>/app.zip` holding `version`; returns (remote, bytes).
fn publish(env: &Env, version: &str) -> (String, Vec<u8>) {
    let path = env.root.join("app.zip");
    let bytes = zip(&path, &app(version));
    (path.to_str().expect("utf8").to_string(), bytes)
}

fn live_version(env: &Env) -> String {
    fs::read_to_string(env.live_release().join("version.txt")).expect("version.txt")
}

#[test]
fn hooks_run_in_bytewise_order_and_skip_hidden_backup_and_non_executable_files() {
    let env = Env::new();
    for (dir, log) in [(&env.pre, "pre.log"), (&env.post, "post.log")] {
        let log = env.out(log);
        let append = |name: &str| format!("echo {name} >> {}", log.display());
        for name in [
            "a-lower", "B-upper", "_under", "2-a", "10-b", ".hidden", "skip~",
        ] {
            env.hook(dir, name, &append(name));
        }
        // Not executable: skipped.
        let noexec = env.hook(dir, "3-noexec", &append("3-noexec"));
        fs::set_permissions(&noexec, fs::Permissions::from_mode(0o644)).expect("chmod");
        // A directory, even an executable one: skipped.
        fs::create_dir(dir.join("4-dir")).expect("mkdir");
        // A symlink to an executable elsewhere: followed.
        let elsewhere = env.root.join(format!(
            "linked-{}",
            dir.file_name().expect("name").to_string_lossy()
        ));
        write_script(&elsewhere, &append("20-link"));
        symlink(&elsewhere, dir.join("20-link")).expect("symlink");
    }
    let (remote, _) = publish(&env, "v1");

    env.fetch(&remote).expect_code(0);

    let expected = ["10-b", "2-a", "20-link", "B-upper", "_under", "a-lower"];
    assert_eq!(env.out_lines("pre.log"), expected, "pre-update hooks");
    assert_eq!(env.out_lines("post.log"), expected, "post-update hooks");
}

#[test]
fn missing_hook_directories_mean_no_hooks() {
    let env = Env::new();
    fs::remove_dir(&env.pre).expect("rmdir");
    fs::remove_dir(&env.post).expect("rmdir");
    let (remote, _) = publish(&env, "v1");
    env.fetch(&remote).expect_code(0);
    assert_eq!(live_version(&env), "v1\n");
}

#[test]
fn hook_output_is_logged_line_by_line_under_its_name() {
    let env = Env::new();
    env.pre_hook(
        "10-talk",
        "echo 'hello from stdout'\necho 'second line'\necho 'to stderr' >&2",
    );
    env.post_hook("90-done", "echo 'post says hi'");
    let (remote, _) = publish(&env, "v1");

    let out = env.fetch(&remote);

    out.expect_code(0);
    for line in [
        "hook 10-talk: hello from stdout",
        "hook 10-talk: second line",
        "hook 10-talk: to stderr",
        "hook 90-done: post says hi",
    ] {
        assert!(
            out.stderr.contains(line),
            "stderr lacks {line:?}:\n{}",
            out.dump()
        );
    }
}

/// Hooks that dump their environment (`env -0`) and working directory to out/<phase>.env and
/// out/<phase>.pwd, and where `DEPLOY_DIR` resolves to in out/<phase>.dir.
fn dumping_hooks(env: &Env) {
    for (dir, phase) in [(&env.pre, "pre"), (&env.post, "post")] {
        let o = |ext: &str| env.out(&format!("{phase}.{ext}")).display().to_string();
        env.hook(
            dir,
            "10-dump",
            &format!(
                "env -0 > {}\npwd -P > {}\nreadlink -f \"$DEPLOY_DIR\" > {}",
                o("env"),
                o("pwd"),
                o("dir")
            ),
        );
    }
}

struct Dump {
    vars: HashMap<String, String>,
    pwd: String,
    dir_target: String,
}

impl Dump {
    fn read(env: &Env, phase: &str) -> Dump {
        let o = |ext: &str| env.out(&format!("{phase}.{ext}"));
        let dump = Dump {
            vars: read_env_dump(&o("env")),
            pwd: fs::read_to_string(o("pwd"))
                .expect("pwd dump")
                .trim_end()
                .to_string(),
            dir_target: fs::read_to_string(o("dir"))
                .expect("dir dump")
                .trim_end()
                .to_string(),
        };
        for ext in ["env", "pwd", "dir"] {
            fs::remove_file(o(ext)).expect("remove dump");
        }
        dump
    }

    fn var(&self, k: &str) -> &str {
        self.vars.get(k).map_or("", String::as_str)
    }

    #[track_caller]
    fn check(&self, phase: &str, expected: &[(&str, &str)]) {
        for (k, v) in expected {
            assert_eq!(
                self.var(k),
                *v,
                "{phase}: {k} (environment: {:?})",
                self.vars
            );
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

#[test]
fn hook_environment_matches_the_spec_for_first_and_second_deploys() {
    let env = Env::new();
    dumping_hooks(&env);
    let (remote, v1) = publish(&env, "v1");
    let (v1, dep_dir) = (sha256_hex(&v1), env.current());

    env.cmd()
        .args(["-f", "-r", &remote])
        .env("REPO_DEPLOY_HOOK_TIMEOUT", "30")
        .env("AWS_SECRET_ACCESS_KEY", "aws-secret-for-test")
        .run()
        .expect_code(0);
    let r1 = env.live_release();

    let pre = Dump::read(&env, "pre");
    pre.check(
        "pre 1",
        &[
            ("CURRENT_CONFIG", s(&r1)),
            ("PREVIOUS_CONFIG", ""),
            ("DEPLOY_VERSION", &v1),
            ("DEPLOY_PREVIOUS_VERSION", ""),
            ("DEPLOY_PHASE", "pre"),
            ("DEPLOY_ROLLBACK", "0"),
            ("DEPLOY_DIR", s(&dep_dir)),
            ("DEPLOY_REMOTE", &remote),
        ],
    );
    assert_eq!(pre.pwd, s(&r1), "pre hooks run in the new release");
    assert_eq!(
        pre.dir_target,
        s(&dep_dir),
        "before the first switch, current does not exist yet"
    );
    for k in pre.vars.keys() {
        assert!(
            !k.starts_with("REPO_DEPLOY_"),
            "{k} leaked into the hook environment"
        );
    }
    assert!(
        !pre.vars.contains_key("AWS_SECRET_ACCESS_KEY"),
        "AWS_SECRET_ACCESS_KEY leaked into the hook environment"
    );
    let post = Dump::read(&env, "post");
    post.check(
        "post 1",
        &[
            ("CURRENT_CONFIG", s(&r1)),
            ("PREVIOUS_CONFIG", ""),
            ("DEPLOY_VERSION", &v1),
            ("DEPLOY_PREVIOUS_VERSION", ""),
            ("DEPLOY_PHASE", "post"),
            ("DEPLOY_ROLLBACK", "0"),
            ("DEPLOY_DIR", s(&dep_dir)),
            ("DEPLOY_REMOTE", &remote),
        ],
    );
    assert_eq!(post.pwd, s(&r1));
    assert_eq!(
        post.dir_target,
        s(&r1),
        "post hooks see the new release live"
    );

    let (_, v2) = publish(&env, "v2");
    let v2 = sha256_hex(&v2);
    env.fetch(&remote).expect_code(0);
    let r2 = env.live_release();
    assert_ne!(r1, r2);

    let pre = Dump::read(&env, "pre");
    pre.check(
        "pre 2",
        &[
            ("CURRENT_CONFIG", s(&r2)),
            ("PREVIOUS_CONFIG", s(&r1)),
            ("DEPLOY_VERSION", &v2),
            ("DEPLOY_PREVIOUS_VERSION", &v1),
            ("DEPLOY_PHASE", "pre"),
            ("DEPLOY_ROLLBACK", "0"),
            ("DEPLOY_DIR", s(&dep_dir)),
            ("DEPLOY_REMOTE", &remote),
        ],
    );
    assert_eq!(pre.pwd, s(&r2), "pre hooks run in the new release");
    assert_eq!(
        pre.dir_target,
        s(&r1),
        "during pre hooks the old release is still live"
    );
    let post = Dump::read(&env, "post");
    post.check(
        "post 2",
        &[
            ("CURRENT_CONFIG", s(&r2)),
            ("PREVIOUS_CONFIG", s(&r1)),
            ("DEPLOY_VERSION", &v2),
            ("DEPLOY_PREVIOUS_VERSION", &v1),
            ("DEPLOY_PHASE", "post"),
            ("DEPLOY_ROLLBACK", "0"),
            ("DEPLOY_DIR", s(&dep_dir)),
            ("DEPLOY_REMOTE", &remote),
        ],
    );
    assert_eq!(post.pwd, s(&r2));
    assert_eq!(post.dir_target, s(&r2));
}

/// A pre hook that counts its runs in out/pre.count and fails while out/fail exists.
fn failing_pre_hook(env: &Env) {
    let (count, flag) = (env.out("pre.count"), env.out("fail"));
    env.pre_hook(
        "50-gate",
        &format!(
            "echo \"$DEPLOY_VERSION\" >> {}\nif [ -e {} ]; then echo 'blocked by test'; exit 1; fi",
            count.display(),
            flag.display()
        ),
    );
}

#[test]
fn failing_pre_hook_blocks_the_update_removes_the_release_and_is_retried() {
    let env = Env::new();
    failing_pre_hook(&env);
    env.post_hook(
        "50-post",
        &format!("echo post >> {}", env.out("post.log").display()),
    );
    // The first failing hook stops the chain.
    env.pre_hook(
        "60-after",
        &format!("echo after >> {}", env.out("after.log").display()),
    );
    let (remote, _) = publish(&env, "v1");
    env.fetch(&remote).expect_code(0);
    let r1 = env.live_release();
    env.clear_out("post.log");
    env.clear_out("after.log");

    let (_, v2) = publish(&env, "v2");
    fs::write(env.out("fail"), "").expect("flag");
    let out = env.fetch(&remote);
    out.expect_code(3);
    assert_eq!(env.live_release(), r1, "current unchanged");
    assert_eq!(
        env.releases(),
        vec![r1.clone()],
        "the blocked release is removed"
    );
    assert_eq!(
        env.out_lines("post.log"),
        Vec::<String>::new(),
        "no post hook after a block"
    );
    assert_eq!(
        env.out_lines("after.log"),
        Vec::<String>::new(),
        "the chain stops at the first failing hook"
    );
    assert!(
        out.stderr.contains("hook 50-gate: blocked by test"),
        "the hook's output is logged:\n{}",
        out.dump()
    );
    env.assert_clean();

    // The next run tries the same version again.
    env.fetch(&remote).expect_code(3);
    let runs = env.out_lines("pre.count");
    assert_eq!(
        runs.len(),
        3,
        "pre hook ran on the first deploy and on both attempts: {runs:?}"
    );
    assert_eq!(runs[1], sha256_hex(&v2));
    assert_eq!(runs[2], sha256_hex(&v2));
    assert_eq!(env.live_release(), r1);
    env.assert_clean();

    fs::remove_file(env.out("fail")).expect("unflag");
    env.fetch(&remote).expect_code(0);
    assert_eq!(live_version(&env), "v2\n");
    assert_eq!(env.out_lines("post.log"), vec!["post"]);
}

#[test]
fn failing_pre_hook_on_first_deploy_leaves_no_current() {
    let env = Env::new();
    failing_pre_hook(&env);
    fs::write(env.out("fail"), "").expect("flag");
    let (remote, _) = publish(&env, "v1");

    env.fetch(&remote).expect_code(3);

    assert!(
        env.live().is_none(),
        "no current after a blocked first deploy"
    );
    assert_eq!(
        env.releases(),
        Vec::<PathBuf>::new(),
        "the blocked release is removed"
    );
    env.assert_clean();
}

/// A post hook logging `ROLLBACK CURRENT PREVIOUS VERSION PREVIOUS_VERSION` to out/post.log,
/// failing (outside a rollback re-run) while out/fail exists.
fn failing_post_hook(env: &Env) {
    let (log, flag) = (env.out("post.log"), env.out("fail"));
    env.post_hook(
        "50-check",
        &format!(
            "echo \"$DEPLOY_ROLLBACK|$CURRENT_CONFIG|$PREVIOUS_CONFIG|$DEPLOY_VERSION|$DEPLOY_PREVIOUS_VERSION|$(readlink -f \"$DEPLOY_DIR\")\" >> {}\n\
             if [ -e {} ] && [ \"$DEPLOY_ROLLBACK\" = 0 ]; then echo 'health check failed'; exit 1; fi",
            log.display(),
            flag.display()
        ),
    );
}

#[test]
fn failing_post_hook_rolls_back_and_reruns_post_hooks_for_the_restored_release() {
    let env = Env::new();
    failing_post_hook(&env);
    let (remote, v1) = publish(&env, "v1");
    let v1 = sha256_hex(&v1);
    env.fetch(&remote).expect_code(0);
    let r1 = env.live_release();
    env.clear_out("post.log");

    let (_, v2) = publish(&env, "v2");
    let v2 = sha256_hex(&v2);
    fs::write(env.out("fail"), "").expect("flag");
    let out = env.fetch(&remote);

    out.expect_code(4);
    assert_eq!(
        env.live_release(),
        r1,
        "current is back on the previous release"
    );
    env.assert_current_is_relative_link();
    let lines = env.out_lines("post.log");
    assert_eq!(
        lines.len(),
        2,
        "the post hook ran for the new release, then once more after the rollback: {lines:?}"
    );
    let first: Vec<&str> = lines[0].split('|').collect();
    let failed = first[1].to_string();
    assert_ne!(failed, s(&r1), "{lines:?}");
    assert!(
        Path::new(&failed).starts_with(env.releases_dir()),
        "{lines:?}"
    );
    assert_eq!(
        first,
        [
            "0",
            failed.as_str(),
            s(&r1),
            v2.as_str(),
            v1.as_str(),
            failed.as_str()
        ],
        "first post run"
    );
    let rerun: Vec<&str> = lines[1].split('|').collect();
    assert_eq!(
        rerun,
        [
            "1",
            s(&r1),
            failed.as_str(),
            v1.as_str(),
            v2.as_str(),
            s(&r1)
        ],
        "post run after the rollback"
    );
    env.assert_clean();

    // The reverted version is tried again at the next check.
    fs::remove_file(env.out("fail")).expect("unflag");
    env.clear_out("post.log");
    env.fetch(&remote).expect_code(0);
    assert_eq!(live_version(&env), "v2\n");
    let lines = env.out_lines("post.log");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("0|"), "{lines:?}");
}

#[test]
fn failing_post_hook_on_first_deploy_removes_current_without_a_rerun() {
    let env = Env::new();
    failing_post_hook(&env);
    fs::write(env.out("fail"), "").expect("flag");
    let (remote, _) = publish(&env, "v1");

    env.fetch(&remote).expect_code(4);

    assert!(
        fs::symlink_metadata(env.current()).is_err(),
        "current is removed after a failed first deploy"
    );
    let lines = env.out_lines("post.log");
    assert_eq!(
        lines.len(),
        1,
        "no re-run when there is nothing to restore: {lines:?}"
    );
    assert!(lines[0].starts_with("0|"), "{lines:?}");
    env.assert_clean();

    // And the version is tried again.
    fs::remove_file(env.out("fail")).expect("unflag");
    env.fetch(&remote).expect_code(0);
    assert_eq!(live_version(&env), "v1\n");
}

#[test]
fn hook_timeout_kills_the_hook_and_its_process_group() {
    let env = Env::new();
    env.config("hook-timeout = 1\n");
    let pidfile = env.out("grandchild.pid");
    env.pre_hook(
        "50-hang",
        &format!("sleep 60 &\necho $! > {}\nsleep 60", pidfile.display()),
    );
    let (remote, _) = publish(&env, "v1");

    let out = env.fetch(&remote);

    out.expect_code(3);
    assert!(
        out.elapsed < Duration::from_secs(30),
        "the hook was not cut off at 1 s: {:?}",
        out.elapsed
    );
    let pid: i32 = fs::read_to_string(&pidfile)
        .expect("grandchild pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        eventually(Duration::from_secs(5), || process_gone(pid)),
        "the hook's grandchild {pid} survived the timeout"
    );
    assert!(env.live().is_none());
    assert_eq!(env.releases(), Vec::<PathBuf>::new());
    env.assert_clean();
}

#[test]
fn hook_paths_are_absolute_and_real_for_a_relative_symlinked_deploy_dir() {
    let env = Env::new();
    dumping_hooks(&env);
    let real = env.root.join("real-deploy");
    fs::create_dir(&real).expect("mkdir");
    symlink("real-deploy", env.root.join("via-link")).expect("symlink");
    let (remote, _) = publish(&env, "v1");

    // `-d via-link`: relative to the working directory, and a symlink.
    env.cmd()
        .deploy_dir("via-link")
        .args(["-f", "-r", &remote])
        .run()
        .expect_code(0);
    let r1 = fs::canonicalize(env.root.join("via-link/current")).expect("current");
    publish(&env, "v2");
    Dump::read(&env, "pre");
    Dump::read(&env, "post");
    env.cmd()
        .deploy_dir("via-link")
        .args(["-f", "-r", &remote])
        .run()
        .expect_code(0);
    let r2 = fs::canonicalize(env.root.join("via-link/current")).expect("current");

    assert!(
        r1.starts_with(&real) && r2.starts_with(&real),
        "{r1:?} {r2:?}"
    );
    for phase in ["pre", "post"] {
        let d = Dump::read(&env, phase);
        d.check(
            phase,
            &[("CURRENT_CONFIG", s(&r2)), ("PREVIOUS_CONFIG", s(&r1))],
        );
        let dir = d.var("DEPLOY_DIR");
        assert!(
            Path::new(dir).is_absolute(),
            "{phase}: DEPLOY_DIR {dir:?} is absolute"
        );
        let live_then = if phase == "pre" { &r1 } else { &r2 };
        assert_eq!(
            d.dir_target,
            s(live_then),
            "{phase}: DEPLOY_DIR resolves to the live release of that moment"
        );
    }
}
