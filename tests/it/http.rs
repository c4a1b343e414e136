//! HTTP remotes, served by a real nginx on 127.0.0.1: first deploy, change detection with
//! `If-None-Match`, credentials in the URL, and the failures that must leave `current` alone.

use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::common::*;

/// A release with an executable, private and setuid/setgid files, an empty directory and a
/// symlink inside the release.
fn app(version: &str) -> Vec<Entry> {
    vec![
        dir("bin/", 0o755),
        file("bin/run.sh", "#!/bin/sh\necho run\n", 0o755),
        file("bin/suid", "setuid binary", 0o4755),
        file("bin/sgid", "setgid binary", 0o2750),
        file("config/app.conf", "port = 8080\n", 0o640),
        file("secret.key", "key", 0o600),
        dir("empty/", 0o755),
        link("run", "bin/run.sh"),
        file("version.txt", format!("{version}\n"), 0o644),
    ]
}

/// Hooks that append `<phase> <DEPLOY_VERSION>` to out/hooks.log.
fn logging_hooks(env: &Env) {
    let log = env.out("hooks.log");
    let body = format!(
        "echo \"$DEPLOY_PHASE $DEPLOY_VERSION\" >> {}",
        log.display()
    );
    env.pre_hook("50-log", &body);
    env.post_hook("50-log", &body);
}

fn version_of_live(env: &Env) -> String {
    fs::read_to_string(env.live_release().join("version.txt"))
        .expect("version.txt in the live release")
}

#[test]
fn first_deploy_unpacks_exact_files_keeps_modes_and_links_and_drops_setuid() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    let entries = app("v1");
    nginx.publish_zip("app.zip", &entries);

    env.fetch(&nginx.url("app.zip")).expect_code(0);

    env.assert_current_is_relative_link();
    let live = env.live_release();
    let mut expected = expected_tree(&entries);
    // setuid and setgid are dropped, the other bits kept.
    expected.insert(
        "bin/suid".into(),
        Node::File(b"setuid binary".to_vec(), 0o755),
    );
    expected.insert(
        "bin/sgid".into(),
        Node::File(b"setgid binary".to_vec(), 0o750),
    );
    assert_tree(&live, &expected);
    assert_eq!(env.releases(), vec![live.clone()]);
    env.assert_clean();

    let log = nginx.access_log();
    assert_eq!(log.len(), 1, "one request: {log:?}");
    assert_eq!(
        (log[0].status, log[0].method.as_str(), log[0].uri.as_str()),
        (200, "GET", "/app.zip")
    );
    assert_eq!(
        log[0].if_none_match, "",
        "nothing to validate on a first deploy"
    );
}

#[test]
fn unchanged_remote_is_validated_with_if_none_match_and_not_downloaded_again() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    logging_hooks(&env);
    let (etag, _) = nginx.publish_zip("app.zip", &app("v1"));

    env.fetch(&nginx.url("app.zip")).expect_code(0);
    assert_eq!(
        env.out_lines("hooks.log"),
        vec![format!("pre {etag}"), format!("post {etag}")],
        "DEPLOY_VERSION is the ETag without quotes"
    );
    let live = env.live_release();
    env.clear_out("hooks.log");

    env.fetch(&nginx.url("app.zip")).expect_code(0);

    let log = nginx.access_log();
    let second: Vec<_> = log.iter().skip(1).collect();
    assert!(
        !second.is_empty(),
        "the second run asked the server: {log:?}"
    );
    for a in &second {
        assert_eq!(
            a.status, 304,
            "the second run must get 304 Not Modified: {log:?}"
        );
        assert_eq!(a.bytes, 0, "no body on the second run: {log:?}");
        assert_eq!(
            a.if_none_match,
            format!("\"{etag}\""),
            "the second run carries the ETag: {log:?}"
        );
    }
    assert_eq!(
        env.out_lines("hooks.log"),
        Vec::<String>::new(),
        "no hook runs when nothing changed"
    );
    assert_eq!(env.live_release(), live);
    assert_eq!(env.releases(), vec![live]);
    env.assert_clean();
}

#[test]
fn changed_zip_deploys_a_new_release_and_keeps_the_previous_one() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let first = env.live_release();

    let mut v2 = app("v2");
    v2.push(file("new-in-v2.txt", "hello", 0o644));
    nginx.publish_zip("app.zip", &v2);
    env.fetch(&nginx.url("app.zip")).expect_code(0);

    let second = env.live_release();
    assert_ne!(second, first, "a new release directory");
    assert_eq!(version_of_live(&env), "v2\n");
    assert!(second.join("new-in-v2.txt").is_file());
    assert!(
        first.join("version.txt").is_file(),
        "the previous release stays on disk"
    );
    assert_eq!(
        fs::read_to_string(first.join("version.txt")).expect("v1"),
        "v1\n"
    );
    let mut both = vec![first, second];
    both.sort();
    assert_eq!(env.releases(), both);
    env.assert_current_is_relative_link();
    env.assert_clean();

    // The new version is remembered: the next check is a 304.
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let log = nginx.access_log();
    assert_eq!(log.last().map(|a| a.status), Some(304), "{log:?}");
}

#[test]
fn id_is_substituted_into_the_remote_url() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("web-7/app.zip", &app("v1"));

    env.run(&["-f", "-r", &nginx.url("{id}/app.zip"), "-i", "web-7"])
        .expect_code(0);

    assert_eq!(version_of_live(&env), "v1\n");
    let uris: Vec<String> = nginx.access_log().into_iter().map(|a| a.uri).collect();
    assert_eq!(uris, vec!["/web-7/app.zip".to_string()]);
}

#[test]
fn basic_auth_from_the_url_works_and_the_password_is_never_shown() {
    const PASS: &str = "s3cret-pass";
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[("deployer", PASS)]);
    nginx.publish_zip("private/app.zip", &app("v1"));
    env.pre_hook(
        "10-env",
        &format!("env -0 > {}", env.out("pre.env").display()),
    );
    env.post_hook(
        "10-env",
        &format!("env -0 > {}", env.out("post.env").display()),
    );

    // Without credentials the server refuses.
    let out = env.fetch(&nginx.url("private/app.zip"));
    out.expect_code(1);
    assert!(env.live().is_none());
    env.assert_clean();

    // A wrong password fails and is not printed either.
    let out = env.run(&[
        "-f",
        "-v",
        "-r",
        &nginx.url_with_auth("deployer", "wrong-pass-77", "private/app.zip"),
    ]);
    out.expect_code(1);
    assert!(
        !out.all().contains("wrong-pass-77"),
        "the wrong password leaked:\n{}",
        out.dump()
    );

    let url = nginx.url_with_auth("deployer", PASS, "private/app.zip");
    let first = env.run(&["-f", "-v", "-r", &url]);
    first.expect_code(0);
    assert_eq!(version_of_live(&env), "v1\n");
    let second = env.run(&["-f", "-v", "-r", &url]);
    second.expect_code(0);

    for out in [&first, &second] {
        assert!(
            !out.all().contains(PASS),
            "the password leaked into the output:\n{}",
            out.dump()
        );
    }
    for phase in ["pre", "post"] {
        let vars = read_env_dump(&env.out(&format!("{phase}.env")));
        let remote = vars.get("DEPLOY_REMOTE").cloned().unwrap_or_default();
        assert!(
            remote.contains("***"),
            "{phase}: DEPLOY_REMOTE is masked with ***: {remote:?}"
        );
        assert!(
            remote.contains(&format!("127.0.0.1:{}/private/app.zip", nginx.port)),
            "{phase}: {remote:?}"
        );
        let leaking: Vec<_> = vars
            .iter()
            .filter(|(_, v)| v.contains(PASS))
            .map(|(k, _)| k)
            .collect();
        assert!(
            leaking.is_empty(),
            "{phase}: the password is in the hook environment: {leaking:?}"
        );
    }
    let state = fs::read(env.deploy.join("state.json")).expect("state.json");
    assert!(
        !contains_bytes(&state, PASS.as_bytes()),
        "the password is in state.json"
    );
    assert_eq!(
        files_containing(&env.deploy, PASS.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "files holding the password"
    );
    assert_eq!(
        files_containing(&env.out, PASS.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "hook dumps holding the password"
    );
    let statuses: Vec<u16> = nginx.access_log().iter().map(|a| a.status).collect();
    assert_eq!(
        statuses.last(),
        Some(&304),
        "the authenticated second run is a 304: {statuses:?}"
    );
}

#[test]
fn not_found_fails_naming_the_masked_url_and_keeps_current() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let live = env.live_release();

    let out = env.fetch(&nginx.url_with_auth("deployer", "pw-404-secret", "missing.zip"));

    out.expect_code(1);
    assert!(
        out.stderr.contains("404"),
        "the error names the status:\n{}",
        out.dump()
    );
    let masked = format!("***@127.0.0.1:{}/missing.zip", nginx.port);
    assert!(
        out.stderr.contains(&masked),
        "the error names the masked URL ({masked}):\n{}",
        out.dump()
    );
    assert!(
        !out.all().contains("pw-404-secret"),
        "the password leaked:\n{}",
        out.dump()
    );
    assert_eq!(env.live_release(), live, "current is unchanged");
    assert_eq!(env.releases(), vec![live]);
    env.assert_clean();
}

#[test]
fn unreachable_server_fails_and_keeps_current() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let live = env.live_release();

    let port = free_port();
    let out = env.fetch(&format!("http://127.0.0.1:{port}/app.zip"));

    out.expect_code(1);
    assert!(
        out.elapsed.as_secs() < 30,
        "a refused connection fails fast: {:?}",
        out.elapsed
    );
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")),
        "the error names the remote:\n{}",
        out.dump()
    );
    assert_eq!(env.live_release(), live);
    assert_eq!(env.releases(), vec![live]);
    env.assert_clean();
}

#[test]
fn unreachable_server_on_first_deploy_creates_no_current() {
    let env = Env::new();
    let port = free_port();
    env.fetch(&format!("http://127.0.0.1:{port}/app.zip"))
        .expect_code(1);
    assert!(
        env.live().is_none(),
        "no current after a failed first check"
    );
    assert_eq!(env.releases(), Vec::<std::path::PathBuf>::new());
    env.assert_clean();
}

#[test]
fn corrupt_or_truncated_zip_fails_leaves_nothing_and_keeps_current() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    nginx.publish_zip("app.zip", &app("v1"));
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let live = env.live_release();
    let good = zip_bytes(&app("v2"));

    let bad: [(&str, Vec<u8>); 3] = [
        (
            "not a zip",
            b"<html>this is not a zip archive</html>\n".repeat(20),
        ),
        ("truncated zip", good[..good.len() / 2].to_vec()),
        ("empty body", Vec::new()),
    ];
    for (what, bytes) in bad {
        nginx.publish("app.zip", &bytes);
        let out = env.fetch(&nginx.url("app.zip"));
        assert_eq!(
            out.code(),
            Some(1),
            "{what}: exit 1 expected\n{}",
            out.dump()
        );
        assert_eq!(env.live_release(), live, "{what}: current unchanged");
        assert_eq!(env.releases(), vec![live.clone()], "{what}: no new release");
        env.assert_clean();
    }

    // A good archive afterwards deploys normally.
    nginx.publish("app.zip", &good);
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    assert_eq!(version_of_live(&env), "v2\n");
    env.assert_clean();
}

#[test]
fn restart_does_not_redeploy_what_is_live() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    logging_hooks(&env);
    nginx.publish_zip("app.zip", &app("v1"));
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let live = env.live_release();
    let ino = fs::metadata(&live).expect("release").ino();
    assert!(
        env.deploy.join("state.json").is_file(),
        "the state is kept on disk"
    );
    env.clear_out("hooks.log");

    for _ in 0..2 {
        let out = env.run(&["-f", "-v", "-r", &nginx.url("app.zip")]);
        out.expect_code(0);
        assert_eq!(
            env.out_lines("hooks.log"),
            Vec::<String>::new(),
            "no hook ran:\n{}",
            out.dump()
        );
    }

    assert_eq!(env.live_release(), live);
    assert_eq!(
        fs::metadata(&live).expect("release").ino(),
        ino,
        "the live release was not replaced"
    );
    assert_eq!(env.releases(), vec![live]);
    let statuses: Vec<u16> = nginx.access_log().iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![200, 304, 304]);
    env.assert_clean();
}

#[test]
fn same_bytes_under_a_new_etag_are_downloaded_but_not_redeployed() {
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[]);
    logging_hooks(&env);
    let (old_etag, bytes) = nginx.publish_zip("app.zip", &app("v1"));
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let live = env.live_release();
    env.clear_out("hooks.log");

    // Same content, new mtime: nginx sends a new ETag.
    let new_etag = nginx.publish("app.zip", &bytes);
    assert_ne!(new_etag, old_etag);
    env.fetch(&nginx.url("app.zip")).expect_code(0);

    assert_eq!(env.live_release(), live, "no redeploy of identical content");
    assert_eq!(env.releases(), vec![live]);
    assert_eq!(
        env.out_lines("hooks.log"),
        Vec::<String>::new(),
        "no hook ran"
    );
    env.assert_clean();

    // The new ETag is remembered.
    env.fetch(&nginx.url("app.zip")).expect_code(0);
    let log = nginx.access_log();
    assert_eq!(log.len(), 3, "{log:?}");
    // 206: with a live release the conditional GET asks for the ZIP's tail (incremental
    // updates, tests/incremental.rs), which for an archive this small is the whole file.
    assert_eq!(
        (log[1].status, log[1].if_none_match.as_str()),
        (206, format!("\"{old_etag}\"").as_str())
    );
    assert_eq!(
        (log[2].status, log[2].if_none_match.as_str()),
        (304, format!("\"{new_etag}\"").as_str())
    );
}

/// Deploy v1 from a local ZIP, so that a later failing HTTP check has a `current` to keep.
fn deploy_local_v1(env: &Env) -> std::path::PathBuf {
    let path = env.root.join("v1.zip");
    zip(&path, &app("v1"));
    env.fetch(path.to_str().expect("utf8")).expect_code(0);
    env.live_release()
}

#[test]
fn body_shorter_than_content_length_is_refused() {
    let env = Env::new();
    let live = deploy_local_v1(&env);
    // A complete, valid ZIP, but the server promised more: only the length check catches it.
    let good = zip_bytes(&app("v2"));
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"short-1\"\r\nConnection: close\r\n\r\n",
        good.len() + 100
    )
    .into_bytes();
    raw.extend_from_slice(&good);
    let stub = Stub::start(vec![Reply::Raw(raw)]);

    let out = env.fetch(&stub.url("app.zip"));

    out.expect_code(1);
    assert_eq!(env.live_release(), live, "current unchanged");
    assert_eq!(env.releases(), vec![live]);
    env.assert_clean();
}

#[test]
fn stalled_download_times_out_and_its_cache_file_is_removed() {
    let env = Env::new();
    let live = deploy_local_v1(&env);
    env.config("stall-timeout = 1\n");
    let cache = env.root.join("mycache");
    let good = zip_bytes(&app("v2"));
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"stall-1\"\r\n\r\n",
        good.len()
    )
    .into_bytes();
    raw.extend_from_slice(&good[..good.len() / 2]);
    let stub = Stub::start(vec![Reply::Stall(raw)]);
    let downloads = || {
        list(&cache)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("download-"))
            })
            .count()
    };

    let started = std::time::Instant::now();
    let mut run = env
        .cmd()
        .args([
            "-f",
            "-r",
            &stub.url("app.zip"),
            "--cache",
            cache.to_str().expect("utf8"),
        ])
        .spawn();
    let seen = eventually(std::time::Duration::from_secs(10), || {
        downloads() > 0 || !run.is_running()
    });
    let status = run.wait_exit(std::time::Duration::from_secs(30));

    assert_eq!(
        status.code(),
        Some(1),
        "a stalled download fails\n{}",
        run.stderr()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "stall-timeout = 1 took {:?}",
        started.elapsed()
    );
    assert!(
        seen,
        "the download was not streamed into --cache as download-*\n{}",
        run.stderr()
    );
    assert_eq!(
        downloads(),
        0,
        "the partial download is removed from --cache"
    );
    assert_eq!(env.live_release(), live);
    assert_eq!(env.releases(), vec![live]);
    env.assert_clean();
}

#[test]
fn weak_etag_is_the_version_without_w_and_quotes_and_is_sent_back() {
    let env = Env::new();
    logging_hooks(&env);
    let bytes = zip_bytes(&app("v1"));
    let stub = Stub::start(vec![
        ok_reply(&bytes, &["ETag: W/\"weak-42\""]),
        not_modified_reply(),
    ]);

    env.fetch(&stub.url("app.zip")).expect_code(0);
    assert_eq!(
        env.out_lines("hooks.log"),
        vec!["pre weak-42", "post weak-42"]
    );
    env.clear_out("hooks.log");
    env.fetch(&stub.url("app.zip")).expect_code(0);

    let inm = stub.header(1, "If-None-Match").unwrap_or_default();
    assert!(
        inm.contains("\"weak-42\""),
        "the second request validates the ETag: If-None-Match = {inm:?}"
    );
    assert_eq!(
        env.out_lines("hooks.log"),
        Vec::<String>::new(),
        "304: no hook"
    );
    assert_eq!(stub.requests().len(), 2);
}

#[test]
fn last_modified_is_used_without_an_etag() {
    const DATE: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
    let env = Env::new();
    logging_hooks(&env);
    let bytes = zip_bytes(&app("v1"));
    let stub = Stub::start(vec![
        ok_reply(&bytes, &[&format!("Last-Modified: {DATE}")]),
        not_modified_reply(),
    ]);

    env.fetch(&stub.url("app.zip")).expect_code(0);
    let sha = sha256_hex(&bytes);
    assert_eq!(
        env.out_lines("hooks.log"),
        vec![format!("pre {sha}"), format!("post {sha}")],
        "without an ETag the version is the SHA-256"
    );
    env.clear_out("hooks.log");
    env.fetch(&stub.url("app.zip")).expect_code(0);

    assert_eq!(stub.header(1, "If-Modified-Since").as_deref(), Some(DATE));
    assert_eq!(
        env.out_lines("hooks.log"),
        Vec::<String>::new(),
        "304: no hook"
    );
    assert_eq!(stub.requests().len(), 2);
}

#[test]
fn without_validators_the_same_content_is_not_redeployed() {
    let env = Env::new();
    logging_hooks(&env);
    let bytes = zip_bytes(&app("v1"));
    let stub = Stub::start(vec![ok_reply(&bytes, &[]), ok_reply(&bytes, &[])]);

    env.fetch(&stub.url("app.zip")).expect_code(0);
    let live = env.live_release();
    env.clear_out("hooks.log");
    env.fetch(&stub.url("app.zip")).expect_code(0);

    assert_eq!(env.live_release(), live);
    assert_eq!(env.releases(), vec![live]);
    assert_eq!(
        env.out_lines("hooks.log"),
        Vec::<String>::new(),
        "identical content: no hook"
    );
    env.assert_clean();
}

/// Bug 3 of issue 11: the URL's user-info was form-decoded, so a `+` in the password was sent
/// as a space and the server refused it. User-info is percent-decoded only (RFC 3986).
#[test]
fn a_plus_in_the_url_password_is_sent_as_a_plus() {
    const PASS: &str = "s3cret+pa@ss=w0rd"; // nginx's htpasswd ends a password at `:`
    let env = Env::new();
    let nginx = Nginx::start(&env.root, &[("deployer", PASS)]);
    nginx.publish_zip("private/app.zip", &app("v1"));

    // `+` as is, `@` escaped: the password is `PASS`, not `s3cret pa@ss=w0rd`.
    let url = nginx.url_with_auth("deployer", "s3cret+pa%40ss=w0rd", "private/app.zip");
    let out = env.run(&["-f", "-v", "-r", &url]);
    out.expect_code(0);
    assert_eq!(version_of_live(&env), "v1\n");
    // `%2B` is the same password: the second check is a 304 with it.
    let escaped = nginx.url_with_auth("deployer", "s3cret%2Bpa%40ss=w0rd", "private/app.zip");
    let second = env.run(&["-f", "-v", "-r", &escaped]);
    second.expect_code(0);
    for out in [&out, &second] {
        let all = out.all();
        assert!(
            !all.contains(PASS) && !all.contains("s3cret+pa%40ss") && !all.contains("s3cret%2Bpa"),
            "the password leaked into the output:\n{}",
            out.dump()
        );
    }
    let statuses: Vec<u16> = nginx.access_log().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 304], "both forms authenticate");
}
