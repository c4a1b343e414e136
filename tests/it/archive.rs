//! Archives the unpacker must refuse: entries escaping the release, symlinks leaving it,
//! device files, duplicates, and archives over the configured limits. Each refusal exits 1,
//! writes nothing outside the release, leaves no partial release or download, and keeps
//! `current`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::*;

/// The limits every test here runs with.
const LIMITS: &str = "max-files = 10\nmax-size = 10K\n";

fn good(version: &str) -> Vec<Entry> {
    vec![
        file("version.txt", format!("{version}\n"), 0o644),
        file("bin/run.sh", "#!/bin/sh\n", 0o755),
    ]
}

/// An environment with the limits and a ZIP remote at `<root>/app.zip`.
fn setup() -> (Env, PathBuf) {
    let env = Env::new();
    env.config(LIMITS);
    let path = env.root.join("app.zip");
    (env, path)
}

fn remote(path: &Path) -> &str {
    path.to_str().expect("utf8")
}

/// Over a live v1, serve the archive `build` makes (it may name paths in the test directory)
/// and check it is refused cleanly; the paths `build` returns must not exist afterwards.
#[track_caller]
fn assert_refused(what: &str, build: impl FnOnce(&Env) -> (Vec<u8>, Vec<PathBuf>)) {
    let (env, path) = setup();
    zip(&path, &good("v1"));
    env.fetch(remote(&path)).expect_code(0);
    let live = env.live_release();
    let before = tree(&live);
    let (bytes, outside) = build(&env);
    write_atomic(&path, &bytes);
    let root_before = list(&env.root);

    let out = env.fetch(remote(&path));

    assert_eq!(
        out.code(),
        Some(1),
        "{what}: expected exit 1\n{}",
        out.dump()
    );
    assert!(
        !out.stderr.trim().is_empty(),
        "{what}: the refusal is explained on stderr"
    );
    assert_eq!(env.live_release(), live, "{what}: current unchanged");
    assert_eq!(tree(&live), before, "{what}: the live release is untouched");
    assert_eq!(
        env.releases(),
        vec![live.clone()],
        "{what}: no new release left"
    );
    env.assert_clean();
    for p in &outside {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "{what}: {} was written outside the release",
            p.display()
        );
    }
    assert_eq!(
        list(&env.root),
        root_before,
        "{what}: nothing new beside the deploy directory"
    );

    // The agent is not wedged: a good archive deploys next.
    zip(&path, &good("v2"));
    env.fetch(remote(&path)).expect_code(0);
    assert_eq!(
        fs::read_to_string(env.live_release().join("version.txt")).expect("v2"),
        "v2\n",
        "{what}"
    );
}

/// Where `name` would land if `../` entries escaped a release by one, two or three levels.
fn escapes(env: &Env, name: &str) -> Vec<PathBuf> {
    vec![
        env.releases_dir().join(name),
        env.deploy.join(name),
        env.root.join(name),
    ]
}

#[test]
fn refuses_entries_with_parent_components() {
    assert_refused("../evil.txt", |env| {
        (
            zip_bytes(&[
                file("ok.txt", "fine", 0o644),
                file("../evil.txt", "pwned", 0o644),
            ]),
            escapes(env, "evil.txt"),
        )
    });
    assert_refused("../../../evil.txt", |env| {
        (
            zip_bytes(&[file("../../../evil.txt", "pwned", 0o644)]),
            escapes(env, "evil.txt"),
        )
    });
    assert_refused("sub/../../evil.txt", |env| {
        (
            zip_bytes(&[file("sub/../../evil.txt", "pwned", 0o644)]),
            escapes(env, "evil.txt"),
        )
    });
}

#[test]
fn refuses_absolute_entries() {
    assert_refused("absolute path", |env| {
        let target = env.root.join("abs-evil.txt");
        let name = target.to_str().expect("utf8").to_string();
        assert!(name.starts_with('/'));
        (
            zip_bytes(&[file("ok.txt", "fine", 0o644), file(&name, "pwned", 0o644)]),
            vec![target],
        )
    });
}

#[test]
fn refuses_symlinks_that_leave_the_release() {
    assert_refused("relative symlink out of the release", |env| {
        (
            zip_bytes(&[file("ok.txt", "fine", 0o644), link("up", "../../..")]),
            escapes(env, "up"),
        )
    });
    assert_refused("nested symlink out of the release", |_| {
        (
            zip_bytes(&[
                file("sub/ok.txt", "fine", 0o644),
                link("sub/up", "../../outside.txt"),
            ]),
            vec![],
        )
    });
    assert_refused("absolute symlink", |_| {
        (zip_bytes(&[link("passwd", "/etc/passwd")]), vec![])
    });
    assert_refused("writing through a symlink", |env| {
        let root = env.root.to_str().expect("utf8").to_string();
        let bytes = zip_bytes(&[
            link("escape", &root),
            file("escape/through.txt", "pwned", 0o644),
        ]);
        (bytes, vec![env.root.join("through.txt")])
    });
    assert_refused("writing through a relative symlink", |env| {
        let bytes = zip_bytes(&[
            link("escape", "../.."),
            file("escape/through.txt", "pwned", 0o644),
        ]);
        (bytes, vec![env.deploy.join("through.txt")])
    });
}

#[test]
fn keeps_symlinks_that_stay_inside_the_release() {
    let (env, path) = setup();
    let entries = [
        file("version.txt", "v1\n", 0o644),
        link("sub/dir/up", "../../version.txt"),
        link("sub/self", "."),
        link("top", "sub/dir"),
    ];
    zip(&path, &entries);
    env.fetch(remote(&path)).expect_code(0);
    assert_tree(&env.live_release(), &expected_tree(&entries));
    assert_eq!(
        fs::read_to_string(env.live_release().join("sub/dir/up")).expect("through the link"),
        "v1\n"
    );
}

#[test]
fn refuses_device_files_and_fifos() {
    assert_refused("character device", |_| {
        let mut bytes = zip_bytes(&[file("ok.txt", "fine", 0o644), file("null", "", 0o644)]);
        set_external_mode(&mut bytes, "null", 0o020_644);
        (bytes, vec![])
    });
    assert_refused("fifo", |_| {
        let mut bytes = zip_bytes(&[file("ok.txt", "fine", 0o644), file("pipe", "", 0o644)]);
        set_external_mode(&mut bytes, "pipe", 0o010_644);
        (bytes, vec![])
    });
}

#[test]
fn refuses_duplicate_entries() {
    assert_refused("duplicate entries", |_| {
        let mut bytes = zip_bytes(&[
            file("dup-a.txt", "first", 0o644),
            file("dup-b.txt", "second", 0o644),
        ]);
        rename_entry(&mut bytes, "dup-b.txt", "dup-a.txt");
        (bytes, vec![])
    });
}

#[test]
fn refuses_more_entries_than_max_files() {
    assert_refused("11 entries with max-files = 10", |_| {
        let entries: Vec<Entry> = (0..11)
            .map(|i| file(&format!("f{i:02}.txt"), "x", 0o644))
            .collect();
        (zip_bytes(&entries), vec![])
    });
}

#[test]
fn refuses_more_bytes_than_max_size() {
    assert_refused("one 11 KiB file with max-size = 10K", |_| {
        (
            zip_bytes(&[file("big.bin", vec![b'a'; 11 * 1024], 0o644)]),
            vec![],
        )
    });
    assert_refused("three 4 KiB files with max-size = 10K", |_| {
        let entries: Vec<Entry> = (0..3)
            .map(|i| file(&format!("part{i}.bin"), vec![b'b'; 4096], 0o644))
            .collect();
        (zip_bytes(&entries), vec![])
    });
}

#[test]
fn limits_admit_an_archive_just_under_them() {
    let (env, path) = setup();
    let mut entries: Vec<Entry> = (0..9)
        .map(|i| file(&format!("f{i}.txt"), "x", 0o644))
        .collect();
    entries.push(file("big.bin", vec![b'c'; 9 * 1024], 0o644));
    zip(&path, &entries);
    env.fetch(remote(&path)).expect_code(0);
    assert_tree(&env.live_release(), &expected_tree(&entries));
}

#[test]
fn refused_first_deploy_creates_no_current() {
    let (env, path) = setup();
    zip(
        &path,
        &[
            file("ok.txt", "fine", 0o644),
            file("../evil.txt", "pwned", 0o644),
        ],
    );

    env.fetch(remote(&path)).expect_code(1);

    assert!(
        env.live().is_none(),
        "no current after a refused first deploy"
    );
    assert_eq!(env.releases(), Vec::<PathBuf>::new());
    for p in escapes(&env, "evil.txt") {
        assert!(
            fs::symlink_metadata(&p).is_err(),
            "{} was written",
            p.display()
        );
    }
    env.assert_clean();
}
