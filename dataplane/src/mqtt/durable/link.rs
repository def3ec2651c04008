//! The durable half of a live persistent session: its record, its queue, and the
//! acknowledgements it owes JetStream (the session's side is `mqtt/session/durable.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use foldhash::HashMap;

use super::{DurableQueue, DurableSessions, RecordedSub, SessionRecord};

/// The durable half of a persistent session.
pub(crate) struct DurableLink {
    pub(crate) store: Arc<DurableSessions>,
    pub(crate) record: SessionRecord,
    /// The record's revision as this session last wrote or read it.
    pub(crate) revision: Option<u64>,
    pub(crate) queue: Option<DurableQueue>,
    /// Resumed from a record: its subscriptions are replayed, its queue taken over.
    pub(crate) resumed: bool,
    pub(crate) tenant: String,
    /// Deliveries the client has not acknowledged yet, by packet id.
    pub(crate) unacked: HashMap<u16, Acker>,
    /// Acknowledgements to pass on to JetStream.
    pub(crate) to_ack: Vec<Acker>,
    /// The subscriptions changed since the record and the queue's filter were written.
    pub(crate) dirty: bool,
    /// A delivery taken from the queue, about to be delivered.
    pub(crate) next: Option<super::Delivery>,
}

impl DurableLink {
    /// The durable half of a session: resumed from `loaded`, or new.
    pub(crate) fn new(
        store: Arc<DurableSessions>,
        id: String,
        tenant: &str,
        loaded: Option<(SessionRecord, u64)>,
        expiry: Duration,
    ) -> Self {
        let resumed = loaded.is_some();
        let (mut record, revision) = match loaded {
            Some((record, revision)) => (record, Some(revision)),
            None => (
                SessionRecord {
                    id,
                    ..Default::default()
                },
                None,
            ),
        };
        record.expiry_secs = expiry.as_secs();
        Self {
            store,
            record,
            revision,
            queue: None,
            resumed,
            tenant: tenant.to_owned(),
            unacked: HashMap::default(),
            to_ack: Vec::new(),
            dirty: true,
            next: None,
        }
    }

    /// Whether QoS 1/2 deliveries come from the queue (the router's copies are skipped).
    pub(crate) fn has_queue(&self) -> bool {
        self.queue.is_some()
    }

    /// Records a subscription the client made (or made again).
    pub(crate) fn subscribed(&mut self, full: &str, sub: RecordedSub) {
        self.record.subs.insert(full.to_owned(), sub);
        self.dirty = true;
    }

    /// Forgets an unsubscribed filter.
    pub(crate) fn unsubscribed(&mut self, full: &str) {
        self.dirty |= self.record.subs.remove(full).is_some();
    }

    /// The client acknowledged the delivery with `pkid` (PUBACK, or PUBREC of QoS 2).
    pub(crate) fn acked(&mut self, pkid: u16) {
        if let Some(acker) = self.unacked.remove(&pkid) {
            self.to_ack.push(acker);
        }
    }
}
