//! The NATS bus: core NATS between pods, JetStream KV for retained messages (see BUS.md).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::bus_message::{self, Seen};
use super::subject::{ChannelKey, subject_topic, topic_subject};
use super::{Bus, Inbound};
use crate::metrics::Metrics;
use crate::router::Message;

/// How the NATS bus connects.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// NATS server URLs (`nats://host:4222`); every one is tried.
    pub servers: Vec<String>,
    /// This pod's id, stamped on what it publishes as the origin.
    pub node_id: String,
    /// The JetStream KV bucket of retained messages, shared by every pod.
    pub retained_bucket: String,
    /// Messages waiting for NATS before more are dropped from the bus.
    pub queue: usize,
    /// The longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// How QoS 1/2 messages are stored for persistent sessions; `None` keeps them on the pod
    /// (sessions do not survive it).
    pub durable: Option<super::DurableConfig>,
}

impl NatsConfig {
    /// Defaults for the given servers and node id.
    pub fn new(servers: Vec<String>, node_id: impl Into<String>) -> Self {
        Self {
            servers,
            node_id: node_id.into(),
            retained_bucket: "fleetward-retained".to_owned(),
            queue: 65_536,
            max_backoff: Duration::from_secs(2),
            durable: Some(super::DurableConfig::default()),
        }
    }
}

/// The bus over NATS.
pub struct NatsBus {
    client: async_nats::Client,
    out: mpsc::Sender<Message>,
    interest: mpsc::UnboundedSender<(ChannelKey, BTreeSet<String>)>,
    /// The retained-bucket writer's queue, for purges.
    retained: mpsc::Sender<(String, Message)>,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    durable: Option<super::DurableOut>,
    tasks: Vec<AbortHandle>,
}

struct Ctx {
    client: async_nats::Client,
    node_id: String,
    inbound: Inbound,
    metrics: Arc<Metrics>,
    seen: Mutex<Seen>,
    /// The retained bucket, once opened (JetStream may come later than NATS, or never).
    retained: watch::Sender<Option<kv::Store>>,
}

/// The waits between attempts: doubling from 100 ms up to `max`.
fn retry_waits(max: Duration) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(max)
        .without_max_times()
        .build()
}

/// The wait before reconnect attempt `attempt` (async-nats counts them; past the cap every
/// wait is the same).
fn backoff(attempt: usize, max: Duration) -> Duration {
    retry_waits(max).nth(attempt.min(32)).unwrap_or(max)
}

impl NatsBus {
    /// Starts connecting (in the background: the pod serves local clients meanwhile) and the
    /// bus's tasks. Fails only on a malformed server URL.
    pub async fn start(
        config: NatsConfig,
        inbound: Inbound,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        if config.servers.is_empty() {
            anyhow::bail!("--nats needs at least one server URL, e.g. nats://nats:4222");
        }
        metrics.bus_configured();
        let connected = Arc::new(AtomicBool::new(false));
        let (flag, m, max) = (connected.clone(), metrics.clone(), config.max_backoff);
        let client = async_nats::ConnectOptions::new()
            .name(format!("fleetward-dataplane {}", config.node_id))
            .retry_on_initial_connect()
            .max_reconnects(None::<usize>)
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(10))
            .reconnect_delay_callback(move |attempt| backoff(attempt, max))
            .event_callback(move |event| {
                let (flag, m) = (flag.clone(), m.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            flag.store(true, Ordering::SeqCst);
                            m.bus_connected(true);
                            tracing::info!("connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            flag.store(false, Ordering::SeqCst);
                            m.bus_connected(false);
                            tracing::warn!(
                                "lost NATS; local delivery continues, reconnecting with backoff"
                            );
                        }
                        async_nats::Event::SlowConsumer(_) => m.bus_dropped("slow_consumer"),
                        other => tracing::info!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(config.servers.clone())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "the NATS servers {:?} are not usable ({e}); give --nats URLs like nats://host:4222",
                    config.servers
                )
            })?;
        let ctx = Arc::new(Ctx {
            client,
            node_id: config.node_id.clone(),
            inbound,
            metrics: metrics.clone(),
            seen: Mutex::default(),
            retained: watch::Sender::new(None),
        });
        let (out, out_rx) = mpsc::channel(config.queue.max(1));
        let (retained_tx, retained_rx) = mpsc::channel(config.queue.max(1));
        let (interest, interest_rx) = mpsc::unbounded_channel();
        let mut tasks = vec![
            tokio::spawn(publisher(ctx.clone(), out_rx, retained_tx.clone())).abort_handle(),
            tokio::spawn(retained_writer(ctx.clone(), retained_rx)).abort_handle(),
            tokio::spawn(subscriptions(ctx.clone(), interest_rx)).abort_handle(),
            tokio::spawn(retained_watch(
                ctx.clone(),
                config.retained_bucket.clone(),
                config.max_backoff,
            ))
            .abort_handle(),
        ];
        let durable = start_durable(&config, &ctx.client, &metrics, &mut tasks);
        Ok(Self {
            client: ctx.client.clone(),
            durable,
            out,
            interest,
            retained: retained_tx,
            connected,
            metrics,
            tasks,
        })
    }

    /// The NATS client, for other state pods share (refresh-token families).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// Waits, at most `bound`, until what was handed to the bus is written to NATS: the
    /// queue empty and the client flushed (a pod's drain); `false` if it was not.
    pub async fn flush(&self, bound: Duration) -> bool {
        let flushed = async {
            while self.out.capacity() < self.out.max_capacity() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The publisher task may still hold the last message it took off the queue.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.client.flush().await.is_ok()
        };
        tokio::time::timeout(bound, flushed).await.unwrap_or(false)
    }

    /// Whether the bus is connected to NATS now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Deletes retained messages from the shared bucket by topic (those of a deleted channel
    /// or tenant). Every pod that sees the deletion does it; deleting twice is harmless, and
    /// the other pods' mirrors see the deletions too.
    pub fn retained_purger(&self) -> Arc<dyn Fn(Vec<String>) + Send + Sync> {
        let queue = self.retained.clone();
        let metrics = self.metrics.clone();
        Arc::new(move |topics: Vec<String>| {
            for topic in topics {
                let Some(subject) = topic_subject(&topic) else {
                    continue;
                };
                let clear = cleared(topic);
                if queue.try_send((subject, clear)).is_err() {
                    metrics.bus_dropped("retained_queue_full");
                }
            }
        })
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Bus for NatsBus {
    fn publish(&self, message: &Message) {
        // While NATS is away, other pods cannot be reached: drop now rather than deliver
        // minutes late (BUS.md, "What is lost").
        if !self.is_connected() {
            self.metrics.bus_dropped("disconnected");
            return;
        }
        match self.out.try_send(message.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.bus_dropped("queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.bus_dropped("stopped"),
        }
    }

    fn set_interest(&self, channel: ChannelKey, subjects: BTreeSet<String>) {
        let _ = self.interest.send((channel, subjects));
    }

    fn durable(&self) -> Option<&super::DurableOut> {
        self.durable.as_ref()
    }
}

/// The store of QoS 1/2 messages for persistent sessions, where configured.
fn start_durable(
    config: &NatsConfig,
    client: &async_nats::Client,
    metrics: &Arc<Metrics>,
    tasks: &mut Vec<AbortHandle>,
) -> Option<super::DurableOut> {
    let durable = config.durable.clone()?;
    let (out, task) = super::DurableOut::start(
        client.clone(),
        config.node_id.clone(),
        durable,
        metrics.clone(),
    );
    tasks.push(task);
    Some(out)
}

/// Sends local publishes to NATS in order, and hands retained ones to the KV writer.
async fn publisher(
    ctx: Arc<Ctx>,
    mut rx: mpsc::Receiver<Message>,
    retained: mpsc::Sender<(String, Message)>,
) {
    // Increasing across restarts of this pod, so receivers never take a new message for an old.
    let mut sequence = crate::router::now_ns();
    while let Some(message) = rx.recv().await {
        let Some(subject) = std::str::from_utf8(&message.topic)
            .ok()
            .and_then(topic_subject)
        else {
            continue;
        };
        sequence += 1;
        let Some(bytes) = bus_message::encode(&message, &ctx.node_id, sequence) else {
            continue;
        };
        if message.retain && retained.try_send((subject.clone(), message)).is_err() {
            ctx.metrics.bus_dropped("retained_queue_full");
        }
        match ctx.client.publish(subject, bytes.into()).await {
            Ok(()) => ctx.metrics.bus_published(),
            Err(_) => ctx.metrics.bus_dropped("publish_failed"),
        }
    }
}

/// Writes retained messages to the KV bucket (an empty payload deletes the key).
async fn retained_writer(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<(String, Message)>) {
    let mut bucket = ctx.retained.subscribe();
    while let Some((key, message)) = rx.recv().await {
        // Until the bucket is open, writes wait here and later ones queue (or are dropped as
        // `retained_queue_full`).
        let Ok(store) = bucket.wait_for(Option::is_some).await.map(|s| s.clone()) else {
            return;
        };
        let Some(store) = store else { continue };
        let written = if message.payload.is_empty() {
            store.delete(&key).await.map_err(|e| e.to_string())
        } else {
            match bus_message::encode(&message, &ctx.node_id, 0) {
                Some(bytes) => store
                    .put(&key, bytes.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => continue,
            }
        };
        if let Err(e) = written {
            ctx.metrics.bus_dropped("retained_write_failed");
            tracing::warn!(error = %e, key, "could not store a retained message in NATS KV");
        }
    }
}

/// Keeps the NATS subscriptions equal to what local subscribers need.
async fn subscriptions(
    ctx: Arc<Ctx>,
    mut rx: mpsc::UnboundedReceiver<(ChannelKey, BTreeSet<String>)>,
) {
    let mut by_channel: HashMap<ChannelKey, BTreeSet<String>> = HashMap::new();
    let mut readers: HashMap<String, AbortHandle> = HashMap::new();
    while let Some((channel, wanted)) = rx.recv().await {
        let current = by_channel.remove(&channel).unwrap_or_default();
        let mut added = false;
        for subject in wanted.difference(&current) {
            match ctx.client.subscribe(subject.clone()).await {
                Ok(sub) => {
                    let task = tokio::spawn(reader(ctx.clone(), sub));
                    readers.insert(subject.clone(), task.abort_handle());
                    added = true;
                }
                Err(e) => tracing::warn!(error = %e, subject, "could not subscribe on NATS"),
            }
        }
        // New subscriptions first, so nothing falls between the old and the new; what
        // arrives on both is delivered once (bus_message::Seen).
        if added && !current.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ctx.client.flush()).await;
        }
        for subject in current.difference(&wanted) {
            // Dropping the subscriber unsubscribes.
            if let Some(task) = readers.remove(subject) {
                task.abort();
            }
        }
        if !wanted.is_empty() {
            by_channel.insert(channel, wanted);
        }
    }
}

/// Delivers what one NATS subscription receives to the local router.
async fn reader(ctx: Arc<Ctx>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        match bus_message::decode(&msg.payload) {
            Ok(Some(r)) => {
                if r.origin_pod == ctx.node_id {
                    continue;
                }
                if !ctx.seen.lock().first_time(&r.origin_pod, r.sequence) {
                    ctx.metrics.bus_dropped("duplicate");
                    continue;
                }
                ctx.metrics.bus_received();
                (ctx.inbound.deliver)(r.message);
            }
            Ok(None) => ctx.metrics.bus_dropped("expired"),
            Err(e) => {
                ctx.metrics.bus_dropped("undecodable");
                tracing::warn!(error = %e, subject = %msg.subject, "dropped a bus message");
            }
        }
    }
}

/// Opens (or creates) the retained bucket and mirrors it into the local retained store, again
/// after every interruption.
async fn retained_watch(ctx: Arc<Ctx>, bucket: String, max: Duration) {
    let mut waits = retry_waits(max);
    let mut warned = false;
    loop {
        let js = jetstream::new(ctx.client.clone());
        let store = match js.get_key_value(bucket.clone()).await {
            Ok(s) => Ok(s),
            Err(_) => {
                let about = "Fleetward retained messages, keyed by bus subject";
                create_bucket(&js, &bucket, about, Duration::ZERO).await
            }
        };
        let watch = match store {
            Ok(store) => {
                ctx.retained.send_replace(Some(store.clone()));
                store
                    .watch_with_history(">")
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        match watch {
            Ok(mut watch) => {
                waits = retry_waits(max);
                warned = false;
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry) => apply(&ctx, entry),
                        Err(e) => {
                            tracing::warn!(error = %e, "the retained-message watch broke");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                // Once at warn, then quietly: a NATS without JetStream stays usable for live
                // messages, only retained messages stay per pod.
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(
                        error = %e,
                        bucket,
                        "retained messages cannot cross pods until NATS JetStream is reachable (run nats-server with -js)"
                    );
                }
            }
        }
        tokio::time::sleep(waits.next().unwrap_or(max)).await;
    }
}

/// Creates a KV bucket (the retained messages, the refresh-token families): the stream a KV
/// bucket is, as `create_key_value` makes it, which itself cannot parse the account info of the
/// nats-server 2.9 that Debian ships. `max_age` zero keeps entries until replaced.
pub(crate) async fn create_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    let created = js
        .get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(description.into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        return Err(format!("creating the KV bucket {bucket}: {e}"));
    }
    js.get_key_value(bucket)
        .await
        .map_err(|e| format!("opening the KV bucket {bucket}: {e}"))
}

fn apply(ctx: &Ctx, entry: kv::Entry) {
    let message = match entry.operation {
        kv::Operation::Put => match bus_message::decode(&entry.value) {
            Ok(Some(r)) => Some(r.message),
            // Expired: nothing to serve.
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, key = %entry.key, "an undecodable retained message");
                return;
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    let Some(topic) = subject_topic(&entry.key) else {
        return;
    };
    let Some((tenant, channel)) = super::subject::channel_of(&topic) else {
        return;
    };
    let message = message.unwrap_or_else(|| cleared(topic.clone()));
    (ctx.inbound.retain)(&tenant, &channel, &topic, message);
}

/// The retained message that clears `topic`'s: an empty payload with the retain flag.
fn cleared(topic: String) -> Message {
    Message {
        stored: false,
        id: crate::router::MessageId::new(crate::router::now_ns()),
        topic: topic.into(),
        payload: bytes::Bytes::new(),
        qos: 0,
        props: None,
        retain: true,
        origin: None,
        publisher: None,
        protocol: crate::router::Protocol::Unspecified,
        created_ns: 0,
    }
}
