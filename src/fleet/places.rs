//! Places: the semaphore that keeps at most `max-parallel` hosts of the group between their
//! pre-update hooks and the end of their bake, with canaries first.
//!
//! A host asks for a place for a version by putting `places/{version}/{host}` under its lease,
//! then reads every place of the group, whatever their version, ordered by **create revision**
//! (etcd's order of the puts, never a wall clock): it holds a place while it is among the first
//! `limit`. The limit is the group's, not each version's: a host still baking the previous
//! version keeps its place while a newer one starts. Otherwise it waits by watch for a
//! deletion under `places/` (a release, or a dead host's lease expiring) and reads again. A
//! dead holder frees its place when its lease expires.
//!
//! The rollout settings of a version are those of the first host that asks: `rollouts/{version}`
//! is created once (a transaction "create if absent") and read by every later host. It also
//! holds the canary list: while it has fewer than `canary` names, each asking host appends its
//! own (a compare-and-swap on the key's mod revision, so etcd orders them). A host not on the
//! list first waits by watch until every canary has put `baked/{version}/{host}` ("live and
//! baked healthy"), and only then asks for a place.
//!
//! [`Place::confirm`] checks in one transaction, just before the switch, that the place key
//! still exists under this host's lease: a host paused longer than its lease must not switch.

use std::fmt;
use std::str::FromStr;

use etcdv3client::pb::{self, TxnRequest};
use serde::{Deserialize, Serialize};

use super::client::Client;
use super::error::FleetError;
use super::keys::{Keys, name_under};
use super::kv::{self, Events};
use super::lease::Lease;

/// `max-parallel`: a number of hosts, or a percentage of the group's live hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MaxParallel {
    /// At most this many hosts (≥ 1).
    Count(u32),
    /// At most this percentage (1..=100) of the live hosts, rounded down, at least 1.
    Percent(u32),
}

impl MaxParallel {
    /// The number of places when `live_hosts` hosts are present (at least 1).
    pub fn limit(self, live_hosts: usize) -> usize {
        let limit = match self {
            MaxParallel::Count(n) => n as usize,
            MaxParallel::Percent(p) => live_hosts.saturating_mul(p as usize) / 100,
        };
        limit.max(1)
    }
}

impl FromStr for MaxParallel {
    type Err = FleetError;

    fn from_str(text: &str) -> Result<MaxParallel, FleetError> {
        let text = text.trim();
        let bad = |why: &str| {
            FleetError::Config(format!(
                "max-parallel = {text:?} is not valid: {why}; write a number of hosts (3) or a percentage of the live hosts (25%)"
            ))
        };
        if let Some(p) = text.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad("not a percentage"))?;
            if p == 0 || p > 100 {
                return Err(bad("a percentage must be between 1% and 100%"));
            }
            Ok(MaxParallel::Percent(p))
        } else {
            let n: u32 = text.parse().map_err(|_| bad("not a number"))?;
            if n == 0 {
                return Err(bad("at least 1 host must be able to update"));
            }
            Ok(MaxParallel::Count(n))
        }
    }
}

impl fmt::Display for MaxParallel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxParallel::Count(n) => write!(f, "{n}"),
            MaxParallel::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl TryFrom<String> for MaxParallel {
    type Error = FleetError;
    fn try_from(text: String) -> Result<MaxParallel, FleetError> {
        text.parse()
    }
}

impl From<MaxParallel> for String {
    fn from(value: MaxParallel) -> String {
        value.to_string()
    }
}

/// The rollout settings of one version, as the first host that asked stored them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RolloutSettings {
    /// Hosts updating at once.
    pub max_parallel: MaxParallel,
    /// Hosts that take the version first.
    pub canary: u32,
    /// Seconds a host keeps its place after its post-update hooks, running health hooks.
    pub bake: u64,
    /// `stay` or `revert`.
    pub on_halt: String,
}

/// `rollouts/{version}`: the settings and the canaries so far, in the order etcd took them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The settings.
    #[serde(flatten)]
    pub settings: RolloutSettings,
    /// The canaries' host names, first asker first.
    pub canaries: Vec<String>,
}

/// A place held for a version: confirm it before the switch, release it after the bake.
#[derive(Debug)]
pub struct Place {
    client: Client,
    keys: Keys,
    version: String,
    host: String,
    lease: i64,
    canary: bool,
    rollout: Rollout,
}

impl Place {
    /// The version the place is for.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether this host is one of the version's canaries.
    pub fn is_canary(&self) -> bool {
        self.canary
    }

    /// The settings of the rollout (the first asker's).
    pub fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    /// Check, in one transaction, that the place key still exists under this host's lease.
    /// Call it just before the switch; [`FleetError::PlaceLost`] means: do not switch.
    pub async fn confirm(&self) -> Result<(), FleetError> {
        let key = self.keys.place(&self.version, &self.host);
        let held = pb::Compare::new(
            key.as_bytes().to_vec(),
            pb::compare::CompareResult::Equal,
            pb::compare::TargetUnion::Lease(self.lease),
        );
        let request = TxnRequest {
            compare: vec![held],
            ..Default::default()
        };
        let response = kv::txn(&self.client, &format!("confirm the place {key}"), request).await?;
        if response.succeeded {
            Ok(())
        } else {
            Err(FleetError::PlaceLost {
                version: self.version.clone(),
                host: self.host.clone(),
            })
        }
    }

    /// Record that this canary has the version live and finished its bake healthy: the
    /// other hosts wait for every canary's record. Nothing to do on a non-canary.
    pub async fn record_baked(&self) -> Result<(), FleetError> {
        if !self.canary {
            return Ok(());
        }
        let key = self.keys.baked_host(&self.version, &self.host);
        let value = serde_json::json!({ "host": self.host }).to_string();
        kv::put(&self.client, &key, value.as_bytes(), 0).await
    }

    /// Give the place back (delete its key): the first waiter proceeds.
    pub async fn release(self) -> Result<(), FleetError> {
        kv::delete(&self.client, &self.keys.place(&self.version, &self.host))
            .await
            .map(|_| ())
    }
}

/// Ask for a place for `version` and wait (by watch) until this host holds one. `wanted`
/// are this host's settings, used only if it is the first to ask for the version.
pub async fn acquire(
    client: &Client,
    keys: &Keys,
    lease: &Lease,
    host: &str,
    version: &str,
    wanted: &RolloutSettings,
) -> Result<Place, FleetError> {
    let (rollout, canary) = join_rollout(client, keys, host, version, wanted).await?;
    if !canary && rollout.settings.canary > 0 {
        wait_for_canaries(client, keys, lease, version, &rollout.canaries).await?;
    }
    hold(client, keys, lease, host, version, rollout, canary).await
}

/// A place to go back from `version` (`on-halt = revert`): the same places as the rollout, so
/// a revert never takes more than `max-parallel` hosts down at once, but no canary wait (the
/// canaries of a halted version may never finish).
pub async fn acquire_for_revert(
    client: &Client,
    keys: &Keys,
    lease: &Lease,
    host: &str,
    version: &str,
    wanted: &RolloutSettings,
) -> Result<Place, FleetError> {
    let key = keys.rollout(version);
    let rollout = match kv::get(client, &key).await?.0 {
        Some(kv_now) => kv::json::<Rollout>(&kv_now)?,
        None => Rollout {
            settings: wanted.clone(),
            canaries: Vec::new(),
        },
    };
    hold(client, keys, lease, host, version, rollout, false).await
}

/// Take back a place asked for but not (or no longer) wanted: the wait was cancelled or the
/// version halted. Deleting a key that is not there is fine.
pub async fn withdraw(
    client: &Client,
    keys: &Keys,
    host: &str,
    version: &str,
) -> Result<(), FleetError> {
    kv::delete(client, &keys.place(version, host))
        .await
        .map(|_| ())
}

/// Put this host's place key under its lease and wait until it is among the first `limit`.
async fn hold(
    client: &Client,
    keys: &Keys,
    lease: &Lease,
    host: &str,
    version: &str,
    rollout: Rollout,
    canary: bool,
) -> Result<Place, FleetError> {
    lease.check()?;
    let key = keys.place(version, host);
    kv::put(client, &key, b"", lease.id()).await?;
    let dir = keys.all_places();
    loop {
        lease.check()?;
        let (places, revision) = kv::list(client, &dir).await?;
        let Some(position) = places.iter().position(|kv| kv.key == key.as_bytes()) else {
            // Our key is gone: the lease expired (or someone deleted it by hand).
            return Err(FleetError::PlaceLost {
                version: version.to_owned(),
                host: host.to_owned(),
            });
        };
        let live = kv::count(client, &keys.hosts()).await?;
        let limit = rollout.settings.max_parallel.limit(live);
        if position < limit {
            return Ok(Place {
                client: client.clone(),
                keys: keys.clone(),
                version: version.to_owned(),
                host: host.to_owned(),
                lease: lease.id(),
                canary,
                rollout,
            });
        }
        tracing::debug!(%version, position, limit, "waiting for a place");
        tokio::select! {
            waited = kv::wait_event(client, &dir, true, revision, Events::Deletes) => waited?,
            lost = lease.lost() => return Err(lost),
        }
    }
}

/// Read (or create, for the first asker) `rollouts/{version}`, joining the canary list while
/// it is not full. Returns the rollout and whether this host is a canary.
async fn join_rollout(
    client: &Client,
    keys: &Keys,
    host: &str,
    version: &str,
    wanted: &RolloutSettings,
) -> Result<(Rollout, bool), FleetError> {
    let key = keys.rollout(version);
    loop {
        let (current, _) = kv::get(client, &key).await?;
        let (rollout, guard) = match current {
            None => {
                let live = kv::count(client, &keys.hosts()).await?;
                if wanted.canary as usize > live {
                    return Err(FleetError::Config(format!(
                        "canary = {} is larger than the group {:?}, which has {live} live host(s): lower canary, or start the other hosts first",
                        wanted.canary,
                        keys.fleet()
                    )));
                }
                let rollout = Rollout {
                    settings: wanted.clone(),
                    canaries: Vec::new(),
                };
                (rollout, kv::absent(&key))
            }
            Some(kv_now) => {
                let rollout: Rollout = kv::json(&kv_now)?;
                if rollout.canaries.iter().any(|c| c == host) {
                    return Ok((rollout, true));
                }
                if rollout.canaries.len() >= rollout.settings.canary as usize {
                    return Ok((rollout, false));
                }
                let unchanged = pb::Compare::new(
                    key.as_bytes().to_vec(),
                    pb::compare::CompareResult::Equal,
                    pb::compare::TargetUnion::ModRevision(kv_now.mod_revision),
                );
                (rollout, unchanged)
            }
        };
        let mut rollout = rollout;
        let canary = rollout.canaries.len() < rollout.settings.canary as usize;
        if canary {
            rollout.canaries.push(host.to_owned());
        }
        let value = serde_json::to_vec(&rollout).map_err(|e| FleetError::BadValue {
            key: key.clone(),
            message: e.to_string(),
        })?;
        let request = TxnRequest {
            compare: vec![guard],
            success: vec![kv::put_request(&key, &value, 0).into()],
            ..Default::default()
        };
        let response = kv::txn(client, &format!("write the rollout {key}"), request).await?;
        if response.succeeded {
            return Ok((rollout, canary));
        }
        // Another host wrote first: read its settings and try again.
    }
}

/// Wait until every canary of `version` has recorded `baked/{version}/{host}`.
async fn wait_for_canaries(
    client: &Client,
    keys: &Keys,
    lease: &Lease,
    version: &str,
    canaries: &[String],
) -> Result<(), FleetError> {
    let dir = keys.baked(version);
    loop {
        lease.check()?;
        let (baked, revision) = kv::list(client, &dir).await?;
        let done: Vec<String> = baked
            .iter()
            .filter_map(|kv| name_under(&dir, &kv.key))
            .collect();
        if canaries.iter().all(|c| done.contains(c)) {
            return Ok(());
        }
        tracing::debug!(%version, ?canaries, baked = ?done, "waiting for the canaries");
        tokio::select! {
            waited = kv::wait_event(client, &dir, true, revision, Events::Puts) => waited?,
            lost = lease.lost() => return Err(lost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_parallel_counts_and_percentages() {
        let n: MaxParallel = "3".parse().unwrap();
        assert_eq!(n.limit(0), 3);
        assert_eq!(n.limit(100), 3);
        let p: MaxParallel = "25%".parse().unwrap();
        assert_eq!(p.limit(20), 5);
        assert_eq!(p.limit(10), 2, "rounded down");
        assert_eq!(p.limit(3), 1, "at least 1");
        assert_eq!(p.limit(0), 1, "at least 1 even with no live host");
        assert_eq!("100%".parse::<MaxParallel>().unwrap().limit(7), 7);
        assert_eq!(
            " 50 % ".parse::<MaxParallel>().unwrap(),
            MaxParallel::Percent(50)
        );
    }

    #[test]
    fn max_parallel_rejects_nonsense() {
        for bad in ["0", "0%", "150%", "-1", "x", "", "%", "2.5"] {
            let err = bad.parse::<MaxParallel>().unwrap_err().to_string();
            assert!(err.contains("max-parallel"), "{bad}: {err}");
        }
    }

    #[test]
    fn rollout_json_round_trips() {
        let rollout = Rollout {
            settings: RolloutSettings {
                max_parallel: MaxParallel::Percent(25),
                canary: 2,
                bake: 30,
                on_halt: "stay".into(),
            },
            canaries: vec!["a".into()],
        };
        let json = serde_json::to_string(&rollout).unwrap();
        assert!(json.contains(r#""max-parallel":"25%""#), "{json}");
        assert_eq!(serde_json::from_str::<Rollout>(&json).unwrap(), rollout);
    }
}
