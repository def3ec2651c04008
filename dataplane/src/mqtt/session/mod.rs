//! A connected client's session: reads packets, authorizes, talks to the router, delivers.

mod deliver;
mod inbound;
mod persist;
mod subscriptions;

pub(crate) use inbound::{mount_response_topic, response_topic_is_protocol_error};
pub(crate) use persist::{SavedSession, SessionStore, clear_in_router};

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fleetward_policy::{Snapshot, Subject, TopicLimits};
use foldhash::{HashMap, HashSet};
use rumqttd::protocol::{
    Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, PingResp, PubComp,
    PubCompReason, PubRel, PubRelReason, PublishProperties,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::broker::Broker;
use super::codec::{Codec, Frame, Version};
use super::connect::{Accepted, Connected};
use super::registry::Kick;
use crate::audit;
use crate::ingress::{PublishMemo, PublishRequest};
use crate::router::{Message, Protocol, Publisher, Router, RouterLink};

/// A will, published by the front-end when the session ends uncleanly.
pub(crate) struct Will {
    pub message: Message,
    pub retain: bool,
    pub delay: Duration,
}

pub(crate) struct Subscription {
    /// The filter as the client sent it (without any mountpoint or `$share/<group>/`).
    client: String,
    /// The full filter as subscribed, `[$share/<group>/]m/<tenant>/c/<channel>/…`.
    full: String,
    /// The full filter without any `$share/<group>/`, matched against topics.
    matcher: String,
    /// What the router was given (shared groups renamed per tenant and filter).
    router: String,
    /// v5 no-local: not to receive its own session's publishes.
    no_local: bool,
    /// v5 retain-as-published: keep the publish's retain flag on live deliveries.
    retain_as_published: bool,
    qos: u8,
    id: Option<usize>,
    /// v5: its SUBSCRIBE asked for delivery metadata (`fleetward-metadata: true`).
    metadata: bool,
    /// The Tenant and Channel it was made under: a saved session drops it once the policy has
    /// either under another uid (deleted and created again under its name).
    made_under: persist::Incarnation,
}

/// A QoS 1/2 delivery kept until the client acknowledges it, for resending on resume.
pub(crate) struct OutMsg {
    topic: Bytes,
    payload: Bytes,
    qos: u8,
    retain: bool,
    props: Option<PublishProperties>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outbound {
    /// QoS 1 sent, PUBACK awaited.
    Qos1Sent,
    /// QoS 2 sent, PUBREC awaited.
    Qos2Sent,
    /// PUBREL sent, PUBCOMP awaited.
    Released,
}

/// How a session ends, which decides the will and the last packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The client sent DISCONNECT: no will.
    Clean,
    /// The client sent DISCONNECT 0x04: publish the will.
    CleanWithWill,
    /// EOF, error, keep-alive, takeover: publish the will.
    Unclean,
    /// Refused by policy or a limit: the will would be refused too.
    Closed,
}

pub(crate) struct Session<R: Router, S> {
    shared: Arc<Broker<R>>,
    stream: S,
    codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    acc: Accepted,
    /// Boxed: most sessions never have one (publish-only clients route through the router's
    /// shared link), and it is large.
    link: Option<Box<R::Link>>,
    subs: subscriptions::Subs,
    inflight: HashMap<u16, (Outbound, OutMsg)>,
    next_pkid: u16,
    pending: VecDeque<Message>,
    qos2_in: HashSet<u16>,
    aliases: HashMap<u16, Bytes>,
    /// Topic aliases given to the client, by client-side topic.
    out_aliases: HashMap<Bytes, u16>,
    policy: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    last_rx: Instant,
    /// Publishes accepted from what the socket read brought in, handed to the router together
    /// when the read is processed (or before any other packet is handled).
    outbox: Vec<Message>,
    /// Where in `wbuf` the acks of the outbox's publishes begin: taken back if the router
    /// refuses the batch, so nothing is acknowledged that was not routed.
    outbox_mark: usize,
    /// Deliveries written since the metrics were last told.
    delivered: u64,
    /// Messages waiting for the router on this session's way in, after the last hand-over.
    router_backlog: usize,
    /// What publishing needs between packets; boxed, and made at the first publish, so that a
    /// session that only subscribes or idles does not carry it.
    publishing: Option<Box<Publishing>>,
    /// A resumed persistent session's bound on what was queued while its client was away;
    /// boxed, as only resumed sessions have one.
    offline: Option<Box<OfflineBound>>,
    /// v5: whether the last channel delivered on carries delivery metadata; boxed, made at the
    /// first v5 delivery.
    metadata_memo: Option<Box<deliver::MetadataMemo>>,
}

/// How many more messages queued before a resume a resumed session is sent.
pub(crate) struct OfflineBound {
    /// When the session resumed (`Message::created_ns` before it: queued while away).
    since_ns: u64,
    left: usize,
}

/// A publishing session's state across its publishes.
#[derive(Default)]
pub(crate) struct Publishing {
    /// The last topic published on and what the policy said of it.
    memo: PublishMemo,
    /// The policy the publishes of the socket read being handled are decided on; `None` between
    /// reads, so an idle session keeps no old snapshot alive.
    policy: Option<Arc<Snapshot>>,
    /// The created time of the publishes of the socket read being handled (one clock reading
    /// per read); 0 until its first publish.
    read_ns: u64,
}

/// A publisher waits when this many messages wait for the router on its way in, until half
/// of them are taken in.
const ROUTER_BACKLOG_HIGH: usize = 2048;

/// The most deliveries the router has ready that go into one socket write.
const DELIVERY_BATCH: usize = 256;
/// A socket write is not grown past this by taking more deliveries.
const DELIVERY_BATCH_BYTES: usize = 64 * 1024;

enum Flow {
    Continue,
    End(End),
}

/// What handling a packet leaves to do. Handling is synchronous; the two cases that wait
/// (subscribing, which may attach a router link, and a v3 publish throttled by its tenant's
/// rate) are boxed, so that their state does not size every session.
enum Step<'a> {
    Done(Flow),
    Wait(Pin<Box<dyn Future<Output = Flow> + Send + 'a>>),
}

fn limits() -> TopicLimits {
    TopicLimits::default()
}

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
    /// The session of an accepted CONNECT, not yet running.
    pub(crate) fn new(
        shared: Arc<Broker<R>>,
        stream: S,
        codec: Codec,
        rbuf: BytesMut,
        connected: Connected<R::Link>,
    ) -> Self {
        // Not marked seen: a snapshot applied between CONNECT and here is re-checked at once.
        let policy = shared.policy.clone();
        let mut s = Session {
            shared,
            stream,
            codec,
            rbuf,
            wbuf: BytesMut::new(),
            acc: connected.acc,
            link: connected.link.map(Box::new),
            subs: subscriptions::Subs::default(),
            inflight: HashMap::default(),
            next_pkid: 0,
            pending: VecDeque::new(),
            qos2_in: HashSet::default(),
            aliases: HashMap::default(),
            out_aliases: HashMap::default(),
            policy,
            last_rx: Instant::now(),
            outbox: Vec::new(),
            outbox_mark: 0,
            delivered: 0,
            router_backlog: 0,
            publishing: None,
            offline: None,
            metadata_memo: None,
        };
        if let Some(saved) = connected.saved {
            s.offline = Some(Box::new(OfflineBound {
                since_ns: crate::router::now_ns(),
                left: s.shared.config.max_offline_messages,
            }));
            s.subs = saved.subs;
            s.inflight = saved.inflight;
            s.qos2_in = saved.qos2_in;
            s.next_pkid = saved.next_pkid;
        }
        s
    }

    /// Runs the session until the connection ends, then keeps or clears what it leaves.
    /// By reference: an `async fn` keeps its arguments in its future, and a session moved in
    /// would be there twice.
    pub(crate) async fn run(&mut self) {
        let end = self.serve().await;
        self.count_delivered();
        tracing::debug!(client = %self.acc.key.router_id(), ?end, "session ended");
        let shared = self.shared.clone();
        if self.acc.registration.abandoned() {
            // Its successor stopped waiting and owns the router session, the saved state and
            // the will's place now. The link goes without a word to the router (it already
            // handed its connection to the successor, ROUTER.md §2.6), and what it held is
            // released, not saved over the successor's routes.
            if let Some(link) = self.link.take() {
                link.abandon();
            }
            return;
        }
        if !self.acc.expiry.is_zero() {
            // Persistent: keep our half; the router keeps its half on detach.
            let saved = SavedSession::new(
                std::mem::take(&mut self.subs),
                std::mem::take(&mut self.inflight),
                std::mem::take(&mut self.qos2_in),
                self.next_pkid,
            );
            if let Some(link) = self.link.take() {
                (*link).detach();
            }
            let saved = shared.sessions.save(
                self.acc.key.router_id(),
                &self.acc.subject.tenant,
                saved,
                shared.config.max_saved_sessions_per_tenant,
            );
            persist::expire_later(
                shared.clone(),
                self.acc.key.clone(),
                self.acc.subject.clone(),
                saved,
                self.acc.expiry,
            );
        } else if let Some(link) = self.link.take() {
            (*link).detach();
            if self.acc.persistent_link {
                // A resumed session that is not kept after this connection. Boxed: rare, and
                // the router's attach should not size every session.
                Box::pin(clear_in_router(&shared.router, &self.acc.key)).await;
            }
        }
        if let (End::Unclean | End::CleanWithWill, Some(mut will)) = (end, self.acc.will.take()) {
            // Never after the session's end (MQTT 5, 3.1.3.2.2): no expiry sends it at once.
            // The expiry is the one in force now, which a DISCONNECT may have changed.
            will.delay = will.delay.min(self.acc.expiry);
            publish_will(
                self.shared.clone(),
                self.acc.subject.clone(),
                self.acc.key.router_id(),
                *will,
            );
        }
    }

    async fn serve(&mut self) -> End {
        if !self.subs.is_empty() || !self.inflight.is_empty() {
            // Resumed: the policy may have changed while the client was away.
            if let Flow::End(end) = self.revalidate() {
                self.flush_last().await;
                return end;
            }
        }
        self.resend_inflight();
        // Data already read behind the CONNECT. Its answers go out before the end, as those
        // of a later read do.
        if let Flow::End(end) = self.process_input().await {
            self.flush_last().await;
            return end;
        }
        let mut policy_open = true;
        let mut token_expiry = crate::ingress::TokenExpiry::new(self.acc.token_ends);
        loop {
            self.count_delivered();
            if !self.wbuf.is_empty() {
                let write = self.stream.write_all(&self.wbuf);
                // A peer that stops reading costs its own connection only, and does not hold
                // up a takeover.
                let write = tokio::time::timeout(self.shared.config.write_timeout, write);
                let written = tokio::select! {
                    written = write => matches!(written, Ok(Ok(()))),
                    _ = self.acc.registration.kicked() => false,
                };
                if !written {
                    return End::Unclean;
                }
                self.wbuf.clear();
                if self.wbuf.capacity() > 64 * 1024 {
                    self.wbuf = BytesMut::new();
                }
            }
            let can_receive = self.can_receive();
            let keep_alive = self.acc.keep_alive;
            let deadline = self.last_rx + keep_alive.mul_f32(1.5);
            tokio::select! {
                read = read_some(&mut self.stream, &mut self.rbuf) => match read {
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
                changed = self.policy.changed(), if policy_open => {
                    if changed.is_err() {
                        // The policy source is gone: keep enforcing the last snapshot.
                        policy_open = false;
                    } else if let Flow::End(end) = self.revalidate() {
                        self.flush_last().await;
                        return end;
                    }
                },
                kick = self.acc.registration.kicked() => {
                    debug_assert_eq!(kick, Kick::TakenOver);
                    self.disconnect(DisconnectReasonCode::SessionTakenOver);
                    self.flush_last().await;
                    return End::Unclean;
                },
                () = token_expiry.expired(), if token_expiry.is_set() => {
                    // The access token expired: the client reconnects with a fresh one.
                    self.shared.metrics.refused("session", "token_expired");
                    self.disconnect(DisconnectReasonCode::MaximumConnectTime);
                    self.flush_last().await;
                    return End::Unclean;
                },
                _ = tokio::time::sleep_until(deadline.into()), if !keep_alive.is_zero() => {
                    self.shared.metrics.refused("session", "keep_alive_timeout");
                    self.disconnect(DisconnectReasonCode::KeepAliveTimeout);
                    self.flush_last().await;
                    return End::Unclean;
                }
            }
            self.flush_pending();
        }
    }

    /// Writes what is buffered before the connection closes, within the write timeout (a
    /// taken-over session within a second, well inside the successor's wait).
    async fn flush_last(&mut self) {
        let mut bound = self.shared.config.write_timeout;
        if self.acc.registration.was_kicked() {
            bound = bound.min(Duration::from_secs(1));
        }
        let write = self.stream.write_all(&self.wbuf);
        let _ = tokio::time::timeout(bound, write).await;
    }

    fn write(&mut self, packet: Packet) {
        if let Err(e) = self.codec.write(packet, &mut self.wbuf) {
            tracing::warn!(error = %e, "could not encode a packet for a client");
        }
    }

    /// Sends a v5 DISCONNECT with a reason; v3 has no server DISCONNECT, the socket closes.
    fn disconnect(&mut self, code: DisconnectReasonCode) {
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
    async fn process_input(&mut self) -> Flow {
        let flow = self.handle_frames().await;
        if let Some(p) = &mut self.publishing {
            p.policy = None;
            p.read_ns = 0;
        }
        // What was accepted before a DISCONNECT, a refusal or a bad packet is routed too.
        match (self.flush_outbox(), flow) {
            (Flow::End(end), _) | (Flow::Continue, Flow::End(end)) => Flow::End(end),
            (Flow::Continue, Flow::Continue) => {
                self.wait_for_router().await;
                Flow::Continue
            }
        }
    }

    /// A publisher that outruns the router waits, unread, while the messages it handed over
    /// are taken in: TCP then slows the client down, instead of an unbounded queue in front
    /// of the router growing (and the router, when it catches up, overwriting what slow
    /// subscribers had not read yet).
    async fn wait_for_router(&mut self) {
        if self.router_backlog < ROUTER_BACKLOG_HIGH {
            return;
        }
        let started = Instant::now();
        loop {
            let backlog = match &self.link {
                Some(link) => link.backlog(),
                None => self.shared.router.backlog(),
            };
            // A router that takes nothing in for a second is not waited for any longer here.
            if backlog < ROUTER_BACKLOG_HIGH / 2 || started.elapsed() > Duration::from_secs(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.router_backlog = 0;
    }

    /// Hands the outbox to the router in one batch and counts it. If the router refuses it,
    /// its acks are taken back and the client is told the server is busy.
    fn flush_outbox(&mut self) -> Flow {
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
        let routed = match own_link {
            Some(link) => link.publish_batch(&mut self.outbox),
            None => self.shared.router.publish_batch(&mut self.outbox),
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
    fn count_delivered(&mut self) {
        if self.delivered > 0 {
            let n = std::mem::take(&mut self.delivered);
            self.shared
                .metrics
                .messages_out(&self.acc.subject.tenant, n);
        }
    }

    /// Whether the session takes another message from its router link: it has one, nothing
    /// waits to be delivered before it, and the in-flight window has room.
    fn can_receive(&self) -> bool {
        self.link.is_some()
            && self.pending.is_empty()
            && self.inflight.len() < usize::from(self.acc.receive_maximum)
    }

    /// Delivers what the router already has for this session, within the in-flight window and
    /// a batch, so that one socket write carries it all.
    fn deliver_ready(&mut self) -> Result<(), crate::router::RouterError> {
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

    async fn handle_frames(&mut self) -> Flow {
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
                        super::codec::FrameError::TooLarge(_) => {
                            DisconnectReasonCode::PacketTooLarge
                        }
                        super::codec::FrameError::Protocol(_) => {
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

    fn handle(&mut self, frame: Frame) -> Step<'_> {
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
                }
            }
            Packet::PubRec(r, _) => {
                if let Some(entry) = self.inflight.get_mut(&r.pkid)
                    && entry.0 == Outbound::Qos2Sent
                {
                    entry.0 = Outbound::Released;
                    self.write(Packet::PubRel(
                        PubRel {
                            pkid: r.pkid,
                            reason: PubRelReason::Success,
                        },
                        None,
                    ));
                }
            }
            Packet::PubComp(c, _) => {
                if self.inflight.get(&c.pkid).map(|e| e.0) == Some(Outbound::Released) {
                    self.inflight.remove(&c.pkid);
                }
            }
            Packet::PubRel(r, _) => {
                let known = self.qos2_in.remove(&r.pkid);
                self.write(Packet::PubComp(
                    PubComp {
                        pkid: r.pkid,
                        reason: if known || self.codec.version() == Version::V4 {
                            PubCompReason::Success
                        } else {
                            PubCompReason::PacketIdentifierNotFound
                        },
                    },
                    None,
                ));
            }
            Packet::Subscribe(s, props) => {
                // MQTT 5: a subscription identifier of 0 (3.8.2.1.2), and No Local on a shared
                // subscription (3.8.3-4), are protocol errors.
                let refused = if props.as_ref().and_then(|p| p.id) == Some(0) {
                    Some("subscription_id_zero")
                } else if s
                    .filters
                    .iter()
                    .any(|f| f.nolocal && f.path.starts_with("$share/"))
                {
                    Some("no_local_shared")
                } else {
                    None
                };
                if let Some(why) = refused {
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
                return Step::Done(Flow::End(
                    if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                        End::CleanWithWill
                    } else {
                        End::Clean
                    },
                ));
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

    /// A v5 DISCONNECT's Session Expiry Interval replaces the CONNECT's, capped by
    /// `max_session_expiry` as that was (MQTT 5, 3.14.2.2.2); setting one where the CONNECT
    /// asked for none is a protocol error (DISCONNECT 0x82, and the will goes out).
    fn expiry_at_disconnect(&mut self, secs: Option<u32>) -> Flow {
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
    fn audit_refused(&self, action: audit::Action, topic: Option<&str>, reason: &str) {
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

    fn policy_now(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Refuses a publish: v5 answers 0x87 on the ack of its QoS; v3 is disconnected.
    fn end_with(
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

async fn receive<L: RouterLink>(
    link: &mut Option<Box<L>>,
) -> Result<Message, crate::router::RouterError> {
    match link {
        Some(l) => l.receive().await,
        None => std::future::pending().await,
    }
}

/// Publishes a will after its delay, if the subject may still publish there. A will whose
/// tenant already has `max_pending_wills_per_tenant` waiting goes out at once.
fn publish_will<R: Router>(shared: Arc<Broker<R>>, subject: Subject, id: String, mut will: Will) {
    if !will.delay.is_zero()
        && !shared
            .pending_wills
            .reserve(&subject.tenant, shared.config.max_pending_wills_per_tenant)
    {
        shared.metrics.refused("will", "tenant_pending_wills_full");
        will.delay = Duration::ZERO;
    }
    let delay = will.delay;
    let task_shared = shared.clone();
    let task_id = id.clone();
    let subject_tenant = subject.tenant.clone();
    let now = Arc::new(tokio::sync::Notify::new());
    let told = now.clone();
    let task = tokio::spawn(async move {
        let shared = task_shared;
        if !will.delay.is_zero() {
            // The delay, or less if the session ends first (`PendingWills::send_now`).
            tokio::select! {
                () = tokio::time::sleep(will.delay) => {}
                () = told.notified() => {}
            }
            shared.pending_wills.remove(&task_id);
        }
        let snapshot = shared.snapshot();
        let message = will.message;
        let request = PublishRequest {
            topic: message.topic,
            payload: message.payload,
            qos: message.qos,
            retain: will.retain,
            props: message.props,
            origin: None,
            protocol: Protocol::Mqtt,
            created_ns: crate::router::now_ns(),
        };
        let publisher = Publisher::of(&subject);
        if let Err(refusal) = shared.publish(&snapshot, &subject, &publisher, request, None) {
            let (_, label) = refusal.labels();
            shared.metrics.refused("will", label);
        }
    });
    if !delay.is_zero() {
        shared
            .pending_wills
            .insert(id, &subject_tenant, task.abort_handle(), now);
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
