//! Keys and verification by Debian's `minisign` binary, so that what `publish` signs is
//! checked by the reference implementation, not by the crate that signed it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn minisign() -> &'static str {
    assert!(
        Path::new("/usr/bin/minisign").exists(),
        "/usr/bin/minisign not found: install Debian's minisign (apt-get install -y minisign; .ci/run does)"
    );
    "/usr/bin/minisign"
}

/// A key pair in `dir` (`minisign.pub`, `minisign.key`), the secret key encrypted with
/// `password` (given on stdin, as minisign reads it without a terminal).
pub fn keypair(dir: &Path, password: &str) -> (PathBuf, PathBuf) {
    let public = dir.join("minisign.pub");
    let secret = dir.join("minisign.key");
    let mut child = Command::new(minisign())
        .arg("-G")
        .arg("-p")
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("minisign -G");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n{password}\n").as_bytes())
        .expect("password");
    let out = child.wait_with_output().expect("minisign -G");
    assert!(
        out.status.success(),
        "minisign -G: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (public, secret)
}

/// `minisign -V`: whether `file` verifies with `public` (and its signature beside it), and
/// what minisign printed (the trusted comment).
pub fn verify(public: &Path, file: &Path) -> (bool, String) {
    let out = Command::new(minisign())
        .arg("-V")
        .arg("-p")
        .arg(public)
        .arg("-m")
        .arg(file)
        .output()
        .expect("minisign -V");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `minisign -S`: sign `file` (into `file.minisig`) with `secret` (made by
/// [`keypair_unencrypted`]); `comment` replaces the default trusted comment
/// (`timestamp:…\tfile:…\thashed`).
pub fn sign(secret: &Path, file: &Path, comment: Option<&str>) {
    let mut cmd = Command::new(minisign());
    cmd.arg("-S").arg("-s").arg(secret).arg("-m").arg(file);
    if let Some(c) = comment {
        cmd.arg("-t").arg(c);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("minisign -S");
    assert!(
        out.status.success(),
        "minisign -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The key id of a public key file, as minisign prints it in its first line.
pub fn key_id(public: &Path) -> String {
    let text = std::fs::read_to_string(public).expect("public key");
    text.lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .expect("untrusted comment with the key id")
        .to_string()
}

/// A key pair `<name>.pub`, `<name>.key` in `dir` without a password (`minisign -G -W`):
/// signing then costs no scrypt.
pub fn keypair_unencrypted(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let public = dir.join(format!("{name}.pub"));
    let secret = dir.join(format!("{name}.key"));
    let out = Command::new(minisign())
        .arg("-G")
        .arg("-W")
        .arg("-p")
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .stdin(Stdio::null())
        .output()
        .expect("minisign -G -W");
    assert!(
        out.status.success(),
        "minisign -G -W: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (public, secret)
}
