//! The router's `Message` as the internal protobuf message on the bus, and duplicate detection.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use fleetward_proto::message::v1 as pb;
use prost::Message as _;

use crate::router::{Message, MessageId, MessageProps, Protocol, Publisher, PublisherKind, now_ns};

/// A message as it came off the bus.
#[derive(Debug)]
pub struct Received {
    /// The message for the local router (no local origin: session ids are per pod).
    pub message: Message,
    /// The pod that accepted it.
    pub origin_pod: String,
    /// Its sequence number from that pod.
    pub sequence: u64,
}

/// Why bytes from the bus are not a message we can deliver.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a protobuf `fleetward.message.v1.Message`.
    #[error("not an internal message: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The QoS is out of range or the tenant or channel is empty.
    #[error("an internal message with {0}")]
    Invalid(&'static str),
}

/// Encodes a message for the bus; `None` for a topic outside `m/<tenant>/c/<channel>`.
pub fn encode(message: &Message, origin_pod: &str, sequence: u64) -> Option<Vec<u8>> {
    let topic = std::str::from_utf8(&message.topic).ok()?;
    let (tenant, channel, subtopic) = super::subject::split(topic)?;
    let props = message.props.as_deref();
    let wire = pb::Message {
        tenant: tenant.to_owned(),
        channel: channel.to_owned(),
        subtopic: subtopic.map(str::to_owned),
        publisher: message.publisher.as_ref().map(|p| pb::Publisher {
            kind: match p.kind {
                PublisherKind::Thing => pb::PublisherKind::Thing,
                PublisherKind::User => pb::PublisherKind::User,
            }
            .into(),
            name: p.name.to_string(),
        }),
        protocol: match message.protocol {
            Protocol::Unspecified => pb::Protocol::Unspecified,
            Protocol::Mqtt => pb::Protocol::Mqtt,
            Protocol::Http => pb::Protocol::Http,
            Protocol::WebSocket => pb::Protocol::Websocket,
        }
        .into(),
        content_type: props.and_then(|p| p.content_type.clone()),
        payload: message.payload.to_vec(),
        qos: u32::from(message.qos),
        retain: message.retain,
        created_ns: if message.created_ns == 0 {
            now_ns()
        } else {
            message.created_ns
        },
        origin_pod: origin_pod.to_owned(),
        id: message.id.to_bytes().to_vec(),
        user_properties: props
            .map(|p| {
                p.user_properties
                    .iter()
                    .map(|(key, value)| pb::UserProperty {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        payload_format_indicator: props
            .and_then(|p| p.payload_format_indicator)
            .map(u32::from),
        message_expiry_interval: props.and_then(|p| p.message_expiry_interval),
        response_topic: props.and_then(|p| p.response_topic.clone()),
        correlation_data: props.and_then(|p| p.correlation_data.as_ref().map(|c| c.to_vec())),
        bus_sequence: sequence,
        stored: message.stored,
    };
    Some(wire.encode_to_vec())
}

/// Decodes a message from the bus. A v5 message expiry counts down the time since it was
/// accepted; `None` inside `Ok` means it has already expired.
pub fn decode(bytes: &[u8]) -> Result<Option<Received>, DecodeError> {
    let wire = pb::Message::decode(bytes)?;
    if wire.tenant.is_empty() || wire.channel.is_empty() {
        return Err(DecodeError::Invalid("an empty tenant or channel"));
    }
    let qos = u8::try_from(wire.qos)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or(DecodeError::Invalid("a QoS above 2"))?;
    let mut expiry = wire.message_expiry_interval;
    if let Some(secs) = &mut expiry {
        let age = Duration::from_nanos(now_ns().saturating_sub(wire.created_ns));
        let age = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
        if age >= *secs {
            return Ok(None);
        }
        *secs -= age;
    }
    let props = MessageProps {
        payload_format_indicator: wire
            .payload_format_indicator
            .and_then(|p| u8::try_from(p).ok()),
        message_expiry_interval: expiry,
        content_type: wire.content_type,
        response_topic: wire.response_topic,
        correlation_data: wire.correlation_data.map(Bytes::from),
        user_properties: wire
            .user_properties
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect(),
    };
    let mut topic = format!("m/{}/c/{}", wire.tenant, wire.channel);
    if let Some(sub) = &wire.subtopic {
        topic.push('/');
        topic.push_str(sub);
    }
    Ok(Some(Received {
        message: Message {
            stored: wire.stored,
            topic: Bytes::from(topic),
            payload: Bytes::from(wire.payload),
            qos,
            props: (!props.is_empty()).then(|| Box::new(props)),
            retain: wire.retain,
            origin: None,
            publisher: wire.publisher.map(|p| Publisher {
                kind: match pb::PublisherKind::try_from(p.kind) {
                    Ok(pb::PublisherKind::User) => PublisherKind::User,
                    _ => PublisherKind::Thing,
                },
                name: p.name.into(),
            }),
            protocol: match pb::Protocol::try_from(wire.protocol) {
                Ok(pb::Protocol::Mqtt) => Protocol::Mqtt,
                Ok(pb::Protocol::Http) => Protocol::Http,
                Ok(pb::Protocol::Websocket) => Protocol::WebSocket,
                _ => Protocol::Unspecified,
            },
            created_ns: wire.created_ns,
            id: MessageId::from_slice(&wire.id).unwrap_or_else(|| MessageId::new(wire.created_ns)),
        },
        origin_pod: wire.origin_pod,
        sequence: wire.bus_sequence,
    }))
}

/// How many recent sequence numbers are remembered per origin pod.
const WINDOW: u64 = 4096;

/// The sequence numbers already delivered, per origin pod, over a sliding window: a message
/// that reached this pod through two subscriptions (only while a subscription set changes) is
/// delivered once.
#[derive(Default)]
pub struct Seen {
    by_origin: HashMap<String, BTreeSet<u64>>,
}

impl Seen {
    /// Whether `sequence` from `origin` is new; remembers it. Sequence 0 (a sender that does
    /// not number its messages) is always new.
    pub fn first_time(&mut self, origin: &str, sequence: u64) -> bool {
        if sequence == 0 {
            return true;
        }
        let seen = match self.by_origin.get_mut(origin) {
            Some(s) => s,
            None => self.by_origin.entry(origin.to_owned()).or_default(),
        };
        let top = seen.last().copied().unwrap_or(0);
        if sequence.saturating_add(WINDOW) <= top || !seen.insert(sequence) {
            return false;
        }
        let floor = seen.last().copied().unwrap_or(0).saturating_sub(WINDOW);
        while seen.first().is_some_and(|s| *s <= floor) {
            seen.pop_first();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Message {
        Message {
            stored: false,
            id: crate::router::MessageId::floor(1_700_000_000_000_000_000),
            topic: Bytes::from_static(b"m/acme/c/x/a//b"),
            payload: Bytes::from_static(b"hello"),
            qos: 1,
            props: Some(Box::new(MessageProps {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(3600),
                content_type: Some("text/plain".into()),
                response_topic: Some("m/acme/c/y".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![
                    ("k".into(), "v1".into()),
                    ("k".into(), "v2".into()),
                    ("a".into(), String::new()),
                ],
            })),
            retain: true,
            origin: Some(42),
            publisher: Some(Publisher {
                kind: PublisherKind::User,
                name: "alice".into(),
            }),
            protocol: Protocol::Http,
            created_ns: now_ns(),
        }
    }

    #[test]
    fn everything_but_the_local_origin_survives_the_trip() {
        let sent = full();
        let bytes = encode(&sent, "pod-a", 9).expect("our topic");
        let back = decode(&bytes).expect("decodes").expect("not expired");
        assert_eq!((back.origin_pod.as_str(), back.sequence), ("pod-a", 9));
        let mut want = sent;
        want.origin = None;
        // A second may pass between encoding and decoding.
        let got_expiry = back
            .message
            .props
            .as_ref()
            .and_then(|p| p.message_expiry_interval);
        assert!(matches!(got_expiry, Some(3599 | 3600)), "{got_expiry:?}");
        if let Some(p) = want.props.as_mut() {
            p.message_expiry_interval = got_expiry;
        }
        assert_eq!(back.message, want);
    }

    #[test]
    fn a_plain_message_on_the_channel_itself_has_no_props() {
        let m = Message {
            stored: false,
            id: crate::router::MessageId::floor(1_700_000_000_000_000_000),
            topic: Bytes::from_static(b"m/acme/c/x"),
            payload: Bytes::new(),
            qos: 0,
            props: None,
            retain: false,
            origin: None,
            publisher: None,
            protocol: Protocol::Unspecified,
            created_ns: 5,
        };
        let back = decode(&encode(&m, "p", 1).expect("ours"))
            .expect("decodes")
            .expect("live");
        assert_eq!(back.message, m);
    }

    #[test]
    fn foreign_topics_bad_bytes_and_expired_messages_are_refused() {
        let mut m = full();
        m.topic = Bytes::from_static(b"$SYS/x");
        assert!(encode(&m, "p", 1).is_none());
        assert!(decode(b"\xff\xff\xff").is_err());
        let wire = pb::Message {
            tenant: "t".into(),
            channel: "c".into(),
            qos: 3,
            ..Default::default()
        };
        assert!(decode(&wire.encode_to_vec()).is_err());
        let empty = pb::Message::default();
        assert!(decode(&empty.encode_to_vec()).is_err());
        let old = pb::Message {
            tenant: "t".into(),
            channel: "c".into(),
            message_expiry_interval: Some(5),
            created_ns: now_ns() - 10_000_000_000,
            ..Default::default()
        };
        assert!(decode(&old.encode_to_vec()).expect("decodes").is_none());
    }

    #[test]
    fn a_sequence_is_delivered_once_per_origin() {
        let mut seen = Seen::default();
        assert!(seen.first_time("a", 10));
        assert!(!seen.first_time("a", 10));
        assert!(seen.first_time("b", 10), "origins are apart");
        assert!(seen.first_time("a", 12));
        assert!(seen.first_time("a", 11), "late but within the window");
        assert!(!seen.first_time("a", 11));
        assert!(seen.first_time("a", 10 + 2 * WINDOW));
        assert!(!seen.first_time("a", 12), "behind the window");
        assert!(seen.first_time("a", 0) && seen.first_time("a", 0));
        assert!(seen.by_origin["a"].len() <= usize::try_from(WINDOW).unwrap_or(usize::MAX));
    }
}
