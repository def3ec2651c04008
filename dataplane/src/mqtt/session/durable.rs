//! A persistent session's durable half, on a pod whose sessions live in JetStream
//! (`mqtt/durable/`): its subscriptions replayed on resume, its record and its queue kept in
//! step with its subscriptions, QoS 1/2 deliveries taken from its queue and acknowledged to
//! JetStream when the client acknowledges them, and publishes acknowledged only once stored.

use std::time::{Duration, Instant};

use rumqttd::protocol::{DisconnectReasonCode, Filter, RetainForwardRule, SubscribeReasonCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{End, Flow, Session};
use super::held::HELD_MAX_BYTES;
use super::subscriptions::Asked;
use crate::bus::durable::STORE_WAIT;
use crate::mqtt::durable::{Delivery, RecordedSub, Seen, StoredWill, ended_now};
use crate::mqtt::reason::qos_of;
use crate::router::Router;

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
    /// Holds this read's answers (from `from` in the write buffer) if its QoS 1/2 messages
    /// wait to be stored, or if an earlier read's answers are held (order).
    pub(super) fn hold_for_store(&mut self, from: usize) {
        let stores = std::mem::take(&mut self.stores_pending);
        let holding = self.is_holding();
        if !stores && !holding {
            return;
        }
        let mark = match self.shared.router.durable_mark() {
            Some(mark) if stores => mark,
            _ => self
                .publishing
                .as_ref()
                .and_then(|p| p.held.as_ref())
                .and_then(|h| h.segments.back().map(|s| s.0))
                .unwrap_or(0),
        };
        if !holding && self.shared.router.durably_stored_now(mark) {
            return;
        }
        let answers = self.wbuf.split_off(from.min(self.wbuf.len()));
        let held = self
            .publishing
            .get_or_insert_default()
            .held
            .get_or_insert_default();
        held.bytes += answers.len();
        held.segments.push_back((mark, Instant::now(), answers));
    }

    /// Whether answers are held for the store.
    pub(super) fn is_holding(&self) -> bool {
        self.publishing
            .as_ref()
            .and_then(|p| p.held.as_ref())
            .is_some_and(|h| !h.segments.is_empty())
    }

    /// Whether so much is held that the session stops reading for now.
    pub(super) fn holding_too_much(&self) -> bool {
        self.publishing
            .as_ref()
            .and_then(|p| p.held.as_ref())
            .is_some_and(|h| h.bytes > HELD_MAX_BYTES)
    }

    /// Writes the held answers whose messages are stored now, in order; `false` when the first
    /// one waited longer than [`STORE_WAIT`] (the connection is to end, unacknowledged).
    pub(super) fn release_stored(&mut self) -> bool {
        let Some(held) = self.publishing.as_mut().and_then(|p| p.held.as_mut()) else {
            return true;
        };
        while let Some((mark, since, _)) = held.segments.front() {
            if self.shared.router.durably_stored_now(*mark) {
                if let Some((_, _, answers)) = held.segments.pop_front() {
                    held.bytes -= answers.len();
                    self.wbuf.extend_from_slice(&answers);
                }
                held.wait = None;
            } else if since.elapsed() >= STORE_WAIT {
                held.segments.clear();
                held.bytes = 0;
                held.wait = None;
                return false;
            } else {
                break;
            }
        }
        if held.segments.is_empty() {
            // Nothing left: the box goes, so an idle publisher keeps none.
            if let Some(p) = self.publishing.as_mut() {
                p.held = None;
            }
        }
        true
    }

    /// A resumed session's subscriptions, made again as the client made them and authorized
    /// again (one refused now is dropped), then its queue taken over: what the client had not
    /// acknowledged comes again with DUP, then what was queued while it was away.
    pub(super) async fn durable_resume(&mut self) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let replay: Vec<(String, RecordedSub)> =
            std::mem::take(&mut d.record.subs).into_iter().collect();
        if !replay.is_empty() {
            let snapshot = self.policy_now();
            let mut retained = Vec::new();
            for (_, sub) in replay {
                let filter = Filter {
                    path: sub.path.clone(),
                    qos: qos_of(sub.qos),
                    nolocal: sub.no_local,
                    preserve_retain: sub.retain_as_published,
                    retain_forward_rule: RetainForwardRule::Never,
                };
                let asked = Asked {
                    metadata: sub.metadata,
                    id: sub.id,
                };
                let code = self
                    .subscribe_one(&snapshot, filter, &asked, &mut retained)
                    .await;
                if !matches!(code, SubscribeReasonCode::Success(_)) {
                    self.shared
                        .metrics
                        .refused("resend", "subscription_refused");
                }
            }
            if let Some(link) = self.link.as_deref_mut() {
                crate::router::RouterLink::taken_in(link).await;
            }
        }
        self.durable_sync().await;
    }

    /// Writes the record and the queue's filter after the subscriptions changed: before the
    /// SUBACK, so a message published after it is queued for the session.
    pub(super) async fn durable_sync(&mut self) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        if !d.dirty {
            return;
        }
        d.dirty = false;
        let filters: Vec<String> = self
            .subs
            .iter()
            .filter(|s| s.qos > 0)
            .map(|s| s.matcher.clone())
            .collect();
        let store = d.store.clone();
        match &mut d.queue {
            Some(queue) => {
                if let Err(e) = queue.set_filters(filters).await {
                    tracing::warn!(error = %e, "a persistent session's queue could not follow its subscriptions");
                }
            }
            None if !filters.is_empty() || d.resumed => {
                let id = d.record.id.clone();
                let expiry = Duration::from_secs(d.record.expiry_secs);
                match store
                    .open_queue(&id, &d.tenant, filters, expiry, d.resumed)
                    .await
                {
                    Ok(queue) => d.queue = Some(queue),
                    Err(e) => {
                        // Its QoS 1/2 deliveries stay on the router's path on this pod.
                        tracing::warn!(error = %e, "a persistent session's queue could not be opened");
                    }
                }
            }
            None => {}
        }
        d.record.ended_ms = None;
        d.record.pod = store.node_id().to_owned();
        d.revision = store.save(&d.record).await;
    }

    /// Passes the client's acknowledgements on to JetStream.
    pub(super) async fn durable_acks(&mut self) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        for acker in d.to_ack.drain(..) {
            let _ = acker.ack().await;
        }
    }

    /// Whether the session takes another delivery from its queue.
    pub(super) fn can_receive_durable(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| d.queue.is_some())
            && self.pending.is_empty()
            && self.inflight.len() < usize::from(self.acc.receive_maximum)
    }

    /// Delivers a message from the queue as any delivery is (authorized, within the offline
    /// bound); one not sent at QoS 1/2 is acknowledged to JetStream at once.
    pub(super) fn deliver_durable(&mut self, delivery: Delivery) {
        let Delivery {
            message,
            acker,
            mut dup,
            sequence,
        } = delivery;
        let id = message.id;
        if let Some(d) = self.durable.as_mut() {
            match d.recent.delivering(id) {
                Seen::Acknowledged => {
                    // The client has it: NATS sent it again after a restart lost its ack.
                    d.to_ack.push(acker);
                    return;
                }
                Seen::InFlight => dup = true,
                Seen::Never => {}
            }
        }
        // The same sequence gives the same packet id wherever the session resumes.
        let pkid = u16::try_from(sequence % u64::from(u16::MAX)).unwrap_or(0) + 1;
        let pkid = self.deliver_from(message, false, Some((dup, pkid)));
        if let Some(d) = self.durable.as_mut() {
            match pkid {
                Some(pkid) => {
                    d.unacked.insert(pkid, (acker, id));
                }
                None => d.to_ack.push(acker),
            }
        }
    }

    /// After a read: waits until JetStream stored the QoS 1/2 messages it brought in, before
    /// their acknowledgements are written. If that does not happen in time, the connection
    /// closes with nothing of the read acknowledged, and the client sends them again.
    pub(super) async fn durably_stored(&mut self) -> Flow {
        if !std::mem::take(&mut self.stores_pending) {
            return Flow::Continue;
        }
        let Some(mark) = self.shared.router.durable_mark() else {
            return Flow::Continue;
        };
        if self
            .shared
            .router
            .durably_stored(mark, crate::bus::durable::STORE_WAIT)
            .await
        {
            return Flow::Continue;
        }
        self.wbuf.clear();
        self.end_with(DisconnectReasonCode::ServerBusy, "publish", "bus_behind");
        Flow::End(End::Unclean)
    }

    /// How a durable session ends: its router link goes, its record is written, and a will
    /// with a delay is kept in JetStream, sent by whichever pod claims it when due (or
    /// cancelled by a CONNECT with the same key meanwhile).
    pub(super) async fn durable_finish(&mut self, end: End) {
        let store = self.durable.as_ref().map(|d| d.store.clone());
        if let Some(link) = self.link.take() {
            crate::router::RouterLink::detach(*link);
        }
        self.durable_end().await;
        let (End::Unclean | End::CleanWithWill, Some(mut will)) = (end, self.acc.will.take())
        else {
            return;
        };
        // Never after the session's end (MQTT 5, 3.1.3.2.2).
        will.delay = will.delay.min(self.acc.expiry);
        if self.acc.registration.was_kicked() && !will.delay.is_zero() {
            // Taken over within the delay: the new connection cancels it (MQTT 5, 3.1.3.2.2).
            return;
        }
        let id = self.acc.key.router_id();
        let tenant = &self.acc.subject.tenant;
        if let Some(store) = &store
            && !will.delay.is_zero()
            && store.wills_waiting(tenant) >= self.shared.config.max_pending_wills_per_tenant
        {
            // As on a single pod: sent early rather than held past the tenant's share.
            self.shared
                .metrics
                .refused("will", "tenant_pending_wills_full");
            will.delay = Duration::ZERO;
        }
        if let Some(store) = store
            && !will.delay.is_zero()
        {
            let due = crate::router::now_ns() / 1_000_000
                + u64::try_from(will.delay.as_millis()).unwrap_or(u64::MAX / 2);
            let stored = StoredWill::new(
                id.clone(),
                &self.acc.subject,
                &will.message,
                will.retain,
                due,
            );
            if let Some(stored) = stored
                && store.keep_will(&stored).await
            {
                return;
            }
        }
        // Without JetStream for it: on this pod, as a pod without NATS does.
        super::ending::publish_will(self.shared.clone(), self.acc.subject.clone(), id, *will);
    }

    /// The durable half at the session's end: its record written (when the connection ended,
    /// its expiry) unless a successor took it, and its drop scheduled after the expiry; a
    /// session without expiry is dropped now. What the client had not acknowledged stays in
    /// the queue for the resume.
    pub(super) async fn durable_end(&mut self) {
        let Some(mut d) = self.durable.take() else {
            return;
        };
        drop(d.queue.take());
        let id = d.record.id.clone();
        if self.acc.registration.was_kicked() || self.acc.registration.abandoned() {
            // Taken over, on this pod or another: the record is the successor's.
            return;
        }
        if self.acc.expiry.is_zero() {
            d.store.drop_session(&id, &d.tenant).await;
            return;
        }
        d.record.expiry_secs = self.acc.expiry.as_secs();
        d.record.ended_ms = ended_now();
        let written = match d.revision {
            Some(revision) => d.store.save_if(&d.record, revision).await,
            None => d.store.save(&d.record).await,
        };
        if let Some(revision) = written {
            d.store
                .expire_later(id, d.tenant.clone(), revision, self.acc.expiry);
        }
    }
}
