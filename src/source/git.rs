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
//! (`unpack::check_tree`).
//!
//! Cache invariants: `${cache}/git/<key>.git`, one bare repository per URL and ref (submodules
//! in its `modules/`), belongs to this deploy directory, whose lock we hold. So a `*.lock` found
//! there before a fetch was left by a crash; such a cache, one recorded for another remote, or
//! one that fails to yield objects a fetch said it has, is deleted and fetched again once,
//! never left to wedge every later check (the failure class of git-sync #411 and #827).
//!
//! Credentials in an HTTP(S) URL never reach a command line, a log or an error: git gets the
//! URL without them and a credential helper that reads them from the child's environment and
//! answers only for that protocol and host. Every git command runs in its own session (no
//! terminal to prompt on), with stdin closed and a time limit, and is killed with its whole
//! process group on timeout or cancellation.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Artifact, Content, Fetched};
use crate::config::Settings;
use crate::remote::{GitRemote, mask};
use crate::state::Stamp;
use crate::unpack::{self, Limits, Summary, UnpackError};

/// The ref each cache repository keeps its wanted commit under (reachable, so gc keeps it).
const HEAD_REF: &str = "refs/repo-deploy/head";
/// File in a cache repository naming what it mirrors; a mismatch starts a clean cache.
const ORIGIN_FILE: &str = "repo-deploy-origin";
/// The temporary index used to write a tree out, inside the cache repository.
const INDEX_FILE: &str = "repo-deploy-index";
/// Sub-directory of a cache repository holding its submodules' repositories.
const MODULES_DIR: &str = "modules";
/// Submodules inside submodules inside …: beyond this depth it is a cycle or a mistake.
const MAX_NESTING: usize = 8;
/// Bound on a local git command (reading trees, writing files): generous, a backstop only.
const LOCAL_LIMIT: Duration = Duration::from_secs(3600);
/// After git exits, how long its output pipes may stay open (a backgrounded ssh master).
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How much of a command's stderr is kept for its error message.
const STDERR_TAIL: usize = 16 * 1024;

/// Environment of the credential helper, set on the git child only.
const ENV_PROTOCOL: &str = "REPO_DEPLOY_GIT_PROTOCOL";
const ENV_HOST: &str = "REPO_DEPLOY_GIT_HOST";
const ENV_USERNAME: &str = "REPO_DEPLOY_GIT_USERNAME";
const ENV_PASSWORD: &str = "REPO_DEPLOY_GIT_PASSWORD";

/// A credential helper (`git help credentials`) that answers `get` with the URL's credentials,
/// only for the protocol and host they were given for (not a submodule's or a redirect's
/// other host). It sees names of environment variables, never the secret itself.
const HELPER: &str = "!f() { test \"$1\" = get || exit 0; p=; h=; \
while IFS= read -r l; do case \"$l\" in protocol=*) p=${l#protocol=};; host=*) h=${l#host=};; esac; done; \
test \"$p\" = \"$REPO_DEPLOY_GIT_PROTOCOL\" && test \"$h\" = \"$REPO_DEPLOY_GIT_HOST\" || exit 0; \
printf 'username=%s\\npassword=%s\\n' \"$REPO_DEPLOY_GIT_USERNAME\" \"$REPO_DEPLOY_GIT_PASSWORD\"; }; f";

/// Variables that would point git at another repository, index or configuration than ours.
const CLEARED_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_GRAFT_FILE",
    "GIT_REPLACE_REF_BASE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_QUARANTINE_PATH",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_PROTOCOL_FROM_USER",
];

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
}

/// The commit a ref names on the remote, from `git ls-remote`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteRef {
    /// What to fetch: `HEAD`, `refs/heads/…` or `refs/tags/…`.
    name: String,
    /// The commit id (a tag peeled).
    commit: String,
}

/// The new content of a git remote: trees to write, parents before the submodules inside them.
#[derive(Debug, Clone)]
pub struct Checkout {
    parts: Vec<Part>,
}

/// One tree to write: from which cache repository, and where in the release.
#[derive(Debug, Clone)]
struct Part {
    git_dir: PathBuf,
    tree: String,
    /// Relative path inside the release (`""`: its root).
    dest: String,
}

/// Why bringing the cache up to date failed.
enum Failure {
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

fn broken(dir: &Path) -> impl FnOnce(GitError) -> Failure + '_ {
    move |e| Failure::Broken(dir.to_path_buf(), e.into())
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
        let cache = self.open_cache().await?;
        let mut rebuilt = false;
        loop {
            match self.update(&cache, &remote, cancel).await {
                Ok((commit, tree, checkout)) => {
                    tracing::debug!(
                        "fetched {commit} ({}) from {}: tree {tree}",
                        remote.name,
                        self.shown
                    );
                    return Ok(Fetched::New(Artifact {
                        content: Content::Git(checkout),
                        stamp: Stamp {
                            version: commit,
                            ..Stamp::default()
                        },
                        sha256: tree,
                        _download: None,
                    }));
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

    /// The cache repository for this remote; other remotes' caches are removed, and a cache
    /// left locked by a crash is deleted (it is rebuilt by the next fetch).
    async fn open_cache(&self) -> Result<PathBuf> {
        let ref_name = self.reference.as_deref().unwrap_or("HEAD");
        let key = short_hash(&format!("{}\n{ref_name}", self.endpoint.url));
        let (root, dir) = (self.root.clone(), self.root.join(format!("{key}.git")));
        let shown = self.shown.clone();
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
        unpack::check_tree(dest, limits, cancel)
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

// ---------------------------------------------------------------------------------------------
// The cache

/// Make `dir` a bare repository recorded for `origin`: kept when it already is, else
/// (re)created. Created under a temporary name and renamed, so a crash leaves no half-made
/// repository under the real name.
async fn ensure_repo(
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
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    remove_dir(&tmp)?;
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

fn remove_dir(dir: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(dir),
        Ok(_) => fs::remove_file(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.with_context(|| format!("cannot remove {}", dir.display()))
}

/// After a failed fetch: is the cache damaged (then rebuild) or was it the remote?
async fn diagnose(dir: &Path, error: anyhow::Error, cancel: &CancellationToken) -> Failure {
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
async fn gc(dir: &Path, cancel: &CancellationToken) {
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
enum Depth {
    One,
    Full,
    Unshallow,
}

async fn fetch(
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

async fn rev_parse(dir: &Path, what: &str, cancel: &CancellationToken) -> Result<String, GitError> {
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

async fn update_ref(dir: &Path, commit: &str, cancel: &CancellationToken) -> Result<(), GitError> {
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
fn short_hash(text: &str) -> String {
    let mut hex = hex::encode(Sha256::digest(text.as_bytes()));
    hex.truncate(16);
    hex
}

// ---------------------------------------------------------------------------------------------
// URLs and credentials

/// A repository URL as git gets it (no credentials), and the credentials it carried.
#[derive(Debug, Clone)]
struct Endpoint {
    url: String,
    credentials: Option<Credentials>,
    /// A submodule URL of another scheme than the superproject's: git's submodule protocol
    /// policy applies (`GIT_PROTOCOL_FROM_USER=0`).
    untrusted: bool,
}

#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    protocol: String,
    /// `host[:port]` as git's credential protocol names it.
    host: String,
    username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ {}://***@{} }}", self.protocol, self.host)
    }
}

impl Endpoint {
    /// Split the credentials off a URL: HTTP(S) user and password go to the credential helper;
    /// other schemes keep their user name (`ssh://git@host`) and lose any password (ssh does not
    /// take one from a URL).
    fn parse(url: &str) -> Result<Endpoint> {
        if url.contains(['\n', '\0']) {
            bail!("the URL contains a control character");
        }
        let Some(scheme_end) = url.find("://") else {
            return Ok(Endpoint {
                url: url.to_string(),
                credentials: None,
                untrusted: false,
            });
        };
        let protocol = url[..scheme_end].to_ascii_lowercase();
        let start = scheme_end + 3;
        let end = url[start..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| start + i);
        let Some(at) = url[start..end].rfind('@').map(|i| start + i) else {
            return Ok(Endpoint {
                url: url.to_string(),
                credentials: None,
                untrusted: false,
            });
        };
        let (userinfo, host) = (&url[start..at], &url[at + 1..end]);
        let (user, password) = userinfo
            .split_once(':')
            .map_or((userinfo, None), |(u, p)| (u, Some(p)));
        if protocol == "http" || protocol == "https" {
            let credentials = Credentials {
                protocol,
                host: host.to_string(),
                username: percent_decode(user)
                    .context("the user name in the URL is not valid UTF-8")?,
                password: percent_decode(password.unwrap_or(""))
                    .context("the password in the URL is not valid UTF-8")?,
            };
            let bare = format!("{}{}", &url[..start], &url[at + 1..]);
            return Ok(Endpoint {
                url: bare,
                credentials: Some(credentials),
                untrusted: false,
            });
        }
        let bare = format!("{}{user}@{}", &url[..start], &url[at + 1..]);
        Ok(Endpoint {
            url: bare,
            credentials: None,
            untrusted: false,
        })
    }
}

/// `%XX` escapes decoded (no `+` → space: this is a URL's user-info, not a form).
fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(out)?;
    if decoded.contains(['\n', '\0']) {
        bail!("it contains a control character");
    }
    Ok(decoded)
}

/// The transport of a URL as git's protocol policy names it.
fn scheme(url: &str) -> String {
    match url.find("://") {
        Some(i) => url[..i].to_ascii_lowercase(),
        None if url.starts_with('/') || url.starts_with('.') => "file".into(),
        None => "ssh".into(),
    }
}

/// A relative submodule URL (`../lib.git`, `./lib`) resolved against the superproject's URL,
/// as git does: each `../` drops one path component of the superproject URL.
fn resolve_relative(base: &str, relative: &str) -> Option<String> {
    let mut base = base.trim_end_matches('/').to_string();
    // Components may not be removed past the host of `scheme://host/…` or `host:` (scp-like).
    let floor = match base.find("://") {
        Some(i) => base[i + 3..].find('/').map_or(base.len(), |j| i + 3 + j),
        None => base.find(':').map_or(0, |i| i + 1),
    };
    let mut rest = relative;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            let cut = base[floor..].rfind('/').map_or(floor, |i| floor + i);
            if cut == floor && base.len() == floor {
                return None;
            }
            base.truncate(cut);
            rest = r;
        } else {
            break;
        }
    }
    let sep = if base.len() == floor && base.ends_with(':') {
        ""
    } else {
        "/"
    };
    Some(format!("{base}{sep}{rest}"))
}

// ---------------------------------------------------------------------------------------------
// Parsing git's output

/// The patterns to ask `ls-remote` for, in order of preference: a branch before a tag (peeled
/// to its commit), a full `refs/…` name as given, or `HEAD`.
fn ref_candidates(reference: Option<&str>) -> Vec<String> {
    match reference {
        None => vec!["HEAD".into()],
        Some(r) if r.starts_with("refs/") => vec![format!("{r}^{{}}"), r.to_string()],
        Some(r) => vec![
            format!("refs/heads/{r}"),
            format!("refs/tags/{r}^{{}}"),
            format!("refs/tags/{r}"),
        ],
    }
}

/// The first candidate that `ls-remote` listed, with its commit; a peeled tag (`^{}`) is
/// fetched by its tag name.
fn pick_ref(listing: &str, candidates: &[String]) -> Option<RemoteRef> {
    let found: HashMap<&str, &str> = listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(id, name)| (name.trim(), id.trim()))
        .collect();
    candidates.iter().find_map(|name| {
        let id = found.get(name.as_str())?;
        let fetch = name.strip_suffix("^{}").unwrap_or(name);
        let valid = (id.len() == 40 || id.len() == 64) && id.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| RemoteRef {
            name: fetch.to_string(),
            commit: id.to_string(),
        })
    })
}

/// One line of `git ls-tree -l -z`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TreeEntry {
    mode: String,
    /// `blob`, `tree` or `commit` (a submodule).
    kind: String,
    id: String,
    size: Option<u64>,
    path: String,
}

fn parse_ls_tree(out: &[u8]) -> Vec<TreeEntry> {
    out.split(|&b| b == 0)
        .filter_map(|record| {
            let record = String::from_utf8_lossy(record);
            let (meta, path) = record.split_once('\t')?;
            let mut fields = meta.split_whitespace();
            let (mode, kind, id) = (fields.next()?, fields.next()?, fields.next()?);
            let size = fields.next().and_then(|s| s.parse().ok());
            Some(TreeEntry {
                mode: mode.into(),
                kind: kind.into(),
                id: id.into(),
                size,
                path: path.into(),
            })
        })
        .collect()
}

/// A submodule's settings from `.gitmodules`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Module {
    url: String,
    update_none: bool,
}

/// `git config -z --list` of a `.gitmodules`: path → module.
fn parse_gitmodules(out: &[u8]) -> HashMap<String, Module> {
    let mut by_name: HashMap<String, (Option<String>, Module)> = HashMap::new();
    for record in out.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let record = String::from_utf8_lossy(record);
        let (key, value) = record.split_once('\n').unwrap_or((&record, ""));
        let Some((name, var)) = key
            .strip_prefix("submodule.")
            .and_then(|k| k.rsplit_once('.'))
        else {
            continue;
        };
        let slot = by_name.entry(name.to_string()).or_default();
        match var {
            "path" => slot.0 = Some(value.trim_end_matches('/').to_string()),
            "url" => slot.1.url = value.to_string(),
            "update" => slot.1.update_none = value == "none",
            _ => {}
        }
    }
    by_name
        .into_values()
        .filter_map(|(path, module)| Some((path?, module)))
        .filter(|(_, m)| !m.url.is_empty())
        .collect()
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Running git

/// How long a git command may run.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// At most this long in all (a question to a remote; local work).
    Total(Duration),
    /// Until its stderr has been silent this long (a transfer with `--progress`).
    Silence(Duration),
}

/// Why a git command failed.
#[derive(Debug, thiserror::Error)]
enum GitError {
    #[error("cannot run `git` (git remotes need git installed and on PATH): {0}")]
    Spawn(io::Error),
    #[error("git {0} did not finish within {1}s and was stopped")]
    TimedOut(&'static str, u64),
    #[error("git {0} stalled: no progress for {1}s (stall-timeout)")]
    Stalled(&'static str, u64),
    #[error("interrupted")]
    Cancelled,
    #[error("git {what} failed ({status}): {message}")]
    Failed {
        what: &'static str,
        status: String,
        message: String,
    },
    #[error("cannot {0}: {1}")]
    Io(&'static str, io::Error),
}

/// One git command.
struct Git<'a> {
    /// The subcommand, for messages.
    what: &'static str,
    git_dir: Option<&'a Path>,
    args: Vec<OsString>,
    envs: Vec<(&'static str, OsString)>,
    credentials: Option<Credentials>,
    untrusted: bool,
    limit: Limit,
}

impl<'a> Git<'a> {
    fn new(what: &'static str, git_dir: Option<&'a Path>) -> Git<'a> {
        Git {
            what,
            git_dir,
            args: Vec::new(),
            envs: Vec::new(),
            credentials: None,
            untrusted: false,
            limit: Limit::Total(LOCAL_LIMIT),
        }
    }

    /// Talk to this endpoint: its credentials and protocol policy.
    fn endpoint(mut self, endpoint: &Endpoint) -> Self {
        self.credentials = endpoint.credentials.clone();
        self.untrusted = endpoint.untrusted;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        for (key, _) in std::env::vars_os() {
            let name = key.as_encoded_bytes();
            let cleared = name.starts_with(b"REPO_DEPLOY_")
                || name.starts_with(b"GIT_CONFIG_KEY_")
                || name.starts_with(b"GIT_CONFIG_VALUE_")
                || CLEARED_ENV.iter().any(|c| c.as_bytes() == name);
            if cleared {
                cmd.env_remove(&key);
            }
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0");
        if let Limit::Silence(stall) = self.limit {
            // HTTP transfers slower than 1 byte/s for `stall` seconds are aborted by git itself.
            cmd.env("GIT_HTTP_LOW_SPEED_LIMIT", "1").env(
                "GIT_HTTP_LOW_SPEED_TIME",
                stall.as_secs().max(1).to_string(),
            );
        }
        if let Some(c) = &self.credentials {
            // An empty helper first resets the user's helpers: the URL's credentials win.
            cmd.env("GIT_CONFIG_COUNT", "2")
                .env("GIT_CONFIG_KEY_0", "credential.helper")
                .env("GIT_CONFIG_VALUE_0", "")
                .env("GIT_CONFIG_KEY_1", "credential.helper")
                .env("GIT_CONFIG_VALUE_1", HELPER)
                .env(ENV_PROTOCOL, &c.protocol)
                .env(ENV_HOST, &c.host)
                .env(ENV_USERNAME, &c.username)
                .env(ENV_PASSWORD, &c.password);
        }
        if self.untrusted {
            cmd.env("GIT_PROTOCOL_FROM_USER", "0");
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (*k, v)));
        if let Some(dir) = self.git_dir {
            let mut arg = OsString::from("--git-dir=");
            arg.push(dir);
            cmd.arg(arg);
        }
        cmd.args(&self.args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: between fork and exec only async-signal-safe system calls run (setsid,
        // umask), touching no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own: no terminal for ssh or git to prompt on, and one
                // process group to kill.
                rustix::process::setsid()?;
                // Checked-out files get the committed modes (0644/0755), whatever our umask.
                rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
                Ok(())
            });
        }
        cmd
    }

    /// Run to completion; stdout on success.
    async fn run(self, cancel: &CancellationToken) -> Result<Vec<u8>, GitError> {
        let what = self.what;
        let mut child = self.command().spawn().map_err(GitError::Spawn)?;
        let group = child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?));
        let kill = || {
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
        };
        let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut out_buf, mut err_buf) = (vec![0u8; 64 * 1024], vec![0u8; 8 * 1024]);
        let (span, silence) = match self.limit {
            Limit::Total(d) => (d, false),
            Limit::Silence(d) => (d, true),
        };
        let mut deadline = Instant::now() + span;
        let mut status: Option<ExitStatus> = None;
        let mut grace = Instant::now();
        while status.is_none() || stdout.is_some() || stderr.is_some() {
            tokio::select! {
                s = child.wait(), if status.is_none() => {
                    status = Some(s.map_err(|e| GitError::Io("wait for git", e))?);
                    grace = Instant::now() + EXIT_GRACE;
                }
                n = read_some(&mut stdout, &mut out_buf) => match n {
                    Ok(0) | Err(_) => stdout = None,
                    Ok(n) => out.extend_from_slice(&out_buf[..n]),
                },
                n = read_some(&mut stderr, &mut err_buf) => match n {
                    Ok(0) | Err(_) => stderr = None,
                    Ok(n) => {
                        err.extend_from_slice(&err_buf[..n]);
                        if err.len() > 2 * STDERR_TAIL {
                            err.drain(..err.len() - STDERR_TAIL);
                        }
                        if silence {
                            deadline = Instant::now() + span;
                        }
                    }
                },
                () = tokio::time::sleep_until(deadline), if status.is_none() => {
                    kill();
                    let _ = child.wait().await;
                    let secs = span.as_secs();
                    return Err(if silence { GitError::Stalled(what, secs) } else { GitError::TimedOut(what, secs) });
                }
                () = tokio::time::sleep_until(grace), if status.is_some() => break,
                () = cancel.cancelled(), if status.is_none() => {
                    kill();
                    let _ = child.wait().await;
                    return Err(GitError::Cancelled);
                }
            }
        }
        let message = summarize(&err);
        match status {
            Some(s) if s.success() => {
                if !message.is_empty() {
                    tracing::debug!("git {what}: {message}");
                }
                Ok(out)
            }
            Some(s) => Err(GitError::Failed {
                what,
                status: describe(s),
                message,
            }),
            None => Err(GitError::Io(
                "wait for git",
                io::Error::other("no exit status"),
            )),
        }
    }
}

/// Read from a stream that may be closed already (then wait forever: `select!` moves on).
async fn read_some<R: AsyncRead + Unpin>(
    stream: &mut Option<R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// git's stderr in one line: from its first `fatal:`/`error:` line on (a few lines), else its
/// last lines; progress meters dropped and URLs masked.
fn summarize(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("% (") && !l.ends_with(", done."))
        .collect();
    let first_error = lines
        .iter()
        .position(|l| l.starts_with("fatal:") || l.starts_with("error:"));
    let chosen = match first_error {
        Some(i) => &lines[i..lines.len().min(i + 4)],
        None => &lines[lines.len().saturating_sub(2)..],
    };
    chosen.iter().map(|l| mask(l)).collect::<Vec<_>>().join(" ")
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_http_urls_and_stay_out_of_debug_output() {
        let e =
            Endpoint::parse("https://deploy:s%40cret@git.example:8443/org/app.git").expect("parse");
        assert_eq!(e.url, "https://git.example:8443/org/app.git");
        let c = e.credentials.clone().expect("credentials");
        assert_eq!(
            (c.protocol.as_str(), c.host.as_str()),
            ("https", "git.example:8443")
        );
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("deploy", "s@cret")
        );
        let debug = format!("{e:?}");
        assert!(
            !debug.contains("s@cret") && !debug.contains("deploy"),
            "{debug}"
        );

        let token = Endpoint::parse("https://tok3n@h/app.git").expect("parse");
        assert_eq!(token.url, "https://h/app.git");
        assert_eq!(token.credentials.expect("credentials").password, "");
        let ssh = Endpoint::parse("ssh://git:pw@h/app.git").expect("parse");
        assert_eq!(
            (ssh.url.as_str(), ssh.credentials.is_none()),
            ("ssh://git@h/app.git", true)
        );
        let scp = Endpoint::parse("git@h:org/app.git").expect("parse");
        assert_eq!(scp.url, "git@h:org/app.git");
        assert!(Endpoint::parse("https://u:a%0Ab@h/x.git").is_err());
    }

    #[test]
    fn relative_submodule_urls_resolve_like_git() {
        let r = |base, rel| resolve_relative(base, rel);
        assert_eq!(
            r("https://h/org/app.git", "../lib.git").as_deref(),
            Some("https://h/org/lib.git")
        );
        assert_eq!(
            r("https://h/org/app.git/", "./lib").as_deref(),
            Some("https://h/org/app.git/lib")
        );
        assert_eq!(
            r("https://h/org/app.git", "../../other/lib.git").as_deref(),
            Some("https://h/other/lib.git")
        );
        assert_eq!(r("https://h/app.git", "../../x.git"), None);
        assert_eq!(
            r("git@h:org/app.git", "../lib.git").as_deref(),
            Some("git@h:org/lib.git")
        );
        assert_eq!(
            r("git@h:app.git", "../lib.git").as_deref(),
            Some("git@h:lib.git")
        );
        assert_eq!(
            r("file:///srv/git/app.git", "../lib.git").as_deref(),
            Some("file:///srv/git/lib.git")
        );
    }

    #[test]
    fn a_branch_wins_over_a_tag_and_tags_are_peeled() {
        let listing = "1111111111111111111111111111111111111111\trefs/tags/v1\n\
                       2222222222222222222222222222222222222222\trefs/tags/v1^{}\n";
        let picked = pick_ref(listing, &ref_candidates(Some("v1"))).expect("tag");
        assert_eq!(
            picked,
            RemoteRef {
                name: "refs/tags/v1".into(),
                commit: "2".repeat(40)
            }
        );
        let both = format!("{listing}3333333333333333333333333333333333333333\trefs/heads/v1\n");
        assert_eq!(
            pick_ref(&both, &ref_candidates(Some("v1")))
                .expect("branch")
                .name,
            "refs/heads/v1"
        );
        let head = "4444444444444444444444444444444444444444\tHEAD\n";
        assert_eq!(
            pick_ref(head, &ref_candidates(None)).expect("HEAD").commit,
            "4".repeat(40)
        );
        assert_eq!(pick_ref(head, &ref_candidates(Some("main"))), None);
        assert_eq!(pick_ref("nothex\tHEAD\n", &ref_candidates(None)), None);
    }

    #[test]
    fn ls_tree_and_gitmodules_output_is_parsed() {
        let out = [
            "100644 blob aaaa      12\tsite/a b.txt",
            "160000 commit bbbb       -\tsite/lib",
            "040000 tree cccc       -\tsite",
        ]
        .join("\0");
        let out = out.as_bytes();
        let entries = parse_ls_tree(out);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            (entries[0].path.as_str(), entries[0].size),
            ("site/a b.txt", Some(12))
        );
        assert_eq!(
            (entries[1].kind.as_str(), entries[1].id.as_str()),
            ("commit", "bbbb")
        );
        let modules = parse_gitmodules(b"submodule.a.b.path\nsite/lib\0submodule.a.b.url\n../lib.git\0submodule.x.path\nx\0submodule.x.url\ny\0submodule.x.update\nnone\0");
        assert_eq!(
            modules.get("site/lib"),
            Some(&Module {
                url: "../lib.git".into(),
                update_none: false
            })
        );
        assert!(modules.get("x").is_some_and(|m| m.update_none));
    }

    #[test]
    fn cache_keys_differ_by_url_and_ref() {
        assert_ne!(short_hash("u\nHEAD"), short_hash("u\nmain"));
        assert_eq!(short_hash("u\nmain").len(), 16);
    }

    #[tokio::test]
    async fn the_credential_helper_answers_only_for_its_host() {
        let endpoint =
            Endpoint::parse("https://deploy:pa55word@git.example/app.git").expect("parse");
        let ask = |host: &'static str| {
            let endpoint = endpoint.clone();
            async move {
                let mut git = Git::new("credential", None).endpoint(&endpoint);
                git.args = vec!["credential".into(), "fill".into()];
                let mut cmd = git.command();
                cmd.stdin(Stdio::piped())
                    .env("GIT_CONFIG_NOSYSTEM", "1")
                    .env("HOME", "/nonexistent")
                    .env_remove("GIT_ASKPASS")
                    .env_remove("SSH_ASKPASS");
                let mut child = cmd.spawn().expect("spawn git credential");
                let mut stdin = child.stdin.take().expect("stdin");
                tokio::io::AsyncWriteExt::write_all(
                    &mut stdin,
                    format!("protocol=https\nhost={host}\n\n").as_bytes(),
                )
                .await
                .expect("write");
                drop(stdin);
                let out = child.wait_with_output().await.expect("wait");
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        let answer = ask("git.example").await;
        assert!(
            answer.contains("username=deploy") && answer.contains("password=pa55word"),
            "{answer}"
        );
        let other = ask("evil.example").await;
        assert!(!other.contains("pa55word"), "{other}");
    }
}
