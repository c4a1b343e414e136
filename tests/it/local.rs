//! Local remotes: a ZIP path (absolute, relative, `file://`), a directory, and change
//! detection by content, not by mtime.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;

fn app(version: &str) -> Vec<Entry> {
    vec![
        file("bin/run.sh", "#!/bin/sh\necho run\n", 0o755),
        file("index.html", format!("<h1>{version}</h1>\n"), 0o644),
        link("start", "bin/run.sh"),
        file("version.txt", format!("{version}\n"), 0o644),
    ]
}

/// A pre hook recording `DEPLOY_VERSION` and `DEPLOY_REMOTE` in out/hooks.log.
fn version_hook(env: &Env) {
    env.pre_hook(
        "10-version",
        &format!(
            "echo \"$DEPLOY_VERSION $DEPLOY_REMOTE\" >> {}",
            env.out("hooks.log").display()
        ),
    );
}

fn live_version(env: &Env) -> String {
    fs::read_to_string(env.live_release().join("version.txt")).expect("version.txt")
}

#[test]
fn zip_path_deploys_with_the_sha256_as_version() {
    let env = Env::new();
    version_hook(&env);
    let path = env.root.join("app.zip");
    let entries = app("v1");
    let bytes = zip(&path, &entries);
    let remote = path.to_str().expect("utf8");

    env.fetch(remote).expect_code(0);

    env.assert_current_is_relative_link();
    assert_tree(&env.live_release(), &expected_tree(&entries));
    assert_eq!(
        env.out_lines("hooks.log"),
        vec![format!("{} {remote}", sha256_hex(&bytes))]
    );
    env.assert_clean();
}

#[test]
fn file_url_deploys() {
    let env = Env::new();
    version_hook(&env);
    let path = env.root.join("app.zip");
    let entries = app("v1");
    let bytes = zip(&path, &entries);

    env.fetch(&format!("file://{}", path.display()))
        .expect_code(0);

    assert_tree(&env.live_release(), &expected_tree(&entries));
    let lines = env.out_lines("hooks.log");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("{} ", sha256_hex(&bytes))),
        "DEPLOY_VERSION is the ZIP's SHA-256: {lines:?}"
    );
    env.assert_clean();
}

#[test]
fn relative_zip_path_is_taken_from_the_working_directory() {
    let env = Env::new();
    let entries = app("v1");
    zip(&env.root.join("app.zip"), &entries);

    env.fetch("./app.zip").expect_code(0);

    assert_tree(&env.live_release(), &expected_tree(&entries));
}

#[test]
fn directory_deploys_a_copy_and_detects_changes() {
    let env = Env::new();
    version_hook(&env);
    let site = env.root.join("site");
    fs::create_dir_all(site.join("bin")).expect("mkdir");
    fs::create_dir_all(site.join("assets/css")).expect("mkdir");
    fs::write(site.join("bin/run.sh"), "#!/bin/sh\n").expect("write");
    fs::set_permissions(site.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(site.join("assets/css/site.css"), "body {}\n").expect("write");
    fs::write(site.join("secret.conf"), "x\n").expect("write");
    fs::set_permissions(site.join("secret.conf"), fs::Permissions::from_mode(0o600))
        .expect("chmod");
    fs::write(site.join("version.txt"), "v1\n").expect("write");
    symlink("bin/run.sh", site.join("start")).expect("symlink");
    let remote = format!("{}/", site.display());

    env.fetch(&remote).expect_code(0);
    let first = env.live_release();
    assert_tree(&first, &tree(&site));
    assert_eq!(env.out_lines("hooks.log").len(), 1);

    // No change: nothing deployed, no hook.
    env.fetch(&remote).expect_code(0);
    assert_eq!(env.live_release(), first);
    assert_eq!(
        env.out_lines("hooks.log").len(),
        1,
        "no hook without a change"
    );

    // A changed file is a new version.
    fs::write(site.join("version.txt"), "v2\n").expect("write");
    env.fetch(&remote).expect_code(0);
    let second = env.live_release();
    assert_ne!(second, first);
    assert_tree(&second, &tree(&site));
    assert_eq!(
        fs::read_to_string(first.join("version.txt")).expect("v1"),
        "v1\n",
        "the old release is untouched"
    );
    env.assert_clean();
}

#[test]
fn touched_zip_with_the_same_bytes_is_not_redeployed() {
    let env = Env::new();
    version_hook(&env);
    let path = env.root.join("app.zip");
    let bytes = zip(&path, &app("v1"));
    let remote = path.to_str().expect("utf8");
    env.fetch(remote).expect_code(0);
    let live = env.live_release();

    // New mtime, same bytes (also rewritten, so the inode changes too).
    write_atomic(&path, &bytes);
    let later = SystemTime::now() + Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(later)
        .expect("touch");
    env.fetch(remote).expect_code(0);

    assert_eq!(env.live_release(), live);
    assert_eq!(env.releases(), vec![live.clone()]);
    assert_eq!(
        env.out_lines("hooks.log").len(),
        1,
        "no hook ran for a touched ZIP"
    );

    // Different bytes are a new version.
    let v2 = zip(&path, &app("v2"));
    env.fetch(remote).expect_code(0);
    assert_ne!(env.live_release(), live);
    assert_eq!(live_version(&env), "v2\n");
    let lines = env.out_lines("hooks.log");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].starts_with(&sha256_hex(&v2)), "{lines:?}");
    env.assert_clean();
}

#[test]
fn local_option_names_the_live_link() {
    let env = Env::new();
    let path = env.root.join("app.zip");
    zip(&path, &app("v1"));
    let live_link = env.deploy.join("live");

    env.run(&[
        "-f",
        "-r",
        path.to_str().expect("utf8"),
        "-l",
        live_link.to_str().expect("utf8"),
    ])
    .expect_code(0);

    let meta = fs::symlink_metadata(&live_link).expect("the -l link exists");
    assert!(meta.file_type().is_symlink());
    assert!(
        fs::read_link(&live_link).expect("readlink").is_relative(),
        "relative target"
    );
    let release = fs::canonicalize(&live_link).expect("resolve");
    assert_eq!(release.parent(), Some(env.releases_dir().as_path()));
    assert!(
        fs::symlink_metadata(env.current()).is_err(),
        "no ${{directory}}/current when -l names another path"
    );
    env.assert_clean();
}

#[test]
fn unpacking_keeps_mtimes() {
    let env = Env::new();
    let path = env.root.join("app.zip");
    zip(&path, &app("v1"));

    env.fetch(path.to_str().expect("utf8")).expect_code(0);

    // The entries say 2021-03-04 05:06:08 (local time of the archiver, so allow a day).
    let stamp = UNIX_EPOCH + Duration::from_secs(1_614_834_368);
    let live = env.live_release();
    for name in ["bin/run.sh", "index.html", "version.txt"] {
        let mtime = fs::metadata(live.join(name))
            .expect("metadata")
            .modified()
            .expect("mtime");
        let off = match mtime.duration_since(stamp) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(
            off <= Duration::from_secs(86_400),
            "{name}: mtime {mtime:?} is not the archive's 2021-03-04"
        );
    }
}
