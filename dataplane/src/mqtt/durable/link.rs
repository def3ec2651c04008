//! The durable half of a live persistent session: its record, its queue, and the
//! acknowledgements it owes JetStream (the session's side is `mqtt/session/durable.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use foldhash::HashMap;

use crate::router::MessageId;

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
    /// Deliveries the client has not acknowledged yet, by packet id, with their message id.
    pub(crate) unacked: HashMap<u16, (Acker, MessageId)>,
    /// Messages delivered lately, and whether the client acknowledged each. Across a NATS
    /// restart a message may come again (an ack or a store NATS lost): one acknowledged is
    /// then acknowledged again, not delivered; one in flight goes with DUP.
    pub(crate) recent: Recent,
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
            recent: Recent::default(),
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
        if let Some((acker, id)) = self.unacked.remove(&pkid) {
            self.recent.acked(id);
            self.to_ack.push(acker);
        }
    }
}

/// The last few hundred messages a session delivered from its queue, by message id, and
/// whether each was acknowledged.
#[derive(Default)]
pub(crate) struct Recent {
    order: std::collections::VecDeque<MessageId>,
    seen: HashMap<MessageId, bool>,
}

/// What a session did with a message of its queue before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Never,
    InFlight,
    Acknowledged,
}

impl Recent {
    // Five times the in-flight window: enough for what NATS sends again after a restart, and
    // about 20 KiB for a session that received that many.
    const KEEP: usize = 512;

    /// What was done with `id` before; from now on it counts as delivered.
    pub(crate) fn delivering(&mut self, id: MessageId) -> Seen {
        match self.seen.get(&id) {
            Some(true) => return Seen::Acknowledged,
            Some(false) => return Seen::InFlight,
            None => {}
        }
        self.seen.insert(id, false);
        self.order.push_back(id);
        if self.order.len() > Self::KEEP
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        Seen::Never
    }

    fn acked(&mut self, id: MessageId) {
        if let Some(acked) = self.seen.get_mut(&id) {
            *acked = true;
        }
    }
}
