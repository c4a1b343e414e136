//! An etcd client over several endpoints that keeps working while one member is dead.
//!
//! Each endpoint gets its own gRPC channel (lazy: a dead member costs nothing until it is
//! asked), so the client, not the transport, decides where a request goes. A request goes to
//! the endpoint that answered last; when it fails as "unreachable" (connection refused or
//! reset, a timeout, etcd's "no leader", "not leader", "leader changed", "request timed
//! out", "unhealthy cluster") it moves to the next endpoint at once, and after a full round
//! of failures waits (backoff 100 ms doubling to 1 s) and tries again, until the retry budget
//! is spent: then [`FleetError::Unreachable`]. Any other error (a wrong password, a missing
//! lease) is the request's own and is returned at once. So one dead member of three never
//! makes the client keep failing, and a dead cluster gives a clear error in bounded time.
//!
//! The user/password token is fetched per endpoint on first use; the crate refreshes it when
//! etcd says it is stale.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcdv3client::grpc::{CredentialInterceptor, TonicClient};
use etcdv3client::{ErrKind, EtcdClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::error::FleetError;
use crate::secret::Secret;

/// TLS to etcd: a CA for the server's certificate, and a client certificate when etcd asks
/// for one (`--client-cert-auth`). Used for `https://` endpoints only.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM CA bundle (`etcd-ca`); without it, https endpoints are refused (no system roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate (`etcd-cert`), with `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (`etcd-key`).
    pub key: Option<PathBuf>,
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `http://host:port` or `https://host:port`, tried in this order.
    pub endpoints: Vec<String>,
    /// `etcd-user`, when etcd has authentication on.
    pub user: Option<String>,
    /// `etcd-password`.
    pub password: Option<Secret>,
    /// TLS files.
    pub tls: TlsOptions,
    /// Time allowed to one request on one endpoint (connect included).
    pub request_timeout: Duration,
    /// Time allowed to one request across all endpoints and retries.
    pub retry_budget: Duration,
}

impl ClientOptions {
    /// Options with the default timeouts (2 s a try, 10 s in all) and no TLS or user.
    pub fn new(endpoints: Vec<String>) -> ClientOptions {
        ClientOptions {
            endpoints,
            user: None,
            password: None,
            tls: TlsOptions::default(),
            request_timeout: Duration::from_secs(2),
            retry_budget: Duration::from_secs(10),
        }
    }
}

/// A client of the etcd cluster; cheap to clone (one set of channels).
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint to try first: the last one that answered.
    current: AtomicUsize,
    credential: Option<(String, Secret)>,
    request_timeout: Duration,
    retry_budget: Duration,
}

#[derive(Debug)]
struct Endpoint {
    url: String,
    channel: Channel,
    /// The authenticated client, once a token was fetched (or at once without a user).
    client: tokio::sync::Mutex<Option<EtcdClient>>,
}

/// How a failed request is handled.
enum Failure {
    /// Try the next endpoint.
    Unreachable(String),
    /// Return this error.
    Fatal(FleetError),
}

impl Client {
    /// Check the options and build one lazy channel per endpoint. Nothing is sent yet, so
    /// this succeeds with every member down; the first request tells.
    pub fn new(options: &ClientOptions) -> Result<Client, FleetError> {
        if options.endpoints.is_empty() {
            return Err(FleetError::Config(
                "no etcd endpoint given: set `etcd` to http://HOST:2379 (comma-separated for several)".into(),
            ));
        }
        let tls = tls_config(&options.tls)?;
        let mut endpoints = Vec::with_capacity(options.endpoints.len());
        for url in &options.endpoints {
            let url = url.trim().to_owned();
            let bad = |why: String| {
                FleetError::Config(format!(
                    "etcd endpoint {url:?} is not valid: {why}; write it as http://HOST:PORT or https://HOST:PORT"
                ))
            };
            let mut builder = Channel::from_shared(url.clone())
                .map_err(|e| bad(e.to_string()))?
                .connect_timeout(options.request_timeout)
                .tcp_nodelay(true);
            if url.starts_with("https://") {
                let tls = tls.clone().ok_or_else(|| {
                    bad("an https endpoint needs etcd-ca (the CA of etcd's certificate)".into())
                })?;
                builder = builder.tls_config(tls).map_err(|e| bad(e.to_string()))?;
            } else if !url.starts_with("http://") {
                return Err(bad("the scheme must be http or https".into()));
            }
            endpoints.push(Endpoint {
                channel: builder.connect_lazy(),
                url,
                client: tokio::sync::Mutex::new(None),
            });
        }
        let credential = match (&options.user, &options.password) {
            (Some(user), password) => Some((
                user.clone(),
                password.clone().unwrap_or_else(|| Secret::new("")),
            )),
            (None, Some(_)) => {
                return Err(FleetError::Config(
                    "etcd-password is set without etcd-user: set both or neither".into(),
                ));
            }
            (None, None) => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(0),
                credential,
                request_timeout: options.request_timeout,
                retry_budget: options.retry_budget,
            }),
        })
    }

    /// The endpoint the next request goes to first (the last that answered).
    #[cfg(test)]
    pub fn current_endpoint(&self) -> &str {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        &self.inner.endpoints[i].url
    }

    /// Every endpoint, comma-separated (for messages).
    pub fn endpoints(&self) -> String {
        let urls: Vec<&str> = self
            .inner
            .endpoints
            .iter()
            .map(|e| e.url.as_str())
            .collect();
        urls.join(",")
    }

    /// Run `request` with the retry budget of the options. `what` names the request and its
    /// key for errors ("read places/v2/").
    pub async fn call<T, F, Fut>(&self, what: &str, request: F) -> Result<T, FleetError>
    where
        F: FnMut(EtcdClient) -> Fut,
        Fut: Future<Output = Result<T, etcdv3client::Error>>,
    {
        self.call_within(what, self.inner.retry_budget, request)
            .await
    }

    /// [`Client::call`] with its own retry budget (the lease keep-alive must give up before
    /// the lease expires).
    pub async fn call_within<T, F, Fut>(
        &self,
        what: &str,
        budget: Duration,
        mut request: F,
    ) -> Result<T, FleetError>
    where
        F: FnMut(EtcdClient) -> Fut,
        Fut: Future<Output = Result<T, etcdv3client::Error>>,
    {
        let start = Instant::now();
        let n = self.inner.endpoints.len();
        let mut backoff = Duration::from_millis(100);
        let mut last = String::from("none");
        loop {
            let first = self.inner.current.load(Ordering::Relaxed);
            for step in 0..n {
                let i = (first + step) % n;
                let endpoint = &self.inner.endpoints[i];
                let left = budget.saturating_sub(start.elapsed());
                let timeout = self
                    .inner
                    .request_timeout
                    .min(left)
                    .max(Duration::from_millis(50));
                let attempt = async {
                    let client = self.client_of(endpoint).await?;
                    request(client)
                        .await
                        .map_err(|e| classify(&endpoint.url, what, &e))
                };
                match tokio::time::timeout(timeout, attempt).await {
                    Ok(Ok(value)) => {
                        self.inner.current.store(i, Ordering::Relaxed);
                        return Ok(value);
                    }
                    Ok(Err(Failure::Fatal(e))) => return Err(e),
                    Ok(Err(Failure::Unreachable(message))) => {
                        last = format!("{}: {message}", endpoint.url);
                    }
                    Err(_) => {
                        last = format!("{}: no answer within {timeout:?}", endpoint.url);
                    }
                }
                tracing::debug!(endpoint = %endpoint.url, %what, error = %last, "etcd endpoint unreachable, trying the next");
                if start.elapsed() >= budget {
                    break;
                }
            }
            if start.elapsed() + backoff >= budget {
                return Err(FleetError::Unreachable {
                    what: what.to_owned(),
                    endpoints: self.endpoints(),
                    secs: start.elapsed().as_secs_f64(),
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// The endpoint's client, authenticating first when a user is set.
    async fn client_of(&self, endpoint: &Endpoint) -> Result<EtcdClient, Failure> {
        let mut slot = endpoint.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let tonic_client = TonicClient::new(endpoint.channel.clone());
        let client = match &self.inner.credential {
            None => EtcdClient::with_service(CredentialInterceptor::new(None, None, tonic_client)),
            Some((user, password)) => {
                let bare = CredentialInterceptor::new(None, None, tonic_client.clone());
                let mut auth = EtcdClient::with_service(bare).auth;
                let request = etcdv3client::pb::AuthenticateRequest {
                    name: user.clone(),
                    password: password.expose().to_owned(),
                };
                let token = match auth.authenticate(request).await {
                    Ok(response) => Some(response.token),
                    Err(e) if e.is_auth_not_enabled() => None,
                    Err(e) => {
                        return Err(match classify(&endpoint.url, "authenticate", &e) {
                            Failure::Unreachable(m) => Failure::Unreachable(m),
                            Failure::Fatal(_) => Failure::Fatal(FleetError::Auth {
                                endpoint: endpoint.url.clone(),
                                user: user.clone(),
                                message: e.to_string(),
                            }),
                        });
                    }
                };
                let token = match token {
                    Some(token) => Some(token.try_into().map_err(|_| {
                        Failure::Fatal(FleetError::Request {
                            endpoint: endpoint.url.clone(),
                            what: "authenticate".into(),
                            message: "etcd returned a token that is not ASCII".into(),
                        })
                    })?),
                    None => None,
                };
                let credential = (user.clone(), password.expose().to_owned());
                EtcdClient::with_service(CredentialInterceptor::new(
                    credential,
                    token,
                    tonic_client,
                ))
            }
        };
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// The `message: "…"` parts of a transport error's debug text, joined ("tcp connect error:
/// Connection refused"), or the text itself when it has none. The crate keeps tonic's errors
/// only as their `Debug` text, which is long and nested.
fn brief(text: &str) -> String {
    let parts: Vec<&str> = text
        .split("message: \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|m| !m.is_empty())
        .collect();
    if parts.is_empty() {
        text.to_owned()
    } else {
        parts.join(": ")
    }
}

/// Unreachable (try elsewhere) or the request's own error.
fn classify(endpoint: &str, what: &str, e: &etcdv3client::Error) -> Failure {
    use ErrKind::*;
    let message = e.to_string();
    let unreachable = match e.kind() {
        NoLeader
        | NotLeader
        | LeaderChanged
        | Stopped
        | Timeout
        | TimeoutDueToLeaderFail
        | TimeoutDueToConnectionLost
        | TimeoutWaitAppliedIndex
        | Unhealthy
        | TooManyRequests
        | ConnectFailed
        | Endpoint
        | WatchStartFailed
        | WatchRequestFailed
        | LeaseRequestFailed
        | Corrupt => true,
        // The crate keeps only the message of other gRPC failures: transport errors
        // ("Service was not ready", "transport error") and these codes mean another member
        // may answer.
        Grpc => [
            "Unavailable",
            "DeadlineExceeded",
            "Cancelled",
            "Unknown",
            "Internal",
            "Aborted",
            "not ready",
            "transport error",
        ]
        .iter()
        .any(|needle| message.contains(needle)),
        _ => false,
    };
    if unreachable {
        Failure::Unreachable(brief(&message))
    } else if matches!(
        e.kind(),
        AuthFailed | UserEmpty | PermissionDenied | InvalidAuthToken
    ) {
        Failure::Fatal(FleetError::Request {
            endpoint: endpoint.to_owned(),
            what: what.to_owned(),
            message: format!("{message}; check etcd-user, etcd-password and the user's role"),
        })
    } else {
        Failure::Fatal(FleetError::Request {
            endpoint: endpoint.to_owned(),
            what: what.to_owned(),
            message,
        })
    }
}

/// The TLS configuration of https endpoints, or `None` without `etcd-ca`.
fn tls_config(tls: &TlsOptions) -> Result<Option<ClientTlsConfig>, FleetError> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path)
            .map_err(|e| FleetError::Config(format!("cannot read {what} {}: {e}", path.display())))
    };
    let Some(ca) = &tls.ca else {
        if tls.cert.is_some() || tls.key.is_some() {
            return Err(FleetError::Config(
                "etcd-cert and etcd-key need etcd-ca (the CA of etcd's certificate)".into(),
            ));
        }
        return Ok(None);
    };
    // rustls needs one process-wide crypto provider; the tree enables two (ring here,
    // aws-lc-rs through the AWS SDK), so choose one before tonic builds its config. An error
    // means one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "etcd-ca")?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read(cert, "etcd-cert")?,
                read(key, "etcd-key")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(FleetError::Config(
                "set both etcd-cert and etcd-key, or neither".into(),
            ));
        }
    }
    Ok(Some(config))
}

#[cfg(test)]
mod brief_tests {
    #[test]
    fn transport_errors_are_shortened() {
        let text = r#"[Grpc] Status { code: Unavailable, message: "tcp connect error", source: Some(tonic::transport::Error(Transport, ConnectError(ConnectError("tcp connect error", 127.0.0.1:1, Os { code: 111, kind: ConnectionRefused, message: "Connection refused" })))) }"#;
        assert_eq!(super::brief(text), "tcp connect error: Connection refused");
        assert_eq!(super::brief("no leader"), "no leader");
    }
}
