//! The session's loop: reading and handling packets, taking deliveries from the router, the
//! policy's changes, takeover, token expiry and keep-alive; and handing publishes to the
//! router with backpressure.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fleetward_policy::Snapshot;
use rumqttd::protocol::{
    Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, PingResp, PubComp,
    PubCompReason, PubRel, PubRelReason, Subscribe, SubscribeProperties,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::connection::{
    DELIVERY_BATCH, DELIVERY_BATCH_BYTES, End, Flow, ROUTER_BACKLOG_HIGH, Session, Step,
};
use crate::audit;
use crate::mqtt::codec::{Frame, Version};
use crate::mqtt::registry::Kick;
use crate::mqtt::saved::Outbound;
use crate::router::{Message, Router, RouterLink};

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
    pub(super) async fn serve(&mut self) -> End {
        if let Some(end) = self.resume().await {
            return end;
        }
        let mut token_expiry = crate::ingress::TokenExpiry::new(self.acc.token_ends);
        let mut drain = self.shared.drain.watch();
        loop {
            if !self.settle_and_write().await {
                return End::Unclean;
            }
            let can_receive = self.can_receive();
            let keep_alive = self.acc.keep_alive;
            let deadline = self.last_rx + keep_alive.mul_f32(1.5);
            let reading = self.reading();
            tokio::select! {
                read = read_some(&mut self.stream, &mut self.rbuf), if reading => match read {
                    Ok(0) | Err(_) => return End::Unclean,
                    Ok(_) => {
                        self.last_rx = Instant::now();
                        if let Flow::End(end) = self.process_input().await {
                            self.flush_last().await;
                            return end;
                        }
                    }
                },
                // Not once taken over: the router may give this link's connection to the
                // successor (ROUTER.md §2.6).
                message = receive(&mut self.link), if can_receive && !self.acc.registration.was_kicked() => match message.map(|m| {
                    self.deliver(m, false);
                    self.deliver_ready()
                }) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) | Err(e) => {
                        tracing::warn!(error = %e, "router link lost; closing the client connection");
                        return End::Unclean;
                    }
                },
                () = std::future::poll_fn(|cx| durable_next(&mut self.durable, cx)), if self.can_receive_durable() => {
                    if let Some(delivery) = self.durable.as_mut().and_then(|d| d.next.take()) {
                        self.deliver_durable(delivery);
                    }
                },
                // Held answers stored (or too late): the loop's top writes them, or ends.
                () = held_stored(&mut self.publishing, &self.shared), if self.is_holding() => {},
                // Only changes that concern this session (`ingress::rechecks`).
                () = self.interest.changed() => if let Flow::End(end) = self.revalidate() {
                    self.flush_last().await;
                    return end;
                },
                kick = self.acc.registration.kicked() => {
                    debug_assert_eq!(kick, Kick::TakenOver);
                    self.disconnect(DisconnectReasonCode::SessionTakenOver);
                    self.flush_last().await;
                    return End::Unclean;
                },
                () = token_expiry.expired(), if token_expiry.is_set() => {
                    self.credential_expired();
                    self.flush_last().await;
                    return End::Unclean;
                },
                phase = drain.next() => if phase == crate::ingress::Phase::Closing {
                    self.say_goodbye().await;
                    return End::Unclean;
                },
                _ = tokio::time::sleep_until(deadline.into()), if !keep_alive.is_zero() && reading => {
                    self.shared.metrics.refused("session", "keep_alive_timeout");
                    self.disconnect(DisconnectReasonCode::KeepAliveTimeout);
                    self.flush_last().await;
                    return End::Unclean;
                }
            }
            self.flush_pending();
        }
    }

    /// The pod drains: what the router already has for the client goes out, then the
    /// DISCONNECT of a draining pod (v5 only).
    async fn say_goodbye(&mut self) {
        let _ = self.deliver_ready();
        let version = self.codec.version();
        if let Some(goodbye) = crate::mqtt::drain::disconnect(&self.shared.drain, version) {
            self.write(goodbye);
        }
        self.flush_last().await;
    }

    /// A resumed session's re-check and resends, and the data already read behind the
    /// CONNECT; how the session ends if it does already.
    async fn resume(&mut self) -> Option<End> {
        // A durable session's subscriptions are made again (and authorized) from its record.
        if self.durable.is_some() {
            Box::pin(self.durable_resume()).await;
        }
        if !self.subs.is_empty() || !self.inflight.is_empty() {
            // Resumed: the policy may have changed while the client was away.
            if let Flow::End(end) = self.revalidate() {
                self.flush_last().await;
                return Some(end);
            }
        }
        self.resend_inflight();
        // Data already read behind the CONNECT. Its answers go out before the end, as those
        // of a later read do.
        if let Flow::End(end) = self.process_input().await {
            self.flush_last().await;
            return Some(end);
        }
        None
    }

    /// The access token or the client certificate expired: DISCONNECT 0xA0, and the client
    /// reconnects with a fresh one.
    fn credential_expired(&mut self) {
        let what = if self.acc.subject.certificate.is_some() {
            "certificate_expired"
        } else {
            "token_expired"
        };
        self.shared.metrics.refused("session", what);
        self.disconnect(DisconnectReasonCode::MaximumConnectTime);
    }

    /// Whether the session reads its socket now: not while draining (nothing more is accepted
    /// or acknowledged), nor while too many answers wait for JetStream.
    fn reading(&self) -> bool {
        self.shared.drain.reading() && !self.holding_too_much()
    }

    /// Between two turns of the loop: counts deliveries, passes the client's acknowledgements
    /// of durable deliveries on to JetStream, and writes what is buffered; `false` when that
    /// could not be written.
    async fn settle_and_write(&mut self) -> bool {
        self.count_delivered();
        if !self.release_stored() {
            // JetStream did not store a held read's messages in time: nothing of it is
            // acknowledged, and the client sends them again.
            self.end_with(DisconnectReasonCode::ServerBusy, "publish", "bus_behind");
            let _ = self.write_out().await;
            return false;
        }
        if self.durable.as_ref().is_some_and(|d| !d.to_ack.is_empty()) {
            // Boxed, like every durable step: a session without one does not carry it.
            Box::pin(self.durable_acks()).await;
        }
        self.write_out().await
    }

    /// Writes what is buffered, within the write timeout; `false` when it could not be.
    async fn write_out(&mut self) -> bool {
        if self.wbuf.is_empty() {
            return true;
        }
        let write = self.stream.write_all(&self.wbuf);
        // A peer that stops reading costs its own connection only, and does not hold up a
        // takeover.
        let write = tokio::time::timeout(self.shared.config.write_timeout, write);
        let written = tokio::select! {
            written = write => matches!(written, Ok(Ok(()))),
            _ = self.acc.registration.kicked() => false,
        };
        if !written {
            return false;
        }
        self.wbuf.clear();
        if self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
        true
    }

    /// Writes what is buffered before the connection closes, within the write timeout (a
    /// taken-over session within a second, well inside the successor's wait).
    pub(super) async fn flush_last(&mut self) {
        let mut bound = self.shared.config.write_timeout;
        if self.acc.registration.was_kicked() {
            bound = bound.min(Duration::from_secs(1));
        }
        let write = self.stream.write_all(&self.wbuf);
        let _ = tokio::time::timeout(bound, write).await;
    }

    pub(super) fn write(&mut self, packet: Packet) {
        if let Err(e) = self.codec.write(packet, &mut self.wbuf) {
            tracing::warn!(error = %e, "could not encode a packet for a client");
        }
    }

    /// Sends a v5 DISCONNECT with a reason; v3 has no server DISCONNECT, the socket closes.
    pub(super) fn disconnect(&mut self, code: DisconnectReasonCode) {
        if self.codec.version() == Version::V5 {
            // Always with properties: rumqttd 0.20 miscounts the length of a DISCONNECT with a
            // reason code and no properties.
            self.write(Packet::Disconnect(
                Disconnect { reason_code: code },
                Some(DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(format!("{code:?}")),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            ));
        }
    }

    /// Handles every whole packet in the read buffer, then hands what it accepted to the router.
    pub(super) async fn process_input(&mut self) -> Flow {
        // What this read's packets answer starts here (the loop wrote out what came before).
        let answers_from = self.wbuf.len();
        let flow = self.handle_frames().await;
        if let Some(p) = &mut self.publishing {
            p.policy = None;
            p.read_ns = 0;
        }
        // What was accepted before a DISCONNECT, a refusal or a bad packet is routed too.
        let flow = match (self.flush_outbox(), flow) {
            (Flow::End(end), _) | (Flow::Continue, Flow::End(end)) => Flow::End(end),
            (Flow::Continue, Flow::Continue) => {
                self.wait_for_router().await;
                Flow::Continue
            }
        };
        // Unsubscribes of a durable session reach its record and queue.
        if self.durable.as_ref().is_some_and(|d| d.dirty) {
            Box::pin(self.durable_sync()).await;
        }
        // QoS 1/2 publishes that JetStream stores: their acks (and what follows them) are held
        // until stored, while the session reads on; a session that ends waits for them here.
        match flow {
            Flow::Continue => {
                self.hold_for_store(answers_from);
                Flow::Continue
            }
            Flow::End(end) => match Box::pin(self.durably_stored()).await {
                Flow::Continue => Flow::End(end),
                Flow::End(e) => Flow::End(e),
            },
        }
    }

    /// A publisher that outruns the router waits, unread, while the messages it handed over
    /// are taken in: TCP then slows the client down, instead of an unbounded queue in front
    /// of the router growing (and the router, when it catches up, overwriting what slow
    /// subscribers had not read yet).
    pub(super) async fn wait_for_router(&mut self) {
        if self.router_backlog < ROUTER_BACKLOG_HIGH {
            return;
        }
        let started = Instant::now();
        // A router that takes nothing in for a second is not waited for any longer here.
        let bound = Duration::from_secs(1);
        loop {
            let backlog = match &self.link {
                Some(link) => link.backlog(),
                None => self.shared.router.backlog(),
            };
            let waited = started.elapsed();
            if backlog < ROUTER_BACKLOG_HIGH / 2 || waited > bound {
                break;
            }
            // Woken once the router has taken in what was handed over so far (this link's
            // buffer among it), instead of polling the backlog.
            self.shared.router.caught_up(bound - waited).await;
        }
        self.router_backlog = 0;
    }

    /// Hands the outbox to the router in one batch and counts it. If the router refuses it,
    /// its acks are taken back and the client is told the server is busy.
    pub(super) fn flush_outbox(&mut self) -> Flow {
        if let Some(p) = &mut self.publishing {
            self.shared.cache.count_hits(p.memo.take_hits());
        }
        if self.outbox.is_empty() {
            return Flow::Continue;
        }
        let n = self.outbox.len() as u64;
        // An abandoned session's link may be its successor's connection in the router now.
        let own_link = self
            .link
            .as_mut()
            .filter(|_| !self.acc.registration.abandoned());
        // Stored first where persistent sessions need them; the acks then wait for the store.
        let routed = match self.shared.router.store_durably(&mut self.outbox) {
            Ok(stored) => {
                self.stores_pending |= stored;
                match own_link {
                    Some(link) => link.publish_batch(&mut self.outbox),
                    None => self.shared.router.publish_batch(&mut self.outbox),
                }
            }
            Err(e) => Err(e),
        };
        match routed {
            Ok(backlog) => {
                self.router_backlog = backlog;
                self.shared.metrics.messages_in(&self.acc.subject.tenant, n);
                Flow::Continue
            }
            Err(e) => {
                self.outbox.clear();
                self.wbuf.truncate(self.outbox_mark);
                tracing::error!(error = %e, "the router refused a publish");
                self.end_with(DisconnectReasonCode::ServerBusy, "publish", e.as_str())
            }
        }
    }

    /// Tells the metrics about the deliveries written since the last time.
    pub(super) fn count_delivered(&mut self) {
        if self.delivered > 0 {
            let n = std::mem::take(&mut self.delivered);
            self.shared
                .metrics
                .messages_out(&self.acc.subject.tenant, n);
        }
    }

    /// Whether the session takes another message from its router link: it has one, nothing
    /// waits to be delivered before it, and the in-flight window has room.
    pub(super) fn can_receive(&self) -> bool {
        self.link.is_some()
            && self.pending.is_empty()
            && self.inflight.len() < usize::from(self.acc.receive_maximum)
    }

    /// Delivers what the router already has for this session, within the in-flight window and
    /// a batch, so that one socket write carries it all.
    pub(super) fn deliver_ready(&mut self) -> Result<(), crate::router::RouterError> {
        for _ in 0..DELIVERY_BATCH {
            if !self.can_receive() || self.wbuf.len() >= DELIVERY_BATCH_BYTES {
                break;
            }
            let Some(link) = self.link.as_mut() else {
                break;
            };
            match link.try_receive() {
                Some(message) => self.deliver(message?, false),
                None => break,
            }
        }
        Ok(())
    }

    pub(super) async fn handle_frames(&mut self) -> Flow {
        loop {
            if self.acc.registration.was_kicked() {
                // Taken over: what else this read brought is left to the main loop's end.
                break;
            }
            let max = self.shared.config.max_packet_size;
            let step = match self.codec.read(&mut self.rbuf, max) {
                Ok(None) => break,
                Ok(Some(frame)) => self.handle(frame),
                Err(e) => {
                    tracing::debug!(error = %e, "closing a connection after a bad packet");
                    self.shared.metrics.refused("packet", e.as_str());
                    self.disconnect(match e {
                        crate::mqtt::codec::FrameError::TooLarge(_) => {
                            DisconnectReasonCode::PacketTooLarge
                        }
                        crate::mqtt::codec::FrameError::Protocol(_) => {
                            DisconnectReasonCode::ProtocolError
                        }
                        _ => DisconnectReasonCode::MalformedPacket,
                    });
                    return Flow::End(End::Unclean);
                }
            };
            let flow = match step {
                Step::Done(flow) => flow,
                Step::Wait(waiting) => waiting.await,
            };
            if let Flow::End(end) = flow {
                return Flow::End(end);
            }
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 16 * 1024 {
            self.rbuf = BytesMut::with_capacity(256);
        }
        Flow::Continue
    }

    pub(super) fn handle(&mut self, frame: Frame) -> Step<'_> {
        // Publishes are batched; anything else sees them routed first, in order.
        if !matches!(frame.packet, Packet::Publish(..) | Packet::PubAck(..))
            && let Flow::End(end) = self.flush_outbox()
        {
            return Step::Done(Flow::End(end));
        }
        match frame.packet {
            Packet::Publish(p, props) => {
                return self.on_publish(p, props, frame.qos, frame.pkid, frame.dup);
            }
            Packet::PubAck(a, _) => {
                if self.inflight.get(&a.pkid).map(|e| e.0) == Some(Outbound::Qos1Sent) {
                    self.inflight.remove(&a.pkid);
                    if let Some(d) = self.durable.as_mut() {
                        d.acked(a.pkid);
                    }
                }
            }
            Packet::PubRec(r, _) => self.on_pubrec(r.pkid),
            Packet::PubComp(c, _) => {
                if self.inflight.get(&c.pkid).map(|e| e.0) == Some(Outbound::Released) {
                    self.inflight.remove(&c.pkid);
                }
            }
            Packet::PubRel(r, _) => self.on_pubrel(r.pkid),
            Packet::Subscribe(s, props) => {
                if let Some(why) = subscribe_protocol_error(&s, props.as_ref()) {
                    self.shared.metrics.refused("subscribe", why);
                    self.disconnect(DisconnectReasonCode::ProtocolError);
                    return Step::Done(Flow::End(End::Unclean));
                }
                return Step::Wait(Box::pin(async move {
                    self.on_subscribe(s, props).await;
                    Flow::Continue
                }));
            }
            Packet::Unsubscribe(u, _) => self.on_unsubscribe(u),
            Packet::PingReq(_) => self.write(Packet::PingResp(PingResp)),
            Packet::Disconnect(d, props) => {
                let expiry = props.and_then(|p| p.session_expiry_interval);
                if let Flow::End(end) = self.expiry_at_disconnect(expiry) {
                    return Step::Done(Flow::End(end));
                }
                let end = if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                    End::CleanWithWill
                } else {
                    End::Clean
                };
                return Step::Done(Flow::End(end));
            }
            _ => {
                // A second CONNECT, or a server-to-client packet.
                self.shared.metrics.refused("packet", "protocol_error");
                self.disconnect(DisconnectReasonCode::ProtocolError);
                return Step::Done(Flow::End(End::Unclean));
            }
        }
        Step::Done(Flow::Continue)
    }

    /// PUBREC of a QoS 2 delivery: released with PUBREL.
    fn on_pubrec(&mut self, pkid: u16) {
        if let Some(entry) = self.inflight.get_mut(&pkid)
            && entry.0 == Outbound::Qos2Sent
        {
            entry.0 = Outbound::Released;
            // Received by the client: JetStream need not deliver it again.
            if let Some(d) = self.durable.as_mut() {
                d.acked(pkid);
            }
            self.write(Packet::PubRel(
                PubRel {
                    pkid,
                    reason: PubRelReason::Success,
                },
                None,
            ));
        }
    }

    /// PUBREL of an inbound QoS 2 publish: completed with PUBCOMP (v5 says when the packet id
    /// was not known).
    fn on_pubrel(&mut self, pkid: u16) {
        let known = self.qos2_in.remove(&pkid);
        self.write(Packet::PubComp(
            PubComp {
                pkid,
                reason: if known || self.codec.version() == Version::V4 {
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                },
            },
            None,
        ));
    }

    /// A v5 DISCONNECT's Session Expiry Interval replaces the CONNECT's, capped by
    /// `max_session_expiry` as that was (MQTT 5, 3.14.2.2.2); setting one where the CONNECT
    /// asked for none is a protocol error (DISCONNECT 0x82, and the will goes out).
    pub(super) fn expiry_at_disconnect(&mut self, secs: Option<u32>) -> Flow {
        let Some(secs) = secs else {
            return Flow::Continue;
        };
        if secs != 0 && self.acc.expiry_was_zero {
            self.shared
                .metrics
                .refused("packet", "session_expiry_after_zero");
            self.disconnect(DisconnectReasonCode::ProtocolError);
            return Flow::End(End::Unclean);
        }
        self.acc.expiry =
            Duration::from_secs(u64::from(secs)).min(self.shared.config.max_session_expiry);
        Flow::Continue
    }

    /// Reports a refused publish or subscription of this session to the audit trail.
    pub(super) fn audit_refused(&self, action: audit::Action, topic: Option<&str>, reason: &str) {
        let s = &self.acc.subject;
        self.shared.audit.refused(audit::Refusal::mqtt(
            &s.tenant,
            Some(s.kind),
            &s.name,
            action,
            topic,
            reason,
        ));
    }

    pub(super) fn policy_now(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Refuses a publish: v5 answers 0x87 on the ack of its QoS; v3 is disconnected.
    pub(super) fn end_with(
        &mut self,
        code: DisconnectReasonCode,
        what: &'static str,
        label: &'static str,
    ) -> Flow {
        self.shared.metrics.refused(what, label);
        self.disconnect(code);
        Flow::End(End::Closed)
    }
}

/// MQTT 5: a subscription identifier of 0 (3.8.2.1.2), and No Local on a shared subscription
/// (3.8.3-4), are protocol errors; their label, if the SUBSCRIBE has one.
fn subscribe_protocol_error(
    s: &Subscribe,
    props: Option<&SubscribeProperties>,
) -> Option<&'static str> {
    if props.and_then(|p| p.id) == Some(0) {
        Some("subscription_id_zero")
    } else if s
        .filters
        .iter()
        .any(|f| f.nolocal && f.path.starts_with("$share/"))
    {
        Some("no_local_shared")
    } else {
        None
    }
}

/// Room a read leaves for the socket: many small PUBLISHes per read. Left to `read_buf`, a
/// buffer whose packets were split off grows by 64 bytes at a time (`BytesMut` keeps no
/// original capacity below 1 KiB), one read per packet or less.
const READ_CHUNK: usize = 4096;
/// Below this much spare room, a read first makes `READ_CHUNK`.
const READ_MIN: usize = 512;

/// Reads what the socket has into `rbuf`, as `read_buf` does. While the socket has nothing and
/// `rbuf` holds no partial packet, `rbuf` is released, so an idle connection keeps no read
/// buffer; the next read allocates one as `read_buf` does whenever the spare room is used up
/// (packets split off a buffer share its allocation, so it is rarely reused anyway).
fn read_some<'a, S: AsyncRead + Unpin>(
    stream: &'a mut S,
    rbuf: &'a mut BytesMut,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        if rbuf.capacity() - rbuf.len() < READ_MIN {
            rbuf.reserve(READ_CHUNK);
        }
        let read = std::pin::pin!(stream.read_buf(rbuf)).poll(cx);
        if read.is_pending() && rbuf.is_empty() && rbuf.capacity() > 0 {
            *rbuf = BytesMut::new();
        }
        read
    })
}

/// Ready when JetStream stored what the first held answers wait for, or their time is up.
fn held_stored<'a, R: Router>(
    publishing: &'a mut Option<Box<super::connection::Publishing>>,
    shared: &'a std::sync::Arc<crate::mqtt::broker::Broker<R>>,
) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |cx| {
        super::held::ready(
            publishing.as_mut().and_then(|p| p.held.as_mut()),
            shared,
            cx,
        )
    })
}

/// Ready when a durable session's queue has a delivery, which it leaves in the session's
/// durable half; never, without a queue. A poll rather than an `async fn`, and the delivery
/// kept in the box, so the session's future carries no state for it.
fn durable_next(
    durable: &mut Option<Box<crate::mqtt::durable::DurableLink>>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<()> {
    let Some(d) = durable.as_mut() else {
        return std::task::Poll::Pending;
    };
    let Some(q) = d.queue.as_mut() else {
        return std::task::Poll::Pending;
    };
    match q.rx.poll_recv(cx) {
        std::task::Poll::Ready(Some(delivery)) => {
            d.next = Some(delivery);
            std::task::Poll::Ready(())
        }
        // The pump stopped (the session is ending): nothing more comes.
        std::task::Poll::Ready(None) | std::task::Poll::Pending => std::task::Poll::Pending,
    }
}

async fn receive<L: RouterLink>(
    link: &mut Option<Box<L>>,
) -> Result<Message, crate::router::RouterError> {
    match link {
        Some(l) => l.receive().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_read_that_waits_keeps_no_buffer_unless_a_packet_is_half_read() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut rbuf = BytesMut::with_capacity(256);
        // Nothing to read: the empty buffer is released while waiting.
        assert!(read_some(&mut server, &mut rbuf).now_or_never().is_none());
        assert_eq!(rbuf.capacity(), 0);
        client.write_all(b"\x30\x05ab").await.expect("writes");
        let n = read_some(&mut server, &mut rbuf).await.expect("reads");
        assert_eq!((n, &rbuf[..]), (4, &b"\x30\x05ab"[..]));
        // Part of a packet: kept while the rest is awaited.
        assert!(read_some(&mut server, &mut rbuf).now_or_never().is_none());
        assert_eq!(&rbuf[..], b"\x30\x05ab");
        client.write_all(b"cde").await.expect("writes");
        read_some(&mut server, &mut rbuf).await.expect("reads");
        assert_eq!(&rbuf[..], b"\x30\x05abcde");
    }
}
