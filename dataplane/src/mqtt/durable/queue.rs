//! A persistent session's queue: a durable pull consumer on its tenant's stream, whose filter
//! follows the session's QoS 1/2 subscriptions, pumped into the session.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use crate::bus::bus_message;
use crate::bus::durable::{ORIGIN_HEADER, durable_pattern};
use crate::router::Message;

/// A message from the queue, with what acknowledges it to JetStream.
pub(crate) struct Delivery {
    pub(crate) message: Message,
    pub(crate) acker: Acker,
    /// Delivered before (to this client, on any pod): sent with DUP.
    pub(crate) dup: bool,
    /// Its place in the tenant's stream.
    pub(crate) sequence: u64,
}

/// What a queue is opened with.
pub(super) struct Opening {
    pub(super) client: async_nats::Client,
    pub(super) stream: Stream,
    pub(super) name: String,
    pub(super) tenant: String,
    pub(super) node_id: String,
    pub(super) max_ack_pending: u16,
    pub(super) expiry: Duration,
}

/// A session's open queue; dropping it stops the pump (the consumer stays, for a resume).
pub(crate) struct DurableQueue {
    pub(crate) rx: mpsc::Receiver<Delivery>,
    task: tokio::task::AbortHandle,
    stream: Stream,
    config: pull::Config,
    tenant: String,
}

impl Drop for DurableQueue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long JetStream waits for an acknowledgement before delivering again: long, as a
/// connected client's unacknowledged deliveries are resent only on resume (MQTT 5, 4.4), and a
/// resume makes the consumer again from its ack floor.
const ACK_WAIT: Duration = Duration::from_secs(300);

/// The filter a consumer gets when the session has no QoS 1/2 subscription: a subject no
/// message has (an empty filter would take the whole stream).
fn idle_filter(tenant: &str) -> String {
    format!("p.{}.=idle", crate::bus::subject::escape_level(tenant))
}

/// The consumer's filter for the session's bus subjects (`m.…`), non-overlapping per channel
/// as JetStream requires.
fn filter_subjects(tenant: &str, filters: Vec<String>) -> Vec<String> {
    let mut by_channel: std::collections::BTreeMap<(String, String), BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for f in filters {
        let Some(key) = crate::bus::subject::channel_of(&f) else {
            continue;
        };
        if key.0 != tenant {
            continue;
        }
        if let Some(subjects) = crate::bus::subject::filter_subjects(&f) {
            by_channel.entry(key).or_default().extend(subjects);
        }
    }
    let mut out: Vec<String> = by_channel
        .iter()
        .flat_map(|((t, c), wanted)| crate::bus::subject::cover(t, c, wanted))
        .map(|s| durable_pattern(&s))
        .collect();
    if out.is_empty() {
        out.push(idle_filter(tenant));
    }
    out
}

/// Opens (makes, or takes over) the consumer and starts pumping it. `filters` are MQTT
/// filters (full, without `$share/…`).
pub(super) async fn open(
    o: Opening,
    filters: Vec<String>,
    resume: bool,
) -> Result<DurableQueue, String> {
    let filter_subjects = filter_subjects(&o.tenant, filters);
    let mut config = pull::Config {
        durable_name: Some(o.name.clone()),
        filter_subjects,
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: i64::from(o.max_ack_pending.max(1)),
        // The queue of a session away longer than its expiry goes with it.
        inactive_threshold: o.expiry + Duration::from_secs(60),
        deliver_policy: DeliverPolicy::New,
        ..Default::default()
    };
    let mut dup_until = 0;
    match o.stream.consumer_info(&o.name).await {
        Ok(info) if resume => {
            if info.num_ack_pending > 0 {
                // Made again from its ack floor: what the client had not acknowledged comes
                // again now, not after the ack wait.
                dup_until = info.delivered.stream_sequence;
                let _ = o.stream.delete_consumer(&o.name).await;
                config.deliver_policy = DeliverPolicy::ByStartSequence {
                    start_sequence: info.ack_floor.stream_sequence + 1,
                };
            } else {
                config.deliver_policy = info.config.deliver_policy;
            }
        }
        Ok(_) => {
            // A new session under a key an old one used: its queue goes.
            let _ = o.stream.delete_consumer(&o.name).await;
        }
        Err(_) => {}
    }
    let consumer: consumer::PullConsumer = o
        .stream
        .create_consumer(config.clone())
        .await
        .map_err(|e| format!("making the session's consumer: {e}"))?;
    let (tx, rx) = mpsc::channel(usize::from(o.max_ack_pending.max(1)));
    let task = tokio::spawn(pump(
        consumer,
        tx,
        o.node_id.clone(),
        dup_until,
        o.client.clone(),
    ))
    .abort_handle();
    Ok(DurableQueue {
        rx,
        task,
        stream: o.stream,
        config,
        tenant: o.tenant,
    })
}

impl DurableQueue {
    /// Follows the session's subscriptions (MQTT filters, full); before the SUBACK, so a
    /// message published after it is queued.
    pub(crate) async fn set_filters(&mut self, filters: Vec<String>) -> Result<(), String> {
        let wanted = filter_subjects(&self.tenant, filters);
        if wanted == self.config.filter_subjects {
            return Ok(());
        }
        let mut config = self.config.clone();
        config.filter_subjects = wanted;
        self.stream
            .update_consumer(config.clone())
            .await
            .map_err(|e| format!("updating the session's consumer: {e}"))?;
        self.config = config;
        Ok(())
    }
}

/// Pulls the consumer into the session, again after every interruption (NATS away).
async fn pump(
    consumer: consumer::PullConsumer,
    tx: mpsc::Sender<Delivery>,
    node_id: String,
    dup_until: u64,
    _client: async_nats::Client,
) {
    // A consumer delivers in stream order, so a sequence not above the highest seen is one
    // delivered before: NATS sends it again when it lost the ack, or the delivery, across a
    // restart (its consumer state is written behind), and then says it is the first time.
    let mut highest = dup_until;
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "a session's queue is not reachable; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        while let Some(next) = messages.next().await {
            let msg = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "a session's queue broke; reopening");
                    break;
                }
            };
            let Some(delivery) = delivery(msg, &node_id, highest).await else {
                continue;
            };
            highest = highest.max(delivery.sequence);
            if tx.send(delivery).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A queued message as a delivery; `None` (acknowledged) when it cannot be one: expired, or
/// not a message of ours.
async fn delivery(
    msg: async_nats::jetstream::Message,
    node_id: &str,
    dup_until: u64,
) -> Option<Delivery> {
    let (sequence, delivered) = match msg.info() {
        Ok(info) => (info.stream_sequence, info.delivered),
        Err(_) => (0, 1),
    };
    let origin = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(ORIGIN_HEADER))
        .and_then(|v| {
            let (node, conn) = v.as_str().split_once(':')?;
            (node == node_id)
                .then(|| conn.parse::<u64>().ok())
                .flatten()
        });
    let (message, acker) = msg.split();
    match bus_message::decode(&message.payload) {
        Ok(Some(received)) => {
            let mut message = received.message;
            message.origin = origin;
            Some(Delivery {
                message,
                acker,
                dup: delivered > 1 || sequence <= dup_until,
                sequence,
            })
        }
        Ok(None) | Err(_) => {
            let _ = acker.ack().await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_filter_never_overlaps_and_never_takes_the_whole_stream() {
        let f = |filters: &[&str]| {
            filter_subjects("acme", filters.iter().map(|s| (*s).to_owned()).collect())
        };
        assert_eq!(f(&[]), vec!["p.acme.=idle".to_owned()]);
        assert_eq!(
            f(&["m/acme/c/cmd/dev-1"]),
            vec!["p.acme.c.cmd.dev-1".to_owned()]
        );
        // Overlapping filters in one channel take the channel.
        assert_eq!(
            f(&["m/acme/c/cmd/#", "m/acme/c/cmd/dev-1"]),
            vec!["p.acme.c.cmd".to_owned(), "p.acme.c.cmd.>".to_owned()]
        );
        // Another tenant's filter is never the session's.
        assert_eq!(f(&["m/other/c/cmd/x"]), vec!["p.acme.=idle".to_owned()]);
    }
}
