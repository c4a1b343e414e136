//! Incremental downloads of a ZIP over HTTP or S3, for servers that answer byte ranges.
//!
//! The check's conditional request asks for the ZIP's tail only (`Range: bytes=-N`, N from the
//! live release's manifest): `304` means unchanged, `200` a server without ranges (a full
//! download, on the same request), `206` the tail. From the tail: the end of central directory
//! record (ZIP64 aware), the rest of the central directory if the tail missed some, then the
//! local header and data of only the entries the live release cannot supply
//! (`incremental.rs`), neighbouring ranges coalesced, each request with `If-Match` on the ETag.
//!
//! The bytes are written at their own offsets into a sparse file as long as the ZIP, which the
//! unpacker reads as the whole archive: every entry still goes through its one planner
//! (`unpack.rs`), holes are only read for entries it takes from the live release, and a hole
//! read by mistake fails the local header or CRC-32 checks like any corrupt archive.
//!
//! Identity without the whole file: the version id is still the ETag (strong: `If-Match` needs
//! one). The content id (`ReleaseInfo::sha256`) of a release made this way cannot be the ZIP's
//! SHA-256; it is `cd-sha256:` and the SHA-256 of the central directory through the end of the
//! file (every entry's name, sizes, CRC-32, attributes and offset). When that equals the live
//! release's (its manifest records it), the content is the live one and nothing is deployed.
//!
//! A full download is made instead (`None`) when the ETag is weak or missing, the tail does not
//! parse, the object changed between requests, a range is refused or fails, or more than half
//! of the ZIP would be downloaded anyway.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Artifact, CacheFile, Content};
use crate::incremental::Base;
use crate::state::Stamp;
use crate::unpack;

/// Ranges closer than this are fetched as one (the gap costs less than another request).
const GAP: u64 = 32 * 1024;
/// Ranged requests in flight at once.
const PARALLEL: usize = 4;
/// The most asked for in the first request.
const MAX_TAIL: u64 = 64 << 20;

/// A remote that can answer byte ranges of the ZIP.
pub trait RangeRead: Sync {
    /// Bytes `start..end` of the object, only while its ETag is `etag`; an error otherwise.
    fn get_range(
        &self,
        start: u64,
        end: u64,
        etag: &str,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send;
}

/// The answer to the first request when it was a range: the last bytes of the ZIP.
#[derive(Debug)]
pub struct Tail {
    /// Offset of `bytes[0]` in the ZIP.
    pub start: u64,
    /// Length of the whole ZIP.
    pub total: u64,
    /// The bytes received: from `start` to the end of the ZIP.
    pub bytes: Vec<u8>,
    /// The answer's ETag; `None`: the server sent none, so no further range can be asked for.
    pub etag: Option<String>,
    /// The answer's `Last-Modified`, kept in the stamp; `None`: not sent (always so for S3).
    pub last_modified: Option<String>,
}

/// A ZIP of which only some entries were downloaded, in a sparse file of the ZIP's length.
#[derive(Debug, Clone)]
pub struct PartialZip {
    /// Its central directory, read once for planning and unpacking.
    pub open: unpack::OpenZip,
    /// By entry index: its bytes were not downloaded; the live release supplies it.
    pub absent: Arc<Vec<bool>>,
}

/// How many bytes the first request asks for: the live ZIP's central directory and end
/// records, with room to grow.
pub fn tail_request(base: &Base) -> u64 {
    let tail = base.tail();
    (tail + tail / 8 + 64 * 1024).min(MAX_TAIL)
}

/// `Content-Range: bytes a-b/total` → (a, b + 1, total).
pub fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, total): (u64, u64, u64) = (a.parse().ok()?, b.parse().ok()?, total.parse().ok()?);
    (a <= b && b < total).then_some((a, b + 1, total))
}

/// Where the central directory starts, from the last bytes of a ZIP (`bytes` ends the file,
/// which is `total` long and of which `bytes` starts at `start`).
#[derive(Debug, PartialEq, Eq)]
enum Located {
    /// The central directory starts here and runs to the end of the file.
    Directory(u64),
    /// The ZIP64 end record starts before `bytes`: fetch from here and look again.
    Need(u64),
    Invalid,
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn locate(bytes: &[u8], start: u64, total: u64) -> Located {
    // The end record is the last 22 bytes plus a comment of at most 65,535 bytes, and its
    // comment length must reach the end of the file exactly.
    let eocd = (0..=bytes.len().saturating_sub(22))
        .rev()
        .take(65_536)
        .find(|&at| {
            bytes.len() >= 22
                && bytes[at..at + 4] == [0x50, 0x4b, 0x05, 0x06]
                && at as u64 + 22 + u16_at(bytes, at + 20) == bytes.len() as u64
        });
    let Some(at) = eocd else {
        return Located::Invalid;
    };
    let (size, offset) = (u32_at(bytes, at + 12), u32_at(bytes, at + 16));
    let entries = u16_at(bytes, at + 10);
    let end_at = start + at as u64;
    if size != 0xFFFF_FFFF && offset != 0xFFFF_FFFF && entries != 0xFFFF {
        // The directory ends where the end record starts (prepended data shifts offsets; the
        // zip crate corrects them the same way).
        return end_at
            .checked_sub(size)
            .map_or(Located::Invalid, Located::Directory);
    }
    // ZIP64: a locator right before the end record points to the ZIP64 end record.
    let Some(locator) = at.checked_sub(20) else {
        return Located::Invalid;
    };
    if bytes[locator..locator + 4] != [0x50, 0x4b, 0x06, 0x07] {
        return Located::Invalid;
    }
    // (Prepended data is not handled here: the offsets then do not add up, and the update
    // falls back to a full download.)
    let record = u64_at(bytes, locator + 8);
    if record < start {
        return if record < total {
            Located::Need(record)
        } else {
            Located::Invalid
        };
    }
    let Ok(r) = usize::try_from(record - start) else {
        return Located::Invalid;
    };
    if r + 56 > bytes.len() || bytes[r..r + 4] != [0x50, 0x4b, 0x06, 0x06] {
        return Located::Invalid;
    }
    let (size, offset) = (u64_at(bytes, r + 40), u64_at(bytes, r + 48));
    match offset.checked_add(size) {
        Some(end) if end == record => Located::Directory(offset),
        _ => Located::Invalid,
    }
}

/// What to download: the entries the live release cannot supply.
#[derive(Debug)]
struct Plan {
    open: unpack::OpenZip,
    /// Coalesced, sorted, disjoint `start..end` ranges.
    ranges: Vec<(u64, u64)>,
    absent: Vec<bool>,
    reused: usize,
}

/// Plan the download from the central directory in the sparse file `zip`.
fn plan(zip: &Path, base: &Base, directory: u64) -> Result<Plan> {
    let open = unpack::OpenZip::open(zip).context("the central directory does not parse")?;
    let archive = open.archive();
    if archive.central_directory_start() != directory {
        bail!("the central directory is not where the end record says");
    }
    let mut starts: Vec<u64> = (0..archive.len())
        .map(|i| archive.by_index_data(i).map(|e| e.header_start()))
        .collect::<Result<_, _>>()?;
    starts.push(directory);
    starts.sort_unstable();
    starts.dedup();
    // Regular files the live release may hold are checked against it on a few threads (an
    // `openat2` and an `fstat` each); the other entries are downloaded, but directories.
    let mut candidates = Vec::new();
    let mut wanted = Vec::new();
    for i in 0..archive.len() {
        let entry = archive.by_index_data(i)?;
        let view = unpack::zip_entry_view(
            entry.name_raw(),
            entry.system(),
            entry.external_attributes(),
        );
        match view {
            Some(unpack::EntryView {
                path,
                file_mode: Some(mode),
                ..
            }) if !entry.encrypted() => {
                candidates.push((i, path, entry.size(), entry.crc32(), mode));
                continue;
            }
            // A directory: the unpacker never reads its data or local header.
            Some(view) if !view.has_data => continue,
            _ => {}
        }
        wanted.push(i);
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let chunk = candidates.len().div_ceil(threads).max(1);
    let supplied: Vec<bool> = std::thread::scope(|scope| {
        let workers: Vec<_> = candidates
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let check = |(_, path, size, crc, mode): &(usize, String, u64, u32, u32)| {
                        base.can_supply(path, *size, *crc, *mode)
                    };
                    part.iter().map(check).collect::<Vec<bool>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut absent = vec![false; archive.len()];
    let mut reused = 0;
    for (candidate, supplied) in candidates
        .iter()
        .zip(supplied.into_iter().chain(std::iter::repeat(false)))
    {
        if supplied {
            absent[candidate.0] = true;
            reused += 1;
        } else {
            wanted.push(candidate.0);
        }
    }
    // The local header, the data and any data descriptor: up to the next entry.
    let mut wanted: Vec<(u64, u64)> = wanted
        .into_iter()
        .filter_map(|i| {
            let start = archive.by_index_data(i).ok()?.header_start();
            let next = starts.partition_point(|&s| s <= start);
            starts.get(next).map(|&end| (start, end.min(directory)))
        })
        .collect();
    let mut plan = Plan {
        open: open.clone(),
        ranges: Vec::new(),
        absent,
        reused,
    };
    wanted.sort_unstable();
    for (start, end) in wanted {
        match plan.ranges.last_mut() {
            Some(last) if start <= last.1 + GAP => last.1 = last.1.max(end),
            _ => plan.ranges.push((start, end)),
        }
    }
    Ok(plan)
}

/// Finish an update from `tail`: the rest of the central directory, then only the entries
/// `base` cannot supply. `None`: make a full download instead.
pub async fn assemble<R: RangeRead>(
    source: &R,
    tail: Tail,
    base: &Arc<Base>,
    cache: &Path,
    shown: &str,
    cancel: &CancellationToken,
) -> Result<Option<Artifact>> {
    let version_of = super::etag_version;
    if tail.start == 0 {
        // The whole ZIP fit in the tail: an ordinary download.
        return complete(tail, cache).map(Some);
    }
    let Some(etag) = tail
        .etag
        .clone()
        .filter(|e| !e.trim_start().starts_with("W/") && !version_of(e).is_empty())
    else {
        tracing::info!("{shown} sent no strong ETag: downloading all of it");
        return Ok(None);
    };
    let total = tail.total;
    let mut received = tail.bytes.len() as u64;
    // Everything from `front` to the end of the file is in `known`.
    let (mut front, mut known) = (tail.start, tail.bytes);
    let directory = loop {
        match locate(&known, front, total) {
            Located::Directory(d) => break d,
            Located::Need(from) if from < front => {
                let more = fetch(source, from, front, &etag, shown, cancel).await?;
                let Some(mut more) = more else {
                    return Ok(None);
                };
                received += more.len() as u64;
                more.extend_from_slice(&known);
                (front, known) = (from, more);
            }
            _ => {
                tracing::info!("{shown}: the end of the ZIP does not parse: downloading all of it");
                return Ok(None);
            }
        }
    };
    if directory < front {
        let Some(mut more) = fetch(source, directory, front, &etag, shown, cancel).await? else {
            return Ok(None);
        };
        received += more.len() as u64;
        more.extend_from_slice(&known);
        (front, known) = (directory, more);
    }
    let Ok(skip) = usize::try_from(directory - front) else {
        return Ok(None);
    };
    let digest = hex::encode(Sha256::digest(&known[skip..]));

    let download = CacheFile::new(cache, ".zip")?;
    let path = download.path().to_path_buf();
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(total)
        .with_context(|| format!("cannot size {}", path.display()))?;
    file.write_all_at(&known, front)
        .with_context(|| format!("cannot write {}", path.display()))?;
    drop(known);

    let planned = {
        let (path, base) = (path.clone(), Arc::clone(base));
        tokio::task::spawn_blocking(move || plan(&path, &base, directory))
            .await
            .map_err(|e| anyhow!("planning panicked: {e}"))?
    };
    let mut plan = match planned {
        Ok(p) => p,
        Err(e) => {
            tracing::info!("{shown}: {e:#}: downloading all of it");
            return Ok(None);
        }
    };
    // What the tail already brought (the last entries, usually) is not asked for again.
    plan.ranges.retain_mut(|(start, end)| {
        *end = (*end).min(front);
        start < end
    });
    let wanted: u64 = plan.ranges.iter().map(|(a, b)| b - a).sum();
    if received + wanted > total / 2 {
        tracing::info!(
            "{shown}: most of the ZIP changed ({} of {total} bytes): downloading all of it",
            received + wanted
        );
        return Ok(None);
    }
    let tag = etag.as_str();
    let mut pieces = futures_util::stream::iter(plan.ranges.iter().copied())
        .map(|(start, end)| async move {
            fetch(source, start, end, tag, shown, cancel)
                .await
                .map(|b| b.map(|b| (start, b)))
        })
        .buffer_unordered(PARALLEL);
    while let Some(piece) = pieces.try_next().await? {
        let Some((start, bytes)) = piece else {
            return Ok(None);
        };
        received += bytes.len() as u64;
        file.write_all_at(&bytes, start)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    drop(pieces);
    drop(file);
    tracing::info!(
        "incremental download of {shown}: {} of {} entries from the live release, {received} of {total} bytes in {} ranges",
        plan.reused,
        plan.absent.len(),
        plan.ranges.len() + 1,
    );
    let sha256 = match base.same_content(&digest) {
        Some(live) => live.to_string(),
        None => format!("cd-sha256:{digest}"),
    };
    Ok(Some(Artifact {
        content: Content::Partial(Box::new(PartialZip {
            open: plan.open,
            absent: Arc::new(plan.absent),
        })),
        stamp: Stamp {
            version: version_of(&etag),
            etag: Some(etag),
            last_modified: tail.last_modified,
            local: None,
        },
        sha256,
        prehash: None,
        _download: Some(download),
    }))
}

/// One range through `source`; `None` when the remote changed or would not answer it.
async fn fetch<R: RangeRead>(
    source: &R,
    start: u64,
    end: u64,
    etag: &str,
    shown: &str,
    cancel: &CancellationToken,
) -> Result<Option<Vec<u8>>> {
    let got = tokio::select! {
        r = source.get_range(start, end, etag) => r,
        () = cancel.cancelled() => bail!("interrupted while downloading {shown}"),
    };
    match got {
        Ok(bytes) if bytes.len() as u64 == end - start => Ok(Some(bytes)),
        Ok(bytes) => {
            tracing::info!(
                "{shown} answered {} bytes for bytes {start}-{}: downloading all of it",
                bytes.len(),
                end - 1
            );
            Ok(None)
        }
        Err(e) => {
            tracing::info!("{shown}: {e:#}: downloading all of it");
            Ok(None)
        }
    }
}

/// A tail that holds the whole ZIP: an ordinary, complete download.
fn complete(tail: Tail, cache: &Path) -> Result<Artifact> {
    let download = CacheFile::new(cache, ".zip")?;
    std::fs::write(download.path(), &tail.bytes)
        .with_context(|| format!("cannot write {}", download.path().display()))?;
    let sha256 = hex::encode(Sha256::digest(&tail.bytes));
    let version = tail
        .etag
        .as_deref()
        .map(super::etag_version)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| sha256.clone());
    Ok(Artifact {
        content: Content::Zip(download.path().to_path_buf()),
        stamp: Stamp {
            version,
            etag: tail.etag,
            last_modified: tail.last_modified,
            local: None,
        },
        sha256,
        prehash: None,
        _download: Some(download),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn zip_of(n: usize) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for i in 0..n {
            w.start_file(format!("f{i}"), zip::write::SimpleFileOptions::default())
                .expect("start");
            w.write_all(format!("file {i}").as_bytes()).expect("write");
        }
        w.finish().expect("finish").into_inner()
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, 200, 1000))
        );
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 1, 1)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("bytes 0-1/*"), None);
    }

    #[test]
    fn locates_the_central_directory_from_any_tail_that_holds_the_end_record() {
        let bytes = zip_of(50);
        let directory = zip::ZipArchive::new(Cursor::new(&bytes))
            .expect("zip")
            .central_directory_start();
        let total = bytes.len() as u64;
        for keep in [22, 100, 1000, bytes.len()] {
            let start = bytes.len() - keep;
            assert_eq!(
                locate(&bytes[start..], start as u64, total),
                Located::Directory(directory),
                "tail of {keep}"
            );
        }
        assert_eq!(
            locate(&bytes[..bytes.len() - 1], 0, total - 1),
            Located::Invalid
        );
        assert_eq!(
            locate(b"not a zip at all, not at all", 0, 28),
            Located::Invalid
        );
    }

    /// `bytes` with ZIP64 end records (as written for more than 65,535 entries or 4 GiB).
    fn as_zip64(bytes: &[u8]) -> Vec<u8> {
        let eocd = bytes.len() - 22;
        let (entries, size, offset) = (
            u16_at(bytes, eocd + 10),
            u32_at(bytes, eocd + 12),
            u32_at(bytes, eocd + 16),
        );
        let mut out = bytes[..eocd].to_vec();
        let record = out.len() as u64;
        out.extend_from_slice(&[0x50, 0x4b, 0x06, 0x06]);
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 3, 45, 0]);
        out.extend_from_slice(&[0; 8]);
        for v in [entries, entries, size, offset] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[0x50, 0x4b, 0x06, 0x07, 0, 0, 0, 0]);
        out.extend_from_slice(&record.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        out.extend_from_slice(&[0xFF; 8]);
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn locates_a_zip64_directory_and_asks_for_its_end_record_when_the_tail_missed_it() {
        let bytes = as_zip64(&zip_of(50));
        let directory = zip::ZipArchive::new(Cursor::new(&bytes))
            .expect("zip64 parses")
            .central_directory_start();
        let total = bytes.len() as u64;
        assert_eq!(locate(&bytes, 0, total), Located::Directory(directory));
        let record = total - 22 - 20 - 56;
        let start = total - 42;
        assert_eq!(
            locate(&bytes[start as usize..], start, total),
            Located::Need(record)
        );
        assert_eq!(
            locate(&bytes[record as usize..], record, total),
            Located::Directory(directory)
        );
    }
}
