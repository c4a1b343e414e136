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
pub use keys::validate_fleet;
pub use places::{MaxParallel, Place, Rollout, RolloutSettings};

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
    /// Hosts that joined the group and are gone without leaving (their lease expired: a crash,
    /// a lost network, a host paused): `fleet forget HOST` clears one that is gone for good.
    pub gone: Vec<String>,
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

    /// The group's name.
    pub fn name(&self) -> &str {
        self.keys.fleet()
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

    /// Record that this host is a member (under no lease): a host that disappears without
    /// [`Fleet::leave`] is then reported as gone by `fleet status`.
    pub async fn register(&self) -> Result<(), FleetError> {
        kv::put(
            &self.client,
            &self.keys.known(&self.host),
            self.host.as_bytes(),
            0,
        )
        .await
    }

    /// Leave the group cleanly: forget the membership, then revoke the lease.
    pub async fn leave(&self) -> Result<(), FleetError> {
        kv::delete(&self.client, &self.keys.known(&self.host)).await?;
        self.close().await
    }

    /// Forget `host`'s membership (`fleet forget`); whether it was known.
    pub async fn forget(&self, host: &str) -> Result<bool, FleetError> {
        kv::delete(&self.client, &self.keys.known(host)).await
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

    /// Wait (by watch) for a place to go back from the halted `version` (`on-halt =
    /// revert`): the version's own places and limit, no canary wait.
    pub async fn acquire_revert_place(
        &self,
        version: &str,
        wanted: &RolloutSettings,
    ) -> Result<Place, FleetError> {
        places::acquire_for_revert(
            &self.client,
            &self.keys,
            &self.lease,
            &self.host,
            version,
            wanted,
        )
        .await
    }

    /// Take back this host's place request for `version` (a cancelled or halted wait).
    pub async fn withdraw_place(&self, version: &str) -> Result<(), FleetError> {
        places::withdraw(&self.client, &self.keys, &self.host, version).await
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
            prefix: false,
            seen: revision,
        })
    }

    /// Every halted version now, and a watch that returns at each later halt or resume.
    pub async fn watch_halts(&self) -> Result<(Vec<Halt>, NotifyWatch), FleetError> {
        let dir = self.keys.halted_all();
        let (kvs, revision) = kv::list(&self.client, &dir).await?;
        let mut halts = Vec::with_capacity(kvs.len());
        for kv_now in &kvs {
            if name_under(&dir, &kv_now.key).is_some() {
                halts.push(kv::json(kv_now)?);
            }
        }
        let watch = NotifyWatch {
            client: self.client.clone(),
            key: dir,
            prefix: true,
            seen: revision,
        };
        Ok((halts, watch))
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
        let known_dir = self.keys.known_all();
        let (known, _) = kv::list(&self.client, &known_dir).await?;
        let gone = known
            .iter()
            .filter_map(|k| name_under(&known_dir, &k.key))
            .filter(|name| !hosts.iter().any(|h: &HostStatus| &h.host == name))
            .collect();
        Ok(FleetStatus {
            fleet: self.keys.fleet().to_owned(),
            hosts,
            updating,
            halted: halt::list(&self.client, &self.keys).await?,
            gone,
        })
    }

    /// The versions hosts hold or ask places for now (rolling out), each once.
    pub async fn rolling_out(&self) -> Result<Vec<String>, FleetError> {
        let dir = self.keys.all_places();
        let (kvs, _) = kv::list(&self.client, &dir).await?;
        let mut versions: Vec<String> = Vec::new();
        for v in kvs
            .iter()
            .filter_map(|k| keys::version_of_place(&dir, &k.key))
        {
            if !versions.contains(&v) {
                versions.push(v);
            }
        }
        Ok(versions)
    }

    /// The settings and canaries of the rollout of `version`, if a host asked for it.
    pub async fn rollout(&self, version: &str) -> Result<Option<Rollout>, FleetError> {
        let (kv_now, _) = kv::get(&self.client, &self.keys.rollout(version)).await?;
        kv_now.as_ref().map(kv::json).transpose()
    }

    /// Revoke the lease: this host's presence (and any place) goes at once.
    pub async fn close(&self) -> Result<(), FleetError> {
        self.lease.revoke().await
    }
}

/// Changes of one key (`notify`) or one directory (`halted/`), from the revision of
/// [`Fleet::watch_notify`] or [`Fleet::watch_halts`] on.
#[derive(Debug)]
pub struct NotifyWatch {
    client: Client,
    key: String,
    /// Whether `key` is a directory (every key under it counts).
    prefix: bool,
    /// The store revision up to which changes were seen.
    seen: i64,
}

impl NotifyWatch {
    /// Wait for the next change (by watch; none is missed between two calls). For the
    /// `notify` key only puts count; for a directory, puts and deletes (a resume).
    pub async fn next(&mut self) -> Result<(), FleetError> {
        let kind = if self.prefix {
            Events::All
        } else {
            Events::Puts
        };
        loop {
            let (newest, revision) = if self.prefix {
                let (kvs, revision) = kv::list(&self.client, &self.key).await?;
                (kvs.iter().map(|k| k.mod_revision).max(), revision)
            } else {
                let (kv_now, revision) = kv::get(&self.client, &self.key).await?;
                (kv_now.map(|k| k.mod_revision), revision)
            };
            // A directory's deletion leaves no key to compare: any revision past `seen` in
            // which the listing changed is a change; the watch below reports deletes.
            if newest.is_some_and(|m| m > self.seen) {
                self.seen = revision;
                return Ok(());
            }
            let woke_at = self.seen.max(revision);
            kv::wait_event(&self.client, &self.key, self.prefix, woke_at, kind).await?;
            if self.prefix {
                // Something under the directory changed (a delete shows in no mod revision).
                let (_, now) = kv::list(&self.client, &self.key).await?;
                if now > woke_at {
                    self.seen = now;
                    return Ok(());
                }
            }
        }
    }
}
