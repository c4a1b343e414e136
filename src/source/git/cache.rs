//! The cache: `${cache}/git/<key>.git`, one bare repository per URL and ref (submodules in
//! its `modules/`), and the git commands that fill and query it.
//!
//! Invariants: the cache belongs to this deploy directory, whose lock we hold, so a `*.lock`
//! found there before a fetch was left by a crash. A repository is created under a temporary
//! name and renamed, so a crash leaves no half-made one under the real name. A damaged cache
//! ([`Failure::Broken`]) is deleted and fetched again once by the caller, never left to wedge
//! every later check.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::command::{Git, GitError, Limit};
use super::endpoint::Endpoint;
use crate::fsutil;

/// The ref each cache repository keeps its wanted commit under (reachable, so gc keeps it).
pub(super) const HEAD_REF: &str = "refs/repo-deploy/head";
/// File in a cache repository naming what it mirrors; a mismatch starts a clean cache.
pub(super) const ORIGIN_FILE: &str = "repo-deploy-origin";

/// Sub-directory of a cache repository holding its submodules' repositories.
pub(super) const MODULES_DIR: &str = "modules";

/// Why bringing the cache up to date failed.
pub(super) enum Failure {
    /// The cache repository at this path is damaged: delete it and try once more.
    Broken(PathBuf, anyhow::Error),
    /// Anything else: the remote, the content, a cancellation.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Other(e)
    }
}

pub(super) fn broken(dir: &Path) -> impl FnOnce(GitError) -> Failure + '_ {
    move |e| Failure::Broken(dir.to_path_buf(), e.into())
}

/// The cache repository `<key>.git` under `root`: other remotes' caches are removed, and a
/// cache left locked by a crash is deleted (it is rebuilt by the next fetch).
pub(super) async fn open(root: &Path, key: &str, shown: &str) -> Result<PathBuf> {
    let (root, dir) = (root.to_path_buf(), root.join(format!("{key}.git")));
    let shown = shown.to_string();
    tokio::task::spawn_blocking(move || -> Result<PathBuf> {
        fs::create_dir_all(&root)
            .with_context(|| format!("cannot create the git cache {}", root.display()))?;
        for entry in
            fs::read_dir(&root).with_context(|| format!("cannot list {}", root.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
            if entry.path() != dir {
                tracing::info!(
                    "removing the git cache {} (not used by {shown})",
                    entry.path().display()
                );
                remove_dir(&entry.path())?;
            }
        }
        // Half-made submodule caches of a crashed run (see `ensure_repo`).
        if let Ok(modules) = fs::read_dir(dir.join(MODULES_DIR)) {
            for entry in modules.flatten() {
                if entry.file_name().as_encoded_bytes().starts_with(b".") {
                    remove_dir(&entry.path())?;
                }
            }
        }
        match find_lock(&dir) {
            Ok(None) => {}
            Ok(Some(lock)) => {
                tracing::warn!(
                    "git cache {} was left locked by an interrupted run ({}); rebuilding it",
                    dir.display(),
                    lock.display()
                );
                remove_dir(&dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(
                    "git cache {} is unreadable ({e}); rebuilding it",
                    dir.display()
                );
                remove_dir(&dir)?;
            }
        }
        Ok(dir)
    })
    .await
    .context("git cache check panicked")?
}

/// Make `dir` a bare repository recorded for `origin`: kept when it already is, else
/// (re)created. Created under a temporary name and renamed, so a crash leaves no half-made
/// repository under the real name.
pub(super) async fn ensure_repo(
    dir: &Path,
    origin: &str,
    commit: &str,
    cancel: &CancellationToken,
) -> Result<()> {
    match fs::read_to_string(dir.join(ORIGIN_FILE)) {
        Ok(text)
            if text == origin && dir.join("objects").is_dir() && dir.join("HEAD").is_file() =>
        {
            return Ok(());
        }
        Ok(_) => {
            tracing::info!(
                "git cache {} belongs to another remote or is incomplete; starting a clean one",
                dir.display()
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            "git cache {} is unreadable ({e}); starting a clean one",
            dir.display()
        ),
    }
    remove_dir(dir)?;
    let name = dir
        .file_name()
        .map_or_else(|| "repo".into(), |n| n.to_string_lossy().into_owned());
    let parent = dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", dir.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    // Leftovers of a crashed creation of this repository (the deploy lock is ours: no other
    // agent is making one now).
    for entry in
        fs::read_dir(parent).with_context(|| format!("cannot list {}", parent.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list {}", parent.display()))?;
        if fsutil::is_temp_of(&entry.file_name().to_string_lossy(), &name) {
            remove_dir(&entry.path())?;
        }
    }
    let tmp = fsutil::temp_sibling(dir);
    let mut args: Vec<OsString> = vec![
        "-c".into(),
        "init.defaultBranch=main".into(),
        "init".into(),
        "--bare".into(),
        "-q".into(),
    ];
    args.push("--template=".into());
    if commit.len() == 64 {
        args.push("--object-format=sha256".into());
    }
    args.push(tmp.clone().into_os_string());
    let made = Git {
        args,
        ..Git::new("init", None)
    }
    .run(cancel)
    .await;
    let made = made.map_err(anyhow::Error::from).and_then(|_| {
        fs::write(tmp.join(ORIGIN_FILE), origin)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, dir)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))
    });
    if made.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    made.with_context(|| format!("cannot create the git cache {}", dir.display()))
}

/// The first `*.lock` file under `dir`.
fn find_lock(dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_name().as_encoded_bytes().ends_with(b".lock") {
                return Ok(Some(entry.path()));
            }
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(None)
}

pub(super) fn remove_dir(dir: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(dir),
        Ok(_) => fs::remove_file(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.with_context(|| format!("cannot remove {}", dir.display()))
}

/// After a failed fetch: is the cache damaged (then rebuild) or was it the remote?
pub(super) async fn diagnose(
    dir: &Path,
    error: anyhow::Error,
    cancel: &CancellationToken,
) -> Failure {
    if cancel.is_cancelled() {
        return Failure::Other(error);
    }
    let args = [
        "fsck",
        "--connectivity-only",
        "--no-dangling",
        "--no-progress",
    ]
    .map(OsString::from)
    .to_vec();
    match (Git {
        args,
        ..Git::new("fsck", Some(dir))
    })
    .run(cancel)
    .await
    {
        Ok(_) => Failure::Other(error),
        Err(GitError::Cancelled) => Failure::Other(error),
        Err(e) => Failure::Broken(dir.to_path_buf(), error.context(e.to_string())),
    }
}

/// Let git pack and prune the cache when it needs to, in the foreground (a detached gc would
/// outlive the check and leave locks behind).
pub(super) async fn gc(dir: &Path, cancel: &CancellationToken) {
    let args = ["-c", "gc.autoDetach=false", "gc", "--auto", "--quiet"]
        .map(OsString::from)
        .to_vec();
    if let Err(e) = (Git {
        args,
        ..Git::new("gc", Some(dir))
    })
    .run(cancel)
    .await
    {
        tracing::warn!("git gc in {} failed: {e}", dir.display());
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Depth {
    One,
    Full,
    Unshallow,
}

pub(super) async fn fetch(
    dir: &Path,
    endpoint: &Endpoint,
    refspecs: &[String],
    depth: Depth,
    stall: Duration,
    cancel: &CancellationToken,
) -> Result<(), GitError> {
    let mut args: Vec<OsString> = [
        "-c",
        "advice.fetchShowForcedUpdates=false",
        "fetch",
        "--no-tags",
        "--no-write-fetch-head",
    ]
    .map(OsString::from)
    .to_vec();
    args.extend(
        [
            "--no-auto-maintenance",
            "--no-recurse-submodules",
            "--no-show-forced-updates",
            "--progress",
        ]
        .map(OsString::from),
    );
    match depth {
        Depth::One => args.extend(["--depth", "1"].map(OsString::from)),
        Depth::Unshallow => args.push("--unshallow".into()),
        Depth::Full => {}
    }
    args.push("--".into());
    args.push(endpoint.url.clone().into());
    args.extend(refspecs.iter().map(OsString::from));
    // `--progress` keeps stderr busy while data flows, so silence means a stall.
    let git = Git {
        args,
        limit: Limit::Silence(stall),
        ..Git::new("fetch", Some(dir))
    };
    git.endpoint(endpoint).run(cancel).await.map(drop)
}

pub(super) async fn rev_parse(
    dir: &Path,
    what: &str,
    cancel: &CancellationToken,
) -> Result<String, GitError> {
    let args = ["rev-parse", "--verify", "--quiet", "--end-of-options", what]
        .map(OsString::from)
        .to_vec();
    let out = Git {
        args,
        ..Git::new("rev-parse", Some(dir))
    }
    .run(cancel)
    .await?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

pub(super) async fn update_ref(
    dir: &Path,
    commit: &str,
    cancel: &CancellationToken,
) -> Result<(), GitError> {
    let args = ["update-ref", HEAD_REF, commit]
        .map(OsString::from)
        .to_vec();
    Git {
        args,
        ..Git::new("update-ref", Some(dir))
    }
    .run(cancel)
    .await
    .map(drop)
}

/// The first 16 hex digits of a SHA-256: cache directory names.
pub(super) fn short_hash(text: &str) -> String {
    let mut hex = hex::encode(Sha256::digest(text.as_bytes()));
    hex.truncate(16);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_differ_by_url_and_ref() {
        assert_ne!(short_hash("u\nHEAD"), short_hash("u\nmain"));
        assert_eq!(short_hash("u\nmain").len(), 16);
    }
}
