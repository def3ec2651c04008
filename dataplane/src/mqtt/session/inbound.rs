//! Inbound PUBLISH: topic aliases, mountpoints, authorization, limits, retained, QoS 1/2 acks.

use std::time::Duration;

use fleetward_policy::TopicError;
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PubAck, PubAckReason, PubRec, PubRecReason, Publish,
    PublishProperties,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{End, Flow, Session, limits};
use crate::mqtt::codec::Version;
use crate::mqtt::publish::{PublishRefusal, PublishRequest};
use crate::mqtt::reason;
use crate::router::{MessageProps, Protocol, Router};

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
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

    pub(super) async fn on_publish(
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
        if qos == 2 && self.qos2_in.len() >= usize::from(self.shared.config.max_inflight) {
            // Checked before anything is forwarded: a refused publish never reaches anyone.
            return self.end_with(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                "limit",
                "receive_maximum",
            );
        }
        let snapshot = self.policy_now();
        let full = match &self.acc.mount {
            Some(m) => m.mount_topic_name(&topic, &limits()),
            None => std::str::from_utf8(&topic)
                .map(str::to_owned)
                .map_err(|_| TopicError::InvalidUtf8),
        };
        let full = match full {
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
        let props = props.and_then(|p| {
            let m = MessageProps {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
            };
            (!m.is_empty()).then(|| Box::new(m))
        });
        let mut request = PublishRequest {
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
        };
        loop {
            if self.outbox.is_empty() {
                self.outbox_mark = self.wbuf.len();
            }
            let published = self.shared.publish_to_outbox(
                &snapshot,
                &self.acc.subject,
                &self.acc.publisher,
                request,
                &mut self.outbox,
            );
            match published {
                Ok(_) => break,
                Err(PublishRefusal::Topic(e)) if reason::is_invalid_mqtt(e) => {
                    return self.end_with(
                        DisconnectReasonCode::TopicNameInvalid,
                        "publish",
                        e.as_str(),
                    );
                }
                Err(PublishRefusal::Topic(e)) => {
                    return self.refuse_publish(qos, pkid, e.as_str());
                }
                Err(PublishRefusal::Denied(why)) => {
                    return self.refuse_publish(qos, pkid, why.as_str());
                }
                Err(PublishRefusal::TooLarge { .. }) => {
                    return self.end_with(
                        DisconnectReasonCode::PacketTooLarge,
                        "limit",
                        "message_size",
                    );
                }
                Err(PublishRefusal::Rate { .. }) if self.codec.version() == Version::V5 => {
                    return self.end_with(
                        DisconnectReasonCode::MessageRateTooHigh,
                        "limit",
                        "publish_rate",
                    );
                }
                // v3 has no code for it: the connection is throttled (not read) instead.
                Err(PublishRefusal::Rate {
                    retry_after,
                    request: again,
                }) => {
                    self.shared
                        .metrics
                        .refused("limit", "publish_rate_throttled");
                    // What was accepted before the wait does not wait with it.
                    if let Flow::End(end) = self.flush_outbox() {
                        return Flow::End(end);
                    }
                    Box::pin(tokio::time::sleep(retry_after.min(Duration::from_secs(1)))).await;
                    request = *again;
                }
                // Not from `publish_to_outbox`, which does not route: a router refusal surfaces
                // in `flush_outbox`, which answers it the same way.
                Err(PublishRefusal::Router(e)) => {
                    tracing::error!(error = %e, "the router refused a publish");
                    return self.end_with(DisconnectReasonCode::ServerBusy, "publish", e.as_str());
                }
            }
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
        Flow::Continue
    }
}
