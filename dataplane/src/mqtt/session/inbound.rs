//! Inbound PUBLISH: topic aliases, mountpoints, authorization, limits, retained, QoS 1/2 acks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetward_policy::{Snapshot, TopicError};
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PubAck, PubAckReason, PubRec, PubRecReason, Publish,
    PublishProperties,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{End, Flow, Session, Step, limits};
use crate::audit;
use crate::ingress::{PublishRefusal, PublishRequest};
use crate::mqtt::codec::Version;
use crate::mqtt::reason;
use crate::mqtt::response_topic::{mount_response_topic, response_topic_is_protocol_error};
use crate::router::message_props;
use crate::router::{Protocol, Router};

/// A v3 publish held back by its tenant's publish rate, to be routed once a token is free.
pub(super) struct Throttled {
    request: PublishRequest,
    retry_after: Duration,
    qos: u8,
    pkid: u16,
}

/// The v5 answer to a refused publish.
#[derive(Clone, Copy)]
enum RefusalCode {
    /// 0x87.
    NotAuthorized,
    /// 0x97.
    QuotaExceeded,
}

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
    /// Refuses a v5 publish whose response topic is not one: a wildcard or an empty one is a
    /// protocol error (DISCONNECT 0x82); a valid MQTT name outside Fleetward's topics is
    /// answered 0x83 on the publish's ack (a QoS 0 one is dropped), and counted.
    fn refuse_response_topic(&mut self, qos: u8, pkid: u16, e: TopicError) -> Flow {
        if response_topic_is_protocol_error(e) {
            return self.end_with(
                DisconnectReasonCode::ProtocolError,
                "publish",
                "response_topic_invalid",
            );
        }
        self.shared
            .metrics
            .refused("publish", "response_topic_invalid");
        self.audit_refused(audit::Action::Publish, None, "response_topic_invalid");
        match qos {
            0 => {}
            1 => self.write(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::ImplementationSpecificError,
                },
                None,
            )),
            _ => self.write(Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::ImplementationSpecificError,
                },
                None,
            )),
        }
        Flow::Continue
    }

    /// Reports a refused publish to the audit trail: not a v3 client's rate (it is throttled,
    /// not refused) nor the router's failure (the server's, not the client's).
    fn audit_publish(&mut self, refusal: &PublishRefusal) {
        let topic = match refusal {
            PublishRefusal::Router(_) => return,
            PublishRefusal::Rate { .. } if self.codec.version() == Version::V4 => return,
            PublishRefusal::Rate { request, .. } => {
                Some(String::from_utf8_lossy(&request.topic).into_owned())
            }
            _ => self.publishing.as_mut().and_then(|p| p.memo.take_refused()),
        };
        self.audit_refused(audit::Action::Publish, topic.as_deref(), refusal.labels().1);
    }

    fn refuse_publish(&mut self, qos: u8, pkid: u16, label: &'static str) -> Flow {
        self.refuse_with(qos, pkid, ("publish", label), RefusalCode::NotAuthorized)
    }

    /// A publish over its tenant's retained-message quota: v5 PUBACK/PUBREC 0x97 (a QoS 0 one
    /// is dropped, and counted); v3 has no code for it and is disconnected.
    fn refuse_over_quota(&mut self, qos: u8, pkid: u16, label: &'static str) -> Flow {
        self.refuse_with(qos, pkid, ("limit", label), RefusalCode::QuotaExceeded)
    }

    /// Counts a refused publish as `what`/`label` and answers it: v3 is disconnected, v5 gets
    /// `code` on its PUBACK (QoS 1) or PUBREC (QoS 2), and a QoS 0 one is dropped.
    fn refuse_with(
        &mut self,
        qos: u8,
        pkid: u16,
        (what, label): (&'static str, &'static str),
        code: RefusalCode,
    ) -> Flow {
        self.shared.metrics.refused(what, label);
        let (ack, rec) = match code {
            RefusalCode::NotAuthorized => {
                (PubAckReason::NotAuthorized, PubRecReason::NotAuthorized)
            }
            RefusalCode::QuotaExceeded => {
                (PubAckReason::QuotaExceeded, PubRecReason::QuotaExceeded)
            }
        };
        match (self.codec.version(), qos) {
            (Version::V4, _) => return Flow::End(End::Closed),
            (Version::V5, 0) => {}
            (Version::V5, 1) => self.write(Packet::PubAck(PubAck { pkid, reason: ack }, None)),
            (Version::V5, _) => self.write(Packet::PubRec(PubRec { pkid, reason: rec }, None)),
        }
        Flow::Continue
    }

    pub(super) fn on_publish(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        qos: u8,
        pkid: u16,
        dup: bool,
    ) -> Step<'_> {
        // Topic aliases (v5) are resolved here: the real topic is what gets authorized.
        let mut topic = publish.topic;
        let mut props = props;
        if let Some(p) = &mut props
            && let Err(flow) = self.check_properties(&mut topic, p, qos, pkid)
        {
            return Step::Done(flow);
        }
        if let Some(flow) = self.qos2_resent_or_over(qos, pkid, dup) {
            return Step::Done(flow);
        }
        let full = match self.mounted(topic, qos, pkid) {
            Ok(full) => full,
            Err(flow) => return Step::Done(flow),
        };
        let props = props.and_then(message_props);
        // One clock reading and one snapshot for every publish of a socket read, without
        // touching the snapshot's shared count per publish.
        let publishing = self.publishing.get_or_insert_default();
        if publishing.read_ns == 0 {
            publishing.read_ns = crate::router::now_ns();
        }
        let created_ns = publishing.read_ns;
        let snapshot = match publishing.policy.take() {
            Some(s) => s,
            None => self.shared.snapshot(),
        };
        let request = PublishRequest {
            topic: full,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            props,
            origin: self
                .shared
                .no_local_seen
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| self.acc.registration.conn()),
            protocol: Protocol::Mqtt,
            created_ns,
        };
        let routed = self.route_publish(&snapshot, request, qos, pkid);
        if let Some(p) = &mut self.publishing {
            p.policy = Some(snapshot);
        }
        match routed {
            Ok(flow) => Step::Done(flow),
            Err(throttled) => Step::Wait(Box::pin(self.throttled(throttled))),
        }
    }

    /// A PUBLISH's v5 properties: no subscription identifiers, the response topic checked (and
    /// mounted), the topic alias resolved into `topic` or learnt from it.
    fn check_properties(
        &mut self,
        topic: &mut Bytes,
        p: &mut PublishProperties,
        qos: u8,
        pkid: u16,
    ) -> Result<(), Flow> {
        if !p.subscription_identifiers.is_empty() {
            return Err(self.end_with(
                DisconnectReasonCode::ProtocolError,
                "publish",
                "subscription_id_in_publish",
            ));
        }
        if let Some(rt) = &mut p.response_topic {
            match mount_response_topic(self.acc.mount.as_ref(), rt) {
                Ok(None) => {}
                Ok(Some(full)) => *rt = full,
                Err(e) => return Err(self.refuse_response_topic(qos, pkid, e)),
            }
        }
        let Some(alias) = p.topic_alias.take() else {
            return Ok(());
        };
        if alias == 0 || alias > self.shared.config.topic_alias_max {
            return Err(self.end_with(
                DisconnectReasonCode::TopicAliasInvalid,
                "publish",
                "topic_alias_invalid",
            ));
        }
        if !topic.is_empty() {
            self.aliases.insert(alias, topic.clone());
            return Ok(());
        }
        match self.aliases.get(&alias) {
            Some(t) => {
                *topic = t.clone();
                Ok(())
            }
            None => Err(self.end_with(
                DisconnectReasonCode::ProtocolError,
                "publish",
                "unknown_topic_alias",
            )),
        }
    }

    /// A QoS 2 publish resent after it was forwarded is acknowledged again and forwards
    /// nothing; one over the inbound window ends the connection. `None`: neither.
    fn qos2_resent_or_over(&mut self, qos: u8, pkid: u16, dup: bool) -> Option<Flow> {
        if qos == 2 && self.qos2_in.contains(&pkid) {
            let _ = dup;
            self.write(Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::Success,
                },
                None,
            ));
            return Some(Flow::Continue);
        }
        if qos == 2 && self.qos2_in.len() >= usize::from(self.shared.config.max_inflight) {
            // Checked before anything is forwarded: a refused publish never reaches anyone.
            return Some(self.end_with(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                "limit",
                "receive_maximum",
            ));
        }
        None
    }

    /// The full topic of a publish: mounted for a mounted thing.
    fn mounted(&mut self, topic: Bytes, qos: u8, pkid: u16) -> Result<Bytes, Flow> {
        let full = match &self.acc.mount {
            Some(m) => m
                .mount_topic_name(&topic, &limits())
                .map(Bytes::from)
                .map_err(|e| (e, topic)),
            // Checked for UTF-8 where it is authorized (or found equal to a topic that was).
            None => Ok(topic),
        };
        match full {
            Ok(t) => Ok(t),
            Err((e, _)) if reason::is_invalid_mqtt(e) => Err(self.end_with(
                DisconnectReasonCode::TopicNameInvalid,
                "publish",
                e.as_str(),
            )),
            Err((e, topic)) => {
                let given = String::from_utf8_lossy(&topic);
                self.audit_refused(audit::Action::Publish, Some(&given), e.as_str());
                Err(self.refuse_publish(qos, pkid, e.as_str()))
            }
        }
    }

    /// Waits out a throttled publish's rate limit, then routes it (again, until a token is
    /// free).
    async fn throttled(&mut self, mut t: Box<Throttled>) -> Flow {
        loop {
            tokio::time::sleep(t.retry_after.min(Duration::from_secs(1))).await;
            // Decided on the policy of now: a grant revoked during the wait holds.
            let snapshot = self.policy_now();
            match self.route_publish(&snapshot, t.request, t.qos, t.pkid) {
                Ok(flow) => {
                    // The rest of the read is decided on the policy of now, not of before the
                    // wait.
                    if let Some(p) = &mut self.publishing {
                        p.policy = None;
                    }
                    return flow;
                }
                Err(again) => t = again,
            }
        }
    }

    /// Puts an authorized-so-far publish in the outbox and acknowledges it, or refuses it; a
    /// v3 publish over its tenant's rate comes back to be retried after the wait.
    fn route_publish(
        &mut self,
        snapshot: &Arc<Snapshot>,
        request: PublishRequest,
        qos: u8,
        pkid: u16,
    ) -> Result<Flow, Box<Throttled>> {
        if self.outbox.is_empty() {
            self.outbox_mark = self.wbuf.len();
        }
        let published = self.shared.publish_to_outbox(
            snapshot,
            &self.acc.subject,
            &self.acc.publisher,
            request,
            &mut self.outbox,
            &mut self.publishing.get_or_insert_default().memo,
        );
        if let Err(refusal) = published {
            self.audit_publish(&refusal);
            return self.answer_refusal(refusal, qos, pkid);
        }
        match qos {
            1 => self.write(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            2 => {
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
        Ok(Flow::Continue)
    }

    /// Answers a refused publish as MQTT can: a code on its ack, or the connection ended; a v3
    /// publish over its tenant's rate comes back to wait.
    fn answer_refusal(
        &mut self,
        refusal: PublishRefusal,
        qos: u8,
        pkid: u16,
    ) -> Result<Flow, Box<Throttled>> {
        Ok(match refusal {
            PublishRefusal::Topic(e) if reason::is_invalid_mqtt(e) => self.end_with(
                DisconnectReasonCode::TopicNameInvalid,
                "publish",
                e.as_str(),
            ),
            PublishRefusal::Topic(e) => self.refuse_publish(qos, pkid, e.as_str()),
            PublishRefusal::Denied(why) => self.refuse_publish(qos, pkid, why.as_str()),
            PublishRefusal::TooLarge { .. } => self.end_with(
                DisconnectReasonCode::PacketTooLarge,
                "limit",
                "message_size",
            ),
            PublishRefusal::Quota(q) => self.refuse_over_quota(qos, pkid, q.as_str()),
            // Refused like a quota: v5 PUBACK 0x97 (the client may retry); v3, which has no
            // code for it, is disconnected and resends its unacknowledged QoS 1/2 publishes.
            PublishRefusal::HistoryBehind => self.refuse_over_quota(qos, pkid, "history_behind"),
            // MQTT 5 has no PUBACK code for it: the packet as a whole is refused.
            PublishRefusal::TooManyUserProperties { .. } => self.end_with(
                DisconnectReasonCode::PacketTooLarge,
                "limit",
                "user_properties",
            ),
            PublishRefusal::Rate { .. } if self.codec.version() == Version::V5 => self.end_with(
                DisconnectReasonCode::MessageRateTooHigh,
                "limit",
                "publish_rate",
            ),
            // v3 has no code for it: the connection is throttled (not read) instead.
            PublishRefusal::Rate {
                retry_after,
                request,
            } => {
                self.shared
                    .metrics
                    .refused("limit", "publish_rate_throttled");
                // What was accepted before the wait does not wait with it.
                if let Flow::End(end) = self.flush_outbox() {
                    return Ok(Flow::End(end));
                }
                return Err(Box::new(Throttled {
                    request: *request,
                    retry_after,
                    qos,
                    pkid,
                }));
            }
            // Not from `publish_to_outbox`, which does not route: a router refusal surfaces
            // in `flush_outbox`, which answers it the same way.
            PublishRefusal::Router(e) => {
                tracing::error!(error = %e, "the router refused a publish");
                self.end_with(DisconnectReasonCode::ServerBusy, "publish", e.as_str())
            }
        })
    }
}
