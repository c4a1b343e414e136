//! The fleet-wide halt of a version: `halted/{version}` names the host, the reason and the
//! time. It is created only if absent (a transaction), so the first failure's story is kept;
//! it is not under any lease, so a halt outlives the host that set it and lasts until an
//! operator resumes (deletes) it. A live host that failed can therefore never release the halt
//! by merely staying alive. Only the named version is halted: a newer one rolls out freely.

use serde::{Deserialize, Serialize};

use super::client::Client;
use super::error::FleetError;
use super::keys::{Keys, name_under};
use super::kv::{self, Events};

/// A halted version, as `fleet status --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    /// The version.
    pub version: String,
    /// The host that halted it (or the operator's host for `fleet halt`).
    pub host: String,
    /// Why: the failed hook, or the operator's `--reason`.
    pub reason: String,
    /// When, RFC 3339 in UTC, from the halting host's clock: for people only, no decision
    /// compares it.
    pub time: String,
}

/// Halt `version` unless it is halted already; whether this call halted it.
pub async fn halt(
    client: &Client,
    keys: &Keys,
    version: &str,
    host: &str,
    reason: &str,
) -> Result<bool, FleetError> {
    let key = keys.halted(version);
    let halt = Halt {
        version: version.to_owned(),
        host: host.to_owned(),
        reason: reason.to_owned(),
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let value = serde_json::to_vec(&halt).map_err(|e| FleetError::BadValue {
        key: key.clone(),
        message: e.to_string(),
    })?;
    let request = etcdv3client::pb::TxnRequest {
        compare: vec![kv::absent(&key)],
        success: vec![kv::put_request(&key, &value, 0).into()],
        ..Default::default()
    };
    let response = kv::txn(client, &format!("halt version {version} ({key})"), request).await?;
    Ok(response.succeeded)
}

/// Resume `version`: delete its halt; whether it was halted.
pub async fn resume(client: &Client, keys: &Keys, version: &str) -> Result<bool, FleetError> {
    kv::delete(client, &keys.halted(version)).await
}

/// The halt of `version`, if any.
pub async fn halted(
    client: &Client,
    keys: &Keys,
    version: &str,
) -> Result<Option<Halt>, FleetError> {
    let (kv_now, _) = kv::get(client, &keys.halted(version)).await?;
    kv_now.as_ref().map(kv::json).transpose()
}

/// Every halted version, oldest halt first.
pub async fn list(client: &Client, keys: &Keys) -> Result<Vec<Halt>, FleetError> {
    let dir = keys.halted_all();
    let (kvs, _) = kv::list(client, &dir).await?;
    let mut halts = Vec::with_capacity(kvs.len());
    for kv_now in &kvs {
        if name_under(&dir, &kv_now.key).is_some() {
            halts.push(kv::json(kv_now)?);
        }
    }
    Ok(halts)
}

/// Wait (by watch) until `version` is halted; return the halt. Returns at once if it is.
pub async fn wait_halted(client: &Client, keys: &Keys, version: &str) -> Result<Halt, FleetError> {
    let key = keys.halted(version);
    loop {
        let (kv_now, revision) = kv::get(client, &key).await?;
        if let Some(kv_now) = kv_now {
            return kv::json(&kv_now);
        }
        kv::wait_event(client, &key, false, revision, Events::Puts).await?;
    }
}
