//! Directory remotes: copying a local tree into a release (`copy_tree`) and checking a tree
//! something else wrote (`validate_tree`, a git checkout), by the rules ZIPs meet. The walk never
//! follows a symlink, and the copy opens each file with `O_NOFOLLOW` and re-checks its type,
//! since the tree may change under the walk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::plan::{Entry, Kind, Planner, Type};
use super::write::{Contents, Job, build};
use super::{Limits, Result, Summary, UnpackError, io_error, stop_if_cancelled};

/// Copy the local directory tree `src` into `dest` (existing, empty), by the same rules as
/// [`unpack_zip`] (a "directory remote"). Symlinks inside `src` are copied as symlinks, never
/// followed. Blocking: run it on a blocking thread.
pub fn copy_tree(
    src: &Path,
    dest: &Path,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Summary> {
    let entries = plan_tree(src, limits, cancel, true)?;
    build(&entries, dest, limits, cancel, &TreeContents(src))
}

/// Validate a tree that something else already wrote into `dir` (a git checkout) by the rules
/// of [`copy_tree`]: names, types, symlink targets, duplicates, letter case and the limits.
/// Nothing is written; on error the caller deletes `dir`. Blocking: run it on a blocking thread.
pub fn validate_tree(dir: &Path, limits: &Limits, cancel: &CancellationToken) -> Result<Summary> {
    let mut summary = Summary::default();
    for entry in plan_tree(dir, limits, cancel, false)? {
        match entry.kind {
            Kind::Dir => summary.dirs += 1,
            Kind::File { size, .. } => {
                summary.files += 1;
                summary.bytes += size;
            }
            Kind::Symlink { .. } => summary.symlinks += 1,
        }
    }
    Ok(summary)
}

/// Walk the tree `root` (symlinks not followed) and admit every entry by the unpacking rules,
/// as [`Planner`] does for a ZIP's entries; with `mtimes`, keep each file's mtime.
fn plan_tree(
    root: &Path,
    limits: &Limits,
    cancel: &CancellationToken,
    mtimes: bool,
) -> Result<Vec<Entry>> {
    let mut planner = Planner::new(*limits);
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        stop_if_cancelled(cancel)?;
        let shown = rel.to_string_lossy().into_owned();
        let failed = |source| UnpackError::Io {
            path: shown.clone(),
            action: "read directory",
            source,
        };
        let listing = match fs::read_dir(root.join(&rel)) {
            Err(source) if rel.as_os_str().is_empty() => {
                return Err(UnpackError::Open {
                    path: root.to_path_buf(),
                    source,
                });
            }
            listing => listing.map_err(failed)?,
        };
        let mut children = listing.collect::<io::Result<Vec<_>>>().map_err(failed)?;
        children.sort_by_key(fs::DirEntry::file_name);
        for child in children {
            let rel = rel.join(child.file_name());
            // `DirEntry::metadata` does not follow symlinks.
            let meta = child
                .metadata()
                .map_err(|e| io_error(&rel.to_string_lossy(), "stat", e))?;
            // A name from `readdir` is never `.`; a `\` in it is a character, refused.
            let admitted =
                planner.admit(rel.as_os_str().as_bytes(), Some(meta.mode()), false, false);
            let Some((path, kind)) = admitted? else {
                continue;
            };
            let kind = match kind {
                Type::Dir => {
                    pending.push(rel);
                    Kind::Dir
                }
                Type::File => Kind::File {
                    size: meta.len(),
                    index: 0,
                },
                Type::Symlink => match fs::read_link(root.join(&rel)) {
                    Ok(target) => Kind::Symlink {
                        target: target.into_os_string().into_vec(),
                    },
                    Err(source) => {
                        return Err(UnpackError::Io {
                            path,
                            action: "read symlink",
                            source,
                        });
                    }
                },
            };
            planner.add(Entry {
                path,
                kind,
                mode: meta.mode() & 0o777,
                mtime: if mtimes { meta.modified().ok() } else { None },
            })?;
        }
    }
    planner.finish()
}

/// Bytes copied per `copy_file_range` round for local files, so cancellation is noticed.
const LOCAL_CHUNK: u64 = 16 * 1024 * 1024;

struct TreeContents<'a>(&'a Path);

impl Contents for TreeContents<'_> {
    type Reader = ();

    fn reader(&self) {}

    fn copy(&self, (): &mut (), entry: &Entry, out: &mut File, job: &Job) -> Result<u64> {
        let Kind::File { size: declared, .. } = entry.kind else {
            return Ok(0);
        };
        let path = entry.path.as_str();
        // O_NOFOLLOW: the file may have been swapped for a symlink since the walk; O_NONBLOCK:
        // opening a FIFO swapped in must not hang (it is refused below).
        let mut input = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.0.join(path))
            .map_err(|e| io_error(path, "open source file", e))?;
        let meta = input
            .metadata()
            .map_err(|e| io_error(path, "stat source file", e))?;
        if !meta.is_file() {
            return Err(UnpackError::SpecialFile {
                path: path.to_owned(),
                kind: "non-regular",
            });
        }
        let mut written = 0;
        loop {
            let want = LOCAL_CHUNK.min(declared + 1 - written);
            // `io::copy` between files uses `copy_file_range` on Linux.
            let n = io::copy(&mut (&mut input).take(want), out)
                .map_err(|e| io_error(path, "copy file", e))?;
            if n == 0 {
                break;
            }
            written += n;
            if written > declared {
                return Err(UnpackError::LargerThanDeclared {
                    path: path.to_owned(),
                    declared,
                });
            }
            job.charge(path, n)?;
        }
        if written < declared {
            return Err(UnpackError::SmallerThanDeclared {
                path: path.to_owned(),
                declared,
                actual: written,
            });
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{FileTimes, Permissions};
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::{Duration, UNIX_EPOCH};

    use crate::unpack::fixture::*;

    #[test]
    fn copies_a_tree_with_modes_mtimes_and_symlinks() {
        let fixture = Fixture::new();
        let src = fixture.path("src");
        fs::create_dir_all(src.join("dir/empty")).unwrap();
        fs::write(src.join("dir/file"), vec![9; 300_000]).unwrap();
        fs::write(src.join("script"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("script"), Permissions::from_mode(0o4750)).unwrap();
        symlink("dir/file", src.join("link")).unwrap();
        let mtime = FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(1_234_567_890));
        for name in ["dir/file", "dir"] {
            File::open(src.join(name))
                .unwrap()
                .set_times(mtime)
                .unwrap();
        }

        let summary = fixture.copy().unwrap();
        assert_eq!(
            summary,
            Summary {
                files: 2,
                dirs: 2,
                symlinks: 1,
                bytes: 300_010,
                reused: 0
            }
        );
        let dest = fixture.path("dest");
        assert_eq!(fs::read(dest.join("dir/file")).unwrap(), vec![9; 300_000]);
        assert_eq!(mode_of(&dest.join("script")), 0o750);
        assert_eq!(mtime_of(&dest.join("dir/file")), 1_234_567_890);
        assert_eq!(mtime_of(&dest.join("dir")), 1_234_567_890);
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new("dir/file")
        );
        fixture.assert_nothing_outside();
    }

    #[test]
    fn copy_refuses_fifos_sockets_and_escaping_symlinks() {
        let fifo = Fixture::new();
        let path = std::ffi::CString::new(fifo.path("src/fifo").into_os_string().into_vec());
        // SAFETY: `path` is a valid NUL-terminated string.
        assert_eq!(unsafe { libc::mkfifo(path.unwrap().as_ptr(), 0o644) }, 0);
        assert_is(&fifo.copy().unwrap_err(), "SpecialFile", "\"fifo\": FIFO");

        let socket = Fixture::new();
        let _listener = std::os::unix::net::UnixListener::bind(socket.path("src/sock")).unwrap();
        assert_is(
            &socket.copy().unwrap_err(),
            "SpecialFile",
            "\"sock\": socket",
        );

        let escape = Fixture::new();
        fs::create_dir(escape.path("src/d")).unwrap();
        symlink("../../archive.zip", escape.path("src/d/up")).unwrap();
        assert_is(&escape.copy().unwrap_err(), "SymlinkTarget", "\"d/up\"");
        for fixture in [fifo, socket, escape] {
            fixture.assert_nothing_outside();
            assert!(fixture.dest_is_empty());
        }
    }
}
