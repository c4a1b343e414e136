//! Network faults (issue #5, part 2): a fault-injecting origin of our own on 127.0.0.1
//! (`common::origin`) and, for TLS, `openssl s_server` with certificates made at test time.
//!
//! Every fault follows one script: v1 is live from the same remote; the origin then offers v2
//! but misbehaves; the check must exit 1 with an error that names the problem, leave `current`
//! and every release exactly as they were, leave no staging, temp file or download behind;
//! and once the origin behaves again, the next check deploys v2.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::origin::{Answer, End, Origin};
use crate::common::*;
use rand::{Rng, SeedableRng};

/// A release whose `data.bin` is incompressible, so corrupting a byte of it is a corruption
/// of the file's bytes whatever the compressor did.
fn app(version: &str) -> Vec<Entry> {
    let seed = version.bytes().fold(7919u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut noise = vec![0u8; 48 * 1024];
    rng.fill(&mut noise[..]);
    vec![
        file("data.bin", noise, 0o644),
        file("bin/run.sh", format!("#!/bin/sh\necho {version}\n"), 0o755),
        link("run", "bin/run.sh"),
        file("version.txt", format!("{version}\n"), 0o644),
    ]
}

fn etag(version: &str) -> String {
    format!("\"{version}\"")
}

/// A response head for `body` with `Content-Length: length` and v2's ETag.
fn head(length: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: {length}\r\nETag: {}\r\nConnection: close\r\n\r\n",
        etag("v2")
    )
    .into_bytes()
}

/// One test's world: v1 live from `origin`, which now publishes v2.
struct World {
    env: Env,
    origin: Origin,
    url: String,
    v1: PathBuf,
    releases: Vec<PathBuf>,
    v2: Vec<u8>,
}

impl World {
    fn new(config: &str) -> World {
        let env = Env::new();
        env.config(config);
        let origin = Origin::start();
        let url = origin.url("app.zip");
        origin.publish(&etag("v1"), zip_bytes(&app("v1")));
        env.fetch(&url).expect_code(0);
        let v1 = env.live_release();
        let releases = env.releases();
        let v2 = zip_bytes(&app("v2"));
        origin.publish(&etag("v2"), v2.clone());
        World {
            env,
            origin,
            url,
            v1,
            releases,
            v2,
        }
    }

    /// Run a check against the faulty origin: exit 1, an error naming the problem (every one
    /// of `expect`, case-insensitive), and nothing changed or left behind.
    #[track_caller]
    fn fails(&self, expect: &[&str]) -> Output {
        let out = self.env.fetch(&self.url);
        out.expect_code(1);
        let err = out.stderr.to_lowercase();
        for e in expect {
            assert!(
                err.contains(&e.to_lowercase()),
                "the error does not say {e:?}\n{}",
                out.dump()
            );
        }
        assert!(
            err.contains("127.0.0.1"),
            "the error names the remote\n{}",
            out.dump()
        );
        self.unchanged();
        out
    }

    /// `current` is v1, complete; the releases are the same; nothing is left behind.
    #[track_caller]
    fn unchanged(&self) {
        assert_eq!(self.env.live_release(), self.v1, "current unchanged");
        assert_tree(&self.v1, &expected_tree(&app("v1")));
        assert_eq!(self.env.releases(), self.releases, "no release added");
        self.env.assert_clean();
    }

    /// The origin behaves again: the next check deploys v2.
    #[track_caller]
    fn recovers(&self) {
        self.origin.answer(Answer::serve());
        self.env.fetch(&self.url).expect_code(0);
        let live = self.env.live_release();
        assert_ne!(live, self.v1, "v2 went live");
        assert_tree(&live, &expected_tree(&app("v2")));
        self.env.assert_clean();
    }
}

#[test]
fn connection_reset_mid_body_fails_and_the_next_check_recovers() {
    let w = World::new("");
    let mut raw = head(w.v2.len());
    raw.extend_from_slice(&w.v2[..w.v2.len() / 2]);
    w.origin.answer(Answer::Raw(raw, End::Reset));

    w.fails(&["download of", "failed after", "reset"]);
    w.recovers();
}

#[test]
fn body_cut_short_of_its_content_length_fails() {
    let w = World::new("");
    let mut raw = head(w.v2.len());
    raw.extend_from_slice(&w.v2[..w.v2.len() - 1000]);
    w.origin.answer(Answer::Raw(raw, End::Close));

    // hyper notices the early end of a sized body; the agent's own length check is the
    // backstop. Either way the download is refused before anything is unpacked.
    let out = w.fails(&["download of"]);
    assert!(
        out.stderr.contains("truncated") || out.stderr.contains("failed after"),
        "the error says the body was short\n{}",
        out.dump()
    );
    w.recovers();
}

#[test]
fn chunked_body_without_its_last_chunk_fails() {
    let w = World::new("");
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: {}\r\nConnection: close\r\n\r\n",
        etag("v2")
    )
    .into_bytes();
    let part = &w.v2[..w.v2.len() / 2];
    raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
    raw.extend_from_slice(part);
    raw.extend_from_slice(b"\r\n"); // ...and no `0\r\n\r\n`: the connection just closes
    w.origin.answer(Answer::Raw(raw, End::Close));

    w.fails(&["download of", "failed after"]);
    w.recovers();
}

#[test]
fn body_cut_short_without_any_length_is_caught_by_the_archive_check() {
    let w = World::new("");
    // No Content-Length, no chunking: the end of the connection is the end of the body, so
    // nothing at the HTTP level can tell. The ZIP's own structure must.
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nETag: {}\r\nConnection: close\r\n\r\n",
        etag("v2")
    )
    .into_bytes();
    raw.extend_from_slice(&w.v2[..w.v2.len() - 100]);
    w.origin.answer(Answer::Raw(raw, End::Close));

    w.fails(&["cannot unpack", "zip"]);
    w.recovers();
}

#[test]
fn content_length_longer_than_the_body_fails() {
    let w = World::new("");
    let mut raw = head(w.v2.len() + 4096);
    raw.extend_from_slice(&w.v2);
    w.origin.answer(Answer::Raw(raw, End::Close));

    let out = w.fails(&["download of"]);
    assert!(
        out.stderr.contains("truncated") || out.stderr.contains("failed after"),
        "the error says the body was short\n{}",
        out.dump()
    );
    w.recovers();
}

#[test]
fn content_length_shorter_than_the_body_fails() {
    let w = World::new("");
    // The client reads exactly Content-Length bytes: the archive it keeps is cut short.
    let mut raw = head(w.v2.len() - 200);
    raw.extend_from_slice(&w.v2);
    w.origin.answer(Answer::Raw(raw, End::Close));

    w.fails(&["cannot unpack", "zip"]);
    w.recovers();
}

#[test]
fn corrupted_bytes_fail_the_integrity_check() {
    let w = World::new("");
    let mut bad = w.v2.clone();
    // The first local header: data starts after 30 bytes, the name and the extra field.
    assert_eq!(&bad[..4], b"PK\x03\x04", "a ZIP starts with a local header");
    let name_len = u16::from_le_bytes([bad[26], bad[27]]) as usize;
    let extra_len = u16::from_le_bytes([bad[28], bad[29]]) as usize;
    assert_eq!(&bad[30..30 + name_len], b"data.bin");
    let at = 30 + name_len + extra_len + 20_000;
    bad[at] ^= 0x5a;
    bad[at + 1] ^= 0xa5;
    let mut raw = head(bad.len());
    raw.extend_from_slice(&bad);
    w.origin.answer(Answer::Raw(raw, End::Close));

    let out = w.fails(&["cannot unpack", "data.bin"]);
    assert!(
        out.stderr.contains("CRC") || out.stderr.contains("corrupt"),
        "the error says the data is corrupt\n{}",
        out.dump()
    );
    w.recovers();
}

#[test]
fn server_errors_fail_with_their_status() {
    let w = World::new("");
    for (status, reason) in [
        (500, "Internal Server Error"),
        (502, "Bad Gateway"),
        (503, "Service Unavailable"),
    ] {
        let raw = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops\n"
        );
        w.origin.answer(Answer::Raw(raw.into_bytes(), End::Close));
        w.fails(&[&format!("answered {status}")]);
    }
    w.recovers();
}

#[test]
fn no_answer_or_garbage_instead_of_http_fails() {
    let w = World::new("");
    w.origin.answer(Answer::Raw(Vec::new(), End::Close));
    w.fails(&["cannot reach"]);
    w.origin.answer(Answer::Raw(Vec::new(), End::Reset));
    w.fails(&["cannot reach"]);
    w.origin.answer(Answer::Raw(
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
        End::Close,
    ));
    w.fails(&["cannot reach"]);
    w.recovers();
}

#[test]
fn stall_before_the_response_head_times_out() {
    let w = World::new("stall-timeout = 1\n");
    w.origin.answer(Answer::Raw(Vec::new(), End::Stall));

    let out = w.fails(&["timed out", "stall-timeout"]);
    assert!(
        out.elapsed < Duration::from_secs(15),
        "stall-timeout = 1 took {:?}",
        out.elapsed
    );
    w.recovers();
}

#[test]
fn stall_mid_body_times_out() {
    let w = World::new("stall-timeout = 1\n");
    let mut raw = head(w.v2.len());
    raw.extend_from_slice(&w.v2[..w.v2.len() / 3]);
    w.origin.answer(Answer::Raw(raw, End::Stall));

    let out = w.fails(&["stalled", "stall-timeout"]);
    assert!(
        out.elapsed < Duration::from_secs(15),
        "stall-timeout = 1 took {:?}",
        out.elapsed
    );
    w.recovers();
}

#[test]
fn slow_but_steady_download_succeeds() {
    let env = Env::new();
    env.config("stall-timeout = 1\n");
    let origin = Origin::start();
    let v1 = zip_bytes(&app("v1"));
    // About 3 s in all, far beyond stall-timeout, but never silent for more than 0.1 s.
    let chunk = v1.len() / 30 + 1;
    origin.publish(&etag("v1"), v1.clone());
    origin.answer(Answer::Serve {
        chunk,
        pause: Duration::from_millis(100),
    });

    let out = env.fetch(&origin.url("app.zip"));

    out.expect_code(0);
    assert!(
        out.elapsed > Duration::from_millis(2500),
        "the download was slow: {:?}",
        out.elapsed
    );
    assert_eq!(origin.sent(), v1.len() as u64, "the whole body was sent");
    assert_tree(&env.live_release(), &expected_tree(&app("v1")));
    env.assert_clean();
}

#[test]
fn redirect_loops_fail_after_a_bounded_number_of_requests() {
    let w = World::new("");
    let to_self = format!(
        "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        w.url
    );
    w.origin
        .answer(Answer::Raw(to_self.into_bytes(), End::Close));
    let before = w.origin.requests().len();

    w.fails(&["too many redirects"]);

    let followed = w.origin.requests().len() - before;
    assert!(
        (2..=12).contains(&followed),
        "a loop is followed a bounded number of times, not {followed}"
    );
    // A two-step loop: /a → /b → /a.
    let ping_pong = "HTTP/1.1 301 Moved Permanently\r\nLocation: /b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    w.origin
        .answer(Answer::Raw(ping_pong.as_bytes().to_vec(), End::Close));
    w.fails(&["too many redirects"]);
    w.recovers();
}

// ---------------------------------------------------------------------------------------------
// TLS

/// `openssl` with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl s_server -WWW` serving the files of its directory over TLS; killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path, cert: &str, key: &str) -> TlsServer {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("openssl")
                .args(["s_server", "-quiet", "-WWW", "-cert", cert, "-key", key])
                .arg("-accept")
                .arg(format!("127.0.0.1:{port}"))
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start openssl s_server");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut exited = false;
            let up = eventually(Duration::from_secs(10), || {
                exited = child.try_wait().expect("try_wait").is_some();
                exited || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if up && !exited {
                return TlsServer { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server did not start");
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A test CA, a server certificate it signed for 127.0.0.1, another for a different host,
/// and a self-signed one for 127.0.0.1; in `dir`.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=repo-deploy test CA",
        ],
    ]
    .concat();
    openssl(dir, &ca);
    for (name, san) in [
        ("good", "IP:127.0.0.1"),
        ("wronghost", "DNS:wrong-host.invalid"),
    ] {
        fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .expect("write extensions");
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let request = [
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=repo-deploy test server",
            ],
        ]
        .concat();
        openssl(dir, &request);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
    }
    let selfsigned = [
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    ]
    .concat();
    openssl(dir, &selfsigned);
}

#[test]
fn tls_certificates_that_do_not_verify_are_refused() {
    if !have_openssl() {
        eprintln!("skipped: the TLS fault test needs the openssl command");
        return;
    }
    let env = Env::new();
    let tls = env.root.join("tls");
    fs::create_dir(&tls).expect("mkdir tls");
    make_certificates(&tls);
    fs::write(tls.join("app.zip"), zip_bytes(&app("v2"))).expect("write app.zip");
    let ca = tls.join("ca.pem");

    // A local v1 is live; the HTTPS remote offers v2.
    let local = env.root.join("v1.zip");
    zip(&local, &app("v1"));
    env.fetch(local.to_str().expect("utf8")).expect_code(0);
    let v1 = env.live_release();
    let releases = env.releases();
    let unchanged = |out: &Output, what: &str| {
        out.expect_code(1);
        let err = out.stderr.to_lowercase();
        assert!(
            err.contains("certificate") && err.contains("127.0.0.1"),
            "{what}: the error names the certificate problem and the remote\n{}",
            out.dump()
        );
        assert_eq!(env.live_release(), v1, "{what}: current unchanged");
        assert_eq!(env.releases(), releases, "{what}: no release added");
        env.assert_clean();
    };

    // 1. Self-signed, trusted by no one.
    let server = TlsServer::start(&tls, "self.pem", "self.key");
    let out = env.fetch(&server.url("app.zip"));
    unchanged(&out, "self-signed");
    drop(server);

    // 2. Signed by a CA the agent does not know.
    let server = TlsServer::start(&tls, "good.pem", "good.key");
    let out = env.fetch(&server.url("app.zip"));
    unchanged(&out, "unknown CA");

    // 3. A trusted CA, but the certificate names another host.
    let wrong = TlsServer::start(&tls, "wronghost.pem", "wronghost.key");
    let out = env
        .cmd()
        .args(["-f", "-r", &wrong.url("app.zip")])
        .env("SSL_CERT_FILE", &ca)
        .run();
    unchanged(&out, "wrong host");
    drop(wrong);

    // Control, and the next check recovering: the same server, its CA trusted, deploys v2.
    let out = env
        .cmd()
        .args(["-f", "-r", &server.url("app.zip")])
        .env("SSL_CERT_FILE", &ca)
        .run();
    out.expect_code(0);
    assert_tree(&env.live_release(), &expected_tree(&app("v2")));
    env.assert_clean();
}
