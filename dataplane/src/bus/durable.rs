//! Durable copies of QoS 1 and 2 messages (BUS.md, "Persistent sessions").
//!
//! On a pod with `--nats` and JetStream, every QoS 1/2 message published on the pod is also
//! stored in its tenant's stream `FLEETWARD_S_<tenant>` (subjects `p.<tenant>.c.<channel>.…`,
//! the bus subject with `p` for `m`), in the order it was handed over. Persistent sessions take
//! their QoS 1/2 deliveries from those streams (`mqtt/durable/`), so a message a publisher was
//! acknowledged for is there for any pod to deliver, across a pod's crash and a NATS restart.
//!
//! The publisher is acknowledged only once JetStream stored the message: the front-end takes a
//! mark ([`DurableOut::mark`]) after handing its messages over and waits for the stored mark to
//! reach it. Copies are numbered under one lock as they are queued, and stored in that order,
//! so "stored up to n" covers every copy queued before n.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage as Publish, stream};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::bus_message;
use super::subject::{escape_level, topic_subject};
use crate::metrics::Metrics;
use crate::router::Message;

/// How long an acknowledgement (a PUBACK, an HTTP 202) waits for JetStream to store its QoS
/// 1/2 messages before the publisher is told to send them again: longer than a NATS restart
/// and the reconnect after it, shorter than a client's keep-alive.
pub const STORE_WAIT: Duration = Duration::from_secs(30);

/// The header naming the session that published a message, `<node>:<connection>`, so the
/// publishing pod can honour v5 no-local on durable deliveries.
pub(crate) const ORIGIN_HEADER: &str = "Fleetward-Origin";

/// How the durable streams are made.
#[derive(Clone, Debug)]
pub struct DurableConfig {
    /// How long a stored message is kept: the longest session expiry (a session away longer
    /// is gone anyway).
    pub max_age: Duration,
    /// Bytes each tenant's stream keeps; past them its oldest messages go first (only its own
    /// sessions lose queued messages: one tenant cannot push out another's).
    pub tenant_bytes: i64,
    /// Stream replicas (1 on a single NATS server; 3 on a NATS cluster).
    pub replicas: usize,
    /// Copies queued for JetStream before publishes are refused (0x89, HTTP 503).
    pub queue: usize,
}

impl Default for DurableConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(2 * 3600),
            tenant_bytes: 256 << 20,
            replicas: 1,
            queue: 65_536,
        }
    }
}

/// A tenant's stream name: `FLEETWARD_S_` and the tenant, escaped (stream names take no `.`,
/// `*`, `>` or whitespace).
pub fn stream_name(tenant: &str) -> String {
    format!("FLEETWARD_S_{}", escape_level(tenant).replace('=', "_"))
}

/// The durable subject of a topic name: `m/acme/c/x/a` → `p.acme.c.x.a`.
pub fn durable_subject(topic: &str) -> Option<String> {
    topic_subject(topic).map(|s| format!("p{}", &s[1..]))
}

/// The durable subject pattern of a bus subject pattern (`m.…` → `p.…`).
pub fn durable_pattern(bus_subject: &str) -> String {
    format!("p{}", &bus_subject[1..])
}

/// The channels some persistent session anywhere subscribes to at QoS 1/2, from the session
/// records every pod watches (`mqtt/durable/`): only their messages are stored, so a channel
/// no persistent session follows keeps today's fast path (no store, no wait for its PUBACK).
/// Until the watch has read every record, every channel counts.
#[derive(Default)]
pub struct DurableInterest {
    /// Subscriptions per channel, keyed `m/<tenant>/c/<channel>` (a topic's own prefix, so a
    /// lookup takes no allocation).
    channels: parking_lot::RwLock<std::collections::HashMap<String, usize>>,
    synced: AtomicBool,
}

impl DurableInterest {
    /// Whether a message on `topic` is to be stored.
    pub fn wants(&self, topic: &[u8]) -> bool {
        if !self.synced.load(Ordering::Acquire) {
            return true;
        }
        let Some(prefix) = channel_prefix(topic) else {
            return false;
        };
        self.channels.read().contains_key(prefix)
    }

    /// A persistent session's QoS 1/2 subscriptions on these channels (prefixes) came, or
    /// (`delta` -1) went.
    pub fn count(&self, prefixes: &std::collections::BTreeSet<String>, delta: isize) {
        let mut channels = self.channels.write();
        for p in prefixes {
            let n = channels.entry(p.clone()).or_default();
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                channels.remove(p);
            }
        }
    }

    /// Every record was read: from now on only the channels counted are stored.
    pub fn synced(&self) {
        self.synced.store(true, Ordering::Release);
    }
}

/// `m/<tenant>/c/<channel>` of a topic name or filter (`$share/<group>/` taken off).
pub fn channel_prefix(topic: &[u8]) -> Option<&str> {
    let mut topic = std::str::from_utf8(topic).ok()?;
    if let Some(rest) = topic.strip_prefix("$share/") {
        topic = rest.split_once('/')?.1;
    }
    let mut slashes = topic.match_indices('/').map(|(i, _)| i);
    let (_, _, _) = (slashes.next()?, slashes.next()?, slashes.next()?);
    let end = slashes.next().unwrap_or(topic.len());
    topic.starts_with("m/").then(|| &topic[..end])
}

/// The durable copies' queue is full: JetStream is behind or away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

/// The queue of durable copies, and how far JetStream has stored them.
pub struct DurableOut {
    /// Copies numbered as queued, under the lock so numbers follow the queue's order.
    queue: Mutex<(u64, mpsc::Sender<(u64, Message)>)>,
    stored: watch::Receiver<u64>,
    /// Set once JetStream answered: until then (and on a NATS without JetStream) nothing is
    /// stored and nothing waits, as before durable sessions.
    ready: Arc<AtomicBool>,
    interest: Arc<DurableInterest>,
}

impl DurableOut {
    /// Starts the task that stores the copies, over `client`.
    pub(crate) fn start(
        client: async_nats::Client,
        node_id: String,
        config: DurableConfig,
        metrics: Arc<Metrics>,
    ) -> (Self, tokio::task::AbortHandle) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let (stored_tx, stored) = watch::channel(0);
        let ready = Arc::new(AtomicBool::new(false));
        let store = Store {
            js: jetstream::new(client),
            node_id,
            epoch: crate::router::now_ns(),
            config,
            streams: HashSet::new(),
            metrics,
            ready: ready.clone(),
        };
        let task = tokio::spawn(store.run(rx, stored_tx)).abort_handle();
        let out = Self {
            queue: Mutex::new((0, tx)),
            stored,
            ready,
            interest: Arc::default(),
        };
        (out, task)
    }

    /// Whether copies are being stored (JetStream answered once).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The channels persistent sessions follow, which the session records feed.
    pub fn interest(&self) -> Arc<DurableInterest> {
        self.interest.clone()
    }

    /// Queues the durable copy of a QoS 1/2 message some persistent session may need, and
    /// marks it stored (`Message::stored`). `Ok(true)` when it was queued, `Ok(false)` when it
    /// needs none (QoS 0, a channel no persistent session follows, no JetStream yet, queued
    /// already), `Err` when the queue is full.
    pub fn enqueue(&self, message: &mut Message) -> Result<bool, QueueFull> {
        if message.qos == 0
            || message.stored
            || !self.is_ready()
            || !self.interest.wants(&message.topic)
        {
            return Ok(false);
        }
        let mut q = self.queue.lock();
        let n = q.0 + 1;
        message.stored = true;
        if q.1.try_send((n, message.clone())).is_err() {
            message.stored = false;
            return Err(QueueFull);
        }
        q.0 = n;
        Ok(true)
    }

    /// The number of the last copy queued: waiting for it covers every copy queued before.
    pub fn mark(&self) -> u64 {
        self.queue.lock().0
    }

    /// Whether every copy up to `mark` is stored now.
    pub fn stored_now(&self, mark: u64) -> bool {
        *self.stored.borrow() >= mark
    }

    /// Waits until every copy up to `mark` is stored, for at most `bound`; whether it was.
    pub async fn stored(&self, mark: u64, bound: Duration) -> bool {
        let mut stored = self.stored.clone();
        matches!(
            tokio::time::timeout(bound, stored.wait_for(|s| *s >= mark)).await,
            Ok(Ok(_))
        )
    }
}

/// A copy sent (its number, and the copy with its ack, unless there was nothing to store).
type Sent = (
    u64,
    Option<(Copy, Option<jetstream::context::PublishAckFuture>)>,
);

/// Aborts a task when dropped: the acks' task goes with the sender's.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone)]
struct Store {
    js: jetstream::Context,
    node_id: String,
    /// This process's start, in the message ids: a restarted pod's copies never take the ids
    /// of its earlier ones within the stream's duplicate window.
    epoch: u64,
    config: DurableConfig,
    /// Tenants whose stream exists.
    streams: HashSet<String>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// Copies sent to JetStream whose acks are awaited at once.
const WINDOW: usize = 1024;

impl Store {
    /// Sends the copies to JetStream in the order queued, as they come, while a task of its
    /// own awaits their acks in the same order and moves the stored mark on: a copy is sent
    /// while the acks of earlier ones are on their way (one round trip of latency, not two).
    async fn run(mut self, mut rx: mpsc::Receiver<(u64, Message)>, stored: watch::Sender<u64>) {
        self.wait_for_jetstream().await;
        let (sent_tx, sent_rx) = mpsc::channel(WINDOW);
        let _acker = AbortOnDrop(tokio::spawn(self.clone().acknowledge(sent_rx, stored)));
        while let Some((n, message)) = rx.recv().await {
            let Some(copy) = self.copy(n, message) else {
                // Not one of ours (a topic the bus has no subject for): nothing to store.
                if sent_tx.send((n, None)).await.is_err() {
                    return;
                }
                continue;
            };
            self.ensure_stream(&copy.tenant).await;
            let ack = self
                .js
                .send_publish(copy.subject.clone(), copy.publish())
                .await
                .ok();
            if sent_tx.send((n, Some((copy, ack)))).await.is_err() {
                return;
            }
        }
    }

    /// Awaits the acks in order; a copy JetStream did not acknowledge is stored again before
    /// the mark moves past it.
    async fn acknowledge(mut self, mut sent: mpsc::Receiver<Sent>, stored: watch::Sender<u64>) {
        while let Some((n, copy)) = sent.recv().await {
            if let Some((copy, ack)) = copy {
                let ok = match ack {
                    Some(ack) => ack.await.is_ok(),
                    None => false,
                };
                if !ok {
                    self.retry(&copy).await;
                }
                self.metrics.durable_stored();
            }
            stored.send_replace(n);
        }
    }

    /// Waits (quietly, with backoff) until JetStream answers; a NATS without it never does,
    /// and durable sessions stay off.
    async fn wait_for_jetstream(&self) {
        let mut wait = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match self.js.query_account().await {
                Ok(_) => break,
                Err(e) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(error = %e, "persistent sessions stay on this pod until NATS JetStream answers (run nats-server with -js)");
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!("persistent sessions and QoS 1/2 messages are stored in NATS JetStream");
    }

    fn copy(&self, n: u64, message: Message) -> Option<Copy> {
        let topic = std::str::from_utf8(&message.topic).ok()?;
        let subject = durable_subject(topic)?;
        let (tenant, _) = super::subject::channel_of(topic)?;
        let payload = bus_message::encode(&message, &self.node_id, n)?;
        let origin = message
            .origin
            .map(|conn| format!("{}:{conn}", self.node_id));
        Some(Copy {
            tenant,
            subject,
            id: format!("{}.{}.{n}", self.node_id, self.epoch),
            payload: payload.into(),
            origin,
        })
    }

    /// Stores a copy whose first attempt failed (NATS away, a timeout), until it is stored:
    /// its id makes a retry of one that was stored after all a duplicate JetStream drops.
    async fn retry(&mut self, copy: &Copy) {
        let mut wait = Duration::from_millis(50);
        loop {
            self.metrics.durable_retried();
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
            // The stream may have been deleted meanwhile.
            self.streams.remove(&copy.tenant);
            self.ensure_stream(&copy.tenant).await;
            if let Ok(ack) = self
                .js
                .send_publish(copy.subject.clone(), copy.publish())
                .await
                && ack.await.is_ok()
            {
                return;
            }
        }
    }

    /// Makes the tenant's stream if this pod has not seen it yet; retried with the copy.
    async fn ensure_stream(&mut self, tenant: &str) {
        if self.streams.contains(tenant) {
            return;
        }
        match self
            .js
            .get_or_create_stream(stream_config(tenant, &self.config))
            .await
        {
            Ok(_) => {
                self.streams.insert(tenant.to_owned());
            }
            Err(e) => {
                tracing::warn!(error = %e, tenant, "could not make a tenant's durable stream")
            }
        }
    }
}

/// A tenant's durable stream: file storage, its oldest messages dropped past its bytes.
pub(crate) fn stream_config(tenant: &str, config: &DurableConfig) -> stream::Config {
    stream::Config {
        name: stream_name(tenant),
        description: Some(format!(
            "Fleetward: QoS 1/2 messages of tenant {tenant} for persistent sessions"
        )),
        subjects: vec![format!("p.{}.>", escape_level(tenant))],
        max_age: config.max_age,
        max_bytes: config.tenant_bytes,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// A durable copy ready to send.
struct Copy {
    tenant: String,
    subject: String,
    id: String,
    payload: bytes::Bytes,
    origin: Option<String>,
}

impl Copy {
    fn publish(&self) -> Publish {
        let mut headers = HeaderMap::new();
        if let Some(origin) = &self.origin {
            headers.insert(ORIGIN_HEADER, origin.as_str());
        }
        Publish::build()
            .payload(self.payload.clone())
            .message_id(self.id.as_str())
            .headers(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_channels_a_persistent_session_follows_are_stored_once_synced() {
        let interest = DurableInterest::default();
        assert!(
            interest.wants(b"m/acme/c/cmd/x"),
            "before the records are read: all"
        );
        interest.synced();
        assert!(!interest.wants(b"m/acme/c/cmd/x"));
        let cmd = std::collections::BTreeSet::from(["m/acme/c/cmd".to_owned()]);
        interest.count(&cmd, 1);
        assert!(interest.wants(b"m/acme/c/cmd/x"));
        assert!(interest.wants(b"m/acme/c/cmd"));
        assert!(!interest.wants(b"m/acme/c/cmdx/y"));
        assert!(!interest.wants(b"m/other/c/cmd/x"));
        interest.count(&cmd, -1);
        assert!(!interest.wants(b"m/acme/c/cmd/x"));
        assert_eq!(
            channel_prefix(b"$share/g/m/acme/c/cmd/#"),
            Some("m/acme/c/cmd")
        );
        assert_eq!(channel_prefix(b"m/acme/c"), None);
    }

    #[test]
    fn durable_subjects_and_stream_names_follow_the_bus_subjects() {
        assert_eq!(
            durable_subject("m/acme/c/cmd/dev-1").as_deref(),
            Some("p.acme.c.cmd.dev-1")
        );
        assert_eq!(durable_pattern("m.acme.c.cmd.>"), "p.acme.c.cmd.>");
        assert_eq!(stream_name("acme-1"), "FLEETWARD_S_acme-1");
        assert!(!stream_name("a.b c").contains(['.', ' ', '*', '>']));
    }
}
