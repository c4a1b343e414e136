//! A ZIP object in S3 or an S3-compatible store: one conditional GetObject per check
//! (`If-None-Match` on the ETag), streamed into the cache with the length checked, and ranged
//! reads for incremental downloads.
//!
//! Credentials, first found wins (the SPEC's order): `aws-access-key`/`aws-secret-key` from
//! the configuration; `~/.amazon/account-key` of the running user; then the AWS SDK's standard
//! chain (environment, shared credentials/config files with profiles, web identity,
//! container credentials, the EC2 instance role through IMDSv2, refreshed before expiry). The
//! chain is the SDK's, not ours: credential handling is not something to write by hand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tokio_util::sync::CancellationToken;

use super::{Artifact, Content, Fetched};
use crate::config::Settings;
use crate::state::Stamp;

/// An S3 object and a client with its credentials.
#[derive(Debug)]
pub struct S3Source {
    client: Client,
    bucket: String,
    key: String,
    /// `s3://bucket/key`, for messages.
    shown: String,
    /// Where the credentials come from, for messages (never the secret).
    credentials: String,
    endpoint: Option<String>,
    cache: PathBuf,
    stall: Duration,
    /// `trusted-keys`: hash downloads for the signature, and download whole ZIPs only.
    prehash: bool,
}

/// Static keys from `~/.amazon/account-key` (`accessKey=…`, `secretKey=…` lines).
fn account_key_file(home: &Path) -> Result<Option<(String, String)>> {
    let path = home.join(".amazon/account-key");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!(e).context(format!("cannot read {}", path.display()))),
    };
    let (mut access, mut secret) = (None, None);
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "accessKey" => access = Some(v.trim().to_string()),
                "secretKey" => secret = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    match (access, secret) {
        (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Ok(Some((a, s))),
        _ => bail!(
            "{} needs both accessKey= and secretKey= lines",
            path.display()
        ),
    }
}

/// The home directory of the running user: `$HOME`, else the password database.
fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// A name for the part of the standard chain that will most likely answer, for messages.
fn chain_description() -> String {
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    let part = if set("AWS_ACCESS_KEY_ID") {
        "environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    } else if set("AWS_PROFILE") {
        "the shared credentials/config files (AWS_PROFILE)"
    } else if set("AWS_WEB_IDENTITY_TOKEN_FILE") {
        "a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE)"
    } else if set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    {
        "container credentials"
    } else if home_dir()
        .is_some_and(|h| h.join(".aws/credentials").exists() || h.join(".aws/config").exists())
    {
        "the shared credentials/config files in ~/.aws"
    } else {
        "the EC2 instance role (IMDSv2)"
    };
    format!("the standard AWS chain ({part})")
}

impl S3Source {
    /// A client for the object `key` in `bucket`, with the credentials, region and endpoint of
    /// `settings` (else `~/.amazon/account-key`, else the standard AWS chain) and its timeouts.
    /// Nothing is asked of S3 yet.
    pub async fn new(bucket: &str, key: &str, settings: &Settings) -> Result<S3Source> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.stall_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        let credentials = match (&settings.aws.access_key, &settings.aws.secret_key) {
            (Some(a), Some(s)) => {
                loader = loader.credentials_provider(Credentials::new(
                    a.expose(),
                    s.expose(),
                    None,
                    None,
                    "repo-deploy configuration",
                ));
                "the configuration (aws-access-key)".to_string()
            }
            (Some(_), None) | (None, Some(_)) => {
                bail!(
                    "aws-access-key and aws-secret-key go together: set both, or neither to use ~/.amazon/account-key or the AWS chain"
                )
            }
            (None, None) => match home_dir()
                .map(|h| account_key_file(&h))
                .transpose()?
                .flatten()
            {
                Some((a, s)) => {
                    crate::logging::register_secret(&s);
                    crate::logging::register_secret(&a);
                    loader = loader.credentials_provider(Credentials::new(
                        a,
                        s,
                        None,
                        None,
                        "~/.amazon/account-key",
                    ));
                    "~/.amazon/account-key".to_string()
                }
                None => chain_description(),
            },
        };
        let env_region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        if let Some(region) = &settings.aws.region {
            loader = loader.region(Region::new(region.clone()));
        } else if settings.aws.endpoint.is_some() && !env_region {
            // An S3-compatible store: no need to ask a profile or the instance metadata
            // service for a region; most stores accept any, and sign with us-east-1.
            loader = loader.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &settings.aws.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            // S3-compatible stores rarely care; AWS itself redirects. A region is needed to sign.
            conf = conf.region(Region::new("us-east-1"));
        }
        if settings.aws.endpoint.is_some() {
            conf = conf.force_path_style(true);
        }
        Ok(S3Source {
            client: Client::from_conf(conf.build()),
            bucket: bucket.to_string(),
            key: key.to_string(),
            shown: format!("s3://{bucket}/{key}"),
            credentials,
            endpoint: settings.aws.endpoint.clone(),
            cache: settings.cache.clone(),
            stall: settings.stall_timeout,
            prehash: matches!(settings.trust, Some(crate::trust::Trust::Minisign { .. })),
        })
    }

    /// Download the object unless it still has the ETag of `known` (a conditional GetObject).
    pub(crate) async fn fetch(
        &self,
        known: Option<&Stamp>,
        cancel: &CancellationToken,
    ) -> Result<Fetched> {
        self.fetch_with(known, None, cancel).await
    }

    /// [`S3Source::fetch`]; with `base` (the live release of an incremental update) the
    /// conditional GetObject asks for the ZIP's tail only and the update continues in
    /// `ranges.rs`.
    pub(crate) async fn fetch_with(
        &self,
        known: Option<&Stamp>,
        base: Option<&std::sync::Arc<crate::incremental::Base>>,
        cancel: &CancellationToken,
    ) -> Result<Fetched> {
        let base = base.filter(|_| !self.prehash);
        let mut req = self.client.get_object().bucket(&self.bucket).key(&self.key);
        if let Some(etag) = known.and_then(|s| s.etag.as_ref()) {
            req = req.if_none_match(etag);
        }
        if let Some(base) = base {
            req = req.range(format!("bytes=-{}", super::ranges::tail_request(base)));
        }
        let shown = &self.shown;
        let resp = tokio::select! {
            r = req.send() => r,
            () = cancel.cancelled() => bail!("interrupted while contacting {shown}"),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) if status_of(&e) == Some(304) && known.is_some() => {
                return Ok(Fetched::Unchanged);
            }
            Err(e) => return Err(self.explain(&e)),
        };
        let etag = resp.e_tag().map(str::to_string);
        let expected = resp.content_length().and_then(|n| u64::try_from(n).ok());
        if let (Some(range), Some(base)) = (
            resp.content_range()
                .and_then(super::ranges::parse_content_range),
            base,
        ) {
            let (start, end, total) = range;
            let bytes = resp
                .body
                .collect()
                .await
                .map_err(|e| anyhow!("download of {shown} failed: {e}"))?
                .into_bytes()
                .to_vec();
            let tail = super::ranges::Tail {
                start,
                total,
                bytes,
                etag,
                last_modified: None,
            };
            if end == total
                && tail.bytes.len() as u64 == end - start
                && let Some(artifact) =
                    super::ranges::assemble(self, tail, base, &self.cache, shown, cancel).await?
            {
                return Ok(Fetched::New(artifact));
            }
            return Box::pin(self.fetch_with(known, None, cancel)).await;
        }
        let body = S3Body(resp.body);
        let super::Downloaded {
            file: download,
            sha256,
            prehash,
        } = super::download(
            body,
            expected,
            &self.cache,
            shown,
            self.stall,
            self.prehash,
            cancel,
        )
        .await?;
        let version = etag
            .as_deref()
            .map(super::etag_version)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| sha256.clone());
        Ok(Fetched::New(Artifact {
            content: Content::Zip(download.path().to_path_buf()),
            stamp: Stamp {
                version,
                etag,
                last_modified: None,
                local: None,
            },
            sha256,
            prehash,
            _download: Some(download),
        }))
    }

    /// The key's last segment.
    pub fn file_name(&self) -> Option<String> {
        self.key.rsplit('/').next().map(str::to_string)
    }

    /// `s3://bucket/key`, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The signature next to the object (`<key>.minisig`), unless it still has the ETag of
    /// `known`.
    pub(crate) async fn signature(
        &self,
        known: Option<&Stamp>,
        cancel: &CancellationToken,
    ) -> Result<super::signed::SigFetch> {
        use super::signed::SigFetch;
        let key = format!("{}.minisig", self.key);
        let mut req = self.client.get_object().bucket(&self.bucket).key(&key);
        if let Some(etag) = known.and_then(|s| s.etag.as_ref()) {
            req = req.if_none_match(etag);
        }
        let shown = format!("{}.minisig", self.shown);
        let resp = tokio::select! {
            r = req.send() => r,
            () = cancel.cancelled() => bail!("interrupted while contacting {shown}"),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) if status_of(&e) == Some(304) && known.is_some() => {
                return Ok(SigFetch::Unchanged);
            }
            Err(e) if status_of(&e) == Some(404) => return Ok(SigFetch::Missing),
            Err(e) => return Err(self.explain(&e).context(format!("cannot read {shown}"))),
        };
        if resp
            .content_length()
            .is_some_and(|n| n > super::signed::MAX_SIGNATURE as i64)
        {
            return Ok(SigFetch::TooLarge);
        }
        let stamp = Stamp {
            version: String::new(),
            etag: resp.e_tag().map(str::to_string),
            last_modified: None,
            local: None,
        };
        let text = resp
            .body
            .collect()
            .await
            .map_err(|e| anyhow!("download of {shown} failed: {e}"))?
            .into_bytes()
            .to_vec();
        Ok(SigFetch::New { text, stamp })
    }

    /// Read bytes `start..end` (end exclusive) of the object, if it still has `etag`.
    /// For incremental downloads: the central directory and changed entries only.
    pub async fn read_range(&self, start: u64, end: u64, etag: Option<&str>) -> Result<Vec<u8>> {
        if end <= start {
            return Ok(Vec::new());
        }
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(format!("bytes={start}-{}", end - 1));
        if let Some(etag) = etag {
            req = req.if_match(etag);
        }
        let resp = req.send().await.map_err(|e| self.explain(&e))?;
        let bytes = resp
            .body
            .collect()
            .await
            .map_err(|e| anyhow!("reading bytes {start}-{end} of {} failed: {e}", self.shown))?
            .into_bytes();
        if bytes.len() as u64 != end - start {
            bail!(
                "{} answered {} bytes for the range {start}-{end}",
                self.shown,
                bytes.len()
            );
        }
        Ok(bytes.to_vec())
    }

    /// Upload `body` as `key` in this bucket (`repo-deploy publish`: the signature).
    pub async fn put(&self, key: &str, body: aws_sdk_s3::primitives::ByteStream) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "upload of s3://{}/{key} failed: {}",
                    self.bucket,
                    self.explain(&e)
                )
            })?;
        Ok(())
    }

    /// Upload the file at `path` as `key`, streamed from disk (`repo-deploy publish`: the ZIP).
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        let body = aws_sdk_s3::primitives::ByteStream::from_path(path)
            .await
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        self.put(key, body).await
    }

    /// One line that says what went wrong and what to do, naming the bucket, the key and the
    /// credential source, never a secret.
    fn explain<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        e: &SdkError<E, HttpResponse>,
    ) -> anyhow::Error {
        let (bucket, key, creds) = (&self.bucket, &self.key, &self.credentials);
        let code = e.code().unwrap_or("");
        let status = status_of(e);
        match (code, status) {
            ("AccessDenied", _) | (_, Some(403))
                if !matches!(
                    code,
                    "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "ExpiredToken"
                        | "InvalidToken"
                ) =>
            {
                anyhow!(
                    "access denied to key {key} in bucket {bucket} with credentials from {creds}: allow s3:GetObject on arn:aws:s3:::{bucket}/{key} for them"
                )
            }
            ("NoSuchBucket", _) => anyhow!(
                "no such bucket {bucket} (key {key}): check the remote URL and s3-endpoint/aws-region"
            ),
            ("NoSuchKey", _) | (_, Some(404)) => {
                anyhow!("no such key {key} in bucket {bucket}: check the remote URL (and `{{id}}`)")
            }
            ("ExpiredToken", _) | ("TokenRefreshRequired", _) => {
                anyhow!(
                    "the credentials from {creds} have expired (bucket {bucket}, key {key}): renew them"
                )
            }
            ("InvalidAccessKeyId", _) | ("SignatureDoesNotMatch", _) | ("InvalidToken", _) => {
                anyhow!(
                    "the S3 endpoint refused the credentials from {creds} ({code}) for bucket {bucket}, key {key}: check the access key and secret"
                )
            }
            _ => match e {
                // The SDK reports a failure to get credentials (none found, an unreachable
                // instance metadata service, a broken profile) as a dispatch failure of kind
                // "other", before anything is sent: that is not an unreachable endpoint.
                SdkError::DispatchFailure(d)
                    if !d.is_io() && !d.is_timeout() && chain(e).contains("credential") =>
                {
                    anyhow!(
                        "cannot get credentials from {creds} for bucket {bucket}, key {key}: {}; set aws-access-key and aws-secret-key, write ~/.amazon/account-key, or give the AWS chain credentials (environment, ~/.aws profile, web identity, container, instance role)",
                        chain(e)
                    )
                }
                SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => anyhow!(
                    "cannot reach the S3 endpoint {} for bucket {bucket}, key {key}: {}",
                    self.endpoint.as_deref().unwrap_or("of AWS"),
                    chain(e)
                ),
                SdkError::ConstructionFailure(_) => anyhow!(
                    "cannot build the request for bucket {bucket}, key {key} with credentials from {creds}: {}",
                    chain(e)
                ),
                _ => anyhow!(
                    "S3 request for key {key} in bucket {bucket} failed{}{}: {}",
                    status
                        .map(|s| format!(" with HTTP {s}"))
                        .unwrap_or_default(),
                    if code.is_empty() {
                        String::new()
                    } else {
                        format!(" ({code})")
                    },
                    e.message().map_or_else(|| chain(e), str::to_string)
                ),
            },
        }
    }
}

impl super::ranges::RangeRead for S3Source {
    async fn get_range(&self, start: u64, end: u64, etag: &str) -> Result<Vec<u8>> {
        self.read_range(start, end, Some(etag)).await
    }
}

fn status_of<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// An error's causes as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An object's body, for [`super::download`].
struct S3Body(aws_sdk_s3::primitives::ByteStream);

impl super::Body for S3Body {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, String> {
        self.0.next().await.transpose().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_key_file_lines() {
        let home = tempfile::tempdir().expect("tempdir");
        assert!(account_key_file(home.path()).expect("absent").is_none());
        std::fs::create_dir(home.path().join(".amazon")).expect("mkdir");
        let file = home.path().join(".amazon/account-key");
        std::fs::write(
            &file,
            "# keys\naccessKey=AKIAEXAMPLE\nsecretKey = s3cr3t/key\n",
        )
        .expect("write");
        assert_eq!(
            account_key_file(home.path()).expect("read"),
            Some(("AKIAEXAMPLE".to_string(), "s3cr3t/key".to_string()))
        );
        std::fs::write(&file, "accessKey=AKIAEXAMPLE\n").expect("write");
        let err = account_key_file(home.path()).expect_err("half a key");
        assert!(err.to_string().contains("secretKey"), "{err}");
    }
}
