//! The host's etcd lease: granted once, kept alive by a task, revoked on a clean stop.
//!
//! Everything that must vanish with a dead host (its presence, its place) is put under this
//! lease, so a host killed while holding a place frees it after `fleet-lease` seconds: the
//! fleet is never blocked for ever by a dead holder (kured #822).
//!
//! The task renews every third of the TTL. A renewal that etcd answers with TTL 0 means the
//! lease is gone (expired while we were paused or cut off, or revoked); renewals that fail
//! for longer than the TTL mean the same, as far as this host can know. Either way the loss is
//! reported once and for good (a lost lease is never renewed: its keys are gone; the caller
//! connects again). Time is measured with the monotonic clock, never compared across hosts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::Client;
use super::error::FleetError;

/// A granted lease and its keep-alive task. Dropping it stops the task without revoking
/// (the lease then expires by itself, as for a crashed host).
#[derive(Debug)]
pub struct Lease {
    id: i64,
    ttl: Duration,
    host: String,
    client: Client,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Lease {
    /// Grant a lease of `ttl_secs` seconds and start keeping it alive.
    pub async fn grant(client: &Client, host: &str, ttl_secs: u64) -> Result<Lease, FleetError> {
        if ttl_secs < 2 {
            return Err(FleetError::Config(format!(
                "fleet-lease = {ttl_secs} is too short: use 2 seconds or more (default 10)"
            )));
        }
        let ttl = i64::try_from(ttl_secs)
            .map_err(|_| FleetError::Config(format!("fleet-lease = {ttl_secs} is too large")))?;
        let response = client
            .call(
                &format!("grant a lease of {ttl_secs} s"),
                |mut c| async move {
                    // `grant` of the crate is not `Send`; the request itself is.
                    let request = etcdv3client::pb::LeaseGrantRequest { ttl, id: 0 };
                    c.lease.lease_grant(request).await
                },
            )
            .await?;
        let ttl = Duration::from_secs(ttl_secs);
        let (tx, lost) = watch::channel(false);
        let task = tokio::spawn(keep_alive(client.clone(), response.id, ttl, Arc::new(tx)));
        Ok(Lease {
            id: response.id,
            ttl,
            host: host.to_owned(),
            client: client.clone(),
            lost,
            task,
        })
    }

    /// The lease's id, for puts under it.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// `Ok` while the lease is alive, [`FleetError::LeaseLost`] once it is lost.
    pub fn check(&self) -> Result<(), FleetError> {
        if self.is_lost() {
            Err(self.lost_error())
        } else {
            Ok(())
        }
    }

    /// Wait until the lease is lost (for a `select!` beside a long wait).
    pub async fn lost(&self) -> FleetError {
        let mut lost = self.lost.clone();
        // An error means the task ended, which it does only after reporting a loss (or when
        // aborted by `revoke`/drop, when nobody waits any more).
        let _ = lost.wait_for(|lost| *lost).await;
        self.lost_error()
    }

    /// The error that reports this lease's loss.
    pub fn lost_error(&self) -> FleetError {
        FleetError::LeaseLost {
            host: self.host.clone(),
            ttl: self.ttl.as_secs(),
        }
    }

    /// Stop keeping the lease alive and revoke it: every key under it goes at once.
    pub async fn revoke(&self) -> Result<(), FleetError> {
        self.task.abort();
        let id = self.id;
        self.client
            .call(&format!("revoke lease {id:x}"), |mut c| async move {
                c.lease.revoke(id).await
            })
            .await
    }

    /// Stop the keep-alive task without revoking: the lease expires after its TTL, as a
    /// SIGKILLed host's does. For tests of that case.
    #[cfg(test)]
    pub fn abandon(&self) {
        self.task.abort();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renew `id` every `ttl / 3` until it is lost; then set `lost` and end.
async fn keep_alive(client: Client, id: i64, ttl: Duration, lost: Arc<watch::Sender<bool>>) {
    let period = ttl / 3;
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(period).await;
        // Give up on this renewal early enough to try again before the lease runs out.
        let budget = period.max(Duration::from_millis(500));
        let what = format!("renew lease {id:x}");
        let result = client
            .call_within(&what, budget, |mut c| async move {
                let request = etcdv3client::pb::LeaseKeepAliveRequest { id };
                let mut responses = c
                    .lease
                    .lease_keep_alive(futures_util::stream::iter([request]))
                    .await?;
                responses.message().await.map_err(etcdv3client::Error::from)
            })
            .await;
        match result {
            Ok(Some(response)) if response.ttl > 0 => renewed = Instant::now(),
            Ok(_) => {
                tracing::warn!(lease = %format!("{id:x}"), "etcd lease expired or revoked");
                break;
            }
            Err(e) => {
                tracing::warn!(lease = %format!("{id:x}"), error = %e, "etcd lease renewal failed");
                if renewed.elapsed() >= ttl {
                    break;
                }
            }
        }
    }
    let _ = lost.send(true);
}
