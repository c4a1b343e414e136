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
            umask: None,
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
    umask: Option<libc::mode_t>,
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

    /// Run the agent with this umask instead of the test's.
    pub fn umask(mut self, mask: libc::mode_t) -> Self {
        self.umask = Some(mask);
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_repo-deploy"));
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's mask.
            unsafe {
                c.pre_exec(move || {
                    libc::umask(mask);
                    Ok(())
                });
            }
        }
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
        let dir = root.join("nginx");
        fs::create_dir_all(dir.join("www/private")).expect("create www");
        let htpasswd: String = users
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        fs::write(dir.join("htpasswd"), htpasswd).expect("write htpasswd");
        let _ = fs::remove_file(dir.join("access.log"));
        Nginx::launch(dir, |d, port| {
            format!(
                "  log_format fmt '$status $body_bytes_sent $request_method $uri \"$http_if_none_match\"';\n\
                 \x20 access_log {d}/access.log fmt;\n\
                 \x20 server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
                 \x20   location /private/ {{ auth_basic \"x\"; auth_basic_user_file {d}/htpasswd; }}\n  }}\n"
            )
        })
    }

    /// Start nginx in `dir` (its `www/` the document root) with `http` (given the directory
    /// and a free port) inside its `http {}` block; on a port taken meanwhile, try another.
    fn launch(dir: PathBuf, http: impl Fn(&std::path::Display, u16) -> String) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: the HTTP tests need nginx; run `bash .ci/run` or `apt-get install nginx-light`"
        );
        let www = dir.join("www");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let d = dir.display();
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  default_type application/zip;\n\
                 \x20 client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n\
                 \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 {}}}\n",
                http(&d, port)
            );
            fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
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

// ---------------------------------------------------------------------------------------------
// Hand-made ZIP archives: every header field as the test says, lies included

/// One entry of [`raw_zip`]. Both headers carry the same fields, except the name when
/// `local_name` is set.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: Vec<u8>,
    /// A different name for the local header (the central one is `name`).
    pub local_name: Option<Vec<u8>>,
    /// What follows the local header: the entry's bytes, already compressed for `method`.
    pub data: Vec<u8>,
    pub method: u16,
    pub flags: u16,
    pub crc: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    /// "Version made by": high byte 3 (Unix) makes readers honour `external_attrs >> 16`.
    pub made_by: u16,
    pub external_attrs: u32,
    /// Extra fields for both headers (a ZIP64 field is put first when `zip64` is set).
    pub extra: Vec<u8>,
    /// Write both sizes as 0xFFFFFFFF and the values above in a ZIP64 extra field.
    pub zip64: bool,
    /// Where the central header says the local header is (default: where it was written).
    pub offset: Option<u32>,
}

/// A CRC-32 (IEEE), as ZIP headers carry it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

impl RawEntry {
    /// A stored regular file, mode 0644, with truthful headers.
    pub fn stored(name: impl AsRef<[u8]>, data: &[u8]) -> RawEntry {
        RawEntry {
            name: name.as_ref().to_vec(),
            local_name: None,
            data: data.to_vec(),
            method: 0,
            flags: 0,
            crc: crc32(data),
            compressed_size: data.len() as u64,
            uncompressed_size: data.len() as u64,
            made_by: 0x031e,
            external_attrs: 0o100644 << 16,
            extra: Vec::new(),
            zip64: false,
            offset: None,
        }
    }

    /// A deflated regular file, mode 0644, with truthful headers.
    pub fn deflated(name: impl AsRef<[u8]>, data: &[u8]) -> RawEntry {
        let packed = deflate(data);
        RawEntry {
            method: 8,
            compressed_size: packed.len() as u64,
            data: packed,
            ..RawEntry::stored(name, data)
        }
    }

    /// Set the Unix `st_mode` (type bits included).
    pub fn mode(mut self, st_mode: u32) -> RawEntry {
        self.external_attrs = st_mode << 16;
        self
    }
}

/// The raw deflate stream of `data`, cut out of a one-entry archive the zip crate wrote.
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file("x", opts).expect("start_file");
    w.write_all(data).expect("deflate");
    let bytes = w.finish().expect("finish zip").into_inner();
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let (central, _) = central_entries(&bytes)[0];
    let size = u32::from_le_bytes(
        bytes[central + 20..central + 24]
            .try_into()
            .expect("4 bytes"),
    );
    let start = 30 + u16_at(26) + u16_at(28);
    bytes[start..start + size as usize].to_vec()
}

/// How [`raw_zip_with`] ends the archive.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEnd {
    /// Write a ZIP64 end-of-central-directory record and locator (the classic record then
    /// holds 0xFFFF/0xFFFFFFFF).
    pub zip64: bool,
    /// The entry count to declare instead of the real one.
    pub count: Option<u64>,
    /// The central directory size to declare instead of the real one.
    pub cd_size: Option<u64>,
}

/// A ZIP of `entries` exactly as described, with a classic end record.
pub fn raw_zip(entries: &[RawEntry]) -> Vec<u8> {
    raw_zip_with(entries, RawEnd::default())
}

/// A ZIP of `entries` exactly as described, ended as `end` says.
pub fn raw_zip_with(entries: &[RawEntry], end: RawEnd) -> Vec<u8> {
    fn u16le(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn u32le(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn u64le(v: &mut Vec<u8>, x: u64) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    let (mut out, mut central) = (Vec::new(), Vec::new());
    // 1980-01-01 00:00:00 in DOS form.
    let (time, date) = (0u16, 0x21u16);
    for e in entries {
        let offset = e.offset.unwrap_or(out.len() as u32);
        let mut extra = Vec::new();
        let (csize, usize_) = if e.zip64 {
            u16le(&mut extra, 0x0001);
            u16le(&mut extra, 16);
            u64le(&mut extra, e.uncompressed_size);
            u64le(&mut extra, e.compressed_size);
            (u32::MAX, u32::MAX)
        } else {
            (e.compressed_size as u32, e.uncompressed_size as u32)
        };
        extra.extend_from_slice(&e.extra);
        let needed = if e.zip64 { 45 } else { 20 };
        let local_name = e.local_name.as_ref().unwrap_or(&e.name);

        u32le(&mut out, 0x0403_4b50);
        u16le(&mut out, needed);
        u16le(&mut out, e.flags);
        u16le(&mut out, e.method);
        u16le(&mut out, time);
        u16le(&mut out, date);
        u32le(&mut out, e.crc);
        u32le(&mut out, csize);
        u32le(&mut out, usize_);
        u16le(&mut out, local_name.len() as u16);
        u16le(&mut out, extra.len() as u16);
        out.extend_from_slice(local_name);
        out.extend_from_slice(&extra);
        out.extend_from_slice(&e.data);

        u32le(&mut central, 0x0201_4b50);
        u16le(&mut central, e.made_by);
        u16le(&mut central, needed);
        u16le(&mut central, e.flags);
        u16le(&mut central, e.method);
        u16le(&mut central, time);
        u16le(&mut central, date);
        u32le(&mut central, e.crc);
        u32le(&mut central, csize);
        u32le(&mut central, usize_);
        u16le(&mut central, e.name.len() as u16);
        u16le(&mut central, extra.len() as u16);
        u16le(&mut central, 0); // comment
        u16le(&mut central, 0); // disk
        u16le(&mut central, 0); // internal attributes
        u32le(&mut central, e.external_attrs);
        u32le(&mut central, offset);
        central.extend_from_slice(&e.name);
        central.extend_from_slice(&extra);
    }
    let cd_offset = out.len() as u64;
    let count = end.count.unwrap_or(entries.len() as u64);
    let cd_size = end.cd_size.unwrap_or(central.len() as u64);
    out.extend_from_slice(&central);
    if end.zip64 {
        let record = out.len() as u64;
        u32le(&mut out, 0x0606_4b50);
        u64le(&mut out, 44);
        u16le(&mut out, 0x031e);
        u16le(&mut out, 45);
        u32le(&mut out, 0);
        u32le(&mut out, 0);
        u64le(&mut out, count);
        u64le(&mut out, count);
        u64le(&mut out, cd_size);
        u64le(&mut out, cd_offset);
        u32le(&mut out, 0x0706_4b50);
        u32le(&mut out, 0);
        u64le(&mut out, record);
        u32le(&mut out, 1);
    }
    let small = |v: u64, max: u64| if end.zip64 { max } else { v.min(max) };
    u32le(&mut out, 0x0605_4b50);
    u16le(&mut out, 0);
    u16le(&mut out, 0);
    u16le(&mut out, small(count, 0xFFFF) as u16);
    u16le(&mut out, small(count, 0xFFFF) as u16);
    u32le(&mut out, small(cd_size, 0xFFFF_FFFF) as u32);
    u32le(&mut out, small(cd_offset, 0xFFFF_FFFF) as u32);
    u16le(&mut out, 0);
    out
}

/// The offset of the end-of-central-directory record and where the central directory starts.
pub fn central_directory(bytes: &[u8]) -> (usize, usize) {
    let eocd = (0..=bytes.len() - 22)
        .rev()
        .find(|&o| bytes[o..o + 4] == [0x50, 0x4b, 0x05, 0x06])
        .expect("no EOCD");
    let start = u32::from_le_bytes(bytes[eocd + 16..eocd + 20].try_into().expect("4 bytes"));
    (eocd, start as usize)
}

// ---------------------------------------------------------------------------------------------
// A corpus of hostile archives

/// The limits [`hostile_cases`] assume, as configuration lines.
pub const HOSTILE_LIMITS: &str = "max-files = 50\nmax-size = 1M\n";
pub const HOSTILE_MAX_SIZE: u64 = 1 << 20;
pub const HOSTILE_MAX_FILES: u64 = 50;

/// One hostile archive and what its refusal must say.
pub struct HostileCase {
    /// Which of the issue's kinds it is (several cases may share one).
    pub kind: &'static str,
    /// A short unique name.
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// Every string the error must contain: the entry and the problem.
    pub expect: Vec<String>,
    /// Where an escape would write; none may exist afterwards and their parents must not change.
    pub targets: Vec<PathBuf>,
}

/// The hostile archives, for a release unpacked in `<root>/deploy/releases/<staging>` (three
/// `..` from there is `root`), with `<root>/canary` the directory escapes aim at. Limits:
/// [`HOSTILE_LIMITS`].
pub fn hostile_cases(root: &Path) -> Vec<HostileCase> {
    let canary = root.join("canary");
    let releases = root.join("deploy/releases");
    let q = |s: &str| format!("{s:?}");
    let s = |s: &str| s.to_string();
    let mut cases = Vec::new();
    let mut case = |kind, name, bytes, expect: Vec<String>, targets: Vec<PathBuf>| {
        cases.push(HostileCase {
            kind,
            name,
            bytes,
            expect,
            targets,
        })
    };
    let ok = || file("ok.txt", "fine\n", 0o644);
    let abs = |name: &str| canary.join(name).to_str().expect("utf8 path").to_string();

    // Names that leave the release.
    case(
        "dotdot",
        "dotdot-to-canary",
        zip_bytes(&[ok(), file("../../../canary/evil-dotdot", "x", 0o644)]),
        vec![
            q("../../../canary/evil-dotdot"),
            s("contains a `..` component"),
        ],
        vec![canary.join("evil-dotdot")],
    );
    case(
        "dotdot",
        "dotdot-one-level",
        zip_bytes(&[file("../evil-up1", "x", 0o644)]),
        vec![q("../evil-up1"), s("`..`")],
        vec![releases.join("evil-up1")],
    );
    case(
        "dotdot",
        "dotdot-after-a-name",
        zip_bytes(&[file("sub/../../../evil-up2", "x", 0o644)]),
        vec![q("sub/../../../evil-up2"), s("`..`")],
        vec![root.join("deploy/evil-up2")],
    );
    case(
        "absolute",
        "absolute-path",
        zip_bytes(&[ok(), file(&abs("evil-abs"), "x", 0o644)]),
        vec![q(&abs("evil-abs")), s("is absolute")],
        vec![canary.join("evil-abs")],
    );
    case(
        "windows-drive",
        "drive-slash",
        zip_bytes(&[file("C:/evil-drive", "x", 0o644)]),
        vec![q("C:/evil-drive"), s("Windows drive prefix")],
        vec![],
    );
    case(
        "windows-drive",
        "drive-backslash",
        raw_zip(&[RawEntry::stored(b"C:\\evil-drive2", b"x")]),
        vec![s("evil-drive2"), s("contains a backslash")],
        vec![],
    );
    case(
        "backslash",
        "backslash-dotdot",
        raw_zip(&[RawEntry::stored(b"..\\..\\..\\canary\\evil-bs", b"x")]),
        vec![s("evil-bs"), s("contains a backslash")],
        vec![canary.join("evil-bs")],
    );

    // Symlinks.
    case(
        "symlink-escape-write-through",
        "relative-link-out-then-write",
        zip_bytes(&[
            link("esc", "../../../canary"),
            file("esc/evil-through", "x", 0o644),
        ]),
        vec![q("esc"), s("leaves the release")],
        vec![canary.join("evil-through")],
    );
    case(
        "symlink-escape-write-through",
        "absolute-link-then-write",
        zip_bytes(&[
            link("absl", canary.to_str().expect("utf8")),
            file("absl/evil-abs-through", "x", 0o644),
        ]),
        vec![q("absl"), s("is absolute")],
        vec![canary.join("evil-abs-through")],
    );
    case(
        "symlink-escape-write-through",
        "write-first-then-link-out",
        zip_bytes(&[
            file("late/evil-late", "x", 0o644),
            link("late", "../../../canary"),
        ]),
        vec![q("late"), s("leaves the release")],
        vec![canary.join("evil-late")],
    );
    case(
        "symlink-chain",
        "chain-through-dot",
        zip_bytes(&[
            link("s", "."),
            link("t", "s/s/.."),
            file("t/evil-chain", "x", 0o644),
        ]),
        vec![q("t"), s("`..` after a name")],
        vec![releases.join("evil-chain")],
    );
    case(
        "symlink-chain",
        "chain-of-hops",
        zip_bytes(&[
            link("l1", "l2"),
            link("l2", "l3"),
            link("l3", "../../../canary"),
            file("l1/evil-hops", "x", 0o644),
        ]),
        vec![q("l3"), s("leaves the release")],
        vec![canary.join("evil-hops")],
    );
    case(
        "symlink-chain",
        "chain-up-through-nested-link",
        zip_bytes(&[
            link("a/b/up", ".."),
            link("a/c", "b/up/../../.."),
            file("a/c/evil-nested", "x", 0o644),
        ]),
        vec![q("a/c"), s("`..` after a name")],
        vec![releases.join("evil-nested")],
    );
    case(
        "directory-replaced-by-symlink",
        "link-then-entry-below-it",
        zip_bytes(&[
            dir("real/", 0o755),
            link("d", "real"),
            file("d/evil", "x", 0o644),
        ]),
        vec![q("d/evil"), s("directory replaced by a symlink")],
        vec![],
    );
    case(
        "directory-replaced-by-symlink",
        "entry-below-then-link",
        zip_bytes(&[
            dir("real/", 0o755),
            file("d/evil", "x", 0o644),
            link("d", "real"),
        ]),
        vec![q("d/evil"), s("directory replaced by a symlink")],
        vec![],
    );
    case(
        "directory-replaced-by-symlink",
        "directory-entry-then-link",
        raw_zip(&[
            RawEntry::stored("d/", b"").mode(0o040755),
            RawEntry::stored("d", b"real").mode(0o120777),
        ]),
        vec![q("d"), s("appears more than once")],
        vec![],
    );

    // Names that collide.
    case(
        "duplicate",
        "same-name-twice",
        {
            let mut b = zip_bytes(&[file("same1", "a", 0o644), file("same2", "b", 0o644)]);
            rename_entry(&mut b, "same2", "same1");
            b
        },
        vec![q("same1"), s("appears more than once")],
        vec![],
    );
    case(
        "duplicate",
        "same-after-normalisation",
        zip_bytes(&[file("x/y", "a", 0o644), file("x//./y", "b", 0o644)]),
        vec![q("x/y"), s("appears more than once")],
        vec![],
    );
    case(
        "duplicate",
        "file-and-directory",
        zip_bytes(&[dir("fd/", 0o755), file("fd", "b", 0o644)]),
        vec![q("fd"), s("appears more than once")],
        vec![],
    );
    case(
        "case-collision",
        "ascii-case",
        zip_bytes(&[file("README", "a", 0o644), file("readme", "b", 0o644)]),
        vec![q("readme"), s("only in letter case")],
        vec![],
    );
    case(
        "case-collision",
        "directory-case",
        zip_bytes(&[file("Docs/a", "a", 0o644), file("docs/b", "b", 0o644)]),
        vec![q("docs"), s("only in letter case")],
        vec![],
    );
    case(
        "case-collision",
        "unicode-case",
        zip_bytes(&[file("caf\u{c9}", "a", 0o644), file("caf\u{e9}", "b", 0o644)]),
        vec![q("caf\u{e9}"), s("only in letter case")],
        vec![],
    );

    // Entry types.
    for (name, st_mode, what) in [
        ("char-device", 0o020644, "character device"),
        ("block-device", 0o060644, "block device"),
        ("fifo", 0o010644, "FIFO"),
        ("socket", 0o140644, "socket"),
    ] {
        let mut b = zip_bytes(&[ok(), file("node", "", 0o644)]);
        set_external_mode(&mut b, "node", st_mode);
        case(
            "device-or-fifo",
            name,
            b,
            vec![q("node"), format!("{what} entries are not allowed")],
            vec![],
        );
    }

    // Bombs and limits.
    let bomb = RawEntry::deflated("bomb.bin", &vec![0u8; 8 << 20]);
    case(
        "zip-bomb-ratio",
        "ratio-honest-header",
        raw_zip(std::slice::from_ref(&bomb)),
        vec![q("bomb.bin"), s("total size exceeds 1048576 bytes")],
        vec![],
    );
    case(
        "zip-bomb-ratio",
        "ratio-lying-header",
        raw_zip(&[RawEntry {
            uncompressed_size: 1000,
            ..bomb.clone()
        }]),
        vec![
            q("bomb.bin"),
            s("more than the 1000 bytes its header declares"),
        ],
        vec![],
    );
    let chunk = vec![7u8; 64 << 10];
    let many: Vec<RawEntry> = (0..20)
        .map(|i| RawEntry::deflated(format!("part{i:02}"), &chunk))
        .collect();
    case(
        "zip-bomb-total-size",
        "many-honest-parts",
        raw_zip(&many),
        vec![q("part16"), s("total size exceeds 1048576 bytes")],
        vec![],
    );
    case(
        "zip-bomb-total-size",
        "many-parts-lying-small",
        raw_zip(
            &many
                .iter()
                .map(|e| RawEntry {
                    uncompressed_size: 100,
                    ..e.clone()
                })
                .collect::<Vec<_>>(),
        ),
        vec![s("more than the 100 bytes its header declares")],
        vec![],
    );
    // Fifield's overlapping bomb: every central entry points at the same local data.
    let shared = RawEntry::deflated("olap00", &vec![0u8; 200 << 10]);
    // Four entries keep the declared total under max-size: the overlap itself is refused.
    let overlapping: Vec<RawEntry> = (0..4)
        .map(|i| RawEntry {
            name: format!("olap{i:02}").into_bytes(),
            local_name: Some(b"olap00".to_vec()),
            offset: Some(0),
            data: if i == 0 {
                shared.data.clone()
            } else {
                Vec::new()
            },
            ..shared.clone()
        })
        .collect();
    case(
        "zip-bomb-total-size",
        "overlapping-entries",
        raw_zip(&overlapping),
        vec![q("olap01"), s("shares bytes with entry \"olap00\"")],
        vec![],
    );
    let count = HOSTILE_MAX_FILES as usize + 10;
    let names: Vec<String> = (0..count).map(|i| format!("f{i:03}")).collect();
    case(
        "too-many-entries",
        "flat",
        zip_bytes(
            &names
                .iter()
                .map(|n| file(n, "x", 0o644))
                .collect::<Vec<_>>(),
        ),
        vec![q("f050"), s("more than 50 entries"), s("raise `max-files`")],
        vec![],
    );
    case(
        "too-many-entries",
        "implied-directories",
        zip_bytes(&[file(&format!("{}leaf", "d/".repeat(count)), "x", 0o644)]),
        vec![s("more than 50 entries")],
        vec![],
    );
    let long = "n".repeat(300);
    case(
        "name-too-long",
        "component-over-255-bytes",
        zip_bytes(&[ok(), file(&long, "x", 0o644)]),
        vec![q(&long), s("name too long for the filesystem")],
        vec![],
    );
    case(
        "name-too-long",
        "path-over-4096-bytes",
        zip_bytes(&[file(
            &format!("{}f", format!("{}/", "d".repeat(200)).repeat(25)),
            "x",
            0o644,
        )]),
        vec![s("is longer than 4096 bytes")],
        vec![],
    );

    // Names that are not text.
    case(
        "invalid-utf8",
        "utf8-flag-set",
        raw_zip(&[RawEntry {
            flags: 1 << 11,
            ..RawEntry::stored(b"evil\xff.txt", b"x")
        }]),
        vec![q("evil\u{fffd}.txt"), s("is not valid UTF-8")],
        vec![],
    );
    case(
        "invalid-utf8",
        "cp437-name",
        raw_zip(&[RawEntry::stored(b"caf\x82\xff", b"x")]),
        vec![s("is not valid UTF-8")],
        vec![],
    );
    case(
        "invalid-utf8",
        "nul-in-name",
        raw_zip(&[RawEntry::stored(b"evil\0.txt", b"x")]),
        vec![s("contains a NUL byte")],
        vec![],
    );

    // Corrupt structure.
    case(
        "crc-mismatch",
        "stored",
        raw_zip(&[RawEntry {
            crc: crc32(b"0123456789") ^ 1,
            ..RawEntry::stored("data.bin", b"0123456789")
        }]),
        vec![q("data.bin"), s("CRC-32 mismatch")],
        vec![],
    );
    case(
        "crc-mismatch",
        "deflated",
        raw_zip(&[
            RawEntry::stored("ok.txt", b"fine"),
            RawEntry {
                crc: 0xdead_beef,
                ..RawEntry::deflated("big.bin", &vec![3u8; 100_000])
            },
        ]),
        vec![q("big.bin"), s("CRC-32 mismatch")],
        vec![],
    );
    let three = zip_bytes(&[ok(), file("b.txt", "b", 0o644), file("c.txt", "c", 0o644)]);
    let (eocd, cd) = central_directory(&three);
    case(
        "truncated-central-directory",
        "cut-inside-the-directory",
        three[..cd + (eocd - cd) / 2].to_vec(),
        vec![s("not a readable ZIP archive")],
        vec![],
    );
    case(
        "truncated-central-directory",
        "end-record-kept",
        [&three[..cd + (eocd - cd) / 2], &three[eocd..]].concat(),
        vec![s("not a readable ZIP archive")],
        vec![],
    );
    case(
        "truncated-central-directory",
        "count-larger-than-directory",
        raw_zip_with(
            &[RawEntry::stored("a.txt", b"a")],
            RawEnd {
                count: Some(3),
                ..RawEnd::default()
            },
        ),
        vec![s("not a readable ZIP archive")],
        vec![],
    );

    // ZIP64 lies.
    case(
        "zip64-size-lie",
        "huge-declared-size",
        raw_zip(&[RawEntry {
            zip64: true,
            uncompressed_size: 1 << 62,
            ..RawEntry::deflated("huge.bin", b"tiny")
        }]),
        vec![q("huge.bin"), s("total size exceeds")],
        vec![],
    );
    case(
        "zip64-size-lie",
        "small-declared-size",
        raw_zip(&[RawEntry {
            zip64: true,
            uncompressed_size: 10,
            ..RawEntry::deflated("small.bin", &vec![0u8; 1 << 20])
        }]),
        vec![
            q("small.bin"),
            s("more than the 10 bytes its header declares"),
        ],
        vec![],
    );
    case(
        "zip64-size-lie",
        "compressed-size-past-the-end",
        raw_zip(&[RawEntry {
            zip64: true,
            compressed_size: 1 << 40,
            ..RawEntry::deflated("past.bin", b"some bytes")
        }]),
        vec![q("past.bin"), s("claims data past the end of the entries")],
        vec![],
    );
    case(
        "zip64-size-lie",
        "entry-count-lie",
        raw_zip_with(
            &[RawEntry::stored("a.txt", b"a")],
            RawEnd {
                zip64: true,
                count: Some(1 << 40),
                ..RawEnd::default()
            },
        ),
        vec![s("not a readable ZIP archive")],
        vec![],
    );

    // Encryption and methods.
    case(
        "encrypted",
        "zipcrypto-flag",
        raw_zip(&[RawEntry {
            flags: 1,
            ..RawEntry::stored("secret.txt", b"0123456789ab-cipher")
        }]),
        vec![q("secret.txt"), s("encrypted entries are not supported")],
        vec![],
    );
    case(
        "encrypted",
        "aes",
        raw_zip(&[RawEntry {
            flags: 1,
            method: 99,
            // AE-2, vendor "AE", AES-256, actual method Stored.
            extra: [&[0x01, 0x99, 7, 0, 2, 0][..], b"AE", &[3, 0, 0]].concat(),
            ..RawEntry::stored("aes.txt", b"0123456789abcdefghij-cipher")
        }]),
        vec![q("aes.txt"), s("encrypted")],
        vec![],
    );
    case(
        "unsupported-method",
        "lzma",
        raw_zip(&[RawEntry {
            method: 14,
            ..RawEntry::stored("packed.bin", b"whatever")
        }]),
        vec![q("packed.bin"), s("compression method"), s("not supported")],
        vec![],
    );
    case(
        "header-mismatch",
        "local-name-escapes",
        raw_zip(&[RawEntry {
            local_name: Some(b"../../../canary/evil-local".to_vec()),
            ..RawEntry::stored("innocent.txt", b"x")
        }]),
        vec![q("innocent.txt")],
        vec![canary.join("evil-local")],
    );
    cases
}

// ---------------------------------------------------------------------------------------------
// A loopback origin with fault injection (tests/faults.rs, crash.rs, signals.rs, disk.rs)

/// An HTTP origin on 127.0.0.1 that serves one ZIP (`200` with `Content-Length` and `ETag`,
/// `304` to a matching `If-None-Match`) and can be told to misbehave. One thread per
/// connection, `Connection: close` on every answer; it stops (and lets every held connection
/// go) when dropped.
pub mod origin {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::{Duration, Instant};

    /// How the origin answers from now on.
    #[derive(Debug, Clone)]
    pub enum Answer {
        /// The published body, in `chunk`-byte writes with `pause` between them (a slow but
        /// steady server when `pause` is not zero).
        Serve { chunk: usize, pause: Duration },
        /// These bytes as they are (status line, headers, maybe a body), then `End`.
        Raw(Vec<u8>, End),
    }

    /// How a [`Answer::Raw`] ends its connection.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum End {
        /// A normal close (FIN).
        Close,
        /// A connection reset (RST: `SO_LINGER` 0, then close).
        Reset,
        /// Keep the connection open and silent until the origin is dropped.
        Stall,
    }

    impl Answer {
        /// The published body at full speed.
        pub fn serve() -> Answer {
            Answer::Serve {
                chunk: 64 * 1024,
                pause: Duration::ZERO,
            }
        }
    }

    struct Shared {
        etag: String,
        body: Arc<Vec<u8>>,
        answer: Answer,
        heads: Vec<(Instant, String)>,
    }

    pub struct Origin {
        pub port: u16,
        shared: Arc<Mutex<Shared>>,
        stop: Arc<AtomicBool>,
        /// Body bytes written to clients so far.
        sent: Arc<AtomicU64>,
        /// Connections being answered right now.
        busy: Arc<AtomicUsize>,
    }

    impl Origin {
        /// Start with nothing published (an empty body under ETag `"0"`), answering normally.
        pub fn start() -> Origin {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
            listener.set_nonblocking(true).expect("nonblocking");
            let port = listener.local_addr().expect("addr").port();
            let origin = Origin {
                port,
                shared: Arc::new(Mutex::new(Shared {
                    etag: "\"0\"".into(),
                    body: Arc::new(Vec::new()),
                    answer: Answer::serve(),
                    heads: Vec::new(),
                })),
                stop: Arc::new(AtomicBool::new(false)),
                sent: Arc::new(AtomicU64::new(0)),
                busy: Arc::new(AtomicUsize::new(0)),
            };
            let (shared, stop, sent, busy) = (
                Arc::clone(&origin.shared),
                Arc::clone(&origin.stop),
                Arc::clone(&origin.sent),
                Arc::clone(&origin.busy),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (shared, stop, sent, busy) = (
                                Arc::clone(&shared),
                                Arc::clone(&stop),
                                Arc::clone(&sent),
                                Arc::clone(&busy),
                            );
                            busy.fetch_add(1, Ordering::SeqCst);
                            thread::spawn(move || {
                                answer(stream, &shared, &stop, &sent);
                                busy.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(2));
                        }
                        Err(_) => break,
                    }
                }
            });
            origin
        }

        /// `http://127.0.0.1:PORT/<path>` (any path gets the same answer).
        pub fn url(&self, path: &str) -> String {
            format!(
                "http://127.0.0.1:{}/{}",
                self.port,
                path.trim_start_matches('/')
            )
        }

        /// Serve `body` under `etag` (give the quotes: `"\"v2\""`).
        pub fn publish(&self, etag: &str, body: Vec<u8>) {
            let mut s = self.shared.lock().expect("origin");
            s.etag = etag.to_string();
            s.body = Arc::new(body);
        }

        /// Answer the next requests this way.
        pub fn answer(&self, answer: Answer) {
            self.shared.lock().expect("origin").answer = answer;
        }

        /// The request heads received so far.
        pub fn requests(&self) -> Vec<String> {
            let s = self.shared.lock().expect("origin");
            s.heads.iter().map(|(_, h)| h.clone()).collect()
        }

        /// When the requests so far arrived (their heads were read).
        pub fn request_times(&self) -> Vec<Instant> {
            let s = self.shared.lock().expect("origin");
            s.heads.iter().map(|(t, _)| *t).collect()
        }

        /// Body bytes written to clients so far.
        pub fn sent(&self) -> u64 {
            self.sent.load(Ordering::SeqCst)
        }

        /// Connections being answered right now.
        pub fn busy(&self) -> usize {
            self.busy.load(Ordering::SeqCst)
        }
    }

    impl Drop for Origin {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    fn answer(mut stream: TcpStream, shared: &Mutex<Shared>, stop: &AtomicBool, sent: &AtomicU64) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let (etag, body, how) = {
            let mut s = shared.lock().expect("origin");
            s.heads.push((Instant::now(), head.clone()));
            (s.etag.clone(), Arc::clone(&s.body), s.answer.clone())
        };
        match how {
            Answer::Serve { chunk, pause } => {
                let inm = head.lines().skip(1).find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("if-none-match")
                        .then(|| v.trim().to_string())
                });
                if inm.as_deref() == Some(etag.as_str()) {
                    let _ =
                        stream.write_all(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n");
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for (i, part) in body.chunks(chunk.max(1)).enumerate() {
                    if i > 0 && !pause.is_zero() {
                        thread::sleep(pause);
                    }
                    if stop.load(Ordering::Relaxed) || stream.write_all(part).is_err() {
                        return;
                    }
                    sent.fetch_add(part.len() as u64, Ordering::SeqCst);
                }
            }
            Answer::Raw(bytes, end) => {
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
                match end {
                    End::Close => {}
                    End::Reset => {
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        // SAFETY: setsockopt on a socket we own, with a correctly sized value.
                        unsafe {
                            libc::setsockopt(
                                stream.as_raw_fd(),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                (&raw const linger).cast(),
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            );
                        }
                    }
                    End::Stall => {
                        while !stop.load(Ordering::Relaxed) {
                            thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small tmpfs (tests/disk.rs, crash.rs)

/// A tmpfs mounted on a directory for the life of the value; unmounted (lazily if busy) on drop.
/// Only root can mount: [`Tmpfs::mount`] says why it could not, so the caller can skip.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs with `options` (such as `size=8m,nr_inodes=400`) on `dir`, created if
    /// missing. Drop the `Tmpfs` before the [`Env`] that holds `dir`.
    pub fn mount(dir: &Path, options: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root, so no tmpfs can be mounted".into());
        }
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "repo-deploy-test"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (an orphaned hook still has its working directory there): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nginx for incremental updates (tests/incremental.rs)

/// One line of [`Nginx::start_ranged`]'s access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangedAccess {
    pub status: u16,
    /// `$bytes_sent`: everything sent, headers included.
    pub sent: u64,
    pub method: String,
    pub uri: String,
    /// The `Range`, `If-Match` and `If-None-Match` headers, empty when absent.
    pub range: String,
    pub if_match: String,
    pub if_none_match: String,
}

impl Nginx {
    /// Like [`Nginx::start`] (no Basic auth), with an access log for ranged downloads
    /// (`ranged.log`, read by [`Nginx::ranged_log`]) and `/norange/`: the files of `www/`
    /// again, with `max_ranges 0` (a server without range support).
    pub fn start_ranged(root: &Path) -> Nginx {
        let dir = root.join("nginx");
        fs::create_dir_all(dir.join("www")).expect("create www");
        let _ = fs::remove_file(dir.join("ranged.log"));
        Nginx::launch(dir, |d, port| {
            format!(
                "  log_format ranged '$status $bytes_sent $request_method $uri \"$http_range\" \"$http_if_match\" \"$http_if_none_match\"';\n\
                 \x20 access_log {d}/ranged.log ranged;\n\
                 \x20 server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
                 \x20   location /norange/ {{ alias {d}/www/; max_ranges 0; }}\n  }}\n"
            )
        })
    }

    /// The access log of [`Nginx::start_ranged`] so far.
    pub fn ranged_log(&self) -> Vec<RangedAccess> {
        read_lines(&self.dir.join("ranged.log"))
            .iter()
            .map(|line| {
                let mut parts = line.splitn(5, ' ');
                let mut next = || {
                    parts
                        .next()
                        .unwrap_or_else(|| panic!("short log line: {line}"))
                };
                let (status, sent, method, uri) = (next(), next(), next(), next());
                let quoted: Vec<String> = next()
                    .trim_matches('"')
                    .split("\" \"")
                    .map(|v| {
                        let v = v.replace("\\x22", "\"");
                        if v == "-" { String::new() } else { v }
                    })
                    .collect();
                assert_eq!(quoted.len(), 3, "log line: {line}");
                RangedAccess {
                    status: status.parse().expect("status"),
                    sent: sent.parse().expect("bytes sent"),
                    method: method.to_string(),
                    uri: uri.to_string(),
                    range: quoted[0].clone(),
                    if_match: quoted[1].clone(),
                    if_none_match: quoted[2].clone(),
                }
            })
            .collect()
    }
}
