//! The state every adapter shares on a pod ([`Ingress`]), and the per-tenant connection counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use fleetward_policy::{DecisionCache, Snapshot};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::config::MqttConfig;
use super::retained::RetainedStore;
use super::sign_in::{Users, UsersConfig};
use crate::limits::TenantRates;
use crate::metrics::Metrics;
use crate::router::Router;

/// Connections per tenant, for the tenant's `maxConnections`.
#[derive(Default)]
pub(crate) struct TenantConnections {
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

/// One connection counted against its tenant until dropped.
pub(crate) struct TenantSlot {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    tenant: String,
}

impl TenantConnections {
    /// Counts a connection of `tenant`, unless it already has `max`.
    pub(crate) fn acquire(&self, tenant: &str, max: Option<u32>) -> Option<TenantSlot> {
        let mut counts = self.counts.lock();
        let n = counts.entry(tenant.to_owned()).or_default();
        if max.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(TenantSlot {
            counts: self.counts.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

/// Everything the adapters share: the router, the policy and its decision cache, the retained
/// store, limits, sign-in and the audit trail.
pub(crate) struct Ingress<R: Router> {
    pub(crate) config: MqttConfig,
    pub(crate) router: R,
    pub(crate) policy: watch::Receiver<Arc<Snapshot>>,
    pub(crate) cache: DecisionCache,
    /// Which sessions each policy change concerns.
    pub(crate) rechecks: Arc<super::Rechecks>,
    /// Shared with the bus, which mirrors other pods' retained messages into it.
    pub(crate) retained: Arc<RetainedStore>,
    pub(crate) rates: TenantRates,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) connections: AtomicUsize,
    pub(crate) tenant_connections: TenantConnections,
    /// Connections of things with a `maxConnections` of their own, by `<tenant>/<thing>`.
    pub(crate) thing_connections: TenantConnections,
    /// Sign-in and user tokens.
    pub(crate) users: Arc<Users>,
    /// Where every adapter reports its refusals.
    pub(crate) audit: Arc<crate::audit::Audit>,
    /// Where records of channels with history go, and the store the reader reads.
    pub(crate) history: super::HistoryTap,
    /// What makes Things for provisioning requests, if this dataplane has one.
    pub(crate) provisioner: Option<Arc<dyn crate::provisioning::Provisioner>>,
    /// The pod's drain on SIGTERM, which every connection follows.
    pub(crate) drain: super::Drain,
}

impl<R: Router> Ingress<R> {
    pub(crate) fn new(
        config: MqttConfig,
        router: R,
        policy: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let audit = crate::audit::Audit::new(
            &crate::audit::pod_name(None),
            policy.clone(),
            metrics.clone(),
        );
        Self {
            audit: Arc::new(audit),
            history: super::HistoryTap::default(),
            provisioner: None,
            drain: super::Drain::default(),
            cache: DecisionCache::new(config.decision_cache_entries),
            rechecks: Arc::default(),
            config,
            router,
            policy,
            retained: Arc::default(),
            rates: TenantRates::default(),
            metrics,
            connections: AtomicUsize::new(0),
            tenant_connections: TenantConnections::default(),
            thing_connections: TenantConnections::default(),
            users: Arc::new(Users::new(
                UsersConfig::default(),
                super::refresh::RefreshStore::Memory(Default::default()),
            )),
        }
    }

    /// Uses `store` for retained messages (the bus writes other pods' into it).
    pub(crate) fn with_retained(mut self, store: Arc<RetainedStore>) -> Self {
        self.retained = store;
        self
    }

    /// Sends v5 clients to `server_reference` when the pod drains (DISCONNECT 0x9C).
    pub(crate) fn with_drain_server_reference(mut self, server_reference: Option<String>) -> Self {
        self.drain = super::Drain::new(server_reference);
        self
    }

    /// Keeps the history of channels that ask for it through `history`.
    pub(crate) fn with_history(mut self, history: super::History) -> Self {
        self.history = super::HistoryTap::new(history);
        self
    }

    /// Makes Things for provisioning requests with `provisioner`.
    pub(crate) fn with_provisioner(
        mut self,
        provisioner: Option<Arc<dyn crate::provisioning::Provisioner>>,
    ) -> Self {
        self.provisioner = provisioner;
        self
    }

    /// Uses `users` for sign-in and tokens.
    pub(crate) fn with_users(mut self, users: Arc<Users>) -> Self {
        self.users = users;
        self
    }

    /// Names the pod `pod` in audit events.
    pub(crate) fn with_pod(mut self, pod: &str) -> Self {
        self.audit = Arc::new(crate::audit::Audit::new(
            pod,
            self.policy.clone(),
            self.metrics.clone(),
        ));
        self
    }

    /// The snapshot being enforced now.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.policy.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_slots_count_until_dropped() {
        let c = TenantConnections::default();
        let a = c.acquire("t", Some(1)).expect("first");
        assert!(c.acquire("t", Some(1)).is_none());
        assert!(c.acquire("u", Some(1)).is_some());
        drop(a);
        assert!(c.acquire("t", Some(1)).is_some());
    }
}
