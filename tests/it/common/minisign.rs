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
