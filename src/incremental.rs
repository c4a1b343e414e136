//! Incremental updates: when a new ZIP arrives while a release unpacked from an earlier ZIP is
//! live, every entry of the new ZIP with the same path, size, CRC-32 and permission bits as a
//! file of the live release is taken from the live release (`reuse`) instead of being
//! decompressed, and, over HTTP and S3 with byte ranges (`source/ranges.rs`), instead of being
//! downloaded.
//!
//! What makes that possible is the *manifest* written for every release unpacked from a ZIP,
//! `${directory}/manifests/<release>.jsonl` (outside `releases/`, where nothing hidden stays;
//! created and removed with its release by `releases.rs`): a header line (format, SHA-256 and
//! size of the ZIP's central directory), then one line per regular file: path, size, CRC-32,
//! permission bits and the mtime it was given.
//!
//! Invariants:
//! - Writing into the new release never changes an older one with the default `reuse = copy`:
//!   a reused file is a copy (a reflink through `FICLONE` where the filesystem shares blocks
//!   copy-on-write, else `copy_file_range`). `reuse = hardlink` shares inodes between releases
//!   (an in-place edit of one changes the others) and is only used when asked for.
//! - A live file is trusted only while it still looks as it was written: opened beneath the live
//!   release without following any symlink (`openat2` with `RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS`), a regular file with the manifest's size and mtime (rsync's quick
//!   check). Otherwise the entry is unpacked from the archive; if its bytes were not downloaded,
//!   the unpack fails and the next check plans again.
//! - The manifest is advisory: missing, unreadable, of another format, or describing files that
//!   changed means less reuse, never a wrong file.
//! - Nothing here reads an archive: the unpacker (`unpack.rs`) validates every entry with the
//!   same planner whether its bytes are then decompressed or taken from the live release.

use std::fs::{self, File};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

use rustix::fs::{AtFlags, CWD, Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::releases::Releases;
use crate::unpack::{self, FileRecord, Reuse, ReuseRequest, Unpacked};

/// `reuse`: where the unchanged files of an incremental update come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReuseMode {
    /// A copy of the live release's file (a reflink where the filesystem supports it).
    #[default]
    Copy,
    /// A hard link to the live release's file: no copy at all, but the releases share the file.
    Hardlink,
    /// Always unpack everything; no manifests are written.
    Off,
}

impl ReuseMode {
    pub fn parse(value: &str) -> Option<ReuseMode> {
        match value.trim().to_ascii_lowercase().as_str() {
            "copy" => Some(ReuseMode::Copy),
            "hardlink" => Some(ReuseMode::Hardlink),
            "off" => Some(ReuseMode::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReuseMode::Copy => "copy",
            ReuseMode::Hardlink => "hardlink",
            ReuseMode::Off => "off",
        }
    }
}

/// Version of the manifest format; another version is ignored (no reuse, nothing breaks).
const FORMAT: u32 = 1;

/// The first line of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// Regular files listed on the following lines.
    pub files: usize,
    /// SHA-256 of the ZIP's central directory through its end: every entry's name, sizes,
    /// CRC-32, attributes and offset. Equal digests mean equal content for ranged updates,
    /// which never see the whole ZIP.
    pub central_directory_sha256: String,
    /// Bytes from the central directory to the end of the ZIP: how much a ranged update asks
    /// for first.
    pub tail: u64,
}

/// A release's manifest, as written after it is unpacked.
#[derive(Debug)]
pub struct Manifest {
    pub header: Header,
    pub files: Vec<FileRecord>,
}

/// One file line: path, size, CRC-32, mode, mtime seconds (`null`: none recorded), nanoseconds.
type Line = (String, u64, u32, u32, Option<i64>, u32);

impl Manifest {
    /// The manifest of what [`unpack::unpack_zip_reusing`] wrote from `archive`.
    pub fn of(archive: &Path, unpacked: Unpacked) -> io::Result<Manifest> {
        let central_directory_sha256 =
            central_directory_digest(archive, unpacked.central_directory, unpacked.len)?;
        Ok(Manifest {
            header: Header {
                format: FORMAT,
                files: unpacked.files.len(),
                central_directory_sha256,
                tail: unpacked.len.saturating_sub(unpacked.central_directory),
            },
            files: unpacked.files,
        })
    }

    /// Write it to `path` (temporary file and rename). No fsync: a manifest lost to a crash
    /// only costs reuse, and a torn one is rejected when read.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let tmp = crate::fsutil::temp_sibling(path);
        let written = (|| {
            let mut out = io::BufWriter::with_capacity(256 * 1024, File::create(&tmp)?);
            serde_json::to_writer(&mut out, &self.header)?;
            out.write_all(b"\n")?;
            for f in &self.files {
                let (secs, nanos) = match f.mtime.map(|t| t.duration_since(UNIX_EPOCH)) {
                    Some(Ok(d)) => (i64::try_from(d.as_secs()).ok(), d.subsec_nanos()),
                    _ => (None, 0),
                };
                let line: Line = (f.path.clone(), f.size, f.crc, f.mode, secs, nanos);
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(io::IntoInnerError::into_error)?;
            fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

/// SHA-256 of bytes `start..len` of `archive`.
pub fn central_directory_digest(archive: &Path, start: u64, len: u64) -> io::Result<String> {
    let file = File::open(archive)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    let mut at = start;
    while at < len {
        let want = usize::try_from(len - at).map_or(buf.len(), |n| n.min(buf.len()));
        file.read_exact_at(&mut buf[..want], at)?;
        hasher.update(&buf[..want]);
        at += want as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What the manifest says of one file of the live release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    size: u64,
    crc: u32,
    mode: u32,
    /// Seconds and nanoseconds since the epoch.
    mtime: (i64, u32),
}

/// The live release and its manifest, the base of an incremental update. Loading it reads only
/// the manifest's header (an unchanged check must stay cheap); the file list is read the first
/// time an update needs it.
#[derive(Debug)]
pub struct Base {
    mode: ReuseMode,
    /// The live release (a real path).
    release: PathBuf,
    manifest: PathBuf,
    header: Header,
    /// The live release's content id in the state (`ReleaseInfo::sha256`).
    content_id: String,
    files: OnceLock<Option<Files>>,
    dir: OnceLock<Option<OwnedFd>>,
}

impl Base {
    /// The base for an update while release `name` is live, its files at `path` (under
    /// `releases/`, or `current` itself in exchange mode), with content id `content_id`; `None`
    /// when reuse is off or the live release has no usable manifest.
    pub fn load(
        mode: ReuseMode,
        releases: &Releases,
        live: Option<(&str, &Path)>,
        content_id: Option<&str>,
    ) -> Option<Arc<Base>> {
        if mode == ReuseMode::Off {
            return None;
        }
        let (name, live) = live?;
        let manifest = releases.manifest_path(name);
        let file = File::open(&manifest).ok()?;
        let mut first = String::new();
        BufReader::with_capacity(4096, file)
            .read_line(&mut first)
            .ok()?;
        let header: Header = serde_json::from_str(&first).ok()?;
        if header.format != FORMAT {
            return None;
        }
        Some(Arc::new(Base {
            mode,
            release: live.to_path_buf(),
            manifest,
            header,
            content_id: content_id.unwrap_or_default().to_string(),
            files: OnceLock::new(),
            dir: OnceLock::new(),
        }))
    }

    /// Bytes of the live ZIP from its central directory to its end.
    pub fn tail(&self) -> u64 {
        self.header.tail
    }

    /// The live release's content id when `central_directory_sha256` is its central
    /// directory's: the new ZIP lists exactly the same entries at the same offsets.
    pub fn same_content(&self, central_directory_sha256: &str) -> Option<&str> {
        (!self.content_id.is_empty()
            && self.header.central_directory_sha256 == central_directory_sha256)
            .then_some(self.content_id.as_str())
    }

    fn files(&self) -> Option<&Files> {
        self.files
            .get_or_init(|| {
                let read = read_files(&self.manifest, self.header.files);
                read.inspect_err(|e| {
                    tracing::warn!("ignoring the manifest {}: {e}", self.manifest.display())
                })
                .ok()
            })
            .as_ref()
    }

    /// The live release's directory, opened once for `openat2`.
    fn dir(&self) -> Option<&OwnedFd> {
        self.dir
            .get_or_init(|| {
                let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
                rustix::fs::open(&self.release, flags, Mode::empty()).ok()
            })
            .as_ref()
    }

    /// The live copy of `path` if it is the file the manifest describes and matches `size`,
    /// `crc` and `mode`: opened without following symlinks, then checked with `fstat`.
    fn open(
        &self,
        path: &str,
        size: u64,
        crc: u32,
        mode: u32,
    ) -> Option<(File, fs::Metadata, Known)> {
        let known = self.files()?.get(path)?;
        if (known.size, known.crc, known.mode) != (size, crc, mode) {
            return None;
        }
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        // ENOSYS (a kernel before 5.6) and every other failure: not reused.
        let fd = rustix::fs::openat2(self.dir()?, path, flags, Mode::empty(), resolve).ok()?;
        let file = File::from(fd);
        let meta = file.metadata().ok()?;
        let unchanged = meta.is_file()
            && meta.len() == size
            && (meta.mtime(), meta.mtime_nsec()) == (known.mtime.0, i64::from(known.mtime.1));
        unchanged.then_some((file, meta, known))
    }

    /// Whether the update will take this regular file from the live release, as
    /// [`Reuser::place`] will decide: for planning a ranged download. `path` is normalised.
    pub fn can_supply(&self, path: &str, size: u64, crc: u32, mode: u32) -> bool {
        self.open(path, size, crc, mode).is_some()
    }

    /// The unpacker's view of this base. `absent[index]`: the bytes of entry `index` were not
    /// downloaded, so it must come from the live release.
    pub fn reuser<'a>(&'a self, absent: Option<&'a [bool]>) -> Reuser<'a> {
        Reuser { base: self, absent }
    }
}

/// The files of a manifest by path. Only a keyed 64-bit hash of each path is kept, not the
/// path (at 100,000 files the paths cost 8 MB against the 64 MB peak the issue allows): the
/// caller looks up the path of an entry of the *new* archive and opens the live file at that
/// same path, so a hash collision could only match the metadata of another file, which must
/// then also agree in size, CRC-32, mode, and the live file's size and mtime. That is far less
/// likely than the CRC-32 collision that reuse already accepts (2^-32 per changed file), and the
/// key is random per process, so an archive cannot be built to collide.
#[derive(Debug)]
struct Files {
    table: hashbrown::HashTable<(u64, Known)>,
    hasher: RandomState,
}

impl Files {
    fn get(&self, path: &str) -> Option<Known> {
        let hash = self.hasher.hash_one(path);
        self.table
            .find(hash, |(h, _)| *h == hash)
            .map(|(_, known)| *known)
    }
}

/// Read the file lines of a manifest.
fn read_files(manifest: &Path, expected: usize) -> io::Result<Files> {
    let mut lines = BufReader::with_capacity(256 * 1024, File::open(manifest)?).lines();
    lines.next().transpose()?;
    let mut files = Files {
        table: hashbrown::HashTable::with_capacity(expected),
        hasher: RandomState::new(),
    };
    for line in lines {
        let (path, size, crc, mode, secs, nanos): Line =
            serde_json::from_str(&line?).map_err(io::Error::other)?;
        // A file without a recorded mtime cannot be checked, so it is never reused.
        let Some(secs) = secs else { continue };
        if files.table.len() == expected {
            return Err(io::Error::other("more files than its header says"));
        }
        let hash = files.hasher.hash_one(path.as_str());
        let known = Known {
            size,
            crc,
            mode,
            mtime: (secs, nanos),
        };
        match files.table.find_mut(hash, |(h, _)| *h == hash) {
            // Two paths with one hash: neither can be trusted.
            Some(slot) => slot.1.size = u64::MAX,
            None => {
                files.table.insert_unique(hash, (hash, known), |(h, _)| *h);
            }
        }
    }
    Ok(files)
}

/// Takes unchanged files from the live release for the unpacker.
pub struct Reuser<'a> {
    base: &'a Base,
    absent: Option<&'a [bool]>,
}

impl Reuse for Reuser<'_> {
    fn place(&self, file: &ReuseRequest<'_>, dest: &Path) -> io::Result<bool> {
        let must = self
            .absent
            .is_some_and(|a| a.get(file.index).copied().unwrap_or(false));
        let Some((src, meta, known)) = self.base.open(file.path, file.size, file.crc, file.mode)
        else {
            if must {
                return Err(io::Error::other(format!(
                    "{} changed in the live release {} while the update ran; the next check plans the download again",
                    file.path,
                    self.base.release.display()
                )));
            }
            return Ok(false);
        };
        let same_inode_ok = self.base.mode == ReuseMode::Hardlink
            && meta.mode() & 0o7777 == file.mode
            && file
                .mtime
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| (d.as_secs() as i64, d.subsec_nanos()))
                == Some(known.mtime);
        if same_inode_ok && link(&src, &dest.join(file.path)).is_ok() {
            return Ok(true);
        }
        let out = unpack::create_file(dest, file.path, file.mode)?;
        clone_or_copy(&src, &out, file.size)?;
        if unpack::umask_clears(file.mode) {
            out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(file.mode))?;
        }
        if let Some(mtime) = file.mtime {
            out.set_times(fs::FileTimes::new().set_modified(mtime))?;
        }
        unpack::start_writeback(&out, file.size);
        Ok(true)
    }
}

/// A hard link at `to` to the very inode `src` is open on (through `/proc/self/fd`, so no path
/// of the live release is resolved again).
fn link(src: &File, to: &Path) -> io::Result<()> {
    let proc = format!("/proc/self/fd/{}", src.as_raw_fd());
    rustix::fs::linkat(CWD, proc.as_str(), CWD, to, AtFlags::SYMLINK_FOLLOW)
        .map_err(io::Error::from)
}

/// Copy all `size` bytes of `src` into the empty `out`: a reflink where the filesystem can
/// share blocks, else an in-kernel copy.
fn clone_or_copy(src: &File, out: &File, size: u64) -> io::Result<()> {
    if size > 0 && rustix::fs::ioctl_ficlone(out, src).is_ok() {
        return Ok(());
    }
    let (mut off_in, mut off_out) = (0u64, 0u64);
    while off_in < size {
        let chunk = usize::try_from(size - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), out, Some(&mut off_out), chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if off_in != size {
        return Err(io::Error::other(format!("copied {off_in} of {size} bytes")));
    }
    Ok(())
}

/// Remove manifests whose release is gone (a crash between the two removals) and temporary
/// files of interrupted writes; `live` names the live release, which in exchange mode is not
/// under `releases/`. Call under the deploy lock.
pub fn sweep(releases: &Releases, live: Option<&str>) -> io::Result<()> {
    let dir = releases.manifests();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let names = releases.list()?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let release = name.strip_suffix(".jsonl");
        if !release.is_some_and(|r| live == Some(r) || names.iter().any(|n| n == r)) {
            match fs::remove_file(entry.path()) {
                Ok(()) => tracing::debug!("removed stale manifest {}", entry.path().display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn time(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn manifest_with(files: Vec<FileRecord>) -> Manifest {
        Manifest {
            header: Header {
                format: FORMAT,
                files: files.len(),
                central_directory_sha256: "cd".into(),
                tail: 100,
            },
            files,
        }
    }

    fn record(path: &str, data: &[u8], mode: u32, secs: u64) -> FileRecord {
        FileRecord {
            path: path.into(),
            size: data.len() as u64,
            crc: crc32fast::hash(data),
            mode,
            mtime: Some(time(secs)),
        }
    }

    /// A deploy directory with one release holding `a/f` and its manifest; returns the base.
    fn setup(mode: ReuseMode) -> (tempfile::TempDir, Releases, PathBuf, Arc<Base>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let releases = Releases::open(dir.path()).expect("releases");
        let live = releases.root().join("20260101T000000Z-v1");
        fs::create_dir_all(live.join("a")).expect("mkdir");
        fs::write(live.join("a/f"), b"hello").expect("write");
        let f = File::open(live.join("a/f")).expect("open");
        f.set_times(fs::FileTimes::new().set_modified(time(1_600_000_000)))
            .expect("mtime");
        manifest_with(vec![record("a/f", b"hello", 0o644, 1_600_000_000)])
            .save(&releases.manifest_path("20260101T000000Z-v1"))
            .expect("save");
        let base = Base::load(
            mode,
            &releases,
            Some(("20260101T000000Z-v1", &live)),
            Some("sha"),
        )
        .expect("base");
        (dir, releases, live, base)
    }

    fn request<'a>(path: &'a str, data: &[u8], mode: u32) -> ReuseRequest<'a> {
        ReuseRequest {
            index: 0,
            path,
            size: data.len() as u64,
            crc: crc32fast::hash(data),
            mode,
            mtime: Some(time(1_600_000_000)),
        }
    }

    #[test]
    fn manifests_round_trip_through_their_header_and_lines() {
        let (_dir, releases, _live, base) = setup(ReuseMode::Copy);
        assert_eq!(base.tail(), 100);
        assert_eq!(base.same_content("cd"), Some("sha"));
        assert_eq!(base.same_content("other"), None);
        assert!(base.can_supply("a/f", 5, crc32fast::hash(b"hello"), 0o644));
        assert!(
            !base.can_supply("a/f", 5, crc32fast::hash(b"hellO"), 0o644),
            "other CRC"
        );
        assert!(
            !base.can_supply("a/f", 5, crc32fast::hash(b"hello"), 0o755),
            "other mode"
        );
        assert!(
            !base.can_supply("a/g", 5, crc32fast::hash(b"hello"), 0o644),
            "absent"
        );
        let text = fs::read_to_string(releases.manifest_path("20260101T000000Z-v1")).expect("read");
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn copies_are_independent_of_the_live_release() {
        let (dir, _releases, live, base) = setup(ReuseMode::Copy);
        let dest = dir.path().join("new");
        fs::create_dir_all(dest.join("a")).expect("mkdir");
        assert!(
            !base
                .reuser(None)
                .place(&request("a/f", b"hello", 0o600), &dest)
                .expect("place"),
            "another mode"
        );
        let mut newer = request("a/f", b"hello", 0o644);
        newer.mtime = Some(time(1_700_000_000));
        assert!(base.reuser(None).place(&newer, &dest).expect("place"));
        assert_eq!(fs::read(dest.join("a/f")).expect("read"), b"hello");
        let meta = fs::metadata(dest.join("a/f")).expect("stat");
        assert_eq!(
            (meta.mode() & 0o777, meta.mtime()),
            (0o644, 1_700_000_000),
            "the new entry's mtime"
        );
        assert_ne!(
            meta.ino(),
            fs::metadata(live.join("a/f")).expect("stat").ino()
        );
        fs::write(dest.join("a/f"), b"changed").expect("write");
        assert_eq!(fs::read(live.join("a/f")).expect("read"), b"hello");
    }

    #[test]
    fn hardlinks_share_the_inode_only_when_asked() {
        let (dir, _releases, live, base) = setup(ReuseMode::Hardlink);
        let dest = dir.path().join("new");
        fs::create_dir_all(dest.join("a")).expect("mkdir");
        assert!(
            base.reuser(None)
                .place(&request("a/f", b"hello", 0o644), &dest)
                .expect("place")
        );
        assert_eq!(
            fs::metadata(dest.join("a/f")).expect("stat").ino(),
            fs::metadata(live.join("a/f")).expect("stat").ino()
        );
    }

    #[test]
    fn a_changed_or_replaced_live_file_is_not_reused() {
        let (dir, _releases, live, base) = setup(ReuseMode::Copy);
        let dest = dir.path().join("new");
        fs::create_dir_all(dest.join("a")).expect("mkdir");
        // Same size, new mtime: edited in place.
        fs::write(live.join("a/f"), b"HELLO").expect("edit");
        assert!(
            !base
                .reuser(None)
                .place(&request("a/f", b"hello", 0o644), &dest)
                .expect("place")
        );
        // Its bytes were not downloaded: an error, not a silent hole.
        let absent = [true];
        let err = base
            .reuser(Some(&absent))
            .place(&request("a/f", b"hello", 0o644), &dest)
            .expect_err("must");
        assert!(
            err.to_string().contains("changed in the live release"),
            "{err}"
        );
        // A symlink in the way is never followed.
        fs::remove_dir_all(live.join("a")).expect("rm");
        fs::create_dir(live.join("b")).expect("mkdir");
        std::os::unix::fs::symlink("b", live.join("a")).expect("symlink");
        fs::write(live.join("b/f"), b"hello").expect("write");
        assert!(!base.can_supply("a/f", 5, crc32fast::hash(b"hello"), 0o644));
        assert!(
            fs::read_dir(dest.join("a")).expect("ls").next().is_none(),
            "nothing written"
        );
    }

    #[test]
    fn no_base_without_a_manifest_or_with_reuse_off() {
        let (dir, releases, live, _base) = setup(ReuseMode::Copy);
        let v1 = Some(("20260101T000000Z-v1", live.as_path()));
        assert!(Base::load(ReuseMode::Off, &releases, v1, None).is_none());
        fs::write(
            releases.manifest_path("20260101T000000Z-v1"),
            "{\"format\":99}\n",
        )
        .expect("write");
        assert!(Base::load(ReuseMode::Copy, &releases, v1, None).is_none());
        let other = dir.path().join("releases/20260102T000000Z-v2");
        fs::create_dir(&other).expect("mkdir");
        assert!(
            Base::load(
                ReuseMode::Copy,
                &releases,
                Some(("20260102T000000Z-v2", &other)),
                None
            )
            .is_none()
        );
    }

    #[test]
    fn sweep_removes_manifests_without_a_release() {
        let (_dir, releases, _live, _base) = setup(ReuseMode::Copy);
        manifest_with(Vec::new())
            .save(&releases.manifest_path("20250101T000000Z-gone"))
            .expect("save");
        fs::write(releases.manifests().join("x.tmp-1"), b"").expect("write");
        manifest_with(Vec::new())
            .save(&releases.manifest_path("20250102T000000Z-exchanged"))
            .expect("save");
        sweep(&releases, Some("20250102T000000Z-exchanged")).expect("sweep");
        let mut left: Vec<_> = fs::read_dir(releases.manifests())
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                std::ffi::OsString::from("20250102T000000Z-exchanged.jsonl"),
                std::ffi::OsString::from("20260101T000000Z-v1.jsonl")
            ],
            "the live one of exchange mode stays"
        );
    }
}
