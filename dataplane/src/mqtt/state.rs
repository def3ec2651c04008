//! State shared by every connection of a pod: policy, decision cache, session registry, retained.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use fleetward_policy::{DecisionCache, Snapshot};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::retained::RetainedStore;
use super::session::SessionStore;
use super::will::PendingWills;
use crate::limits::TenantRates;
use crate::metrics::Metrics;
use crate::router::Router;

/// What the MQTT front-end is configured with.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// The most sockets this pod holds (every listener but admin, from accept); more are closed
    /// at once.
    pub max_connections: usize,
    /// How long a new connection has to send a complete CONNECT.
    pub connect_timeout: Duration,
    /// How long a write to a client may block before the connection is dropped.
    pub write_timeout: Duration,
    /// The largest packet accepted (remaining length, bytes), before any tenant limit.
    pub max_packet_size: usize,
    /// The most QoS 1/2 deliveries awaiting a client's ack (a v5 client's receive maximum
    /// lowers it); the router is not read while the window is full.
    pub max_inflight: u16,
    /// Topic aliases a v5 client may use towards the server.
    pub topic_alias_max: u16,
    /// Entries of the decision cache.
    pub decision_cache_entries: u64,
    /// The longest a persistent session is kept while its client is away (v3 sessions, and
    /// v5 session expiry intervals above it).
    pub max_session_expiry: Duration,
    /// The most user properties one message (publish or will) may carry; more end a v5
    /// connection with DISCONNECT (or refuse its CONNECT with CONNACK) 0x95.
    pub max_user_properties: usize,
    /// The longest a v5 will waits after its connection ends (a session's expiry caps it too).
    pub max_will_delay: Duration,
    /// The most subscriptions one session holds; filters beyond get SUBACK 0x97 (v5) / 0x80.
    pub max_subscriptions_per_session: usize,
    /// How long a new connection waits for the session it takes over to end. After that the
    /// old session is abandoned: it may no longer touch the router, its saved state or its
    /// will, and the new one proceeds.
    pub takeover_wait: Duration,
    /// The most messages queued while its client was away that a resumed persistent session
    /// is sent; the rest are dropped and counted (MQTT.md, Persistent sessions).
    pub max_offline_messages: usize,
    /// The most wills of one tenant waiting out their delay; a will past it goes out at once.
    pub max_pending_wills_per_tenant: usize,
    /// The most persistent sessions of one tenant kept while their clients are away; saving
    /// one more drops the tenant's oldest.
    pub max_saved_sessions_per_tenant: usize,
    /// The longest keep-alive a client may use, in seconds; `None`: the client's own. A v5
    /// client asking more (or 0, none) is given this one in CONNACK (Server Keep Alive); a v3
    /// client asking more or 0 is refused (CONNACK 0x02), as v3 cannot be told.
    pub max_keep_alive: Option<u16>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_packet_size: 1024 * 1024,
            max_inflight: 100,
            topic_alias_max: 64,
            decision_cache_entries: 100_000,
            max_session_expiry: Duration::from_secs(2 * 3600),
            max_user_properties: 32,
            max_will_delay: Duration::from_secs(300),
            max_subscriptions_per_session: 100,
            takeover_wait: Duration::from_secs(5),
            max_offline_messages: 1000,
            max_pending_wills_per_tenant: 1000,
            max_saved_sessions_per_tenant: 10_000,
            max_keep_alive: None,
        }
    }
}

/// Why a live session is told to end by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kick {
    /// A new connection with the same thing and client id arrived.
    TakenOver,
}

/// A registered session's two signals: it is told to end, and it is gone. One small
/// allocation per connection (channels for the two took about 900 bytes).
#[derive(Default)]
struct Signals {
    /// A new connection with the same id took the session over.
    taken_over: AtomicBool,
    /// The registration was dropped: the session is fully gone.
    gone: AtomicBool,
    /// The successor stopped waiting for this session: it must leave the router, the saved
    /// session and the will alone, since they are the successor's now.
    abandoned: AtomicBool,
    /// Wakes whoever waits for either.
    changed: Notify,
}

impl Signals {
    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until `flag` (one of this struct's) is raised. Cancel-safe.
    async fn wait(&self, flag: &AtomicBool) {
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the flag is read, so a raise in between is not missed.
            notified.as_mut().enable();
            if flag.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

struct RegEntry {
    conn: u64,
    signals: Arc<Signals>,
}

/// Live sessions by router-side id, so a new connection ends the old one before it attaches
/// (the router must never do the takeover itself, dataplane/ROUTER.md §2.6).
#[derive(Default)]
pub(crate) struct Registry {
    entries: Mutex<HashMap<String, RegEntry>>,
    next: AtomicU64,
}

/// A session's place in the registry; dropping it ends the registration.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    id: String,
    conn: u64,
    /// This session's signals, shared with its registry entry. `gone` is raised on drop; a
    /// successor waits for that.
    signals: Arc<Signals>,
    /// The signals of the session this one replaced, until it is gone.
    previous: Option<Arc<Signals>>,
}

impl Registry {
    /// Registers `id`, telling any live session with that id to end.
    pub(crate) fn register(self: &Arc<Self>, id: String) -> Registration {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let signals = Arc::new(Signals::default());
        let old = self.entries.lock().insert(
            id.clone(),
            RegEntry {
                conn,
                signals: signals.clone(),
            },
        );
        let previous = old.map(|old| {
            old.signals.raise(&old.signals.taken_over);
            old.signals
        });
        Registration {
            registry: self.clone(),
            id,
            conn,
            signals,
            previous,
        }
    }

    /// Registers `id` only if no session holds it (for housekeeping such as expiry).
    pub(crate) fn register_if_idle(self: &Arc<Self>, id: String) -> Option<Registration> {
        if self.entries.lock().contains_key(&id) {
            return None;
        }
        Some(self.register(id))
    }

    /// Sessions registered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

impl Registration {
    /// A number unique to this connection within the pod.
    pub(crate) fn conn(&self) -> u64 {
        self.conn
    }

    /// Completes when someone tells this session to end. Cancel-safe: a kick that came while
    /// no one waited is seen by the next wait.
    pub(crate) async fn kicked(&self) -> Kick {
        self.signals.wait(&self.signals.taken_over).await;
        Kick::TakenOver
    }

    /// Whether someone told this session to end (without waiting).
    pub(crate) fn was_kicked(&self) -> bool {
        self.signals.taken_over.load(Ordering::SeqCst)
    }

    /// Whether the successor stopped waiting for this session: what it would leave behind
    /// (router link, saved session, will) belongs to the successor now.
    pub(crate) fn abandoned(&self) -> bool {
        self.signals.abandoned.load(Ordering::SeqCst)
    }

    /// Waits until the session this one replaced (and its own predecessor) is gone, for at
    /// most `bound`. Returns `false` if it was abandoned instead: a session stuck on a
    /// client that does not read, or on its tenant's publish rate, cannot hold its successor.
    pub(crate) async fn predecessor_gone(&mut self, bound: Duration) -> bool {
        let mut gone = true;
        if let Some(prev) = &self.previous
            && tokio::time::timeout(bound, prev.wait(&prev.gone))
                .await
                .is_err()
        {
            prev.abandoned.store(true, Ordering::SeqCst);
            gone = false;
        }
        self.previous = None;
        gone
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut entries = self.registry.entries.lock();
            if entries.get(&self.id).is_some_and(|e| e.conn == self.conn) {
                entries.remove(&self.id);
            }
        }
        self.signals.raise(&self.signals.gone);
    }
}

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

/// Everything connections share.
pub(crate) struct Shared<R: Router> {
    pub(crate) config: MqttConfig,
    pub(crate) router: R,
    pub(crate) policy: watch::Receiver<Arc<Snapshot>>,
    pub(crate) cache: DecisionCache,
    pub(crate) registry: Arc<Registry>,
    /// Shared with the bus, which mirrors other pods' retained messages into it.
    pub(crate) retained: Arc<RetainedStore>,
    pub(crate) rates: TenantRates,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) connections: AtomicUsize,
    pub(crate) sessions: SessionStore,
    pub(crate) tenant_connections: TenantConnections,
    /// Connections of things with a `maxConnections` of their own, by `<tenant>/<thing>`.
    pub(crate) thing_connections: TenantConnections,
    /// Set once any client asks for v5 no-local; from then on publishes carry their origin.
    pub(crate) no_local_seen: std::sync::atomic::AtomicBool,
    /// Wills waiting out their v5 delay, by router-side id; a reconnect cancels them.
    pub(crate) pending_wills: PendingWills,
    /// Sign-in and user tokens.
    pub(crate) users: Arc<crate::users::Users>,
    /// Where every adapter reports its refusals.
    pub(crate) audit: Arc<crate::audit::Audit>,
}

impl<R: Router> Shared<R> {
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
            cache: DecisionCache::new(config.decision_cache_entries),
            config,
            router,
            policy,
            registry: Arc::default(),
            retained: Arc::default(),
            rates: TenantRates::default(),
            metrics,
            connections: AtomicUsize::new(0),
            sessions: SessionStore::default(),
            tenant_connections: TenantConnections::default(),
            thing_connections: TenantConnections::default(),
            no_local_seen: std::sync::atomic::AtomicBool::new(false),
            pending_wills: PendingWills::default(),
            users: Arc::new(crate::users::Users::new(
                crate::users::UsersConfig::default(),
                crate::users::refresh::RefreshStore::Memory(Default::default()),
            )),
        }
    }

    /// Uses `store` for retained messages (the bus writes other pods' into it).
    pub(crate) fn with_retained(mut self, store: Arc<RetainedStore>) -> Self {
        self.retained = store;
        self
    }

    /// Uses `users` for sign-in and tokens.
    pub(crate) fn with_users(mut self, users: Arc<crate::users::Users>) -> Self {
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

    #[tokio::test]
    async fn a_new_registration_kicks_the_old_one_and_waits_for_it() {
        let reg = Arc::new(Registry::default());
        let first = reg.register("a".into());
        let mut second = reg.register("a".into());
        assert_eq!(first.kicked().await, Kick::TakenOver);
        let waiting = tokio::spawn(async move {
            second.predecessor_gone(Duration::from_secs(60)).await;
            second
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.expect("joins");
        assert_eq!(reg.len(), 1);
        drop(second);
        assert_eq!(reg.len(), 0);
    }

    #[tokio::test]
    async fn takeover_waits_a_bounded_time_then_abandons_the_old_session() {
        let reg = Arc::new(Registry::default());
        let first = reg.register("a".into());
        let mut second = reg.register("a".into());
        assert!(first.was_kicked());
        let started = std::time::Instant::now();
        assert!(!second.predecessor_gone(Duration::from_millis(100)).await);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(first.abandoned());
        // The old session ending late does not take the id from its successor.
        drop(first);
        assert_eq!(reg.len(), 1);
        let mut third = reg.register("a".into());
        drop(second);
        assert!(third.predecessor_gone(Duration::from_millis(100)).await);
    }
}
