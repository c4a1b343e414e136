//! A ZIP over HTTP(S): one conditional GET per check (If-None-Match on the ETag, else
//! If-Modified-Since), streamed into the cache with the length checked and the content hashed
//! on the way. rustls with the platform's certificate store; redirects are bounded; Basic auth
//! comes from the URL and is never printed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    RANGE,
};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::ranges::{self, RangeRead, Tail};
use super::{Artifact, Content, Fetched, etag_version};
use crate::config::Settings;
use crate::incremental::Base;
use crate::secret::Secret;
use crate::state::Stamp;

#[derive(Debug)]
pub struct HttpSource {
    client: reqwest::Client,
    /// The URL without credentials.
    url: Url,
    /// Basic-auth user and password from the URL's user-info (`remote::userinfo`).
    user: Option<(String, Option<Secret>)>,
    /// The URL as printed (credentials masked).
    shown: String,
    cache: std::path::PathBuf,
    stall: Duration,
    /// `trusted-keys`: hash downloads for the signature, and download whole ZIPs only (a
    /// signature covers every byte; a ranged update would not have them all).
    prehash: bool,
}

impl HttpSource {
    pub fn new(url: &Url, settings: &Settings) -> Result<HttpSource> {
        let shown = &settings.remote_display;
        let user = crate::remote::userinfo(url).with_context(|| format!("remote {shown}"))?;
        let mut bare = url.clone();
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.stall_timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("repo-deploy/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(HttpSource {
            client,
            url: bare,
            user,
            shown: settings.remote_display.clone(),
            cache: settings.cache.clone(),
            stall: settings.stall_timeout,
            prehash: matches!(settings.trust, Some(crate::trust::Trust::Minisign { .. })),
        })
    }

    pub async fn fetch(
        &self,
        known: Option<&Stamp>,
        cancel: &CancellationToken,
    ) -> Result<Fetched> {
        self.fetch_with(known, None, cancel).await
    }

    /// [`HttpSource::fetch`]; with `base` (the live release of an incremental update) the
    /// conditional GET asks for the ZIP's tail only: `206` continues in `ranges.rs`, `200` (a
    /// server without ranges) is a full download on the same request.
    pub async fn fetch_with(
        &self,
        known: Option<&Stamp>,
        base: Option<&Arc<Base>>,
        cancel: &CancellationToken,
    ) -> Result<Fetched> {
        let base = base.filter(|_| !self.prehash);
        let mut req = self.client.get(self.url.clone());
        if let Some((user, pass)) = &self.user {
            req = req.basic_auth(user, pass.as_ref().map(Secret::expose));
        }
        if let Some(stamp) = known {
            if let Some(etag) = &stamp.etag {
                req = req.header(IF_NONE_MATCH, etag);
            } else if let Some(lm) = &stamp.last_modified {
                req = req.header(IF_MODIFIED_SINCE, lm);
            }
        }
        if let Some(base) = base {
            req = req.header(RANGE, format!("bytes=-{}", ranges::tail_request(base)));
        }
        let shown = &self.shown;
        let resp = tokio::select! {
            r = req.send() => r.map_err(|e| anyhow!("cannot reach {shown}: {}{}", describe(&e), self.stall_hint(&e)))?,
            () = cancel.cancelled() => bail!("interrupted while contacting {shown}"),
        };
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            if known.is_some() {
                return Ok(Fetched::Unchanged);
            }
            bail!("{shown} answered 304 Not Modified to an unconditional request");
        }
        if let (StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE, Some(base)) =
            (status, base)
        {
            if let Some(tail) = self.tail(resp, cancel).await?
                && let Some(artifact) =
                    ranges::assemble(self, tail, base, &self.cache, shown, cancel).await?
            {
                return Ok(Fetched::New(artifact));
            }
            return Box::pin(self.fetch_with(known, None, cancel)).await;
        }
        if !status.is_success() {
            let hint = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    ": check the credentials in the remote URL"
                }
                StatusCode::NOT_FOUND => ": check the remote URL (and `{id}`)",
                _ => "",
            };
            bail!("{shown} answered {status}{hint}");
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(ETAG);
        let last_modified = header(LAST_MODIFIED);
        let expected: Option<u64> = header(CONTENT_LENGTH).and_then(|v| v.parse().ok());

        let body = HttpBody { resp, source: self };
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
            .map(etag_version)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| sha256.clone());
        Ok(Fetched::New(Artifact {
            content: Content::Zip(download.path().to_path_buf()),
            stamp: Stamp {
                version,
                etag,
                last_modified,
                local: None,
            },
            sha256,
            prehash,
            _download: Some(download),
        }))
    }

    /// The URL's last path segment.
    pub fn file_name(&self) -> Option<String> {
        self.url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .map(str::to_string)
    }

    /// The URL, credentials masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The signature next to the ZIP (`<url>.minisig`, same query and credentials), unless it
    /// still has the validators of `known`.
    pub(crate) async fn signature(
        &self,
        known: Option<&Stamp>,
        cancel: &CancellationToken,
    ) -> Result<super::signed::SigFetch> {
        use super::signed::SigFetch;
        let mut url = self.url.clone();
        url.set_path(&format!("{}.minisig", self.url.path()));
        let mut req = self.client.get(url);
        if let Some((user, pass)) = &self.user {
            req = req.basic_auth(user, pass.as_ref().map(Secret::expose));
        }
        if let Some(etag) = known.and_then(|s| s.etag.as_ref()) {
            req = req.header(IF_NONE_MATCH, etag);
        } else if let Some(lm) = known.and_then(|s| s.last_modified.as_ref()) {
            req = req.header(IF_MODIFIED_SINCE, lm);
        }
        let shown = format!("{}.minisig", self.shown);
        let mut resp = tokio::select! {
            r = req.send() => r.map_err(|e| anyhow!("cannot reach {shown}: {}", describe(&e)))?,
            () = cancel.cancelled() => bail!("interrupted while contacting {shown}"),
        };
        match resp.status() {
            StatusCode::NOT_MODIFIED if known.is_some() => return Ok(SigFetch::Unchanged),
            StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(SigFetch::Missing),
            s if !s.is_success() => bail!("{shown} answered {s}"),
            _ => {}
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let stamp = Stamp {
            version: String::new(),
            etag: header(ETAG),
            last_modified: header(LAST_MODIFIED),
            local: None,
        };
        let mut text = Vec::new();
        while let Some(chunk) = tokio::select! {
            c = resp.chunk() => c.map_err(|e| anyhow!("cannot read {shown}: {}", describe(&e)))?,
            () = cancel.cancelled() => bail!("interrupted while reading {shown}"),
        } {
            text.extend_from_slice(&chunk);
            if text.len() > super::signed::MAX_SIGNATURE {
                return Ok(SigFetch::TooLarge);
            }
        }
        Ok(SigFetch::New { text, stamp })
    }

    /// The tail of the ZIP from a `206` answer to the first request; `None` when the answer is
    /// not one a ranged update can use.
    async fn tail(
        &self,
        mut resp: reqwest::Response,
        cancel: &CancellationToken,
    ) -> Result<Option<Tail>> {
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let (etag, last_modified) = (header(ETAG), header(LAST_MODIFIED));
        let Some((start, end, total)) = header(CONTENT_RANGE)
            .as_deref()
            .and_then(ranges::parse_content_range)
        else {
            return Ok(None);
        };
        if resp.status() != StatusCode::PARTIAL_CONTENT || end != total {
            return Ok(None);
        }
        let bytes = self.body(&mut resp, end - start, cancel).await?;
        Ok(Some(Tail {
            start,
            total,
            bytes,
            etag,
            last_modified,
        }))
    }

    /// The body of a ranged answer, which must be exactly `len` bytes.
    async fn body(
        &self,
        resp: &mut reqwest::Response,
        len: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>> {
        let shown = &self.shown;
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(64 << 20));
        loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(self.stall, resp.chunk()) => match c {
                    Err(_) => bail!("download of {shown} stalled: nothing received for {}s (stall-timeout)", self.stall.as_secs()),
                    Ok(c) => c.map_err(|e| anyhow!("download of {shown} failed: {}{}", describe(&e), self.stall_hint(&e)))?,
                },
                () = cancel.cancelled() => bail!("interrupted while downloading {shown}"),
            };
            let Some(chunk) = chunk else { break };
            if bytes.len() as u64 + chunk.len() as u64 > len {
                bail!("{shown} sent more than the {len} bytes of the range it announced");
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != len {
            bail!(
                "{shown} sent {} of the {len} bytes of the range it announced",
                bytes.len()
            );
        }
        Ok(bytes)
    }

    /// reqwest's read timeout is `stall-timeout` and usually fires before our own timer:
    /// name the setting, so the operator knows which knob to turn.
    fn stall_hint(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() && !e.is_connect() {
            format!(
                " (stalled: nothing received for {}s, stall-timeout)",
                self.stall.as_secs()
            )
        } else {
            String::new()
        }
    }
}

impl RangeRead for HttpSource {
    async fn get_range(&self, start: u64, end: u64, etag: &str) -> Result<Vec<u8>> {
        let shown = &self.shown;
        let mut req = self
            .client
            .get(self.url.clone())
            .header(RANGE, format!("bytes={start}-{}", end - 1))
            .header(IF_MATCH, etag);
        if let Some((user, pass)) = &self.user {
            req = req.basic_auth(user, pass.as_ref().map(Secret::expose));
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {shown}: {}", describe(&e)))?;
        let range = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(ranges::parse_content_range);
        match resp.status() {
            StatusCode::PARTIAL_CONTENT
                if range.is_some_and(|(a, b, _)| (a, b) == (start, end)) => {}
            StatusCode::PRECONDITION_FAILED => bail!("{shown} changed during the update"),
            status => bail!(
                "{shown} answered {status} to a request for bytes {start}-{}",
                end - 1
            ),
        }
        self.body(&mut resp, end - start, &CancellationToken::new())
            .await
    }
}

/// A reqwest error as one line, without the URL (which the caller prints masked) and with
/// its causes.
/// A full answer's body, for [`super::download`].
struct HttpBody<'a> {
    resp: reqwest::Response,
    source: &'a HttpSource,
}

impl super::Body for HttpBody<'_> {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, String> {
        self.resp
            .chunk()
            .await
            .map_err(|e| format!("{}{}", describe(&e), self.source.stall_hint(&e)))
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_redirect() {
        "too many redirects".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
