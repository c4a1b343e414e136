//! `repo-deploy publish` (issue 13, SPEC § Publishing): reproducible ZIPs, minisign signatures
//! that Debian's `minisign -V` accepts, atomic local targets that the agent deploys, and clear
//! errors for a wrong password, a missing one and bad arguments. The S3 target is tested in
//! `s3.rs`, against moto.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use crate::common::minisign;
use crate::common::*;

const PASSWORD: &str = "publish-pw-5e1d";

/// A small tree: files with two modes, a sub-directory, an empty directory and a symlink.
fn tree(root: &Path) -> PathBuf {
    let dir = root.join("site");
    fs::create_dir_all(dir.join("bin")).expect("dirs");
    fs::create_dir_all(dir.join("empty")).expect("dirs");
    fs::write(dir.join("index.html"), "<h1>hello</h1>\n").expect("file");
    fs::write(dir.join("bin/run.sh"), "#!/bin/sh\necho run\n").expect("file");
    fs::set_permissions(dir.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).expect("mode");
    symlink("index.html", dir.join("home.html")).expect("link");
    dir
}

fn publish(env: &Env, args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = env.cmd().arg("publish").args(args);
    if let Some(p) = password {
        cmd = cmd.env("REPO_DEPLOY_SIGN_PASSWORD", p);
    }
    cmd.run()
}

#[test]
fn the_same_tree_gives_the_same_bytes_whenever_it_is_zipped() {
    let env = Env::new();
    let site = tree(&env.root);
    let out = env.root.join("a.zip");
    let path = out.to_str().expect("utf8");
    publish(&env, &[site.to_str().expect("utf8"), path], None).expect_code(0);
    let first = fs::read(&out).expect("zip");
    // A copy of the tree made now: other inode numbers and times, same content and modes.
    let copy = env.root.join("copy");
    let status = std::process::Command::new("cp")
        .args(["-r", "--no-preserve=timestamps"])
        .arg(&site)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    fs::set_permissions(copy.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).expect("mode");
    let out2 = env.root.join("b.zip");
    publish(
        &env,
        &[copy.to_str().expect("utf8"), out2.to_str().expect("utf8")],
        None,
    )
    .expect_code(0);
    assert_eq!(
        fs::read(&out2).expect("zip"),
        first,
        "a copy of the tree zips differently"
    );
    publish(&env, &[site.to_str().expect("utf8"), path], None).expect_code(0);
    assert_eq!(fs::read(&out).expect("zip"), first, "zipping twice differs");
    // SOURCE_DATE_EPOCH changes the times, and nothing else changes them.
    let out3 = env.root.join("c.zip");
    env.cmd()
        .arg("publish")
        .args([site.to_str().expect("utf8"), out3.to_str().expect("utf8")])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .run()
        .expect_code(0);
    assert_ne!(fs::read(&out3).expect("zip"), first);
}

#[test]
fn a_signed_publish_verifies_with_minisign_and_the_agent_deploys_it() {
    let env = Env::new();
    let site = tree(&env.root);
    let (public, secret) = minisign::keypair(&env.root, PASSWORD);
    let www = env.root.join("www");
    fs::create_dir(&www).expect("www");
    let target = www.join("app.zip");
    let out = publish(
        &env,
        &[
            site.to_str().expect("utf8"),
            target.to_str().expect("utf8"),
            "--sign",
            secret.to_str().expect("utf8"),
        ],
        Some(PASSWORD),
    );
    out.expect_code(0);
    assert!(!out.all().contains(PASSWORD));
    let (ok, said) = minisign::verify(&public, &target);
    assert!(ok, "minisign -V refused: {said}");
    assert!(
        said.contains("timestamp:") && said.contains("file:app.zip"),
        "the trusted comment names the time and the file: {said}"
    );
    // Nothing else was left in the target's directory.
    let names: Vec<String> = list(&www)
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["app.zip", "app.zip.minisig"]);

    // The agent deploys exactly the tree.
    env.fetch(target.to_str().expect("utf8")).expect_code(0);
    let live = env.live_release();
    assert_eq!(
        fs::read(live.join("index.html")).expect("file"),
        b"<h1>hello</h1>\n"
    );
    let mode = fs::metadata(live.join("bin/run.sh"))
        .expect("run.sh")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        fs::read_link(live.join("home.html")).expect("a symlink"),
        Path::new("index.html")
    );
    assert!(live.join("empty").is_dir());
}

#[test]
fn a_wrong_or_missing_password_and_bad_arguments_are_usage_errors() {
    let env = Env::new();
    let site = tree(&env.root);
    let (_, secret) = minisign::keypair(&env.root, PASSWORD);
    let target = env.root.join("app.zip");
    let args = [
        site.to_str().expect("utf8"),
        target.to_str().expect("utf8"),
        "--sign",
        secret.to_str().expect("utf8"),
    ];
    let wrong = publish(&env, &args, Some("not-the-password"));
    wrong.expect_code(2);
    assert!(wrong.stderr.contains("wrong password"), "{}", wrong.dump());
    assert!(!wrong.all().contains("not-the-password"));
    // No terminal (the harness gives none) and no variable.
    let missing = publish(&env, &args, None);
    missing.expect_code(2);
    assert!(
        missing.stderr.contains("REPO_DEPLOY_SIGN_PASSWORD"),
        "{}",
        missing.dump()
    );
    assert!(!target.exists(), "nothing is published when signing fails");

    let not_zip = env.root.join("notes.txt");
    fs::write(&not_zip, "not a zip").expect("file");
    for (args, says) in [
        (
            vec![not_zip.to_str().expect("utf8"), "out.zip"],
            "not a ZIP",
        ),
        (vec!["/no/such/dir", "out.zip"], "/no/such/dir"),
        (
            vec![site.to_str().expect("utf8"), "s3://bucket-only"],
            "a bucket and a key",
        ),
        (
            vec![site.to_str().expect("utf8"), "https://host/app.zip"],
            "local path",
        ),
    ] {
        let out = publish(&env, &args, None);
        out.expect_code(2);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.dump());
    }
    // --notify outside fleet mode: published, with a warning.
    let out = publish(
        &env,
        &[
            site.to_str().expect("utf8"),
            target.to_str().expect("utf8"),
            "--notify",
        ],
        None,
    );
    out.expect_code(0);
    assert!(
        out.stderr.contains("--notify needs fleet mode"),
        "{}",
        out.dump()
    );
    assert!(target.exists());
}
