//! Fleet rollouts on etcd (SPEC § Fleet rollouts; issue 12): the layer that talks to etcd.
//!
//! [`Fleet::connect`] grants this host's lease and keeps it alive; everything else is one call
//! the check cycle makes at one step of a rollout: publish the host's status, wait for a place
//! (canaries first), confirm it just before the switch, record a canary's bake, release it,
//! halt a version or wait for its halt, notify the group or wait for a notification, and read
//! the group's status for `fleet status`. Decisions use etcd's revisions and leases, never two
//! hosts' clocks. Nothing here switches releases or runs hooks: the cycle does, and calls this.
//!
//! Not wired in yet: the cycle, the configuration keys and the `fleet` commands come with the
//! rest of issue 12 (docs/FLEET.md says what is left).

mod client;
mod error;
mod halt;
mod keys;
mod kv;
mod lease;
mod places;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use client::ClientOptions;
pub use error::FleetError;
pub use halt::Halt;
pub use places::{Place, RolloutSettings};

use client::Client;
use keys::{Keys, name_under};
use kv::Events;
use lease::Lease;

/// Where the group lives and who this host is.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// How to reach etcd.
    pub client: ClientOptions,
    /// `etcd-prefix` (default `/repo-deploy`).
    pub prefix: String,
    /// `fleet`: the group's name.
    pub fleet: String,
    /// `host`: this host's name in the group.
    pub host: String,
    /// `fleet-lease`: seconds after which a silent host's presence and place expire.
    pub lease_secs: u64,
}

/// What a host publishes under `hosts/{host}` (one entry of `fleet status --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's name.
    pub host: String,
    /// Its live version, if any.
    pub version: Option<String>,
    /// `idle`, `waiting`, `updating`, `baking` or `halted`.
    pub phase: String,
    /// When it last checked the remote (RFC 3339, its own clock: for people only).
    pub last_check: Option<String>,
    /// The result of that check.
    pub last_result: Option<String>,
}

/// The JSON of `fleet status --json` (SPEC § Fleet rollouts, rule 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The group's name.
    pub fleet: String,
    /// Every live host (its lease alive), oldest presence first.
    pub hosts: Vec<HostStatus>,
    /// The hosts whose phase is `updating` or `baking`.
    pub updating: Vec<String>,
    /// Every halted version.
    pub halted: Vec<Halt>,
}

/// This host's connection to its group.
#[derive(Debug)]
pub struct Fleet {
    client: Client,
    keys: Keys,
    host: String,
    lease: Lease,
}

impl Fleet {
    /// Check the options, reach etcd, grant this host's lease and keep it alive.
    pub async fn connect(options: &FleetOptions) -> Result<Fleet, FleetError> {
        let keys = Keys::new(&options.prefix, &options.fleet)?;
        if options.host.is_empty() {
            return Err(FleetError::Config(
                "host is empty: set `host` to this host's name in the group".into(),
            ));
        }
        let client = Client::new(&options.client)?;
        let lease = Lease::grant(&client, &options.host, options.lease_secs).await?;
        Ok(Fleet {
            client,
            keys,
            host: options.host.clone(),
            lease,
        })
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `Ok` while the lease is alive; [`FleetError::LeaseLost`] once it is lost (connect
    /// again: the presence and any place are gone).
    pub fn check_lease(&self) -> Result<(), FleetError> {
        self.lease.check()
    }

    /// Wait until the lease is lost.
    pub async fn lease_lost(&self) -> FleetError {
        self.lease.lost().await
    }

    /// Publish this host's presence and status under its lease.
    pub async fn publish_status(&self, status: &HostStatus) -> Result<(), FleetError> {
        self.lease.check()?;
        let key = self.keys.host(&self.host);
        let value = serde_json::to_vec(status).map_err(|e| FleetError::BadValue {
            key: key.clone(),
            message: e.to_string(),
        })?;
        kv::put(&self.client, &key, &value, self.lease.id()).await
    }

    /// Wait (by watch) for a place for `version`; `wanted` are this host's rollout settings,
    /// which count only if it is the first host to ask for the version.
    pub async fn acquire_place(
        &self,
        version: &str,
        wanted: &RolloutSettings,
    ) -> Result<Place, FleetError> {
        places::acquire(
            &self.client,
            &self.keys,
            &self.lease,
            &self.host,
            version,
            wanted,
        )
        .await
    }

    /// Halt `version` for the whole group (unless halted already); whether this call did.
    pub async fn halt(&self, version: &str, reason: &str) -> Result<bool, FleetError> {
        halt::halt(&self.client, &self.keys, version, &self.host, reason).await
    }

    /// Lift the halt of `version`; whether it was halted.
    pub async fn resume(&self, version: &str) -> Result<bool, FleetError> {
        halt::resume(&self.client, &self.keys, version).await
    }

    /// The halt of `version`, if any.
    pub async fn is_halted(&self, version: &str) -> Result<Option<Halt>, FleetError> {
        halt::halted(&self.client, &self.keys, version).await
    }

    /// Wait (by watch) until `version` is halted.
    pub async fn wait_halted(&self, version: &str) -> Result<Halt, FleetError> {
        halt::wait_halted(&self.client, &self.keys, version).await
    }

    /// Wake every daemon of the group (`fleet notify`).
    pub async fn notify(&self) -> Result<(), FleetError> {
        kv::put(&self.client, &self.keys.notify(), self.host.as_bytes(), 0).await
    }

    /// Start listening for notifications: [`NotifyWatch::next`] returns at each `notify`
    /// made after this call.
    pub async fn watch_notify(&self) -> Result<NotifyWatch, FleetError> {
        let (_, revision) = kv::get(&self.client, &self.keys.notify()).await?;
        Ok(NotifyWatch {
            client: self.client.clone(),
            key: self.keys.notify(),
            seen: revision,
        })
    }

    /// The group's status, as `fleet status --json` prints it.
    pub async fn status(&self) -> Result<FleetStatus, FleetError> {
        let dir = self.keys.hosts();
        let (kvs, _) = kv::list(&self.client, &dir).await?;
        let mut hosts = Vec::with_capacity(kvs.len());
        for kv_now in &kvs {
            if name_under(&dir, &kv_now.key).is_some() {
                hosts.push(kv::json::<HostStatus>(kv_now)?);
            }
        }
        let updating = hosts
            .iter()
            .filter(|h| h.phase == "updating" || h.phase == "baking")
            .map(|h| h.host.clone())
            .collect();
        Ok(FleetStatus {
            fleet: self.keys.fleet().to_owned(),
            hosts,
            updating,
            halted: halt::list(&self.client, &self.keys).await?,
        })
    }

    /// Revoke the lease: this host's presence (and any place) goes at once.
    pub async fn close(self) -> Result<(), FleetError> {
        self.lease.revoke().await
    }
}

/// Notifications of the group, from the revision of [`Fleet::watch_notify`] on.
#[derive(Debug)]
pub struct NotifyWatch {
    client: Client,
    key: String,
    /// The store revision up to which notifications were seen.
    seen: i64,
}

impl NotifyWatch {
    /// Wait for the next notification (by watch; none is missed between two calls).
    pub async fn next(&mut self) -> Result<(), FleetError> {
        loop {
            let (kv_now, revision) = kv::get(&self.client, &self.key).await?;
            if let Some(kv_now) = kv_now
                && kv_now.mod_revision > self.seen
            {
                self.seen = revision;
                return Ok(());
            }
            kv::wait_event(
                &self.client,
                &self.key,
                false,
                self.seen.max(revision),
                Events::Puts,
            )
            .await?;
        }
    }
}
