//! Configuration: the file format, errors (exit 2, nothing touched), precedence
//! (command line > environment > file), aliases, and `check-config`.

use std::fs;

use crate::common::*;

/// A ZIP at `<root>/<name>.zip` whose which.txt says `name`; returns its path.
fn remote_zip(env: &Env, name: &str) -> String {
    let path = env.root.join(format!("{name}.zip"));
    zip(&path, &[file("which.txt", name, 0o644)]);
    path.to_str().expect("utf8").to_string()
}

fn which(env: &Env) -> String {
    fs::read_to_string(env.live_release().join("which.txt")).expect("which.txt")
}

/// Exit 2 and the deploy directory was not even created.
#[track_caller]
fn assert_usage_error(env: &Env, out: &Output) {
    out.expect_code(2);
    assert!(
        !out.stderr.trim().is_empty(),
        "the error is explained on stderr"
    );
    assert!(
        !env.deploy.exists(),
        "a configuration error touches nothing, yet {} exists",
        env.deploy.display()
    );
}

#[test]
fn unknown_key_names_the_file_line_and_closest_key() {
    let env = Env::new();
    let remote = remote_zip(&env, "a");
    env.config(&format!(
        "# comment\nremote = {remote}\nschedul = * * * * *\n"
    ));

    let out = env.run(&["-f"]);

    assert_usage_error(&env, &out);
    let at = format!("{}:3", env.cfg.display());
    assert!(
        out.stderr.contains(&at),
        "stderr names {at}:\n{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("schedule"),
        "stderr suggests `schedule`:\n{}",
        out.dump()
    );
}

#[test]
fn missing_config_file_named_with_c_is_an_error() {
    let env = Env::new();
    let remote = remote_zip(&env, "a");
    let missing = env.root.join("none.cfg");

    let out = env
        .cmd()
        .config_file(&missing)
        .args(["-f", "-r", &remote])
        .run();

    assert_usage_error(&env, &out);
    assert!(
        out.stderr.contains("none.cfg"),
        "stderr names the file:\n{}",
        out.dump()
    );
}

#[test]
fn bad_schedule_is_an_error_even_with_fetch() {
    let env = Env::new();
    let remote = remote_zip(&env, "a");
    for schedule in ["61 * * * *", "not a cron", "* * *", "@fortnightly"] {
        let out = env.run(&["-f", "-r", &remote, "-s", schedule]);
        assert_usage_error(&env, &out);
    }
    env.config("schedule = 0 0 31 2 * * * *\n");
    assert_usage_error(&env, &env.run(&["-f", "-r", &remote]));
}

#[test]
fn valid_schedules_are_accepted() {
    let env = Env::new();
    let remote = remote_zip(&env, "a");
    for schedule in ["*/5 * * * *", "*/10 * * * * *", "@hourly", "0 0 1 1 *"] {
        env.run(&["-f", "-r", &remote, "-s", schedule])
            .expect_code(0);
    }
}

#[test]
fn keep_below_two_is_an_error() {
    let env = Env::new();
    let remote = remote_zip(&env, "a");
    env.config("keep = 1\n");
    assert_usage_error(&env, &env.run(&["-f", "-r", &remote]));
    env.config("keep = 0\n");
    assert_usage_error(&env, &env.run(&["-f", "-r", &remote]));
    env.config("");
    assert_usage_error(
        &env,
        &env.cmd()
            .args(["-f", "-r", &remote])
            .env("REPO_DEPLOY_KEEP", "1")
            .run(),
    );
}

#[test]
fn bad_values_are_errors() {
    let env = Env::new();
    let remote = remote_zip(&env, "a");
    for line in [
        "hook-timeout = soon",
        "max-size = lots",
        "max-files = -3",
        "keep = many",
        "remote",
    ] {
        env.config(&format!("{line}\n"));
        let out = env.run(&["-f", "-r", &remote]);
        assert_usage_error(&env, &out);
        assert!(
            out.stderr.contains(&format!("{}:1", env.cfg.display())),
            "{line}: names file:line\n{}",
            out.dump()
        );
    }
}

#[test]
fn no_remote_is_an_error() {
    let env = Env::new();
    assert_usage_error(&env, &env.run(&["-f"]));
}

#[test]
fn unknown_option_is_a_usage_error() {
    let env = Env::new();
    assert_usage_error(&env, &env.run(&["-f", "--no-such-option"]));
}

#[test]
fn every_git_remote_form_is_accepted() {
    let env = Env::new();
    for remote in [
        "git@example.invalid:org/app.git#main",
        "https://user:t0kenX@example.invalid/org/app.git/sub#v1",
        "git+ssh://git@example.invalid/org/app.git",
        "git://example.invalid/org/app.git",
        "file:///srv/app.git#main",
    ] {
        let out = env.run(&["-r", remote, "check-config"]);
        out.expect_code(0);
        assert!(
            out.stdout.contains("remote = "),
            "{remote}:\n{}",
            out.dump()
        );
        assert!(
            !out.all().contains("t0kenX"),
            "{remote}: credentials shown:\n{}",
            out.dump()
        );
    }
}

#[test]
fn malformed_remotes_are_usage_errors() {
    let env = Env::new();
    // Should anything try the network anyway, it stays on loopback with static credentials.
    env.config(&format!(
        "s3-endpoint = http://127.0.0.1:{}\naws-region = us-east-1\naws-access-key = AKIATEST\naws-secret-key = test-secret-987\n",
        free_port()
    ));
    for remote in [
        "s3://bucket",
        "s3://bucket/",
        "ftp://user:ftp-pw-321@example.invalid/app.zip",
    ] {
        let out = env.fetch(remote);
        assert_usage_error(&env, &out);
        assert!(
            !out.all().contains("ftp-pw-321") && !out.all().contains("test-secret-987"),
            "{remote}: a secret leaked:\n{}",
            out.dump()
        );
    }
}

#[test]
fn command_line_beats_environment_beats_file() {
    let env = Env::new();
    let (file_r, env_r, cli_r) = (
        remote_zip(&env, "file"),
        remote_zip(&env, "env"),
        remote_zip(&env, "cli"),
    );
    env.config(&format!("remote = {file_r}\n"));

    env.run(&["-f"]).expect_code(0);
    assert_eq!(which(&env), "file");

    env.cmd()
        .arg("-f")
        .env("REPO_DEPLOY_REMOTE", &env_r)
        .run()
        .expect_code(0);
    assert_eq!(which(&env), "env", "REPO_DEPLOY_REMOTE beats the file");

    env.cmd()
        .args(["-f", "-r", &cli_r])
        .env("REPO_DEPLOY_REMOTE", &env_r)
        .run()
        .expect_code(0);
    assert_eq!(which(&env), "cli", "-r beats REPO_DEPLOY_REMOTE");
}

#[test]
fn repository_and_identity_aliases_and_underscore_keys() {
    let env = Env::new();
    remote_zip(&env, "web-3");
    let pre = env.root.join("hooks-pre");
    let post = env.root.join("hooks-post");
    fs::create_dir(&pre).expect("mkdir");
    fs::create_dir(&post).expect("mkdir");
    write_script(
        &pre.join("10-mark"),
        &format!("echo pre >> {}", env.out("marks").display()),
    );
    write_script(
        &post.join("10-mark"),
        &format!("echo post >> {}", env.out("marks").display()),
    );
    env.config(&format!(
        "; aliases\nrepository = {}/{{id}}.zip\nidentity = web-3\npre_hooks = {}\npost_hooks = {}\nhook_timeout = 30\n",
        env.root.display(),
        pre.display(),
        post.display()
    ));

    env.cmd().no_hook_flags().arg("-f").run().expect_code(0);

    assert_eq!(which(&env), "web-3");
    assert_eq!(
        env.out_lines("marks"),
        vec!["pre", "post"],
        "pre_hooks/post_hooks from the file"
    );
}

#[test]
fn environment_keys_use_underscores() {
    let env = Env::new();
    let remote = remote_zip(&env, "a");
    let pre = env.root.join("env-pre");
    fs::create_dir(&pre).expect("mkdir");
    write_script(
        &pre.join("10-mark"),
        &format!("echo pre >> {}", env.out("marks").display()),
    );
    env.cmd()
        .no_hook_flags()
        .args(["-f", "-r", &remote])
        .env("REPO_DEPLOY_PRE_HOOKS", &pre)
        .env("REPO_DEPLOY_POST_HOOKS", env.root.join("missing-post"))
        .run()
        .expect_code(0);
    assert_eq!(env.out_lines("marks"), vec!["pre"]);
}

#[test]
fn check_config_prints_effective_settings_with_secrets_masked() {
    let env = Env::new();
    env.config(
        "remote = https://deployer:pw-check-456@example.invalid/app.zip\n\
         keep = 3\n\
         aws-access-key = AKIAEXAMPLEKEY42\n\
         aws-secret-key = topsecret-aws-123\n",
    );

    let out = env.run(&["check-config"]);

    out.expect_code(0);
    for secret in ["pw-check-456", "topsecret-aws-123"] {
        assert!(
            !out.all().contains(secret),
            "{secret} leaked:\n{}",
            out.dump()
        );
    }
    let lines: Vec<&str> = out.stdout.lines().collect();
    let value = |key: &str| {
        lines
            .iter()
            .find_map(|l| {
                l.split_once(" = ")
                    .filter(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            })
            .unwrap_or_else(|| panic!("no `{key} = …` line:\n{}", out.stdout))
    };
    let remote = value("remote");
    assert!(
        remote.contains("***") && remote.contains("example.invalid/app.zip"),
        "remote = {remote}"
    );
    assert_eq!(value("keep"), "3");
    assert_eq!(value("aws-secret-key"), "***");
    assert_eq!(value("directory"), env.deploy.display().to_string());
    assert!(!env.deploy.exists(), "check-config touches nothing");
}

#[test]
fn check_config_reports_errors_with_exit_2() {
    let env = Env::new();
    env.config("remote = /srv/app.zip\nkeeep = 3\n");
    let out = env.run(&["check-config"]);
    assert_usage_error(&env, &out);
    assert!(out.stderr.contains("keep"), "{}", out.dump());
}
