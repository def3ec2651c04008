//! Retained messages, kept by the front-end (the router's own store clears on any empty payload
//! and drops what does not fit, ROUTER.md §2.7), with each tenant's count and bytes for its
//! quota, and the purge of channels the policy no longer has.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_policy::{Snapshot, TenantLimits, filter_matches};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::codec::message_len;
use crate::router::Message;

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

/// A channel's retained messages by topic, with when each was stored.
type ChannelRetained = HashMap<String, (Message, Instant)>;

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
        let topics = self.by_channel.get_mut(&key)?;
        let (old, _) = topics.remove(topic)?;
        if topics.is_empty() {
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

    fn insert(&mut self, tenant: &str, channel: &str, topic: &str, message: Message) {
        let bytes = size(topic, &message);
        let u = self.by_tenant.entry(tenant.to_owned()).or_default();
        u.messages += 1;
        u.bytes += bytes;
        self.by_channel
            .entry((tenant.to_owned(), channel.to_owned()))
            .or_default()
            .insert(topic.to_owned(), (message, Instant::now()));
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
        for ((t, c), topics) in &self.by_channel {
            if t == tenant {
                gone.extend(
                    topics
                        .iter()
                        .filter(|(_, (m, at))| expired(m, *at))
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
            .and_then(|t| t.get(topic))
            .map(|(m, _)| size(topic, m));
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
    /// that took the publish did that.
    pub(crate) fn set(&self, tenant: &str, channel: &str, topic: &str, message: Message) {
        let mut inner = self.inner.lock();
        inner.remove(tenant, channel, topic);
        if !message.payload.is_empty() {
            inner.insert(tenant, channel, topic, message);
        }
    }

    /// Stores a client's retained message within its tenant's `quota`, or clears the topic's
    /// when the payload is empty (always allowed). Replacing a message counts the difference.
    pub(crate) fn store(
        &self,
        tenant: &str,
        channel: &str,
        topic: &str,
        message: Message,
        quota: RetainedQuota,
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
        inner.insert(tenant, channel, topic, message);
        Ok(())
    }

    /// The retained messages of a channel whose topic matches `filter`, without expired ones
    /// and with their v5 message expiry counted down.
    pub(crate) fn matching(&self, tenant: &str, channel: &str, filter: &str) -> Vec<Message> {
        let mut inner = self.inner.lock();
        let key = (tenant.to_owned(), channel.to_owned());
        let Some(topics) = inner.by_channel.get(&key) else {
            return Vec::new();
        };
        let expired_topics: Vec<String> = topics
            .iter()
            .filter(|(_, (m, at))| expired(m, *at))
            .map(|(t, _)| t.clone())
            .collect();
        for t in expired_topics {
            inner.remove(tenant, channel, &t);
        }
        let Some(topics) = inner.by_channel.get(&key) else {
            return Vec::new();
        };
        topics
            .iter()
            .filter(|(t, _)| filter_matches(filter, t))
            .map(|(_, (m, at))| {
                let mut m = m.clone();
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

    /// Drops every retained message of a channel for which `exists(tenant, channel)` is false
    /// (the channel or its tenant was deleted), and returns their topics.
    pub(crate) fn purge_gone(&self, exists: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let mut inner = self.inner.lock();
        let gone: Vec<(String, String)> = inner
            .by_channel
            .keys()
            .filter(|(t, c)| !exists(t, c))
            .cloned()
            .collect();
        let mut topics = Vec::new();
        for key in gone {
            if let Some(messages) = inner.by_channel.remove(&key) {
                for (topic, (m, _)) in messages {
                    inner.free(&key.0, size(&topic, &m));
                    topics.push(topic);
                }
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
    pub(crate) fn render(&self, out: &mut String) {
        let mut usage: Vec<(String, Usage)> = self
            .inner
            .lock()
            .by_tenant
            .iter()
            .map(|(t, u)| (t.clone(), *u))
            .collect();
        usage.sort_by(|a, b| a.0.cmp(&b.0));
        let _ = writeln!(
            out,
            "# HELP fleetward_retained_messages Retained messages kept on this pod, per tenant.\n# TYPE fleetward_retained_messages gauge"
        );
        for (t, u) in &usage {
            let _ = writeln!(
                out,
                "fleetward_retained_messages{{tenant=\"{}\"}} {}",
                escape(t),
                u.messages
            );
        }
        let _ = writeln!(
            out,
            "# HELP fleetward_retained_bytes Bytes of retained messages (topic, payload, properties) kept on this pod, per tenant.\n# TYPE fleetward_retained_bytes gauge"
        );
        for (t, u) in &usage {
            let _ = writeln!(
                out,
                "fleetward_retained_bytes{{tenant=\"{}\"}} {}",
                escape(t),
                u.bytes
            );
        }
    }
}

/// How often the store is also swept without a policy change: a pod that starts mirrors the
/// shared bucket, which may still hold messages of channels deleted while no pod ran.
const SWEEP: Duration = Duration::from_secs(30);

/// Deleting a Channel or a Tenant deletes its retained messages: on every applied snapshot (and
/// every [`SWEEP`]), what the store holds for channels the snapshot lacks is dropped here, and
/// through `purge_bus` from the bucket every pod shares.
///
/// Keyed by name, so a channel re-created under the same name starts empty once any snapshot
/// without it was applied. A pod that only sees the re-creation (a full snapshot after a
/// disconnect that spanned the deletion) keeps the old messages: see MQTT.md, "Retained
/// messages", for that limit.
pub(crate) async fn purge_deleted_channels(
    store: Arc<RetainedStore>,
    mut policy: watch::Receiver<Arc<Snapshot>>,
    purge_bus: Option<Arc<dyn Fn(Vec<String>) + Send + Sync>>,
) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot = policy.borrow_and_update().clone();
        // Version 0 is "no policy yet", not "no channels".
        if snapshot.version() > 0 {
            let gone = store.purge_gone(|t, c| snapshot.channel(t, c).is_some());
            if !gone.is_empty() {
                tracing::info!(
                    messages = gone.len(),
                    "dropped the retained messages of deleted channels"
                );
                if let Some(purge) = &purge_bus {
                    purge(gone);
                }
            }
        }
        tokio::select! {
            changed = policy.changed() => if changed.is_err() { return },
            _ = sweep.tick() => {}
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/#").len(), 2);
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/a").len(), 1);
        r.set("t", "ch", "m/t/c/ch/a", msg(b""));
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/#").len(), 1);
        assert_eq!(r.matching("u", "ch", "m/u/c/ch/#").len(), 1);
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
        assert_eq!(r.matching("t", "ch", "m/t/c/ch/#").len(), 1);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(r.matching("t", "ch", "m/t/c/ch/#").is_empty());
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
            r.store("t", "ch", "m/t/c/ch/a", msg(b"12345"), quota),
            Ok(())
        );
        assert_eq!(r.store("t", "ch", "m/t/c/ch/b", msg(b"1"), quota), Ok(()));
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/c", msg(b"1"), quota),
            Err(QuotaExceeded::Messages(2))
        );
        // Replacing: 15 + 11 now; 19 + 11 fits, 20 + 11 does not.
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/a", msg(b"123456789"), quota),
            Ok(())
        );
        assert_eq!(
            r.store("t", "ch", "m/t/c/ch/a", msg(b"1234567890"), quota),
            Err(QuotaExceeded::Bytes(30))
        );
        assert_eq!(r.usage("t"), (2, 19 + 11));
        // Clearing frees.
        assert_eq!(r.store("t", "ch", "m/t/c/ch/b", msg(b""), quota), Ok(()));
        assert_eq!(r.store("t", "ch", "m/t/c/ch/c", msg(b"1"), quota), Ok(()));
        // Another tenant has its own.
        assert_eq!(r.store("u", "ch", "m/u/c/ch/a", msg(b"1"), quota), Ok(()));
        assert_eq!(r.store("t", "x", "m/t/c/x/a", msg(b"1"), ANY), Ok(()));
        assert_eq!(r.usage("t").0, 3);
    }

    #[test]
    fn channels_that_are_gone_are_purged() {
        let r = RetainedStore::default();
        r.set("t", "ch", "m/t/c/ch/a", msg(b"1"));
        r.set("t", "keep", "m/t/c/keep/a", msg(b"1"));
        r.set("u", "ch", "m/u/c/ch/a", msg(b"1"));
        let gone = r.purge_gone(|t, c| t == "t" && c == "keep");
        assert_eq!(gone.len(), 2);
        assert!(r.matching("t", "ch", "m/t/c/ch/#").is_empty());
        assert_eq!(r.matching("t", "keep", "m/t/c/keep/#").len(), 1);
        assert_eq!(r.usage("t"), (1, 13));
        assert_eq!(r.usage("u"), (0, 0));
    }
}
