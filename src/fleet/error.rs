//! The errors of the fleet layer, typed so that the cycle can decide: `Unreachable` and
//! `LeaseLost` fail the check and leave the live release serving (SPEC § Fleet rollouts, rule
//! 5); `Config` is the operator's to fix (exit 2); `PlaceLost` forbids the switch.
//!
//! Every variant names what was wrong: the endpoint, the key, the version.

use thiserror::Error;

/// What went wrong talking to etcd.
#[derive(Debug, Error)]
pub enum FleetError {
    /// A setting is wrong (fleet name, prefix, endpoint URL, TLS file, `max-parallel`).
    #[error("{0}")]
    Config(String),
    /// No endpoint answered within the retry budget.
    #[error(
        "etcd unreachable: no answer from {endpoints} within {secs:.1} s while trying to {what} \
         (last error: {last}); check that etcd runs and that the `etcd` endpoints are right"
    )]
    Unreachable {
        /// What the request was for.
        what: String,
        /// Every endpoint tried, comma-separated.
        endpoints: String,
        /// How long the retries went on.
        secs: f64,
        /// The last error seen.
        last: String,
    },
    /// The last attempt to reach etcd failed a moment ago (not tried again yet).
    #[error("{0} (a moment ago; tried again at the next step)")]
    Recent(String),
    /// etcd refused the user name or password.
    #[error(
        "etcd at {endpoint} refused the credentials of user {user:?}: {message}; check etcd-user and etcd-password"
    )]
    Auth {
        /// The endpoint that refused.
        endpoint: String,
        /// The user name (the password is never shown).
        user: String,
        /// etcd's own message.
        message: String,
    },
    /// etcd answered with an error that retrying elsewhere cannot fix.
    #[error("etcd at {endpoint} failed to {what}: {message}")]
    Request {
        /// The endpoint that answered.
        endpoint: String,
        /// What the request was for (names the key).
        what: String,
        /// etcd's or the transport's message.
        message: String,
    },
    /// A value in etcd is not what this agent writes.
    #[error(
        "etcd key {key} holds a value this agent cannot read: {message}; delete the key or fix it by hand"
    )]
    BadValue {
        /// The key.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// The host's lease expired or was revoked: its presence and place are gone.
    #[error(
        "the etcd lease of host {host} is lost (not renewed within {ttl} s): its presence and place expired"
    )]
    LeaseLost {
        /// This host.
        host: String,
        /// The lease's TTL in seconds.
        ttl: u64,
    },
    /// `confirm` found that the place is no longer held under this host's lease.
    #[error(
        "the place of host {host} for version {version} is no longer held (lease expired or place deleted): not switching"
    )]
    PlaceLost {
        /// The version.
        version: String,
        /// This host.
        host: String,
    },
}

impl FleetError {
    /// Whether the operator must fix the configuration (a setting, the credentials): exit 2.
    pub fn is_configuration(&self) -> bool {
        matches!(self, FleetError::Config(_) | FleetError::Auth { .. })
    }
}
