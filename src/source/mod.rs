//! What a remote is, as far as a check is concerned: a `Source` answers "has it changed
//! since this stamp?" and, when it has, hands over the new content (a ZIP in the cache or a
//! directory) with its version and content hash.
//!
//! Both answers come from one call, `fetch`: for a whole ZIP over HTTP or S3 they are one
//! conditional request; an incremental update adds ranged requests for what the live release
//! cannot supply (`ranges.rs`), a local path compares size, mtime and hash, and git asks
//! `ls-remote` first and fetches only when the branch moved. Adding a remote kind touches only
//! this folder and `remote.rs`.

mod file;
mod git;
mod http;
mod ranges;
pub mod s3;
mod signed;

pub(crate) use signed::SignedFetch;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::incremental::{Base, Manifest, ReuseMode};
use crate::remote::Remote;
use crate::state::Stamp;
use crate::unpack::{self, Limits, Summary, UnpackError};

/// What a check found.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// The remote still holds the version of `stamp`: nothing was downloaded.
    Unchanged,
    /// New content, ready to unpack.
    New(Artifact),
}

/// The new content of a remote.
#[derive(Debug)]
pub(crate) struct Artifact {
    /// What to unpack into the new release.
    pub content: Content,
    /// Validators and version id, stored once the version is live.
    pub stamp: Stamp,
    /// SHA-256 of the content (the ZIP's bytes, or the tree's digest).
    pub sha256: String,
    /// BLAKE2b-512 of the ZIP's bytes (minisign's prehash), computed while they arrived;
    /// only with `trusted-keys`.
    pub prehash: Option<Box<[u8; 64]>>,
    /// A downloaded file in the cache, deleted when the artifact is dropped.
    _download: Option<CacheFile>,
}

/// Where the content is.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    /// A whole ZIP: a download in the cache, or a local remote's own file.
    Zip(PathBuf),
    /// A local remote's directory, copied by the unpacking rules.
    Dir(PathBuf),
    /// Trees in the git cache, written out by `git checkout-index`.
    Git(git::Checkout),
    /// A ZIP of which only the entries the live release cannot supply were downloaded
    /// (`ranges.rs`); it unpacks only with that release as its base.
    Partial(Box<ranges::PartialZip>),
}

impl Artifact {
    /// The size of a downloaded or local ZIP (what the download brought); `None` for a tree.
    pub fn zip_size(&self) -> Option<u64> {
        match &self.content {
            Content::Zip(zip) => fs::metadata(zip).ok().map(|m| m.len()),
            _ => None,
        }
    }

    /// Write the content into `dest` (an empty staging directory), by the unpacking rules.
    /// Blocking: run it on a blocking thread.
    pub fn extract_into(
        &self,
        dest: &Path,
        limits: &Limits,
        cancel: &CancellationToken,
    ) -> Result<Summary, UnpackError> {
        match &self.content {
            Content::Zip(zip) => unpack::unpack_zip(zip, dest, limits, cancel),
            Content::Dir(tree) => unpack::copy_tree(tree, dest, limits, cancel),
            Content::Git(checkout) => checkout.write_into(dest, limits, cancel),
            Content::Partial(_) => self
                .extract_reusing(dest, limits, cancel, ReuseMode::Off, None)
                .map(|(summary, _)| summary),
        }
    }

    /// [`Artifact::extract_into`], taking the files that did not change from `base` (the live
    /// release) when the content is a ZIP, and returning the new release's manifest unless
    /// `reuse` is off (see `incremental.rs`).
    pub fn extract_reusing(
        &self,
        dest: &Path,
        limits: &Limits,
        cancel: &CancellationToken,
        reuse: ReuseMode,
        base: Option<&Base>,
    ) -> Result<(Summary, Option<Manifest>), UnpackError> {
        let (zip, absent) = match &self.content {
            Content::Zip(zip) => (unpack::OpenZip::open(zip)?, None),
            Content::Partial(partial) => (partial.open.clone(), Some(partial.absent.as_slice())),
            _ => {
                return self
                    .extract_into(dest, limits, cancel)
                    .map(|summary| (summary, None));
            }
        };
        let path = zip.path().to_path_buf();
        if absent.is_some() && base.is_none() {
            let source = io::Error::other(
                "a partial download unpacks only against the live release it was planned for",
            );
            return Err(UnpackError::Open { path, source });
        }
        let reuser = base.map(|b| b.reuser(absent));
        let reuser = reuser.as_ref().map(|r| r as &dyn unpack::Reuse);
        let unpacked = unpack::unpack_open_zip(zip, dest, limits, cancel, reuser)?;
        let zip = &path;
        let summary = unpacked.summary;
        let manifest = (reuse != ReuseMode::Off)
            .then(|| Manifest::of(zip, unpacked))
            .transpose()
            .inspect_err(|e| {
                tracing::warn!(
                    "no manifest for this release (the next update unpacks everything): {e}"
                )
            })
            .ok()
            .flatten();
        Ok((summary, manifest))
    }
}

/// The version id of an ETag: without `W/` and quotes. Shared by the sources that speak
/// ETags (HTTP, S3) and by `ranges.rs`, which checks a ranged answer against it.
pub fn etag_version(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// A configured remote.
#[derive(Debug)]
pub(crate) enum Source {
    Http(http::HttpSource),
    S3(s3::S3Source),
    Git(git::GitSource),
    Local(file::LocalSource),
}

impl Source {
    /// Build the source for the configured remote.
    pub async fn new(settings: &Settings) -> Result<Source> {
        match &settings.remote {
            Remote::Http(url) => Ok(Source::Http(http::HttpSource::new(url, settings)?)),
            Remote::S3 { bucket, key } => {
                Ok(Source::S3(s3::S3Source::new(bucket, key, settings).await?))
            }
            Remote::Git(git) => Ok(Source::Git(git::GitSource::new(git, settings)?)),
            Remote::Local(path) => Ok(Source::Local(file::LocalSource::new(path, settings))),
        }
    }

    /// Ask the remote for anything newer than `known`; download it if there is.
    pub async fn fetch(
        &self,
        known: Option<&Stamp>,
        cancel: &CancellationToken,
    ) -> Result<Fetched> {
        match self {
            Source::Http(s) => s.fetch(known, cancel).await,
            Source::S3(s) => s.fetch(known, cancel).await,
            Source::Git(s) => s.fetch(known, cancel).await,
            Source::Local(s) => s.fetch(known, cancel).await,
        }
    }

    /// [`Source::fetch`] for an incremental update from `base` (the live release): over HTTP
    /// and S3 with ranges, only what `base` cannot supply is downloaded (`ranges.rs`).
    pub async fn fetch_reusing(
        &self,
        known: Option<&Stamp>,
        base: Option<&Arc<Base>>,
        cancel: &CancellationToken,
    ) -> Result<Fetched> {
        match self {
            Source::Http(s) => s.fetch_with(known, base, cancel).await,
            Source::S3(s) => s.fetch_with(known, base, cancel).await,
            _ => self.fetch(known, cancel).await,
        }
    }
}

/// A file in the cache directory that is deleted when dropped: downloads never outlive the
/// check that made them.
#[derive(Debug)]
pub struct CacheFile {
    path: PathBuf,
}

impl CacheFile {
    /// A fresh name for a download in `cache` (created if needed).
    fn new(cache: &Path, suffix: &str) -> Result<CacheFile> {
        fs::create_dir_all(cache)
            .with_context(|| format!("cannot create cache directory {}", cache.display()))?;
        let name = format!("download-{}{suffix}", crate::fsutil::unique_suffix());
        Ok(CacheFile {
            path: cache.join(name),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CacheFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// A response body, chunk by chunk; the error is already worded for the operator.
pub(crate) trait Body {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, String>;
}

/// Stream `body` into a new file in `cache`, hashing it on the way, with `stall` as the
/// longest wait for a chunk and `expected` (`Content-Length`) checked both ways. Shared by
/// the HTTP and S3 sources, whose bodies differ only in type.
/// With `prehash`, the chunks are also hashed with BLAKE2b-512 (minisign's prehash) on a
/// blocking thread, beside the download rather than after it: the signature check then costs
/// no second read of the ZIP.
pub(crate) async fn download(
    mut body: impl Body,
    expected: Option<u64>,
    cache: &Path,
    shown: &str,
    stall: std::time::Duration,
    prehash: bool,
    cancel: &CancellationToken,
) -> Result<Downloaded> {
    use anyhow::bail;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;

    let download = CacheFile::new(cache, ".zip")?;
    let cannot_write = || format!("cannot write {}", download.path().display());
    let mut file = tokio::fs::File::create(download.path())
        .await
        .with_context(|| format!("cannot create {}", download.path().display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut received: u64 = 0;
    let mut side = prehash.then(SideHash::start);
    crate::progress::start("download", expected, true);
    loop {
        let chunk = tokio::select! {
            c = tokio::time::timeout(stall, body.next_chunk()) => match c {
                Err(_) => bail!("download of {shown} stalled: nothing received for {}s (stall-timeout)", stall.as_secs()),
                Ok(c) => c.map_err(|e| anyhow::anyhow!("download of {shown} failed after {received} bytes: {e}"))?,
            },
            () = cancel.cancelled() => bail!("interrupted while downloading {shown}"),
        };
        let Some(chunk) = chunk else { break };
        received += chunk.len() as u64;
        crate::progress::advance(chunk.len() as u64);
        if let Some(n) = expected
            && received > n
        {
            bail!("download of {shown} is longer than its Content-Length ({n} bytes)");
        }
        hasher.update(&chunk);
        if let Some(side) = &mut side {
            side.feed(chunk.clone()).await;
        }
        file.write_all(&chunk).await.with_context(cannot_write)?;
    }
    if let Some(n) = expected
        && received != n
    {
        bail!("download of {shown} is truncated: {received} of {n} bytes (Content-Length)");
    }
    file.flush().await.with_context(cannot_write)?;
    tracing::debug!("downloaded {received} bytes from {shown}");
    let prehash = match side {
        Some(side) => Some(Box::new(side.finish().await?)),
        None => None,
    };
    Ok(Downloaded {
        file: download,
        sha256: hex::encode(hasher.finalize()),
        prehash,
    })
}

/// A finished download: the file in the cache and its hashes.
pub(crate) struct Downloaded {
    pub file: CacheFile,
    pub sha256: String,
    pub prehash: Option<Box<[u8; 64]>>,
}

/// minisign's prehash of a download, computed on a blocking thread fed with the chunks
/// (cheap clones of the same buffers) as they arrive.
struct SideHash {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    done: tokio::task::JoinHandle<[u8; 64]>,
}

impl SideHash {
    fn start() -> SideHash {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
        let done = tokio::task::spawn_blocking(move || {
            let mut hash = crate::trust::Prehash::default();
            while let Some(chunk) = rx.blocking_recv() {
                hash.update(&chunk);
            }
            hash.finish()
        });
        SideHash { tx, done }
    }

    async fn feed(&mut self, chunk: bytes::Bytes) {
        // The receiver only goes away with a panic, which `finish` reports.
        let _ = self.tx.send(chunk).await;
    }

    async fn finish(self) -> Result<[u8; 64]> {
        drop(self.tx);
        self.done
            .await
            .map_err(|e| anyhow::anyhow!("hashing the download panicked: {e}"))
    }
}

/// Delete downloads left in the cache by an interrupted run. Call under the deploy lock.
pub fn sweep_cache(cache: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(cache) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("download-") {
            tracing::info!("removed leftover download {}", entry.path().display());
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::etag_version;

    #[test]
    fn etag_versions_lose_quotes_and_weakness() {
        assert_eq!(etag_version("\"5f1-abc\""), "5f1-abc");
        assert_eq!(etag_version("W/\"5f1\""), "5f1");
        assert_eq!(etag_version("bare"), "bare");
    }
}
