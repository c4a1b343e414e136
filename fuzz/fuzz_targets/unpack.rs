//! libFuzzer target: unpack arbitrary bytes as a ZIP with `repo_deploy::unpack::unpack_zip`.
//! It must never panic, and whatever it returns it must write nothing outside its destination
//! (`<tmp>/a/b/dest`: the archive and those two parents are all that may exist beside it) and
//! create no symlink that resolves outside it.
//!
//! Run: `cargo +nightly fuzz run unpack -- -max_total_time=600`. The stable-toolchain driver
//! with the same checks and a seed corpus is tests/it/fuzz_unpack.rs.

#![no_main]

use std::fs;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use repo_deploy::unpack::{Limits, unpack_zip};
use tokio_util::sync::CancellationToken;

const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_entries: 64,
};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every symlink under `dir` (relative path `rel`) stays inside `dest`, lexically and for real.
fn check_links(dest: &Path, dir: &Path) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("lstat");
        if meta.is_dir() {
            check_links(dest, &path);
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("readlink");
            let rel = path.strip_prefix(dest).expect("under dest");
            let mut depth = rel.components().count() as i64 - 1;
            assert!(!target.is_absolute(), "{rel:?} -> {target:?} is absolute");
            for part in target.components() {
                match part {
                    Component::ParentDir => depth -= 1,
                    Component::Normal(_) => depth += 1,
                    _ => {}
                }
                assert!(depth >= 0, "{rel:?} -> {target:?} leaves the release");
            }
            if let Ok(real) = fs::canonicalize(&path) {
                assert!(real.starts_with(dest), "{rel:?} resolves to {real:?}");
            }
        } else {
            use std::os::unix::fs::MetadataExt;
            assert!(meta.is_file(), "{path:?} is a special file");
            assert_eq!(
                meta.mode() & 0o7000,
                0,
                "{path:?} keeps setuid/setgid/sticky"
            );
        }
    }
}

/// Read-only directories would stop the temp dir's removal (when not root).
fn writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            writable(&entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(tmp.path()).expect("canonicalize");
    let archive = root.join("input.zip");
    fs::write(&archive, data).expect("write input");
    let dest = root.join("a/b/dest");
    fs::create_dir_all(&dest).expect("create dest");

    let result = unpack_zip(&archive, &dest, &LIMITS, &CancellationToken::new());
    if let Err(e) = &result {
        assert!(!e.to_string().is_empty());
    }

    assert_eq!(names(&root), ["a", "input.zip"]);
    assert_eq!(names(&root.join("a")), ["b"]);
    assert_eq!(names(&root.join("a/b")), ["dest"]);
    check_links(&dest, &dest);
    writable(&dest);
});
