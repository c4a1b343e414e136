//! A git repository as a remote (issue #3): the remote's default branch (`HEAD`) or `#ref` (a
//! branch, else a tag), the whole tree or one sub-directory (`/path`), submodules checked out
//! recursively, and no `.git` anywhere in the release. `DEPLOY_VERSION` is the commit id.
//!
//! The transport is the `git` command, not a library: it honours the user's SSH config, agent,
//! `known_hosts`, `url.*.insteadOf` and credential helpers, and speaks every URL form, protocol
//! v2, shallow fetches and submodules the way the rest of the user's tooling does.
//!
//! A check is one `git ls-remote` (protocol v0: one round trip, no objects move). Only when
//! the commit differs from the live one is it fetched (`--depth 1`) into a bare repository in
//! the cache; the tree id of `/path` then stands for the content (the artifact's `sha256`), so
//! the cycle sees a commit that changes nothing under `/path` as "same content": no release, no
//! hook. The tree is written straight into the staging directory from a temporary index
//! (`read-tree` + `checkout-index`), then validated by the unpacking rules
//! (`unpack::validate_tree`).
//!
//! The cache (`${cache}/git/<key>.git`, see `cache.rs`) belongs to this deploy directory; a
//! damaged one is deleted and fetched again once, never left to wedge every later check (the
//! failure class of git-sync #411 and #827).
//!
//! Credentials in an HTTP(S) URL never reach a command line, a log or an error: git gets the
//! URL without them and a credential helper that reads them from the child's environment and
//! answers only for that protocol and host. Every git command runs in its own session (no
//! terminal to prompt on), with stdin closed and a time limit, and is killed with its whole
//! process group on timeout or cancellation.
//!
//! The parts: `endpoint.rs` (URLs and credentials), `command.rs` (running git), `cache.rs`
//! (the cache repositories and the commands that fill them), `checkout.rs` (writing trees
//! into the release) and `parse.rs` (git's output). This file holds the source itself: the
//! check, the fetch and the plan of what to write, submodules included.

mod cache;
mod checkout;
mod command;
mod endpoint;
mod parse;
mod verify;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio_util::sync::CancellationToken;

use super::{Artifact, Content, Fetched};
use crate::config::Settings;
use crate::remote::{GitRemote, mask};
use crate::state::Stamp;
use crate::unpack::{Limits, UnpackError};
use cache::{
    Depth, Failure, HEAD_REF, MODULES_DIR, broken, diagnose, ensure_repo, fetch, gc, remove_dir,
    rev_parse, short_hash, update_ref,
};
pub use checkout::Checkout;
use checkout::Part;
use command::{Git, Limit};
use endpoint::{Endpoint, resolve_relative, scheme};
use parse::{
    Module, RemoteRef, TreeEntry, join, parse_gitmodules, parse_ls_tree, pick_ref, ref_candidates,
};

/// Submodules inside submodules inside …: beyond this depth it is a cycle or a mistake.
const MAX_NESTING: usize = 8;

/// A configured git remote.
#[derive(Debug)]
pub struct GitSource {
    endpoint: Endpoint,
    /// Sub-directory to deploy (`None`: the whole tree).
    path: Option<String>,
    /// Branch or tag (`None`: the remote's HEAD).
    reference: Option<String>,
    /// The remote as printed (credentials masked).
    shown: String,
    /// `${cache}/git`.
    root: PathBuf,
    limits: Limits,
    connect: Duration,
    stall: Duration,
    /// `allowed-signers`: what git must find signed.
    trust: Option<verify::GitTrust>,
}

impl GitSource {
    pub fn new(remote: &GitRemote, settings: &Settings) -> Result<GitSource> {
        let shown = settings.remote_display.clone();
        let endpoint = Endpoint::parse(&remote.url).with_context(|| format!("remote {shown}"))?;
        if let Some(path) = &remote.path
            && path.split('/').any(|c| matches!(c, "" | "." | ".."))
        {
            bail!(
                "remote {shown}: the sub-directory `/{path}` may not contain empty, `.` or `..` components"
            );
        }
        if let Some(r) = &remote.reference
            && (r.starts_with('-')
                || r.contains(['\0', '\n', ' ', ':', '^', '~', '?', '*', '[', '\\']))
        {
            bail!("remote {shown}: `#{r}` is not a valid branch or tag name");
        }
        Ok(GitSource {
            endpoint,
            path: remote.path.clone(),
            reference: remote.reference.clone(),
            shown,
            root: settings.cache.join("git"),
            limits: settings.limits,
            connect: settings.connect_timeout,
            stall: settings.stall_timeout,
            trust: match &settings.trust {
                Some(crate::trust::Trust::Git {
                    allowed_signers,
                    verify,
                    ..
                }) => Some(verify::GitTrust {
                    allowed_signers: allowed_signers.clone(),
                    verify: *verify,
                }),
                _ => None,
            },
        })
    }

    /// `#ref` as printed, or the default branch.
    fn wanted(&self) -> String {
        self.reference.as_ref().map_or_else(
            || "the default branch (HEAD)".to_string(),
            |r| format!("`{r}`"),
        )
    }

    pub async fn fetch(
        &self,
        known: Option<&Stamp>,
        cancel: &CancellationToken,
    ) -> Result<Fetched> {
        let remote = self.ls_remote(cancel).await?;
        if known.is_some_and(|s| s.version == remote.commit) {
            tracing::debug!(
                "{} is still at {} ({})",
                self.shown,
                remote.commit,
                remote.name
            );
            return Ok(Fetched::Unchanged);
        }
        self.fetch_new(&remote, cancel).await.map(Fetched::New)
    }

    /// [`GitSource::fetch`] with `allowed-signers`: the new commit (or tag) is verified by git
    /// before anything is checked out; a refused commit is not fetched again while the
    /// remote's ref still names it (`refused`).
    pub async fn fetch_signed(
        &self,
        known: Option<&Stamp>,
        refused: Option<&crate::state::Refused>,
        cancel: &CancellationToken,
    ) -> Result<super::SignedFetch> {
        use super::SignedFetch;
        let Some(trust) = &self.trust else {
            bail!("fetch_signed without allowed-signers (a bug)");
        };
        let remote = self.ls_remote(cancel).await?;
        if known.is_some_and(|s| s.version == remote.commit) {
            return Ok(SignedFetch::Unchanged);
        }
        if refused.is_some_and(|r| r.zip.version == remote.commit) {
            return Ok(SignedFetch::StillRefused);
        }
        let artifact = self.fetch_new(&remote, cancel).await?;
        let cache = self.open_cache().await?;
        let commit = artifact.stamp.version.clone();
        Ok(match trust.verify(&cache, &commit, cancel).await? {
            Ok(signed) => SignedFetch::Verified {
                artifact,
                signed,
                signature: None,
                sig_stamp: None,
            },
            Err(refusal) => SignedFetch::Refused {
                remember: crate::state::Refused::of(&refusal, artifact.stamp.clone(), None),
            },
        })
    }

    /// Fetch the commit `remote` names into the cache (rebuilt once if it is damaged) and
    /// plan its checkout.
    async fn fetch_new(&self, remote: &RemoteRef, cancel: &CancellationToken) -> Result<Artifact> {
        let cache = self.open_cache().await?;
        let mut rebuilt = false;
        loop {
            match self.update(&cache, remote, cancel).await {
                Ok((commit, tree, checkout)) => {
                    tracing::debug!(
                        "fetched {commit} ({}) from {}: tree {tree}",
                        remote.name,
                        self.shown
                    );
                    return Ok(Artifact {
                        content: Content::Git(checkout),
                        stamp: Stamp {
                            version: commit,
                            ..Stamp::default()
                        },
                        sha256: tree,
                        prehash: None,
                        _download: None,
                    });
                }
                Err(Failure::Broken(dir, e)) if !rebuilt && !cancel.is_cancelled() => {
                    tracing::warn!(
                        "git cache {} is damaged ({e:#}); deleting it and fetching again",
                        dir.display()
                    );
                    remove_dir(&dir)?;
                    rebuilt = true;
                }
                Err(Failure::Broken(_, e) | Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// Ask the remote which commit the wanted ref names; nothing else is transferred.
    async fn ls_remote(&self, cancel: &CancellationToken) -> Result<RemoteRef> {
        let candidates = ref_candidates(self.reference.as_deref());
        // Protocol v0: the server's first answer lists the refs, so the question costs one
        // round trip. v2 would add one (capabilities, then `ls-refs`) and send the same refs:
        // ls-remote cannot narrow its tail-matched patterns to ref prefixes.
        let mut args: Vec<OsString> = vec![
            "-c".into(),
            "protocol.version=0".into(),
            "ls-remote".into(),
            "--".into(),
            self.endpoint.url.clone().into(),
        ];
        args.extend(candidates.iter().map(OsString::from));
        let git = Git {
            args,
            limit: Limit::Total(self.connect + self.stall),
            ..Git::new("ls-remote", None)
        };
        let out = git
            .endpoint(&self.endpoint)
            .run(cancel)
            .await
            .with_context(|| format!("cannot look up {} of {}", self.wanted(), self.shown))?;
        let listing = String::from_utf8_lossy(&out);
        pick_ref(&listing, &candidates).ok_or_else(|| match &self.reference {
            Some(r) => anyhow!("{}: no branch or tag named `{r}` on the remote", self.shown),
            None => anyhow!(
                "{}: the remote has no default branch (HEAD); name one with `#branch`",
                self.shown
            ),
        })
    }

    /// The cache repository for this remote (see [`cache::open`]).
    async fn open_cache(&self) -> Result<PathBuf> {
        let ref_name = self.reference.as_deref().unwrap_or("HEAD");
        let key = short_hash(&format!("{}\n{ref_name}", self.endpoint.url));
        cache::open(&self.root, &key, &self.shown).await
    }

    /// Fetch the wanted ref into the cache and plan the checkout: the commit, the tree id of
    /// `/path` and the trees to write.
    async fn update(
        &self,
        cache: &Path,
        remote: &RemoteRef,
        cancel: &CancellationToken,
    ) -> Result<(String, String, Checkout), Failure> {
        let origin = format!("{}\n{}\n", self.endpoint.url, remote.name);
        ensure_repo(cache, &origin, &remote.commit, cancel).await?;
        let refspec = format!("+{}:{HEAD_REF}", remote.name);
        if let Err(e) = fetch(
            cache,
            &self.endpoint,
            &[refspec],
            Depth::One,
            self.stall,
            cancel,
        )
        .await
        {
            let e = anyhow!(e).context(format!(
                "cannot fetch {} ({}) from {}",
                remote.commit, remote.name, self.shown
            ));
            return Err(diagnose(cache, e, cancel).await);
        }
        let commit = rev_parse(cache, &format!("{HEAD_REF}^{{commit}}"), cancel)
            .await
            .map_err(broken(cache))?;
        let tree = match &self.path {
            None => rev_parse(cache, &format!("{commit}^{{tree}}"), cancel)
                .await
                .map_err(broken(cache))?,
            Some(path) => self.subtree(cache, &commit, path, cancel).await?,
        };
        let top = Item {
            git_dir: cache.to_path_buf(),
            endpoint: self.endpoint.clone(),
            commit: commit.clone(),
            tree: tree.clone(),
            dest: String::new(),
            prefix: self.path.clone().unwrap_or_default(),
            depth: 0,
        };
        let parts = self.plan(top, cache, cancel).await?;
        let mut repos: Vec<&Path> = parts.iter().map(|p| p.git_dir.as_path()).collect();
        repos.sort();
        repos.dedup();
        for repo in repos {
            gc(repo, cancel).await;
        }
        Ok((commit, tree, Checkout { parts }))
    }

    /// The tree id of `path` in `commit`, or an error naming it when it is missing.
    async fn subtree(
        &self,
        cache: &Path,
        commit: &str,
        path: &str,
        cancel: &CancellationToken,
    ) -> Result<String, Failure> {
        let args = ["--literal-pathspecs", "ls-tree", "-z", commit, "--", path]
            .map(OsString::from)
            .to_vec();
        let out = Git {
            args,
            ..Git::new("ls-tree", Some(cache))
        }
        .run(cancel)
        .await
        .map_err(broken(cache))?;
        let listing = parse_ls_tree(&out);
        match listing.first() {
            Some(e) if e.kind == "tree" => Ok(e.id.clone()),
            Some(_) => Err(anyhow!(
                "`/{path}` is not a directory in commit {commit} of {}",
                self.shown
            )
            .into()),
            None => Err(anyhow!(
                "`/{path}` does not exist in commit {commit} of {}",
                self.shown
            )
            .into()),
        }
    }

    /// Walk the tree and its submodules (fetching those not in the cache yet), checking the
    /// `max-files`/`max-size` limits before anything is written.
    async fn plan(
        &self,
        top: Item,
        cache: &Path,
        cancel: &CancellationToken,
    ) -> Result<Vec<Part>, Failure> {
        let mut parts = Vec::new();
        let mut queue = VecDeque::from([top]);
        let (mut entries, mut bytes) = (0u64, 0u64);
        while let Some(item) = queue.pop_front() {
            let args = ["ls-tree", "-r", "-t", "-l", "-z", &item.tree]
                .map(OsString::from)
                .to_vec();
            let out = Git {
                args,
                ..Git::new("ls-tree", Some(&item.git_dir))
            }
            .run(cancel)
            .await
            .map_err(broken(&item.git_dir))?;
            let mut gitlinks = Vec::new();
            for entry in parse_ls_tree(&out) {
                let path = join(&item.dest, &entry.path);
                entries += 1;
                if entries > self.limits.max_entries {
                    let error = UnpackError::TooManyEntries {
                        path,
                        max: self.limits.max_entries,
                    };
                    return Err(anyhow!(error)
                        .context(format!("cannot deploy {} from {}", item.commit, self.shown))
                        .into());
                }
                match entry.kind.as_str() {
                    // `ls-tree -l` reads each blob's header; it reports an unreadable one
                    // without a size (and still exits 0).
                    "blob" if entry.size.is_none() => {
                        let e = anyhow!("object {} (`{path}`) is missing or corrupt", entry.id);
                        return Err(Failure::Broken(item.git_dir.clone(), e));
                    }
                    "blob" if entry.mode != "120000" => {
                        bytes = bytes.saturating_add(entry.size.unwrap_or(0));
                        if bytes > self.limits.max_bytes {
                            let error = UnpackError::TooLarge {
                                path,
                                max: self.limits.max_bytes,
                            };
                            return Err(anyhow!(error)
                                .context(format!(
                                    "cannot deploy {} from {}",
                                    item.commit, self.shown
                                ))
                                .into());
                        }
                    }
                    "commit" => gitlinks.push(entry),
                    _ => {}
                }
            }
            if !gitlinks.is_empty() {
                let modules = self.modules(&item, cancel).await?;
                for link in gitlinks {
                    if let Some(sub) = self
                        .submodule(&item, &modules, &link, cache, cancel)
                        .await?
                    {
                        queue.push_back(sub);
                    }
                }
            }
            parts.push(Part {
                git_dir: item.git_dir,
                tree: item.tree,
                dest: item.dest,
            });
        }
        Ok(parts)
    }

    /// `.gitmodules` of an item's commit (at the commit's root, even when `/path` is deeper:
    /// outside what the tree listing checked, so its object is checked here).
    async fn modules(
        &self,
        item: &Item,
        cancel: &CancellationToken,
    ) -> Result<HashMap<String, Module>, Failure> {
        let args = ["ls-tree", "-l", "-z", &item.commit, "--", ".gitmodules"]
            .map(OsString::from)
            .to_vec();
        let out = Git {
            args,
            ..Git::new("ls-tree", Some(&item.git_dir))
        }
        .run(cancel)
        .await
        .map_err(broken(&item.git_dir))?;
        match parse_ls_tree(&out).first() {
            None => {
                return Err(anyhow!(
                    "commit {} of {} has submodules but no .gitmodules",
                    item.commit,
                    self.shown
                )
                .into());
            }
            Some(e) if e.size.is_none() => {
                let e = anyhow!("object {} (`.gitmodules`) is missing or corrupt", e.id);
                return Err(Failure::Broken(item.git_dir.clone(), e));
            }
            Some(_) => {}
        }
        let blob = format!("{}:.gitmodules", item.commit);
        let args = ["config", "-z", "--blob", &blob, "--list"]
            .map(OsString::from)
            .to_vec();
        let out = Git {
            args,
            ..Git::new("config", Some(&item.git_dir))
        }
        .run(cancel)
        .await
        .with_context(|| {
            format!(
                "cannot read .gitmodules of commit {} of {}",
                item.commit, self.shown
            )
        })?;
        Ok(parse_gitmodules(&out))
    }

    /// Make the commit a gitlink pins available in the submodule's own cache repository, and
    /// return it as an item to plan (`None` for a submodule marked `update = none`).
    async fn submodule(
        &self,
        parent: &Item,
        modules: &HashMap<String, Module>,
        link: &TreeEntry,
        cache: &Path,
        cancel: &CancellationToken,
    ) -> Result<Option<Item>, Failure> {
        let full = join(&parent.prefix, &link.path);
        let dest = join(&parent.dest, &link.path);
        let context = || {
            format!(
                "submodule `{full}` (at `{dest}` in the release) of {}",
                self.shown
            )
        };
        let module = modules
            .get(&full)
            .ok_or_else(|| anyhow!("{}: no entry with this path in .gitmodules", context()))?;
        if module.update_none {
            tracing::info!("{}: `update = none` in .gitmodules, left empty", context());
            return Ok(None);
        }
        if parent.depth + 1 > MAX_NESTING {
            return Err(anyhow!(
                "{}: submodules nested more than {MAX_NESTING} deep",
                context()
            )
            .into());
        }
        let url = match module.url.as_str() {
            u if u.starts_with("./") || u.starts_with("../") => {
                resolve_relative(&parent.endpoint.url, u)
            }
            u => Some(u.to_string()),
        }
        .filter(|u| !u.is_empty() && !u.starts_with('-'))
        .ok_or_else(|| {
            anyhow!(
                "{}: cannot use the URL `{}` from .gitmodules",
                context(),
                mask(&module.url)
            )
        })?;
        let mut endpoint = Endpoint::parse(&url).with_context(context)?;
        if endpoint.credentials.is_none() {
            // The helper answers only for the host they were given for.
            endpoint.credentials = parent.endpoint.credentials.clone();
        }
        // git refuses `file://` and local paths in submodules unless trusted; we allow the
        // superproject's own scheme (a local superproject may have local submodules).
        endpoint.untrusted = scheme(&url) != scheme(&self.endpoint.url);
        let shown = mask(&endpoint.url);
        let commit = link.id.clone();
        let dir = cache
            .join(MODULES_DIR)
            .join(format!("{}.git", short_hash(&endpoint.url)));
        ensure_repo(&dir, &format!("{}\n", endpoint.url), &commit, cancel).await?;
        if rev_parse(&dir, &format!("{HEAD_REF}^{{commit}}"), cancel)
            .await
            .ok()
            .as_deref()
            != Some(commit.as_str())
        {
            if rev_parse(&dir, &format!("{commit}^{{commit}}"), cancel)
                .await
                .is_ok()
            {
                update_ref(&dir, &commit, cancel)
                    .await
                    .map_err(broken(&dir))?;
            } else {
                self.fetch_pinned(&dir, &endpoint, &commit, cancel)
                    .await
                    .map_err(|f| match f {
                        Failure::Other(e) => {
                            Failure::Other(e.context(format!("{} from {shown}", context())))
                        }
                        damaged => damaged,
                    })?;
            }
        }
        let tree = rev_parse(&dir, &format!("{commit}^{{tree}}"), cancel)
            .await
            .map_err(broken(&dir))?;
        Ok(Some(Item {
            git_dir: dir,
            endpoint,
            commit,
            tree,
            dest,
            prefix: String::new(),
            depth: parent.depth + 1,
        }))
    }

    /// Fetch one commit by id (`--depth 1`); a server that refuses unadvertised ids gets a
    /// full fetch of its branches and tags instead.
    async fn fetch_pinned(
        &self,
        dir: &Path,
        endpoint: &Endpoint,
        commit: &str,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        let by_id = format!("+{commit}:{HEAD_REF}");
        let Err(first) = fetch(dir, endpoint, &[by_id], Depth::One, self.stall, cancel).await
        else {
            return Ok(());
        };
        if cancel.is_cancelled() {
            return Err(anyhow!(first).into());
        }
        if let Failure::Broken(dir, e) = diagnose(dir, anyhow!("{first}"), cancel).await {
            return Err(Failure::Broken(dir, e));
        }
        tracing::debug!("fetching {commit} by id failed ({first}); fetching all branches and tags");
        let depth = if dir.join("shallow").exists() {
            Depth::Unshallow
        } else {
            Depth::Full
        };
        let refspecs = [
            "+refs/heads/*:refs/repo-deploy/heads/*",
            "+refs/tags/*:refs/repo-deploy/tags/*",
        ]
        .map(String::from);
        if let Err(e) = fetch(dir, endpoint, &refspecs, depth, self.stall, cancel).await {
            return Err(diagnose(
                dir,
                anyhow!(e).context(format!("fetching {commit} by id failed ({first})")),
                cancel,
            )
            .await);
        }
        if rev_parse(dir, &format!("{commit}^{{commit}}"), cancel)
            .await
            .is_err()
        {
            return Err(
                anyhow!("commit {commit} is not on any branch or tag of the remote").into(),
            );
        }
        update_ref(dir, commit, cancel).await.map_err(broken(dir))
    }
}

/// A repository to plan: the superproject, or a submodule at `dest`.
struct Item {
    git_dir: PathBuf,
    /// Where it came from: relative submodule URLs are resolved against it.
    endpoint: Endpoint,
    commit: String,
    /// The tree to write.
    tree: String,
    /// Where the tree goes in the release.
    dest: String,
    /// The tree's path in `commit` (`/path` of the superproject), for `.gitmodules` lookups.
    prefix: String,
    depth: usize,
}
