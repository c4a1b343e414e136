//! The few etcd requests the fleet layer makes, each through [`Client::call`] (so each retries
//! across endpoints) and each naming its key in errors: read one key, read a directory in
//! creation order, count a directory, put (optionally under a lease), delete, a transaction,
//! and "wait for the next event under a key" by watch.
//!
//! Waiting is always a watch from the revision of the read it follows (`revision + 1`), so an
//! event between the read and the watch is never missed; a broken or cancelled watch ends
//! the wait too, and the caller reads again (a wake-up too many is harmless, one too few
//! would hang).

use etcdv3client::pb::{
    self, KeyValue, RangeRequest, TxnRequest, TxnResponse, WatchCreateRequest,
    range_request::{SortOrder, SortTarget},
    watch_create_request::FilterType,
};

use super::client::Client;
use super::error::FleetError;
use super::keys::prefix_end;

/// Which events end a [`wait_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Events {
    /// Puts only.
    Puts,
    /// Deletions only.
    Deletes,
    /// Both.
    All,
}

/// One key's value and the store revision of the read.
pub async fn get(client: &Client, key: &str) -> Result<(Option<KeyValue>, i64), FleetError> {
    let request = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let response = client
        .call(&format!("read {key}"), |mut c| {
            let request = request.clone();
            async move { c.kv.range(request).await }
        })
        .await?;
    let revision = response.header.map_or(0, |h| h.revision);
    Ok((response.kvs.into_iter().next(), revision))
}

/// Every key under `dir`, oldest first (by create revision), and the store revision.
pub async fn list(client: &Client, dir: &str) -> Result<(Vec<KeyValue>, i64), FleetError> {
    let request = RangeRequest {
        key: dir.as_bytes().to_vec(),
        range_end: prefix_end(dir.as_bytes()),
        sort_order: SortOrder::Ascend.into(),
        sort_target: SortTarget::Create.into(),
        ..Default::default()
    };
    let response = client
        .call(&format!("list {dir}"), |mut c| {
            let request = request.clone();
            async move { c.kv.range(request).await }
        })
        .await?;
    let revision = response.header.map_or(0, |h| h.revision);
    Ok((response.kvs, revision))
}

/// How many keys are under `dir`.
pub async fn count(client: &Client, dir: &str) -> Result<usize, FleetError> {
    let request = RangeRequest {
        key: dir.as_bytes().to_vec(),
        range_end: prefix_end(dir.as_bytes()),
        count_only: true,
        ..Default::default()
    };
    let response = client
        .call(&format!("count {dir}"), |mut c| {
            let request = request.clone();
            async move { c.kv.range(request).await }
        })
        .await?;
    Ok(usize::try_from(response.count).unwrap_or(0))
}

/// Put `value` at `key`, under `lease` unless it is 0.
pub async fn put(client: &Client, key: &str, value: &[u8], lease: i64) -> Result<(), FleetError> {
    let request = put_request(key, value, lease);
    client
        .call(&format!("write {key}"), |mut c| {
            let request = request.clone();
            async move { c.kv.put(request).await }
        })
        .await
        .map(|_| ())
}

/// Delete `key`; whether it existed.
pub async fn delete(client: &Client, key: &str) -> Result<bool, FleetError> {
    let request = pb::DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let response = client
        .call(&format!("delete {key}"), |mut c| {
            let request = request.clone();
            async move { c.kv.delete_range(request).await }
        })
        .await?;
    Ok(response.deleted > 0)
}

/// Run a transaction; `what` names it and its key.
pub async fn txn(
    client: &Client,
    what: &str,
    request: TxnRequest,
) -> Result<TxnResponse, FleetError> {
    client
        .call(what, |mut c| {
            let request = request.clone();
            async move { c.kv.txn(request).await }
        })
        .await
}

/// A put request, as a transaction operation or on its own.
pub fn put_request(key: &str, value: &[u8], lease: i64) -> pb::PutRequest {
    pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    }
}

/// A comparison "`key` does not exist" for a transaction.
pub fn absent(key: &str) -> pb::Compare {
    pb::Compare::new(
        key.as_bytes().to_vec(),
        pb::compare::CompareResult::Equal,
        pb::compare::TargetUnion::CreateRevision(0),
    )
}

/// Wait for the first event of `kind` on `key` (or, when `prefix`, under it) after store
/// revision `after`. Returns when one comes, or when the watch breaks (the caller reads
/// again); errors only when no watch can be opened at all.
pub async fn wait_event(
    client: &Client,
    key: &str,
    prefix: bool,
    after: i64,
    kind: Events,
) -> Result<(), FleetError> {
    let mut request = WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        start_revision: after + 1,
        ..Default::default()
    };
    if prefix {
        request.range_end = prefix_end(key.as_bytes());
    }
    match kind {
        Events::Puts => request.filters.push(FilterType::Nodelete.into()),
        Events::Deletes => request.filters.push(FilterType::Noput.into()),
        Events::All => {}
    }
    let mut watcher = client
        .call(&format!("watch {key}"), |mut c| {
            let request = request.clone();
            async move {
                let mut create = c.watch.do_watch(request.key.clone());
                create.request = request;
                create.await
            }
        })
        .await?;
    loop {
        match watcher.message().await {
            Ok(Some(response)) if response.canceled || response.compact_revision > 0 => {
                return Ok(());
            }
            Ok(Some(response)) if !response.events.is_empty() => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Ok(()),
        }
    }
}

/// A key's value parsed as JSON, or [`FleetError::BadValue`] naming the key.
pub fn json<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, FleetError> {
    serde_json::from_slice(&kv.value).map_err(|e| FleetError::BadValue {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        message: e.to_string(),
    })
}
