//! The Kubernetes edge of the operator: watches that feed the index, leader election, and the leader's writes (status, Secrets, Events).
//!
//! Every replica runs the watches; only the Lease holder runs the writes' side effects.
//!
//! Permissions the operator needs (what the chart's RBAC grants):
//! - `fleetward.io` tenants, things, channels, connections, users, groups, policies: get, list, watch
//!   (cluster-wide); their `/status`: patch.
//! - Secrets: get, list, watch, create, in the namespaces Tenants claim (a ClusterRole, or a
//!   Role bound in each tenant namespace). The operator never updates or deletes a Secret.
//! - `events.k8s.io` events: create, patch, in every tenant namespace and in `default` (where
//!   the Events of the cluster-scoped Tenants go).
//! - `cert-manager.io` certificates: get, list, watch, create, patch, delete (a Thing with
//!   `x509.issue` gets one; only ones labelled as the operator's are deleted); issuers and
//!   clusterissuers: get, list, watch. Secrets in cert-manager's namespace (`--cert-manager-namespace`):
//!   get, list, watch, only for the CA Secrets of the ClusterIssuers Tenants name.
//! - `coordination.k8s.io` leases: get, list, watch, create, patch, delete, in the Lease
//!   namespace (the election Lease, and one Lease per replica reporting its dataplanes, which
//!   the replica deletes when it has none or stops).

pub mod certificates;
pub mod certmanager;
pub mod events;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod lease;
pub mod observed;
mod packed;
pub mod replica_leases;
pub mod resume;
pub mod secrets;
pub mod seed;
pub mod signing;
pub mod status;
pub mod watch;
pub mod writer;

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;

use crate::index::{Kind, ObjectKey};

/// The field manager of every write the operator makes (server-side apply and creates).
pub const FIELD_MANAGER: &str = "fleetward-operator";

/// The controller name on the Events the operator records.
pub const CONTROLLER: &str = "fleetward.io/operator";

/// Why a write to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or did not answer a status write.
    #[error("writing the status of {key} failed: {source}")]
    StatusWrite {
        /// The object.
        key: ObjectKey,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// The API server refused or did not answer the creation of a Thing's Secret.
    #[error(
        "creating Secret {namespace}/{name} for Thing {thing} failed: {source}; the operator \
         retries with backoff (check its RBAC allows creating Secrets in {namespace})"
    )]
    SecretCreate {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The Thing it is for.
        thing: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// No key could be generated (the system's random source failed).
    #[error("generating a key for {key} failed: {message}")]
    KeyGeneration {
        /// The Thing.
        key: ObjectKey,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// The `error` label of the error metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::StatusWrite { .. } => "status_write",
            Error::SecretCreate { .. } => "secret_create",
            Error::KeyGeneration { .. } => "key_generation",
        }
    }
}

/// The API resource of a Fleetward kind (`Secret` for [`Kind::Secret`]).
pub fn api_resource(kind: Kind) -> kube::api::ApiResource {
    use fleetward_crds::{Channel, Connection, Group, Policy, Tenant, Thing, User};
    use kube::api::ApiResource;
    match kind {
        Kind::Tenant => ApiResource::erase::<Tenant>(&()),
        Kind::Thing => ApiResource::erase::<Thing>(&()),
        Kind::Channel => ApiResource::erase::<Channel>(&()),
        Kind::Connection => ApiResource::erase::<Connection>(&()),
        Kind::User => ApiResource::erase::<User>(&()),
        Kind::Group => ApiResource::erase::<Group>(&()),
        Kind::Policy => ApiResource::erase::<Policy>(&()),
        Kind::Secret => ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
    }
}

/// A reference to an object, for the Events about it.
pub fn object_reference(key: &ObjectKey, uid: Option<String>) -> ObjectReference {
    let resource = api_resource(key.kind);
    ObjectReference {
        api_version: Some(resource.api_version),
        kind: Some(resource.kind),
        name: Some(key.name.clone()),
        namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
        uid,
        ..ObjectReference::default()
    }
}

/// How often the status writer and the Secret reconciler plan every object again, whatever
/// changed: the safety net for a change no key list carried. It costs one pass over the index
/// and no writes when everything is right.
pub(crate) const RESYNC: Duration = Duration::from_secs(300);

/// The first and the longest wait before a failed write is retried.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Failed writes waiting for their retry.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    /// Failures in a row, the waits still to come (doubling from `RETRY_MIN` up to
    /// `RETRY_MAX`), and when the next try is due.
    waiting: HashMap<ObjectKey, (u32, backon::ExponentialBackoff, Instant)>,
}

impl Retries {
    pub(crate) fn blocks(&self, key: &ObjectKey, now: Instant) -> bool {
        self.waiting.get(key).is_some_and(|(_, _, at)| *at > now)
    }

    /// Records a failure; returns how many in a row.
    pub(crate) fn failed(&mut self, key: ObjectKey) -> u32 {
        use backon::BackoffBuilder as _;
        let entry = self.waiting.entry(key).or_insert_with(|| {
            let waits = backon::ExponentialBuilder::default()
                .with_min_delay(RETRY_MIN)
                .with_max_delay(RETRY_MAX)
                .without_max_times()
                .build();
            (0, waits, Instant::now())
        });
        entry.0 += 1;
        entry.2 = Instant::now() + entry.1.next().unwrap_or(RETRY_MAX);
        entry.0
    }

    pub(crate) fn succeeded(&mut self, key: &ObjectKey) {
        self.waiting.remove(key);
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.waiting.values().map(|(_, _, at)| *at).min()
    }

    /// The first retry due after `now` (a retry already due is planned, not waited for).
    pub(crate) fn next_after(&self, now: Instant) -> Option<Instant> {
        self.waiting
            .values()
            .map(|(_, _, at)| *at)
            .filter(|at| *at > now)
            .min()
    }

    /// The objects whose retry is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> impl Iterator<Item = &ObjectKey> {
        self.waiting
            .iter()
            .filter(move |(_, (_, _, at))| *at <= now)
            .map(|(key, _)| key)
    }
}

/// Waits for what a leader's reconciler acts on: a new index commit, a watch catching up, a
/// change of leadership, or the next retry that is due. Marks the first two seen; `true` when
/// one of the channels closed (the operator is stopping).
pub(crate) async fn next_round(
    commits: &mut tokio::sync::watch::Receiver<crate::shared::Published>,
    seen: &mut tokio::sync::watch::Receiver<u64>,
    leader: &mut tokio::sync::watch::Receiver<bool>,
    retry: Option<Instant>,
) -> bool {
    let closed = tokio::select! {
        r = commits.changed() => r.is_err(),
        r = seen.changed() => r.is_err(),
        r = leader.changed() => r.is_err(),
        () = async {
            if let Some(at) = retry {
                tokio::time::sleep_until(at).await;
            }
        }, if retry.is_some() => false,
    };
    commits.mark_unchanged();
    seen.mark_unchanged();
    closed
}
