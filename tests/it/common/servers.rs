//! Servers on loopback: nginx (with Basic auth, with ranged access logs) and a scripted stub
//! for what nginx will not do (short bodies, stalls, chosen headers).

use super::*;

const NGINX: &str = "/usr/sbin/nginx";

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
