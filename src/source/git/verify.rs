//! Signed commits and tags (SPEC § Signed releases, `allowed-signers`), checked by git itself
//! with SSH signatures (`gpg.format = ssh`) against the configured allowed-signers file.
//!
//! Traps designed around (found with git 2.47 and OpenSSH 9.2):
//! - `git verify-commit` with a key that is not allowed prints `Good "git" signature` and
//!   exits 1: the verdict is the exit status and `%G?` = `G`, never the words;
//! - `verify-tag` passes for a signed tag on an unsigned commit: in tag mode the tag is what
//!   is signed, and the commit's own date still decides its order;
//! - the user's and the system's git configuration are ignored (`GIT_CONFIG_GLOBAL=/dev/null`,
//!   `GIT_CONFIG_NOSYSTEM=1`), so nothing on the host can switch verification off or point
//!   it at another signers file; the cache repository's own configuration is ours.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use tokio_util::sync::CancellationToken;

use super::cache::HEAD_REF;
use super::command::Git;
use crate::trust::{GitVerify, Refusal, Signed};

/// The settings of a git remote with `allowed-signers`.
#[derive(Debug, Clone)]
pub(super) struct GitTrust {
    pub allowed_signers: PathBuf,
    pub verify: GitVerify,
}

impl GitTrust {
    /// A git command in `cache` that verifies with our settings only.
    fn git<'a>(&self, what: &'static str, cache: &'a Path, args: &[&str]) -> Git<'a> {
        let mut all: Vec<OsString> = vec![
            "-c".into(),
            "gpg.format=ssh".into(),
            "-c".into(),
            format!(
                "gpg.ssh.allowedSignersFile={}",
                self.allowed_signers.display()
            )
            .into(),
            "-c".into(),
            "gpg.ssh.program=ssh-keygen".into(),
            "-c".into(),
            "log.showSignature=false".into(),
        ];
        all.extend(args.iter().map(OsString::from));
        Git {
            args: all,
            envs: vec![
                ("GIT_CONFIG_NOSYSTEM", "1".into()),
                ("GIT_CONFIG_GLOBAL", "/dev/null".into()),
            ],
            ..Git::new(what, Some(cache))
        }
    }

    /// Check the fetched ref (`HEAD_REF` in `cache`, whose commit is `commit`): a good
    /// signature by an allowed signer on the commit, or on the annotated tag with `tag`.
    /// The signed time is the commit's committer date.
    pub(super) async fn verify(
        &self,
        cache: &Path,
        commit: &str,
        cancel: &CancellationToken,
    ) -> Result<Result<Signed, Refusal>> {
        let file = self.allowed_signers.display().to_string();
        let format = "--format=%G?%x00%GS%x00%ct";
        let out = self
            .git("log", cache, &["log", "-1", format, commit, "--"])
            .run(cancel)
            .await
            .map_err(|e| anyhow!("cannot read commit {commit}: {e}"))?;
        let out = String::from_utf8_lossy(&out);
        let mut fields = out.trim_end().split('\0');
        let (grade, signer, time) = (
            fields.next().unwrap_or_default().to_string(),
            fields.next().unwrap_or_default().to_string(),
            fields.next().unwrap_or_default(),
        );
        let timestamp: u64 = time
            .parse()
            .map_err(|_| anyhow!("commit {commit}: no committer date in {out:?}"))?;
        match self.verify {
            GitVerify::Commit => {
                if grade == "N" {
                    return Ok(Err(Refusal::Unsigned {
                        commit: commit.to_string(),
                        what: "commit",
                    }));
                }
                let (status, _, message) = self
                    .git("verify-commit", cache, &["verify-commit", commit])
                    .output(cancel)
                    .await
                    .map_err(|e| anyhow!("cannot run git verify-commit: {e}"))?;
                if !status.success() || grade != "G" {
                    return Ok(Err(Refusal::SignerNotAllowed {
                        what: "commit",
                        id: commit.to_string(),
                        file,
                        detail: format!(
                            "git grades it {grade:?} ({}): {message}",
                            grade_name(&grade)
                        ),
                    }));
                }
                Ok(Ok(Signed { signer, timestamp }))
            }
            GitVerify::Tag => {
                let kind = self
                    .git("cat-file", cache, &["cat-file", "-t", HEAD_REF])
                    .run(cancel)
                    .await
                    .map_err(|e| anyhow!("cannot read the fetched ref: {e}"))?;
                if String::from_utf8_lossy(&kind).trim() != "tag" {
                    return Ok(Err(Refusal::Unsigned {
                        commit: format!("{commit} (the ref is not an annotated tag)"),
                        what: "tag",
                    }));
                }
                let body = self
                    .git("cat-file", cache, &["cat-file", "tag", HEAD_REF])
                    .run(cancel)
                    .await
                    .map_err(|e| anyhow!("cannot read the tag: {e}"))?;
                if !String::from_utf8_lossy(&body).contains("-----BEGIN SSH SIGNATURE-----") {
                    return Ok(Err(Refusal::Unsigned {
                        commit: format!("{commit} (its tag carries no SSH signature)"),
                        what: "tag",
                    }));
                }
                let (status, _, message) = self
                    .git("verify-tag", cache, &["verify-tag", HEAD_REF])
                    .output(cancel)
                    .await
                    .map_err(|e| anyhow!("cannot run git verify-tag: {e}"))?;
                if !status.success() {
                    return Ok(Err(Refusal::SignerNotAllowed {
                        what: "the tag of commit",
                        id: commit.to_string(),
                        file,
                        detail: message,
                    }));
                }
                // The verdict was the exit status; the words only name the signer.
                let signer = message
                    .split("signature for ")
                    .nth(1)
                    .and_then(|rest| rest.split(" with ").next())
                    .unwrap_or_default()
                    .to_string();
                Ok(Ok(Signed { signer, timestamp }))
            }
        }
    }
}

/// What git's `%G?` letters mean (git-log(1)).
fn grade_name(grade: &str) -> &'static str {
    match grade {
        "G" => "good",
        "B" => "bad signature",
        "U" => "good signature by a key that is not allowed",
        "X" => "good signature, expired",
        "Y" => "good signature by an expired key",
        "R" => "good signature by a revoked key",
        "E" => "cannot be checked: the key is not in allowed-signers, or ssh-keygen failed",
        "N" => "no signature",
        _ => "unknown",
    }
}
