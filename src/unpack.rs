//! Turning an untrusted ZIP (or a local directory tree) into a release directory.
//!
//! The input comes from a web server, a bucket or a shared disk, so every entry is validated
//! *before* anything is written: one planner (`Planner`) checks names, types, duplicates,
//! symlink targets and the `max-files`/`max-size` limits for both sources. Writing then follows an
//! order that makes escapes impossible by construction: directories (`mkdir`, never following
//! anything), regular files in parallel (`O_CREAT|O_EXCL|O_NOFOLLOW`), symlinks only after every
//! file exists, and directory modes/mtimes last, deepest first.
//!
//! Headers lie: bytes are counted while writing, each file must match its declared size and
//! CRC-32, and the first error stops every worker. Not done here: durability (the caller
//! `syncfs`es the release) and removing a half-written `dest` after an error (the caller does).

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions, Permissions};
use std::hash::BuildHasher;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, CWD, Timestamps, UTIME_OMIT};
use tokio_util::sync::CancellationToken;
use zip::result::ZipError;
use zip::{CompressionMethod, System, ZipArchive, ZipReadOptions};

/// Caps on one release, from the `max-size` and `max-files` configuration keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total uncompressed bytes of all regular files (`max-size`).
    pub max_bytes: u64,
    /// Number of entries: files, symlinks, and directories, implied parents included (`max-files`).
    pub max_entries: u64,
}

/// What a successful unpack or copy created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Regular files written.
    pub files: u64,
    /// Directories created, implied parents (`a/` for an entry `a/b`) included.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes written to regular files.
    pub bytes: u64,
    /// Regular files of `files` taken from an earlier release instead of the archive.
    pub reused: u64,
}

/// Why an archive or tree was refused. Entry paths are shown quoted, control characters escaped.
/// An underlying error is the `source`, not part of the message: callers print the chain
/// (`{:#}`), which would otherwise show it twice.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open {}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{} is not a readable ZIP archive", path.display())]
    Archive { path: PathBuf, source: ZipError },
    #[error("entry {path:?}: invalid name: {reason}")]
    InvalidName { path: String, reason: &'static str },
    #[error("entry {path:?}: appears more than once")]
    Duplicate { path: String },
    // Refused rather than "last one wins": on a case-insensitive filesystem (a developer's Mac, a
    // SMB share) one would overwrite the other, so the release would depend on where it lands.
    #[error("entry {path:?}: differs from {other:?} only in letter case")]
    CaseCollision { path: String, other: String },
    #[error("entry {path:?}: directory replaced by a symlink ({parent:?} is a symlink)")]
    SymlinkParent { path: String, parent: String },
    #[error("entry {path:?}: its parent {parent:?} is a file, not a directory")]
    FileParent { path: String, parent: String },
    #[error("entry {path:?}: symlink target {target:?} {reason}")]
    SymlinkTarget {
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("entry {path:?}: {kind} entries are not allowed")]
    SpecialFile { path: String, kind: &'static str },
    #[error("entry {path:?}: encrypted entries are not supported")]
    Encrypted { path: String },
    #[error(
        "entry {path:?}: compression method {method} is not supported (only Stored and Deflated)"
    )]
    UnsupportedCompression { path: String, method: String },
    #[error("entry {path:?}: more than {max} entries; raise `max-files` if this is expected")]
    TooManyEntries { path: String, max: u64 },
    #[error("entry {path:?}: total size exceeds {max} bytes; raise `max-size` if this is expected")]
    TooLarge { path: String, max: u64 },
    #[error("entry {path:?}: holds more than the {declared} bytes its header declares")]
    LargerThanDeclared { path: String, declared: u64 },
    #[error("entry {path:?}: holds {actual} bytes but its header declares {declared}")]
    SmallerThanDeclared {
        path: String,
        declared: u64,
        actual: u64,
    },
    #[error(
        "entry {path:?}: its header claims data past the end of the entries, the archive is corrupt"
    )]
    PastTheEntries { path: String },
    #[error(
        "entry {path:?}: shares bytes with entry {other:?} (an overlapping zip bomb or a corrupt archive)"
    )]
    Overlap { path: String, other: String },
    #[error("entry {path:?}: CRC-32 mismatch, the archive is corrupt")]
    CrcMismatch { path: String },
    #[error("entry {path:?}: corrupt data")]
    Corrupt { path: String, source: ZipError },
    #[error("entry {path:?}: name too long for the filesystem")]
    NameTooLong { path: String, source: io::Error },
    #[error("entry {path:?}: cannot {action}")]
    Io {
        path: String,
        action: &'static str,
        source: io::Error,
    },
    #[error("unpacking was cancelled")]
    Cancelled,
}

type Result<T, E = UnpackError> = std::result::Result<T, E>;

/// Unpack the ZIP at `archive` into `dest`, an existing empty directory. On error `dest` may hold
/// partial content; the caller deletes it. Blocking: run it on a blocking thread.
pub fn unpack_zip(
    archive: &Path,
    dest: &Path,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Result<Summary> {
    unpack_zip_reusing(archive, dest, limits, cancel, None).map(|unpacked| unpacked.summary)
}

/// A regular file of an unpacked ZIP, as its entry describes it (the manifest of a release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Normalised path inside the release.
    pub path: String,
    pub size: u64,
    pub crc: u32,
    /// Permission bits as written.
    pub mode: u32,
    /// As written; `None`: the entry had none, the file kept the time it was written.
    pub mtime: Option<SystemTime>,
}

/// What [`unpack_zip_reusing`] wrote, and where the archive's central directory is.
#[derive(Debug)]
pub struct Unpacked {
    pub summary: Summary,
    /// Every regular file, in archive order.
    pub files: Vec<FileRecord>,
    /// Offset of the central directory; it runs to `len`, the end of the archive.
    pub central_directory: u64,
    pub len: u64,
}

/// Where unchanged regular files can come from instead of the archive: an earlier release (an
/// incremental update, `incremental.rs`). The entry has passed every check of the planner.
pub trait Reuse: Sync {
    /// Create `file.path` in `dest` (its parent exists) with [`create_file`] or as a hard link,
    /// from an earlier release that holds this very file, and give it `mode` and `mtime`.
    /// `Ok(false)`: no such file there; the caller unpacks the entry from the archive.
    fn place(&self, file: &ReuseRequest<'_>, dest: &Path) -> io::Result<bool>;
}

/// One regular file the unpacker is about to write, for [`Reuse::place`].
#[derive(Debug)]
pub struct ReuseRequest<'a> {
    /// Position in the archive's central directory.
    pub index: usize,
    pub path: &'a str,
    pub size: u64,
    pub crc: u32,
    pub mode: u32,
    pub mtime: Option<SystemTime>,
}

/// [`unpack_zip`], taking what it can from `reuse`, and listing the files it wrote.
pub fn unpack_zip_reusing(
    archive: &Path,
    dest: &Path,
    limits: &Limits,
    cancel: &CancellationToken,
    reuse: Option<&dyn Reuse>,
) -> Result<Unpacked> {
    unpack_open_zip(OpenZip::open(archive)?, dest, limits, cancel, reuse)
}

/// A ZIP whose central directory has been read (by the zip crate), so that planning an
/// incremental download (`source/ranges.rs`) and unpacking read it once.
#[derive(Clone)]
pub struct OpenZip {
    path: PathBuf,
    reader: PosReader,
    zip: ZipArchive<PosReader>,
}

impl std::fmt::Debug for OpenZip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenZip")
            .field("path", &self.path)
            .field("entries", &self.zip.len())
            .finish()
    }
}

impl OpenZip {
    /// Read the central directory of the ZIP at `path`.
    pub fn open(path: &Path) -> Result<OpenZip> {
        let open = |source| UnpackError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open)?;
        let len = file.metadata().map_err(open)?.len();
        let reader = PosReader {
            file: Arc::new(file),
            pos: 0,
            len,
        };
        let zip = ZipArchive::new(reader.clone()).map_err(|source| UnpackError::Archive {
            path: path.to_path_buf(),
            source,
        })?;
        let path = path.to_path_buf();
        Ok(OpenZip { path, reader, zip })
    }

    /// The archive, for reading its central directory.
    pub fn archive(&self) -> &ZipArchive<impl Read + Seek + use<>> {
        &self.zip
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// [`unpack_zip_reusing`] of an archive already open.
pub fn unpack_open_zip(
    open: OpenZip,
    dest: &Path,
    limits: &Limits,
    cancel: &CancellationToken,
    reuse: Option<&dyn Reuse>,
) -> Result<Unpacked> {
    let OpenZip {
        path: archive,
        reader,
        mut zip,
    } = open;
    let len = reader.len;
    let bad_archive = |source| UnpackError::Archive {
        path: archive.clone(),
        source,
    };
    if zip.has_duplicate_names() {
        // `ZipArchive` keys entries by name, so find the repeated one in the raw directory.
        return Err(UnpackError::Duplicate {
            path: first_duplicate(reader),
        });
    }
    let mut planner = Planner::with_capacity(*limits, zip.len() + zip.len() / 8);
    let directory_start = zip.central_directory_start();
    // (local header start, end of data, index in the planner) of every entry.
    let mut spans = Vec::with_capacity(zip.len());
    let mut extras = CentralExtras::new(reader.clone());
    for index in 0..zip.len() {
        check(cancel)?;
        let name = zip
            .by_index_data(index)
            .map_err(bad_archive)?
            .name_raw()
            .to_vec();
        // The central directory only: local headers are read when an entry's data is (an
        // incremental download may not have the others).
        let entry = zip.by_index_data(index).map_err(bad_archive)?;
        let (mode, dos_dir) = zip_mode(entry.system(), entry.external_attributes());
        let (path, kind) = planner.admit(&name, mode, dos_dir)?;
        if kind != Type::Dir {
            if entry.encrypted() {
                return Err(UnpackError::Encrypted { path });
            }
            let method = entry.compression();
            if !matches!(
                method,
                CompressionMethod::Stored | CompressionMethod::Deflated
            ) {
                // Display names known methods ("Bzip2"); Debug shows the number of others.
                let method = match method.to_string() {
                    name if name == "Unknown" => format!("{method:?}"),
                    name => name,
                };
                return Err(UnpackError::UnsupportedCompression { path, method });
            }
        }
        // Headers lie about sizes (ZIP64 ones too): an entry's bytes must end before the
        // central directory, and no two entries may share bytes (the overlapping zip bomb).
        // The data starts after the local header's name and extra field; the central name
        // stands in for the local one and the local extra field is not read, so `end` is a
        // lower bound: an overlap shorter than a local extra field (at most 64 KiB per pair of
        // neighbours, nothing that multiplies) goes unnoticed here.
        let start = entry.header_start();
        let end = (start.saturating_add(30 + name.len() as u64))
            .checked_add(entry.compressed_size())
            .filter(|&end| end <= directory_start);
        let Some(end) = end else {
            return Err(UnpackError::PastTheEntries { path });
        };
        spans.push((start, end, planner.entries.len()));
        let extended = extras.mtime(entry.central_header_start());
        let mtime = match extended {
            Some(secs) => UNIX_EPOCH.checked_add(Duration::from_secs(secs.into())),
            None => entry.last_modified().and_then(|t| {
                let (h, m, s) = (t.hour(), t.minute(), t.second());
                let days = days_from_civil(t.year().into(), t.month().into(), t.day().into());
                let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s);
                UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(secs).ok()?))
            }),
        };
        let size = entry.size();
        drop(entry);
        let kind = match kind {
            Type::Dir => Kind::Dir,
            Type::File => Kind::File { size, index },
            Type::Symlink => Kind::Symlink {
                target: read_zip_target(&mut zip, index, &path, size)?,
            },
        };
        let default_mode = if kind == Kind::Dir { 0o755 } else { 0o644 };
        let mode = mode.map_or(default_mode, |m| m & 0o777);
        planner.add(Entry {
            path,
            kind,
            mode,
            mtime,
        })?;
    }
    spans.sort_unstable();
    if let Some(pair) = spans.windows(2).find(|pair| pair[0].1 > pair[1].0) {
        return Err(UnpackError::Overlap {
            path: planner.entries[pair[1].2].path.clone(),
            other: planner.entries[pair[0].2].path.clone(),
        });
    }
    drop(spans);
    let entries = planner.finish()?;
    let contents = ZipContents { zip, reuse };
    let summary = build(&entries, dest, limits, cancel, &contents)?;
    let files = entries.into_iter().filter_map(|entry| match entry.kind {
        Kind::File { size, index } => Some(FileRecord {
            crc: contents.zip.by_index_data(index).map_or(0, |e| e.crc32()),
            path: entry.path,
            size,
            mode: entry.mode,
            mtime: entry.mtime,
        }),
        _ => None,
    });
    Ok(Unpacked {
        summary,
        files: files.collect(),
        central_directory: directory_start,
        len,
    })
}

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
pub fn check_tree(dir: &Path, limits: &Limits, cancel: &CancellationToken) -> Result<Summary> {
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
        check(cancel)?;
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
            let (path, kind) =
                planner.admit(rel.as_os_str().as_bytes(), Some(meta.mode()), false)?;
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

/// The longest entry name or symlink target accepted (Linux `PATH_MAX`).
const PATH_MAX: u64 = 4096;
/// Write buffer per worker.
const BUF_SIZE: usize = 256 * 1024;
/// Upper bound on parallel writers: beyond this, disks rarely go faster.
const MAX_WORKERS: usize = 8;
/// Bytes copied per `copy_file_range` round for local files, so cancellation is noticed.
const LOCAL_CHUNK: u64 = 16 * 1024 * 1024;

// File type bits of a unix mode as stored in ZIP external attributes (the traditional values,
// independent of the platform we run on).
const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFIFO: u32 = 0o010_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    /// `index`: position in the ZIP's central directory (unused for a local tree).
    File {
        size: u64,
        index: usize,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// One validated entry of the plan.
#[derive(Debug)]
struct Entry {
    /// Normalised: `/`-separated, no `.`/`..`/empty components, no trailing `/`.
    path: String,
    kind: Kind,
    /// Permission bits only (`mode & 0o777`).
    mode: u32,
    mtime: Option<SystemTime>,
}

/// The one validator both sources go through: `admit` each entry's name and type, `add` the
/// entry, then `finish` checks parents and adds the implied directories.
struct Planner {
    limits: Limits,
    entries: Vec<Entry>,
    /// Indices into `entries`, by lower-cased path: one table finds both duplicates and names
    /// that differ only in case, and holds no copy of any path (maps of paths cost 35 MB at
    /// 100,000 entries, against the 64 MB peak the issue allows).
    names: hashbrown::HashTable<usize>,
    hasher: std::hash::RandomState,
    count: u64,
    bytes: u64,
}

/// `path` lower-cased, without a copy when it already is (the common case).
fn folded(path: &str) -> std::borrow::Cow<'_, str> {
    if path
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
    {
        std::borrow::Cow::Borrowed(path)
    } else {
        std::borrow::Cow::Owned(path.to_lowercase())
    }
}

impl Planner {
    fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, 0)
    }

    /// For about `entries` entries: no reallocation (and no transient copy) while they come.
    fn with_capacity(limits: Limits, entries: usize) -> Self {
        Planner {
            limits,
            entries: Vec::with_capacity(entries),
            names: hashbrown::HashTable::with_capacity(entries),
            hasher: std::hash::RandomState::new(),
            count: 0,
            bytes: 0,
        }
    }

    /// The index of the entry whose lower-cased path is `key`.
    fn claimed(&self, key: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        let same = |&i: &usize| folded(&self.entries[i].path) == key;
        self.names.find(hash, same).copied()
    }

    /// The index of the entry with exactly this normalised path.
    fn index_of(&self, path: &str) -> Option<usize> {
        let i = self.claimed(&folded(path))?;
        (self.entries[i].path == path).then_some(i)
    }

    /// Checks the entry count, the name and the type; returns the normalised path and the type.
    fn admit(&mut self, raw: &[u8], mode: Option<u32>, dir_flag: bool) -> Result<(String, Type)> {
        let (path, trailing_slash) = normalize(raw)?;
        self.count_entry(&path)?;
        let kind = classify(&path, mode, dir_flag || trailing_slash)?;
        Ok((path, kind))
    }

    fn count_entry(&mut self, path: &str) -> Result<()> {
        self.count += 1;
        if self.count > self.limits.max_entries {
            let max = self.limits.max_entries;
            return Err(UnpackError::TooManyEntries {
                path: path.to_owned(),
                max,
            });
        }
        Ok(())
    }

    fn add(&mut self, entry: Entry) -> Result<()> {
        match &entry.kind {
            Kind::File { size, .. } => {
                self.bytes = self.bytes.saturating_add(*size);
                if self.bytes > self.limits.max_bytes {
                    let max = self.limits.max_bytes;
                    return Err(UnpackError::TooLarge {
                        path: entry.path,
                        max,
                    });
                }
            }
            Kind::Symlink { target } => check_target(&entry.path, target)?,
            Kind::Dir => {}
        }
        if let Some(i) = self.claimed(&folded(&entry.path)) {
            let other = &self.entries[i].path;
            if *other == entry.path {
                return Err(UnpackError::Duplicate { path: entry.path });
            }
            let other = other.clone();
            return Err(UnpackError::CaseCollision {
                path: entry.path,
                other,
            });
        }
        let Planner {
            names,
            entries,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(folded(&entry.path).as_ref());
        let rehash = |&i: &usize| hasher.hash_one(folded(&entries[i].path).as_ref());
        names.insert_unique(hash, entries.len(), rehash);
        entries.push(entry);
        Ok(())
    }

    /// Every parent must be a directory; missing ones are added. Walking up stops at the first
    /// known parent, whose own parents are checked on its turn, so the cost stays linear.
    fn finish(mut self) -> Result<Vec<Entry>> {
        for i in 0..self.entries.len() {
            let path = self.entries[i].path.clone();
            let mut rest = path.as_str();
            while let Some((parent, _)) = rest.rsplit_once('/') {
                rest = parent;
                if let Some(known) = self.index_of(parent) {
                    let (path, parent) = match self.entries[known].kind {
                        Kind::Dir => break,
                        _ => (path.clone(), parent.to_owned()),
                    };
                    return Err(match self.entries[known].kind {
                        Kind::Symlink { .. } => UnpackError::SymlinkParent { path, parent },
                        _ => UnpackError::FileParent { path, parent },
                    });
                }
                self.count_entry(parent)?;
                let implied = Entry {
                    path: parent.to_owned(),
                    kind: Kind::Dir,
                    mode: 0o755,
                    mtime: None,
                };
                self.add(implied)?;
            }
        }
        Ok(self.entries)
    }
}

/// The type of the entry at `path` from its unix `mode` (if any) and whether its name or DOS
/// attributes mark a directory.
fn classify(path: &str, mode: Option<u32>, dir_flag: bool) -> Result<Type> {
    let special = |kind| {
        Err(UnpackError::SpecialFile {
            path: path.to_owned(),
            kind,
        })
    };
    match mode.map_or(0, |m| m & S_IFMT) {
        S_IFCHR => special("character device"),
        S_IFBLK => special("block device"),
        S_IFIFO => special("FIFO"),
        S_IFSOCK => special("socket"),
        S_IFLNK if dir_flag => {
            let reason = "is a symlink but ends with `/`";
            let path = path.to_owned();
            Err(UnpackError::InvalidName { path, reason })
        }
        S_IFLNK => Ok(Type::Symlink),
        S_IFDIR => Ok(Type::Dir),
        _ if dir_flag => Ok(Type::Dir),
        0 | S_IFREG => Ok(Type::File),
        _ => special("unknown file type"),
    }
}

/// The unix mode of a ZIP entry (when it has one) and whether its DOS attributes mark a
/// directory.
fn zip_mode(system: System, attrs: u32) -> (Option<u32>, bool) {
    let mode = (system == System::Unix && attrs >> 16 != 0).then_some(attrs >> 16);
    (mode, mode.is_none() && attrs & 0x10 != 0)
}

/// A ZIP entry as the unpacker will see it, judged from its central directory record alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    /// The normalised path.
    pub path: String,
    /// Whether the unpacker reads the entry's data: everything but directories.
    pub has_data: bool,
    /// Permission bits, for a regular file.
    pub file_mode: Option<u32>,
}

/// How [`unpack_zip`] will see the entry named `name` with these attributes (for planning an
/// incremental download, `source/ranges.rs`); `None` when it refuses the name or the type.
pub fn zip_entry_view(name: &[u8], system: System, attrs: u32) -> Option<EntryView> {
    let (path, trailing_slash) = normalize(name).ok()?;
    let (mode, dos_dir) = zip_mode(system, attrs);
    let kind = classify(&path, mode, dos_dir || trailing_slash).ok()?;
    let file_mode = (kind == Type::File).then(|| mode.map_or(0o644, |m| m & 0o777));
    let has_data = kind != Type::Dir;
    Some(EntryView {
        path,
        has_data,
        file_mode,
    })
}

/// Validates a raw entry name and normalises it; also reports a trailing `/` (a directory).
fn normalize(raw: &[u8]) -> Result<(String, bool)> {
    let invalid = |reason| {
        let path = String::from_utf8_lossy(raw).into_owned();
        Err(UnpackError::InvalidName { path, reason })
    };
    if raw.contains(&0) {
        return invalid("contains a NUL byte");
    }
    let Ok(name) = std::str::from_utf8(raw) else {
        return invalid("is not valid UTF-8");
    };
    if name.len() > PATH_MAX as usize {
        return invalid("is longer than 4096 bytes");
    }
    if name.contains('\\') {
        return invalid("contains a backslash");
    }
    if name.starts_with('/') {
        return invalid("is absolute");
    }
    if let [drive, b':', ..] = raw
        && drive.is_ascii_alphabetic()
    {
        return invalid("starts with a Windows drive prefix");
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return invalid("contains a `..` component"),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return invalid("is empty");
    }
    Ok((parts.join("/"), name.ends_with('/')))
}

/// A symlink at `path` may point anywhere inside the release, judged without looking at the
/// disk: after dropping `.`, only a leading run of `..` (no deeper than the link's own directory)
/// then plain names. Lexical normalisation alone is not enough: with `d -> .`, a target `d/..`
/// normalises to `.` but resolves to the release's parent.
fn check_target(path: &str, target: &[u8]) -> Result<()> {
    let refuse = |reason| {
        let target = String::from_utf8_lossy(&target[..target.len().min(256)]).into_owned();
        Err(UnpackError::SymlinkTarget {
            path: path.to_owned(),
            target,
            reason,
        })
    };
    if target.is_empty() {
        return refuse("is empty");
    }
    if target.len() as u64 > PATH_MAX {
        return refuse("is longer than 4096 bytes");
    }
    if target.contains(&0) {
        return refuse("contains a NUL byte");
    }
    if target.starts_with(b"/") {
        return refuse("is absolute");
    }
    let depth = path.matches('/').count();
    let (mut ups, mut descended) = (0, false);
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if descended => {
                return refuse("has `..` after a name, which can escape through another symlink");
            }
            b".." => {
                ups += 1;
                if ups > depth {
                    return refuse("leaves the release");
                }
            }
            _ => descended = true,
        }
    }
    Ok(())
}

/// Reads a symlink entry's target (its contents) through the same checked copy as files.
fn read_zip_target(
    zip: &mut ZipArchive<PosReader>,
    index: usize,
    path: &str,
    size: u64,
) -> Result<Vec<u8>> {
    if size > PATH_MAX {
        let target = format!("<{size} bytes>");
        return Err(UnpackError::SymlinkTarget {
            path: path.to_owned(),
            target,
            reason: "is longer than 4096 bytes",
        });
    }
    let mut entry = zip
        .by_index_with_options(index, ZipReadOptions::new().ignore_crc32(true))
        .map_err(|source| UnpackError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
    let crc = entry.crc32();
    let mut target = Vec::new();
    let mut buf = [0; PATH_MAX as usize];
    copy_counted(
        &mut entry,
        &mut target,
        path,
        size,
        Some(crc),
        &mut buf,
        &mut |_| Ok(()),
    )?;
    Ok(target)
}

/// Copies exactly `declared` bytes or fails: never asks for more than one byte past the declared
/// size, calls `charge` before writing each chunk (limits, cancellation), and checks the CRC-32
/// at the end. Returns the bytes written.
fn copy_counted(
    reader: &mut impl Read,
    out: &mut impl Write,
    path: &str,
    declared: u64,
    crc: Option<u32>,
    buf: &mut [u8],
    charge: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<u64> {
    let (mut written, mut hash) = (0u64, 0u32);
    loop {
        let remaining = declared - written;
        let want = usize::try_from(remaining.max(1)).map_or(buf.len(), |r| r.min(buf.len()));
        let n = match reader.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The zip reader enforces the declared size too; with its CRC check off (we check
            // the CRC ourselves) `InvalidData` past the declared size can only mean that.
            Err(e) if remaining == 0 && e.kind() == io::ErrorKind::InvalidData => {
                return Err(UnpackError::LargerThanDeclared {
                    path: path.to_owned(),
                    declared,
                });
            }
            Err(e) => {
                return Err(UnpackError::Corrupt {
                    path: path.to_owned(),
                    source: e.into(),
                });
            }
        };
        if n == 0 {
            if remaining > 0 {
                let actual = written;
                return Err(UnpackError::SmallerThanDeclared {
                    path: path.to_owned(),
                    declared,
                    actual,
                });
            }
            break;
        }
        if n as u64 > remaining {
            return Err(UnpackError::LargerThanDeclared {
                path: path.to_owned(),
                declared,
            });
        }
        charge(n as u64)?;
        out.write_all(&buf[..n])
            .map_err(|e| io_error(path, "write file", e))?;
        hash = crc32(hash, &buf[..n]);
        written += n as u64;
    }
    if crc.is_some_and(|expected| expected != hash) {
        return Err(UnpackError::CrcMismatch {
            path: path.to_owned(),
        });
    }
    Ok(written)
}

/// Where regular files' bytes come from; each worker gets its own `Reader`.
trait Contents: Sync {
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

struct ZipContents<'a> {
    zip: ZipArchive<PosReader>,
    reuse: Option<&'a dyn Reuse>,
}

impl Contents for ZipContents<'_> {
    /// A clone shares the parsed central directory; reads are positional, so no lock.
    type Reader = (ZipArchive<PosReader>, Vec<u8>);

    fn reader(&self) -> Self::Reader {
        (self.zip.clone(), vec![0; BUF_SIZE])
    }

    fn reused(&self, entry: &Entry, dest: &Path) -> Result<bool> {
        let (Some(reuse), Kind::File { size, index }) = (self.reuse, &entry.kind) else {
            return Ok(false);
        };
        let crc = self.zip.by_index_data(*index).map_or(0, |e| e.crc32());
        let request = ReuseRequest {
            index: *index,
            path: &entry.path,
            size: *size,
            crc,
            mode: entry.mode,
            mtime: entry.mtime,
        };
        let placed = reuse.place(&request, dest);
        placed.map_err(|e| io_error(&entry.path, "take the file from the live release", e))
    }

    fn copy(
        &self,
        (zip, buf): &mut Self::Reader,
        entry: &Entry,
        out: &mut File,
        job: &Job,
    ) -> Result<u64> {
        let Kind::File { size, index } = entry.kind else {
            return Ok(0);
        };
        let path = entry.path.as_str();
        // Our own CRC check (below) keeps "larger than declared" and "bad CRC" apart.
        let options = ZipReadOptions::new()
            .ignore_crc32(true)
            .enforce_header_consistency(true);
        let mut file = zip
            .by_index_with_options(index, options)
            .map_err(|source| UnpackError::Corrupt {
                path: path.to_owned(),
                source,
            })?;
        let crc = Some(file.crc32());
        copy_counted(&mut file, out, path, size, crc, buf, &mut |n| {
            job.charge(path, n)
        })
    }
}

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

/// State shared by the file writers: the first error wins and stops everyone.
struct Job<'a> {
    cancel: &'a CancellationToken,
    max_bytes: u64,
    next: AtomicUsize,
    total: AtomicU64,
    reused: AtomicU64,
    stop: AtomicBool,
    first_error: Mutex<Option<UnpackError>>,
}

impl<'a> Job<'a> {
    fn new(cancel: &'a CancellationToken, max_bytes: u64) -> Job<'a> {
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
    fn charge(&self, path: &str, n: u64) -> Result<()> {
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
fn build(
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
        check(cancel)?;
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
        check(cancel)?;
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
        check(cancel)?;
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

fn check(cancel: &CancellationToken) -> Result<()> {
    match cancel.is_cancelled() {
        true => Err(UnpackError::Cancelled),
        false => Ok(()),
    }
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

fn io_error(path: &str, action: &'static str, source: io::Error) -> UnpackError {
    let path = path.to_owned();
    if source.raw_os_error() == Some(libc::ENAMETOOLONG) {
        UnpackError::NameTooLong { path, source }
    } else {
        UnpackError::Io {
            path,
            action,
            source,
        }
    }
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

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    era * 146_097 + year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year - 719_468
}

/// The first name that appears twice in the raw central directory (`ZipArchive` merges them).
fn first_duplicate(reader: PosReader) -> String {
    let mut seen = std::collections::HashSet::new();
    let found = zip::unstable::read::ZipIterable::try_new(reader, zip::read::Config::default())
        .ok()
        .and_then(|mut archive| {
            let files = archive.files().ok()?;
            files.map_while(|entry| entry.ok()).find_map(|entry| {
                let name = entry.name_raw().to_vec();
                (!seen.insert(name.clone())).then_some(name)
            })
        });
    found.map_or_else(
        || "<unknown>".to_owned(),
        |name| String::from_utf8_lossy(&name).into_owned(),
    )
}

/// CRC-32 (IEEE) continued from `crc`: the zip reader's own check cannot be told apart from
/// its size check (both are `InvalidData` at the end), so we compute it ourselves, with the
/// same SIMD-accelerated crate the zip reader uses.
fn crc32(crc: u32, data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(crc);
    hasher.update(data);
    hasher.finalize()
}

/// Reads central directory headers for what `ZipFileEntry` does not expose, the extended
/// timestamp (0x5455) of the central extra field, parsed as the zip crate parses it there: the
/// first such field with a modification time wins. Headers are read in order, through a buffer.
struct CentralExtras {
    reader: PosReader,
    buf: Vec<u8>,
    /// Archive offset of `buf[0]`.
    at: u64,
}

impl CentralExtras {
    fn new(reader: PosReader) -> Self {
        CentralExtras {
            reader,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// `len` bytes at `offset`, if the archive has them.
    fn bytes(&mut self, offset: u64, len: usize) -> Option<&[u8]> {
        let inside = offset >= self.at && offset + len as u64 <= self.at + self.buf.len() as u64;
        if !inside {
            let want = len
                .max(64 * 1024)
                .min(usize::try_from(self.reader.len.checked_sub(offset)?).ok()?);
            self.buf.resize(want, 0);
            self.reader.file.read_exact_at(&mut self.buf, offset).ok()?;
            self.at = offset;
        }
        let start = usize::try_from(offset - self.at).ok()?;
        self.buf.get(start..start + len)
    }

    /// The modification time of the central header at `offset`, in seconds since the epoch.
    fn mtime(&mut self, offset: u64) -> Option<u32> {
        let head = self.bytes(offset, 46)?;
        if head[..4] != [0x50, 0x4b, 1, 2] {
            return None;
        }
        let field = |at: usize| usize::from(u16::from_le_bytes([head[at], head[at + 1]]));
        let (name_len, extra_len) = (field(28), field(30));
        let extra = self.bytes(offset + 46 + name_len as u64, extra_len)?;
        let mut rest = extra;
        while let [a, b, c, d, tail @ ..] = rest {
            let (id, len) = (
                u16::from_le_bytes([*a, *b]),
                usize::from(u16::from_le_bytes([*c, *d])),
            );
            let body = tail.get(..len)?;
            if let (0x5455, [_flags, t0, t1, t2, t3, ..]) = (id, body) {
                return Some(u32::from_le_bytes([*t0, *t1, *t2, *t3]));
            }
            rest = &tail[len..];
        }
        None
    }
}

/// A cloneable `Read + Seek` over a shared file using `pread`, so each worker's `ZipArchive`
/// reads independently without reopening or re-parsing the archive.
#[derive(Clone)]
struct PosReader {
    file: Arc<File>,
    pos: u64,
    len: u64,
}

impl Read for PosReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PosReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;
    use zip::DateTime;
    use zip::write::{SimpleFileOptions, ZipWriter};

    type Writer = ZipWriter<Cursor<Vec<u8>>>;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 30,
        max_entries: 100_000,
    };

    fn stored() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(CompressionMethod::Stored)
    }

    fn with_mode(mode: u32) -> SimpleFileOptions {
        stored()
            .system(System::Unix)
            .external_attributes(mode << 16)
    }

    fn zip_of(build: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        build(&mut writer);
        writer.finish().unwrap().into_inner()
    }

    fn add(w: &mut Writer, name: &str, data: &[u8], options: SimpleFileOptions) {
        w.start_file(name, options).unwrap();
        w.write_all(data).unwrap();
    }

    fn files(names: &[&str]) -> Vec<u8> {
        zip_of(|w| names.iter().for_each(|name| add(w, name, b"x", stored())))
    }

    fn links(links: &[(&str, &str)]) -> Vec<u8> {
        zip_of(|w| {
            links
                .iter()
                .for_each(|(l, t)| w.add_symlink(*l, *t, stored()).unwrap())
        })
    }

    /// Replaces `from` (same length) wherever it occurs; returns the number of hits.
    fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
        let mut hits = 0;
        for i in 0..=bytes.len() - from.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to);
                hits += 1;
            }
        }
        hits
    }

    /// Overwrites a field of entry `name` in both its local header and its central record.
    fn patch(bytes: &mut [u8], name: &[u8], local: usize, central: usize, value: &[u8]) {
        let mut hits = 0;
        for i in 0..bytes.len() - 4 {
            let (field, name_at) = match bytes[i..i + 4] {
                [0x50, 0x4b, 3, 4] => (local, 30),
                [0x50, 0x4b, 1, 2] => (central, 46),
                _ => continue,
            };
            if bytes.get(i + name_at..i + name_at + name.len()) == Some(name) {
                bytes[i + field..i + field + value.len()].copy_from_slice(value);
                hits += 1;
            }
        }
        assert_eq!(hits, 2, "patched both headers");
    }

    /// A root holding only `archive.zip`, `src/` and the empty `dest/`.
    struct Fixture(TempDir);

    impl Fixture {
        fn new() -> Self {
            let root = TempDir::new().unwrap();
            fs::create_dir(root.path().join("dest")).unwrap();
            fs::create_dir(root.path().join("src")).unwrap();
            Fixture(root)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.path().join(name)
        }
        fn unpack(&self, bytes: &[u8], limits: Limits) -> Result<Summary> {
            fs::write(self.path("archive.zip"), bytes).unwrap();
            let cancel = CancellationToken::new();
            unpack_zip(
                &self.path("archive.zip"),
                &self.path("dest"),
                &limits,
                &cancel,
            )
        }
        fn copy(&self) -> Result<Summary> {
            let cancel = CancellationToken::new();
            copy_tree(&self.path("src"), &self.path("dest"), &LIMITS, &cancel)
        }
        fn assert_nothing_outside(&self) {
            let names = fs::read_dir(self.0.path())
                .unwrap()
                .map(|e| e.unwrap().file_name());
            let mut names: Vec<_> = names.filter(|n| n != "archive.zip").collect();
            names.sort();
            assert_eq!(names, ["dest", "src"]);
        }
        fn dest_is_empty(&self) -> bool {
            fs::read_dir(self.path("dest")).unwrap().next().is_none()
        }
    }

    /// Asserts the variant (by its `Debug` name) and a fragment of the message.
    fn assert_is(error: &UnpackError, variant: &str, fragment: &str) {
        let debug = format!("{error:?}");
        assert_eq!(debug.split([' ', '(']).next(), Some(variant), "{debug}");
        assert!(
            error.to_string().contains(fragment),
            "{error} lacks {fragment}"
        );
    }

    /// Unpacks an archive that must be refused before anything is written.
    fn refused(bytes: &[u8], limits: Limits, variant: &str, fragment: &str) {
        let fixture = Fixture::new();
        let error = fixture.unpack(bytes, limits).unwrap_err();
        assert_is(&error, variant, fragment);
        fixture.assert_nothing_outside();
        assert!(fixture.dest_is_empty(), "wrote before refusing: {error}");
    }

    /// Unpacks an archive that fails while being written: `dest` may be partial, nothing more.
    fn failed(bytes: &[u8], variant: &str, fragment: &str) -> Fixture {
        let fixture = Fixture::new();
        assert_is(
            &fixture.unpack(bytes, LIMITS).unwrap_err(),
            variant,
            fragment,
        );
        fixture.assert_nothing_outside();
        fixture
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn mtime_of(path: &Path) -> i64 {
        fs::symlink_metadata(path).unwrap().mtime()
    }

    #[test]
    fn unpacks_files_directories_symlinks_and_empty_things() {
        let bytes = zip_of(|w| {
            w.add_directory("empty/", stored()).unwrap();
            add(w, "a.txt", b"hello", stored());
            add(
                w,
                "sub/deep/b.txt",
                &[7; 10_000],
                SimpleFileOptions::default(),
            );
            add(w, "zero", b"", stored());
            w.add_symlink("sub/link", "../a.txt", stored()).unwrap();
        });
        let fixture = Fixture::new();
        let summary = fixture.unpack(&bytes, LIMITS).unwrap();
        assert_eq!(
            summary,
            Summary {
                files: 3,
                dirs: 3,
                symlinks: 1,
                bytes: 10_005,
                reused: 0
            }
        );
        let dest = fixture.path("dest");
        assert_eq!(fs::read(dest.join("a.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(dest.join("sub/deep/b.txt")).unwrap(), [7; 10_000]);
        assert_eq!(fs::read(dest.join("zero")).unwrap(), b"");
        assert!(fs::read_dir(dest.join("empty")).unwrap().next().is_none());
        assert_eq!(
            fs::read_link(dest.join("sub/link")).unwrap(),
            Path::new("../a.txt")
        );
        assert_eq!(fs::read(dest.join("sub/link")).unwrap(), b"hello");
        fixture.assert_nothing_outside();
    }

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
    fn entries_without_unix_mode_get_0644_and_0755() {
        let dos = stored().system(System::Dos);
        let bytes = zip_of(|w| {
            w.add_directory("dir/", dos).unwrap();
            add(w, "dir/file", b"x", dos);
        });
        let fixture = Fixture::new();
        fixture.unpack(&bytes, LIMITS).unwrap();
        assert_eq!(mode_of(&fixture.path("dest/dir")), 0o755);
        assert_eq!(mode_of(&fixture.path("dest/dir/file")), 0o644);
    }

    #[test]
    fn keeps_mtimes_from_extended_timestamps_or_dos_time_as_utc() {
        let at = |secs| {
            stored()
                .with_extended_timestamp(Some(secs), None, None)
                .unwrap()
        };
        let dos_time = DateTime::from_date_and_time(2021, 3, 4, 5, 6, 8).unwrap();
        let bytes = zip_of(|w| {
            w.add_directory("dir/", at(1_500_000_000)).unwrap();
            w.start_file("dir/extended", at(1_600_000_000)).unwrap();
            w.start_file("dos", stored().last_modified_time(dos_time))
                .unwrap();
            w.add_symlink("dir/link", "extended", at(1_400_000_000))
                .unwrap();
        });
        let fixture = Fixture::new();
        fixture.unpack(&bytes, LIMITS).unwrap();
        let mtime = |name| mtime_of(&fixture.path("dest").join(name));
        assert_eq!(
            [mtime("dir"), mtime("dir/extended")],
            [1_500_000_000, 1_600_000_000]
        );
        assert_eq!(
            [mtime("dir/link"), mtime("dos")],
            [1_400_000_000, 1_614_834_368]
        );
    }

    #[test]
    fn refuses_unsafe_names() {
        let absolute = Fixture::new().path("evil").display().to_string();
        for (name, why) in [
            (absolute.as_str(), "absolute"),
            ("../evil", "`..`"),
            ("a/../../evil", "`..`"),
            ("..\\evil", "backslash"),
            ("C:/evil", "drive"),
            ("c:evil", "drive"),
        ] {
            refused(&files(&[name]), LIMITS, "InvalidName", why);
        }
    }

    #[test]
    fn refuses_nul_bytes_and_invalid_utf8_in_names() {
        for (byte, why) in [(0, "NUL"), (0xFF, "UTF-8")] {
            let mut bytes = files(&["evil?name"]);
            let mut name = *b"evil?name";
            name[4] = byte;
            assert_eq!(replace_all(&mut bytes, b"evil?name", &name), 2);
            refused(&bytes, LIMITS, "InvalidName", why);
        }
    }

    #[test]
    fn refuses_duplicates_after_normalisation() {
        let bytes = zip_of(|w| {
            w.add_directory("a/", stored()).unwrap();
            add(w, "a", b"x", stored());
        });
        refused(&bytes, LIMITS, "Duplicate", "\"a\"");
        refused(&files(&["b", "./b"]), LIMITS, "Duplicate", "\"b\"");
        let mut bytes = files(&["same1", "same2"]);
        assert_eq!(replace_all(&mut bytes, b"same2", b"same1"), 2);
        refused(&bytes, LIMITS, "Duplicate", "\"same1\"");
    }

    #[test]
    fn refuses_names_that_differ_only_in_case() {
        refused(
            &files(&["README", "readme"]),
            LIMITS,
            "CaseCollision",
            "\"README\"",
        );
        refused(
            &files(&["Docs/a", "docs/b"]),
            LIMITS,
            "CaseCollision",
            "\"Docs\"",
        );
    }

    #[test]
    fn refuses_a_directory_replaced_by_a_symlink() {
        let bytes = zip_of(|w| {
            w.add_symlink("link", "x", stored()).unwrap();
            add(w, "link/file", b"x", stored());
        });
        refused(
            &bytes,
            LIMITS,
            "SymlinkParent",
            "directory replaced by a symlink",
        );
        refused(&files(&["f", "f/g"]), LIMITS, "FileParent", "\"f/g\"");
    }

    #[test]
    fn refuses_absolute_and_escaping_symlinks() {
        refused(
            &links(&[("abs", "/etc/passwd")]),
            LIMITS,
            "SymlinkTarget",
            "absolute",
        );
        refused(
            &links(&[("up", "..")]),
            LIMITS,
            "SymlinkTarget",
            "leaves the release",
        );
        refused(
            &links(&[("a/up", "../../x")]),
            LIMITS,
            "SymlinkTarget",
            "\"a/up\"",
        );
        // Each is harmless alone; together `l` resolves to the release's parent.
        refused(
            &links(&[("d", "."), ("l", "d/..")]),
            LIMITS,
            "SymlinkTarget",
            "\"l\"",
        );
    }

    #[test]
    fn symlink_targets_may_only_climb_then_descend() {
        let allowed = [
            ("l", "x/y"),
            ("a/l", ".."),
            ("a/b/l", "../../x"),
            ("a/l", "./../y/./z"),
        ];
        for (link, target) in allowed {
            assert!(
                check_target(link, target.as_bytes()).is_ok(),
                "{link} -> {target}"
            );
        }
        let refused = [
            ("l", ".."),
            ("a/l", "../../x"),
            ("l", "d/.."),
            ("a/l", "b/../.."),
        ];
        for (link, target) in refused.into_iter().chain([("l", ""), ("l", "/x")]) {
            assert!(
                check_target(link, target.as_bytes()).is_err(),
                "{link} -> {target}"
            );
        }
        assert!(check_target("l", &[b'a'; 4097]).is_err());
    }

    #[test]
    fn refuses_device_fifo_and_socket_entries() {
        let kinds = [(S_IFCHR, "character device"), (S_IFBLK, "block device")];
        for (kind, name) in kinds
            .into_iter()
            .chain([(S_IFIFO, "FIFO"), (S_IFSOCK, "socket")])
        {
            let bytes = zip_of(|w| add(w, "node", b"", with_mode(kind | 0o644)));
            refused(&bytes, LIMITS, "SpecialFile", name);
        }
    }

    #[test]
    fn refuses_encrypted_entries_and_unsupported_compression() {
        use zip::unstable::write::FileOptionsExt;
        let encrypted = stored().with_deprecated_encryption(b"pw").unwrap();
        let bytes = zip_of(|w| add(w, "secret", b"x", encrypted));
        refused(&bytes, LIMITS, "Encrypted", "\"secret\"");
        let mut bytes = files(&["packed"]);
        patch(&mut bytes, b"packed", 8, 10, &12u16.to_le_bytes());
        refused(&bytes, LIMITS, "UnsupportedCompression", "method Bzip2");
    }

    #[test]
    fn refuses_more_entries_than_max_files() {
        let limits = Limits {
            max_entries: 2,
            ..LIMITS
        };
        refused(
            &files(&["a", "b", "c"]),
            limits,
            "TooManyEntries",
            "\"c\": more than 2",
        );
        // Implied parent directories count too.
        refused(
            &files(&["a/b/c/file"]),
            limits,
            "TooManyEntries",
            "raise `max-files`",
        );
    }

    #[test]
    fn refuses_declared_sizes_over_max_size() {
        let bytes = zip_of(|w| {
            ["one", "two"]
                .iter()
                .for_each(|n| add(w, n, &[0; 600], stored()))
        });
        let limits = Limits {
            max_bytes: 1000,
            ..LIMITS
        };
        refused(
            &bytes,
            limits,
            "TooLarge",
            "\"two\": total size exceeds 1000 bytes; raise `max-size`",
        );
    }

    #[test]
    fn stops_a_zip_bomb_at_its_declared_size() {
        let deflate = SimpleFileOptions::default();
        let mut bytes = zip_of(|w| add(w, "bomb.bin", &vec![0; 8 << 20], deflate));
        patch(&mut bytes, b"bomb.bin", 22, 24, &1000u32.to_le_bytes());
        let fixture = failed(&bytes, "LargerThanDeclared", "\"bomb.bin\"");
        assert!(fs::metadata(fixture.path("dest/bomb.bin")).unwrap().len() <= 1000);
    }

    #[test]
    fn counts_bytes_itself_when_the_reader_ignores_the_declared_size() {
        let (mut out, mut buf) = (Vec::new(), [0; 64]);
        let mut reader = Cursor::new(vec![1; 1 << 20]);
        let copied = copy_counted(&mut reader, &mut out, "f", 10, None, &mut buf, &mut |_| {
            Ok(())
        });
        assert_is(&copied.unwrap_err(), "LargerThanDeclared", "10 bytes");
        assert!(out.len() <= 10);
        let cancel = CancellationToken::new();
        let job = Job::new(&cancel, 4);
        let mut charge = |n| job.charge("f", n);
        let mut reader = Cursor::new(vec![1; 10]);
        let copied = copy_counted(&mut reader, &mut out, "f", 10, None, &mut buf, &mut charge);
        assert_is(&copied.unwrap_err(), "TooLarge", "max-size");
    }

    #[test]
    fn refuses_an_entry_shorter_than_declared() {
        let mut bytes = zip_of(|w| add(w, "short.bin", &[5; 100], stored()));
        patch(&mut bytes, b"short.bin", 22, 24, &200u32.to_le_bytes());
        failed(
            &bytes,
            "SmallerThanDeclared",
            "holds 100 bytes but its header declares 200",
        );
    }

    #[test]
    fn refuses_a_crc_mismatch() {
        let mut bytes = zip_of(|w| add(w, "data.bin", b"0123456789abcdef", stored()));
        assert_eq!(
            replace_all(&mut bytes, b"0123456789abcdef", b"0123456789abcdeF"),
            1
        );
        failed(&bytes, "CrcMismatch", "\"data.bin\"");
    }

    #[test]
    fn reports_names_too_long_for_the_filesystem() {
        let name = "n".repeat(300);
        failed(&files(&[&name]), "NameTooLong", &name);
    }

    #[test]
    fn stops_when_cancelled_and_refuses_non_zip_files() {
        let fixture = Fixture::new();
        fs::write(fixture.path("archive.zip"), files(&["a", "b"])).unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let unpacked = unpack_zip(
            &fixture.path("archive.zip"),
            &fixture.path("dest"),
            &LIMITS,
            &cancel,
        );
        assert_is(&unpacked.unwrap_err(), "Cancelled", "cancelled");
        assert!(fixture.dest_is_empty());
        assert_is(
            &fixture.unpack(b"not a zip", LIMITS).unwrap_err(),
            "Archive",
            "archive.zip",
        );
    }

    #[test]
    fn crc32_and_dates_match_reference_values() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xCBF4_3926);
        assert_eq!(days_from_civil(1980, 1, 1) * 86_400, 315_532_800);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

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
