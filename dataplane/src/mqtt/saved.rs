//! What a persistent session leaves while its client is away (its subscriptions, in-flight
//! deliveries and packet ids), and the pod's store of them, bounded per tenant.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fleetward_policy::Snapshot;
use foldhash::{HashMap, HashSet};
use parking_lot::Mutex;
use rumqttd::protocol::PublishProperties;
use tokio::sync::Notify;

use super::subs::{Incarnation, Subs};

/// A QoS 1/2 delivery kept until the client acknowledges it, for resending on resume.
pub(crate) struct OutMsg {
    pub(crate) topic: Bytes,
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) props: Option<PublishProperties>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// QoS 1 sent, PUBACK awaited.
    Qos1Sent,
    /// QoS 2 sent, PUBREC awaited.
    Qos2Sent,
    /// PUBREL sent, PUBCOMP awaited.
    Released,
}

/// The front-end's half of a persistent session while its client is away (the router keeps
/// the other half: its subscriptions and its place in each filter's log).
pub(crate) struct SavedSession {
    pub(crate) subs: Subs,
    pub(crate) inflight: HashMap<u16, (Outbound, OutMsg)>,
    pub(crate) qos2_in: HashSet<u16>,
    pub(crate) next_pkid: u16,
    /// When it expires, once its expiry timer runs (the session file keeps it across a
    /// restart).
    pub(crate) deadline: Option<std::time::Instant>,
    generation: u64,
    tenant: String,
    /// Told when the tenant has too many saved sessions and this is the oldest.
    evict: Arc<Notify>,
    /// Evicted already: no longer counted against its tenant.
    evicting: bool,
}

impl SavedSession {
    pub(crate) fn new(
        subs: Subs,
        inflight: HashMap<u16, (Outbound, OutMsg)>,
        qos2_in: HashSet<u16>,
        next_pkid: u16,
    ) -> Self {
        Self {
            subs,
            inflight,
            qos2_in,
            next_pkid,
            deadline: None,
            generation: 0,
            tenant: String::new(),
            evict: Arc::default(),
            evicting: false,
        }
    }
}

/// Saved sessions by router-side id, and per tenant in the order they were saved.
#[derive(Default)]
pub(crate) struct SessionStore {
    saved: Mutex<Saved>,
    generation: AtomicU64,
}

#[derive(Default)]
struct Saved {
    by_id: HashMap<String, SavedSession>,
    /// Per tenant: the saved sessions counted against it, and `(generation, id)` in the order
    /// saved (with entries of sessions since resumed or dropped, skipped when met).
    per_tenant: HashMap<String, (usize, VecDeque<(u64, String)>)>,
}

impl Saved {
    fn remove(&mut self, id: &str) -> Option<SavedSession> {
        let session = self.by_id.remove(id)?;
        if !session.evicting {
            self.uncount(&session.tenant);
        }
        Some(session)
    }

    fn uncount(&mut self, tenant: &str) {
        if let Some((n, order)) = self.per_tenant.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                order.clear();
                self.per_tenant.remove(tenant);
            }
        }
    }

    /// The tenant's oldest saved session still counted, taken off its count.
    fn evict_oldest(&mut self, tenant: &str) -> Option<Arc<Notify>> {
        let (_, order) = self.per_tenant.get_mut(tenant)?;
        while let Some((generation, id)) = order.pop_front() {
            if let Some(s) = self.by_id.get_mut(&id)
                && s.generation == generation
                && !s.evicting
            {
                s.evicting = true;
                let evict = s.evict.clone();
                self.uncount(tenant);
                return Some(evict);
            }
        }
        None
    }
}

impl SessionStore {
    /// Takes a saved session out (a session resumes it, or a clean one discards it).
    pub(crate) fn take(&self, id: &str) -> Option<SavedSession> {
        self.saved.lock().remove(id)
    }

    /// Saves a session of `tenant`; returns its generation, which its expiry timer must still
    /// find, and what tells that timer to drop it early. When the tenant then has more than
    /// `max` saved, its oldest is told to go.
    pub(crate) fn save(
        &self,
        id: String,
        tenant: &str,
        mut session: SavedSession,
        max: usize,
    ) -> (u64, Arc<Notify>) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        session.generation = generation;
        session.tenant = tenant.to_owned();
        let evict = session.evict.clone();
        let mut guard = self.saved.lock();
        let saved = &mut *guard;
        saved.remove(&id);
        saved.by_id.insert(id.clone(), session);
        let (n, order) = saved.per_tenant.entry(tenant.to_owned()).or_default();
        *n += 1;
        order.push_back((generation, id));
        // Entries of sessions resumed since are skipped when met; they are swept once they
        // outnumber the live ones, so the queue stays in proportion to what is saved.
        if order.len() > 2 * *n + 16 {
            let by_id = &saved.by_id;
            order.retain(|(g, id)| by_id.get(id).is_some_and(|s| s.generation == *g));
        }
        let over = saved.per_tenant.get(tenant).is_some_and(|(n, _)| *n > max);
        if over && let Some(oldest) = saved.evict_oldest(tenant) {
            oldest.notify_one();
        }
        (generation, evict)
    }

    /// Takes out of a saved session the subscriptions whose channel is gone, or was made again
    /// (the channel's or its tenant's uid differs from the one subscribed under); their router
    /// filters. `None` if the session is no longer the one saved with `generation`.
    pub(crate) fn drop_channels_gone(
        &self,
        id: &str,
        generation: u64,
        snapshot: &Snapshot,
    ) -> Option<Vec<String>> {
        let mut saved = self.saved.lock();
        let session = saved
            .by_id
            .get_mut(id)
            .filter(|s| s.generation == generation)?;
        Some(session.subs.remove_where(|sub| {
            let c = crate::router::channel_key(&sub.matcher);
            let mut levels = c.split('/');
            let (Some("m"), Some(tenant), Some("c"), Some(channel)) =
                (levels.next(), levels.next(), levels.next(), levels.next())
            else {
                return true;
            };
            match snapshot.channel(tenant, channel) {
                None => true,
                Some(now) => sub
                    .made_under
                    .other_than(Incarnation::of(snapshot, tenant, now)),
            }
        }))
    }

    pub(crate) fn is_saved(&self, id: &str, generation: u64) -> bool {
        self.saved
            .lock()
            .by_id
            .get(id)
            .is_some_and(|s| s.generation == generation)
    }

    pub(crate) fn remove_if(&self, id: &str, generation: u64) -> bool {
        let mut saved = self.saved.lock();
        if saved
            .by_id
            .get(id)
            .is_some_and(|s| s.generation == generation)
        {
            saved.remove(id);
            return true;
        }
        false
    }

    /// Notes when the session saved with `generation` expires.
    pub(crate) fn set_deadline(&self, id: &str, generation: u64, at: std::time::Instant) {
        if let Some(s) = self.saved.lock().by_id.get_mut(id)
            && s.generation == generation
        {
            s.deadline = Some(at);
        }
    }

    /// The ids of the sessions saved now.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.saved.lock().by_id.keys().cloned().collect()
    }

    /// Saved sessions on this pod, for the metrics.
    pub(crate) fn len(&self) -> usize {
        self.saved.lock().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn session() -> SavedSession {
        SavedSession::new(Subs::default(), HashMap::default(), HashSet::default(), 1)
    }

    #[test]
    fn a_tenant_over_its_saved_sessions_loses_its_oldest_and_no_one_else_does() {
        let store = SessionStore::default();
        let (_, a1) = store.save("a:thing:x:1".into(), "a", session(), 2);
        let (_, b1) = store.save("b:thing:x:1".into(), "b", session(), 2);
        let (_, a2) = store.save("a:thing:x:2".into(), "a", session(), 2);
        // At the cap: no one is told to go.
        for n in [&a1, &a2, &b1] {
            assert!(n.notified().now_or_never().is_none());
        }
        let (_, a3) = store.save("a:thing:x:3".into(), "a", session(), 2);
        assert!(a1.notified().now_or_never().is_some(), "a's oldest goes");
        for n in [&a2, &a3, &b1] {
            assert!(n.notified().now_or_never().is_none());
        }
        // Evicted sessions count no more: the next save evicts the next oldest, once.
        let (_, _a4) = store.save("a:thing:x:4".into(), "a", session(), 2);
        assert!(a2.notified().now_or_never().is_some());
        assert!(a3.notified().now_or_never().is_none());
        assert_eq!(store.len(), 5, "dropped by their own timers, not here");
    }

    #[test]
    fn a_resumed_session_leaves_its_tenants_count() {
        let store = SessionStore::default();
        let (_, a1) = store.save("a:thing:x:1".into(), "a", session(), 1);
        assert!(store.take("a:thing:x:1").is_some(), "resumed");
        let (_, a2) = store.save("a:thing:x:2".into(), "a", session(), 1);
        assert!(a1.notified().now_or_never().is_none());
        assert!(
            a2.notified().now_or_never().is_none(),
            "one saved, at the cap"
        );
        // Saved again under the same id: still one.
        let (_, a2b) = store.save("a:thing:x:2".into(), "a", session(), 1);
        assert!(a2b.notified().now_or_never().is_none());
        // Churn keeps the order queue in proportion to what is saved.
        for _ in 0..1000 {
            store.save("a:thing:x:3".into(), "a", session(), 10);
            store.take("a:thing:x:3");
        }
        let saved = store.saved.lock();
        let (n, order) = saved.per_tenant.get("a").expect("a has one");
        assert_eq!(*n, 1);
        assert!(order.len() <= 2 * n + 17, "{}", order.len());
    }

    /// A snapshot of channels `(tenant, tenant uid, channel, channel uid)`.
    fn policy(channels: &[(&str, &str, &str, &str)]) -> Snapshot {
        let mut s = Snapshot::new(1);
        for &(tenant, tenant_uid, name, uid) in channels {
            s.upsert_tenant(fleetward_policy::Tenant {
                provisioning: Default::default(),
                device_ca: Default::default(),
                engine: Default::default(),
                name: tenant.into(),
                uid: tenant_uid.into(),
                suspended: false,
                limits: fleetward_policy::TenantLimits::default(),
                web: Default::default(),
            });
            s.upsert_channel(fleetward_policy::Channel {
                history_retention_secs: Default::default(),
                tenant: tenant.into(),
                name: name.into(),
                uid: uid.into(),
                max_qos: fleetward_policy::Qos::AtLeastOnce,
                retained_allowed: true,
                delivery_metadata: false,
                max_message_size: None,
            });
        }
        s
    }

    /// A saved session with `filters` (`m/<tenant>/c/<channel>/…`), subscribed under `snapshot`.
    fn subscribed(snapshot: &Snapshot, filters: &[&str]) -> SavedSession {
        let mut subs = Subs::default();
        for f in filters {
            let mut levels = f.split('/').skip(1).step_by(2);
            let (Some(tenant), Some(channel)) = (levels.next(), levels.next()) else {
                panic!("{f} names no channel");
            };
            let channel = snapshot.channel(tenant, channel).expect("a channel");
            subs.insert(crate::mqtt::subs::Subscription {
                client: (*f).to_owned(),
                full: (*f).to_owned(),
                matcher: (*f).to_owned(),
                router: (*f).to_owned(),
                no_local: false,
                retain_as_published: false,
                qos: 1,
                id: None,
                metadata: false,
                made_under: Incarnation::of(snapshot, tenant, channel),
            });
        }
        SavedSession::new(subs, HashMap::default(), HashSet::default(), 1)
    }

    #[test]
    fn a_saved_subscription_goes_when_its_channel_or_tenant_is_created_again() {
        let before = policy(&[
            ("t", "t1", "a", "a1"),
            ("t", "t1", "b", "b1"),
            ("t", "t1", "c", ""),
            ("u", "u1", "a", "ua1"),
            ("v", "", "a", "va1"),
        ]);
        let filters = [
            "m/t/c/a/x",
            "m/t/c/b/#",
            "m/t/c/c/y",
            "m/u/c/a/z",
            "m/v/c/a/#",
        ];
        let store = SessionStore::default();
        let (generation, _) =
            store.save("t:thing:x:1".into(), "t", subscribed(&before, &filters), 9);
        // The same names: `t/a` made again (a new uid), tenant `u` made again, `t/b` as it was;
        // unknown uids on either side (`t/c` before, tenant `v` before) keep what they have.
        let after = policy(&[
            ("t", "t1", "a", "a2"),
            ("t", "t1", "b", "b1"),
            ("t", "t1", "c", "c1"),
            ("u", "u2", "a", "ua1"),
            ("v", "v2", "a", "va1"),
        ]);
        let mut gone = store
            .drop_channels_gone("t:thing:x:1", generation, &after)
            .expect("still saved");
        gone.sort();
        assert_eq!(gone, ["m/t/c/a/x", "m/u/c/a/z"]);
        let again = store.drop_channels_gone("t:thing:x:1", generation, &after);
        assert_eq!(again, Some(Vec::new()), "dropped once");
        // The same uids keep them; a channel that is gone drops them, as before.
        let without_b = policy(&[("t", "t1", "c", "c1"), ("v", "v2", "a", "va1")]);
        let gone = store.drop_channels_gone("t:thing:x:1", generation, &without_b);
        assert_eq!(gone, Some(vec!["m/t/c/b/#".to_owned()]));
        let mut saved = store.take("t:thing:x:1").expect("saved");
        assert_eq!(saved.subs.len(), 2);
        for f in ["m/t/c/c/y", "m/v/c/a/#"] {
            assert!(saved.subs.get_mut(f).is_some(), "{f} kept");
        }
    }
}
