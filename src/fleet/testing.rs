//! Real etcd members for the fleet tests: Debian's `/usr/bin/etcd` (package `etcd-server`),
//! each on free 127.0.0.1 ports with its own data directory, killed on drop. Ready means its
//! `/health` answers `"health":"true"`, polled with a deadline. No mock of etcd anywhere.
//!
//! The integration tests (`tests/it/common/mod.rs`) include this file too, for their etcd:
//! they also stop and restart members on the same ports and data, and find the leader.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary, or a panic naming the package to install.
fn etcd_binary() -> PathBuf {
    let path =
        std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: the fleet tests need a real etcd; install the Debian package etcd-server \
         (apt-get install -y etcd-server; .ci/run does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local address").port()
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_url: String,
    child: Option<Child>,
    log: PathBuf,
    /// The arguments it was started with: a restart reuses its ports and data directory.
    args: Vec<std::ffi::OsString>,
}

impl Member {
    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log file");
        let err = out.try_clone().expect("etcd log file");
        let child = Command::new(etcd_binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// Start a killed member again (same ports, same data); [`Cluster::wait_healthy`] waits.
    #[allow(dead_code)] // used by the integration tests
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        self.spawn();
    }

    /// Whether this member is the cluster's leader (the `/v3/maintenance/status` gateway:
    /// its own member id equals the leader's).
    #[allow(dead_code)] // used by the integration tests
    pub fn is_leader(&self) -> bool {
        let body = self.post("/v3/maintenance/status", "{}");
        let Some(json) = body
            .find('{')
            .and_then(|at| serde_json::from_str::<serde_json::Value>(&body[at..]).ok())
        else {
            return false;
        };
        let id = &json["header"]["member_id"];
        !id.is_null() && *id == json["leader"]
    }

    /// Turn authentication on with a root user (the JSON gateway, as `etcdctl user add`,
    /// `user grant-role`, `auth enable` would).
    #[allow(dead_code)] // used by the integration tests
    pub fn enable_auth(&self, user: &str, password: &str) {
        let calls = [
            (
                "/v3/auth/user/add",
                serde_json::json!({"name": user, "password": password}),
            ),
            (
                "/v3/auth/user/grant",
                serde_json::json!({"user": user, "role": "root"}),
            ),
            ("/v3/auth/enable", serde_json::json!({})),
        ];
        for (path, body) in calls {
            let answer = self.post(path, &body.to_string());
            assert!(
                answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
                "{path}: {answer}"
            );
        }
    }

    fn post(&self, path: &str, body: &str) -> String {
        let addr = self.client_url.trim_start_matches("http://");
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    /// Kill the member (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn healthy(&self) -> bool {
        let addr = self.client_url.trim_start_matches("http://");
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of one or more members, in a temporary directory.
pub struct Cluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Start `n` members and wait until each reports healthy (within 30 s).
    pub fn start(n: usize) -> Cluster {
        etcd_binary(); // fail early, naming the package, if etcd is missing
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = dir.path().join(format!("{name}.log"));
            let data = dir.path().join(&name).to_string_lossy().into_owned();
            let args: Vec<std::ffi::OsString> = [
                "--name",
                &name,
                "--data-dir",
                &data,
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "repo-deploy-test",
                // Fast elections so failover tests stay short; leases of 2 s are allowed.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ]
            .iter()
            .map(|a| std::ffi::OsString::from(*a))
            .collect();
            let mut member = Member {
                name,
                client_url,
                child: None,
                log,
                args,
            };
            member.spawn();
            members.push(member);
        }
        let cluster = Cluster { members, _dir: dir };
        cluster.wait_healthy();
        cluster
    }

    /// Wait until every running member reports healthy (within 30 s).
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            while !member.healthy() {
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
                    panic!(
                        "etcd member {} not healthy within 30 s; its log:\n{log}",
                        member.name
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }
}
