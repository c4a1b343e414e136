//! A local ZIP file or directory: the built-in quick start and the fastest way to try the
//! tool. A check compares cheap metadata first (size and mtime of the file; paths, sizes,
//! modes and mtimes of a tree) and hashes the content only when that changed; the cycle then
//! compares that hash with the live release's, so touching a file does not redeploy it.
//!
//! Replace a local remote atomically (write a new file, then rename it into place): the agent
//! reads the path as it is when the check runs.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Artifact, Content, Fetched};
use crate::state::Stamp;

#[derive(Debug)]
pub struct LocalSource {
    path: PathBuf,
    /// `trusted-keys`: the cache, into which a new ZIP is copied while it is hashed, so that
    /// the bytes unpacked are the bytes verified (the file may be replaced at any time).
    signed_copy: Option<PathBuf>,
}

impl LocalSource {
    pub fn new(path: &Path, settings: &crate::config::Settings) -> LocalSource {
        let signed = matches!(settings.trust, Some(crate::trust::Trust::Minisign { .. }));
        LocalSource {
            path: path.to_path_buf(),
            signed_copy: signed.then(|| settings.cache.clone()),
        }
    }

    /// The file's name.
    pub fn file_name(&self) -> Option<String> {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// The path, for messages.
    pub fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// The signature next to the file (`<path>.minisig`), unless its size and mtime are
    /// those of `known`.
    pub async fn signature(&self, known: Option<&Stamp>) -> Result<super::signed::SigFetch> {
        use super::signed::SigFetch;
        let mut path = self.path.clone().into_os_string();
        path.push(".minisig");
        let path = PathBuf::from(path);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SigFetch::Missing),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        let stamp = format!("{}:{}:{}", meta.len(), meta.mtime(), meta.mtime_nsec());
        if known.and_then(|k| k.local.as_deref()) == Some(stamp.as_str()) {
            return Ok(SigFetch::Unchanged);
        }
        if meta.len() > super::signed::MAX_SIGNATURE as u64 {
            return Ok(SigFetch::TooLarge);
        }
        let text = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(SigFetch::New {
            text,
            stamp: Stamp {
                local: Some(stamp),
                ..Stamp::default()
            },
        })
    }

    pub async fn fetch(
        &self,
        known: Option<&Stamp>,
        cancel: &CancellationToken,
    ) -> Result<Fetched> {
        let path = self.path.clone();
        let known = known.and_then(|s| s.local.clone());
        let cancel = cancel.clone();
        let copy = self.signed_copy.clone();
        tokio::task::spawn_blocking(move || {
            fetch_blocking(&path, known.as_deref(), copy.as_deref(), &cancel)
        })
        .await
        .context("local remote check panicked")?
    }
}

/// With `copy_to` (the cache), a new ZIP is copied there and hashed for its signature too.
fn fetch_blocking(
    path: &Path,
    known: Option<&str>,
    copy_to: Option<&Path>,
    cancel: &CancellationToken,
) -> Result<Fetched> {
    let meta = fs::metadata(path)
        .with_context(|| format!("cannot read the local remote {}", path.display()))?;
    let (content, stamp) = if meta.is_dir() {
        (
            Content::Dir(path.to_path_buf()),
            tree_digest(path, false, cancel)?,
        )
    } else if meta.is_file() {
        (
            Content::Zip(path.to_path_buf()),
            format!("{}:{}:{}", meta.len(), meta.mtime(), meta.mtime_nsec()),
        )
    } else {
        bail!(
            "the local remote {} is neither a ZIP file nor a directory",
            path.display()
        );
    };
    if known == Some(stamp.as_str()) {
        return Ok(Fetched::Unchanged);
    }
    if let (Some(cache), true) = (copy_to, meta.is_file()) {
        let (copy, sha256, prehash) = copy_hashed(path, cache, cancel)?;
        return Ok(Fetched::New(Artifact {
            content: Content::Zip(copy.path().to_path_buf()),
            stamp: Stamp {
                version: sha256.clone(),
                local: Some(stamp),
                ..Stamp::default()
            },
            sha256,
            prehash: Some(Box::new(prehash)),
            _download: Some(copy),
        }));
    }
    let sha256 = if meta.is_dir() {
        tree_digest(path, true, cancel)?
    } else {
        file_digest(path)?
    };
    Ok(Fetched::New(Artifact {
        content,
        stamp: Stamp {
            version: sha256.clone(),
            etag: None,
            last_modified: None,
            local: Some(stamp),
        },
        sha256,
        prehash: None,
        _download: None,
    }))
}

/// Copy the ZIP at `path` into the cache, hashing it on the way (SHA-256 and minisign's
/// prehash): what is verified and unpacked is this copy, whatever happens to `path`.
fn copy_hashed(
    path: &Path,
    cache: &Path,
    cancel: &CancellationToken,
) -> Result<(super::CacheFile, String, [u8; 64])> {
    use std::io::Write;
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let copy = super::CacheFile::new(cache, ".zip")?;
    let mut out = File::create(copy.path())
        .with_context(|| format!("cannot create {}", copy.path().display()))?;
    let (mut sha, mut pre) = (Sha256::new(), crate::trust::Prehash::default());
    let mut buf = vec![0u8; CHUNK];
    loop {
        if cancel.is_cancelled() {
            bail!("interrupted while reading {}", path.display());
        }
        let n = read_full(&mut file, &mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        pre.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", copy.path().display()))?;
    }
    Ok((copy, hex::encode(sha.finalize()), pre.finish()))
}

/// Files at least this large are read on a second thread while this one hashes.
const PIPELINE_FROM: u64 = 8 << 20;
/// Chunk read at a time, and chunks in flight.
const CHUNK: usize = 1 << 20;
const CHUNKS: usize = 3;

fn file_digest(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    if file.metadata().map_or(0, |m| m.len()) >= PIPELINE_FROM {
        // Copying a ZIP out of the page cache costs about a third of hashing it: on a second
        // thread, that time hides behind the hashing (a full deploy from a local ZIP waits for
        // this hash before it unpacks anything).
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS);
        let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS);
        for _ in 0..CHUNKS {
            let _ = empty_tx.send(vec![0; CHUNK]);
        }
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for mut buf in empty_rx {
                    buf.resize(CHUNK, 0);
                    let read = read_full(&mut file, &mut buf).map(|n| {
                        buf.truncate(n);
                        buf
                    });
                    let last = read.as_ref().map_or(true, Vec::is_empty);
                    if full_tx.send(read).is_err() || last {
                        break;
                    }
                }
            });
            // Dropped on every way out, so the reader never waits for a buffer that won't come.
            let empty_tx = empty_tx;
            for chunk in full_rx {
                let chunk = chunk.with_context(|| format!("cannot read {}", path.display()))?;
                hasher.update(&chunk);
                let _ = empty_tx.send(chunk);
            }
            Ok::<_, anyhow::Error>(())
        })?;
        return Ok(hex::encode(hasher.finalize()));
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Fill `buf` unless the file ends first; the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A digest of a tree: paths, types, modes and either (with `content`) the bytes of files and
/// targets of links, or (without) sizes and mtimes, the cheap stamp.
fn tree_digest(root: &Path, content: bool, cancel: &CancellationToken) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        if cancel.is_cancelled() {
            bail!("interrupted while reading {}", root.display());
        }
        let dir = root.join(&rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .collect::<io::Result<_>>()
            .with_context(|| format!("cannot list {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel.join(entry.file_name());
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            hasher.update(rel.as_os_str().as_encoded_bytes());
            hasher.update([0]);
            hasher.update(meta.mode().to_le_bytes());
            if content {
                if meta.is_file() {
                    hasher.update(file_digest(&path)?.as_bytes());
                } else if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    hasher.update(target.as_os_str().as_encoded_bytes());
                }
            } else {
                hasher.update(meta.size().to_le_bytes());
                hasher.update(meta.mtime().to_le_bytes());
                hasher.update(meta.mtime_nsec().to_le_bytes());
            }
            hasher.update([0]);
            if meta.is_dir() {
                stack.push(rel);
            }
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_digest_sees_content_and_names() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir(d.path().join("a")).expect("mkdir");
        fs::write(d.path().join("a/f"), b"one").expect("write");
        let c = CancellationToken::new();
        let first = tree_digest(d.path(), true, &c).expect("digest");
        assert_eq!(first, tree_digest(d.path(), true, &c).expect("digest"));
        fs::write(d.path().join("a/f"), b"two").expect("write");
        let second = tree_digest(d.path(), true, &c).expect("digest");
        assert_ne!(first, second);
        fs::rename(d.path().join("a/f"), d.path().join("a/g")).expect("rename");
        assert_ne!(second, tree_digest(d.path(), true, &c).expect("digest"));
    }

    #[test]
    fn unchanged_stamp_reads_no_content() {
        let d = tempfile::tempdir().expect("tempdir");
        let zip = d.path().join("app.zip");
        fs::write(&zip, b"not really a zip").expect("write");
        let c = CancellationToken::new();
        let Fetched::New(a) = fetch_blocking(&zip, None, None, &c).expect("first") else {
            panic!("expected new")
        };
        let stamp = a.stamp.local.clone();
        assert!(matches!(
            fetch_blocking(&zip, stamp.as_deref(), None, &c).expect("second"),
            Fetched::Unchanged
        ));
        assert!(fetch_blocking(&d.path().join("missing.zip"), None, None, &c).is_err());
    }
}
