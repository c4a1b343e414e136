//! Writing a validated plan into the release: directories first (mode 0700 until the end),
//! regular files in parallel (up to `MAX_WORKERS` threads, each with its own reader), symlinks
//! once every file exists, and directory modes and mtimes last, deepest first.
//!
//! Invariants: files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` only, so nothing existing is
//! overwritten or followed; the first error (or a cancellation) stops every worker at its next
//! chunk. This is the hot path: no per-entry allocation beyond what the filesystem calls need.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, CWD, Timestamps, UTIME_OMIT};
use tokio_util::sync::CancellationToken;

use super::plan::{Entry, Kind};
use super::{Limits, Result, Summary, UnpackError, io_error, stop_if_cancelled};

/// Upper bound on parallel writers: beyond this, disks rarely go faster.
const MAX_WORKERS: usize = 8;

/// Where regular files' bytes come from; each worker gets its own `Reader`.
pub(super) trait Contents: Sync {
    type Reader;
    fn reader(&self) -> Self::Reader;
    fn copy(
        &self,
        reader: &mut Self::Reader,
        entry: &Entry,
        out: &mut File,
        job: &Job,
    ) -> Result<u64>;
    /// Whether `entry` was created in `dest` from elsewhere (an earlier release) instead.
    fn reused(&self, _entry: &Entry, _dest: &Path) -> Result<bool> {
        Ok(false)
    }
}

/// State shared by the file writers: the first error wins and stops everyone.
pub(super) struct Job<'a> {
    cancel: &'a CancellationToken,
    max_bytes: u64,
    next: AtomicUsize,
    total: AtomicU64,
    reused: AtomicU64,
    stop: AtomicBool,
    first_error: Mutex<Option<UnpackError>>,
}

impl<'a> Job<'a> {
    pub(super) fn new(cancel: &'a CancellationToken, max_bytes: u64) -> Job<'a> {
        Job {
            cancel,
            max_bytes,
            next: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            first_error: Mutex::new(None),
        }
    }

    /// Accounts `n` more bytes; also the point where workers notice a stop or a cancellation.
    pub(super) fn charge(&self, path: &str, n: u64) -> Result<()> {
        if self.stop.load(Ordering::Acquire) || self.cancel.is_cancelled() {
            return Err(UnpackError::Cancelled);
        }
        if self.total.fetch_add(n, Ordering::Relaxed).saturating_add(n) > self.max_bytes {
            return Err(UnpackError::TooLarge {
                path: path.to_owned(),
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    fn fail(&self, error: UnpackError) {
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert(error);
        self.stop.store(true, Ordering::Release);
    }

    fn work<C: Contents>(&self, files: &[&Entry], dest: &Path, contents: &C) {
        let mut reader = contents.reader();
        while !self.stop.load(Ordering::Acquire) {
            let Some(entry) = files.get(self.next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            match self.write_file(entry, dest, contents, &mut reader) {
                Ok(()) => crate::progress::advance(1),
                Err(e) => self.fail(e),
            }
        }
    }

    fn write_file<C: Contents>(
        &self,
        entry: &Entry,
        dest: &Path,
        contents: &C,
        reader: &mut C::Reader,
    ) -> Result<()> {
        self.charge(&entry.path, 0)?;
        if contents.reused(entry, dest)? {
            self.reused.fetch_add(1, Ordering::Relaxed);
            let Kind::File { size, .. } = entry.kind else {
                return Ok(());
            };
            return self.charge(&entry.path, size);
        }
        let mut out = create_file(dest, &entry.path, entry.mode)
            .map_err(|e| io_error(&entry.path, "create file", e))?;
        let written = contents.copy(reader, entry, &mut out, self)?;
        finish_file(&out, entry)?;
        start_writeback(&out, written);
        Ok(())
    }
}

/// Writes a validated plan into `dest`, in the order described in the module docs.
pub(super) fn build(
    entries: &[Entry],
    dest: &Path,
    limits: &Limits,
    cancel: &CancellationToken,
    contents: &impl Contents,
) -> Result<Summary> {
    let (mut dirs, mut files, mut links) = (Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        match &entry.kind {
            Kind::Dir => dirs.push(entry),
            Kind::File { .. } => files.push(entry),
            Kind::Symlink { target } => links.push((entry, OsStr::from_bytes(target))),
        }
    }
    dirs.sort_by_key(|e| e.path.matches('/').count());
    for dir in &dirs {
        stop_if_cancelled(cancel)?;
        // 0o700 until the end, so that a read-only directory can still be filled.
        let created = DirBuilder::new().mode(0o700).create(dest.join(&dir.path));
        created.map_err(|e| io_error(&dir.path, "create directory", e))?;
    }

    let job = Job::new(cancel, limits.max_bytes);
    crate::progress::start("unpack", Some(files.len() as u64), false);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for n in 1..cpus.min(MAX_WORKERS).min(files.len()) {
            let thread = std::thread::Builder::new().name(format!("unpack-{n}"));
            if let Err(e) = thread.spawn_scoped(scope, || job.work(&files, dest, contents)) {
                tracing::debug!("unpacking with {n} threads, could not start more: {e}");
                break;
            }
        }
        job.work(&files, dest, contents);
    });
    let first_error = job.first_error.into_inner();
    if let Some(error) = first_error.unwrap_or_else(PoisonError::into_inner) {
        return Err(error);
    }

    for (entry, target) in &links {
        stop_if_cancelled(cancel)?;
        let path = dest.join(&entry.path);
        let created = std::os::unix::fs::symlink(target, &path);
        created.map_err(|e| io_error(&entry.path, "create symlink", e))?;
        if let Some(mtime) = entry.mtime {
            let last_access = rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            };
            let times = Timestamps {
                last_access,
                last_modification: timespec(mtime),
            };
            let set = rustix::fs::utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW);
            set.map_err(|e| io_error(&entry.path, "set mtime", e.into()))?;
        }
    }

    for dir in dirs.iter().rev() {
        stop_if_cancelled(cancel)?;
        let mut options = OpenOptions::new();
        options
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY);
        let handle = options.open(dest.join(&dir.path));
        set_attributes(
            &handle.map_err(|e| io_error(&dir.path, "open directory", e))?,
            dir,
        )?;
    }
    let count = |n: usize| n as u64;
    let (files, dirs, symlinks) = (count(files.len()), count(dirs.len()), count(links.len()));
    let summary = Summary {
        files,
        dirs,
        symlinks,
        bytes: job.total.into_inner(),
        reused: job.reused.into_inner(),
    };
    tracing::debug!(?summary, dest = %dest.display(), "unpacked release");
    Ok(summary)
}

/// Create the regular file `path` under `dest` for writing: never an existing one
/// (`O_EXCL`), never through a symlink at the last component (`O_NOFOLLOW`; the parents were
/// created by the unpacker), with permission bits `mode` (the umask may clear some:
/// [`finish_file`] sets them exactly).
pub(crate) fn create_file(dest: &Path, path: &str, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest.join(path))
}

/// The process umask, read once (`umask(2)` cannot be read without changing it, which would
/// race with other threads creating files).
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"));
        // Unknown: assume every bit may have been cleared, so `finish_file` always sets them.
        line.and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0o777)
    })
}

/// Whether a file made by [`create_file`] with `mode` lacks some of its bits (cleared by the
/// umask), so that they must be set with `fchmod`: otherwise one syscall less per file.
pub(crate) fn umask_clears(mode: u32) -> bool {
    mode & umask() != 0
}

/// Mode (only when [`umask_clears`] it) and mtime of a file made by [`create_file`], through
/// the open handle.
fn finish_file(handle: &File, entry: &Entry) -> Result<()> {
    set_mode_and_mtime(handle, entry, umask_clears(entry.mode))
}

/// Files at least this large have their writeback started as soon as they are written.
const WRITEBACK_FROM: u64 = 1024 * 1024;

/// Start writing a finished file to disk now, without waiting (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`), so the disk works while the next files are decompressed and the
/// `syncfs(2)` that makes the release durable has less left to do. Durability itself is still
/// the caller's `syncfs`: this only moves I/O earlier. Failures are ignored for that reason.
pub(crate) fn start_writeback(handle: &File, written: u64) {
    if written >= WRITEBACK_FROM {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; the call only schedules writeback of its pages.
        unsafe { libc::sync_file_range(handle.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
}

/// Mode and mtime through the open handle, so no path is followed.
fn set_attributes(handle: &File, entry: &Entry) -> Result<()> {
    set_mode_and_mtime(handle, entry, true)
}

/// The mode (when `chmod`) and the mtime of `entry`, through its open handle.
fn set_mode_and_mtime(handle: &File, entry: &Entry, chmod: bool) -> Result<()> {
    if chmod {
        handle
            .set_permissions(Permissions::from_mode(entry.mode))
            .map_err(|e| io_error(&entry.path, "set permissions", e))?;
    }
    if let Some(mtime) = entry.mtime {
        handle
            .set_times(FileTimes::new().set_modified(mtime))
            .map_err(|e| io_error(&entry.path, "set mtime", e))?;
    }
    Ok(())
}

/// Pre-1970 times (only possible for local trees) are clamped to the epoch.
fn timespec(time: SystemTime) -> rustix::fs::Timespec {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let tv_sec = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    rustix::fs::Timespec {
        tv_sec,
        tv_nsec: since.subsec_nanos().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::fixture::*;
    use crate::unpack::plan::{S_IFDIR, S_IFREG};
    use zip::write::SimpleFileOptions;

    #[test]
    fn unpacks_a_thousand_files_in_parallel_byte_for_byte() {
        let content = |i: usize| {
            (0..i * 37 % 5000)
                .map(|j| (i * 31 + j * 7) as u8)
                .collect::<Vec<u8>>()
        };
        let name = |i: usize| format!("d{}/f{i}", i % 10);
        let bytes = zip_of(|w| {
            for i in 0..1000 {
                let deflate = SimpleFileOptions::default();
                add(
                    w,
                    &name(i),
                    &content(i),
                    if i % 2 == 0 { stored() } else { deflate },
                );
            }
        });
        let fixture = Fixture::new();
        let summary = fixture.unpack(&bytes, LIMITS).unwrap();
        assert_eq!((summary.files, summary.dirs), (1000, 10));
        for i in 0..1000 {
            let written = fs::read(fixture.path("dest").join(name(i))).unwrap();
            assert_eq!(written, content(i), "file {i}");
        }
        fixture.assert_nothing_outside();
    }

    #[test]
    fn keeps_permission_bits_and_drops_setuid_setgid_and_sticky() {
        let bytes = zip_of(|w| {
            add(w, "suid", b"x", with_mode(S_IFREG | 0o4755));
            add(w, "sgid", b"x", with_mode(S_IFREG | 0o2750));
            add(w, "read-only", b"x", with_mode(S_IFREG | 0o444));
            w.add_directory("sticky/", with_mode(S_IFDIR | 0o1700))
                .unwrap();
            add(w, "sticky/inner", b"x", with_mode(S_IFREG | 0o600));
        });
        let fixture = Fixture::new();
        fixture.unpack(&bytes, LIMITS).unwrap();
        let mode = |name| mode_of(&fixture.path("dest").join(name));
        assert_eq!(
            [mode("suid"), mode("sgid"), mode("read-only")],
            [0o755, 0o750, 0o444]
        );
        assert_eq!([mode("sticky"), mode("sticky/inner")], [0o700, 0o600]);
    }

    #[test]
    fn reports_names_too_long_for_the_filesystem() {
        let name = "n".repeat(300);
        failed(&files(&[&name]), "NameTooLong", &name);
    }
}
