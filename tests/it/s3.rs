//! S3 remotes against a real S3-compatible server on loopback: moto in server mode, with
//! SigV4 and IAM checks on (`INITIAL_NO_AUTH_ACTION_COUNT=3`: the first three requests create
//! the admin user, its access key and its policy; every later request is authenticated, so a
//! wrong secret is refused by the server).
//!
//! One moto serves the whole file: started lazily on a free port by the first test that needs
//! it, on a thread that lives as long as the test process, with `PR_SET_PDEATHSIG` so the kernel
//! kills it when the process ends. Users, keys, buckets and objects are made by
//! `tests/it/s3_support/moto_admin.py` (boto3), one Python process for the whole file. Every test
//! uses its own bucket.
//!
//! Every run of the binary gets an environment without `REPO_DEPLOY_*` and `AWS_*`, `HOME` in
//! the test's temporary directory, `AWS_EC2_METADATA_DISABLED=true` (except the IMDS test) and a
//! timeout; every run's output and every hook's environment dump are searched for every secret
//! the tests know. Nothing sleeps to win a race: waits poll a condition until a deadline.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use repo_deploy::cli::Cli;
use repo_deploy::config::Settings;
use repo_deploy::remote::Remote;
use repo_deploy::source::s3::S3Source;
use serde_json::{Value, json};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

/// How long one run of the binary may take before it is killed and the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long moto may take to accept connections.
const MOTO_START: Duration = Duration::from_secs(30);

/// Wrong secrets the tests hand to the sources that must lose (or fail). They are secrets too:
/// none may ever be printed.
const WRONG_CONFIG_SECRET: &str = "WrongSecretFromTheConfigFile/0123456789abcdef";
const WRONG_FILE_SECRET: &str = "WrongSecretFromTheAccountKeyFile/0123456789abc";
const WRONG_ENV_SECRET: &str = "WrongSecretFromTheEnvironment/0123456789abcdef";
const WRONG_IMDS_SECRET: &str = "WrongSecretFromTheInstanceRole/0123456789abcde";

// ---------------------------------------------------------------------------------------------
// Secrets: every one the tests know, checked in every output

fn known_secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| {
        Mutex::new(
            [
                WRONG_CONFIG_SECRET,
                WRONG_FILE_SECRET,
                WRONG_ENV_SECRET,
                WRONG_IMDS_SECRET,
            ]
            .map(String::from)
            .to_vec(),
        )
    })
}

fn remember_secret(secret: &str) {
    known_secrets()
        .lock()
        .expect("secrets")
        .push(secret.to_string());
}

/// Fail if `text` holds any secret the tests know.
#[track_caller]
fn assert_no_secret(text: &str, what: &str) {
    for secret in known_secrets().lock().expect("secrets").iter() {
        assert!(
            !text.contains(secret.as_str()),
            "a secret key appears in {what}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// moto

/// An IAM access key pair issued by moto.
#[derive(Clone, Debug)]
struct Keys {
    access: String,
    secret: String,
    /// The session token of temporary credentials (empty for an IAM user's keys).
    token: String,
}

/// The moto server of this test process.
struct Moto {
    port: u16,
    /// moto's stdout and stderr (one line per request, with the status): an unnamed
    /// temporary file, gone with the process.
    log: fs::File,
    admin: Mutex<Admin>,
    /// The admin user's keys (allowed everything).
    keys: Keys,
}

/// The Python helper that talks to moto with boto3, one JSON line each way.
struct Admin {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

/// A port nothing listens on right now (bound and released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Remove every `AWS_*` and `REPO_DEPLOY_*` variable the test process has from `cmd`'s
/// environment.
fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k_bytes = k.as_bytes();
        if k_bytes.starts_with(b"AWS_") || k_bytes.starts_with(b"REPO_DEPLOY_") {
            cmd.env_remove(&k);
        }
    }
}

/// Start `moto_server` on `port` from a thread that lives until moto exits: the kernel sends
/// moto SIGKILL when that thread's process ends (`PR_SET_PDEATHSIG` follows the thread that
/// forked, so it must not be a test's thread). Returns a flag set when moto has exited.
fn spawn_moto(port: u16, log: &fs::File) -> Arc<AtomicBool> {
    let exited = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let flag = Arc::clone(&exited);
    let file = log.try_clone().expect("dup moto's log");
    thread::Builder::new()
        .name(format!("moto-server-{port}"))
        .spawn(move || {
            let mut cmd = Command::new("moto_server");
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("dup moto's log"))
                .stderr(file);
            scrub_env(&mut cmd);
            // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match cmd.spawn() {
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
                Ok(mut child) => {
                    let _ = tx.send(Ok(()));
                    let _ = child.wait();
                }
            }
            flag.store(true, Ordering::SeqCst);
        })
        .expect("spawn the moto thread");
    match rx.recv().expect("moto thread") {
        Ok(()) => exited,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "moto_server is not on PATH: the S3 tests need moto's server mode; install it with \
             `python3 -m pip install 'moto[server]>=5,<6'` (bash .ci/run does)"
        ),
        Err(e) => panic!("cannot start moto_server: {e}"),
    }
}

impl Moto {
    fn start() -> Moto {
        let mut last_log = String::new();
        for _ in 0..3 {
            let log = tempfile::tempfile().expect("a temporary file for moto's log");
            let port = free_port();
            let exited = spawn_moto(port, &log);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let up = eventually(MOTO_START, || {
                exited.load(Ordering::SeqCst)
                    || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if up && !exited.load(Ordering::SeqCst) {
                let mut admin = Admin::start(&format!("http://127.0.0.1:{port}"));
                let answer = admin.call(&json!({"op": "init"}));
                let keys = keys_of(&answer);
                remember_secret(&keys.secret);
                return Moto {
                    port,
                    log,
                    admin: Mutex::new(admin),
                    keys,
                };
            }
            // A port taken between the probe and moto's bind, or a broken install: try again,
            // then show moto's own words. A moto still starting after the deadline is killed by
            // PR_SET_PDEATHSIG at exit.
            last_log = read_all(&log);
        }
        panic!(
            "moto_server did not accept connections within {MOTO_START:?} (3 attempts); its output:\n{last_log}"
        );
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn call(&self, cmd: &Value) -> Value {
        self.admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .call(cmd)
    }

    /// A new bucket with a name no other test uses.
    fn bucket(&self, label: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("rd-{label}-{}", N.fetch_add(1, Ordering::Relaxed));
        self.call(&json!({"op": "bucket", "name": name}));
        name
    }

    /// Upload `bytes` as `bucket/key`; returns the ETag without quotes.
    fn put(&self, bucket: &str, key: &str, bytes: &[u8]) -> String {
        let answer = self
            .call(&json!({"op": "put", "bucket": bucket, "key": key, "hex": hex::encode(bytes)}));
        let etag = answer["etag"]
            .as_str()
            .unwrap_or_else(|| panic!("no etag in {answer}"));
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "S3 ETags are quoted: {etag}"
        );
        etag.trim_matches('"').to_string()
    }

    /// A new IAM user with keys and no policy at all.
    fn user_without_policy(&self, name: &str) -> Keys {
        let keys = keys_of(&self.call(&json!({"op": "user", "name": name})));
        remember_secret(&keys.secret);
        keys
    }

    /// Temporary credentials (with a session token) of a new role allowed `s3:GetObject`, as
    /// an EC2 instance role gets them.
    fn role_credentials(&self, name: &str) -> Keys {
        let keys = keys_of(&self.call(&json!({"op": "role", "name": name})));
        assert!(!keys.token.is_empty(), "AssumeRole gave no session token");
        remember_secret(&keys.secret);
        remember_secret(&keys.token);
        keys
    }

    /// The statuses moto logged for GET requests of `bucket/key`, in order.
    fn get_statuses(&self, bucket: &str, key: &str) -> Vec<u16> {
        let needle = format!("\"GET /{bucket}/{key}");
        read_all(&self.log)
            .lines()
            .filter_map(|line| {
                let at = line.find(&needle)?;
                let rest = &line[at + needle.len()..];
                // The key ends at the query or at the protocol.
                if !(rest.starts_with('?') || rest.starts_with(' ')) {
                    return None;
                }
                let (_, after) = rest.split_once("\" ")?;
                after.split_whitespace().next()?.parse().ok()
            })
            .collect()
    }

    /// Wait until moto logged `n` GETs of `bucket/key` (it logs after answering), and return
    /// their statuses.
    #[track_caller]
    fn wait_gets(&self, bucket: &str, key: &str, n: usize) -> Vec<u16> {
        let mut seen = Vec::new();
        let ok = eventually(Duration::from_secs(10), || {
            seen = self.get_statuses(bucket, key);
            seen.len() >= n
        });
        assert!(
            ok,
            "moto logged {} GETs of {bucket}/{key}, expected {n}: {seen:?}",
            seen.len()
        );
        seen
    }
}

/// The whole content of a file others append to.
fn read_all(file: &fs::File) -> String {
    use std::os::unix::fs::FileExt;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match file.read_at(&mut buf, bytes.len() as u64) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read moto's log: {e}"),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn keys_of(answer: &Value) -> Keys {
    let field = |k: &str| {
        answer[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k} in {answer}"))
            .to_string()
    };
    Keys {
        access: field("access_key"),
        secret: field("secret_key"),
        token: answer["token"].as_str().unwrap_or_default().to_string(),
    }
}

impl Admin {
    fn start(endpoint: &str) -> Admin {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/s3_support/moto_admin.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg(endpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        scrub_env(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 {}: {e} (the S3 tests need python3 with boto3, from moto[server])", script.display()));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Admin {
            _child: child,
            stdin,
            stdout,
        }
    }

    /// Send one command, read one answer; an error answer fails the test.
    fn call(&mut self, cmd: &Value) -> Value {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .expect("write to moto_admin.py");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from moto_admin.py");
        assert!(
            !line.is_empty(),
            "moto_admin.py exited without answering {cmd} (see its stderr above)"
        );
        let answer: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("moto_admin.py answered {line:?}: {e}"));
        if let Some(err) = answer.get("error") {
            panic!("moto_admin.py failed {cmd}: {err}");
        }
        answer
    }
}

// ---------------------------------------------------------------------------------------------
// A test's world and runs of the binary

/// One test's temporary directory: configuration file, deploy directory, hook directories, a
/// home directory and a scratch directory for what hooks write.
struct World {
    _tmp: TempDir,
    root: PathBuf,
    deploy: PathBuf,
    pre: PathBuf,
    post: PathBuf,
    cfg: PathBuf,
    home: PathBuf,
    out: PathBuf,
}

/// What a finished run printed and returned.
struct Output {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    #[track_caller]
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "unexpected exit status of {}\n{}",
            self.what,
            self.dump()
        );
        self
    }

    fn dump(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl World {
    fn new() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("repo-deploy-s3-")
            .tempdir()
            .expect("temp dir");
        let root = fs::canonicalize(tmp.path()).expect("canonicalize");
        let w = World {
            deploy: root.join("deploy"),
            pre: root.join("pre-update.d"),
            post: root.join("post-update.d"),
            cfg: root.join("repo-deploy.cfg"),
            home: root.join("home"),
            out: root.join("out"),
            root,
            _tmp: tmp,
        };
        for d in [&w.pre, &w.post, &w.home, &w.out] {
            fs::create_dir(d).expect("create dir");
        }
        w.recording_hooks();
        w
    }

    /// A configuration file: the moto endpoint, then `extra` lines.
    fn config(&self, extra: &str) {
        let text = format!("s3-endpoint = {}\n{extra}", moto().endpoint());
        fs::write(&self.cfg, text).expect("write the config");
    }

    /// A configuration file with these keys.
    fn config_keys(&self, access: &str, secret: &str) {
        self.config(&format!(
            "aws-access-key = {access}\naws-secret-key = {secret}\n"
        ));
    }

    /// `~/.amazon/account-key` in the test's home.
    fn account_key(&self, access: &str, secret: &str) {
        let dir = self.home.join(".amazon");
        fs::create_dir_all(&dir).expect("mkdir .amazon");
        fs::write(
            dir.join("account-key"),
            format!("accessKey={access}\nsecretKey={secret}\n"),
        )
        .expect("write account-key");
    }

    /// Pre and post hooks that append `<phase> <DEPLOY_VERSION> <DEPLOY_PREVIOUS_VERSION>` to
    /// out/hooks.log and dump their environment to out/env-<phase>.
    fn recording_hooks(&self) {
        let out = self.out.display();
        let body = format!(
            "#!/bin/sh\necho \"$DEPLOY_PHASE $DEPLOY_VERSION $DEPLOY_PREVIOUS_VERSION\" >> {out}/hooks.log\nenv -0 > {out}/env-$DEPLOY_PHASE\n"
        );
        for dir in [&self.pre, &self.post] {
            let path = dir.join("50-record");
            let tmp = dir.join(".50-record.tmp");
            fs::write(&tmp, &body).expect("write hook");
            fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod hook");
            fs::rename(&tmp, &path).expect("install hook");
        }
    }

    /// The lines of out/hooks.log, then clear it.
    fn take_hook_log(&self) -> Vec<String> {
        let path = self.out.join("hooks.log");
        let text = fs::read_to_string(&path).unwrap_or_default();
        let _ = fs::remove_file(&path);
        text.lines().map(str::to_string).collect()
    }

    /// The environment a hook of `phase` saw (`env -0`).
    fn hook_env(&self, phase: &str) -> HashMap<String, String> {
        let bytes = fs::read(self.out.join(format!("env-{phase}"))).expect("hook environment dump");
        bytes
            .split(|b| *b == 0)
            .filter_map(|kv| {
                String::from_utf8_lossy(kv)
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// `-f -r remote` with the test's flags, no IMDS, and these extra variables.
    fn fetch(&self, remote: &str, vars: &[(&str, &str)]) -> Output {
        self.run(&["-v", "-f", "-r", remote], vars, false)
    }

    /// Run the binary: `-c cfg -d deploy --pre-hooks … --post-hooks …` then `args`, in an
    /// environment without `AWS_*`/`REPO_DEPLOY_*`, with HOME in the test's directory and (unless
    /// `imds`) the instance metadata service disabled; then check that no secret was printed or
    /// reached a hook.
    fn run(&self, args: &[&str], vars: &[(&str, &str)], imds: bool) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_repo-deploy"));
        cmd.arg("-c").arg(&self.cfg).arg("-d").arg(&self.deploy);
        cmd.arg("--pre-hooks")
            .arg(&self.pre)
            .arg("--post-hooks")
            .arg(&self.post);
        cmd.args(args);
        scrub_env(&mut cmd);
        cmd.env("HOME", &self.home);
        if !imds {
            cmd.env("AWS_EC2_METADATA_DISABLED", "true");
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("repo-deploy {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = drain(child.stdout.take().expect("stdout"));
        let stderr = drain(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {RUN_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(5));
        };
        let grace = Duration::from_secs(10);
        let stdout = stdout
            .recv_timeout(grace)
            .unwrap_or_else(|_| panic!("{what}: stdout still open after exit"));
        let stderr = stderr
            .recv_timeout(grace)
            .unwrap_or_else(|_| panic!("{what}: stderr still open after exit"));
        let out = Output {
            what,
            status,
            stdout,
            stderr,
        };
        assert_no_secret(&out.stdout, &format!("the stdout of {}", out.what));
        assert_no_secret(&out.stderr, &format!("the stderr of {}", out.what));
        for entry in fs::read_dir(&self.out).expect("read out/") {
            let path = entry.expect("entry").path();
            let text =
                String::from_utf8_lossy(&fs::read(&path).expect("read hook output")).into_owned();
            assert_no_secret(&text, &format!("{} (written by a hook)", path.display()));
        }
        out
    }

    fn current(&self) -> PathBuf {
        self.deploy.join("current")
    }

    /// The release `current` resolves to.
    fn live(&self) -> PathBuf {
        fs::canonicalize(self.current())
            .unwrap_or_else(|e| panic!("{}: {e}", self.current().display()))
    }

    /// The visible releases, sorted.
    fn releases(&self) -> Vec<PathBuf> {
        list(&self.deploy.join("releases"))
            .into_iter()
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b"."))
            })
            .collect()
    }

    /// No hidden entry in releases/ or beside `current`, no download in the cache.
    #[track_caller]
    fn assert_clean(&self) {
        let hidden: Vec<_> = list(&self.deploy.join("releases"))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b"."))
            })
            .collect();
        assert!(
            hidden.is_empty(),
            "hidden entries left in releases/: {hidden:?}"
        );
        let temps: Vec<_> = list(&self.deploy)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b".") && n.as_bytes() != b".lock")
            })
            .collect();
        assert!(
            temps.is_empty(),
            "temporary entries left in the deploy directory: {temps:?}"
        );
        let downloads: Vec<_> = list(&self.deploy.join("cache"))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b"download-"))
            })
            .collect();
        assert!(
            downloads.is_empty(),
            "downloads left in the cache: {downloads:?}"
        );
    }

    /// What `current` is now: its link target and the tree it shows.
    fn snapshot(&self) -> Snapshot {
        (
            fs::read_link(self.current()).expect("current is a symlink"),
            files_of(&self.live()),
        )
    }
}

/// What `current` shows: its link target and the files of the release.
type Snapshot = (PathBuf, BTreeMap<String, Vec<u8>>);

/// Read a pipe to its end on a thread; the text arrives on the channel.
fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// The entries of `dir`, sorted; empty when it does not exist.
fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.map(|e| e.expect("read_dir entry").path()).collect();
    v.sort();
    v
}

/// The regular files under `dir` with their contents, by relative path.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in list(&d) {
            let meta = fs::symlink_metadata(&p).expect("lstat");
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(&p).expect("read"));
            }
        }
    }
    out
}

/// A ZIP of regular files (stored, so its size is the content's).
fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    for (name, data) in files {
        w.start_file(*name, opts).expect("start_file");
        w.write_all(data).expect("write entry");
    }
    w.finish().expect("finish zip").into_inner()
}

/// The files a ZIP of `files` unpacks to.
fn tree_of(files: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|(n, d)| ((*n).to_string(), d.to_vec()))
        .collect()
}

/// A small application: an index page and a version file.
fn app(version: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("index.html", format!("<h1>{version}</h1>\n").into_bytes()),
        ("conf/version.txt", format!("{version}\n").into_bytes()),
    ]
}

fn borrow<'a>(files: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    files.iter().map(|(n, d)| (*n, d.as_slice())).collect()
}

/// Publish `app(version)` as `bucket/key`; returns (ETag, the tree it unpacks to).
fn publish(bucket: &str, key: &str, version: &str) -> (String, BTreeMap<String, Vec<u8>>) {
    let files = app(version);
    let etag = moto().put(bucket, key, &zip_of(&borrow(&files)));
    (etag, tree_of(&borrow(&files)))
}

/// Pseudo-random, incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A byte-counting relay and an IMDSv2 emulator, both on 127.0.0.1

/// Forwards TCP connections to moto and counts the bytes moto sends back.
struct Relay {
    port: u16,
    to_client: Arc<AtomicU64>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("addr").port();
        let to_client = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&to_client);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let counter = Arc::clone(&counter);
                thread::spawn(move || pipe(client, server, None));
                thread::spawn(move || pipe(s2, c2, Some(counter)));
            }
        });
        Relay { port, to_client }
    }

    fn bytes_to_client(&self) -> u64 {
        self.to_client.load(Ordering::SeqCst)
    }
}

/// Copy `from` to `to` until either side closes, counting into `counter`.
fn pipe(mut from: TcpStream, mut to: TcpStream, counter: Option<Arc<AtomicU64>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(c) = &counter {
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

const IMDS_TOKEN: &str = "emulated-imds-token-0123456789";
const IMDS_ROLE: &str = "repo-deploy-test-role";

/// One request the emulator saw.
#[derive(Debug, Clone)]
struct ImdsRequest {
    method: String,
    path: String,
    status: u16,
}

/// An IMDSv2 emulator: token PUT, role listing and credentials document, each GET only with
/// the token. Serves `keys`, replaceable while it runs.
struct Imds {
    port: u16,
    seen: Arc<Mutex<Vec<ImdsRequest>>>,
    keys: Arc<Mutex<Keys>>,
}

impl Imds {
    fn start(keys: Keys) -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the IMDS emulator");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(Mutex::new(keys));
        let (seen2, keys2) = (Arc::clone(&seen), Arc::clone(&keys));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                let (seen, keys) = (Arc::clone(&seen2), Arc::clone(&keys2));
                thread::spawn(move || imds_serve(stream, &seen, &keys));
            }
        });
        Imds { port, seen, keys }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<ImdsRequest> {
        self.seen.lock().expect("seen").clone()
    }
}

/// Answer the requests of one connection (keep-alive honoured).
fn imds_serve(stream: TcpStream, seen: &Mutex<Vec<ImdsRequest>>, keys: &Mutex<Keys>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let token_ok = headers
            .get("x-aws-ec2-metadata-token")
            .is_some_and(|t| t == IMDS_TOKEN);
        let creds_path = format!("/latest/meta-data/iam/security-credentials/{IMDS_ROLE}");
        let (status, extra, text) = match (method.as_str(), path.as_str()) {
            ("PUT", "/latest/api/token") => {
                match headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(ttl) if ttl.parse::<u32>().is_ok() => (
                        200,
                        format!("x-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"),
                        IMDS_TOKEN.to_string(),
                    ),
                    _ => (
                        400,
                        String::new(),
                        "missing or bad x-aws-ec2-metadata-token-ttl-seconds".into(),
                    ),
                }
            }
            ("GET", _) if !token_ok => (401, String::new(), "IMDSv2 token required".into()),
            ("GET", "/latest/meta-data/iam/security-credentials/") => {
                (200, String::new(), IMDS_ROLE.to_string())
            }
            ("GET", p) if p == creds_path => {
                let keys = keys.lock().expect("keys").clone();
                let now = chrono::Utc::now();
                let doc = json!({
                    "Code": "Success",
                    "LastUpdated": now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": keys.access,
                    "SecretAccessKey": keys.secret,
                    "Token": keys.token,
                    "Expiration": (now + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                });
                (200, String::new(), doc.to_string())
            }
            _ => (404, String::new(), "not found".into()),
        };
        seen.lock().expect("seen").push(ImdsRequest {
            method,
            path,
            status,
        });
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{text}",
            text.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Send one raw HTTP/1.1 request to 127.0.0.1:`port` and read the status of the answer.
fn raw_status(port: u16, request: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("status line");
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
}

// ---------------------------------------------------------------------------------------------
// Deploy, unchanged, change

#[test]
fn deploys_the_object_with_config_file_credentials_and_the_etag_as_version() {
    let m = moto();
    let w = World::new();
    let bucket = m.bucket("deploy");
    let (etag, tree) = publish(&bucket, "apps/web/app.zip", "v1");
    w.config_keys(&m.keys.access, &m.keys.secret);

    w.fetch(&format!("s3://{bucket}/apps/web/app.zip"), &[])
        .expect_code(0);

    assert_eq!(
        files_of(&w.live()),
        tree,
        "the live release holds the ZIP's files"
    );
    assert_eq!(w.releases(), vec![w.live()]);
    assert!(!etag.is_empty() && !etag.contains('"'));
    assert_eq!(
        w.take_hook_log(),
        vec![format!("pre {etag} "), format!("post {etag} ")],
        "DEPLOY_VERSION is the ETag without quotes"
    );
    let env = w.hook_env("post");
    assert_eq!(env.get("DEPLOY_VERSION"), Some(&etag));
    assert_eq!(
        env.get("DEPLOY_REMOTE").map(String::as_str),
        Some(format!("s3://{bucket}/apps/web/app.zip").as_str())
    );
    assert_eq!(
        m.wait_gets(&bucket, "apps/web/app.zip", 1),
        vec![200],
        "one GetObject"
    );
    w.assert_clean();
}

#[test]
fn unchanged_object_costs_one_304_without_body_and_runs_no_hook() {
    let m = moto();
    let w = World::new();
    let bucket = m.bucket("unchanged");
    // Big and incompressible, so a body would show in the byte count.
    let big = noise(256 * 1024, 7);
    let files: [(&str, &[u8]); 2] = [("index.html", b"<h1>big</h1>\n"), ("data.bin", &big)];
    let bytes = zip_of(&files);
    let etag = m.put(&bucket, "app.zip", &bytes);
    // Through a relay that counts what moto sends.
    let relay = Relay::start(m.port);
    fs::write(
        &w.cfg,
        format!(
            "s3-endpoint = http://127.0.0.1:{}\naws-access-key = {}\naws-secret-key = {}\n",
            relay.port, m.keys.access, m.keys.secret
        ),
    )
    .expect("write the config");
    let remote = format!("s3://{bucket}/app.zip");

    w.fetch(&remote, &[]).expect_code(0);
    let first_bytes = relay.bytes_to_client();
    assert!(
        first_bytes >= bytes.len() as u64,
        "the first run received the object: {first_bytes} bytes of {}",
        bytes.len()
    );
    assert_eq!(
        w.take_hook_log(),
        vec![format!("pre {etag} "), format!("post {etag} ")]
    );
    let live = w.live();
    assert_eq!(files_of(&live), tree_of(&files));

    let out = w.fetch(&remote, &[]);
    out.expect_code(0);

    assert_eq!(
        m.wait_gets(&bucket, "app.zip", 2),
        vec![200, 304],
        "the second GetObject is answered 304 Not Modified"
    );
    let second_bytes = relay.bytes_to_client() - first_bytes;
    assert!(
        second_bytes < 4096,
        "the second run received {second_bytes} bytes: a body was sent"
    );
    assert!(
        !out.stderr.contains("downloaded"),
        "nothing downloaded:\n{}",
        out.stderr
    );
    assert_eq!(
        w.take_hook_log(),
        Vec::<String>::new(),
        "no hook runs when nothing changed"
    );
    assert_eq!(w.live(), live);
    assert_eq!(w.releases(), vec![live]);
    w.assert_clean();
}

#[test]
fn changed_object_goes_live_as_a_new_release() {
    let m = moto();
    let w = World::new();
    let bucket = m.bucket("change");
    let (etag1, tree1) = publish(&bucket, "app.zip", "v1");
    w.config_keys(&m.keys.access, &m.keys.secret);
    let remote = format!("s3://{bucket}/app.zip");
    w.fetch(&remote, &[]).expect_code(0);
    let first = w.live();
    assert_eq!(files_of(&first), tree1);
    w.take_hook_log();

    let (etag2, tree2) = publish(&bucket, "app.zip", "v2");
    assert_ne!(etag1, etag2);
    w.fetch(&remote, &[]).expect_code(0);

    let second = w.live();
    assert_ne!(second, first, "a new release directory");
    assert_eq!(files_of(&second), tree2);
    assert_eq!(
        files_of(&first),
        tree1,
        "the previous release stays on disk, untouched"
    );
    assert_eq!(
        w.take_hook_log(),
        vec![
            format!("pre {etag2} {etag1}"),
            format!("post {etag2} {etag1}")
        ]
    );
    let mut both = vec![first, second];
    both.sort();
    assert_eq!(w.releases(), both);
    let statuses = m.wait_gets(&bucket, "app.zip", 2);
    // 206: with a live release the GetObject asks for the ZIP's tail (incremental updates,
    // src/source/ranges.rs), which for an object this small is the whole of it.
    assert_eq!(
        statuses,
        vec![200, 206],
        "the changed object is fetched whole"
    );
    w.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// Credentials

#[test]
fn credentials_from_the_account_key_file_in_home() {
    let m = moto();
    let w = World::new();
    let bucket = m.bucket("acctkey");
    let (etag, tree) = publish(&bucket, "app.zip", "v1");
    w.config("");
    w.account_key(&m.keys.access, &m.keys.secret);

    w.fetch(&format!("s3://{bucket}/app.zip"), &[])
        .expect_code(0);

    assert_eq!(files_of(&w.live()), tree);
    assert_eq!(w.hook_env("post").get("DEPLOY_VERSION"), Some(&etag));
    w.assert_clean();
}

#[test]
fn credentials_from_environment_variables() {
    let m = moto();
    let w = World::new();
    let bucket = m.bucket("envkeys");
    let (_, tree) = publish(&bucket, "app.zip", "v1");
    w.config("");

    w.fetch(
        &format!("s3://{bucket}/app.zip"),
        &[
            ("AWS_ACCESS_KEY_ID", &m.keys.access),
            ("AWS_SECRET_ACCESS_KEY", &m.keys.secret),
        ],
    )
    .expect_code(0);

    assert_eq!(files_of(&w.live()), tree);
    for phase in ["pre", "post"] {
        let env = w.hook_env(phase);
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            assert!(!env.contains_key(var), "the {phase} hook saw {var}");
        }
    }
    w.assert_clean();
}

#[test]
fn credentials_from_the_instance_role_through_imdsv2() {
    let m = moto();
    let w = World::new();
    let bucket = m.bucket("imds");
    let (etag, tree) = publish(&bucket, "app.zip", "v1");
    w.config("");
    // Temporary credentials with a session token, as instance roles have. (An IAM user's keys
    // with `"Token": ""` do not work: the SDK then sends an empty X-Amz-Security-Token, which
    // the store refuses as InvalidToken.)
    let role = m.role_credentials("repo-deploy-instance-role");
    let imds = Imds::start(role.clone());
    // The emulator insists on IMDSv2, so the agent's success below means it spoke IMDSv2.
    let role_list = "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n";
    assert_eq!(
        raw_status(imds.port, &format!("{role_list}\r\n")),
        401,
        "no token"
    );
    let put = "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n";
    assert_eq!(raw_status(imds.port, &format!("{put}\r\n")), 400, "no TTL");
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n";
    assert_eq!(raw_status(imds.port, &format!("{put}{ttl}\r\n")), 200);
    let token = format!("X-aws-ec2-metadata-token: {IMDS_TOKEN}\r\n");
    assert_eq!(
        raw_status(imds.port, &format!("{role_list}{token}\r\n")),
        200
    );
    imds.seen.lock().expect("seen").clear();
    let vars = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint())];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let remote = format!("s3://{bucket}/app.zip");

    w.run(&["-v", "-f", "-r", &remote], &vars, true)
        .expect_code(0);

    assert_eq!(files_of(&w.live()), tree);
    assert_eq!(w.hook_env("post").get("DEPLOY_VERSION"), Some(&etag));
    let seen = imds.seen();
    let creds = format!("/latest/meta-data/iam/security-credentials/{IMDS_ROLE}");
    let at = |method: &str, path: &str| {
        seen.iter()
            .position(|r| r.method == method && r.path == path && r.status == 200)
    };
    let token = at("PUT", "/latest/api/token").unwrap_or_else(|| panic!("no token PUT: {seen:?}"));
    let listing = at("GET", "/latest/meta-data/iam/security-credentials/")
        .unwrap_or_else(|| panic!("no role listing: {seen:?}"));
    let document = at("GET", &creds).unwrap_or_else(|| panic!("no credentials GET: {seen:?}"));
    assert!(
        token < listing && listing < document,
        "token PUT, then role listing, then credentials: {seen:?}"
    );
    assert!(
        seen.iter().all(|r| r.status == 200),
        "every IMDS request was valid (IMDSv2, with the token): {seen:?}"
    );
    w.assert_clean();

    // A role whose credentials the store refuses: exit 1, naming the instance role as the source.
    *imds.keys.lock().expect("keys") = Keys {
        secret: WRONG_IMDS_SECRET.into(),
        ..role
    };
    publish(&bucket, "app.zip", "v2");
    let before = w.snapshot();
    let out = w.run(&["-f", "-r", &remote], &vars, true);
    out.expect_code(1);
    assert!(
        out.stderr.contains("instance role") || out.stderr.contains("IMDS"),
        "names the source:\n{}",
        out.stderr
    );
    assert_eq!(w.snapshot(), before);
    w.assert_clean();
}

#[test]
fn config_keys_beat_the_account_key_file_and_the_environment() {
    let m = moto();
    let w = World::new();
    let bucket = m.bucket("prec-config");
    let (_, tree) = publish(&bucket, "app.zip", "v1");
    w.config_keys(&m.keys.access, &m.keys.secret);
    w.account_key(&m.keys.access, WRONG_FILE_SECRET);

    w.fetch(
        &format!("s3://{bucket}/app.zip"),
        &[
            ("AWS_ACCESS_KEY_ID", &m.keys.access),
            ("AWS_SECRET_ACCESS_KEY", WRONG_ENV_SECRET),
        ],
    )
    .expect_code(0);

    assert_eq!(files_of(&w.live()), tree);
    w.assert_clean();
}

#[test]
fn account_key_file_beats_the_environment_and_first_found_wins() {
    let m = moto();
    let w = World::new();
    let bucket = m.bucket("prec-file");
    let (_, tree) = publish(&bucket, "app.zip", "v1");
    let remote = format!("s3://{bucket}/app.zip");
    w.config("");

    // The file's right keys win over the environment's wrong ones.
    w.account_key(&m.keys.access, &m.keys.secret);
    w.fetch(
        &remote,
        &[
            ("AWS_ACCESS_KEY_ID", &m.keys.access),
            ("AWS_SECRET_ACCESS_KEY", WRONG_ENV_SECRET),
        ],
    )
    .expect_code(0);
    assert_eq!(files_of(&w.live()), tree);

    // And the file's wrong keys are used even though the environment's are right: the first
    // source found wins, with no fallback to the next.
    w.account_key(&m.keys.access, WRONG_FILE_SECRET);
    publish(&bucket, "app.zip", "v2");
    let before = w.snapshot();
    let out = w.fetch(
        &remote,
        &[
            ("AWS_ACCESS_KEY_ID", &m.keys.access),
            ("AWS_SECRET_ACCESS_KEY", &m.keys.secret),
        ],
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains("~/.amazon/account-key"),
        "names the source:\n{}",
        out.stderr
    );
    assert_eq!(w.snapshot(), before);
    w.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// Failures: exit 1, a message that says what is wrong, `current` untouched, nothing left over

/// Deploy v1 of a fresh bucket with the admin keys; returns (bucket, remote, snapshot).
fn deployed(w: &World, label: &str) -> (String, String, Snapshot) {
    let m = moto();
    let bucket = m.bucket(label);
    publish(&bucket, "app.zip", "v1");
    w.config_keys(&m.keys.access, &m.keys.secret);
    let remote = format!("s3://{bucket}/app.zip");
    w.fetch(&remote, &[]).expect_code(0);
    w.take_hook_log();
    (bucket, remote, w.snapshot())
}

/// A failed run: exit 1, `current` as `before`, no hook ran, nothing left behind.
#[track_caller]
fn assert_failed_cleanly(w: &World, out: &Output, before: &Snapshot) {
    out.expect_code(1);
    assert_eq!(&w.snapshot(), before, "current is unchanged");
    assert_eq!(w.releases().len(), 1, "no new release");
    assert_eq!(w.take_hook_log(), Vec::<String>::new(), "no hook ran");
    w.assert_clean();
}

#[test]
fn wrong_secret_is_refused_naming_bucket_key_and_credential_source() {
    let m = moto();
    let w = World::new();
    let (bucket, remote, before) = deployed(&w, "wrongsecret");
    publish(&bucket, "app.zip", "v2");
    w.config_keys(&m.keys.access, WRONG_CONFIG_SECRET);

    let out = w.fetch(&remote, &[]);

    assert_failed_cleanly(&w, &out, &before);
    assert!(
        out.stderr.contains(&bucket),
        "names the bucket:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("app.zip"),
        "names the key:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("configuration"),
        "names the credential source:\n{}",
        out.stderr
    );
    // The server, not the client, refused: moto logged a 403 for it.
    assert_eq!(m.wait_gets(&bucket, "app.zip", 2)[1], 403);
}

#[test]
fn access_denied_names_the_permission_to_grant() {
    let m = moto();
    let w = World::new();
    let (bucket, remote, before) = deployed(&w, "denied");
    publish(&bucket, "app.zip", "v2");
    let nobody = m.user_without_policy("nobody");
    w.config_keys(&nobody.access, &nobody.secret);

    let out = w.fetch(&remote, &[]);

    assert_failed_cleanly(&w, &out, &before);
    assert!(out.stderr.contains("access denied"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("s3:GetObject on arn:aws:s3:::{bucket}/app.zip")),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_key_fails_with_no_such_key() {
    let w = World::new();
    let (bucket, _, before) = deployed(&w, "nokey");

    let out = w.fetch(&format!("s3://{bucket}/missing/app.zip"), &[]);

    assert_failed_cleanly(&w, &out, &before);
    assert!(out.stderr.contains("no such key"), "{}", out.stderr);
    assert!(
        out.stderr.contains("missing/app.zip") && out.stderr.contains(&bucket),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_bucket_fails() {
    let w = World::new();
    let (_, _, before) = deployed(&w, "nobucket");

    let out = w.fetch("s3://rd-no-such-bucket/app.zip", &[]);

    assert_failed_cleanly(&w, &out, &before);
    assert!(
        out.stderr.contains("no such bucket rd-no-such-bucket"),
        "{}",
        out.stderr
    );
}

#[test]
fn unreachable_endpoint_fails_with_cannot_reach() {
    let m = moto();
    let w = World::new();
    let (_, remote, before) = deployed(&w, "unreachable");
    let closed = free_port();
    fs::write(
        &w.cfg,
        format!(
            "s3-endpoint = http://127.0.0.1:{closed}\naws-access-key = {}\naws-secret-key = {}\n",
            m.keys.access, m.keys.secret
        ),
    )
    .expect("write the config");

    let out = w.fetch(&remote, &[]);

    assert_failed_cleanly(&w, &out, &before);
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{closed}")),
        "names the endpoint:\n{}",
        out.stderr
    );
}

#[test]
fn no_credentials_anywhere_says_so() {
    let w = World::new();
    let (_, remote, before) = deployed(&w, "nocreds");
    // No keys in the configuration, no ~/.amazon/account-key, no AWS_* variables, no ~/.aws,
    // and the instance metadata service disabled.
    w.config("");

    let out = w.fetch(&remote, &[]);

    assert_failed_cleanly(&w, &out, &before);
    assert!(
        out.stderr.contains("cannot get credentials"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("cannot reach"),
        "the endpoint was never asked:\n{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets, check-config

#[test]
fn check_config_masks_the_keys() {
    let m = moto();
    let w = World::new();
    w.config_keys(&m.keys.access, &m.keys.secret);

    let out = w.run(
        &["-r", "s3://some-bucket/app.zip", "check-config"],
        &[],
        false,
    );
    out.expect_code(0);

    assert!(
        out.stdout.contains("aws-secret-key = ***"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("aws-access-key = ***"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(&m.keys.access),
        "the access key is masked too:\n{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("s3-endpoint = {}", m.endpoint())),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// Ranged reads, through the library

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_range_returns_the_bytes_asked_for() {
    let m = tokio::task::spawn_blocking(moto).await.expect("moto");
    let w = World::new();
    let bucket = m.bucket("range");
    let object = noise(1000, 42);
    let etag = m.put(&bucket, "data/app.zip", &object);
    w.config(&format!(
        "aws-region = us-east-1\naws-access-key = {}\naws-secret-key = {}\n",
        m.keys.access, m.keys.secret
    ));
    let cli = parse_cli(&w, &format!("s3://{bucket}/data/app.zip"));
    let settings = Settings::resolve_in(&cli, &HashMap::new(), &w.root).expect("settings");
    let Remote::S3 { bucket: b, key: k } = &settings.remote else {
        panic!("not an S3 remote: {:?}", settings.remote)
    };
    assert_eq!((b.as_str(), k.as_str()), (bucket.as_str(), "data/app.zip"));
    let source = S3Source::new(b, k, &settings).await.expect("S3 source");

    let bytes = source.read_range(10, 100, None).await.expect("read_range");
    assert_eq!(bytes, object[10..100]);
    let quoted = format!("\"{etag}\"");
    let bytes = source
        .read_range(900, 1000, Some(&quoted))
        .await
        .expect("read_range with the ETag");
    assert_eq!(bytes, object[900..1000]);
    assert!(
        source
            .read_range(5, 5, None)
            .await
            .expect("empty range")
            .is_empty()
    );
    let err = source
        .read_range(10, 100, Some("\"0123456789abcdef0123456789abcdef\""))
        .await
        .expect_err("another ETag");
    let text = format!("{err:#}");
    assert!(
        text.contains(&bucket) && text.contains("data/app.zip"),
        "{text}"
    );
    assert_eq!(m.wait_gets(&bucket, "data/app.zip", 3), vec![206, 206, 412]);
}

/// `repo-deploy -c cfg -d deploy -r remote`, parsed by clap as the binary would.
fn parse_cli(w: &World, remote: &str) -> Cli {
    use clap::Parser;
    let (cfg, deploy) = (
        w.cfg.to_string_lossy().into_owned(),
        w.deploy.to_string_lossy().into_owned(),
    );
    Cli::try_parse_from(["repo-deploy", "-c", &cfg, "-d", &deploy, "-r", remote])
        .expect("parse the command line")
}

/// `repo-deploy publish` to S3 (issue 13) with this configuration's S3 settings: the signature
/// is put before the ZIP (moto's request log shows the order), `minisign -V` accepts the pair,
/// and the agent deploys the tree from the bucket.
#[test]
fn publish_puts_the_signature_then_the_zip_and_the_agent_deploys_it() {
    let m = moto();
    let w = World::new();
    let bucket = m.bucket("publish");
    w.config_keys(&m.keys.access, &m.keys.secret);
    let site = w.root.join("site");
    fs::create_dir_all(site.join("css")).expect("dirs");
    fs::write(site.join("index.html"), "<h1>from publish</h1>\n").expect("file");
    fs::write(site.join("css/site.css"), "body{}\n").expect("file");
    let password = "s3-publish-pw-88";
    let (public, secret) = crate::common::minisign::keypair(&w.root, password);
    let target = format!("s3://{bucket}/releases/app.zip");
    w.run(
        &[
            "publish",
            site.to_str().expect("utf8"),
            &target,
            "--sign",
            secret.to_str().expect("utf8"),
        ],
        &[("REPO_DEPLOY_SIGN_PASSWORD", password)],
        false,
    )
    .expect_code(0);
    // moto logs a request after answering it: wait for both lines.
    let put = |log: &str, key: &str| {
        let needle = format!("\"PUT /{bucket}/{key}");
        log.lines().position(|l| {
            l.split_once(&needle)
                .is_some_and(|(_, rest)| rest.starts_with(' ') || rest.starts_with('?'))
        })
    };
    let mut log = String::new();
    eventually(Duration::from_secs(10), || {
        log = read_all(&m.log);
        put(&log, "releases/app.zip").is_some() && put(&log, "releases/app.zip.minisig").is_some()
    });
    let (sig, zip) = (
        put(&log, "releases/app.zip.minisig"),
        put(&log, "releases/app.zip"),
    );
    assert!(
        sig.is_some() && zip.is_some() && sig < zip,
        "the signature is uploaded first: signature at line {sig:?}, ZIP at line {zip:?}"
    );

    // The agent trusts the key: the signature is fetched from S3 and checked.
    w.config(&format!(
        "aws-access-key = {}\naws-secret-key = {}\ntrusted-keys = {}\n",
        m.keys.access,
        m.keys.secret,
        public.display()
    ));
    w.fetch(&target, &[]).expect_code(0);
    let expected: BTreeMap<String, Vec<u8>> = [
        ("css/site.css".to_owned(), b"body{}\n".to_vec()),
        ("index.html".to_owned(), b"<h1>from publish</h1>\n".to_vec()),
    ]
    .into_iter()
    .collect();
    assert_eq!(files_of(&w.live()), expected);

    // What was uploaded verifies with the reference implementation.
    let zip_copy = w.root.join("app.zip");
    let get = |key: &str, to: &Path| {
        let answer = m.call(&json!({"op": "get", "bucket": bucket, "key": key}));
        let bytes =
            hex::decode(answer["hex"].as_str().unwrap_or_else(|| panic!("{answer}"))).expect("hex");
        fs::write(to, bytes).expect("write");
    };
    get("releases/app.zip", &zip_copy);
    get("releases/app.zip.minisig", &w.root.join("app.zip.minisig"));
    let (ok, said) = crate::common::minisign::verify(&public, &zip_copy);
    assert!(ok && said.contains("file:app.zip"), "{said}");

    // Whoever can write to the bucket cannot deploy: a changed ZIP under the old signature
    // is refused (exit 6), and so is a ZIP with no signature beside it.
    let mut tampered = fs::read(&zip_copy).expect("zip");
    let at = tampered.len() / 2;
    tampered[at] ^= 0x20;
    m.put(&bucket, "releases/app.zip", &tampered);
    let out = w.fetch(&target, &[]);
    out.expect_code(6);
    assert!(out.stderr.contains("bad signature"), "{}", out.stderr);
    assert_eq!(files_of(&w.live()), expected);
    let other = format!("s3://{bucket}/releases/other.zip");
    m.put(
        &bucket,
        "releases/other.zip",
        &fs::read(&zip_copy).expect("zip"),
    );
    let out = w.fetch(&other, &[]);
    out.expect_code(6);
    assert!(out.stderr.contains("no signature"), "{}", out.stderr);
    assert_eq!(files_of(&w.live()), expected);
}
