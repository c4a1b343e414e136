//! Reading a ZIP: its central directory (once, shared by the planner, an incremental download
//! and the writers), how each entry will be seen (`zip_entry_view`), and each entry's bytes
//! through a checked copy that holds them to their declared size and CRC-32. Where an earlier
//! release can supply a file instead, the writer asks the caller's [`Reuse`].
//!
//! Entries are admitted by `plan.rs` and written by `write.rs`; this module only reads.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use zip::{CompressionMethod, System, ZipArchive, ZipReadOptions};

use super::plan::{
    Entry, Kind, PATH_MAX, Planner, Type, backslash_separates, classify, normalize, zip_mode,
};
use super::write::{Contents, Job, build};
use super::{Limits, Result, Summary, UnpackError, io_error, stop_if_cancelled};

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
    /// Size in bytes, as declared and checked while writing.
    pub size: u64,
    /// CRC-32 of the contents, from the entry's header.
    pub crc: u32,
    /// Permission bits as written.
    pub mode: u32,
    /// As written; `None`: the entry had none, the file kept the time it was written.
    pub mtime: Option<SystemTime>,
}

/// What [`unpack_zip_reusing`] wrote, and where the archive's central directory is.
#[derive(Debug)]
pub struct Unpacked {
    /// What was created.
    pub summary: Summary,
    /// Every regular file, in archive order.
    pub files: Vec<FileRecord>,
    /// Offset of the central directory; it runs to `len`, the end of the archive.
    pub central_directory: u64,
    /// Length of the archive in bytes.
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
    /// Normalised path inside the release.
    pub path: &'a str,
    /// Size in bytes its header declares.
    pub size: u64,
    /// CRC-32 its header declares.
    pub crc: u32,
    /// Permission bits to give the file.
    pub mode: u32,
    /// Modification time to give the file; `None`: the entry has none, leave the file's own.
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

    /// Where the archive is.
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
        stop_if_cancelled(cancel)?;
        let name = zip
            .by_index_data(index)
            .map_err(bad_archive)?
            .name_raw()
            .to_vec();
        // The central directory only: local headers are read when an entry's data is (an
        // incremental download may not have the others).
        let entry = zip.by_index_data(index).map_err(bad_archive)?;
        let (mode, dos_dir) = zip_mode(entry.system(), entry.external_attributes());
        let backslash = backslash_separates(entry.system());
        let Some((path, kind)) = planner.admit(&name, mode, dos_dir, backslash)? else {
            continue; // The release root's own entry (`./`).
        };
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

/// Write buffer per worker.
const BUF_SIZE: usize = 256 * 1024;

/// A ZIP entry as the unpacker will see it, judged from its central directory record alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    /// The normalised path; empty for the release root's own entry (`./`), which is skipped.
    pub path: String,
    /// Whether the unpacker reads the entry's data: everything but directories.
    pub has_data: bool,
    /// Permission bits, for a regular file.
    pub file_mode: Option<u32>,
}

/// How [`unpack_zip`] will see the entry named `name` with these attributes (for planning an
/// incremental download, `source/ranges.rs`); `None` when it refuses the name or the type.
pub fn zip_entry_view(name: &[u8], system: System, attrs: u32) -> Option<EntryView> {
    let (path, trailing_slash) = normalize(name, backslash_separates(system)).ok()?;
    let (mode, dos_dir) = zip_mode(system, attrs);
    let kind = classify(&path, mode, dos_dir || trailing_slash).ok()?;
    if path.is_empty() && kind != Type::Dir {
        return None;
    }
    let file_mode = (kind == Type::File).then(|| mode.map_or(0o644, |m| m & 0o777));
    let has_data = kind != Type::Dir;
    Some(EntryView {
        path,
        has_data,
        file_mode,
    })
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
    use std::fs;
    use std::io::Cursor;
    use std::os::unix::fs::PermissionsExt;

    use zip::DateTime;
    use zip::write::SimpleFileOptions;

    use crate::unpack::fixture::*;
    use crate::unpack::plan::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFSOCK};

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

    /// Issue 11, bug 8: bsdtar's `./` root entry and `./` prefixes; `\` separators in entries
    /// made on MS-DOS (PowerShell 5.1), a plain character (refused) in entries made on Unix.
    #[test]
    fn accepts_a_dot_slash_root_and_dos_backslash_separators() {
        let dos = stored().system(System::Dos);
        let bytes = zip_of(|w| {
            w.add_directory("./", with_mode(S_IFDIR | 0o700)).unwrap();
            add(w, "./top", b"t", stored());
            add(w, "dir\\sub\\file", b"f", dos);
            w.add_directory("empty\\", dos).unwrap();
        });
        let fixture = Fixture::new();
        let dest = fixture.path("dest");
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o751)).unwrap();
        let summary = fixture.unpack(&bytes, LIMITS).unwrap();
        assert_eq!((summary.files, summary.dirs), (2, 3));
        assert_eq!(fs::read(dest.join("top")).unwrap(), b"t");
        assert_eq!(fs::read(dest.join("dir/sub/file")).unwrap(), b"f");
        assert!(fs::read_dir(dest.join("empty")).unwrap().next().is_none());
        // The root entry's mode (0700) is not applied to the release.
        assert_eq!(mode_of(&dest), 0o751);
        let view = |name: &[u8], system| zip_entry_view(name, system, 0).map(|v| v.path);
        assert_eq!(view(b"a\\b", System::Dos).as_deref(), Some("a/b"));
        assert_eq!(view(b"a\\b", System::Unix), None);
        assert_eq!(view(b"./", System::Unix).as_deref(), Some(""));
        refused(&files(&["a\\b"]), LIMITS, "InvalidName", "backslash");
        let escape = zip_of(|w| add(w, ".\\..\\evil", b"x", dos));
        refused(&escape, LIMITS, "InvalidName", "`..`");
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
}
