//! The writer's side of the stream: one durable pull consumer shared by every replica, fed
//! through batches into the store, acknowledged only after the commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt as _;
use tokio::sync::watch;

use super::{STREAM, wire};
use crate::writer::{WriterStats, insert_until_stored};
use crate::{Record, Store};

/// How a writer consumes.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// The durable consumer's name; replicas that share it share the work.
    pub durable: String,
    /// The most records one transaction carries.
    pub max_batch: usize,
    /// How long one fetch waits for a full batch before it stores what it has.
    pub max_wait: Duration,
    /// How long JetStream waits for an ack before it redelivers (to any replica). While a
    /// batch is retried against a store that is down, the writer tells JetStream it is
    /// still working on it, so this only runs out when the writer is gone.
    pub ack_wait: Duration,
    /// Records delivered and not acknowledged, across replicas, before JetStream waits.
    pub max_ack_pending: i64,
    /// How often the backlog gauge is read.
    pub backlog_every: Duration,
    /// After a stop is asked for, how long a batch the store refuses is retried before it
    /// is handed back to JetStream for another replica.
    pub stop_grace: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            durable: super::DURABLE.to_owned(),
            max_batch: 1_000,
            max_wait: Duration::from_millis(100),
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 20_000,
            backlog_every: Duration::from_secs(5),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// What the writer has done.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Rows, batches and failed attempts.
    pub writer: WriterStats,
    /// Stream messages that are not records (terminated: never redelivered).
    pub undecodable: AtomicU64,
    /// Records in the stream not yet acknowledged: waiting, and delivered to a writer.
    pub backlog_messages: AtomicU64,
    /// The stream's bytes (a work queue holds only what no writer has acknowledged).
    pub backlog_bytes: AtomicU64,
}

/// The backlog at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Records waiting or delivered and unacknowledged.
    pub messages: u64,
    /// The stream's bytes.
    pub bytes: u64,
}

/// Reads the backlog of the durable consumer.
pub async fn backlog(js: &jetstream::Context, durable: &str) -> Result<Backlog, async_nats::Error> {
    let mut stream = js.get_stream(STREAM).await?;
    let consumer = stream.consumer_info(durable).await?;
    let bytes = stream.info().await?.state.bytes;
    Ok(Backlog {
        messages: consumer.num_pending + consumer.num_ack_pending as u64,
        bytes,
    })
}

/// Stores what the stream holds until `stop` turns true; the batch in hand is finished
/// first. The stream is made by [`super::ensure_stream`]; until it can be opened (NATS or
/// JetStream not up yet) this retries.
pub async fn consume<S: Store>(
    js: jetstream::Context,
    store: &S,
    config: &ConsumerConfig,
    stats: Arc<ConsumerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut wait = Duration::from_millis(100);
    let consumer = loop {
        match open(&js, config).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "history: cannot open the stream {STREAM}'s consumer yet; retrying");
                if tokio::time::timeout(wait, stop.wait_for(|s| *s))
                    .await
                    .is_ok()
                {
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    };
    let gauge = tokio::spawn(watch_backlog(
        js.clone(),
        config.durable.clone(),
        config.backlog_every,
        stats.clone(),
    ))
    .abort_handle();
    let mut wait = Duration::from_millis(100);
    while !*stop.borrow() {
        let messages = match fetch(&consumer, config).await {
            Ok(m) => {
                wait = Duration::from_millis(100);
                m
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "history: could not fetch from the stream; retrying");
                let _ = tokio::time::timeout(wait, stop.changed()).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        store_batch(store, messages, config, &stats, &mut stop).await;
    }
    gauge.abort();
}

async fn open(
    js: &jetstream::Context,
    config: &ConsumerConfig,
) -> Result<PullConsumer, async_nats::Error> {
    let stream = js.get_stream(STREAM).await?;
    Ok(stream
        .get_or_create_consumer(
            &config.durable,
            pull::Config {
                durable_name: Some(config.durable.clone()),
                description: Some("fleetward writer: stores history records".to_owned()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
                max_deliver: -1,
                ..pull::Config::default()
            },
        )
        .await?)
}

/// One batch: up to `max_batch` messages, waiting at most `max_wait` for them.
async fn fetch(
    consumer: &PullConsumer,
    config: &ConsumerConfig,
) -> Result<Vec<jetstream::Message>, async_nats::Error> {
    let batch = consumer
        .batch()
        .max_messages(config.max_batch.max(1))
        .expires(config.max_wait)
        .messages()
        .await?;
    // The server ends the batch at `max_wait`; the timeout only guards a lost connection.
    let deadline = config.max_wait + Duration::from_secs(5);
    let mut out = Vec::with_capacity(config.max_batch);
    let collect = async {
        let mut batch = batch;
        while let Some(m) = batch.next().await {
            out.push(m?);
        }
        Ok::<_, async_nats::Error>(())
    };
    match tokio::time::timeout(deadline, collect).await {
        Ok(r) => r?,
        Err(_) => tracing::debug!("history: a fetch outlived its expiry; storing what came"),
    }
    Ok(out)
}

async fn store_batch<S: Store>(
    store: &S,
    messages: Vec<jetstream::Message>,
    config: &ConsumerConfig,
    stats: &ConsumerStats,
    stop: &mut watch::Receiver<bool>,
) {
    if messages.is_empty() {
        return;
    }
    let mut records: Vec<Record> = Vec::with_capacity(messages.len());
    let mut kept = Vec::with_capacity(messages.len());
    for m in messages {
        match wire::decode(&m.payload) {
            Ok(r) => {
                records.push(r);
                kept.push(m);
            }
            Err(e) => {
                stats.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %m.subject, error = %e, "history: a stream message is not a record; dropping it");
                let _ = m.ack_with(AckKind::Term).await;
            }
        }
    }
    if records.is_empty() {
        return;
    }
    if stored_or_stopped(store, &records, &kept, config, stats, stop).await {
        for m in &kept {
            // A lost ack means a redelivery, which the store skips by id.
            if let Err(e) = m.ack().await {
                tracing::debug!(error = %e, "history: an ack was not sent; the record will be redelivered and skipped");
            }
        }
    } else {
        for m in &kept {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// Stores the batch, telling JetStream every third of `ack_wait` that it is still in hand.
/// `false` when a stop came and the store still refused the batch `stop_grace` later.
async fn stored_or_stopped<S: Store>(
    store: &S,
    records: &[Record],
    messages: &[jetstream::Message],
    config: &ConsumerConfig,
    stats: &ConsumerStats,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let insert = insert_until_stored(store, records, &stats.writer);
    tokio::pin!(insert);
    let every = (config.ack_wait / 3).max(Duration::from_millis(100));
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut give_up: Option<tokio::time::Instant> = None;
    loop {
        let until = give_up.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = &mut insert => return true,
            _ = progress.tick() => {
                for m in messages {
                    let _ = m.ack_with(AckKind::Progress).await;
                }
            }
            r = stop.changed(), if give_up.is_none() => {
                if r.is_err() || *stop.borrow() {
                    give_up = Some(tokio::time::Instant::now() + config.stop_grace);
                }
            }
            () = tokio::time::sleep_until(until), if give_up.is_some() => {
                tracing::warn!(records = records.len(), "history: stopping while the store refuses a batch; handing it back to the stream");
                return false;
            }
        }
    }
}

async fn watch_backlog(
    js: jetstream::Context,
    durable: String,
    every: Duration,
    stats: Arc<ConsumerStats>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match backlog(&js, &durable).await {
            Ok(b) => {
                stats.backlog_messages.store(b.messages, Ordering::Relaxed);
                stats.backlog_bytes.store(b.bytes, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "history: could not read the backlog"),
        }
    }
}
