//! The few filesystem idioms every module needs, written once: replacing a small file
//! atomically (with or without making it durable), fsync of a directory, unique temporary
//! names, and "not found is fine".
//!
//! Why by hand: these are a dozen lines each over `std::fs`; the crates that offer them
//! (`tempfile`'s persist, `atomicwrites`) either fsync always or never, and neither names its
//! temporary files so that a start-up sweep can find them again after a crash.
//!
//! Every temporary name made here starts with `.` and carries the writer's pid and a random
//! part ([`unique_suffix`]), so two agents (or a crashed one and its successor) never collide,
//! and a sweep can tell its own leftovers by their prefix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `PID-RANDOM`: the part of a temporary name that makes it unique to this writer, now.
pub fn unique_suffix() -> String {
    format!("{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// The temporary sibling of `path` used by the atomic writes: `.NAME.tmp-PID-RANDOM`.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", unique_suffix()))
}

/// Whether `name` is a temporary sibling (see [`temp_sibling`]) of a file called `of`.
pub fn is_temp_of(name: &str, of: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(of))
        .is_some_and(|rest| rest.starts_with(".tmp-"))
}

/// Replace `path` with `bytes` atomically (a temporary sibling, then `rename(2)`), without
/// fsync: for small files whose loss in a power cut costs nothing. A reader sees the old
/// bytes or the new ones, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_via_temp(path, bytes, false)
}

/// Replace `path` with `bytes` atomically and durably: the temporary sibling is fsynced
/// before the rename, and the directory after it.
pub fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_via_temp(path, bytes, true)
}

fn write_via_temp(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, path)?;
        if durable {
            fsync_dir(parent_of(path))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory, so that the names created, renamed or removed in it survive a power cut.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory that holds `path` (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Turn "not found" into `Ok(None)`: for reads of files that may rightly be absent.
pub fn not_found_is_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Turn "not found" into success: for removals of what may already be gone.
pub fn not_found_is_ok(result: io::Result<()>) -> io::Result<()> {
    not_found_is_none(result).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").expect("first write");
        write_durable(&path, b"two").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The rename fails: the target is a non-empty directory.
        let path = dir.path().join("busy");
        fs::create_dir_all(path.join("inside")).expect("mkdir");
        assert!(write_atomic(&path, b"x").is_err());
        let count = fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(count, 1, "only the directory stays");
    }

    #[test]
    fn temporary_names_are_recognised_and_unique() {
        let a = temp_sibling(Path::new("/d/state.json"));
        let b = temp_sibling(Path::new("/d/state.json"));
        assert_ne!(a, b);
        let name = a.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(is_temp_of(name, "state.json"), "{name}");
        assert!(!is_temp_of("state.json", "state.json"));
        assert!(!is_temp_of(".other.tmp-1-2", "state.json"));
    }

    #[test]
    fn not_found_is_fine_but_other_errors_are_not() {
        let missing = fs::read("/nonexistent/repo-deploy-test");
        assert_eq!(not_found_is_none(missing).expect("none"), None);
        assert!(not_found_is_ok(fs::remove_file("/nonexistent/x")).is_ok());
        let denied = Err::<(), _>(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(not_found_is_ok(denied).is_err());
    }
}
