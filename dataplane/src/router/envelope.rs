//! What a message carries through rumqttd's router beside its topic and payload: the publish
//! QoS, the retain flag, the publishing session (for no-local), and who published, through
//! which protocol and when.
//!
//! The router keeps only topic and payload of a QoS 0 publish (and v5 properties, which it
//! clones for every subscriber), so the envelope is a few binary bytes in front of the payload:
//! written once per message, and taken off on delivery by slicing, without a copy or an
//! allocation. The router's topic is a route (`<slot>/<bucket>`, `super::routes`), so the
//! message's own topic travels in the envelope too. Layout:
//!
//! | bytes | what |
//! |---|---|
//! | 1 | `MAGIC` |
//! | 1 | flags: QoS (bits 0–1), retain (2), origin present (3), publisher kind (4–5: none, thing, user), protocol (6–7: unspecified, MQTT, HTTP, WebSocket) |
//! | 8 | created, ns since the Unix epoch, little-endian |
//! | 16 | the message id |
//! | 8 | origin, little-endian, only if its flag is set |
//! | 2 | topic length, little-endian |
//! | n | topic |
//! | 2 | publisher name length, little-endian |
//! | n | publisher name, UTF-8 |

use bytes::{BufMut, Bytes, BytesMut};

use super::{Message, MessageId, Protocol, Publisher, PublisherKind};

/// The first byte of every enveloped payload.
const MAGIC: u8 = 0xF1;
/// The first byte of a message stored for persistent sessions (`Message::stored`): the flags
/// byte is full, and the magic costs nothing.
const MAGIC_STORED: u8 = 0xF2;
const RETAIN: u8 = 1 << 2;
const ORIGIN: u8 = 1 << 3;

/// The router topic of `message` on route `(slot, bucket)`, and its payload with the envelope
/// (and its topic) in front: one allocation for both, so that the router's clones of them share
/// one count that no other thread touches (the message's own topic and payload are often slices
/// of a whole socket read, which the reading session goes on using). `None` for a topic too
/// long for the envelope, which MQTT does not allow anyway.
pub(super) fn wrap(message: &Message, (slot, bucket): (u32, u16)) -> Option<(Bytes, Bytes)> {
    let topic_len = u16::try_from(message.topic.len()).ok()?;
    let name = message.publisher.as_ref().map_or("", |p| &p.name);
    // Names are Kubernetes names (at most 253 bytes); a longer one is cut at a char boundary.
    let mut cut = name.len().min(usize::from(u16::MAX));
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = &name[..cut];
    let kind = match message.publisher.as_ref().map(|p| p.kind) {
        None => 0,
        Some(PublisherKind::Thing) => 1,
        Some(PublisherKind::User) => 2,
    };
    let protocol = match message.protocol {
        Protocol::Unspecified => 0,
        Protocol::Mqtt => 1,
        Protocol::Http => 2,
        Protocol::WebSocket => 3,
    };
    let mut flags = (message.qos.min(2)) | (kind << 4) | (protocol << 6);
    if message.retain {
        flags |= RETAIN;
    }
    if message.origin.is_some() {
        flags |= ORIGIN;
    }
    let len = 2
        + 8
        + 16
        + message.origin.map_or(0, |_| 8)
        + 2
        + message.topic.len()
        + 2
        + name.len()
        + message.payload.len();
    let mut out = BytesMut::with_capacity(16 + len);
    let mut digits = itoa::Buffer::new();
    out.put_slice(digits.format(slot).as_bytes());
    out.put_u8(b'/');
    out.put_slice(digits.format(bucket).as_bytes());
    let topic = out.split().freeze();
    out.put_u8(if message.stored { MAGIC_STORED } else { MAGIC });
    out.put_u8(flags);
    out.put_u64_le(message.created_ns);
    out.put_slice(&message.id.to_bytes());
    if let Some(origin) = message.origin {
        out.put_u64_le(origin);
    }
    out.put_u16_le(topic_len);
    out.put_slice(&message.topic);
    out.put_u16_le(name.len() as u16);
    out.put_slice(name.as_bytes());
    out.put_slice(&message.payload);
    Some((topic, out.freeze()))
}

/// What the envelope said; the payload is what follows it.
pub(super) struct Unwrapped {
    pub topic: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub origin: Option<u64>,
    pub protocol: Protocol,
    pub created_ns: u64,
    pub id: MessageId,
    pub stored: bool,
    pub payload: Bytes,
}

/// Takes the envelope off a payload that came out of the router, and the publisher through
/// `last`: a session's messages mostly come from one publisher, whose shared name is reused
/// instead of allocated again. `None` if the payload has no (whole) envelope: only this module
/// writes into the router, so that is a bug, and the caller drops the message.
pub(super) fn unwrap(mut payload: Bytes, last: &mut Option<Publisher>) -> Option<Unwrapped> {
    let head = payload.get(..26)?;
    if head[0] != MAGIC && head[0] != MAGIC_STORED {
        return None;
    }
    let stored = head[0] == MAGIC_STORED;
    let flags = head[1];
    let created_ns = u64::from_le_bytes(head[2..10].try_into().ok()?);
    let id = MessageId::from_slice(&head[10..26])?;
    let mut at = 26;
    let origin = if flags & ORIGIN != 0 {
        let o = u64::from_le_bytes(payload.get(at..at + 8)?.try_into().ok()?);
        at += 8;
        Some(o)
    } else {
        None
    };
    let t = usize::from(u16::from_le_bytes(
        payload.get(at..at + 2)?.try_into().ok()?,
    ));
    at += 2;
    payload.get(at..at + t)?;
    let topic = payload.slice(at..at + t);
    at += t;
    let n = usize::from(u16::from_le_bytes(
        payload.get(at..at + 2)?.try_into().ok()?,
    ));
    at += 2;
    let name = payload.get(at..at + n)?;
    let kind = match (flags >> 4) & 0b11 {
        1 => Some(PublisherKind::Thing),
        2 => Some(PublisherKind::User),
        _ => None,
    };
    match (kind, &*last) {
        (Some(kind), Some(p)) if p.kind == kind && p.name.as_bytes() == name => {}
        (Some(kind), _) => {
            *last = Some(Publisher {
                kind,
                name: std::str::from_utf8(name).ok()?.into(),
            });
        }
        (None, _) => *last = None,
    }
    let protocol = match flags >> 6 {
        1 => Protocol::Mqtt,
        2 => Protocol::Http,
        3 => Protocol::WebSocket,
        _ => Protocol::Unspecified,
    };
    Some(Unwrapped {
        topic,
        qos: (flags & 0b11).min(2),
        retain: flags & RETAIN != 0,
        origin,
        protocol,
        created_ns,
        stored,
        id,
        payload: payload.split_off(at + n),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn message(publisher: Option<Publisher>, origin: Option<u64>, payload: &[u8]) -> Message {
        Message {
            stored: false,
            id: crate::router::MessageId::floor(1_700_000_000_000_000_000),
            topic: Bytes::from_static(b"m/t/c/ch"),
            payload: Bytes::copy_from_slice(payload),
            qos: 1,
            props: None,
            retain: true,
            origin,
            publisher,
            protocol: Protocol::Http,
            created_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn a_truncated_or_foreign_payload_is_not_taken_for_an_envelope() {
        let m = message(
            Some(Publisher {
                kind: PublisherKind::Thing,
                name: "sensor-1".into(),
            }),
            Some(3),
            b"abc",
        );
        let (topic, wrapped) = wrap(&m, (12, 7)).expect("wraps");
        assert_eq!(&topic[..], b"12/7");
        for len in 0..wrapped.len() - 3 {
            assert!(unwrap(wrapped.slice(..len), &mut None).is_none(), "{len}");
        }
        assert!(unwrap(Bytes::from_static(b"plain payload bytes"), &mut None).is_none());
    }

    #[test]
    fn whether_a_message_was_stored_for_persistent_sessions_survives_the_router() {
        let mut m = message(None, None, b"x");
        for stored in [false, true] {
            m.stored = stored;
            let (_, wrapped) = wrap(&m, (0, 0)).expect("wraps");
            assert_eq!(unwrap(wrapped, &mut None).expect("unwraps").stored, stored);
        }
    }

    #[test]
    fn the_last_publisher_is_reused_and_replaced() {
        let thing = |name: &str| {
            Some(Publisher {
                kind: PublisherKind::Thing,
                name: name.into(),
            })
        };
        let mut last = None;
        unwrap(
            wrap(&message(thing("a"), None, b"1"), (0, 0))
                .expect("wraps")
                .1,
            &mut last,
        )
        .expect("an envelope");
        let first = last.clone().expect("a publisher");
        unwrap(
            wrap(&message(thing("a"), None, b"2"), (0, 0))
                .expect("wraps")
                .1,
            &mut last,
        )
        .expect("an envelope");
        let again = last.clone().expect("a publisher");
        assert!(std::sync::Arc::ptr_eq(&first.name, &again.name), "reused");
        unwrap(
            wrap(&message(thing("b"), None, b"3"), (0, 0))
                .expect("wraps")
                .1,
            &mut last,
        )
        .expect("an envelope");
        assert_eq!(last, thing("b"));
        unwrap(
            wrap(&message(None, None, b"4"), (0, 0)).expect("wraps").1,
            &mut last,
        )
        .expect("an envelope");
        assert_eq!(last, None);
    }

    proptest! {
        #[test]
        fn every_field_survives_the_round_trip(
            qos in 0u8..3,
            retain: bool,
            origin: Option<u64>,
            kind in prop::option::of(prop::bool::ANY),
            protocol in 0u8..4,
            created_ns: u64,
            name in "\\PC{0,40}",
            payload in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let publisher = kind.map(|user| Publisher {
                kind: if user { PublisherKind::User } else { PublisherKind::Thing },
                name: name.as_str().into(),
            });
            let protocol = [Protocol::Unspecified, Protocol::Mqtt, Protocol::Http, Protocol::WebSocket]
                [usize::from(protocol)];
            let m = Message {
                qos,
                retain,
                protocol,
                created_ns,
                ..message(publisher.clone(), origin, &payload)
            };
            let mut last = None;
            let (topic, payload_out) = wrap(&m, (3, 250)).expect("wraps");
            prop_assert_eq!(&topic[..], b"3/250");
            let u = unwrap(payload_out, &mut last).expect("an envelope");
            prop_assert_eq!(&u.topic, &m.topic);
            prop_assert_eq!(
                (u.qos, u.retain, u.origin, u.protocol, u.created_ns, &u.payload[..]),
                (qos, retain, origin, protocol, created_ns, &payload[..])
            );
            prop_assert_eq!(last, publisher);
        }
    }
}
