//! A connected client's session: reads packets, authorizes, talks to the router, delivers.

mod deliver;
mod persist;

pub(crate) use persist::{SavedSession, SessionStore, clear_in_router};

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fleetward_policy::{
    Action, Decision, PolicyEvaluator, Snapshot, Subject, TopicError, TopicLimits, parse_filter,
    parse_topic_name,
};
use rumqttd::protocol::{
    Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, PingResp, PubAck, PubAckReason,
    PubComp, PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties,
    RetainForwardRule, SubAck, Subscribe, SubscribeProperties, UnsubAck, UnsubAckReason,
    Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{Codec, Frame, Version};
use super::connect::Accepted;
use super::reason;
use super::state::{Kick, Shared};
use crate::router::{Message, MessageProps, Router, RouterLink, SessionMode};

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
    qos: u8,
    id: Option<usize>,
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
    shared: Arc<Shared<R>>,
    stream: S,
    codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    acc: Accepted<R::Link>,
    link: Option<R::Link>,
    subs: Vec<Subscription>,
    inflight: HashMap<u16, (Outbound, OutMsg)>,
    next_pkid: u16,
    pending: VecDeque<Message>,
    qos2_in: HashSet<u16>,
    aliases: HashMap<u16, Bytes>,
    policy: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    last_rx: Instant,
}

enum Flow {
    Continue,
    End(End),
}

fn limits() -> TopicLimits {
    TopicLimits::default()
}

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
    pub(crate) async fn run(
        shared: Arc<Shared<R>>,
        stream: S,
        codec: Codec,
        rbuf: BytesMut,
        mut acc: Accepted<R::Link>,
    ) {
        let mut policy = shared.policy.clone();
        policy.mark_unchanged();
        let link = acc.link.take();
        let saved = acc.saved.take();
        let mut s = Session {
            shared,
            stream,
            codec,
            rbuf,
            wbuf: BytesMut::new(),
            acc,
            link,
            subs: Vec::new(),
            inflight: HashMap::new(),
            next_pkid: 0,
            pending: VecDeque::new(),
            qos2_in: HashSet::new(),
            aliases: HashMap::new(),
            policy,
            last_rx: Instant::now(),
        };
        if let Some(saved) = saved {
            s.subs = saved.subs;
            s.inflight = saved.inflight;
            s.qos2_in = saved.qos2_in;
            s.next_pkid = saved.next_pkid;
        }
        let end = s.serve().await;
        tracing::debug!(client = %s.acc.key.router_id(), ?end, "session ended");
        let shared = s.shared.clone();
        if !s.acc.expiry.is_zero() {
            // Persistent: keep our half; the router keeps its half on detach.
            let saved = SavedSession::new(
                std::mem::take(&mut s.subs),
                std::mem::take(&mut s.inflight),
                std::mem::take(&mut s.qos2_in),
                s.next_pkid,
            );
            if let Some(link) = s.link.take() {
                link.detach();
            }
            let generation = shared.sessions.save(s.acc.key.router_id(), saved);
            persist::expire_later(shared.clone(), s.acc.key.clone(), generation, s.acc.expiry);
        } else if let Some(link) = s.link.take() {
            link.detach();
            if s.acc.persistent_link {
                // A resumed session that is not kept after this connection.
                clear_in_router(&shared.router, &s.acc.key).await;
            }
        }
        if let (End::Unclean | End::CleanWithWill, Some(will)) = (end, s.acc.will.take()) {
            publish_will(s.shared.clone(), s.acc.subject.clone(), will);
        }
    }

    async fn serve(&mut self) -> End {
        if !self.subs.is_empty() || !self.inflight.is_empty() {
            // Resumed: the policy may have changed while the client was away.
            if let Flow::End(end) = self.revalidate() {
                let _ = self.stream.write_all(&self.wbuf).await;
                return end;
            }
        }
        self.resend_inflight();
        // Data already read behind the CONNECT.
        if let Flow::End(end) = self.process_input().await {
            return end;
        }
        let mut policy_open = true;
        loop {
            if !self.wbuf.is_empty() {
                if self.stream.write_all(&self.wbuf).await.is_err() {
                    return End::Unclean;
                }
                self.wbuf.clear();
                if self.wbuf.capacity() > 64 * 1024 {
                    self.wbuf = BytesMut::new();
                }
            }
            let can_receive = self.link.is_some()
                && self.pending.is_empty()
                && self.inflight.len() < usize::from(self.acc.receive_maximum);
            let keep_alive = self.acc.keep_alive;
            let deadline = self.last_rx + keep_alive.mul_f32(1.5);
            tokio::select! {
                read = self.stream.read_buf(&mut self.rbuf) => match read {
                    Ok(0) | Err(_) => return End::Unclean,
                    Ok(_) => {
                        self.last_rx = Instant::now();
                        if let Flow::End(end) = self.process_input().await {
                            let _ = self.stream.write_all(&self.wbuf).await;
                            return end;
                        }
                    }
                },
                message = receive(&mut self.link), if can_receive => match message {
                    Ok(m) => self.deliver(m, false),
                    Err(e) => {
                        tracing::warn!(error = %e, "router link lost; closing the client connection");
                        return End::Unclean;
                    }
                },
                changed = self.policy.changed(), if policy_open => {
                    if changed.is_err() {
                        // The policy source is gone: keep enforcing the last snapshot.
                        policy_open = false;
                    } else if let Flow::End(end) = self.revalidate() {
                        let _ = self.stream.write_all(&self.wbuf).await;
                        return end;
                    }
                },
                kick = self.acc.registration.kicks.recv() => {
                    if kick == Some(Kick::TakenOver) {
                        self.disconnect(DisconnectReasonCode::SessionTakenOver);
                        let _ = self.stream.write_all(&self.wbuf).await;
                        return End::Unclean;
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()), if !keep_alive.is_zero() => {
                    self.shared.metrics.refused("session", "keep_alive_timeout");
                    self.disconnect(DisconnectReasonCode::KeepAliveTimeout);
                    let _ = self.stream.write_all(&self.wbuf).await;
                    return End::Unclean;
                }
            }
            self.flush_pending();
        }
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

    async fn process_input(&mut self) -> Flow {
        loop {
            let max = self.shared.config.max_packet_size;
            match self.codec.read(&mut self.rbuf, max) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    if let Flow::End(end) = self.handle(frame).await {
                        return Flow::End(end);
                    }
                }
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
            }
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 16 * 1024 {
            self.rbuf = BytesMut::with_capacity(256);
        }
        Flow::Continue
    }

    async fn handle(&mut self, frame: Frame) -> Flow {
        match frame.packet {
            Packet::Publish(p, props) => {
                return self
                    .on_publish(p, props, frame.qos, frame.pkid, frame.dup)
                    .await;
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
            // Boxed: subscribing (which may attach a router link) is rare and its state large.
            Packet::Subscribe(s, props) => Box::pin(self.on_subscribe(s, props)).await,
            Packet::Unsubscribe(u, _) => self.on_unsubscribe(u),
            Packet::PingReq(_) => self.write(Packet::PingResp(PingResp)),
            Packet::Disconnect(d, _) => {
                return Flow::End(
                    if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                        End::CleanWithWill
                    } else {
                        End::Clean
                    },
                );
            }
            _ => {
                // A second CONNECT, or a server-to-client packet.
                self.shared.metrics.refused("packet", "protocol_error");
                self.disconnect(DisconnectReasonCode::ProtocolError);
                return Flow::End(End::Unclean);
            }
        }
        Flow::Continue
    }

    fn policy_now(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// Refuses a publish: v5 answers 0x87 on the ack of its QoS; v3 is disconnected.
    fn refuse_publish(&mut self, qos: u8, pkid: u16, label: &'static str) -> Flow {
        self.shared.metrics.refused("publish", label);
        match (self.codec.version(), qos) {
            (Version::V4, _) => Flow::End(End::Closed),
            (Version::V5, 0) => Flow::Continue,
            (Version::V5, 1) => {
                self.write(Packet::PubAck(
                    PubAck {
                        pkid,
                        reason: PubAckReason::NotAuthorized,
                    },
                    None,
                ));
                Flow::Continue
            }
            (Version::V5, _) => {
                self.write(Packet::PubRec(
                    PubRec {
                        pkid,
                        reason: PubRecReason::NotAuthorized,
                    },
                    None,
                ));
                Flow::Continue
            }
        }
    }

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

    async fn on_publish(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        qos: u8,
        pkid: u16,
        dup: bool,
    ) -> Flow {
        // Topic aliases (v5) are resolved here: the real topic is what gets authorized.
        let mut topic = publish.topic;
        let mut props = props;
        if let Some(p) = &mut props {
            if !p.subscription_identifiers.is_empty() {
                return self.end_with(
                    DisconnectReasonCode::ProtocolError,
                    "publish",
                    "subscription_id_in_publish",
                );
            }
            if let Some(alias) = p.topic_alias.take() {
                if alias == 0 || alias > self.shared.config.topic_alias_max {
                    return self.end_with(
                        DisconnectReasonCode::TopicAliasInvalid,
                        "publish",
                        "topic_alias_invalid",
                    );
                }
                if topic.is_empty() {
                    match self.aliases.get(&alias) {
                        Some(t) => topic = t.clone(),
                        None => {
                            return self.end_with(
                                DisconnectReasonCode::ProtocolError,
                                "publish",
                                "unknown_topic_alias",
                            );
                        }
                    }
                } else {
                    self.aliases.insert(alias, topic.clone());
                }
            }
        }
        if qos == 2 && self.qos2_in.contains(&pkid) {
            // A resent QoS 2 publish already forwarded: acknowledge again, forward nothing.
            let _ = dup;
            self.write(Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            ));
            return Flow::Continue;
        }
        let snapshot = self.policy_now();
        let full = match &self.acc.mount {
            Some(m) => m.mount_topic_name(&topic, &limits()),
            None => std::str::from_utf8(&topic)
                .map(str::to_owned)
                .map_err(|_| TopicError::InvalidUtf8),
        };
        let parsed = full
            .as_deref()
            .map_err(|e| *e)
            .and_then(|t| parse_topic_name(t, &limits()));
        let topic_ref = match parsed {
            Ok(t) => t,
            Err(e) if reason::is_invalid_mqtt(e) => {
                return self.end_with(
                    DisconnectReasonCode::TopicNameInvalid,
                    "publish",
                    e.as_str(),
                );
            }
            Err(e) => return self.refuse_publish(qos, pkid, e.as_str()),
        };
        let decision =
            self.shared
                .cache
                .authorize(&*snapshot, &self.acc.subject, Action::Publish, &topic_ref);
        if let Decision::Deny(why) = decision {
            return self.refuse_publish(qos, pkid, why.as_str());
        }
        let tenant = topic_ref.tenant().to_owned();
        let channel_name = topic_ref.channel().to_owned();
        let (max_qos, retained_allowed, channel_max) =
            match snapshot.channel(&tenant, &channel_name) {
                Some(c) => (u8::from(c.max_qos), c.retained_allowed, c.max_message_size),
                None => return self.refuse_publish(qos, pkid, "unknown_channel"),
            };
        let tenant_limits = snapshot
            .tenant(&tenant)
            .map(|t| t.limits.clone())
            .unwrap_or_default();
        let max_size = [tenant_limits.max_message_size, channel_max]
            .into_iter()
            .flatten()
            .min();
        if let Some(max) = max_size
            && publish.payload.len() > max as usize
        {
            return self.end_with(
                DisconnectReasonCode::PacketTooLarge,
                "limit",
                "message_size",
            );
        }
        if let Some(rate) = tenant_limits.publish_rate {
            loop {
                match self.shared.rates.take(
                    &tenant,
                    rate,
                    tenant_limits.publish_burst,
                    Instant::now(),
                ) {
                    Ok(()) => break,
                    Err(_) if self.codec.version() == Version::V5 => {
                        return self.end_with(
                            DisconnectReasonCode::MessageRateTooHigh,
                            "limit",
                            "publish_rate",
                        );
                    }
                    // v3 has no code for it: the connection is throttled (not read) instead.
                    Err(wait) => {
                        self.shared
                            .metrics
                            .refused("limit", "publish_rate_throttled");
                        Box::pin(tokio::time::sleep(wait.min(Duration::from_secs(1)))).await;
                    }
                }
            }
        }
        let props = props.and_then(|p| {
            let user_properties = p.user_properties;
            let m = MessageProps {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties,
            };
            (!m.is_empty()).then(|| Box::new(m))
        });
        let full_topic = match full {
            Ok(t) => t,
            Err(_) => return Flow::Continue,
        };
        let message = Message {
            topic: Bytes::from(full_topic),
            payload: publish.payload,
            qos: qos.min(max_qos),
            props,
        };
        if publish.retain && retained_allowed {
            let topic_str = std::str::from_utf8(&message.topic)
                .unwrap_or_default()
                .to_owned();
            self.shared
                .retained
                .set(&tenant, &channel_name, &topic_str, message.clone());
        }
        let routed = match &mut self.link {
            Some(link) => link.publish(message),
            None => self.shared.router.publish(message),
        };
        if let Err(e) = routed {
            tracing::error!(error = %e, "the router refused a publish");
            return self.end_with(DisconnectReasonCode::ServerBusy, "publish", e.as_str());
        }
        self.shared.metrics.message_in(&tenant);
        match qos {
            1 => self.write(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            2 => {
                if self.qos2_in.len() >= usize::from(self.shared.config.max_inflight) {
                    return self.end_with(
                        DisconnectReasonCode::ReceiveMaximumExceeded,
                        "limit",
                        "receive_maximum",
                    );
                }
                self.qos2_in.insert(pkid);
                self.write(Packet::PubRec(
                    PubRec {
                        pkid,
                        reason: PubRecReason::Success,
                    },
                    None,
                ));
            }
            _ => {}
        }
        Flow::Continue
    }

    async fn link(&mut self) -> Option<&mut R::Link> {
        if self.link.is_none() {
            match self
                .shared
                .router
                .attach(&self.acc.key, SessionMode::Clean)
                .await
            {
                Ok((link, _)) => self.link = Some(link),
                Err(e) => {
                    tracing::error!(error = %e, "could not attach a session to the router");
                    self.shared.metrics.refused("subscribe", e.as_str());
                    return None;
                }
            }
        }
        self.link.as_mut()
    }

    async fn on_subscribe(&mut self, subscribe: Subscribe, props: Option<SubscribeProperties>) {
        let version = self.codec.version();
        let snapshot = self.policy_now();
        let sub_id = props.and_then(|p| p.id);
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for f in subscribe.filters {
            let full = match &self.acc.mount {
                Some(m) => m.mount_filter(f.path.as_bytes(), &limits()),
                None => Ok(f.path.clone()),
            };
            let parsed = full
                .as_deref()
                .map_err(|e| *e)
                .and_then(|t| parse_filter(t, &limits()));
            let topic = match parsed {
                // Shared subscriptions of persistent sessions can crash rumqttd 0.20's router
                // (ROUTER.md §2.8), so they are refused.
                Ok(t) if t.share_group().is_some() && !self.acc.expiry.is_zero() => {
                    self.shared
                        .metrics
                        .refused("subscribe", "shared_subscription_persistent");
                    codes.push(match version {
                        Version::V4 => rumqttd::protocol::SubscribeReasonCode::Failure,
                        Version::V5 => {
                            rumqttd::protocol::SubscribeReasonCode::SharedSubscriptionsNotSupported
                        }
                    });
                    continue;
                }
                Ok(t) => t,
                Err(e) => {
                    self.shared.metrics.refused("subscribe", e.as_str());
                    codes.push(reason::suback_refused(version, reason::is_invalid_mqtt(e)));
                    continue;
                }
            };
            let decision = self.shared.cache.authorize(
                &*snapshot,
                &self.acc.subject,
                Action::Subscribe,
                &topic,
            );
            if let Decision::Deny(why) = decision {
                self.shared.metrics.refused("subscribe", why.as_str());
                codes.push(reason::suback_refused(version, false));
                continue;
            }
            let Some(channel) = snapshot.channel(topic.tenant(), topic.channel()) else {
                codes.push(reason::suback_refused(version, false));
                continue;
            };
            let granted = (f.qos as u8).min(u8::from(channel.max_qos));
            let retained_allowed = channel.retained_allowed;
            let (tenant, channel_name) = (topic.tenant().to_owned(), topic.channel().to_owned());
            let matcher = topic.as_str().to_owned();
            let group = topic.share_group().map(str::to_owned);
            let (full, router) = match &group {
                Some(g) => (
                    format!("$share/{g}/{matcher}"),
                    format!(
                        "$share/{}/{matcher}",
                        router_share_group(&tenant, g, &matcher)
                    ),
                ),
                None => (matcher.clone(), matcher.clone()),
            };
            let existing = self.subs.iter().position(|s| s.full == full);
            let new = existing.is_none();
            match existing {
                Some(i) => {
                    self.subs[i].qos = granted;
                    self.subs[i].id = sub_id;
                }
                None => {
                    let Some(link) = self.link().await else {
                        codes.push(reason::suback_refused(version, false));
                        continue;
                    };
                    if link.subscribe(&router).is_err() {
                        codes.push(reason::suback_refused(version, false));
                        continue;
                    }
                    let client = match &group {
                        Some(_) => f
                            .path
                            .strip_prefix("$share/")
                            .and_then(|r| r.split_once('/'))
                            .map_or(f.path.as_str(), |(_, f)| f)
                            .to_owned(),
                        None => f.path.clone(),
                    };
                    self.subs.push(Subscription {
                        client,
                        full: full.clone(),
                        matcher: matcher.clone(),
                        router,
                        qos: granted,
                        id: sub_id,
                    });
                }
            }
            codes.push(reason::suback_granted(granted));
            let send_retained = match f.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => true,
                RetainForwardRule::OnNewSubscribe => new,
                RetainForwardRule::Never => false,
            };
            // Retained messages are never sent to shared subscriptions.
            if send_retained && retained_allowed && group.is_none() {
                retained.extend(
                    self.shared
                        .retained
                        .matching(&tenant, &channel_name, &matcher),
                );
            }
        }
        self.write(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes: codes,
            },
            None,
        ));
        for m in retained {
            self.pending.push_back(m);
        }
        self.flush_pending();
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for f in unsubscribe.filters {
            let full = match &self.acc.mount {
                Some(m) => m.mount_filter(f.as_bytes(), &limits()).unwrap_or_default(),
                None => f,
            };
            match self.subs.iter().position(|s| s.full == full) {
                Some(i) => {
                    let sub = self.subs.swap_remove(i);
                    self.router_unsubscribe(&sub.router);
                    reasons.push(UnsubAckReason::Success);
                }
                None => reasons.push(UnsubAckReason::NoSubscriptionExisted),
            }
        }
        self.write(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
    }

    /// Removes a router subscription. rumqttd 0.20 also drops the session from every shared
    /// group on any unsubscribe, so the remaining shared subscriptions are renewed.
    fn router_unsubscribe(&mut self, router_filter: &str) {
        let Some(link) = &mut self.link else {
            return;
        };
        let _ = link.unsubscribe(router_filter);
        for sub in self.subs.iter().filter(|s| s.router.starts_with("$share/")) {
            let _ = link.subscribe(&sub.router);
        }
    }

    /// Re-checks the session and its subscriptions against a new snapshot.
    fn revalidate(&mut self) -> Flow {
        let snapshot = self.policy.borrow_and_update().clone();
        let subject: &Subject = &self.acc.subject;
        if let Err(refusal) = snapshot.check_subject(subject) {
            return self.end_with(
                DisconnectReasonCode::AdministrativeAction,
                "revoked",
                refusal.reason.as_str(),
            );
        }
        // A key removed after rotation ends the sessions that used it.
        if let Some(digest) = &self.acc.key_digest {
            let still = snapshot
                .thing(&subject.tenant, &subject.name)
                .is_some_and(|t| t.key_digests.iter().any(|d| d.ct_eq(digest)));
            if !still {
                return self.end_with(
                    DisconnectReasonCode::AdministrativeAction,
                    "revoked",
                    "key_removed",
                );
            }
        }
        let mut revoked = Vec::new();
        for (i, sub) in self.subs.iter_mut().enumerate() {
            let allowed = parse_filter(&sub.full, &limits()).is_ok_and(|t| {
                let ok = self
                    .shared
                    .cache
                    .authorize(&*snapshot, &self.acc.subject, Action::Subscribe, &t)
                    .is_allowed();
                if let Some(c) = snapshot.channel(t.tenant(), t.channel()) {
                    sub.qos = sub.qos.min(u8::from(c.max_qos));
                }
                ok
            });
            if !allowed {
                revoked.push(i);
            }
        }
        for i in revoked.into_iter().rev() {
            let sub = self.subs.swap_remove(i);
            self.shared.metrics.refused("revoked", "subscription");
            self.router_unsubscribe(&sub.router);
        }
        Flow::Continue
    }
}

/// The router-side name of a shared group: per tenant and per filter, because rumqttd 0.20
/// keys groups by name alone, across tenants and filters (ROUTER.md §2.8).
fn router_share_group(tenant: &str, group: &str, filter: &str) -> String {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same name on every pod and restart.
    let mut h = std::hash::DefaultHasher::new();
    filter.hash(&mut h);
    format!("{tenant}~{}~{group}~{:016x}", group.len(), h.finish())
}

async fn receive<L: RouterLink>(
    link: &mut Option<L>,
) -> Result<Message, crate::router::RouterError> {
    match link {
        Some(l) => l.receive().await,
        None => std::future::pending().await,
    }
}

/// Publishes a will after its delay, if the subject may still publish there.
fn publish_will<R: Router>(shared: Arc<Shared<R>>, subject: Subject, will: Will) {
    tokio::spawn(async move {
        if !will.delay.is_zero() {
            tokio::time::sleep(will.delay).await;
        }
        let snapshot = shared.snapshot();
        let Ok(topic_str) = std::str::from_utf8(&will.message.topic) else {
            return;
        };
        let Ok(topic) = parse_topic_name(topic_str, &limits()) else {
            return;
        };
        if !shared
            .cache
            .authorize(&*snapshot, &subject, Action::Publish, &topic)
            .is_allowed()
        {
            shared.metrics.refused("will", "not_allowed");
            return;
        }
        let Some(channel) = snapshot.channel(topic.tenant(), topic.channel()) else {
            return;
        };
        let mut message = will.message.clone();
        message.qos = message.qos.min(u8::from(channel.max_qos));
        if will.retain && channel.retained_allowed {
            shared
                .retained
                .set(topic.tenant(), topic.channel(), topic_str, message.clone());
        }
        let tenant = topic.tenant().to_owned();
        if shared.router.publish(message).is_ok() {
            shared.metrics.message_in(&tenant);
        }
    });
}
