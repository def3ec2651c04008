//! The JetStream stream with a real nats-server: the dataplane's publisher, the writer's
//! durable consumer, and what happens when NATS, the store or a writer goes away.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetward_history::stream::{
    self, ConsumerConfig, ConsumerStats, Publisher, PublisherConfig, StreamConfig,
};
use fleetward_history::{
    ChannelStats, Error, Kept, MessageId, Record, Scan, SqliteStore, Store, Swept,
};
use tokio::sync::watch;

use crate::nats::Nats;

/// The SQLite store behind a switch that makes every insert fail, as a store that is down.
#[derive(Clone)]
struct Switched {
    inner: SqliteStore,
    down: Arc<AtomicBool>,
    inserts: Arc<AtomicU64>,
}

impl Store for Switched {
    async fn migrate(&self) -> Result<(), Error> {
        self.inner.migrate().await
    }
    async fn insert(&self, batch: &[Record]) -> Result<u64, Error> {
        self.inserts.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Corrupt("the test switched the store off".into()));
        }
        self.inner.insert(batch).await
    }
    async fn scan(&self, scan: &Scan) -> Result<Vec<Record>, Error> {
        self.inner.scan(scan).await
    }
    async fn sweep(&self, kept: &[Kept], now_ns: u64) -> Result<Swept, Error> {
        self.inner.sweep(kept, now_ns).await
    }
    async fn stats(&self) -> Result<Vec<ChannelStats>, Error> {
        self.inner.stats().await
    }
}

async fn store(dir: &tempfile::TempDir) -> Switched {
    let inner = SqliteStore::open(&dir.path().join("history.db"))
        .await
        .expect("a SQLite store");
    inner.migrate().await.expect("migrations");
    Switched {
        inner,
        down: Arc::default(),
        inserts: Arc::default(),
    }
}

fn record(n: u64) -> Record {
    let at = fleetward_history::now_ns();
    Record {
        id: MessageId::new(at),
        tenant: "acme".into(),
        channel: "temp".into(),
        channel_uid: "uid-1".into(),
        subtopic: format!("/dev/{}", n % 7),
        payload: Bytes::from(format!("{n:064}")),
        qos: 1,
        content_type: None,
        publisher: Some("sensor".into()),
        publisher_kind: Some("thing".into()),
        protocol: "mqtt".into(),
        created_ns: at,
        user_properties: vec![("n".into(), n.to_string())],
    }
}

/// Every id the store holds for acme/temp, and how many rows that is.
async fn stored_ids(store: &impl Store) -> (usize, BTreeSet<MessageId>) {
    let mut ids = BTreeSet::new();
    let mut rows = 0;
    let mut after = None;
    loop {
        let page = store
            .scan(&Scan {
                tenant: "acme".into(),
                channel: "temp".into(),
                channel_uid: "uid-1".into(),
                prefix: String::new(),
                exact: false,
                after,
                min: None,
                max: None,
                order: fleetward_history::Order::Asc,
                limit: 1000,
            })
            .await
            .expect("a scan");
        let Some(last) = page.last() else {
            return (rows, ids);
        };
        after = Some(last.id);
        rows += page.len();
        ids.extend(page.iter().map(|r| r.id));
    }
}

async fn wait_for(what: &str, deadline: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !ok().await {
        assert!(Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A writer replica: `consume` in a task, stopped through its switch.
struct Writer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<ConsumerStats>,
}

fn writer(js: &async_nats::jetstream::Context, store: &Switched, config: ConsumerConfig) -> Writer {
    let (stop, rx) = watch::channel(false);
    let stats = Arc::new(ConsumerStats::default());
    let (js, store, s) = (js.clone(), store.clone(), stats.clone());
    let task = tokio::spawn(async move {
        stream::consume(js, &store, &config, s, rx).await;
    });
    Writer { stop, task, stats }
}

fn fast() -> ConsumerConfig {
    ConsumerConfig {
        ack_wait: Duration::from_secs(3),
        backlog_every: Duration::from_millis(200),
        ..ConsumerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_records_are_stored_once_and_acknowledged_after_the_commit() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    stream::ensure_stream(&js, &StreamConfig::default())
        .await
        .expect("the stream");
    let dir = tempfile::tempdir().expect("a directory");
    let store = store(&dir).await;
    let publisher = Publisher::start(js.clone(), PublisherConfig::default());
    let records: Vec<Record> = (0..3000).map(record).collect();
    for r in &records {
        publisher.offer(r.clone()).expect("room in the queue");
    }
    // Published twice (a dataplane's retry): JetStream drops the copies by Nats-Msg-Id.
    for r in &records[..100] {
        publisher.offer(r.clone()).expect("room in the queue");
    }
    let w = writer(&js, &store, fast());
    wait_for("every record stored", Duration::from_secs(60), async || {
        stored_ids(&store).await.0 >= records.len()
    })
    .await;
    let (rows, ids) = stored_ids(&store).await;
    assert_eq!(rows, records.len());
    assert_eq!(ids, records.iter().map(|r| r.id).collect());
    let back = store
        .scan(&Scan {
            tenant: "acme".into(),
            channel: "temp".into(),
            channel_uid: "uid-1".into(),
            prefix: "/dev/3".into(),
            exact: true,
            after: None,
            min: None,
            max: None,
            order: fleetward_history::Order::Asc,
            limit: 1,
        })
        .await
        .expect("a scan");
    assert_eq!(back.first(), Some(&records[3]), "a record reads back whole");
    wait_for("the backlog drains", Duration::from_secs(30), async || {
        w.stats.backlog_messages.load(Ordering::Relaxed) == 0
            && w.stats.backlog_bytes.load(Ordering::Relaxed) == 0
            && publisher.stats().queued.load(Ordering::Relaxed) == 0
    })
    .await;
    assert_eq!(
        w.stats.writer.written.load(Ordering::Relaxed),
        records.len() as u64
    );
    assert_eq!(publisher.stats().published.load(Ordering::Relaxed), 3100);
    let _ = w.stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), w.task)
        .await
        .expect("the writer stops when asked")
        .expect("the writer task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_is_down_the_stream_holds_the_backlog_and_nothing_is_lost() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    stream::ensure_stream(&js, &StreamConfig::default())
        .await
        .expect("the stream");
    let dir = tempfile::tempdir().expect("a directory");
    let store = store(&dir).await;
    store.down.store(true, Ordering::SeqCst);
    let w = writer(&js, &store, fast());
    let publisher = Publisher::start(js.clone(), PublisherConfig::default());
    let records: Vec<Record> = (0..2000).map(record).collect();
    for r in &records {
        publisher.offer(r.clone()).expect("room in the queue");
    }
    wait_for(
        "the backlog gauge shows the records",
        Duration::from_secs(30),
        async || {
            w.stats.backlog_messages.load(Ordering::Relaxed) == records.len() as u64
                && w.stats.backlog_bytes.load(Ordering::Relaxed) > 2000 * 64
        },
    )
    .await;
    // Longer than ack_wait: the writer's progress acks keep the batch its own.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(w.stats.writer.failures.load(Ordering::Relaxed) >= 2);
    assert_eq!(stored_ids(&store).await.0, 0);
    store.down.store(false, Ordering::SeqCst);
    wait_for("every record stored", Duration::from_secs(60), async || {
        stored_ids(&store).await.0 >= records.len()
    })
    .await;
    let (rows, ids) = stored_ids(&store).await;
    assert_eq!(rows, records.len());
    assert_eq!(ids, records.iter().map(|r| r.id).collect());
    assert_eq!(
        w.stats.writer.written.load(Ordering::Relaxed),
        records.len() as u64,
        "no record was redelivered to the writer that was retrying it"
    );
    wait_for("the backlog drains", Duration::from_secs(30), async || {
        w.stats.backlog_messages.load(Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_and_a_nats_outage_make_the_publisher_retry_not_drop() {
    let mut nats = Nats::start().await;
    let js = nats.jetstream().await;
    let dir = tempfile::tempdir().expect("a directory");
    let store = store(&dir).await;
    let publisher = Publisher::start(
        js.clone(),
        PublisherConfig {
            max_backoff: Duration::from_millis(500),
            ..PublisherConfig::default()
        },
    );
    // No writer has made the stream yet: JetStream has no responder for the subject.
    let mut records: Vec<Record> = (0..1000).map(record).collect();
    for r in &records {
        publisher.offer(r.clone()).expect("room in the queue");
    }
    wait_for(
        "the publisher retries",
        Duration::from_secs(30),
        async || publisher.stats().retried.load(Ordering::Relaxed) > 0,
    )
    .await;
    assert_eq!(publisher.stats().published.load(Ordering::Relaxed), 0);
    stream::ensure_stream(&js, &StreamConfig::default())
        .await
        .expect("the stream");
    wait_for(
        "the queue drains into the stream",
        Duration::from_secs(30),
        async || publisher.stats().published.load(Ordering::Relaxed) == 1000,
    )
    .await;
    nats.stop();
    let more: Vec<Record> = (1000..1200).map(record).collect();
    for r in &more {
        publisher.offer(r.clone()).expect("room in the queue");
    }
    records.extend(more);
    nats.restart().await;
    let w = writer(&js, &store, fast());
    wait_for("every record stored", Duration::from_secs(60), async || {
        stored_ids(&store).await.0 >= records.len()
    })
    .await;
    let (rows, ids) = stored_ids(&store).await;
    assert_eq!(rows, records.len());
    assert_eq!(ids, records.iter().map(|r| r.id).collect());
    assert_eq!(
        publisher.stats().dropped_too_large.load(Ordering::Relaxed),
        0
    );
    assert_eq!(publisher.stats().queued.load(Ordering::Relaxed), 0);
    let _ = w.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_batch_leaves_its_records_to_another_replica() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    stream::ensure_stream(&js, &StreamConfig::default())
        .await
        .expect("the stream");
    let dir = tempfile::tempdir().expect("a directory");
    let store = store(&dir).await;
    let publisher = Publisher::start(js.clone(), PublisherConfig::default());
    let records: Vec<Record> = (0..1500).map(record).collect();
    for r in &records {
        publisher.offer(r.clone()).expect("room in the queue");
    }
    wait_for(
        "the stream holds every record",
        Duration::from_secs(30),
        async || publisher.stats().published.load(Ordering::Relaxed) == records.len() as u64,
    )
    .await;
    // The first replica takes a batch and dies before it commits (its task is aborted
    // while the store refuses, so it never acknowledges).
    store.down.store(true, Ordering::SeqCst);
    let first = writer(&js, &store, fast());
    wait_for(
        "the first replica holds a batch",
        Duration::from_secs(30),
        async || store.inserts.load(Ordering::SeqCst) > 0,
    )
    .await;
    first.task.abort();
    store.down.store(false, Ordering::SeqCst);
    let second = writer(&js, &store, fast());
    wait_for("every record stored", Duration::from_secs(60), async || {
        stored_ids(&store).await.0 >= records.len()
    })
    .await;
    let (rows, ids) = stored_ids(&store).await;
    assert_eq!(rows, records.len());
    assert_eq!(ids, records.iter().map(|r| r.id).collect());
    assert_eq!(first.stats.writer.written.load(Ordering::Relaxed), 0);
    let _ = second.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_message_that_is_not_a_record_is_dropped_not_redelivered() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    stream::ensure_stream(&js, &StreamConfig::default())
        .await
        .expect("the stream");
    let ack = js
        .publish(
            stream::subject("acme", "temp"),
            Bytes::from_static(b"\x07junk"),
        )
        .await
        .expect("a publish");
    ack.await.expect("stored");
    let dir = tempfile::tempdir().expect("a directory");
    let store = store(&dir).await;
    let publisher = Publisher::start(js.clone(), PublisherConfig::default());
    let good = record(1);
    publisher.offer(good.clone()).expect("room");
    let w = writer(&js, &store, fast());
    wait_for(
        "the record stored and the junk gone",
        Duration::from_secs(30),
        async || {
            stored_ids(&store).await.0 == 1 && w.stats.backlog_messages.load(Ordering::Relaxed) == 0
        },
    )
    .await;
    assert_eq!(w.stats.undecodable.load(Ordering::Relaxed), 1);
    assert_eq!(stored_ids(&store).await.1, BTreeSet::from([good.id]));
    let _ = w.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_store_is_down_hands_the_batch_back() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    stream::ensure_stream(&js, &StreamConfig::default())
        .await
        .expect("the stream");
    let dir = tempfile::tempdir().expect("a directory");
    let store = store(&dir).await;
    store.down.store(true, Ordering::SeqCst);
    let publisher = Publisher::start(js.clone(), PublisherConfig::default());
    let records: Vec<Record> = (0..200).map(record).collect();
    for r in &records {
        publisher.offer(r.clone()).expect("room");
    }
    let config = ConsumerConfig {
        // Long enough that only the NAK can explain a prompt redelivery.
        ack_wait: Duration::from_secs(120),
        stop_grace: Duration::from_millis(500),
        ..fast()
    };
    let first = writer(&js, &store, config.clone());
    wait_for(
        "the first replica holds a batch",
        Duration::from_secs(30),
        async || first.stats.writer.failures.load(Ordering::Relaxed) > 0,
    )
    .await;
    let _ = first.stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), first.task)
        .await
        .expect("the writer stops within its grace")
        .expect("the writer task");
    store.down.store(false, Ordering::SeqCst);
    let second = writer(&js, &store, config);
    wait_for("every record stored", Duration::from_secs(30), async || {
        stored_ids(&store).await.0 >= records.len()
    })
    .await;
    assert_eq!(stored_ids(&store).await.0, records.len());
    let _ = second.stop.send(true);
}
