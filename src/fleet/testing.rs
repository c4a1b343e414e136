//! Real etcd members for the fleet tests: Debian's `/usr/bin/etcd` (package `etcd-server`),
//! each on free 127.0.0.1 ports with its own data directory, killed on drop. Ready means its
//! `/health` answers `"health":"true"`, polled with a deadline. No mock of etcd anywhere.

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
}

impl Member {
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
        let binary = etcd_binary();
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
            let out = std::fs::File::create(&log).expect("etcd log file");
            let err = out.try_clone().expect("etcd log file");
            let child = Command::new(&binary)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "repo-deploy-test"])
                // Fast elections so failover tests stay short; leases of 2 s are allowed.
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("start etcd");
            members.push(Member {
                name,
                client_url,
                child: Some(child),
                log,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for member in &members {
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
        Cluster { members, _dir: dir }
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }
}
