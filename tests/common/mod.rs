//! Harness for the integration tests: every test gets a fresh temporary directory, runs the
//! real binary (`CARGO_BIN_EXE_repo-deploy`) with an explicit configuration file, deploy
//! directory and hook directories inside it, and an environment without `REPO_DEPLOY_*`.
//!
//! It also builds ZIP archives, starts nginx on loopback for the HTTP remotes, spawns daemons
//! (killed on drop), and checks the deploy directory for leftovers.
//!
//! Nothing here sleeps to win a race: waits poll a condition until a deadline.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use zip::write::SimpleFileOptions;

/// How long one `-f` run may take before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for a daemon to reach a state.
pub const WAIT: Duration = Duration::from_secs(20);
const NGINX: &str = "/usr/sbin/nginx";

// ---------------------------------------------------------------------------------------------
// The test environment

/// One test's world: a temporary directory holding the configuration file, the deploy
/// directory, the hook directories and a scratch directory for what hooks write.
pub struct Env {
    _tmp: TempDir,
    /// The temporary directory (a real path: symlinks resolved).
    pub root: PathBuf,
    /// `-d`: the deploy directory (not created: the binary creates it).
    pub deploy: PathBuf,
    /// `--pre-hooks`.
    pub pre: PathBuf,
    /// `--post-hooks`.
    pub post: PathBuf,
    /// `-c`: the configuration file (empty unless a test writes it).
    pub cfg: PathBuf,
    /// Where hooks write what the tests read.
    pub out: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("repo-deploy-test-")
            .tempdir()
            .expect("create a temp dir");
        let root = fs::canonicalize(tmp.path()).expect("canonicalize the temp dir");
        let env = Env {
            deploy: root.join("deploy"),
            pre: root.join("pre-update.d"),
            post: root.join("post-update.d"),
            cfg: root.join("repo-deploy.cfg"),
            out: root.join("out"),
            root,
            _tmp: tmp,
        };
        fs::create_dir(&env.pre).expect("create pre-hooks dir");
        fs::create_dir(&env.post).expect("create post-hooks dir");
        fs::create_dir(&env.out).expect("create out dir");
        fs::write(&env.cfg, "").expect("write the empty config");
        env
    }

    /// Replace the configuration file's text.
    pub fn config(&self, text: &str) {
        write_atomic(&self.cfg, text.as_bytes());
    }

    /// A command line with the test's config, deploy dir and hook dirs.
    pub fn cmd(&self) -> Cmd<'_> {
        Cmd {
            env: self,
            args: Vec::new(),
            vars: Vec::new(),
            config: Some(self.cfg.clone()),
            deploy: self.deploy.clone(),
            hook_flags: true,
        }
    }

    /// Run the binary with `args` after the test's standard flags.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).run()
    }

    /// `-f -r remote`.
    pub fn fetch(&self, remote: &str) -> Output {
        self.run(&["-f", "-r", remote])
    }

    /// `${directory}/current`.
    pub fn current(&self) -> PathBuf {
        self.deploy.join("current")
    }

    /// The release `current` resolves to, if `current` exists.
    pub fn live(&self) -> Option<PathBuf> {
        let current = self.current();
        fs::symlink_metadata(&current).ok()?;
        Some(
            fs::canonicalize(&current)
                .unwrap_or_else(|e| panic!("{} is dangling: {e}", current.display())),
        )
    }

    /// The live release, which must exist.
    pub fn live_release(&self) -> PathBuf {
        self.live()
            .unwrap_or_else(|| panic!("{} does not exist", self.current().display()))
    }

    /// `${directory}/releases`.
    pub fn releases_dir(&self) -> PathBuf {
        self.deploy.join("releases")
    }

    /// The visible releases (no dot names), sorted.
    pub fn releases(&self) -> Vec<PathBuf> {
        list(&self.releases_dir())
            .into_iter()
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b"."))
            })
            .collect()
    }

    /// The deploy dir holds no staging or temp entries, and the cache no download.
    pub fn assert_clean(&self) {
        let hidden: Vec<_> = list(&self.releases_dir())
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
                let n = p
                    .file_name()
                    .map(|n| n.as_bytes().to_vec())
                    .unwrap_or_default();
                n.starts_with(b".") && n != b".lock"
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

    /// `current` is a symlink with a relative target that resolves into `releases/`.
    pub fn assert_current_is_relative_link(&self) {
        let current = self.current();
        let meta =
            fs::symlink_metadata(&current).unwrap_or_else(|e| panic!("{}: {e}", current.display()));
        assert!(
            meta.file_type().is_symlink(),
            "{} is not a symlink",
            current.display()
        );
        let target = fs::read_link(&current).expect("read current");
        assert!(
            target.is_relative(),
            "current's target {} is not relative",
            target.display()
        );
        let live = self.live_release();
        assert_eq!(
            live.parent(),
            Some(self.releases_dir().as_path()),
            "current resolves to {}",
            live.display()
        );
    }

    /// Write an executable `#!/bin/sh` hook.
    pub fn hook(&self, dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        write_script(&path, body);
        path
    }

    /// A pre hook.
    pub fn pre_hook(&self, name: &str, body: &str) -> PathBuf {
        self.hook(&self.pre, name, body)
    }

    /// A post hook.
    pub fn post_hook(&self, name: &str, body: &str) -> PathBuf {
        self.hook(&self.post, name, body)
    }

    /// `out/<name>`.
    pub fn out(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// The lines of `out/<name>`, empty when it does not exist.
    pub fn out_lines(&self, name: &str) -> Vec<String> {
        read_lines(&self.out(name))
    }

    /// Remove `out/<name>` if it exists.
    pub fn clear_out(&self, name: &str) {
        let _ = fs::remove_file(self.out(name));
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// Write `#!/bin/sh` + body, executable.
pub fn write_script(path: &Path, body: &str) {
    let text = format!("#!/bin/sh\n{body}\n");
    // Write under a temporary name and rename, so no writable fd of the final path is ever
    // open while another thread forks (ETXTBSY).
    write_atomic(path, text.as_bytes());
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod hook");
}

/// Replace `path` atomically (temp file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_file_name(format!(
        ".write-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// The entries of `dir`, sorted; empty when it does not exist.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.map(|e| e.expect("read_dir entry").path()).collect();
    v.sort();
    v
}

pub fn read_lines(path: &Path) -> Vec<String> {
    match fs::read_to_string(path) {
        Ok(s) => s.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// Parse an `env -0` dump.
pub fn read_env_dump(path: &Path) -> HashMap<String, String> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read env dump {}: {e}", path.display()));
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Whether `haystack` contains `needle`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir` whose content contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in list(&d) {
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() && fs::read(&p).is_ok_and(|b| contains_bytes(&b, needle)) {
                found.push(p);
            }
        }
    }
    found
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` is gone (absent, or a zombie no one reaped yet).
pub fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // `pid (comm) S ...`: the state follows the last `)`.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, Some('Z') | Some('X'))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary

/// A command line being built.
pub struct Cmd<'a> {
    env: &'a Env,
    args: Vec<OsString>,
    vars: Vec<(OsString, OsString)>,
    config: Option<PathBuf>,
    deploy: PathBuf,
    hook_flags: bool,
}

impl Cmd<'_> {
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Set an environment variable for this run (the `REPO_DEPLOY_*` of the test process are
    /// removed; these are added back).
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.vars
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Use another `-c` file.
    pub fn config_file(mut self, path: &Path) -> Self {
        self.config = Some(path.to_path_buf());
        self
    }

    /// Use another `-d` (as given: it may be relative to the test directory or a symlink).
    pub fn deploy_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.deploy = path.into();
        self
    }

    /// Leave out `--pre-hooks`/`--post-hooks` (the configuration file must name them).
    pub fn no_hook_flags(mut self) -> Self {
        self.hook_flags = false;
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_repo-deploy"));
        if let Some(cfg) = &self.config {
            c.arg("-c").arg(cfg);
        }
        c.arg("-d").arg(&self.deploy);
        if self.hook_flags {
            c.arg("--pre-hooks")
                .arg(&self.env.pre)
                .arg("--post-hooks")
                .arg(&self.env.post);
        }
        c.args(&self.args);
        for (k, _) in std::env::vars_os() {
            if k.as_bytes().starts_with(b"REPO_DEPLOY_") {
                c.env_remove(&k);
            }
        }
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c.current_dir(&self.env.root);
        c
    }

    fn describe(&self) -> String {
        let c = self.command();
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!("repo-deploy {}", args.join(" "))
    }

    /// Run to completion (at most [`RUN_TIMEOUT`]) and collect the output.
    pub fn run(self) -> Output {
        let what = self.describe();
        let started = Instant::now();
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = drain(child.stdout.take().expect("stdout"));
        let stderr = drain(child.stderr.take().expect("stderr"));
        let deadline = started + RUN_TIMEOUT;
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
        let elapsed = started.elapsed();
        // The binary has exited; a descendant still holding its pipes would be a leak.
        let grace = Duration::from_secs(10);
        let stdout = stdout.recv_timeout(grace).unwrap_or_else(|_| {
            panic!("{what}: stdout still open {grace:?} after the binary exited (a hook descendant outlived it?)")
        });
        let stderr = stderr.recv_timeout(grace).unwrap_or_else(|_| {
            panic!("{what}: stderr still open {grace:?} after the binary exited (a hook descendant outlived it?)")
        });
        Output {
            what,
            status,
            stdout,
            stderr,
            elapsed,
        }
    }

    /// Start as a daemon (killed on drop).
    pub fn spawn(self) -> Daemon {
        let what = self.describe();
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().expect("stderr"), Arc::clone(&stderr));
        collect(child.stdout.take().expect("stdout"), Arc::clone(&stdout));
        Daemon {
            what,
            child,
            stderr,
            stdout,
            status: None,
        }
    }
}

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

/// Append a pipe's text to `sink` as it arrives.
fn collect(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .expect("sink")
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
}

/// What a finished run printed and returned.
pub struct Output {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Assert the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "unexpected exit status of {}\n{}",
            self.what,
            self.dump()
        );
        self
    }

    pub fn dump(&self) -> String {
        format!(
            "status: {}\nelapsed: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A running daemon; killed (SIGKILL) on drop if still running.
pub struct Daemon {
    pub what: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped while `status` is None.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}) failed: {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout").clone()
    }

    /// The exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Wait for the exit, failing the test after `timeout`.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let ok = eventually(timeout, || self.try_status().is_some());
        assert!(
            ok,
            "{} did not exit within {timeout:?}\n--- stderr ---\n{}",
            self.what,
            self.stderr()
        );
        self.status.expect("status")
    }

    /// Wait for `cond`, failing with the daemon's stderr after [`WAIT`].
    #[track_caller]
    pub fn wait_for(&mut self, what: &str, mut cond: impl FnMut() -> bool) {
        let mut died = None;
        let ok = eventually(WAIT, || {
            if cond() {
                return true;
            }
            if let Some(s) = self.try_status() {
                died = Some(s);
                return true;
            }
            false
        }) && died.is_none();
        assert!(
            ok,
            "daemon: timed out or exited ({died:?}) waiting for {what}\n{}\n--- stderr ---\n{}",
            self.what,
            self.stderr()
        );
    }

    /// Send `sig` until `cond` holds (each send gets 2 s to take effect), failing after [`WAIT`].
    /// Repeating the signal covers one that arrives while a check is still running.
    #[track_caller]
    pub fn signal_until(&mut self, sig: libc::c_int, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            assert!(
                self.is_running(),
                "daemon exited before {what}\n--- stderr ---\n{}",
                self.stderr()
            );
            self.signal(sig);
            if eventually(Duration::from_secs(2), &mut cond) {
                return;
            }
        }
        panic!(
            "daemon: signal {sig} did not lead to {what} within {WAIT:?}\n--- stderr ---\n{}",
            self.stderr()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Trees

/// A node of a directory tree as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Content and permission bits (`mode & 0o7777`).
    File(Vec<u8>, u32),
    Dir,
    Link(PathBuf),
}

/// The tree under `dir`, by relative path.
pub fn tree(dir: &Path) -> BTreeMap<String, Node> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for p in list(dir) {
            let rel = p
                .strip_prefix(base)
                .expect("under base")
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&p).expect("lstat");
            let ft = meta.file_type();
            if ft.is_symlink() {
                out.insert(rel, Node::Link(fs::read_link(&p).expect("readlink")));
            } else if ft.is_dir() {
                out.insert(rel, Node::Dir);
                walk(base, &p, out);
            } else if ft.is_file() {
                out.insert(
                    rel,
                    Node::File(fs::read(&p).expect("read"), meta.mode() & 0o7777),
                );
            } else {
                panic!("unexpected file type at {}", p.display());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The tree a release of `entries` must have: files and links as given (setuid, setgid
/// dropped), directories named or implied.
pub fn expected_tree(entries: &[Entry]) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let parents = |name: &str, out: &mut BTreeMap<String, Node>| {
        let mut p = Path::new(name.trim_end_matches('/')).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            out.insert(d.to_string_lossy().into_owned(), Node::Dir);
            p = d.parent();
        }
    };
    for e in entries {
        match e {
            Entry::File(name, data, mode) => {
                parents(name, &mut out);
                out.insert(name.clone(), Node::File(data.clone(), mode & 0o777));
            }
            Entry::Dir(name, _) => {
                parents(name, &mut out);
                out.insert(name.trim_end_matches('/').to_string(), Node::Dir);
            }
            Entry::Link(name, target) => {
                parents(name, &mut out);
                out.insert(name.clone(), Node::Link(PathBuf::from(target)));
            }
        }
    }
    out
}

/// Compare a tree with the expected one, listing the differences.
#[track_caller]
pub fn assert_tree(dir: &Path, expected: &BTreeMap<String, Node>) {
    let actual = tree(dir);
    if &actual != expected {
        let mut diff = String::new();
        for (k, v) in expected {
            match actual.get(k) {
                None => diff.push_str(&format!("  missing: {k} ({})\n", short(v))),
                Some(a) if a != v => diff.push_str(&format!(
                    "  differs: {k}: expected {}, found {}\n",
                    short(v),
                    short(a)
                )),
                _ => {}
            }
        }
        for (k, v) in &actual {
            if !expected.contains_key(k) {
                diff.push_str(&format!("  unexpected: {k} ({})\n", short(v)));
            }
        }
        panic!("tree of {} differs:\n{diff}", dir.display());
    }
}

fn short(n: &Node) -> String {
    match n {
        Node::File(data, mode) => format!("file {:?} mode {mode:o}", String::from_utf8_lossy(data)),
        Node::Dir => "dir".into(),
        Node::Link(t) => format!("link -> {}", t.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// ZIP archives

/// One ZIP entry.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Name, content, mode (bits above 0o777, such as setuid, are written too).
    File(String, Vec<u8>, u32),
    /// Name (with or without the trailing `/`), mode.
    Dir(String, u32),
    /// Name, target.
    Link(String, String),
}

pub fn file(name: &str, data: impl AsRef<[u8]>, mode: u32) -> Entry {
    Entry::File(name.into(), data.as_ref().to_vec(), mode)
}

pub fn dir(name: &str, mode: u32) -> Entry {
    Entry::Dir(name.into(), mode)
}

pub fn link(name: &str, target: &str) -> Entry {
    Entry::Link(name.into(), target.into())
}

/// The modification time of every entry: 2021-03-04 05:06:08.
pub fn entry_time() -> zip::DateTime {
    zip::DateTime::from_date_and_time(2021, 3, 4, 5, 6, 8).expect("valid date")
}

/// The bytes of a ZIP holding `entries`, in order.
pub fn zip_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = |mode: u32| {
        SimpleFileOptions::default()
            .unix_permissions(mode)
            .last_modified_time(entry_time())
    };
    let mut high_modes = Vec::new();
    for e in entries {
        match e {
            Entry::File(name, data, mode) => {
                w.start_file(name.as_str(), opts(*mode))
                    .expect("start_file");
                w.write_all(data).expect("write entry");
                if mode & !0o777 != 0 {
                    high_modes.push((name.clone(), *mode));
                }
            }
            Entry::Dir(name, mode) => w
                .add_directory(name.as_str(), opts(*mode))
                .expect("add_directory"),
            Entry::Link(name, target) => w
                .add_symlink(name.as_str(), target.as_str(), opts(0o777))
                .expect("add_symlink"),
        }
    }
    let mut bytes = w.finish().expect("finish zip").into_inner();
    // The zip crate keeps only the low 9 permission bits; set the rest in the central directory.
    for (name, mode) in high_modes {
        set_external_mode(&mut bytes, &name, 0o100000 | mode);
    }
    bytes
}

/// Write a ZIP of `entries` to `path` (atomically).
pub fn zip(path: &Path, entries: &[Entry]) -> Vec<u8> {
    let bytes = zip_bytes(entries);
    write_atomic(path, &bytes);
    bytes
}

/// Write a ZIP of regular files `(name, contents, mode)` to `path`.
pub fn zip_files(path: &Path, files: &[(&str, &str, u32)]) -> Vec<u8> {
    let entries: Vec<Entry> = files.iter().map(|(n, c, m)| file(n, c, *m)).collect();
    zip(path, &entries)
}

/// Walk a ZIP's central directory: (offset of each header, its name).
fn central_entries(bytes: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u32_at = |o: usize| {
        u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
    };
    let eocd = (0..=bytes.len() - 22)
        .rev()
        .find(|&o| bytes[o..o + 4] == [0x50, 0x4b, 0x05, 0x06])
        .expect("no EOCD");
    let count = u16_at(eocd + 10);
    let mut o = u32_at(eocd + 16);
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(
            bytes[o..o + 4],
            [0x50, 0x4b, 0x01, 0x02],
            "central header signature"
        );
        let (n, x, c) = (u16_at(o + 28), u16_at(o + 30), u16_at(o + 32));
        out.push((o, bytes[o + 46..o + 46 + n].to_vec()));
        o += 46 + n + x + c;
    }
    out
}

/// Set the Unix mode (`st_mode`, type bits included) of entry `name` in the central directory.
pub fn set_external_mode(bytes: &mut [u8], name: &str, st_mode: u32) {
    let (off, _) = central_entries(bytes)
        .into_iter()
        .find(|(_, n)| n == name.as_bytes())
        .unwrap_or_else(|| panic!("no entry {name} in the zip"));
    // "version made by": high byte 3 = Unix, so readers honour the external attributes.
    bytes[off + 5] = 3;
    bytes[off + 38..off + 42].copy_from_slice(&(st_mode << 16).to_le_bytes());
}

/// Rename entry `from` to `to` (same length) in both its local and central headers: the way
/// to build an archive with duplicate names, which the zip crate refuses to write.
pub fn rename_entry(bytes: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len(), "rename_entry keeps lengths");
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from.as_bytes() {
            bytes[i..i + from.len()].copy_from_slice(to.as_bytes());
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert_eq!(
        hits, 2,
        "expected {from} once in a local and once in the central header"
    );
}

// ---------------------------------------------------------------------------------------------
// nginx

/// An nginx serving `www/` on 127.0.0.1, with `/private/` behind Basic auth. Killed on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub www: PathBuf,
}

/// One line of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub status: u16,
    pub bytes: u64,
    pub method: String,
    pub uri: String,
    /// The `If-None-Match` header, empty when absent.
    pub if_none_match: String,
}

/// A port nothing listens on right now (bound and released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

impl Nginx {
    /// Start nginx under `<root>/nginx` with these Basic-auth users for `/private/`.
    pub fn start(root: &Path, users: &[(&str, &str)]) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: the HTTP tests need nginx; run `bash .ci/run` or `apt-get install nginx-light`"
        );
        let dir = root.join("nginx");
        let www = dir.join("www");
        fs::create_dir_all(www.join("private")).expect("create www");
        let htpasswd: String = users
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        fs::write(dir.join("htpasswd"), htpasswd).expect("write htpasswd");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let d = dir.display();
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  default_type application/zip;\n\
                 \x20 log_format fmt '$status $body_bytes_sent $request_method $uri \"$http_if_none_match\"';\n\
                 \x20 access_log {d}/access.log fmt;\n\
                 \x20 client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n\
                 \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 \x20 server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
                 \x20   location /private/ {{ auth_basic \"x\"; auth_basic_user_file {d}/htpasswd; }}\n  }}\n}}\n"
            );
            fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
            let _ = fs::remove_file(dir.join("access.log"));
            let mut child = Command::new(NGINX)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {NGINX}: {e}"));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut exited = None;
            let up = eventually(Duration::from_secs(10), || {
                if let Some(s) = child.try_wait().expect("try_wait nginx") {
                    exited = Some(s);
                    return true;
                }
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if up && exited.is_none() {
                return Nginx {
                    child,
                    port,
                    dir,
                    www,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_error = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        }
        panic!("nginx did not start after 5 attempts; error.log:\n{last_error}");
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// `http://user:pass@127.0.0.1:PORT/<path>`.
    pub fn url_with_auth(&self, user: &str, pass: &str, path: &str) -> String {
        format!(
            "http://{user}:{pass}@127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Serve `bytes` at `path` (atomic replace) with a modification time never used before,
    /// and return the ETag nginx will send, without quotes.
    pub fn publish(&self, path: &str, bytes: &[u8]) -> String {
        static NEXT_MTIME: AtomicU64 = AtomicU64::new(1_600_000_000);
        let target = self.www.join(path.trim_start_matches('/'));
        fs::create_dir_all(target.parent().expect("parent")).expect("create www subdir");
        let mtime = NEXT_MTIME.fetch_add(10, Ordering::Relaxed);
        let tmp = target.with_file_name(format!(".publish-{mtime}"));
        {
            let mut f = fs::File::create(&tmp).expect("create published file");
            f.write_all(bytes).expect("write published file");
            f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
                .expect("set mtime");
        }
        fs::rename(&tmp, &target).expect("rename published file");
        format!("{mtime:x}-{:x}", bytes.len())
    }

    /// Serve a ZIP of `entries` at `path`; returns (ETag, bytes).
    pub fn publish_zip(&self, path: &str, entries: &[Entry]) -> (String, Vec<u8>) {
        let bytes = zip_bytes(entries);
        (self.publish(path, &bytes), bytes)
    }

    /// Remove `path` from the server.
    pub fn unpublish(&self, path: &str) {
        fs::remove_file(self.www.join(path.trim_start_matches('/'))).expect("unpublish");
    }

    /// The access log so far.
    pub fn access_log(&self) -> Vec<Access> {
        read_lines(&self.dir.join("access.log"))
            .iter()
            .map(|l| parse_access(l))
            .collect()
    }
}

fn parse_access(line: &str) -> Access {
    let mut parts = line.splitn(5, ' ');
    let mut next = || {
        parts
            .next()
            .unwrap_or_else(|| panic!("short access log line: {line}"))
    };
    let status = next().parse().expect("status");
    let bytes = next().parse().expect("bytes");
    let method = next().to_string();
    let uri = next().to_string();
    let inm = next().trim_matches('"').replace("\\x22", "\"");
    let if_none_match = if inm == "-" { String::new() } else { inm };
    Access {
        status,
        bytes,
        method,
        uri,
        if_none_match,
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Current time as seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// A scripted HTTP server, for what nginx will not do (short bodies, stalls, chosen headers)

/// How the stub answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Send these bytes (status line, headers, body) and close.
    Raw(Vec<u8>),
    /// Send these bytes, then keep the connection open and silent until the stub is dropped.
    Stall(Vec<u8>),
}

/// A full `200 OK` with `body` and extra header lines.
pub fn ok_reply(body: &[u8], headers: &[&str]) -> Reply {
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Raw(bytes)
}

/// `304 Not Modified`.
pub fn not_modified_reply() -> Reply {
    Reply::Raw(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n".to_vec())
}

/// A loopback HTTP server answering the i-th connection with the i-th reply (and 500 after
/// the script ends); it records each request head.
pub struct Stub {
    pub port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Stub {
    pub fn start(script: Vec<Reply>) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (reqs, stopping) = (Arc::clone(&requests), Arc::clone(&stop));
        thread::spawn(move || {
            let mut script = script.into_iter();
            let mut held = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let mut stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => break,
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                reqs.lock()
                    .expect("requests")
                    .push(String::from_utf8_lossy(&head).into_owned());
                match script.next() {
                    Some(Reply::Raw(bytes)) => {
                        let _ = stream.write_all(&bytes);
                    }
                    Some(Reply::Stall(bytes)) => {
                        let _ = stream.write_all(&bytes);
                        let _ = stream.flush();
                        held.push(stream);
                    }
                    None => {
                        let _ = stream.write_all(b"HTTP/1.1 500 Script Ended\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            }
            drop(held);
        });
        Stub {
            port,
            requests,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// The request heads received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }

    /// The value of header `name` (case-insensitive) in request `i`, if any.
    pub fn header(&self, i: usize, name: &str) -> Option<String> {
        let reqs = self.requests();
        let head = reqs.get(i)?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
