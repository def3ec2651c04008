//! The dataplane's side of the stream: a bounded queue that never blocks the publish path,
//! and a task that publishes each record with its id as `Nats-Msg-Id`, keeps many acks in
//! flight, and retries what failed with backoff until JetStream has stored it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, publish::PublishAck};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{subject, wire};
use crate::Record;
use crate::writer::Full;

/// How the publisher queues and retries.
#[derive(Clone, Copy, Debug)]
pub struct PublisherConfig {
    /// Records the queue holds before [`Publisher::offer`] refuses more.
    pub queue: usize,
    /// Publishes awaiting JetStream's ack at once.
    pub in_flight: usize,
    /// The longest wait between retries (doubling from 100 ms).
    pub max_backoff: Duration,
    /// Bytes ([`Record::stored_bytes`]) queued and unacknowledged records hold before
    /// [`Publisher::offer`] refuses more.
    pub max_queued_bytes: u64,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            queue: 65_536,
            in_flight: 1_024,
            max_backoff: Duration::from_secs(5),
            max_queued_bytes: crate::writer::DEFAULT_MAX_QUEUED_BYTES,
        }
    }
}

/// What the publisher has done, for the dataplane's metrics.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Records JetStream acknowledged (stored, or a duplicate it already had).
    pub published: AtomicU64,
    /// Publish attempts that failed and were tried again (NATS down, the stream full or
    /// missing, an ack that timed out).
    pub retried: AtomicU64,
    /// Records refused by [`Publisher::offer`]: the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Records dropped because they exceed the NATS server's `max_payload`.
    pub dropped_too_large: AtomicU64,
    /// Records accepted and not acknowledged by JetStream yet.
    pub queued: AtomicU64,
    /// What they hold, bytes.
    pub queued_bytes: AtomicU64,
}

/// Queues records for the stream.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<Record>,
    stats: Arc<PublisherStats>,
    task: AbortHandle,
    max_bytes: u64,
}

impl Publisher {
    /// Starts the publishing task. The stream is made by `fleetward writer`; until it
    /// exists publishes are retried.
    pub fn start(js: jetstream::Context, config: PublisherConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let stats = Arc::new(PublisherStats::default());
        let task = tokio::spawn(run(js, rx, config, stats.clone())).abort_handle();
        let max_bytes = config.max_queued_bytes;
        Self {
            tx,
            stats,
            task,
            max_bytes,
        }
    }

    /// Queues a record without waiting; refused (and counted) when the queue is full, in
    /// records or bytes.
    pub fn offer(&self, record: Record) -> Result<(), Full> {
        let held = &self.stats.queued_bytes;
        match crate::writer::offer_within(&self.tx, held, self.max_bytes, record) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                Err(Full)
            }
        }
    }

    /// The publisher's figures.
    pub fn stats(&self) -> &Arc<PublisherStats> {
        &self.stats
    }

    /// Stops the task; what is queued and not acknowledged is lost.
    pub fn abort(&self) {
        self.task.abort();
    }
}

type Acked = Pin<Box<dyn Future<Output = (Record, Result<PublishAck, String>)> + Send>>;

/// Doubling waits from 100 ms up to a cap; reset by a success.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);

    fn wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

struct Task {
    js: jetstream::Context,
    stats: Arc<PublisherStats>,
    /// Records to (re)send before taking more from the queue.
    ready: VecDeque<Record>,
    in_flight: FuturesUnordered<Acked>,
    backoff: Backoff,
    paused_until: Option<Instant>,
}

async fn run(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Record>,
    config: PublisherConfig,
    stats: Arc<PublisherStats>,
) {
    let window = config.in_flight.max(1);
    let mut t = Task {
        js,
        stats,
        ready: VecDeque::new(),
        in_flight: FuturesUnordered::new(),
        backoff: Backoff {
            next: Backoff::MIN,
            max: config.max_backoff.max(Backoff::MIN),
        },
        paused_until: None,
    };
    let mut closed = false;
    loop {
        if t.paused_until.is_some_and(|at| at <= Instant::now()) {
            t.paused_until = None;
        }
        while t.paused_until.is_none() && t.in_flight.len() < window {
            let Some(record) = t.ready.pop_front() else {
                break;
            };
            t.send(record).await;
        }
        if closed && t.ready.is_empty() && t.in_flight.is_empty() {
            return;
        }
        let room = t.paused_until.is_none() && t.in_flight.len() < window && t.ready.is_empty();
        let resume = t.paused_until.unwrap_or_else(Instant::now);
        tokio::select! {
            Some((record, result)) = t.in_flight.next(), if !t.in_flight.is_empty() => {
                t.acked(record, result);
            }
            r = rx.recv(), if room && !closed => match r {
                Some(record) => t.ready.push_back(record),
                None => closed = true,
            },
            () = tokio::time::sleep_until(resume), if t.paused_until.is_some() => {
                t.paused_until = None;
            }
        }
    }
}

impl Task {
    async fn send(&mut self, record: Record) {
        let message = PublishMessage::build()
            .payload(wire::encode(&record))
            .message_id(record.id.to_string());
        match self
            .js
            .send_publish(subject(&record.tenant, &record.channel), message)
            .await
        {
            Ok(ack) => self.in_flight.push(Box::pin(async move {
                let result = ack.await.map_err(|e| e.to_string());
                (record, result)
            })),
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                self.stats.dropped_too_large.fetch_add(1, Ordering::Relaxed);
                self.done_with(&record);
                tracing::warn!(id = %record.id, tenant = %record.tenant, channel = %record.channel, error = %e,
                    "history: a record is larger than the NATS server's max_payload and is not kept; raise max_payload or lower the channel's maxMessageSize");
            }
            Err(e) => self.retry(record, &e.to_string()),
        }
    }

    /// Gives back what a record held in the queue.
    fn done_with(&self, record: &Record) {
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        let bytes = record.stored_bytes();
        self.stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn acked(&mut self, record: Record, result: Result<PublishAck, String>) {
        match result {
            Ok(_) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                self.done_with(&record);
                self.backoff.reset();
            }
            Err(e) => self.retry(record, &e),
        }
    }

    /// Puts a record back and pauses sending: failures are nearly always shared (NATS
    /// down, the stream full), so the next attempt waits.
    fn retry(&mut self, record: Record, error: &str) {
        self.stats.retried.fetch_add(1, Ordering::Relaxed);
        self.ready.push_back(record);
        if self.paused_until.is_none() {
            let wait = self.backoff.wait();
            tracing::warn!(%error, retry_in = ?wait, queued = self.stats.queued.load(Ordering::Relaxed),
                "history: JetStream did not take a record; retrying (is fleetward writer running, and the stream below its limit?)");
            self.paused_until = Some(Instant::now() + wait);
        }
    }
}
