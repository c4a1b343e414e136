//! Harness for the git remote tests (`tests/git.rs`): a fresh temporary world per test, git
//! fixtures built with the git CLI, real servers on loopback (`git daemon` for git://, nginx +
//! fcgiwrap + `git http-backend` for smart HTTP, an `sshd` of the test's own for ssh, see
//! `sshd.rs`), and the real binary run with a deadline.
//!
//! Every git the binary starts goes through a wrapper on `PATH` that logs its arguments, so
//! tests can tell which commands a check ran (an unchanged check runs only `ls-remote`) and
//! that no secret was ever on a command line. Nothing sleeps to win a race: waits poll a
//! condition until a deadline.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod sshd;
pub use sshd::{SshClient, Sshd, keygen, user as ssh_user};

/// How long one `-f` run may take before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const NGINX: &str = "/usr/sbin/nginx";
const FCGIWRAP: &str = "/usr/sbin/fcgiwrap";

/// Poll `cond` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The real git, found on `PATH` before the wrapper is put in front of it.
fn real_git() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("git"))
        .find(|p| p.is_file())
        .expect("git is installed")
}

/// One test's world: deploy directory, hook directories, an empty HOME, a wrapper for git,
/// and room for bare repositories and their working clones.
pub struct World {
    _tmp: TempDir,
    pub root: PathBuf,
    pub deploy: PathBuf,
    pub pre: PathBuf,
    pub post: PathBuf,
    /// Where hooks and the git wrapper write what tests read.
    pub out: PathBuf,
    /// HOME of every git and of the binary: no user configuration leaks in.
    pub home: PathBuf,
    /// Holds the wrapper `git`.
    bin: PathBuf,
    cfg: PathBuf,
}

impl World {
    pub fn new() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("repo-deploy-git-")
            .tempdir()
            .expect("temp dir");
        let root = fs::canonicalize(tmp.path()).expect("canonicalize");
        let w = World {
            deploy: root.join("deploy"),
            pre: root.join("pre-update.d"),
            post: root.join("post-update.d"),
            out: root.join("out"),
            home: root.join("home"),
            bin: root.join("bin"),
            cfg: root.join("repo-deploy.cfg"),
            root,
            _tmp: tmp,
        };
        for dir in [&w.pre, &w.post, &w.out, &w.home, &w.bin] {
            fs::create_dir_all(dir).expect("mkdir");
        }
        fs::write(&w.cfg, "").expect("write the config");
        let log = w.out.join("git-argv.log");
        script(
            &w.bin.join("git"),
            &format!(
                "printf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"",
                log.display(),
                real_git().display()
            ),
        );
        // Hooks that log phase and version, and dump the post-update environment.
        w.pre_hook("10-log", "echo \"pre $DEPLOY_VERSION\" >> \"$OUT/log\"");
        w.post_hook(
            "10-log",
            "echo \"post $DEPLOY_VERSION\" >> \"$OUT/log\"\nenv > \"$OUT/env-post\"",
        );
        w
    }

    pub fn pre_hook(&self, name: &str, body: &str) {
        script(
            &self.pre.join(name),
            &body.replace("$OUT", &self.out.display().to_string()),
        );
    }

    pub fn post_hook(&self, name: &str, body: &str) {
        script(
            &self.post.join(name),
            &body.replace("$OUT", &self.out.display().to_string()),
        );
    }

    /// Replace the configuration file's text.
    pub fn config(&self, text: &str) {
        fs::write(&self.cfg, text).expect("write the config");
    }

    /// `repo-deploy -f -r remote` with the world's directories and a deadline.
    pub fn run(&self, remote: &str) -> Output {
        self.run_args(&["-f", "-v", "-r", remote])
    }

    pub fn run_args(&self, args: &[&str]) -> Output {
        self.finish(self.spawn_args(args))
    }

    /// Wait (with the run deadline) for a spawned binary; what it printed.
    pub fn finish(&self, mut child: Child) -> Output {
        let mut status = None;
        let started = Instant::now();
        eventually(RUN_TIMEOUT, || {
            status = child.try_wait().expect("wait");
            status.is_some()
        });
        let stderr = self.root.join("run.stderr");
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "repo-deploy ran longer than {RUN_TIMEOUT:?}:\n{}",
                read(&stderr)
            );
        };
        Output {
            status,
            stdout: read(&self.root.join("run.stdout")),
            stderr: read(&stderr),
            elapsed: started.elapsed(),
        }
    }

    /// Start the binary with the world's directories (output in `run.stdout`/`run.stderr`).
    pub fn spawn_args(&self, args: &[&str]) -> Child {
        self.spawn_args_env(args, &[])
    }

    /// `repo-deploy -f -v -r remote` with these variables added to its environment (after the
    /// `GIT_*` and `REPO_DEPLOY_*` of the test process were removed).
    pub fn run_env(&self, remote: &str, vars: &[(&str, &str)]) -> Output {
        self.finish(self.spawn_args_env(&["-f", "-v", "-r", remote], vars))
    }

    /// [`World::spawn_args`] with these variables added to the binary's environment.
    pub fn spawn_args_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_repo-deploy"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REPO_DEPLOY_")
                || key.to_string_lossy().starts_with("GIT_")
            {
                cmd.env_remove(&key);
            }
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.bin.clone()];
        paths.extend(std::env::split_paths(&path));
        let stdout = self.root.join("run.stdout");
        let stderr = self.root.join("run.stderr");
        cmd.arg("-c")
            .arg(&self.cfg)
            .arg("-d")
            .arg(&self.deploy)
            .arg("--pre-hooks")
            .arg(&self.pre)
            .arg("--post-hooks")
            .arg(&self.post)
            .args(args)
            .env("PATH", std::env::join_paths(paths).expect("PATH"))
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(fs::File::create(&stderr).expect("stderr file"));
        cmd.spawn().expect("spawn repo-deploy")
    }

    /// `${directory}/current`.
    pub fn current(&self) -> PathBuf {
        self.deploy.join("current")
    }

    /// The release `current` points to.
    pub fn live(&self) -> PathBuf {
        fs::canonicalize(self.current()).expect("current resolves to a release")
    }

    /// Every entry in `releases/` (hidden ones too).
    pub fn releases(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.deploy.join("releases"))
            .map(|d| {
                d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The lines the hooks logged, then forget them.
    pub fn take_log(&self) -> Vec<String> {
        let path = self.out.join("log");
        let text = fs::read_to_string(&path).unwrap_or_default();
        let _ = fs::remove_file(&path);
        text.lines().map(str::to_string).collect()
    }

    /// The git command lines the binary ran, then forget them.
    pub fn take_git_log(&self) -> Vec<String> {
        let path = self.out.join("git-argv.log");
        let text = fs::read_to_string(&path).unwrap_or_default();
        let _ = fs::remove_file(&path);
        text.lines().map(str::to_string).collect()
    }

    /// The cache repositories under `${cache}/git`.
    pub fn caches(&self) -> Vec<PathBuf> {
        let dir = self.deploy.join("cache/git");
        let mut found: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|d| d.map(|e| e.expect("entry").path()).collect())
            .unwrap_or_default();
        found.sort();
        found
    }

    /// The only cache repository.
    pub fn cache(&self) -> PathBuf {
        let caches = self.caches();
        assert_eq!(caches.len(), 1, "one cache repository: {caches:?}");
        caches[0].clone()
    }

    /// Run the fixture git (not the wrapper) with an isolated configuration.
    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        let out = Command::new(real_git())
            .args([
                "-c",
                "protocol.file.allow=always",
                "-c",
                "init.defaultBranch=main",
                "-c",
                "advice.detachedHead=false",
            ])
            .args(args)
            .current_dir(dir)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
            .stdin(Stdio::null())
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// What a run printed and how it ended.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "exit status; stderr:\n{}",
            self.stderr
        );
        self
    }
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// Write an executable shell script.
pub fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Three bare repositories in `origin`: `app.git` (the superproject), `lib.git` (a submodule
/// of `app` at `site/lib`) and `deep.git` (a submodule of `lib` at `vendor`), with working
/// clones in `work` to commit and push from.
///
/// `app`: `README.md`, `site/index.html`, `site/bin/run.sh` (0755), `site/link` →
/// `index.html`, `site/lib` (submodule), `other/notes.txt`; annotated tag `v1` on the first
/// commit; branch `next` with its own `site/index.html`.
pub struct Repos<'w> {
    world: &'w World,
    pub origin: PathBuf,
    pub work: PathBuf,
}

impl<'w> Repos<'w> {
    pub fn new(world: &'w World, origin: &Path) -> Repos<'w> {
        let work = world
            .root
            .join("work")
            .join(origin.file_name().expect("origin name"));
        fs::create_dir_all(origin).expect("mkdir origin");
        fs::create_dir_all(&work).expect("mkdir work");
        let repos = Repos {
            world,
            origin: origin.to_path_buf(),
            work,
        };
        repos.seed("deep", &[("deep.txt", "deep v1\n")], &[]);
        repos.seed(
            "lib",
            &[("lib.txt", "lib v1\n")],
            &[("../deep.git", "vendor")],
        );
        repos.seed(
            "app",
            &[
                ("README.md", "# app\n"),
                ("site/index.html", "<h1>v1</h1>\n"),
                ("site/bin/run.sh", "#!/bin/sh\necho run\n"),
                ("other/notes.txt", "notes v1\n"),
            ],
            &[("../lib.git", "site/lib")],
        );
        let app = repos.clone_dir("app");
        fs::set_permissions(
            app.join("site/bin/run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("index.html", app.join("site/link")).expect("symlink");
        world.git(&app, &["add", "-A"]);
        world.git(&app, &["commit", "-q", "-m", "modes and links"]);
        world.git(&app, &["tag", "-a", "v1", "-m", "release v1"]);
        world.git(&app, &["push", "-q", "origin", "main", "v1"]);
        world.git(&app, &["checkout", "-q", "-b", "next"]);
        fs::write(app.join("site/index.html"), "<h1>next</h1>\n").expect("write");
        world.git(&app, &["commit", "-q", "-am", "next"]);
        world.git(&app, &["push", "-q", "origin", "next"]);
        world.git(&app, &["checkout", "-q", "main"]);
        repos
    }

    /// The working clone of a repository.
    pub fn clone_dir(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    fn seed(&self, name: &str, files: &[(&str, &str)], submodules: &[(&str, &str)]) {
        let bare = self.origin.join(format!("{name}.git"));
        self.world.git(
            &self.origin,
            &["init", "-q", "--bare", bare.to_str().expect("utf8")],
        );
        self.world.git(
            &self.work,
            &["clone", "-q", bare.to_str().expect("utf8"), name],
        );
        let dir = self.clone_dir(name);
        for (path, text) in files {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, text).expect("write");
        }
        for (url, path) in submodules {
            self.world.git(&dir, &["submodule", "add", "-q", url, path]);
        }
        self.world.git(&dir, &["add", "-A"]);
        self.world
            .git(&dir, &["commit", "-q", "-m", &format!("{name}: first")]);
        self.world.git(&dir, &["push", "-q", "origin", "main"]);
    }

    /// Write files in `app` (branch `main`), commit and push; the new commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        self.commit_in("app", files, message)
    }

    /// Write files in the working clone of `name` (`app`, `lib`, `deep`), commit and push.
    pub fn commit_in(&self, name: &str, files: &[(&str, &str)], message: &str) -> String {
        let app = self.clone_dir(name);
        for (path, text) in files {
            let path = app.join(path);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, text).expect("write");
        }
        self.world.git(&app, &["add", "-A"]);
        self.world.git(&app, &["commit", "-q", "-m", message]);
        self.world.git(&app, &["push", "-q", "origin", "main"]);
        self.world.git(&app, &["rev-parse", "HEAD"])
    }

    /// Rewrite the last commit of `main` with other content and force-push it.
    pub fn amend_and_force_push(&self, files: &[(&str, &str)]) -> String {
        let app = self.clone_dir("app");
        for (path, text) in files {
            fs::write(app.join(path), text).expect("write");
        }
        self.world
            .git(&app, &["commit", "-q", "-a", "--amend", "-m", "rewritten"]);
        self.world
            .git(&app, &["push", "-q", "-f", "origin", "main"]);
        self.head()
    }

    /// The commit id `main` of `app` points to.
    pub fn head(&self) -> String {
        self.world
            .git(&self.clone_dir("app"), &["rev-parse", "HEAD"])
    }

    /// The commit id of any revision of `app`.
    pub fn rev(&self, rev: &str) -> String {
        self.world.git(&self.clone_dir("app"), &["rev-parse", rev])
    }
}

// ---------------------------------------------------------------------------------------------
// Trees

/// A file tree as `path → description` (`file <mode> <content>`, `dir`, `link <target>`).
pub fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dir.join(&rel)).expect("read dir") {
            let entry = entry.expect("entry");
            let rel = rel.join(entry.file_name());
            let path = dir.join(&rel);
            let meta = fs::symlink_metadata(&path).expect("stat");
            let key = rel.to_string_lossy().into_owned();
            let value = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).expect("readlink").display())
            } else if meta.is_dir() {
                stack.push(rel);
                "dir".to_string()
            } else {
                format!(
                    "file {:o} {}",
                    meta.mode() & 0o7777,
                    fs::read_to_string(&path).unwrap_or_default()
                )
            };
            out.insert(key, value);
        }
    }
    out
}

/// Paths and sizes of every file under `dir`: a cache's objects before and after a check.
pub fn listing(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read dir") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(entry.path().display().to_string(), meta.len());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let up = eventually(START_TIMEOUT, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "{what} did not listen on 127.0.0.1:{port}");
}

/// A child process killed (with its group) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child's process group.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_in_group(cmd: &mut Command) -> Child {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn server")
}

/// `git daemon` serving every repository under `base` as `git://127.0.0.1:<port>/<name>`.
pub struct GitDaemon {
    guard: Option<Guard>,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(world: &World, base: &Path) -> GitDaemon {
        let port = free_port();
        let log = fs::File::create(world.root.join(format!("git-daemon-{port}.log"))).expect("log");
        let mut child = spawn_in_group(
            Command::new(real_git())
                .arg("daemon")
                .arg("--export-all")
                .arg(format!("--base-path={}", base.display()))
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg("--reuseaddr")
                .arg("--informative-errors")
                .env("HOME", &world.home)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .stdout(Stdio::null())
                .stderr(log),
        );
        wait_for_port(port, &mut child, "git daemon");
        GitDaemon {
            guard: Some(Guard(child)),
            port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("git://127.0.0.1:{}/{path}", self.port)
    }

    /// Stop serving (the port is then closed).
    pub fn stop(&mut self) {
        self.guard.take();
    }
}

/// nginx in front of `git http-backend` (through fcgiwrap): smart HTTP for every repository
/// under `root`, with HTTP Basic auth (`{PLAIN}` passwords) under `/private/`.
pub struct HttpGit {
    _nginx: Guard,
    _fcgiwrap: Guard,
    pub port: u16,
    access_log: PathBuf,
}

impl HttpGit {
    pub fn start(world: &World, root: &Path, users: &[(&str, &str)]) -> HttpGit {
        let dir = world.root.join(format!("http-{}", free_port()));
        fs::create_dir_all(dir.join("tmp")).expect("mkdir");
        let socket = dir.join("fcgi.sock");
        let mut fcgiwrap = spawn_in_group(
            Command::new(FCGIWRAP)
                .arg("-c")
                .arg("2")
                .arg("-s")
                .arg(format!("unix:{}", socket.display()))
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("fcgiwrap.log")).expect("log")),
        );
        let up = eventually(START_TIMEOUT, || {
            if let Ok(Some(status)) = fcgiwrap.try_wait() {
                panic!("fcgiwrap exited at start: {status}");
            }
            socket.exists()
        });
        assert!(up, "fcgiwrap did not create {}", socket.display());
        let fcgiwrap = Guard(fcgiwrap);

        let htpasswd = dir.join("htpasswd");
        let lines: String = users
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        fs::write(&htpasswd, lines).expect("htpasswd");
        let exec_path = String::from_utf8(
            Command::new(real_git())
                .arg("--exec-path")
                .output()
                .expect("git --exec-path")
                .stdout,
        )
        .expect("utf8");
        let params = dir.join("git-params.conf");
        fs::write(
            &params,
            format!(
                "fastcgi_pass unix:{socket};\n\
                 fastcgi_param SCRIPT_FILENAME {backend};\n\
                 fastcgi_param GIT_PROJECT_ROOT {root};\n\
                 fastcgi_param GIT_HTTP_EXPORT_ALL \"\";\n\
                 fastcgi_param GIT_CONFIG_NOSYSTEM 1;\n\
                 fastcgi_param HOME {home};\n\
                 fastcgi_param PATH_INFO $uri;\n\
                 fastcgi_param QUERY_STRING $args;\n\
                 fastcgi_param REQUEST_METHOD $request_method;\n\
                 fastcgi_param CONTENT_TYPE $content_type;\n\
                 fastcgi_param CONTENT_LENGTH $content_length;\n\
                 fastcgi_param REMOTE_USER $remote_user;\n\
                 fastcgi_param REMOTE_ADDR $remote_addr;\n\
                 fastcgi_param SERVER_PROTOCOL $server_protocol;\n\
                 fastcgi_param GATEWAY_INTERFACE CGI/1.1;\n",
                socket = socket.display(),
                backend = Path::new(exec_path.trim())
                    .join("git-http-backend")
                    .display(),
                root = root.display(),
                home = world.home.display(),
            ),
        )
        .expect("params");
        let port = free_port();
        let access_log = dir.join("access.log");
        let tmp = dir.join("tmp");
        let conf = dir.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
                 error_log {dir}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n\
                   access_log {access} combined;\n\
                   client_body_temp_path {tmp}/body;\n\
                   fastcgi_temp_path {tmp}/fastcgi;\n\
                   proxy_temp_path {tmp}/proxy;\n\
                   uwsgi_temp_path {tmp}/uwsgi;\n\
                   scgi_temp_path {tmp}/scgi;\n\
                   client_max_body_size 0;\n\
                   server {{\n\
                     listen 127.0.0.1:{port};\n\
                     location /private/ {{\n\
                       auth_basic \"git\";\n\
                       auth_basic_user_file {htpasswd};\n\
                       include {params};\n\
                     }}\n\
                     location / {{ include {params}; }}\n\
                   }}\n\
                 }}\n",
                dir = dir.display(),
                access = access_log.display(),
                tmp = tmp.display(),
                htpasswd = htpasswd.display(),
                params = params.display(),
            ),
        )
        .expect("nginx.conf");
        let mut nginx = spawn_in_group(
            Command::new(NGINX)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("nginx.stderr")).expect("log")),
        );
        wait_for_port(port, &mut nginx, "nginx");
        HttpGit {
            _nginx: Guard(nginx),
            _fcgiwrap: fcgiwrap,
            port,
            access_log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn url_with_auth(&self, user: &str, password: &str, path: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}/{path}", self.port)
    }

    /// The access log's lines.
    pub fn access_log(&self) -> Vec<String> {
        fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Watching command lines

/// A thread that reads every process's command line (`/proc/*/cmdline`) over and over until
/// stopped, and keeps those containing `needle`.
pub struct CmdlineWatch {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<(Vec<String>, usize)>>,
}

impl CmdlineWatch {
    pub fn start(needle: &str) -> CmdlineWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let needle = needle.as_bytes().to_vec();
        let handle = thread::spawn(move || {
            let (mut hits, mut gits) = (Vec::new(), 0);
            while !flag.load(Ordering::Relaxed) {
                let Ok(procs) = fs::read_dir("/proc") else {
                    break;
                };
                for entry in procs.flatten() {
                    let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    if cmdline.starts_with(b"git") || cmdline.windows(5).any(|w| w == b"/git\0") {
                        gits += 1;
                    }
                    if cmdline
                        .windows(needle.len())
                        .any(|w| w == needle.as_slice())
                    {
                        hits.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
                    }
                }
            }
            (hits, gits)
        });
        CmdlineWatch {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop; the command lines that contained the needle, and how many git command lines were
    /// seen at all.
    pub fn finish(mut self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("watcher"))
            .unwrap_or_default()
    }
}
