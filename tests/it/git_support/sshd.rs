//! An OpenSSH server of the test's own on 127.0.0.1, and the client side that goes with it.
//!
//! Nothing here reads or writes the system's ssh settings: `sshd` runs from a configuration
//! in the world's directory (its own host key, `AuthorizedKeysFile` there, `StrictModes no`,
//! `UsePAM no`, a free port), and the agent's ssh is pointed at a client configuration there
//! too (`GIT_SSH_COMMAND="ssh -F CONFIG"`: `-F` skips `/etc/ssh/ssh_config` and
//! `~/.ssh/config`; keys, `known_hosts` and the agent socket are named explicitly, because
//! ssh finds `~` through the password database, not `$HOME`). The one thing outside the world
//! is `/run/sshd`, the privilege-separation directory `sshd` insists on, created if missing
//! (as the package's service would).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Guard, World, free_port, spawn_in_group, wait_for_port};

const SSHD: &str = "/usr/sbin/sshd";

/// `sshd -D` on 127.0.0.1 for the current user, with public-key login only. Killed on drop.
pub struct Sshd {
    _guard: Guard,
    pub port: u16,
    /// The host key's public half (`ssh-ed25519 AAAA…`), for a client's `known_hosts`.
    pub host_key: String,
    /// Keys whose public halves are appended here may log in.
    pub authorized_keys: PathBuf,
    /// What `sshd -e` printed (why it refused a login).
    pub log: PathBuf,
}

/// The user the tests run as: sshd must let it log in, and the URLs name it.
pub fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8(out.stdout)
        .expect("user name is UTF-8")
        .trim()
        .to_string()
}

/// A new ed25519 key pair without a passphrase at `path` (and `path.pub`); the public half.
pub fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "repo-deploy-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen (package openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read_to_string(path.with_extension("pub"))
        .expect("public key")
        .trim()
        .to_string()
}

impl Sshd {
    pub fn start(world: &World) -> Sshd {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: install the package openssh-server"
        );
        let dir = world.root.join(format!("sshd-{}", free_port()));
        fs::create_dir_all(&dir).expect("mkdir sshd");
        fs::create_dir_all("/run/sshd").expect("create /run/sshd (privilege separation)");
        let host_key_file = dir.join("host_ed25519");
        let host_key = keygen(&host_key_file);
        let authorized_keys = dir.join("authorized_keys");
        fs::write(&authorized_keys, "").expect("authorized_keys");
        let port = free_port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {authorized}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AllowTcpForwarding no\n\
                 X11Forwarding no\n\
                 PrintMotd no\n\
                 LogLevel VERBOSE\n",
                host_key = host_key_file.display(),
                pid = dir.join("sshd.pid").display(),
                authorized = authorized_keys.display(),
            ),
        )
        .expect("sshd_config");
        let log = dir.join("sshd.log");
        let mut child = spawn_in_group(
            Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).expect("sshd log")),
        );
        wait_for_port(port, &mut child, "sshd");
        Sshd {
            _guard: Guard(child),
            port,
            host_key,
            authorized_keys,
            log,
        }
    }

    /// Let the key whose public half is `public` log in.
    pub fn authorize(&self, public: &str) {
        let mut keys = fs::read_to_string(&self.authorized_keys).unwrap_or_default();
        keys.push_str(public);
        keys.push('\n');
        fs::write(&self.authorized_keys, keys).expect("authorized_keys");
    }

    /// The `known_hosts` line for this server (ssh names a non-default port `[host]:port`).
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}\n", self.port, self.host_key)
    }
}

/// The agent's side: a key pair, a `known_hosts` and an ssh configuration with the host alias
/// `deployhost` for the server, all in the world's directory.
pub struct SshClient {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub known_hosts: PathBuf,
    /// The client key's public half.
    pub public: String,
}

impl SshClient {
    pub fn new(world: &World, sshd: &Sshd) -> SshClient {
        let dir = world.root.join(format!("ssh-client-{}", free_port()));
        fs::create_dir_all(&dir).expect("mkdir ssh client");
        let key = dir.join("id_ed25519");
        let public = keygen(&key);
        let known_hosts = dir.join("known_hosts");
        fs::write(&known_hosts, "").expect("known_hosts");
        let config = dir.join("config");
        fs::write(
            &config,
            format!(
                "Host deployhost\n\
                 \x20 HostName 127.0.0.1\n\
                 \x20 Port {port}\n\
                 \x20 User {user}\n\
                 Host *\n\
                 \x20 IdentityFile {key}\n\
                 \x20 IdentitiesOnly yes\n\
                 \x20 IdentityAgent none\n\
                 \x20 UserKnownHostsFile {known}\n\
                 \x20 GlobalKnownHostsFile /dev/null\n\
                 \x20 StrictHostKeyChecking yes\n\
                 \x20 BatchMode yes\n\
                 \x20 PasswordAuthentication no\n\
                 \x20 KbdInteractiveAuthentication no\n\
                 \x20 ControlMaster no\n\
                 \x20 ConnectTimeout 10\n",
                port = sshd.port,
                user = user(),
                key = key.display(),
                known = known_hosts.display(),
            ),
        )
        .expect("ssh config");
        SshClient {
            dir,
            config,
            known_hosts,
            public,
        }
    }

    /// Trust the server's host key.
    pub fn trust(&self, sshd: &Sshd) {
        fs::write(&self.known_hosts, sshd.known_hosts_line()).expect("known_hosts");
    }

    /// The value of `GIT_SSH_COMMAND` that makes git's ssh use this configuration only.
    pub fn ssh_command(&self) -> String {
        format!("ssh -F {}", self.config.display())
    }
}
