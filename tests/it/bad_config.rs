//! Bad configuration (issue 5, part 8): every key given malformed values, from the file and
//! from the environment, and garbage configuration files (binary noise, huge lines, NULs,
//! invalid UTF-8, a directory, an unreadable file, an endless device). Each must exit 2 with a
//! short message that names the problem (and `file:line` or the variable where there is one),
//! never panic, and create nothing on disk. An in-process part feeds thousands of random files
//! and environments to `Settings::resolve_in` to look for panics faster than the binary can.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;
use clap::Parser;
use repo_deploy::cli::Cli;
use repo_deploy::config::{KEYS, Settings};

/// The longest error output accepted: a message, not an echo of the input.
const MAX_MESSAGE: usize = 2048;

/// Malformed values for each key (besides the ones every key refuses: control characters,
/// invalid UTF-8). A key added to `KEYS` without an entry here fails
/// `every_key_has_malformed_values`.
const MALFORMED: &[(&str, &[&str])] = &[
    (
        "remote",
        &[
            "ftp://host/app.zip",
            "http://[::1/app.zip",
            "http://",
            "s3://bucket-only",
            "https://host/app.git#",
        ],
    ),
    ("local", &[]),
    ("directory", &[]),
    ("cache", &[]),
    (
        "schedule",
        &[
            "* *",
            "61 * * * *",
            "@sometimes",
            "* * * * * * * *",
            "*/0 * * * *",
        ],
    ),
    ("id", &[]),
    ("pre-hooks", &[]),
    ("post-hooks", &[]),
    ("aws-access-key", &["AKIAONLYTHEACCESSKEY"]),
    ("aws-secret-key", &["only-the-secret-key-given"]),
    ("aws-region", &["eu west 1", "eu-west-1/../x"]),
    (
        "s3-endpoint",
        &["not a url", "ftp://127.0.0.1:9000", "127.0.0.1:9000"],
    ),
    (
        "keep",
        &["1", "0", "x", "-3", "2.5", "99999999999999999999999"],
    ),
    ("hook-timeout", SECONDS),
    (
        "max-size",
        &["0", "lots", "10X", "99999999999T", "-5", "1.5G"],
    ),
    (
        "max-files",
        &["0", "x", "-1", "1.5", "99999999999999999999999"],
    ),
    ("connect-timeout", SECONDS),
    ("stall-timeout", SECONDS),
    ("activate", &["copy", "symlink,sync", "hardlink"]),
    ("reuse", &["yes", "symlink", "copy hardlink"]),
    (
        "listen",
        &["localhost:9469", "127.0.0.1", "127.0.0.1:99999", "[::1:80"],
    ),
    ("health-periods", &["0", "10001", "x", "-1"]),
    ("trigger-token", &["short", "has spaces in the token value"]),
    ("trigger-min-interval", SECONDS),
    ("splay", &["-1", "86401", "x", "NaN"]),
    ("reuse", &["yes", "reflink", "copy,hardlink", "0"]),
    (
        "etcd",
        &[
            "127.0.0.1:2379",
            "ftp://127.0.0.1:2379",
            "http://user:pw@127.0.0.1:2379",
            "http://127.0.0.1:2379/v3",
            ", ,",
        ],
    ),
    ("fleet", &["web servers", "web/eu", "wëb"]),
    ("host", &["web/1"]),
    ("etcd-prefix", &["repo-deploy", "x/"]),
    ("etcd-ca", &[]),
    // Alone, without its pair.
    ("etcd-cert", &["/etc/repo-deploy/etcd.crt"]),
    ("etcd-key", &["/etc/repo-deploy/etcd.key"]),
    ("etcd-user", &["deployer"]),
    ("etcd-password", &["only-the-password"]),
    ("max-parallel", &["0", "0%", "101%", "x", "-1", "1.5"]),
    ("canary", &["-1", "x", "1.5", "99999999999"]),
    ("bake", &["-1", "86401", "x", "1.5"]),
    ("health-hooks", &[]),
    ("on-halt", &["revert-all", "yes", "0"]),
    ("fleet-lease", &["0", "1", "3601", "x"]),
    // Unreadable; with a local directory remote it is an error too (tests/it/signed.rs).
    ("trusted-keys", &["/nonexistent/minisign.pub"]),
    ("max-signature-age", &["0", "x", "1w", "-1d", "1.5h"]),
    // The remote of these runs is a ZIP: allowed-signers is for git remotes.
    ("allowed-signers", &["/etc/repo-deploy/allowed_signers"]),
    ("git-verify", &["yes", "both", "commits"]),
];

const SECONDS: &[&str] = &[
    "0",
    "-1",
    "abc",
    "NaN",
    "inf",
    "1e-12",
    "5 minutes",
    "31536001",
    "0s",
];

/// The keys that are only read in fleet mode, with `etcd` and `fleet` set.
const FLEET_KEYS: &[&str] = &[
    "host",
    "etcd-prefix",
    "etcd-ca",
    "etcd-cert",
    "etcd-key",
    "etcd-user",
    "etcd-password",
    "max-parallel",
    "canary",
    "bake",
    "health-hooks",
    "on-halt",
    "fleet-lease",
];

/// A valid remote (and fleet, for the fleet keys) for the runs that test another key.
fn other_keys(key: &str) -> String {
    match key {
        "remote" => String::new(),
        "etcd" => "remote = /srv/app.zip\nfleet = web\n".into(),
        "fleet" => "remote = /srv/app.zip\netcd = http://127.0.0.1:2379\n".into(),
        k if FLEET_KEYS.contains(&k) => {
            "remote = /srv/app.zip\netcd = http://127.0.0.1:2379\nfleet = web\n".into()
        }
        _ => "remote = /srv/app.zip\n".into(),
    }
}

fn env_name(key: &str) -> String {
    format!("REPO_DEPLOY_{}", key.to_uppercase().replace('-', "_"))
}

/// Run `cmd` and check: exit 2, a short message holding every `expect`, no panic, nothing
/// created in the test directory.
#[track_caller]
fn assert_refused(env: &Env, cmd: Cmd<'_>, what: &str, expect: &[&str]) -> Output {
    let before = list(&env.root);
    let out = cmd.run();
    assert_eq!(
        out.code(),
        Some(2),
        "{what}: expected exit 2\n{}",
        out.dump()
    );
    assert!(
        !out.all().contains("panicked"),
        "{what}: panicked\n{}",
        out.dump()
    );
    let message = out.stderr.trim();
    assert!(!message.is_empty(), "{what}: no message");
    assert!(
        message.len() <= MAX_MESSAGE,
        "{what}: a {} byte message: {}...",
        message.len(),
        &message[..MAX_MESSAGE.min(message.len())]
    );
    assert!(
        !message.contains('\0') && !message.contains('\u{1b}'),
        "{what}: raw control characters in the message: {message:?}"
    );
    for e in expect {
        assert!(
            message.contains(e),
            "{what}: the message lacks {e:?}: {message}"
        );
    }
    assert!(
        !env.deploy.exists(),
        "{what}: the deploy directory was created"
    );
    assert_eq!(list(&env.root), before, "{what}: files appeared");
    out
}

#[test]
fn every_key_has_malformed_values() {
    for (key, _) in KEYS {
        assert!(
            MALFORMED.iter().any(|(k, _)| k == key),
            "add malformed values for `{key}` to MALFORMED in tests/bad_config.rs"
        );
    }
}

#[test]
fn malformed_values_from_the_file_name_the_file_line_and_key() {
    let env = Env::new();
    let file = env.cfg.display().to_string();
    for (key, values) in MALFORMED {
        // Every key also refuses control characters and NUL bytes.
        let common = ["with\u{1b}[31mescape", "nul\0byte"];
        for value in values.iter().copied().chain(common) {
            let other = other_keys(key);
            // The key on line 3, after a comment and the other keys.
            let text = format!("# bad value\n{other}{key} = {value}\n");
            let line = text.lines().count();
            env.config(&text);
            let what = format!("{key} = {value:?} in the file");
            let out = assert_refused(&env, env.cmd().arg("-f"), &what, &[]);
            let message = out.stderr.trim();
            assert!(
                message.contains(&format!("{file}:{line}")),
                "{what}: the message does not name {file}:{line}: {message}"
            );
            let named = message.contains(key)
                || KEYS
                    .iter()
                    .find(|(k, _)| k == key)
                    .is_some_and(|(_, aliases)| aliases.iter().any(|a| message.contains(a)));
            assert!(
                named,
                "{what}: the message does not name `{key}`: {message}"
            );
        }
    }
}

#[test]
fn malformed_values_from_the_environment_name_the_variable() {
    let env = Env::new();
    for (key, values) in MALFORMED {
        env.config(&other_keys(key));
        let var = env_name(key);
        let mut cases: Vec<(String, Vec<u8>)> = values
            .iter()
            .map(|v| (format!("{v:?}"), v.as_bytes().to_vec()))
            .collect();
        cases.push(("a newline".into(), b"line1\nline2".to_vec()));
        cases.push(("invalid UTF-8".into(), b"bad-\xff-utf8".to_vec()));
        for (shown, value) in cases {
            let what = format!("{var}={shown}");
            assert_refused(
                &env,
                env.cmd().arg("-f").env(&var, OsStr::from_bytes(&value)),
                &what,
                &[&var],
            );
        }
    }
}

#[test]
fn malformed_command_line_values_are_usage_errors() {
    let env = Env::new();
    env.config("remote = /srv/app.zip\n");
    for (args, expect) in [
        (&["-f", "-s", "* *"][..], "schedule"),
        (&["-f", "-r", "ftp://host/app.zip"], "unsupported scheme"),
        (&["-f", "--bogus"], "--bogus"),
        (&["-f", "-s"], "--schedule"),
    ] {
        assert_refused(&env, env.cmd().args(args), &format!("{args:?}"), &[expect]);
    }
    let out = assert_refused(
        &env,
        env.cmd()
            .arg("-f")
            .arg("-r")
            .arg(OsStr::from_bytes(b"/srv/\xff.zip")),
        "a remote that is not UTF-8",
        &[],
    );
    assert!(out.stderr.contains("UTF-8"), "{}", out.stderr);
}

#[test]
fn unrelated_environment_variables_that_are_not_utf8_are_ignored() {
    let env = Env::new();
    env.config("remote = /srv/app.zip\n");
    let out = env
        .cmd()
        .arg("check-config")
        .env("SOME_OTHER_TOOL", OsStr::from_bytes(b"\xff\xfe"))
        .env(OsStr::from_bytes(b"NAME_\xff"), "x")
        .run();
    out.expect_code(0);
    assert!(
        out.stdout.contains("remote = /srv/app.zip"),
        "{}",
        out.dump()
    );
}

/// SplitMix64, as in tests/fuzz_unpack.rs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random configuration-file-like bytes: noise, lines of random text, `key = value` lines with
/// real and mangled keys and random values, NULs, invalid UTF-8, huge lines.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let lines = 1 + rng.below(12);
    for _ in 0..lines {
        match rng.below(8) {
            0 => out.extend((0..rng.below(200)).map(|_| rng.next() as u8)),
            1 => out.extend((0..rng.below(120)).map(|_| 0x20 + rng.below(95) as u8)),
            2 => out.extend(std::iter::repeat_n(b'=', rng.below(5))),
            3 => out.extend_from_slice(b"\0\0key\0=\0value\0"),
            4 => out.extend_from_slice(b"remote = /srv/\xc3\x28.zip"),
            _ => {
                let (key, _) = KEYS[rng.below(KEYS.len())];
                if key == "remote" {
                    // A valid remote would let the run go on and touch the disk.
                    out.extend_from_slice(b"remote = ftp://nowhere/\n");
                    continue;
                }
                let key = match rng.below(4) {
                    0 => key.replace('-', "_").to_uppercase(),
                    1 => format!("{key}x"),
                    _ => key.to_string(),
                };
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice([&b" = "[..], b"=", b" =", b": "][rng.below(4)]);
                let values: &[&[u8]] = &[
                    b"",
                    b"\"",
                    b"''",
                    b"0",
                    b"-1",
                    b"1e999",
                    b"NaN",
                    b"{id}",
                    b"\xff",
                    b"\xf0\x9f\x92",
                    b"s3://",
                    b"http://",
                    b"@",
                    b"*",
                    b"\x7f",
                    b"9999999999999999999999999",
                ];
                for _ in 0..1 + rng.below(3) {
                    out.extend_from_slice(values[rng.below(values.len())]);
                }
            }
        }
        out.extend_from_slice([&b"\n"[..], b"\r\n", b"\r", b"\n\n"][rng.below(4)]);
    }
    out
}

#[test]
fn garbage_configuration_files_are_refused_with_a_short_message() {
    let env = Env::new();
    let name = env
        .cfg
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let mut rng = Rng(0xbad_c0f);
    let mut files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("random file {i}"), garbage(&mut rng)))
        .collect();
    files.extend([
        (
            "binary noise".into(),
            (0..4096).map(|_| rng.next() as u8).collect(),
        ),
        ("only NULs".into(), vec![0; 1000]),
        (
            "invalid UTF-8 on line 3".into(),
            b"# ok\n\nremote = /srv/\xff.zip\n".to_vec(),
        ),
        ("a huge line".into(), vec![b'x'; 512 << 10]),
        (
            "a huge value".into(),
            [&b"keep = "[..], &vec![b'9'; 512 << 10]].concat(),
        ),
        (
            "a huge key".into(),
            [&vec![b'k'; 512 << 10][..], b" = 1\n"].concat(),
        ),
    ]);
    for (what, bytes) in files {
        write_atomic(&env.cfg, &bytes);
        let out = assert_refused(&env, env.cmd().arg("-f"), &what, &[]);
        let message = out.stderr.trim();
        assert!(
            message.contains(&name) || message.contains("no remote configured"),
            "{what}: the message does not name the file: {message}"
        );
    }
}

#[test]
fn invalid_utf8_is_reported_with_its_line() {
    let env = Env::new();
    write_atomic(&env.cfg, b"# ok\n\nremote = /srv/\xff.zip\n");
    let file = env.cfg.display().to_string();
    assert_refused(
        &env,
        env.cmd().arg("-f"),
        "invalid UTF-8",
        &[&format!("{file}:3"), "UTF-8"],
    );
}

#[test]
fn a_byte_order_mark_and_crlf_line_ends_are_accepted() {
    let env = Env::new();
    write_atomic(
        &env.cfg,
        b"\xef\xbb\xbfremote = /srv/app.zip\r\nkeep = 3\r\n",
    );
    let out = env.run(&["check-config"]);
    out.expect_code(0);
    assert!(out.stdout.contains("keep = 3"), "{}", out.dump());
}

#[test]
fn a_directory_an_endless_device_or_an_unreadable_file_as_config_is_refused() {
    let env = Env::new();
    let dir = env.root.join("a-directory.cfg");
    fs::create_dir(&dir).expect("mkdir");
    for (path, expect) in [
        (dir.clone(), "a-directory.cfg"),
        (PathBuf::from("/dev/zero"), "/dev/zero"),
        (PathBuf::from("/dev/urandom"), "/dev/urandom"),
    ] {
        assert_refused(
            &env,
            env.cmd().config_file(&path).arg("-f"),
            &path.display().to_string(),
            &[expect],
        );
    }
    let big = env.root.join("big.cfg");
    fs::write(&big, vec![b'#'; 3 << 20]).expect("write");
    assert_refused(
        &env,
        env.cmd().config_file(&big).arg("-f"),
        "a 3 MiB file",
        &["big.cfg", "larger than"],
    );
    fs::remove_file(&big).expect("rm");
    // `-c /dev/null` is an empty configuration, not an error.
    let out = env
        .cmd()
        .config_file(Path::new("/dev/null"))
        .args(["-r", "/srv/app.zip", "check-config"])
        .run();
    out.expect_code(0);

    // Unreadable: as root, run the binary as `nobody`.
    let unreadable = env.root.join("unreadable.cfg");
    fs::write(&unreadable, "remote = /srv/app.zip\n").expect("write");
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).expect("chmod");
    let bin = env!("CARGO_BIN_EXE_repo-deploy");
    let mut cmd = if rustix::process::geteuid().is_root() {
        fs::set_permissions(&env.root, fs::Permissions::from_mode(0o755)).expect("chmod root");
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .arg("-c")
        .arg(&unreadable)
        .arg("-d")
        .arg(&env.deploy)
        .arg("-f")
        .env_remove("REPO_DEPLOY_REMOTE")
        .stdin(Stdio::null())
        .output()
        .expect("run as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unreadable.cfg") && stderr.contains("ermission denied"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!env.deploy.exists());
}

#[test]
fn random_files_and_environments_never_panic_the_resolver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("fuzz.cfg");
    let cli = Cli::try_parse_from(["repo-deploy", "-c", cfg.to_str().expect("utf8")]).expect("cli");
    let mut rng = Rng(0xc0f_f1e5);
    let mut outcomes: HashMap<bool, u64> = HashMap::new();
    for _ in 0..3000 {
        fs::write(&cfg, garbage(&mut rng)).expect("write");
        let mut env = HashMap::new();
        for _ in 0..rng.below(4) {
            let (key, values) = MALFORMED[rng.below(MALFORMED.len())];
            let value = if values.is_empty() || rng.below(3) == 0 {
                String::from_utf8_lossy(&garbage(&mut rng)).into_owned()
            } else {
                values[rng.below(values.len())].to_string()
            };
            env.insert(env_name(key), value);
        }
        let resolved = std::panic::catch_unwind(|| Settings::resolve_in(&cli, &env, dir.path()));
        let resolved = resolved.unwrap_or_else(|_| {
            let text = fs::read(&cfg).expect("read");
            panic!(
                "resolve_in panicked on {:?} with {env:?}",
                String::from_utf8_lossy(&text)
            )
        });
        if let Err(e) = &resolved {
            let message = e.to_string();
            assert!(!message.is_empty());
            assert!(
                message.len() <= MAX_MESSAGE,
                "a {} byte message",
                message.len()
            );
        }
        *outcomes.entry(resolved.is_ok()).or_default() += 1;
    }
    assert!(outcomes.get(&false).copied().unwrap_or(0) > 0);
}
