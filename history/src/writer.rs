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
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 1_000,
            max_delay: Duration::from_millis(20),
            queue: 65_536,
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
}

/// The dataplane's side of the in-process writer.
#[derive(Clone, Debug)]
pub struct Sink {
    tx: mpsc::Sender<Record>,
    stats: Arc<WriterStats>,
}

/// The queue is full: the store is slower than the messages, or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the history writer's queue is full")]
pub struct Full;

impl Sink {
    /// Queues a record; refused (and counted) when the queue is full or the writer is gone.
    pub fn offer(&self, record: Record) -> Result<(), Full> {
        match self.tx.try_send(record) {
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
    (Sink { tx, stats }, rx)
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
