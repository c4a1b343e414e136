//! Harness for the integration tests: every test gets a fresh temporary directory, runs the
//! real binary (`CARGO_BIN_EXE_repo-deploy`) with an explicit configuration file, deploy
//! directory and hook directories inside it, and an environment without `REPO_DEPLOY_*`.
//!
//! It also builds ZIP archives, starts nginx on loopback for the HTTP remotes, spawns daemons
//! (killed on drop), and checks the deploy directory for leftovers.
//!
//! Nothing here sleeps to win a race: waits poll a condition until a deadline.

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

/// Real etcd members on loopback: the same harness as the library's fleet unit tests.
#[path = "../../../src/fleet/testing.rs"]
pub mod etcd;
use zip::write::SimpleFileOptions;

/// How long one `-f` run may take before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a test waits for a daemon to reach a state.
pub const WAIT: Duration = Duration::from_secs(20);

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

mod archives;
pub mod browser;
mod hostile;
mod http;
pub mod minisign;
pub mod origin;
mod servers;
mod tmpfs;

pub use archives::*;
pub use hostile::*;
pub use http::*;
pub use servers::*;
pub use tmpfs::*;
