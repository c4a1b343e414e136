//! Checking out: the trees a fetch planned (the superproject's tree or its sub-directory, then
//! each submodule's at its place) written into the staging directory through a temporary
//! index (`read-tree` + `checkout-index`), so no `.git` reaches the release, then validated by
//! the unpacking rules (`unpack::validate_tree`).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::cache::remove_dir;
use super::command::{Git, GitError};
use crate::unpack::{self, Limits, Summary, UnpackError};

/// The temporary index used to write a tree out, inside the cache repository.
pub(super) const INDEX_FILE: &str = "repo-deploy-index";

/// The new content of a git remote: trees to write, parents before the submodules inside them.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub(super) parts: Vec<Part>,
}

/// One tree to write: from which cache repository, and where in the release.
#[derive(Debug, Clone)]
pub(super) struct Part {
    pub(super) git_dir: PathBuf,
    pub(super) tree: String,
    /// Relative path inside the release (`""`: its root).
    pub(super) dest: String,
}

impl Checkout {
    /// Write every tree into `dest` (an empty staging directory), then validate the result by
    /// the unpacking rules (names, symlink targets, limits). Blocking: run it on a blocking
    /// thread of the runtime.
    pub fn write_into(
        &self,
        dest: &Path,
        limits: &Limits,
        cancel: &CancellationToken,
    ) -> Result<Summary, UnpackError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| UnpackError::Io {
            path: ".".into(),
            action: "check out a git tree",
            source: io::Error::other(e),
        })?;
        for part in &self.parts {
            if cancel.is_cancelled() {
                return Err(UnpackError::Cancelled);
            }
            let shown = if part.dest.is_empty() {
                ".".to_string()
            } else {
                part.dest.clone()
            };
            let target = real_dir(dest, &part.dest).map_err(|source| UnpackError::Io {
                path: shown.clone(),
                action: "prepare the directory of a git tree",
                source,
            })?;
            match handle.block_on(part.write(&target, cancel)) {
                Ok(()) => {}
                Err(GitError::Cancelled) => return Err(UnpackError::Cancelled),
                Err(e) => {
                    // An object that passed the checks before the fetch returned (its header
                    // was readable) but cannot be inflated: this check fails, and deleting the
                    // cache lets the next one fetch it again instead of failing forever.
                    if matches!(e, GitError::Failed { .. }) {
                        tracing::warn!(
                            "deleting the git cache {} after a failed checkout; the next check fetches again",
                            part.git_dir.display()
                        );
                        if let Err(e) = remove_dir(&part.git_dir) {
                            tracing::warn!("{e:#}");
                        }
                    }
                    let source = io::Error::other(e.to_string());
                    return Err(UnpackError::Io {
                        path: shown,
                        action: "check out the git tree",
                        source,
                    });
                }
            }
        }
        unpack::validate_tree(dest, limits, cancel)
    }
}

impl Part {
    /// `read-tree` into a temporary index, then `checkout-index` into `target`: the files of
    /// the tree with their committed modes and symlinks, and no `.git`.
    async fn write(&self, target: &Path, cancel: &CancellationToken) -> Result<(), GitError> {
        let index = self.git_dir.join(INDEX_FILE);
        let remove_index = || match fs::remove_file(&index) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(GitError::Io("remove the temporary index", e))
            }
            _ => Ok(()),
        };
        remove_index()?;
        let env = vec![("GIT_INDEX_FILE", index.clone().into_os_string())];
        let args = ["read-tree", &self.tree].map(OsString::from).to_vec();
        Git {
            args,
            envs: env.clone(),
            ..Git::new("read-tree", Some(&self.git_dir))
        }
        .run(cancel)
        .await?;
        let mut work_tree = OsString::from("--work-tree=");
        work_tree.push(target);
        // A user's `core.autocrlf` must not rewrite the committed files.
        let args = vec![
            work_tree,
            "-c".into(),
            "core.autocrlf=false".into(),
            "checkout-index".into(),
            "-a".into(),
        ];
        let written = Git {
            args,
            envs: env,
            ..Git::new("checkout-index", Some(&self.git_dir))
        }
        .run(cancel)
        .await;
        remove_index()?;
        written.map(drop)
    }
}

/// `dest/rel` after checking that every component below `dest` is a real directory (not a
/// symlink), creating the last one if the parent's checkout did not.
fn real_dir(dest: &Path, rel: &str) -> io::Result<PathBuf> {
    let mut path = dest.to_path_buf();
    for component in rel.split('/').filter(|c| !c.is_empty()) {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&path)?,
            Err(e) => return Err(e),
        }
    }
    Ok(path)
}
