//! `repo-deploy publish SOURCE TARGET [--sign KEY] [--notify]` (SPEC § Publishing): the other
//! end of the pipe. It makes the ZIP (reproducibly, from a directory, or takes a ready one),
//! signs it with a minisign secret key, puts the signature and then the ZIP where the agents
//! look (S3 with the agent's own S3 settings, or a local path, atomically), and wakes the
//! fleet.
//!
//! Order matters: the signature goes first, so an agent never meets a new ZIP with no
//! signature for it; it may meet a new signature beside the old ZIP for a moment, refuses that
//! pair, and takes the new one at its next check.

mod archive;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

use crate::cli::FleetAction;
use crate::config::Settings;
use crate::exit::Exit;
use crate::fsutil;

pub use archive::{Written, entry_time, write_tree};

/// Where the password of `--sign`'s key comes from when there is no terminal.
const PASSWORD_VAR: &str = "REPO_DEPLOY_SIGN_PASSWORD";

/// Why publishing failed: the command line or its files (exit 2), or the upload (exit 1).
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("{0:#}")]
    Usage(anyhow::Error),
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Where the ZIP goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    S3 { bucket: String, key: String },
    Local(PathBuf),
}

impl Target {
    fn parse(text: &str) -> Result<Target, PublishError> {
        if let Some(rest) = text.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key))
                    if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') =>
                {
                    Ok(Target::S3 {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                    })
                }
                _ => Err(PublishError::Usage(anyhow!(
                    "TARGET {text:?}: write s3://BUCKET/KEY (a key naming the ZIP, such as s3://releases/app.zip)"
                ))),
            };
        }
        if text.contains("://") {
            return Err(PublishError::Usage(anyhow!(
                "TARGET {text:?}: publish writes to s3://BUCKET/KEY or a local path; for an HTTP origin, publish to the directory it serves"
            )));
        }
        Ok(Target::Local(PathBuf::from(text)))
    }

    /// The ZIP's file name, which the signature's `file:` names.
    fn file_name(&self) -> String {
        match self {
            Target::S3 { key, .. } => key.rsplit('/').next().unwrap_or(key).to_owned(),
            Target::Local(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// Run `publish`.
pub async fn run(
    settings: &Settings,
    source: &Path,
    target: &str,
    sign: Option<&Path>,
    notify: bool,
) -> Exit {
    match publish(settings, source, target, sign).await {
        Ok(done) => println!("{done}"),
        Err(PublishError::Usage(e)) => {
            tracing::error!("{}", crate::logging::mask(&format!("{e:#}")));
            return Exit::Usage;
        }
        Err(PublishError::Failed(e)) => {
            tracing::error!("{}", crate::logging::mask(&format!("{e:#}")));
            return Exit::Failed;
        }
    }
    if !notify {
        return Exit::Ok;
    }
    if settings.fleet.is_none() {
        tracing::warn!("--notify needs fleet mode (etcd, fleet): not configured; nothing notified");
        return Exit::Ok;
    }
    match crate::fleet_commands::run(settings, &FleetAction::Notify).await {
        Exit::Ok => Exit::Ok,
        _ => {
            tracing::error!(
                "the ZIP is published, but the fleet was not woken: its hosts take it at their next scheduled check"
            );
            Exit::Failed
        }
    }
}

async fn publish(
    settings: &Settings,
    source: &Path,
    target: &str,
    sign: Option<&Path>,
) -> Result<String, PublishError> {
    let target = Target::parse(target)?;
    let name = target.file_name();
    if name.is_empty() {
        return Err(PublishError::Usage(anyhow!(
            "TARGET names no file: give the ZIP's path or key"
        )));
    }
    // The key first: a wrong password must not cost a whole zipping.
    let key = match sign {
        Some(path) => Some(read_secret_key(path)?),
        None => None,
    };
    let meta = std::fs::metadata(source).map_err(|e| {
        PublishError::Usage(anyhow!(
            "SOURCE {}: {e}; give a directory to zip or a ZIP file",
            source.display()
        ))
    })?;
    // The ZIP is written beside a local target (then renamed over it) or in the temporary
    // directory for S3; a ready ZIP is used where it is.
    let staging = match &target {
        Target::Local(p) => fsutil::temp_sibling(p),
        Target::S3 { .. } => std::env::temp_dir().join(format!(
            "repo-deploy-publish-{}.zip",
            fsutil::unique_suffix()
        )),
    };
    let _cleanup = Cleanup(staging.clone());
    let (zip_path, summary) = if meta.is_dir() {
        let time = entry_time(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())
            .map_err(PublishError::Usage)?;
        let file = File::create(&staging)
            .map_err(|e| PublishError::Usage(anyhow!("cannot write {}: {e}", staging.display())))?;
        let source_owned = source.to_path_buf();
        let (file, written) =
            tokio::task::spawn_blocking(move || write_tree(&source_owned, file, time))
                .await
                .map_err(|e| PublishError::Failed(anyhow!(e)))?
                .map_err(PublishError::Usage)?;
        file.sync_all().map_err(|e| {
            PublishError::Failed(anyhow!("cannot flush {}: {e}", staging.display()))
        })?;
        let summary = format!(
            "zipped {} files, {} directories, {} links ({} bytes)",
            written.files, written.dirs, written.links, written.bytes
        );
        (staging.clone(), summary)
    } else {
        check_zip(source)?;
        (source.to_path_buf(), "a ready ZIP".to_owned())
    };
    let signature = match &key {
        Some(key) => Some(sign_file(key, &zip_path, &name)?),
        None => None,
    };
    match &target {
        Target::Local(path) => {
            if let Some(sig) = &signature {
                fsutil::write_durable(&sig_path(path), sig.as_bytes()).map_err(|e| {
                    PublishError::Failed(anyhow!("cannot write {}: {e}", sig_path(path).display()))
                })?;
            }
            if zip_path == staging {
                std::fs::rename(&staging, path)
            } else {
                copy_atomic(&zip_path, path)
            }
            .and_then(|()| fsutil::fsync_dir(fsutil::parent_of(path)))
            .map_err(|e| PublishError::Failed(anyhow!("cannot write {}: {e}", path.display())))?;
            Ok(format!(
                "published {} to {}{} ({summary})",
                source.display(),
                path.display(),
                if signature.is_some() {
                    " with its .minisig"
                } else {
                    ""
                }
            ))
        }
        Target::S3 { bucket, key } => {
            let s3 = crate::source::s3::S3Source::new(bucket, key, settings)
                .await
                .map_err(PublishError::Usage)?;
            if let Some(sig) = &signature {
                s3.put(&format!("{key}.minisig"), sig.as_bytes().to_vec().into())
                    .await
                    .map_err(PublishError::Failed)?;
            }
            s3.put_file(key, &zip_path)
                .await
                .map_err(PublishError::Failed)?;
            Ok(format!(
                "published {} to s3://{bucket}/{key}{} ({summary})",
                source.display(),
                if signature.is_some() {
                    " with its .minisig"
                } else {
                    ""
                }
            ))
        }
    }
}

/// Removes the staging file unless it was renamed away.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fsutil::not_found_is_ok(std::fs::remove_file(&self.0));
    }
}

fn sig_path(zip: &Path) -> PathBuf {
    let mut name = zip.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

fn copy_atomic(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = fsutil::temp_sibling(to);
    let result = (|| {
        std::fs::copy(from, &tmp)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, to)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A ready ZIP must be one: its central directory is read.
fn check_zip(path: &Path) -> Result<(), PublishError> {
    let file = File::open(path)
        .map_err(|e| PublishError::Usage(anyhow!("SOURCE {}: {e}", path.display())))?;
    zip::ZipArchive::new(file).map(|_| ()).map_err(|e| {
        PublishError::Usage(anyhow!(
            "SOURCE {} is not a ZIP ({e}): give a directory to zip or a ZIP file",
            path.display()
        ))
    })
}

/// The secret key of `--sign`, decrypted with its password: `REPO_DEPLOY_SIGN_PASSWORD`, else
/// asked on the terminal (no echo), else an error.
fn read_secret_key(path: &Path) -> Result<minisign::SecretKey, PublishError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PublishError::Usage(anyhow!(
            "--sign {}: {e}; give the secret key made by `minisign -G` (minisign.key)",
            path.display()
        ))
    })?;
    let sk_box = minisign::SecretKeyBox::from_string(&text).map_err(|e| {
        PublishError::Usage(anyhow!(
            "--sign {}: not a minisign secret key ({e})",
            path.display()
        ))
    })?;
    let password = match std::env::var(PASSWORD_VAR) {
        Ok(p) => Some(p),
        Err(_) if has_terminal() => None,
        Err(_) => {
            return Err(PublishError::Usage(anyhow!(
                "--sign {}: the key's password: set {PASSWORD_VAR}, or run publish from a terminal",
                path.display()
            )));
        }
    };
    if password.is_none() {
        eprint!("password of {}: ", path.display());
        let _ = std::io::stderr().flush();
    }
    minisign::SecretKey::from_box(sk_box, password).map_err(|e| {
        PublishError::Usage(anyhow!(
            "--sign {}: cannot decrypt the key ({e}): a wrong password, or a damaged key",
            path.display()
        ))
    })
}

fn has_terminal() -> bool {
    std::fs::File::open("/dev/tty").is_ok()
}

/// The `.minisig` of the ZIP at `zip`, as stock `minisign -S` writes it: prehashed, trusted
/// comment `timestamp:<seconds>\tfile:<name>\thashed`.
fn sign_file(key: &minisign::SecretKey, zip: &Path, name: &str) -> Result<String, PublishError> {
    let file = File::open(zip)
        .map_err(|e| PublishError::Failed(anyhow!("cannot read {}: {e}", zip.display())))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let trusted = format!("timestamp:{now}\tfile:{name}\thashed");
    let signature = minisign::sign(
        None,
        key,
        std::io::BufReader::new(file),
        Some(&trusted),
        Some("signature from repo-deploy publish"),
    )
    .with_context(|| format!("cannot sign {}", zip.display()))
    .map_err(PublishError::Failed)?;
    Ok(signature.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_s3_keys_or_local_paths() {
        assert_eq!(
            Target::parse("s3://releases/web/app.zip").expect("s3"),
            Target::S3 {
                bucket: "releases".into(),
                key: "web/app.zip".into()
            }
        );
        assert_eq!(
            Target::parse("s3://releases/web/app.zip")
                .expect("s3")
                .file_name(),
            "app.zip"
        );
        for bad in [
            "s3://bucket-only",
            "s3://b/",
            "s3:///key",
            "https://host/app.zip",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(PublishError::Usage(_))),
                "{bad}"
            );
        }
        assert_eq!(
            Target::parse("/srv/www/app.zip").expect("local"),
            Target::Local("/srv/www/app.zip".into())
        );
    }
}
