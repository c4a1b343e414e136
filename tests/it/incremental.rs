//! Incremental updates (issue 6): files that did not change are taken from the live release,
//! and over HTTP with ranges only the ZIP's tail and the changed entries are downloaded.
//! Through the real binary against a real nginx (which answers ranges; `/norange/` does not),
//! and the scripted `Stub` for what nginx will not do (an ETag that changes between requests).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::*;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime};

/// Files in the test bundle: big incompressible ones (stored), small text ones (deflated).
const BIG: usize = 150;
const SMALL: usize = 20;
const BIG_SIZE: usize = 64 * 1024;

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One file of a bundle: name, content, mode, DOS mtime (seconds of the minute, even).
#[derive(Debug, Clone)]
struct F {
    name: String,
    data: Vec<u8>,
    mode: u32,
    revision: u32,
}

/// The bundle where file `i` is at `revision(i)` (0 for the first version).
fn bundle(revision: impl Fn(usize) -> u32) -> Vec<F> {
    let mut files = Vec::new();
    for i in 0..BIG {
        let r = revision(i);
        files.push(F {
            name: format!("data/d{}/f{i:03}.bin", i % 7),
            data: noise((i as u64) << 8 | u64::from(r), BIG_SIZE),
            mode: 0o644,
            revision: r,
        });
    }
    for i in 0..SMALL {
        let r = revision(BIG + i);
        files.push(F {
            name: format!("text/t{i:02}.txt"),
            data: format!("text file {i} revision {r}\n")
                .repeat(40)
                .into_bytes(),
            mode: 0o644,
            revision: r,
        });
    }
    let r = revision(BIG + SMALL);
    files.push(F {
        name: "bin/run.sh".into(),
        data: format!("#!/bin/sh\necho {r}\n").into_bytes(),
        mode: 0o755,
        revision: r,
    });
    files
}

/// The ZIP of a bundle, plus a symlink and an empty directory.
fn zip_of(files: &[F]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for f in files {
        let method = if f.data.len() >= 4096 {
            CompressionMethod::Stored
        } else {
            CompressionMethod::Deflated
        };
        let when = DateTime::from_date_and_time(2024, 1, 1 + (f.revision % 27) as u8, 12, 0, 0)
            .expect("date");
        let opts = SimpleFileOptions::default()
            .compression_method(method)
            .unix_permissions(f.mode)
            .last_modified_time(when);
        w.start_file(f.name.as_str(), opts).expect("start_file");
        w.write_all(&f.data).expect("write");
    }
    let when = DateTime::from_date_and_time(2024, 1, 1, 12, 0, 0).expect("date");
    w.add_symlink(
        "latest",
        "data/d0/f000.bin",
        SimpleFileOptions::default().last_modified_time(when),
    )
    .expect("symlink");
    w.add_directory(
        "var/empty/",
        SimpleFileOptions::default().last_modified_time(when),
    )
    .expect("dir");
    w.finish().expect("finish").into_inner()
}

fn v1() -> Vec<F> {
    bundle(|_| 0)
}

/// v1 with file `changed` at revision 1.
fn one_changed(changed: usize) -> Vec<F> {
    bundle(|i| u32::from(i == changed))
}

/// Relative path → (content or link target, mode, mtime) of every entry under `dir`; the
/// mtime of directories is left out (implied ones get the time they were made).
fn snapshot(dir: &Path) -> BTreeMap<String, (Node, i64)> {
    let mut out = BTreeMap::new();
    for (path, node) in tree(dir) {
        let mtime = match node {
            Node::Dir => 0,
            _ => fs::symlink_metadata(dir.join(&path))
                .expect("lstat")
                .mtime(),
        };
        out.insert(path, (node, mtime));
    }
    out
}

/// Two snapshots are equal; on failure, name the paths that differ (not the contents).
#[track_caller]
fn assert_same(
    actual: &BTreeMap<String, (Node, i64)>,
    expected: &BTreeMap<String, (Node, i64)>,
    what: &str,
) {
    let differ: Vec<&String> = actual
        .keys()
        .chain(expected.keys())
        .filter(|k| actual.get(*k) != expected.get(*k))
        .collect();
    assert!(differ.is_empty(), "{what}: these paths differ: {differ:?}");
}

/// The update took `n` files from the live release, by its own log.
#[track_caller]
fn assert_reused(out: &Output, n: usize) {
    let said = format!("({n} taken from the live release)");
    assert!(out.stderr.contains(&said), "{said}: {}", out.stderr);
}

/// The release `reuse = off` makes of `bytes` over a fresh deploy directory: the reference.
fn full_unpack(bytes: &[u8]) -> BTreeMap<String, (Node, i64)> {
    let env = Env::new();
    env.config("reuse = off\n");
    let zip = env.root.join("full.zip");
    write_atomic(&zip, bytes);
    env.fetch(zip.to_str().expect("utf8")).expect_code(0);
    snapshot(&env.live_release())
}

/// An environment with nginx serving v1 at `/app.zip`, deployed; `reuse` as given.
fn live_v1(reuse: &str) -> (Env, Nginx, Vec<u8>) {
    let env = Env::new();
    env.config(&format!("reuse = {reuse}\n"));
    let nginx = Nginx::start_ranged(&env.root);
    let bytes = zip_of(&v1());
    nginx.publish("app.zip", &bytes);
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    (env, nginx, bytes)
}

/// Bytes nginx sent for the log lines from `from` on.
fn sent_since(nginx: &Nginx, from: usize) -> (u64, Vec<RangedAccess>) {
    let lines: Vec<RangedAccess> = nginx.ranged_log().into_iter().skip(from).collect();
    (lines.iter().map(|l| l.sent).sum(), lines)
}

#[test]
fn a_one_file_update_over_http_downloads_a_small_fraction_and_equals_a_full_unpack() {
    let (env, nginx, _) = live_v1("copy");
    let old = env.live_release();
    let old_snapshot = snapshot(&old);
    let v2 = zip_of(&one_changed(42));
    nginx.publish("app.zip", &v2);
    let mark = nginx.ranged_log().len();

    let out = env.fetch(&nginx.url("app.zip"));

    out.expect_code(0);
    let (sent, lines) = sent_since(&nginx, mark);
    assert!(
        sent * 100 < v2.len() as u64 * 3,
        "sent {sent} bytes of a {}-byte ZIP: {lines:#?}",
        v2.len()
    );
    assert_eq!(
        lines[0].status, 206,
        "the conditional GET asked for the tail: {lines:#?}"
    );
    assert!(
        lines[0].range.starts_with("bytes=-") && !lines[0].if_none_match.is_empty(),
        "{lines:#?}"
    );
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.status == 206 && !l.if_match.is_empty() && l.range.starts_with("bytes=")),
        "every further request is a range with If-Match: {lines:#?}"
    );
    assert!(
        out.stderr.contains("incremental download"),
        "{}",
        out.stderr
    );
    assert_reused(&out, BIG + SMALL); // every file but the changed one
    let new = env.live_release();
    assert_ne!(new, old);
    assert_same(
        &snapshot(&new),
        &full_unpack(&v2),
        "byte-identical to a full unpack, modes and mtimes included",
    );
    assert_same(
        &snapshot(&old),
        &old_snapshot,
        "the old release is untouched",
    );
    env.assert_clean();
    // The changed file came from the ZIP, the others are copies (not links) of the old release.
    let ino = |dir: &Path, name: &str| fs::metadata(dir.join(name)).expect("stat").ino();
    assert_ne!(ino(&new, "data/d1/f001.bin"), ino(&old, "data/d1/f001.bin"));
    let manifests = env.deploy.join("manifests");
    let mut names: Vec<String> = fs::read_dir(&manifests)
        .expect("manifests")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let releases: Vec<String> = env
        .releases()
        .iter()
        .map(|r| format!("{}.jsonl", r.file_name().expect("name").to_string_lossy()))
        .collect();
    assert_eq!(
        names, releases,
        "one manifest per release, outside releases/"
    );
}

#[test]
fn writing_into_the_new_release_leaves_older_releases_untouched() {
    let (env, nginx, _) = live_v1("copy");
    let old = env.live_release();
    let before = snapshot(&old);
    nginx.publish("app.zip", &zip_of(&one_changed(7)));
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let new = env.live_release();

    for (path, (node, _)) in snapshot(&new) {
        if let Node::File(..) = node {
            let p = new.join(&path);
            let mut perms = fs::metadata(&p).expect("stat").permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
            fs::set_permissions(&p, perms).expect("chmod");
            fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .expect("open")
                .write_all(b"scribble")
                .expect("write");
        }
    }

    assert_same(
        &snapshot(&old),
        &before,
        "no file of the old release changed",
    );
}

#[test]
fn hardlink_mode_shares_the_unchanged_files_with_the_live_release() {
    let (env, nginx, _) = live_v1("hardlink");
    let old = env.live_release();
    let v2 = zip_of(&one_changed(3));
    nginx.publish("app.zip", &v2);
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let new = env.live_release();

    let ino = |dir: &Path, name: &str| fs::metadata(dir.join(name)).expect("stat").ino();
    assert_eq!(
        ino(&new, "data/d1/f001.bin"),
        ino(&old, "data/d1/f001.bin"),
        "shared"
    );
    assert_ne!(
        ino(&new, "data/d3/f003.bin"),
        ino(&old, "data/d3/f003.bin"),
        "the changed file is new"
    );
    assert_same(&snapshot(&new), &full_unpack(&v2), "hardlinked release");
}

#[test]
fn a_local_zip_update_takes_unchanged_files_from_the_live_release() {
    let env = Env::new();
    let zip = env.root.join("app.zip");
    write_atomic(&zip, &zip_of(&v1()));
    env.fetch(zip.to_str().expect("utf8")).expect_code(0);
    let old = env.live_release();
    let v2 = zip_of(&one_changed(100));
    write_atomic(&zip, &v2);

    let out = env.fetch(zip.to_str().expect("utf8"));

    out.expect_code(0);
    assert_reused(&out, BIG + SMALL); // every file but the changed one

    assert_same(
        &snapshot(&env.live_release()),
        &full_unpack(&v2),
        "local update",
    );
    assert_same(
        &snapshot(&old),
        &full_unpack(&zip_of(&v1())),
        "the old release",
    );
    env.assert_clean();
}

#[test]
fn a_restrictive_umask_does_not_change_the_modes_of_new_or_reused_files() {
    // Under umask 077 a file created with mode 0666 gets 0600: the agent must set the
    // archive's bits, both on files it unpacks and on files it copies from the live release.
    let env = Env::new();
    let zip = env.root.join("app.zip");
    let files = |changed: &str| {
        vec![
            ("shared.txt", "same in both versions\n".to_string(), 0o666),
            ("run.sh", "#!/bin/sh\necho hi\n".to_string(), 0o777),
            ("group.txt", "group readable\n".to_string(), 0o640),
            ("other.txt", "odd bits\n".to_string(), 0o604),
            ("changed.txt", changed.to_string(), 0o664),
        ]
    };
    let zip_of = |files: &[(&str, String, u32)]| {
        let files: Vec<(&str, &str, u32)> =
            files.iter().map(|(n, c, m)| (*n, c.as_str(), *m)).collect();
        zip_files(&zip, &files)
    };
    let modes = |dir: &Path| -> BTreeMap<String, u32> {
        tree(dir)
            .into_iter()
            .filter_map(|(path, node)| match node {
                Node::File(_, mode) => Some((path, mode)),
                _ => None,
            })
            .collect()
    };
    let expected: BTreeMap<String, u32> = files("")
        .iter()
        .map(|(n, _, m)| (n.to_string(), *m))
        .collect();
    let remote = zip.to_str().expect("utf8").to_string();

    zip_of(&files("v1\n"));
    env.cmd()
        .args(["-f", "-r", &remote])
        .umask(0o077)
        .run()
        .expect_code(0);
    let old = env.live_release();
    assert_eq!(modes(&old), expected, "a first deploy under umask 077");

    zip_of(&files("v2\n"));
    let out = env
        .cmd()
        .args(["-f", "-r", &remote, "-v"])
        .umask(0o077)
        .run();
    out.expect_code(0);
    let new = env.live_release();
    assert_ne!(new, old);
    assert_reused(&out, 4); // the four unchanged files, copied from v1
    assert_eq!(modes(&new), expected, "an update under umask 077");
    let ino = |dir: &Path| fs::metadata(dir.join("shared.txt")).expect("stat").ino();
    assert_ne!(ino(&new), ino(&old), "copied, not linked");
    assert_eq!(
        fs::read(new.join("shared.txt")).expect("read"),
        b"same in both versions\n"
    );
    assert_eq!(modes(&old), expected, "the old release keeps its modes");
}

/// v1 (big) with one extra entry appended by `extra`: big enough to go through the ranged
/// path, hostile where the test says.
fn v1_plus(extra: impl FnOnce(&mut zip::ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for f in one_changed(5) {
        let when = DateTime::from_date_and_time(2024, 1, 1 + (f.revision % 27) as u8, 12, 0, 0)
            .expect("date");
        let opts = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .unix_permissions(f.mode)
            .last_modified_time(when);
        w.start_file(f.name.as_str(), opts).expect("start_file");
        w.write_all(&f.data).expect("write");
    }
    extra(&mut w);
    w.finish().expect("finish").into_inner()
}

#[test]
fn a_hostile_zip_fails_the_same_way_through_the_ranged_path() {
    let crc_lie = {
        // A changed entry whose bytes do not match its CRC-32 (patched after writing).
        let mut bytes = v1_plus(|w| {
            w.start_file(
                "corrupt.bin",
                SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
            )
            .expect("start");
            w.write_all(&[b'A'; 3000]).expect("write");
        });
        let at = bytes
            .windows(3000)
            .position(|w| w == [b'A'; 3000])
            .expect("data");
        bytes[at + 1500] = b'B';
        bytes
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            v1_plus(|w| {
                w.start_file("../../../canary/evil", SimpleFileOptions::default())
                    .expect("start");
                w.write_all(b"evil").expect("write");
            }),
            "contains a `..` component",
        ),
        (
            "escaping symlink",
            v1_plus(|w| {
                w.add_symlink("up", "../../..", SimpleFileOptions::default())
                    .expect("symlink");
            }),
            "leaves the release",
        ),
        ("crc", crc_lie, "CRC-32 mismatch"),
    ];
    for (name, bytes, expect) in cases {
        let mut errors = Vec::new();
        for reuse in ["copy", "off"] {
            let (env, nginx, _) = live_v1(reuse);
            fs::create_dir(env.root.join("canary")).expect("canary");
            let live = env.live_release();
            let before = snapshot(&live);
            nginx.publish("app.zip", &bytes);
            let mark = nginx.ranged_log().len();
            let out = env.fetch(&nginx.url("app.zip"));
            out.expect_code(1);
            let (_, lines) = sent_since(&nginx, mark);
            let ranged = lines
                .iter()
                .any(|l| l.status == 206 && !l.if_match.is_empty());
            assert_eq!(
                ranged,
                reuse == "copy",
                "{name}, reuse={reuse}: ranged requests: {lines:#?}"
            );
            assert!(
                out.stderr.contains(expect),
                "{name}, reuse={reuse}: {}",
                out.stderr
            );
            assert_eq!(env.live_release(), live, "{name}: current unchanged");
            assert_same(&snapshot(&live), &before, name);
            assert_eq!(env.releases(), vec![live.clone()], "{name}: no new release");
            assert!(
                fs::read_dir(env.root.join("canary"))
                    .expect("ls")
                    .next()
                    .is_none(),
                "{name}: nothing escaped"
            );
            env.assert_clean();
            let line = out
                .stderr
                .lines()
                .find(|l| l.contains(expect))
                .expect("error line")
                .to_string();
            // The entry and the problem, without the version and paths that differ per run.
            errors.push(line[line.find("entry").unwrap_or(0)..].to_string());
        }
        assert_eq!(
            errors[0], errors[1],
            "{name}: the same error through both paths"
        );
    }
}

#[test]
fn a_server_without_ranges_gets_one_full_download() {
    let (env, nginx, bytes) = live_v1("copy");
    let _ = bytes;
    // The same file through /norange/ (max_ranges 0): deploy v1 there first.
    let env2 = Env::new();
    env2.fetch(&nginx.url("norange/app.zip")).expect_code(0);
    let v2 = zip_of(&one_changed(9));
    nginx.publish("app.zip", &v2);
    let mark = nginx.ranged_log().len();

    env2.fetch(&nginx.url("norange/app.zip")).expect_code(0);

    let (sent, lines) = sent_since(&nginx, mark);
    assert_eq!(lines.len(), 1, "one request: {lines:#?}");
    assert_eq!(lines[0].status, 200);
    assert!(
        lines[0].range.starts_with("bytes=-"),
        "it was asked for a range: {lines:#?}"
    );
    assert!(sent >= v2.len() as u64, "the whole ZIP: {sent}");
    assert_same(
        &snapshot(&env2.live_release()),
        &full_unpack(&v2),
        "no ranges",
    );
    env2.assert_clean();
    drop(env);
}

#[test]
fn a_stub_server_that_ignores_ranges_gets_a_full_download() {
    let v1 = zip_of(&v1());
    let v2 = zip_of(&one_changed(11));
    let stub = Stub::start(vec![
        ok_reply(&v1, &["ETag: \"v1\"", "Accept-Ranges: bytes"]),
        ok_reply(&v2, &["ETag: \"v2\""]),
    ]);
    let env = Env::new();
    env.fetch(&stub.url("app.zip")).expect_code(0);

    env.fetch(&stub.url("app.zip")).expect_code(0);

    assert!(
        stub.header(1, "Range")
            .is_some_and(|r| r.starts_with("bytes=-")),
        "{:?}",
        stub.requests()
    );
    assert_eq!(stub.requests().len(), 2);
    assert_same(
        &snapshot(&env.live_release()),
        &full_unpack(&v2),
        "ignored ranges",
    );
    env.assert_clean();
}

/// A `206` answer with `bytes[start..]` of a `total`-byte object.
fn partial_reply(bytes: &[u8], start: usize, etag: &str) -> Reply {
    let body = &bytes[start..];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
        body.len(),
        bytes.len() - 1,
        bytes.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Reply::Raw(out)
}

#[test]
fn an_etag_that_changes_between_requests_falls_back_to_a_full_download() {
    let v1 = zip_of(&v1());
    let v2 = zip_of(&one_changed(20));
    let v3 = zip_of(&one_changed(21));
    // The tail of v2 (its whole central directory), then the object changes: If-Match fails.
    let tail_start = v2.len() - 64 * 1024;
    let stub = Stub::start(vec![
        ok_reply(&v1, &["ETag: \"v1\""]),
        partial_reply(&v2, tail_start, "\"v2\""),
        Reply::Raw(
            b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
        ok_reply(&v3, &["ETag: \"v3\""]),
    ]);
    let env = Env::new();
    env.fetch(&stub.url("app.zip")).expect_code(0);

    let out = env.fetch(&stub.url("app.zip"));

    out.expect_code(0);
    assert_eq!(
        stub.header(2, "If-Match").as_deref(),
        Some("\"v2\""),
        "{:?}",
        stub.requests()
    );
    assert!(
        stub.header(3, "Range").is_none(),
        "the fallback is a plain GET: {:?}",
        stub.requests()
    );
    assert_eq!(stub.requests().len(), 4);
    assert_same(
        &snapshot(&env.live_release()),
        &full_unpack(&v3),
        "after the fallback",
    );
    let state = fs::read_to_string(env.deploy.join("state.json")).expect("state");
    assert!(
        state.contains("\"v3\""),
        "the version is v3's ETag: {state}"
    );
    env.assert_clean();
}

#[test]
fn when_most_of_the_bundle_changed_the_whole_zip_is_downloaded() {
    let (env, nginx, _) = live_v1("copy");
    let v2 = zip_of(&bundle(|_| 1));
    nginx.publish("app.zip", &v2);
    let mark = nginx.ranged_log().len();

    env.fetch(&nginx.url("app.zip")).expect_code(0);

    let (_, lines) = sent_since(&nginx, mark);
    assert_eq!(
        lines.iter().map(|l| l.status).collect::<Vec<_>>(),
        vec![206, 200],
        "the tail, then everything: {lines:#?}"
    );
    assert_same(
        &snapshot(&env.live_release()),
        &full_unpack(&v2),
        "full download",
    );
}

#[test]
fn an_unchanged_check_is_one_request_without_a_body() {
    let (env, nginx, _) = live_v1("copy");
    let mark = nginx.ranged_log().len();
    let out = env.fetch(&nginx.url("app.zip"));
    out.expect_code(0);
    let (_, lines) = sent_since(&nginx, mark);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0].status, 304);
    assert!(lines[0].sent < 1024, "headers only: {lines:#?}");
}

#[test]
fn a_republished_identical_zip_is_recognised_from_its_central_directory() {
    let (env, nginx, bytes) = live_v1("copy");
    let live = env.live_release();
    env.post_hook(
        "50-mark",
        &format!("touch {}", env.out("post-ran").display()),
    );
    // The same bytes under a new modification time: a new ETag.
    nginx.publish("app.zip", &bytes);
    let mark = nginx.ranged_log().len();

    let out = env.fetch(&nginx.url("app.zip"));

    out.expect_code(0);
    assert!(out.stderr.contains("unchanged"), "{}", out.stderr);
    assert_eq!(env.live_release(), live);
    assert_eq!(env.releases(), vec![live]);
    assert!(!env.out("post-ran").exists(), "no hook ran");
    let (sent, lines) = sent_since(&nginx, mark);
    assert!(sent * 10 < bytes.len() as u64, "only the tail: {lines:#?}");
    // The next check with the new ETag is a plain 304.
    let mark = nginx.ranged_log().len();
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    assert_eq!(
        sent_since(&nginx, mark)
            .1
            .iter()
            .map(|l| l.status)
            .collect::<Vec<_>>(),
        vec![304]
    );
}

#[test]
fn manifests_are_removed_with_their_releases_and_not_written_with_reuse_off() {
    let env = Env::new();
    env.config("keep = 2\n");
    let zip = env.root.join("app.zip");
    for i in 0..4 {
        write_atomic(&zip, &zip_of(&one_changed(i)));
        env.fetch(zip.to_str().expect("utf8")).expect_code(0);
    }
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let releases: Vec<String> = names(&env.releases_dir())
        .iter()
        .map(|n| format!("{n}.jsonl"))
        .collect();
    assert_eq!(releases.len(), 2);
    assert_eq!(names(&env.deploy.join("manifests")), releases);
    env.assert_clean();

    env.config("keep = 2\nreuse = off\n");
    write_atomic(&zip, &zip_of(&one_changed(50)));
    env.fetch(zip.to_str().expect("utf8")).expect_code(0);
    let live = env.live_release();
    let live_manifest = format!(
        "{}.jsonl",
        live.file_name().expect("name").to_string_lossy()
    );
    assert!(
        !names(&env.deploy.join("manifests")).contains(&live_manifest),
        "reuse = off writes no manifest"
    );
}

// ---------------------------------------------------------------------------------------------
// S3 (moto in server mode, without authentication: this test is about ranges, tests/s3.rs is
// about credentials)

/// A moto server on a free port, killed on drop; its request log in `log`.
struct Moto {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Moto {
    fn start(root: &Path) -> Moto {
        let port = free_port();
        let log = root.join("moto.log");
        let out = fs::File::create(&log).expect("moto log");
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start moto_server (pip install 'moto[server]')");
        let up = eventually(std::time::Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "moto did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Moto { child, port, log }
    }

    /// Put `bytes` at `bucket/key` with boto3 (creating the bucket), as the `testing` keys.
    fn put(&self, root: &Path, bucket: &str, key: &str, bytes: &[u8]) {
        let file = root.join("upload.bin");
        fs::write(&file, bytes).expect("write upload");
        let script = "import boto3, sys\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n\
            try: s3.create_bucket(Bucket=sys.argv[2])\n\
            except s3.exceptions.BucketAlreadyOwnedByYou: pass\n\
            s3.put_object(Bucket=sys.argv[2], Key=sys.argv[3], Body=open(sys.argv[4], 'rb').read())\n";
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                script,
                &format!("http://127.0.0.1:{}", self.port),
                bucket,
                key,
            ])
            .arg(&file)
            .env_remove("AWS_PROFILE")
            .status()
            .expect("python3");
        assert!(status.success(), "upload with boto3 failed");
    }

    /// The statuses of the GETs of `path` moto logged so far.
    fn gets(&self, path: &str) -> Vec<u16> {
        let needle = format!("\"GET {path}");
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_once(&needle)
                    .and_then(|(_, rest)| rest.split_once("\" "))
                    .and_then(|(_, after)| after.split_whitespace().next()?.parse().ok())
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_one_file_update_from_s3_fetches_only_ranges() {
    let env = Env::new();
    let moto = Moto::start(&env.root);
    env.config(&format!(
        "s3-endpoint = http://127.0.0.1:{}\naws-access-key = testing\naws-secret-key = testing\naws-region = us-east-1\n",
        moto.port
    ));
    let remote = "s3://bucket/app.zip";
    moto.put(&env.root, "bucket", "app.zip", &zip_of(&v1()));
    env.cmd()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["-f", "-r", remote])
        .run()
        .expect_code(0);
    let v2 = zip_of(&one_changed(77));
    moto.put(&env.root, "bucket", "app.zip", &v2);

    let out = env
        .cmd()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["-f", "-r", remote])
        .run();

    out.expect_code(0);
    assert!(
        out.stderr.contains("incremental download"),
        "{}",
        out.stderr
    );
    let ok = eventually(std::time::Duration::from_secs(10), || {
        moto.gets("/bucket/app.zip").len() >= 3
    });
    let gets = moto.gets("/bucket/app.zip");
    assert!(ok, "{gets:?}");
    assert_eq!(
        gets[0], 200,
        "the first deploy downloads everything: {gets:?}"
    );
    assert!(
        gets[1..].iter().all(|&s| s == 206),
        "then only ranges: {gets:?}"
    );
    assert_same(&snapshot(&env.live_release()), &full_unpack(&v2), "from S3");
    env.assert_clean();
}
