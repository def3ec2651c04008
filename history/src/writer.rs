//! The batching writer: records in, multi-row transactions out.
//!
//! In `fleetward start` the dataplane hands records to a [`Sink`] and [`run`] writes them to
//! the embedded store; `fleetward writer` feeds its JetStream consumer's messages through
//! [`Batcher`] the same way. A failed insert is retried with backoff and nothing is dropped:
//! while the store is down the queue fills, and a full queue refuses new records, which the
//! dataplane answers as a busy server.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{ChannelStats, Kept, Record, Store};

/// How the writer batches.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// The most records one transaction carries.
    pub max_batch: usize,
    /// How long the first record of a batch waits for more.
    pub max_delay: Duration,
    /// Records the queue holds before a [`Sink`] refuses more.
    pub queue: usize,
    /// Bytes ([`Record::stored_bytes`]) the queue and the batch in hand hold before a
    /// [`Sink`] refuses more.
    pub max_queued_bytes: u64,
}

/// The default of every history queue's byte bound: 64 MiB a pod, whatever the messages' size
/// (65,536 messages of 1 MiB would be 64 GiB).
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 64 << 20;

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 1_000,
            max_delay: Duration::from_millis(20),
            queue: 65_536,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
        }
    }
}

/// What the writer has done, for its metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Rows written (new rows only: a redelivered record is not counted twice).
    pub written: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Insert attempts that failed (each retried).
    pub failures: AtomicU64,
    /// Records refused because the queue was full.
    pub refused: AtomicU64,
    /// Records queued and not written yet.
    pub backlog: AtomicU64,
    /// What they hold, bytes.
    pub backlog_bytes: AtomicU64,
}

/// The dataplane's side of the in-process writer.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: mpsc::Sender<Record>,
    stats: Arc<WriterStats>,
    max_bytes: u64,
}

/// The queue is full: the store is slower than the messages, or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the history writer's queue is full")]
pub struct Full;

impl Sink {
    /// Queues a record; refused (and counted) when the queue is full or the writer is gone.
    pub fn offer(&self, record: Record) -> Result<(), Full> {
        match offer_within(&self.tx, &self.stats.backlog_bytes, self.max_bytes, record) {
            Ok(()) => {
                self.stats.backlog.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(Full)
            }
        }
    }

    /// The writer's figures.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }
}

/// A sink and the receiving end [`run`] writes from.
pub fn channel(config: &WriterConfig) -> (Sink, mpsc::Receiver<Record>) {
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let stats = Arc::new(WriterStats::default());
    let max_bytes = config.max_queued_bytes;
    (
        Sink {
            tx,
            stats,
            max_bytes,
        },
        rx,
    )
}

/// Queues `record` on `tx` unless the queue is full or the bytes `held` (by what is queued
/// and not done with) would pass `max`; the record's bytes stay in `held` until its holder
/// gives them back. A record alone always fits, so one larger than `max` still passes an
/// empty queue. Every history queue (the in-process writer's, the stream publisher's) takes
/// records here.
pub fn offer_within(
    tx: &mpsc::Sender<Record>,
    held: &AtomicU64,
    max: u64,
    record: Record,
) -> Result<(), Full> {
    let n = record.stored_bytes();
    held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
        (h == 0 || h.saturating_add(n) <= max).then_some(h + n)
    })
    .map_err(|_| Full)?;
    tx.try_send(record).map_err(|_| {
        held.fetch_sub(n, Ordering::Relaxed);
        Full
    })
}

/// Collects records into batches: at most `max_batch`, waiting at most `max_delay` after the
/// first.
pub struct Batcher {
    config: WriterConfig,
    batch: Vec<Record>,
    since: Option<Instant>,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(config: WriterConfig) -> Self {
        Self {
            batch: Vec::with_capacity(config.max_batch),
            config,
            since: None,
        }
    }

    /// Adds a record; `true` when the batch is full.
    pub fn push(&mut self, record: Record) -> bool {
        self.since.get_or_insert_with(Instant::now);
        self.batch.push(record);
        self.batch.len() >= self.config.max_batch
    }

    /// When the current batch is due, if it has anything.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.config.max_delay)
    }

    /// Takes the batch.
    pub fn take(&mut self) -> Vec<Record> {
        self.since = None;
        std::mem::replace(&mut self.batch, Vec::with_capacity(self.config.max_batch))
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

/// Inserts `batch` until it is committed, backing off from 100 ms to 5 s between attempts.
/// Returns the rows that were new.
pub async fn insert_until_stored<S: Store>(
    store: &S,
    batch: &[Record],
    stats: &WriterStats,
) -> u64 {
    let mut wait = Duration::from_millis(100);
    loop {
        match store.insert(batch).await {
            Ok(n) => {
                stats.written.fetch_add(n, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                return n;
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, records = batch.len(), retry_in = ?wait, "history: a batch could not be stored; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes what the sink queues until `stop` (or until every sink is dropped). On stop the
/// queue is closed, so later offers are refused (and the publishes with them), and everything
/// queued before is written: nothing accepted is lost at shutdown.
pub async fn run<S: Store>(
    store: S,
    mut rx: mpsc::Receiver<Record>,
    config: WriterConfig,
    stats: Arc<WriterStats>,
    stop: impl Future<Output = ()>,
) {
    let mut batcher = Batcher::new(config);
    let mut stop = std::pin::pin!(stop);
    let mut stopped = false;
    loop {
        let due = batcher.deadline();
        let record = tokio::select! {
            () = &mut stop, if !stopped => {
                stopped = true;
                rx.close();
                continue;
            }
            () = sleep_until(due), if due.is_some() => {
                flush(&store, &mut batcher, &stats).await;
                continue;
            }
            r = rx.recv() => r,
        };
        let Some(record) = record else {
            flush(&store, &mut batcher, &stats).await;
            return;
        };
        if batcher.push(record) {
            flush(&store, &mut batcher, &stats).await;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn flush<S: Store>(store: &S, batcher: &mut Batcher, stats: &WriterStats) {
    if batcher.is_empty() {
        return;
    }
    let batch = batcher.take();
    insert_until_stored(store, &batch, stats).await;
    stats
        .backlog
        .fetch_sub(batch.len() as u64, Ordering::Relaxed);
    let bytes = batch.iter().map(Record::stored_bytes).sum();
    stats.backlog_bytes.fetch_sub(bytes, Ordering::Relaxed);
}

/// Sweeps and counts every `every`: `kept` says which channels keep history now, `report`
/// takes what each holds (for the Channel's status).
pub async fn maintain<S: Store>(
    store: S,
    every: Duration,
    kept: impl Fn() -> Vec<Kept>,
    report: impl Fn(Vec<ChannelStats>),
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.sweep(&kept(), crate::now_ns()).await {
            Ok(swept) if swept != crate::Swept::default() => {
                tracing::info!(?swept, "history: swept");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "history: the sweep failed; retrying next time"),
        }
        match store.stats().await {
            Ok(stats) => report(stats),
            Err(e) => tracing::warn!(error = %e, "history: could not count what channels hold"),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::MessageId;

    fn record(payload: usize) -> Record {
        Record {
            id: MessageId::new(crate::now_ns()),
            tenant: "acme".into(),
            channel: "telemetry".into(),
            channel_uid: String::new(),
            subtopic: String::new(),
            payload: Bytes::from(vec![b'x'; payload]),
            qos: 1,
            content_type: None,
            publisher: None,
            publisher_kind: None,
            protocol: "mqtt".into(),
            created_ns: 0,
            user_properties: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_queue_refuses_past_its_bytes_and_takes_again_once_they_are_written() {
        let each = record(1_000).stored_bytes();
        let (sink, rx) = channel(&WriterConfig {
            max_queued_bytes: each * 3,
            ..WriterConfig::default()
        });
        for _ in 0..3 {
            sink.offer(record(1_000)).expect("within the bytes");
        }
        assert_eq!(sink.offer(record(1_000)), Err(Full), "past the bytes");
        assert_eq!(sink.stats().backlog_bytes.load(Ordering::Relaxed), each * 3);
        assert_eq!(sink.stats().refused.load(Ordering::Relaxed), 1);

        // The writer writes them: their bytes are given back.
        let dir = std::env::temp_dir().join(format!("fw-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let store = crate::SqliteStore::open(&dir.join("h.db"))
            .await
            .expect("opens");
        store.migrate().await.expect("migrates");
        let stats = sink.stats().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            store,
            rx,
            WriterConfig::default(),
            stats.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.written.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stats.backlog_bytes.load(Ordering::Relaxed), 0);
        sink.offer(record(1_000)).expect("room again");
        let _ = stop.send(());
        task.await.expect("the writer ends");
        assert_eq!(stats.written.load(Ordering::Relaxed), 4, "drained at stop");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_record_larger_than_the_bound_passes_an_empty_queue_only() {
        let (tx, _rx) = mpsc::channel(8);
        let held = AtomicU64::new(0);
        offer_within(&tx, &held, 100, record(1_000)).expect("alone, it fits");
        assert_eq!(offer_within(&tx, &held, 100, record(1)), Err(Full));
        assert_eq!(held.load(Ordering::Relaxed), record(1_000).stored_bytes());
    }
}
