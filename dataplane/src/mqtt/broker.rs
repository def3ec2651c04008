//! What the MQTT front-end keeps on a pod beside the adapters' shared [`Ingress`]: the live
//! session registry, saved persistent sessions, wills waiting out their delay.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::pending_wills::PendingWills;
use super::registry::Registry;
use super::saved::SessionStore;
use crate::ingress::Ingress;
use crate::router::Router;

/// The MQTT front-end's state; it reads as the [`Ingress`] it wraps for everything shared.
pub(crate) struct Broker<R: Router> {
    pub(crate) ingress: Arc<Ingress<R>>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) sessions: SessionStore,
    /// Set once any client asks for v5 no-local; from then on publishes carry their origin.
    pub(crate) no_local_seen: AtomicBool,
    /// Wills waiting out their v5 delay, by router-side id; a reconnect cancels them.
    pub(crate) pending_wills: PendingWills,
}

impl<R: Router> Broker<R> {
    pub(crate) fn new(ingress: Arc<Ingress<R>>) -> Self {
        Self {
            ingress,
            registry: Arc::default(),
            sessions: SessionStore::default(),
            no_local_seen: AtomicBool::new(false),
            pending_wills: PendingWills::default(),
        }
    }
}

impl<R: Router> Deref for Broker<R> {
    type Target = Ingress<R>;

    fn deref(&self) -> &Ingress<R> {
        &self.ingress
    }
}
