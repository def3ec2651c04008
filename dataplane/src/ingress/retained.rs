//! Retained messages, kept by the front-end (the router's own store clears on any empty payload
//! and drops what does not fit, ROUTER.md §2.7), with each tenant's count and bytes for its
//! quota, and the purge of channels the policy no longer has or has under a new uid.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_policy::{Since, Snapshot, TenantLimits, filter_matches};
use parking_lot::Mutex;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::sync::watch;

use crate::metrics::gauge_per_tenant;
use crate::router::Message;
use crate::router::message_len;

/// Retained messages a tenant keeps on a pod when its `maxRetainedMessages` is unset.
pub const DEFAULT_MAX_RETAINED_MESSAGES: u32 = 10_000;
/// Bytes of retained messages a tenant keeps on a pod when its `maxRetainedBytes` is unset.
pub const DEFAULT_MAX_RETAINED_BYTES: u64 = 64 * 1024 * 1024;

/// A tenant's retained-message quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RetainedQuota {
    pub messages: u32,
    pub bytes: u64,
}

impl RetainedQuota {
    /// The quota of a tenant with `limits` (the defaults where unset).
    pub(crate) fn of(limits: Option<&TenantLimits>) -> Self {
        Self {
            messages: limits
                .and_then(|l| l.max_retained_messages)
                .unwrap_or(DEFAULT_MAX_RETAINED_MESSAGES),
            bytes: limits
                .and_then(|l| l.max_retained_bytes)
                .unwrap_or(DEFAULT_MAX_RETAINED_BYTES),
        }
    }
}

/// Which part of the quota a retained publish is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QuotaExceeded {
    /// `maxRetainedMessages`.
    Messages(u32),
    /// `maxRetainedBytes`.
    Bytes(u64),
}

impl QuotaExceeded {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QuotaExceeded::Messages(_) => "retained_messages",
            QuotaExceeded::Bytes(_) => "retained_bytes",
        }
    }
}

/// What a retained message counts against its tenant's bytes: its topic, payload and
/// properties.
fn size(topic: &str, m: &Message) -> u64 {
    (topic.len() + message_len(&m.payload, m.props.as_deref())) as u64
}

/// The uids of a tenant and of one of its channels (the policy's `uid`s): what a retained
/// message was stored under, or what the policy has now. Empty where unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Uids<'a> {
    pub tenant: &'a str,
    pub channel: &'a str,
}

impl<'a> Uids<'a> {
    /// The uids `snapshot` has for a channel and its tenant (empty where it has none).
    pub(crate) fn of(snapshot: &'a Snapshot, tenant: &str, channel: &str) -> Self {
        Self {
            tenant: snapshot.tenant(tenant).map_or("", |t| t.uid.as_str()),
            channel: snapshot
                .channel(tenant, channel)
                .map_or("", |c| c.uid.as_str()),
        }
    }

    /// Whether what was stored under `self` was stored under another tenant or channel of the
    /// same name than `now`'s: a uid known on both sides differs. An unknown one matches all.
    pub(crate) fn other_than(self, now: Uids<'_>) -> bool {
        let differ = |a: &str, b: &str| !a.is_empty() && !b.is_empty() && a != b;
        differ(self.tenant, now.tenant) || differ(self.channel, now.channel)
    }
}

/// [`Uids`] kept with stored messages, shared by every message of a channel stored under them.
#[derive(Debug, Default, PartialEq, Eq)]
struct StoredUids {
    tenant: String,
    channel: String,
}

impl StoredUids {
    fn get(&self) -> Uids<'_> {
        Uids {
            tenant: &self.tenant,
            channel: &self.channel,
        }
    }
}

/// A retained message, when it was stored, and under which uids.
struct Stored {
    message: Message,
    at: Instant,
    uids: Arc<StoredUids>,
}

/// A channel's retained messages by topic.
#[derive(Default)]
struct ChannelRetained {
    topics: HashMap<String, Stored>,
    /// The uids its messages were stored under, each with how many: nearly always one pair, so
    /// a purge tells from these alone whether any message is of a deleted channel or tenant,
    /// without a walk of the messages, and a store adds no allocation for them.
    uids: Vec<(Arc<StoredUids>, u32)>,
}

impl ChannelRetained {
    fn insert(&mut self, topic: &str, message: Message, uids: Uids<'_>) {
        let shared = match self.uids.iter_mut().find(|(u, _)| u.get() == uids) {
            Some((u, n)) => {
                *n += 1;
                u.clone()
            }
            None => {
                let u = Arc::new(StoredUids {
                    tenant: uids.tenant.to_owned(),
                    channel: uids.channel.to_owned(),
                });
                self.uids.push((u.clone(), 1));
                u
            }
        };
        let stored = Stored {
            message,
            at: Instant::now(),
            uids: shared,
        };
        if let Some(old) = self.topics.insert(topic.to_owned(), stored) {
            self.uncount(&old.uids);
        }
    }

    fn remove(&mut self, topic: &str) -> Option<Stored> {
        let old = self.topics.remove(topic)?;
        self.uncount(&old.uids);
        Some(old)
    }

    fn uncount(&mut self, uids: &Arc<StoredUids>) {
        if let Some(i) = self.uids.iter().position(|(u, _)| Arc::ptr_eq(u, uids)) {
            self.uids[i].1 -= 1;
            if self.uids[i].1 == 0 {
                self.uids.swap_remove(i);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    messages: u32,
    bytes: u64,
    /// When the tenant's expired messages were last swept out (on a refusal).
    swept: Option<Instant>,
}

/// How often a tenant over its quota has its expired messages swept: a tenant that keeps
/// publishing over it must not make every refusal a walk of the store, under the lock every
/// tenant's retained publish and SUBSCRIBE takes.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Inner {
    by_channel: HashMap<(String, String), ChannelRetained>,
    by_tenant: HashMap<String, Usage>,
}

impl Inner {
    /// Removes a topic's message, if any, and frees what it counted.
    fn remove(&mut self, tenant: &str, channel: &str, topic: &str) -> Option<Message> {
        let key = (tenant.to_owned(), channel.to_owned());
        let retained = self.by_channel.get_mut(&key)?;
        let old = retained.remove(topic)?.message;
        if retained.topics.is_empty() {
            self.by_channel.remove(&key);
        }
        self.free(tenant, size(topic, &old));
        Some(old)
    }

    fn free(&mut self, tenant: &str, bytes: u64) {
        if let Some(u) = self.by_tenant.get_mut(tenant) {
            u.messages = u.messages.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes);
            if u.messages == 0 {
                self.by_tenant.remove(tenant);
            }
        }
    }

    /// Stores a message on a topic that has none (remove the old one first).
    fn insert(
        &mut self,
        tenant: &str,
        channel: &str,
        topic: &str,
        message: Message,
        uids: Uids<'_>,
    ) {
        let bytes = size(topic, &message);
        let u = self.by_tenant.entry(tenant.to_owned()).or_default();
        u.messages += 1;
        u.bytes += bytes;
        self.by_channel
            .entry((tenant.to_owned(), channel.to_owned()))
            .or_default()
            .insert(topic, message, uids);
    }

    /// Drops the tenant's expired messages (only on a refusal: the quota counts them until
    /// then).
    fn drop_expired(&mut self, tenant: &str) {
        let now = Instant::now();
        match self.by_tenant.get_mut(tenant) {
            Some(u)
                if u.swept
                    .is_some_and(|at| now.duration_since(at) < SWEEP_EVERY) =>
            {
                return;
            }
            Some(u) => u.swept = Some(now),
            None => return,
        }
        let mut gone = Vec::new();
        for ((t, c), retained) in &self.by_channel {
            if t == tenant {
                gone.extend(
                    retained
                        .topics
                        .iter()
                        .filter(|(_, s)| expired(&s.message, s.at))
                        .map(|(topic, _)| (c.clone(), topic.clone())),
                );
            }
        }
        for (c, topic) in gone {
            self.remove(tenant, &c, &topic);
        }
    }

    /// Whether storing `bytes` more on `topic` (new or replaced) stays within `quota`.
    fn check(
        &self,
        tenant: &str,
        channel: &str,
        topic: &str,
        bytes: u64,
        quota: RetainedQuota,
    ) -> Result<(), QuotaExceeded> {
        let usage = self.by_tenant.get(tenant).copied().unwrap_or_default();
        let old = self
            .by_channel
            .get(&(tenant.to_owned(), channel.to_owned()))
            .and_then(|r| r.topics.get(topic))
            .map(|s| size(topic, &s.message));
        let messages = usage.messages + u32::from(old.is_none());
        if old.is_none() && messages > quota.messages {
            return Err(QuotaExceeded::Messages(quota.messages));
        }
        let after = usage.bytes - old.unwrap_or(0).min(usage.bytes) + bytes;
        // Shrinking an existing message is always allowed, even over a lowered quota.
        if after > quota.bytes && bytes > old.unwrap_or(0) {
            return Err(QuotaExceeded::Bytes(quota.bytes));
        }
        Ok(())
    }
}

/// Retained messages by tenant and channel, and each tenant's usage.
#[derive(Default)]
pub(crate) struct RetainedStore {
    inner: Mutex<Inner>,
}

impl RetainedStore {
    /// Stores a retained message of another pod (the bus's mirror of the shared bucket), or
    /// clears the topic's when the payload is empty. Not checked against the quota: the pod
    /// that took the publish did that. The bucket carries no uids: a message from it is kept
    /// under unknown ones, unless it is the one this pod stored there itself (the bucket's
    /// echo of its own write), which keeps its own.
    pub(crate) fn set(&self, tenant: &str, channel: &str, topic: &str, message: Message) {
        let mut inner = self.inner.lock();
        let echo = inner
            .by_channel
            .get(&(tenant.to_owned(), channel.to_owned()))
            .and_then(|r| r.topics.get(topic))
            .is_some_and(|s| {
                message.created_ns != 0
                    && s.message.created_ns == message.created_ns
                    && s.message.payload == message.payload
            });
        if echo {
            return;
        }
        inner.remove(tenant, channel, topic);
        if !message.payload.is_empty() {
            inner.insert(tenant, channel, topic, message, Uids::default());
        }
    }

    /// Stores a client's retained message within its tenant's `quota`, or clears the topic's
    /// when the payload is empty (always allowed). Replacing a message counts the difference.
    /// `uids` are the tenant's and the channel's in the snapshot the publish was authorized
    /// with: once the policy has either under another uid, the message goes.
    pub(crate) fn store(
        &self,
        tenant: &str,
        channel: &str,
        topic: &str,
        message: Message,
        quota: RetainedQuota,
        uids: Uids<'_>,
    ) -> Result<(), QuotaExceeded> {
        let mut inner = self.inner.lock();
        if message.payload.is_empty() {
            inner.remove(tenant, channel, topic);
            return Ok(());
        }
        let bytes = size(topic, &message);
        if inner.check(tenant, channel, topic, bytes, quota).is_err() {
            inner.drop_expired(tenant);
            inner.check(tenant, channel, topic, bytes, quota)?;
        }
        inner.remove(tenant, channel, topic);
        inner.insert(tenant, channel, topic, message, uids);
        Ok(())
    }

    /// The retained messages of a channel whose topic matches `filter`, without expired ones
    /// and with their v5 message expiry counted down. `now` are the channel's and its tenant's
    /// uids in the subscriber's snapshot: messages of a deleted channel or tenant of the same
    /// name, which the next purge drops, are not served meanwhile.
    pub(crate) fn matching(
        &self,
        tenant: &str,
        channel: &str,
        filter: &str,
        now: Uids<'_>,
    ) -> Vec<Message> {
        let mut inner = self.inner.lock();
        let key = (tenant.to_owned(), channel.to_owned());
        let Some(retained) = inner.by_channel.get(&key) else {
            return Vec::new();
        };
        let expired_topics: Vec<String> = retained
            .topics
            .iter()
            .filter(|(_, s)| expired(&s.message, s.at))
            .map(|(t, _)| t.clone())
            .collect();
        for t in expired_topics {
            inner.remove(tenant, channel, &t);
        }
        let Some(retained) = inner.by_channel.get(&key) else {
            return Vec::new();
        };
        retained
            .topics
            .iter()
            .filter(|(t, s)| !s.uids.get().other_than(now) && filter_matches(filter, t))
            .map(|(_, Stored { message, at, .. })| {
                let mut m = message.clone();
                if let Some(p) = &mut m.props
                    && let Some(left) = &mut p.message_expiry_interval
                {
                    let waited = u32::try_from(at.elapsed().as_secs()).unwrap_or(u32::MAX);
                    *left = left.saturating_sub(waited).max(1);
                }
                m
            })
            .collect()
    }

    /// Drops every retained message of a channel `snapshot` does not have (the channel or its
    /// tenant was deleted), or has under another uid than the message was stored under (it
    /// was deleted and created again), and returns their topics.
    pub(crate) fn purge_gone(&self, snapshot: &Snapshot) -> Vec<String> {
        let mut inner = self.inner.lock();
        // (tenant, channel, topic) of every message to drop.
        let mut gone: Vec<(String, String, String)> = Vec::new();
        for ((tenant, channel), retained) in &inner.by_channel {
            // `None`: the channel (or its tenant) is gone, and all its messages with it.
            let now = snapshot
                .channel(tenant, channel)
                .map(|_| Uids::of(snapshot, tenant, channel));
            // Most channels: all their messages were stored under the uids the policy has.
            if now.is_some_and(|now| !retained.uids.iter().any(|(u, _)| u.get().other_than(now))) {
                continue;
            }
            gone.extend(
                retained
                    .topics
                    .iter()
                    .filter(|(_, s)| now.is_none_or(|now| s.uids.get().other_than(now)))
                    .map(|(topic, _)| (tenant.clone(), channel.clone(), topic.clone())),
            );
        }
        let mut topics = Vec::with_capacity(gone.len());
        for (tenant, channel, topic) in gone {
            if inner.remove(&tenant, &channel, &topic).is_some() {
                topics.push(topic);
            }
        }
        topics
    }

    /// A tenant's retained messages and their bytes on this pod.
    #[cfg(test)]
    pub(crate) fn usage(&self, tenant: &str) -> (u32, u64) {
        let inner = self.inner.lock();
        let u = inner.by_tenant.get(tenant).copied().unwrap_or_default();
        (u.messages, u.bytes)
    }

    /// The `fleetward_retained_messages` and `fleetward_retained_bytes` gauges, per tenant.
    pub(crate) fn encode_metrics(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let usage: Vec<(String, Usage)> = self
            .inner
            .lock()
            .by_tenant
            .iter()
            .map(|(t, u)| (t.clone(), *u))
            .collect();
        gauge_per_tenant(
            e,
            "fleetward_retained_messages",
            "Retained messages kept on this pod, per tenant.",
            usage
                .iter()
                .map(|(t, u)| (t.as_str(), u64::from(u.messages))),
        )?;
        gauge_per_tenant(
            e,
            "fleetward_retained_bytes",
            "Bytes of retained messages (topic, payload, properties) kept on this pod, per tenant.",
            usage.iter().map(|(t, u)| (t.as_str(), u.bytes)),
        )
    }
}

/// How often the store is also swept without a policy change: a pod that starts mirrors the
/// shared bucket, which may still hold messages of channels deleted while no pod ran.
const SWEEP: Duration = Duration::from_secs(30);

/// Deleting a Channel or a Tenant deletes its retained messages: on every applied snapshot that
/// may have changed a channel or a tenant (and every [`SWEEP`]), what the store holds for channels the snapshot lacks, or has under
/// another uid than a message was stored under, is dropped here, and through `purge_bus` from
/// the bucket every pod shares.
///
/// So a channel re-created under the same name starts empty, also on a pod that only sees the
/// re-creation (a full snapshot after a disconnect that spanned the deletion). Messages
/// mirrored from the bucket carry no uid: see MQTT.md, "Retained messages", for that limit.
pub(crate) async fn purge_deleted_channels(
    store: Arc<RetainedStore>,
    mut policy: watch::Receiver<Arc<Snapshot>>,
    purge_bus: Option<Arc<dyn Fn(Vec<String>) + Send + Sync>>,
) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = None;
    loop {
        let snapshot = policy.borrow_and_update().clone();
        // A delta that touched no channel and no tenant leaves every uid as it was: no walk.
        let may_purge = seen.is_none_or(|seen| match snapshot.changes_since(seen) {
            Since::Everything => true,
            Since::Deltas(d) => d
                .iter()
                .any(|t| !t.channels.is_empty() || !t.tenants.is_empty()),
        });
        seen = Some(snapshot.stamp());
        // Version 0 is "no policy yet", not "no channels".
        if may_purge && snapshot.version() > 0 {
            let gone = store.purge_gone(&snapshot);
            if !gone.is_empty() {
                tracing::info!(
                    messages = gone.len(),
                    "dropped the retained messages of deleted (or deleted and re-created) channels"
                );
                if let Some(purge) = &purge_bus {
                    purge(gone);
                }
            }
        }
        tokio::select! {
            changed = policy.changed() => if changed.is_err() { return },
            _ = sweep.tick() => seen = None,
        }
    }
}

fn expired(m: &Message, stored: Instant) -> bool {
    m.props
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .is_some_and(|secs| stored.elapsed() >= Duration::from_secs(u64::from(secs)))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn msg(payload: &'static [u8]) -> Message {
        Message {
            stored: false,
            id: crate::router::MessageId::floor(1_700_000_000_000_000_000),
            topic: Bytes::from_static(b"m/t/c/ch/a"),
            payload: Bytes::from_static(payload),
            qos: 0,
            props: None,
            retain: false,
            origin: None,
            publisher: None,
            protocol: crate::router::Protocol::Mqtt,
            created_ns: 0,
        }
    }

    /// Uids that match whatever a message was stored under.
    const NOW: Uids<'static> = Uids {
        tenant: "",
        channel: "",
    };

    const ANY: RetainedQuota = RetainedQuota {
        messages: u32::MAX,
        bytes: u64::MAX,
    };

    #[test]
    fn retained_messages_are_per_channel_and_cleared_by_an_empty_payload() {
        let r = RetainedStore::default();
        r.set("t", "ch", "m/t/c/ch/a", msg(b"1"));
        r.set("t", "ch", "m/t/c/ch/b", msg(b"2"));
        r.set("u", "ch", "m/u/c/ch/a", msg(b"3"));
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/#", NOW).len(), 2);
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/a", NOW).len(), 1);
        r.set("t", "ch", "m/t/c/ch/a", msg(b""));
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/#", NOW).len(), 1);
        assert_eq!(r.matching("u", "ch", "m/u/c/ch/#", NOW).len(), 1);
        assert_eq!(r.usage("t"), (1, 10 + 1));
    }

    #[test]
    fn expired_retained_messages_are_not_served_and_free_their_quota() {
        let r = RetainedStore::default();
        let mut m = msg(b"1");
        m.props = Some(Box::new(crate::router::MessageProps {
            message_expiry_interval: Some(1),
            ..Default::default()
        }));
        r.set("t", "ch", "m/t/c/ch/a", m);
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/#", NOW).len(), 1);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(r.matching("t", "ch", "m/t/c/ch/#", NOW).is_empty());
        assert_eq!(r.usage("t"), (0, 0));
    }

    #[test]
    fn the_quota_counts_messages_and_bytes_and_replacing_counts_the_difference() {
        let r = RetainedStore::default();
        let quota = RetainedQuota {
            messages: 2,
            bytes: 30,
        };
        // Each message: a 10-byte topic and its payload.
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/a", msg(b"12345"), quota, NOW),
            Ok(())
        );
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/b", msg(b"1"), quota, NOW),
            Ok(())
        );
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/c", msg(b"1"), quota, NOW),
            Err(QuotaExceeded::Messages(2))
        );
        // Replacing: 15 + 11 now; 19 + 11 fits, 20 + 11 does not.
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/a", msg(b"123456789"), quota, NOW),
            Ok(())
        );
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/a", msg(b"1234567890"), quota, NOW),
            Err(QuotaExceeded::Bytes(30))
        );
        assert_eq!(r.usage("t"), (2, 19 + 11));
        // Clearing frees.
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/b", msg(b""), quota, NOW),
            Ok(())
        );
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/c", msg(b"1"), quota, NOW),
            Ok(())
        );
        // Another tenant has its own.
        assert_eq!(
            r.store("u", "ch", "m/u/c/ch/a", msg(b"1"), quota, NOW),
            Ok(())
        );
        assert_eq!(r.store("t", "x", "m/t/c/x/a", msg(b"1"), ANY, NOW), Ok(()));
        assert_eq!(r.usage("t").0, 3);
    }

    /// A snapshot of channels `(tenant, channel, channel uid)`, each tenant's uid `<tenant>-uid`.
    fn snapshot(channels: &[(&str, &str, &str)]) -> Snapshot {
        let mut s = Snapshot::new(1);
        for &(tenant, name, uid) in channels {
            s.upsert_tenant(fleetward_policy::Tenant {
                provisioning: Default::default(),
                device_ca: Default::default(),
                engine: Default::default(),
                name: tenant.into(),
                uid: format!("{tenant}-uid"),
                suspended: false,
                limits: TenantLimits::default(),
                web: Default::default(),
            });
            s.upsert_channel(fleetward_policy::Channel {
                history_retention_secs: Default::default(),
                tenant: tenant.into(),
                name: name.into(),
                uid: uid.into(),
                max_qos: fleetward_policy::Qos::AtMostOnce,
                retained_allowed: true,
                delivery_metadata: false,
                max_message_size: None,
            });
        }
        s
    }

    /// The uids [`snapshot`] gives a channel.
    fn uids<'a>(tenant: &'a str, channel: &'a str) -> (String, &'a str) {
        (format!("{tenant}-uid"), channel)
    }

    fn store_under(r: &RetainedStore, tenant: &str, ch: &str, topic: &str, uids: (String, &str)) {
        let uids = Uids {
            tenant: &uids.0,
            channel: uids.1,
        };
        assert_eq!(r.store(tenant, ch, topic, msg(b"1"), ANY, uids), Ok(()));
    }

    #[test]
    fn channels_that_are_gone_are_purged() {
        let r = RetainedStore::default();
        r.set("t", "ch", "m/t/c/ch/a", msg(b"1"));
        r.set("t", "keep", "m/t/c/keep/a", msg(b"1"));
        r.set("u", "ch", "m/u/c/ch/a", msg(b"1"));
        let gone = r.purge_gone(&snapshot(&[("t", "keep", "k1")]));
        assert_eq!(gone.len(), 2);
        assert!(r.matching("t", "ch", "m/t/c/ch/#", NOW).is_empty());
        assert_eq!(r.matching("t", "keep", "m/t/c/keep/#", NOW).len(), 1);
        assert_eq!(r.usage("t"), (1, 13));
        assert_eq!(r.usage("u"), (0, 0));
    }

    #[test]
    fn a_channel_or_tenant_created_again_under_its_name_starts_empty() {
        let r = RetainedStore::default();
        store_under(&r, "t", "ch", "m/t/c/ch/a", uids("t", "c1"));
        store_under(&r, "t", "same", "m/t/c/same/a", uids("t", "s1"));
        store_under(&r, "t", "unknown", "m/t/c/unknown/a", uids("t", ""));
        store_under(&r, "u", "ch", "m/u/c/ch/a", uids("u", "c1"));
        // Channel `ch` of `t` was deleted and created again (a new uid), the others stay; a
        // snapshot that does not know `unknown`'s uid keeps its messages, as by name.
        let now = snapshot(&[
            ("t", "ch", "c2"),
            ("t", "same", "s1"),
            ("t", "unknown", "x"),
            ("u", "ch", "c1"),
        ]);
        let fresh = Uids::of(&now, "t", "ch");
        assert!(
            r.matching("t", "ch", "m/t/c/ch/#", fresh).is_empty(),
            "not served before the purge either"
        );
        assert_eq!(r.purge_gone(&now), vec!["m/t/c/ch/a".to_owned()]);
        assert!(r.matching("t", "ch", "m/t/c/ch/#", NOW).is_empty());
        assert_eq!(r.usage("t"), (2, 2 * 13 + 3));
        for (t, c) in [("t", "same"), ("t", "unknown"), ("u", "ch")] {
            let filter = format!("m/{t}/c/{c}/#");
            let kept = r.matching(t, c, &filter, Uids::of(&now, t, c));
            assert_eq!(kept.len(), 1, "{t}/{c}");
        }
        // The new channel's own messages stay.
        store_under(&r, "t", "ch", "m/t/c/ch/b", uids("t", "c2"));
        assert!(r.purge_gone(&now).is_empty());
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/#", fresh).len(), 1);
        // Tenant `u` created again: its channel's messages go, although the channel kept its
        // uid (the tenant's decides alone); an empty uid in the policy keeps them.
        let mut now = now;
        now.upsert_tenant(fleetward_policy::Tenant {
            provisioning: Default::default(),
            device_ca: Default::default(),
            engine: Default::default(),
            name: "u".into(),
            uid: "u-uid-2".into(),
            suspended: false,
            limits: TenantLimits::default(),
            web: Default::default(),
        });
        assert_eq!(r.purge_gone(&now), vec!["m/u/c/ch/a".to_owned()]);
        assert_eq!(r.usage("u"), (0, 0));
        let mut unknown = snapshot(&[("t", "ch", ""), ("t", "same", "s1"), ("t", "unknown", "")]);
        unknown.upsert_tenant(fleetward_policy::Tenant {
            provisioning: Default::default(),
            device_ca: Default::default(),
            engine: Default::default(),
            name: "t".into(),
            uid: String::new(),
            suspended: false,
            limits: TenantLimits::default(),
            web: Default::default(),
        });
        assert!(r.purge_gone(&unknown).is_empty());
        assert_eq!(r.usage("t").0, 3);
    }

    #[test]
    fn a_mirrored_message_has_no_uids_but_the_echo_of_our_own_keeps_them() {
        let r = RetainedStore::default();
        let mut own = msg(b"1");
        own.created_ns = 42;
        let under = Uids {
            tenant: "t-uid",
            channel: "c1",
        };
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/a", own.clone(), ANY, under),
            Ok(())
        );
        // The bucket sends our own write back: still stored under its uids.
        r.set("t", "ch", "m/t/c/ch/a", own);
        let mut other = msg(b"2");
        other.created_ns = 43;
        r.set("t", "ch", "m/t/c/ch/b", other);
        let now = snapshot(&[("t", "ch", "c2")]);
        assert_eq!(r.purge_gone(&now), vec!["m/t/c/ch/a".to_owned()]);
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/#", NOW).len(), 1);
    }
}
