//! The cross-pod bus (DESIGN §5, §8), beneath the front-end as a wrapper [`Router`].
//!
//! [`BusRouter`] wraps the pod's router: a local publish goes to the inner router and to the
//! bus; a message from the bus goes to the inner router only. Every adapter publishes through
//! the router, so each reaches other pods without knowing about the bus. Subscriptions passed
//! through the router tell the bus, reference-counted, which subjects this pod needs.
//! See dataplane/BUS.md.

pub mod bus_message;
pub mod durable;
mod interest;
pub(crate) mod nats;
pub mod subject;

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;

pub use self::durable::{DurableConfig, DurableOut};
pub use self::interest::Interest;
pub use self::nats::{NatsBus, NatsConfig};
pub use self::subject::ChannelKey;
use crate::router::{Message, Router, RouterError, RouterLink, SessionKey, SessionMode};
use std::collections::{BTreeSet, HashMap};

/// Carries messages between pods. Both calls return at once: the front-end never waits for
/// the bus, and a message the bus cannot take now is dropped from the bus (and counted), never
/// from local delivery.
pub trait Bus: Send + Sync + 'static {
    /// Hands a message published on this pod to the other pods.
    fn publish(&self, message: &Message);
    /// The subjects this pod needs for one channel now (empty: none).
    fn set_interest(&self, channel: ChannelKey, subjects: BTreeSet<String>);
    /// Where QoS 1/2 messages are stored for persistent sessions, if anywhere (BUS.md).
    fn durable(&self) -> Option<&DurableOut> {
        None
    }
}

/// The bus of a single pod: there are no other pods to reach.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalBus;

impl Bus for LocalBus {
    fn publish(&self, _message: &Message) {}
    fn set_interest(&self, _channel: ChannelKey, _subjects: BTreeSet<String>) {}
}

/// Stores (or, with an empty payload, clears) a retained message: tenant, channel, topic.
pub type RetainSink = Arc<dyn Fn(&str, &str, &str, Message) + Send + Sync>;

/// Where messages from other pods go: the local router, and the local retained store.
#[derive(Clone)]
pub struct Inbound {
    /// Delivers a message from another pod to local subscribers.
    pub deliver: Arc<dyn Fn(Message) + Send + Sync>,
    /// Stores (or, with an empty payload, clears) a retained message: tenant, channel, topic.
    pub retain: RetainSink,
}

struct State {
    bus: Arc<dyn Bus>,
    interest: Mutex<Interest>,
    /// Filters of each router session, kept for a persistent session while it is detached.
    sessions: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl State {
    /// Queues the durable copies of `messages` (QoS 1/2 ones some persistent session may
    /// need, where the bus stores them) before they are routed, and marks them stored: none is
    /// routed when one cannot be queued, so nothing is acknowledged that could be lost.
    /// Whether any was queued.
    fn store(&self, messages: &mut [Message]) -> Result<bool, RouterError> {
        let Some(durable) = self.bus.durable() else {
            return Ok(false);
        };
        let mut any = false;
        for m in messages {
            any |= durable.enqueue(m).map_err(|_| RouterError::BusBehind)?;
        }
        Ok(any)
    }

    fn add(&self, filter: &str) {
        if let Some((channel, subjects)) = self.interest.lock().add(filter) {
            self.bus.set_interest(channel, subjects);
        }
    }

    fn remove(&self, filter: &str) {
        if let Some((channel, subjects)) = self.interest.lock().remove(filter) {
            self.bus.set_interest(channel, subjects);
        }
    }

    fn release(&self, filters: BTreeSet<String>) {
        for f in &filters {
            self.remove(f);
        }
    }
}

/// A router whose publishes also go to the bus and whose subscriptions tell the bus what this
/// pod needs.
pub struct BusRouter<R: Router> {
    inner: Arc<R>,
    state: Arc<State>,
}

impl<R: Router> BusRouter<R> {
    /// Wraps `inner`; messages from other pods reach it through [`BusRouter::inbound`].
    pub fn new(inner: Arc<R>, bus: Arc<dyn Bus>) -> Self {
        Self {
            inner,
            state: Arc::new(State {
                bus,
                interest: Mutex::default(),
                sessions: Mutex::default(),
            }),
        }
    }

    /// The delivery half of [`Inbound`] for a router: straight to the inner router.
    pub fn deliver_to(inner: Arc<R>) -> Arc<dyn Fn(Message) + Send + Sync> {
        Arc::new(move |message| {
            if let Err(e) = inner.publish(message) {
                tracing::warn!(error = %e, "a message from the bus could not be routed");
            }
        })
    }

    /// The NATS subjects this pod subscribes to now.
    pub fn subjects(&self) -> BTreeSet<String> {
        self.state.interest.lock().subjects()
    }
}

impl<R: Router> Router for BusRouter<R> {
    type Link = BusLink<R::Link>;

    async fn attach(
        &self,
        key: &SessionKey,
        mode: SessionMode,
    ) -> Result<(Self::Link, bool), RouterError> {
        let (inner, present) = self.inner.attach(key, mode).await?;
        let id = key.router_id();
        // A session the router did not resume leaves nothing subscribed behind.
        let stale = if present {
            None
        } else {
            self.state.sessions.lock().remove(&id)
        };
        if let Some(filters) = stale {
            self.state.release(filters);
        }
        self.state.sessions.lock().entry(id.clone()).or_default();
        Ok((
            BusLink {
                inner,
                id,
                mode,
                state: self.state.clone(),
            },
            present,
        ))
    }

    fn publish(&self, mut message: Message) -> Result<(), RouterError> {
        self.state.store(std::slice::from_mut(&mut message))?;
        self.state.bus.publish(&message);
        self.inner.publish(message)
    }

    fn publish_batch(&self, messages: &mut Vec<Message>) -> Result<usize, RouterError> {
        self.state.store(messages)?;
        messages.iter().for_each(|m| self.state.bus.publish(m));
        self.inner.publish_batch(messages)
    }

    fn store_durably(&self, messages: &mut [Message]) -> Result<bool, RouterError> {
        self.state.store(messages)
    }

    fn durably_stored_now(&self, mark: u64) -> bool {
        self.state.bus.durable().is_none_or(|d| d.stored_now(mark))
    }

    fn durable_mark(&self) -> Option<u64> {
        self.state
            .bus
            .durable()
            .filter(|d| d.is_ready())
            .map(DurableOut::mark)
    }

    fn durably_stored(
        &self,
        mark: u64,
        bound: std::time::Duration,
    ) -> impl Future<Output = bool> + Send {
        let state = self.state.clone();
        async move {
            match state.bus.durable() {
                Some(d) => d.stored(mark, bound).await,
                None => true,
            }
        }
    }

    fn backlog(&self) -> usize {
        self.inner.backlog()
    }

    fn caught_up(&self, bound: std::time::Duration) -> impl Future<Output = ()> + Send {
        self.inner.caught_up(bound)
    }

    fn is_alive(&self) -> bool {
        self.inner.is_alive()
    }

    fn filters(&self) -> usize {
        self.inner.filters()
    }
}

/// A session's link, telling the bus about its subscriptions.
pub struct BusLink<L: RouterLink> {
    inner: L,
    id: String,
    mode: SessionMode,
    state: Arc<State>,
}

impl<L: RouterLink> RouterLink for BusLink<L> {
    fn subscribe(&mut self, filter: &str) -> Result<(), RouterError> {
        self.inner.subscribe(filter)?;
        // The front-end renews subscriptions it already holds; count each filter once.
        let new = self
            .state
            .sessions
            .lock()
            .entry(self.id.clone())
            .or_default()
            .insert(filter.to_owned());
        if new {
            self.state.add(filter);
        }
        Ok(())
    }

    fn unsubscribe(&mut self, filter: &str) -> Result<(), RouterError> {
        let result = self.inner.unsubscribe(filter);
        let had = self
            .state
            .sessions
            .lock()
            .get_mut(&self.id)
            .is_some_and(|f| f.remove(filter));
        if had {
            self.state.remove(filter);
        }
        result
    }

    fn publish(&mut self, mut message: Message) -> Result<(), RouterError> {
        self.state.store(std::slice::from_mut(&mut message))?;
        self.state.bus.publish(&message);
        self.inner.publish(message)
    }

    fn publish_batch(&mut self, messages: &mut Vec<Message>) -> Result<usize, RouterError> {
        self.state.store(messages)?;
        messages.iter().for_each(|m| self.state.bus.publish(m));
        self.inner.publish_batch(messages)
    }

    fn backlog(&self) -> usize {
        self.inner.backlog()
    }

    fn taken_in(&mut self) -> impl Future<Output = ()> + Send {
        self.inner.taken_in()
    }

    fn receive(&mut self) -> impl Future<Output = Result<Message, RouterError>> + Send {
        self.inner.receive()
    }

    fn try_receive(&mut self) -> Option<Result<Message, RouterError>> {
        self.inner.try_receive()
    }

    fn detach(self) {
        // A persistent session keeps its subscriptions in the router, so its interest stays
        // until a clean attach (a new clean session, or its expiry) replaces it.
        if self.mode == SessionMode::Clean {
            let filters = self.state.sessions.lock().remove(&self.id);
            if let Some(filters) = filters {
                self.state.release(filters);
            }
        }
        self.inner.detach();
    }

    fn abandon(self) {
        // The successor holds this id's interest now; only the router link goes.
        self.inner.abandon();
    }
}

#[cfg(test)]
mod tests;
