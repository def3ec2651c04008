//! Message history on the publish path (`HTTP.md`, "Message history"): an accepted publish on a
//! channel with `spec.history` becomes a [`Record`] handed to this pod's sink, and the reader
//! pages through the pod's store.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fleetward_history::stream::Publisher;
use fleetward_history::writer::{Full, Sink, WriterStats};
use fleetward_history::{HistoryStore, Record};
use prometheus_client::encoding::DescriptorEncoder;

use crate::router::Message;

/// Where this pod's history records go.
#[derive(Clone, Debug, Default)]
pub enum HistorySink {
    /// Nowhere: this pod keeps no history (a channel that asks for it is logged once, and its
    /// records counted as dropped).
    #[default]
    Off,
    /// The in-process writer of `fleetward start` (its queue and its store).
    Local(Sink),
    /// The JetStream stream `fleetward writer` consumes (a dataplane with `--nats`).
    Stream(Publisher),
}

/// This pod's history: the sink records go to and the store the reader reads.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Where records go.
    pub sink: HistorySink,
    /// What `GET …/messages` reads; `None`: the reader answers 503 `no_history_store`.
    pub reader: Option<HistoryStore>,
}

/// The publish path's side of [`History`], with its counters.
#[derive(Debug, Default)]
pub(crate) struct HistoryTap {
    pub(crate) history: History,
    offered: AtomicU64,
    dropped: AtomicU64,
    warned: AtomicBool,
}

impl HistoryTap {
    pub(crate) fn new(history: History) -> Self {
        Self {
            history,
            ..Self::default()
        }
    }

    /// Hands on the record of `message`, accepted on a channel that keeps history. Refused
    /// only when the writer is behind (its queue is full): the publish is then refused too,
    /// so nothing accepted is missing from the history.
    pub(crate) fn offer(&self, message: &Message, at: Spans<'_>) -> Result<(), Full> {
        match &self.history.sink {
            HistorySink::Off => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        tenant = at.tenant,
                        channel = at.channel,
                        "a channel keeps history but this dataplane has no history store: its \
                         messages are delivered and not kept (run with --nats and the writer, \
                         or `fleetward start`)"
                    );
                }
                return Ok(());
            }
            HistorySink::Local(sink) => sink.offer(record_of(message, at))?,
            HistorySink::Stream(publisher) => publisher.offer(record_of(message, at))?,
        };
        self.offered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The writer's figures, if it runs in this process.
    fn writer(&self) -> Option<&Arc<WriterStats>> {
        match &self.history.sink {
            HistorySink::Local(sink) => Some(sink.stats()),
            _ => None,
        }
    }

    /// The stream publisher's metrics.
    fn encode_stream(p: &Publisher, e: &mut DescriptorEncoder) -> fmt::Result {
        use crate::metrics::{counter, gauge};
        let s = p.stats();
        counter(
            e,
            "fleetward_history_stream_published",
            "History records JetStream stored.",
            s.published.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "fleetward_history_stream_retries",
            "History record publishes to JetStream that failed and were tried again.",
            s.retried.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "fleetward_history_refused",
            "Publishes refused because the history queue was full.",
            s.dropped_queue_full.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "fleetward_history_stream_too_large",
            "History records over the NATS server's max_payload, not stored.",
            s.dropped_too_large.load(Ordering::Relaxed),
        )?;
        gauge(
            e,
            "fleetward_history_backlog",
            "History records waiting for JetStream's ack.",
            s.queued.load(Ordering::Relaxed),
        )?;
        gauge(
            e,
            "fleetward_history_backlog_bytes",
            "What the history records waiting for JetStream's ack hold, bytes.",
            s.queued_bytes.load(Ordering::Relaxed),
        )
    }

    /// Waits, at most `bound`, until JetStream acknowledged every record handed to the
    /// history stream (a pod's drain); `false` if some were still queued.
    pub(crate) async fn flush(&self, bound: std::time::Duration) -> bool {
        let HistorySink::Stream(p) = &self.history.sink else {
            return true;
        };
        let acked = async {
            while p.stats().queued.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(bound, acked).await.is_ok()
    }

    /// The history metrics, at scrape time.
    pub(crate) fn encode_metrics(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        use crate::metrics::{counter, gauge};
        counter(
            e,
            "fleetward_history_offered",
            "Messages of channels with history handed to the history writer.",
            self.offered.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "fleetward_history_dropped",
            "Messages of channels with history on a dataplane without a history store.",
            self.dropped.load(Ordering::Relaxed),
        )?;
        if let HistorySink::Stream(p) = &self.history.sink {
            return Self::encode_stream(p, e);
        }
        let Some(w) = self.writer() else {
            return Ok(());
        };
        counter(
            e,
            "fleetward_history_written",
            "Messages the history writer stored.",
            w.written.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "fleetward_history_refused",
            "Publishes refused because the history writer's queue was full.",
            w.refused.load(Ordering::Relaxed),
        )?;
        counter(
            e,
            "fleetward_history_write_failures",
            "History batches whose insert failed (each is retried).",
            w.failures.load(Ordering::Relaxed),
        )?;
        gauge(
            e,
            "fleetward_history_backlog",
            "Messages waiting for the history writer.",
            w.backlog.load(Ordering::Relaxed),
        )?;
        gauge(
            e,
            "fleetward_history_backlog_bytes",
            "What the messages waiting for the history writer hold, bytes.",
            w.backlog_bytes.load(Ordering::Relaxed),
        )
    }
}

/// Where a message's tenant and channel are, and the channel's uid.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spans<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) channel: &'a str,
    pub(crate) channel_uid: &'a str,
    /// Where the topic's text after the channel level starts.
    pub(crate) rest: usize,
}

/// The stored form of an accepted message.
fn record_of(m: &Message, at: Spans<'_>) -> Record {
    let topic = String::from_utf8_lossy(&m.topic);
    let props = m.props.as_deref();
    Record {
        id: m.id,
        tenant: at.tenant.to_owned(),
        channel: at.channel.to_owned(),
        channel_uid: at.channel_uid.to_owned(),
        subtopic: topic.get(at.rest..).unwrap_or_default().to_owned(),
        payload: m.payload.clone(),
        qos: m.qos,
        content_type: props.and_then(|p| p.content_type.clone()),
        publisher: m.publisher.as_ref().map(|p| p.name.to_string()),
        publisher_kind: m.publisher.as_ref().map(|p| p.kind.as_str().to_owned()),
        protocol: m.protocol.as_str().to_owned(),
        created_ns: m.created_ns,
        user_properties: props.map(|p| p.user_properties.clone()).unwrap_or_default(),
    }
}
