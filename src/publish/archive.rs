//! A reproducible ZIP of a directory: the same tree gives the same bytes, whoever zips it and
//! whenever. Names are sorted (byte order, directories before what they hold), every entry
//! carries one time (`SOURCE_DATE_EPOCH`, else 1980-01-01 00:00:00, the first time a ZIP can
//! hold: no clock, no file time), modes are kept (permission bits only), symlinks are stored
//! as symlinks (as Info-ZIP's `zip -y` does), and no owner or extra field is written. Files are
//! streamed, so memory does not grow with their size.

use std::fs::{self, File};
use std::io::{self, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

/// What was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Regular files.
    pub files: u64,
    /// Directories (the root not counted).
    pub dirs: u64,
    /// Symbolic links.
    pub links: u64,
    /// Bytes of file content before compression.
    pub bytes: u64,
}

/// The time of every entry: `SOURCE_DATE_EPOCH` (seconds) when set, else 1980-01-01 00:00:00.
pub fn entry_time(source_date_epoch: Option<&str>) -> Result<DateTime> {
    let Some(text) = source_date_epoch else {
        return Ok(DateTime::default());
    };
    let secs: i64 = text.trim().parse().with_context(|| {
        format!("SOURCE_DATE_EPOCH={text:?} is not a number of seconds since 1970")
    })?;
    let Some(t) = chrono::DateTime::from_timestamp(secs, 0) else {
        bail!("SOURCE_DATE_EPOCH={text:?} is out of range");
    };
    use chrono::{Datelike, Timelike};
    if t.year() < 1980 {
        return Ok(DateTime::default());
    }
    let part = |n: u32| u8::try_from(n).unwrap_or(0);
    DateTime::from_date_and_time(
        u16::try_from(t.year()).unwrap_or(2107),
        part(t.month()),
        part(t.day()),
        part(t.hour()),
        part(t.minute()),
        part(t.second()),
    )
    .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={text:?}: a ZIP holds times from 1980 to 2107"))
}

/// Zip the tree under `dir` into `out`.
pub fn write_tree<W: Write + Seek>(dir: &Path, out: W, time: DateTime) -> Result<(W, Written)> {
    let mut zip = ZipWriter::new(out);
    let mut written = Written::default();
    add_dir(&mut zip, dir, "", time, &mut written)?;
    let out = zip.finish().context("cannot finish the ZIP")?;
    Ok((out, written))
}

fn add_dir<W: Write + Seek>(
    zip: &mut ZipWriter<W>,
    dir: &Path,
    prefix: &str,
    time: DateTime,
    written: &mut Written,
) -> Result<()> {
    let mut entries: Vec<(String, fs::DirEntry)> = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name().into_string().map_err(|n| {
            anyhow::anyhow!(
                "{}: {n:?} is not UTF-8; rename it (a ZIP names its entries in UTF-8)",
                dir.display()
            )
        })?;
        entries.push((name, entry));
    }
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (name, entry) in entries {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let zip_name = format!("{prefix}{name}");
        let options = |mode: u32| {
            SimpleFileOptions::default()
                .last_modified_time(time)
                .unix_permissions(mode & 0o7777)
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&path)
                .with_context(|| format!("cannot read the link {}", path.display()))?;
            let target = target
                .to_str()
                .with_context(|| format!("{}: the link's target is not UTF-8", path.display()))?;
            zip.add_symlink(&zip_name, target, options(0o777))
                .with_context(|| format!("cannot add {zip_name}"))?;
            written.links += 1;
        } else if kind.is_dir() {
            zip.add_directory(format!("{zip_name}/"), options(meta.permissions().mode()))
                .with_context(|| format!("cannot add {zip_name}/"))?;
            written.dirs += 1;
            add_dir(zip, &path, &format!("{zip_name}/"), time, written)?;
        } else if kind.is_file() {
            let size = meta.size();
            let o = options(meta.permissions().mode())
                .compression_method(CompressionMethod::Deflated)
                .large_file(size > u64::from(u32::MAX));
            zip.start_file(&zip_name, o)
                .with_context(|| format!("cannot add {zip_name}"))?;
            let mut file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let copied = io::copy(&mut file, zip)
                .with_context(|| format!("cannot zip {}", path.display()))?;
            written.files += 1;
            written.bytes += copied;
        } else {
            bail!(
                "{} is neither a file, a directory nor a symlink (a device, FIFO or socket): a release cannot hold it; remove it from the tree",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn source_date_epoch_sets_every_time_and_old_dates_are_clamped() {
        let t = entry_time(Some("1700000000")).expect("time");
        assert_eq!((t.year(), t.month(), t.day()), (2023, 11, 14));
        assert_eq!(entry_time(None).expect("default"), DateTime::default());
        assert_eq!(entry_time(Some("0")).expect("1970"), DateTime::default());
        assert!(entry_time(Some("soon")).is_err());
    }

    #[test]
    fn an_empty_tree_is_a_valid_empty_zip() {
        let dir = std::env::temp_dir().join(format!("rd-empty-{}", crate::fsutil::unique_suffix()));
        fs::create_dir(&dir).expect("dir");
        let (bytes, written) =
            write_tree(&dir, Cursor::new(Vec::new()), DateTime::default()).expect("zip");
        fs::remove_dir(&dir).expect("cleanup");
        assert_eq!(written, Written::default());
        let archive = zip::ZipArchive::new(Cursor::new(bytes.into_inner())).expect("a ZIP");
        assert_eq!(archive.len(), 0);
    }
}
