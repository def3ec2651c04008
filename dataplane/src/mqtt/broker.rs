//! What the MQTT front-end keeps on a pod beside the adapters' shared [`Ingress`]: the live
//! session registry, saved persistent sessions, wills waiting out their delay.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::durable::DurableSessions;
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
    /// Where persistent sessions live when the bus stores messages in JetStream.
    durable: Option<Arc<DurableSessions>>,
}

impl<R: Router> Broker<R> {
    pub(crate) fn new(ingress: Arc<Ingress<R>>) -> Self {
        Self {
            ingress,
            registry: Arc::default(),
            sessions: SessionStore::default(),
            no_local_seen: AtomicBool::new(false),
            pending_wills: PendingWills::default(),
            durable: None,
        }
    }

    /// Keeps persistent sessions in JetStream (`mqtt/durable/`) once the bus stores QoS 1/2
    /// messages there; a CONNECT on another pod ends a live session here with the same key.
    pub(crate) fn with_durable(mut self, durable: Option<Arc<DurableSessions>>) -> Self {
        self.durable = durable;
        self
    }

    /// Where persistent sessions live, while the bus stores messages in JetStream.
    pub(crate) fn durable(&self) -> Option<&Arc<DurableSessions>> {
        self.durable
            .as_ref()
            .filter(|_| self.router.durable_mark().is_some())
    }

    /// Follows takeovers announced by other pods: ends the live session with that key, and
    /// drops a will its earlier connection left waiting here (the session continues there).
    /// And sends the wills of persistent sessions kept in JetStream when they are due, on
    /// whichever pod claims each first.
    pub(crate) fn follow_takeovers(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let durable = self.durable.clone()?;
        let this = Arc::downgrade(self);
        let takeovers = durable.follow_takeovers(move |id, at_ns| {
            let Some(this) = this.upgrade() else { return };
            this.registry.kick(id, at_ns);
            if let Some(will) = this.pending_wills.remove(id) {
                will.abort();
            }
        });
        let this = Arc::downgrade(self);
        let wills = durable.follow_wills(move |will| {
            let Some(this) = this.upgrade() else { return };
            match will.message() {
                Some(message) => {
                    super::pending_wills::send_will(&this, &will.subject(), message, will.retain);
                }
                None => this.metrics.refused("will", "undecodable"),
            }
        });
        let records = durable.interest.clone().map(|i| durable.follow_records(i));
        Some(tokio::spawn(async move {
            let records = async {
                if let Some(records) = records {
                    let _ = records.await;
                }
            };
            let _ = tokio::join!(takeovers, wills, records);
        }))
    }
}

impl<R: Router> Deref for Broker<R> {
    type Target = Ingress<R>;

    fn deref(&self) -> &Ingress<R> {
        &self.ingress
    }
}
