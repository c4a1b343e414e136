//! Secrets never leak (issue 5, part 7). Every remote kind that works runs with distinctive
//! secrets (a URL password and user, a `token` query parameter, `aws-access-key` and
//! `aws-secret-key` from the configuration file, `REPO_DEPLOY_AWS_SECRET_KEY` and the `AWS_*`
//! variables from the environment), and each secret is searched for in: stdout and stderr of
//! every run (with and without `-v`, human and JSON logs, failures included), `state.json` and
//! every file and file name under the deploy directory, what the hooks see (their environment,
//! and the agent's command line read through `/proc/$PPID/cmdline`), and `/proc/<pid>/cmdline`
//! of the agent and of every descendant, plus each descendant's `/proc/<pid>/environ`, read
//! while a hook holds the agent in the middle of an update.
//!
//! Secrets are given the way the README recommends, in the configuration file and the
//! environment. A secret typed on the command line (`-r https://user:pass@…`) is blanked out of
//! the agent's `/proc/<pid>/cmdline` once parsed (the last test), but was readable by every
//! local user until then, which no program can prevent.
//!
//! S3 runs against a scripted endpoint on loopback that refuses the request and echoes the keys
//! in its error message (the real moto server is tests/s3.rs's). Git runs over smart HTTP
//! (nginx + `git http-backend`, tests/it/git_support) with Basic auth, every process's command
//! line watched while it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

const URL_USER: &str = "deployer-u53rn4me";
const URL_PASS: &str = "Url-Pa55w0rd-7f3a9c";
/// Percent-encoded in the URL: `%2F` is `/`, so both forms are secrets.
const URL_PASS_ENCODED: &str = "Sl%2Fash-Pa55-91e0";
const URL_PASS_DECODED: &str = "Sl/ash-Pa55-91e0";
const QUERY_TOKEN: &str = "qT0ken-Query-5d2b8e";
const WRONG_PASS: &str = "Wr0ng-Pa55word-c41d";
const CFG_ACCESS_KEY: &str = "AKIACFGACCESS7Q2ZX9";
const CFG_SECRET_KEY: &str = "Cfg-Secret-Key-3b9f0a1c2d";
const ENV_SECRET_KEY: &str = "Env-Secret-Key-8c7d6e5f4a";
const AWS_ENV_ACCESS: &str = "AKIAENVACCESS4K8W1M";
const AWS_ENV_SECRET: &str = "Aws-Env-Secret-2e4f6a8b0c";
const AWS_ENV_TOKEN: &str = "Aws-Env-SessionToken-9a7b5c";
const SYNTAX_SECRET: &str = "Syntax-Err-Secret-6d5c4b";

const ALL: &[&str] = &[
    URL_USER,
    URL_PASS,
    URL_PASS_ENCODED,
    URL_PASS_DECODED,
    QUERY_TOKEN,
    WRONG_PASS,
    CFG_ACCESS_KEY,
    CFG_SECRET_KEY,
    ENV_SECRET_KEY,
    AWS_ENV_ACCESS,
    AWS_ENV_SECRET,
    AWS_ENV_TOKEN,
    SYNTAX_SECRET,
];

/// Fail if `bytes` holds any secret.
#[track_caller]
fn assert_no_secret(what: &str, bytes: &[u8]) {
    for secret in ALL {
        assert!(
            !contains_bytes(bytes, secret.as_bytes()),
            "{what} holds the secret {secret}:\n{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[track_caller]
fn assert_output_clean(out: &Output) {
    assert_no_secret(&out.what, out.all().as_bytes());
    assert!(!out.all().contains("panicked"), "{}", out.dump());
}

/// Every file (content and name) under `dir`.
#[track_caller]
fn assert_tree_clean(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for path in list(&d) {
            assert_no_secret(
                &format!("the name {}", path.display()),
                path.as_os_str().as_bytes(),
            );
            let meta = fs::symlink_metadata(&path).expect("lstat");
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                files += 1;
                assert_no_secret(&path.display().to_string(), &fs::read(&path).expect("read"));
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                assert_no_secret(&path.display().to_string(), target.as_os_str().as_bytes());
            }
        }
    }
    assert!(files > 0, "nothing to search under {}", dir.display());
}

/// The environment every run gets: secrets the agent must use or ignore, never show.
fn secret_env(cmd: Cmd<'_>) -> Cmd<'_> {
    cmd.env("REPO_DEPLOY_AWS_SECRET_KEY", ENV_SECRET_KEY)
        .env("AWS_ACCESS_KEY_ID", AWS_ENV_ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", AWS_ENV_SECRET)
        .env("AWS_SESSION_TOKEN", AWS_ENV_TOKEN)
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

/// Pre and post hooks that dump what they see; the pre hook then waits (bounded) for
/// `out/release`, so the test can read `/proc` while the agent is mid-update.
fn dumping_hooks(env: &Env) {
    let out = env.out.display();
    for (phase, wait) in [("pre", true), ("post", false)] {
        let mut body = format!(
            "env -0 > {out}/env-{phase}\ncat /proc/$PPID/cmdline > {out}/cmdline-{phase}\n\
             cat /proc/$$/cmdline > {out}/self-cmdline-{phase}\n"
        );
        if wait {
            body.push_str(&format!(
                "touch {out}/waiting\ni=0\nwhile [ ! -e {out}/release ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n"
            ));
        }
        env.hook(
            if phase == "pre" { &env.pre } else { &env.post },
            "10-dump",
            &body,
        );
    }
}

/// `pid` and all its descendants, from `/proc/*/stat`.
fn process_tree(pid: i32) -> Vec<i32> {
    let mut parents: BTreeMap<i32, i32> = BTreeMap::new();
    for entry in list(Path::new("/proc")) {
        let Some(p) = entry
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
        {
            parents.insert(p, ppid);
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&(_, &pp)| pp == parent)
                .map(|(&p, _)| p),
        );
        i += 1;
    }
    tree
}

/// Deploy with `-f -v` (and `extra` arguments), and while the pre hook waits, search the
/// command lines of the agent and its descendants and the environment of the descendants.
fn deploy_and_inspect(env: &Env, extra: &[&str]) {
    dumping_hooks(env);
    let mut agent = secret_env(env.cmd().args(["-f", "-v"]).args(extra)).spawn();
    agent.wait_for("the pre hook to start", || env.out("waiting").exists());
    let pids = process_tree(agent.pid());
    assert!(
        pids.len() >= 2,
        "the agent and its hook: {pids:?}\n{}",
        agent.stderr()
    );
    for pid in &pids {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert_no_secret(&format!("/proc/{pid}/cmdline"), &cmdline);
        if *pid != agent.pid() {
            // The agent's own environment holds what the test gave it; its children's must not.
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            assert_no_secret(&format!("/proc/{pid}/environ"), &environ);
        }
    }
    fs::write(env.out("release"), "").expect("release the hook");
    let status = agent.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "deploy failed\n{}", agent.stderr());
    let log = format!("{}\n{}", agent.stdout(), agent.stderr());
    assert_no_secret("the deploy's output", log.as_bytes());
    for phase in ["pre", "post"] {
        let dump = read_env_dump(&env.out(&format!("env-{phase}")));
        assert_eq!(dump.get("DEPLOY_PHASE").map(String::as_str), Some(phase));
        for withheld in [
            "REPO_DEPLOY_AWS_SECRET_KEY",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            assert!(
                !dump.contains_key(withheld),
                "{withheld} reached the {phase} hook"
            );
        }
        let cmdline = fs::read(env.out(&format!("cmdline-{phase}"))).expect("cmdline dump");
        assert!(
            contains_bytes(&cmdline, b"repo-deploy"),
            "the hook read the agent's command line"
        );
    }
    assert_tree_clean(&env.out);
}

/// The runs after a deploy: unchanged checks in every log format and verbosity, and the
/// read-only commands. Their exit codes are not the point here.
fn later_runs(env: &Env) {
    for args in [
        &["-f"][..],
        &["-f", "-v"],
        &["-f", "-v", "--log-format", "json"],
        &["check-config"],
        &["-v", "check-config"],
        &["status"],
        &["releases", "--json"],
    ] {
        let out = secret_env(env.cmd().args(args)).run();
        assert_output_clean(&out);
    }
}

fn config(env: &Env, remote: &str) {
    env.config(&format!(
        "remote = {remote}\naws-access-key = {CFG_ACCESS_KEY}\naws-secret-key = {CFG_SECRET_KEY}\n"
    ));
}

#[test]
fn http_basic_auth_and_query_tokens_never_leak() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[(URL_USER, URL_PASS)]);
    nginx.publish_zip("private/app.zip", &[file("version.txt", "v1\n", 0o644)]);
    let url = |user: &str, pass: &str| {
        format!(
            "{}?token={QUERY_TOKEN}",
            nginx.url_with_auth(user, pass, "private/app.zip")
        )
    };
    config(&env, &url(URL_USER, URL_PASS));

    deploy_and_inspect(&env, &[]);

    let state = fs::read(env.deploy.join("state.json")).expect("state.json");
    assert!(
        contains_bytes(&state, b"***@127.0.0.1"),
        "the state keeps the masked remote"
    );
    later_runs(&env);
    assert_tree_clean(&env.deploy);
    let accesses = nginx.access_log();
    assert!(
        accesses.iter().any(|a| a.status == 200),
        "the credentials were used: {accesses:?}"
    );

    // Failures: a refused password (also one that needs percent-encoding), an unreachable host.
    for (remote, code) in [
        (url(URL_USER, WRONG_PASS), 1),
        (url(URL_USER, URL_PASS_ENCODED), 1),
        (
            format!(
                "http://{URL_USER}:{URL_PASS}@127.0.0.1:{}/app.zip?token={QUERY_TOKEN}",
                free_port()
            ),
            1,
        ),
    ] {
        config(&env, &remote);
        for verbose in [false, true] {
            let mut cmd = secret_env(env.cmd()).arg("-f");
            if verbose {
                cmd = cmd.arg("-v");
            }
            let out = cmd.run();
            out.expect_code(code);
            assert_output_clean(&out);
        }
    }
    assert_tree_clean(&env.deploy);
}

#[test]
fn local_remotes_never_leak_the_configured_keys() {
    let env = Env::new();
    let archive = env.root.join("app.zip");
    zip(&archive, &[file("version.txt", "v1\n", 0o644)]);
    config(&env, archive.to_str().expect("utf8"));

    deploy_and_inspect(&env, &[]);

    later_runs(&env);
    // A directory remote too.
    let site = env.root.join("site");
    fs::create_dir(&site).expect("mkdir");
    fs::write(site.join("index.html"), "v2\n").expect("write");
    config(&env, site.to_str().expect("utf8"));
    let out = secret_env(env.cmd().args(["-f", "-v"])).run();
    out.expect_code(0);
    assert_output_clean(&out);
    assert_tree_clean(&env.deploy);
}

#[test]
fn s3_keys_never_leak_even_when_the_endpoint_echoes_them() {
    let env = Env::new();
    // The endpoint echoes the access key it was sent, and (misbehaving) the secret key in
    // force: the one from the environment, which overrides the file's.
    let echo = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>WeirdError</Code>\
         <Message>refused key {CFG_ACCESS_KEY} with secret {ENV_SECRET_KEY}</Message>\
         <AWSAccessKeyId>{CFG_ACCESS_KEY}</AWSAccessKeyId><RequestId>1</RequestId></Error>"
    );
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{echo}",
        echo.len()
    );
    let stub = Stub::start(vec![Reply::Raw(reply.into_bytes()); 8]);
    env.config(&format!(
        "remote = s3://bucket/app.zip\naws-access-key = {CFG_ACCESS_KEY}\naws-secret-key = {CFG_SECRET_KEY}\n\
         aws-region = eu-west-1\ns3-endpoint = http://127.0.0.1:{}\n",
        stub.port
    ));
    env.pre_hook("10-never", &format!("touch {}", env.out("ran").display()));

    for args in [
        &["check-config"][..],
        &["-v", "check-config"],
        &["-f"],
        &["-f", "-v"],
        &["-f", "-v", "--log-format", "json"],
    ] {
        let out = secret_env(env.cmd().env("HOME", &env.root).args(args)).run();
        assert_output_clean(&out);
        if args.contains(&"-f") {
            out.expect_code(1);
            assert!(
                out.stderr.contains("WeirdError"),
                "the endpoint's error is reported\n{}",
                out.dump()
            );
        } else {
            out.expect_code(0);
            assert!(
                out.stdout.contains("aws-secret-key = ***"),
                "{}",
                out.stdout
            );
        }
    }
    let requests = stub.requests();
    assert!(!requests.is_empty(), "the S3 endpoint was asked");
    assert!(
        requests[0].contains(CFG_ACCESS_KEY),
        "the request was signed with the configured key: {}",
        requests[0]
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.contains(CFG_SECRET_KEY) || r.contains(ENV_SECRET_KEY)),
        "a secret key was sent over the wire"
    );
    assert!(!env.out("ran").exists(), "no hook ran");
    if env.deploy.exists() {
        let files: BTreeSet<PathBuf> = list(&env.deploy).into_iter().collect();
        for f in files {
            if f.is_file() {
                assert_no_secret(&f.display().to_string(), &fs::read(&f).expect("read"));
            }
        }
    }
}

#[test]
fn configuration_errors_do_not_echo_secrets() {
    let env = Env::new();
    for text in [
        // A line without `=`: its text would be echoed.
        format!("remote http://u:{SYNTAX_SECRET}@127.0.0.1/app.zip\n"),
        format!("aws-secret-key: {SYNTAX_SECRET}\n"),
        format!("aws-secret-key {SYNTAX_SECRET}\n"),
        // An unknown key whose value is a secret.
        format!("aws-secret = {SYNTAX_SECRET}\n"),
        // A bad URL holding credentials.
        format!("remote = http://u:{SYNTAX_SECRET}@[::1/app.zip\n"),
        format!("remote = ftp://u:{SYNTAX_SECRET}@127.0.0.1/app.zip\n"),
    ] {
        env.config(&text);
        for args in [&["-f"][..], &["-f", "-v"], &["check-config"]] {
            let out = secret_env(env.cmd().args(args)).run();
            out.expect_code(2);
            assert_output_clean(&out);
        }
    }
}

#[test]
fn git_over_http_with_credentials_never_leaks() {
    let world = crate::git_support::World::new();
    let root = world.root.join("srv");
    let _repos = crate::git_support::Repos::new(&world, &root.join("private"));
    let http = crate::git_support::HttpGit::start(&world, &root, &[(URL_USER, URL_PASS)]);
    let remote = |pass: &str| {
        format!(
            "{}/site",
            http.url_with_auth(URL_USER, pass, "private/app.git")
        )
    };
    world.pre_hook(
        "20-dump",
        "env -0 > \"$OUT/env-pre\"\ncat /proc/$PPID/cmdline > \"$OUT/cmdline-pre\"\n\
         cat /proc/[0-9]*/cmdline > \"$OUT/all-cmdlines\" 2>/dev/null; true",
    );
    let config = |pass: &str| {
        world.config(&format!(
            "remote = {}\naws-access-key = {CFG_ACCESS_KEY}\naws-secret-key = {CFG_SECRET_KEY}\n",
            remote(pass)
        ))
    };

    // A refused password, then the right one, then an unchanged check; every git command line
    // of the whole run is watched.
    let watch = crate::git_support::CmdlineWatch::start(URL_PASS);
    let mut outputs = Vec::new();
    config(WRONG_PASS);
    let wrong = world.run_args(&["-f", "-v"]);
    wrong.expect_code(1);
    outputs.push(wrong);
    config(URL_PASS);
    for _ in 0..2 {
        let out = world.run_args(&["-f", "-v"]);
        out.expect_code(0);
        outputs.push(out);
    }
    let (hits, gits) = watch.finish();

    assert!(gits > 0, "the watcher saw git processes");
    assert!(
        hits.is_empty(),
        "the password was on a command line: {hits:?}"
    );
    for out in &outputs {
        assert_no_secret(
            "a git run's output",
            format!("{}\n{}", out.stdout, out.stderr).as_bytes(),
        );
    }
    let env = read_env_dump(&world.out.join("env-pre"));
    assert_eq!(env.get("DEPLOY_PHASE").map(String::as_str), Some("pre"));
    // The hooks' dumps, the git wrapper's argv log, and the deploy directory with the git cache
    // (whose repository configuration must not keep the credentials).
    assert_tree_clean(&world.out);
    assert_tree_clean(&world.deploy);
}

#[test]
fn credentials_given_with_r_are_hidden_from_the_agents_command_line() {
    // The README recommends the configuration file; an operator who types the password on the
    // command line anyway gets it blanked out of `ps` once the arguments are parsed (what `ps`
    // saw before that instant cannot be taken back). The credentials still work afterwards,
    // a SIGHUP reload included: the agent parsed them before hiding them.
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[(URL_USER, URL_PASS)]);
    nginx.publish_zip("private/app.zip", &[file("version.txt", "v1\n", 0o644)]);
    let remote = format!(
        "{}?token={QUERY_TOKEN}",
        nginx.url_with_auth(URL_USER, URL_PASS, "private/app.zip")
    );
    let version = |env: &Env| {
        env.live()
            .and_then(|live| fs::read_to_string(live.join("version.txt")).ok())
    };
    let mut daemon = env.cmd().args(["-r", &remote]).spawn();
    daemon.wait_for("the first deploy", || {
        version(&env).as_deref() == Some("v1\n")
    });

    let cmdline = fs::read(format!("/proc/{}/cmdline", daemon.pid())).expect("cmdline");
    for secret in [URL_PASS, QUERY_TOKEN] {
        assert!(
            !contains_bytes(&cmdline, secret.as_bytes()),
            "{secret} in {}",
            String::from_utf8_lossy(&cmdline)
        );
    }
    let blanked = format!("{URL_USER}:{}@127.0.0.1", "*".repeat(URL_PASS.len()));
    assert!(
        contains_bytes(&cmdline, blanked.as_bytes()),
        "the rest of the command line is as it was: {}",
        String::from_utf8_lossy(&cmdline)
    );

    nginx.publish_zip("private/app.zip", &[file("version.txt", "v2\n", 0o644)]);
    daemon.signal(libc::SIGHUP);
    daemon.signal_until(libc::SIGUSR1, "v2 deployed after a reload", || {
        version(&env).as_deref() == Some("v2\n")
    });
    let output = daemon.stderr() + &daemon.stdout();
    assert_no_secret("the daemon's output", output.as_bytes());
}
