//! MQTT framing with rumqttd's codec, plus the guards and peeks it needs (dataplane/ROUTER.md §3).

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::{Packet, Protocol, Publish, v4::V4, v5::V5};

/// The protocol version of a connection, chosen from its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.
    V5,
}

/// Why the bytes on a connection cannot be framed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The bytes do not form a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A packet larger than allowed.
    #[error("a packet of {0} bytes is over the limit")]
    TooLarge(usize),
    /// A packet type a client must not send (or not now).
    #[error("a client must not send packet type {0}")]
    Protocol(u8),
    /// A CONNECT with a protocol level other than 4 or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
}

impl FrameError {
    /// A stable label for metrics.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            FrameError::Malformed(_) => "malformed",
            FrameError::TooLarge(_) => "too_large",
            FrameError::Protocol(_) => "protocol_error",
            FrameError::UnsupportedVersion(_) => "unsupported_version",
        }
    }
}

/// A decoded packet with what rumqttd's `Publish` keeps private.
#[derive(Debug)]
pub(crate) struct Frame {
    pub packet: Packet,
    /// PUBLISH QoS (0 for other packets).
    pub qos: u8,
    /// PUBLISH packet id (0 for QoS 0 and other packets).
    pub pkid: u16,
    /// PUBLISH DUP flag.
    pub dup: bool,
}

/// The fixed header: (first byte, header length, remaining length); `None` when incomplete.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, FrameError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((byte1, 2 + i, len)));
        }
    }
    Err(FrameError::Malformed(
        "the remaining length is longer than 4 bytes".into(),
    ))
}

/// A variable byte integer at the start of `buf`: (its length, its value).
fn varint(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((i + 1, value));
        }
    }
    None
}

/// A complete frame's header, checked against `max` (the remaining length, as rumqttd counts).
fn complete_frame(buf: &[u8], max: usize) -> Result<Option<(u8, usize, usize)>, FrameError> {
    let Some((byte1, header, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    if remaining > max {
        return Err(FrameError::TooLarge(remaining));
    }
    if buf.len() < header + remaining {
        return Ok(None);
    }
    Ok(Some((byte1, header, remaining)))
}

/// Picks the version from the first packet, which must be a complete CONNECT.
pub(crate) fn peek_version(buf: &[u8], max: usize) -> Result<Option<Version>, FrameError> {
    // Refuse anything but CONNECT at the first byte, without waiting for a whole frame.
    if let Some(&byte1) = buf.first()
        && byte1 != 0x10
    {
        return Err(FrameError::Protocol(byte1 >> 4));
    }
    let Some((_, header, remaining)) = complete_frame(buf, max)? else {
        return Ok(None);
    };
    // The CONNECT's own bytes only: what follows it depends on how the reads split.
    let body = &buf[header..header + remaining];
    let name_len = match body {
        [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
        _ => {
            return Err(FrameError::Malformed(
                "CONNECT without protocol name".into(),
            ));
        }
    };
    match body.get(2 + name_len) {
        Some(4) => Ok(Some(Version::V4)),
        Some(5) => Ok(Some(Version::V5)),
        Some(&level) => Err(FrameError::UnsupportedVersion(level)),
        None => Err(FrameError::Malformed(
            "CONNECT without protocol level".into(),
        )),
    }
}

/// Reads and writes packets of one version.
pub(crate) struct Codec {
    version: Version,
}

impl Codec {
    pub(crate) fn new(version: Version) -> Self {
        Self { version }
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The next complete packet from the front of `buf`, if any. `max` limits the remaining
    /// length, checked before the body is buffered.
    pub(crate) fn read(&self, buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
        let Some((byte1, header, remaining)) = complete_frame(buf, max)? else {
            return Ok(None);
        };
        let kind = byte1 >> 4;
        // Types a server receives. rumqttd's v5 decoder hits `unreachable!` on a CONNACK or
        // UNSUBACK with a body, so those never reach it.
        if !matches!(kind, 1 | 3..=8 | 10 | 12 | 14) {
            return Err(FrameError::Protocol(kind));
        }
        check_shape(
            kind,
            byte1 & 0x0F,
            self.version,
            &buf[header..header + remaining],
        )?;
        let (mut qos, mut pkid, mut dup) = (0, 0, false);
        // Where a v5 PUBLISH's payload starts, by its properties length.
        let mut payload_at = None;
        if kind == 3 {
            qos = (byte1 >> 1) & 3;
            dup = byte1 & 8 != 0;
            let body = &buf[header..header + remaining];
            if let [a, b, rest @ ..] = body {
                let topic_len = usize::from(u16::from_be_bytes([*a, *b]));
                if qos > 0
                    && let Some([x, y]) = rest.get(topic_len..topic_len + 2)
                {
                    pkid = u16::from_be_bytes([*x, *y]);
                }
                let props_at = 2 + topic_len + if qos > 0 { 2 } else { 0 };
                if let Some((n, len)) = body.get(props_at..).and_then(varint) {
                    payload_at = Some(props_at + n + len);
                }
            }
        }
        let decoded = match self.version {
            Version::V4 => V4.read_mut(buf, max),
            Version::V5 => V5.read_mut(buf, max),
        };
        let packet = decoded.map_err(|e| FrameError::Malformed(e.to_string()))?;
        // rumqttd reads an UNSUBSCRIBE without filters as an empty list.
        if let Packet::Unsubscribe(u, _) = &packet
            && u.filters.is_empty()
        {
            return Err(FrameError::Malformed(
                "an UNSUBSCRIBE names no filter".into(),
            ));
        }
        // rumqttd's v5 reader takes a property that runs past the properties length out of
        // the payload instead of refusing the packet. (It also miscounts subscription
        // identifiers, which a client must not send: the session refuses those.)
        if let (Version::V5, Packet::Publish(p, props)) = (self.version, &packet)
            && props
                .as_ref()
                .is_none_or(|p| p.subscription_identifiers.is_empty())
            && payload_at.and_then(|at| remaining.checked_sub(at)) != Some(p.payload.len())
        {
            return Err(FrameError::Malformed(
                "the PUBLISH properties run past their length".into(),
            ));
        }
        Ok(Some(Frame {
            packet,
            qos,
            pkid,
            dup,
        }))
    }

    /// Encodes a packet; properties are dropped for v3 clients (rumqttd's v4 writer panics on
    /// them).
    pub(crate) fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<(), FrameError> {
        let written = match self.version {
            Version::V5 => V5.write(packet, out),
            Version::V4 => V4.write(strip_properties(packet), out),
        };
        written
            .map(|_| ())
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

/// What rumqttd's decoders let through and MQTT says is malformed: fixed-header flags other
/// than the packet type's (MQTT 5, 2.1.3: 0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0000 for
/// the rest but PUBLISH), the CONNECT's reserved flag (3.1.2-3), and a SUBSCRIBE's reserved
/// option bits (3.8.3-5; v3.1.1: every bit above the QoS).
fn check_shape(kind: u8, flags: u8, version: Version, body: &[u8]) -> Result<(), FrameError> {
    let expected = match kind {
        3 => None,
        6 | 8 | 10 => Some(0b0010),
        _ => Some(0),
    };
    if let Some(want) = expected
        && flags != want
    {
        return Err(FrameError::Malformed(format!(
            "packet type {kind} with fixed-header flags {flags:04b} (must be {want:04b})"
        )));
    }
    let malformed = |what: &str| Err(FrameError::Malformed(what.to_owned()));
    match kind {
        1 => {
            // Protocol name, level, then the flags.
            let flags_at = body
                .get(..2)
                .map(|n| 2 + usize::from(u16::from_be_bytes([n[0], n[1]])) + 1);
            if flags_at
                .and_then(|at| body.get(at))
                .is_some_and(|f| f & 1 != 0)
            {
                return malformed("the CONNECT's reserved flag is set");
            }
        }
        8 => {
            // Packet id, v5 properties, then (filter, options) pairs.
            let mut at = 2;
            if version == Version::V5 {
                let Some((n, len)) = body.get(at..).and_then(varint) else {
                    return Ok(());
                };
                at += n + len;
            }
            let reserved = match version {
                Version::V5 => 0b1100_0000,
                Version::V4 => 0b1111_1100,
            };
            while let Some(n) = body.get(at..at + 2) {
                at += 2 + usize::from(u16::from_be_bytes([n[0], n[1]]));
                let Some(options) = body.get(at) else {
                    break;
                };
                if options & reserved != 0 {
                    return malformed("a SUBSCRIBE's reserved option bits are set");
                }
                at += 1;
            }
        }
        _ => {}
    }
    Ok(())
}

fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Connect(c, _, w, _, l) => Packet::Connect(c, None, w, None, l),
        Packet::ConnAck(a, _) => Packet::ConnAck(a, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::Subscribe(p, _) => Packet::Subscribe(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::Unsubscribe(p, _) => Packet::Unsubscribe(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        p @ (Packet::PingReq(_) | Packet::PingResp(_)) => p,
    }
}

/// A PUBLISH at QoS 1 or 2 with our packet id. rumqttd keeps `qos` and `pkid` private, so it
/// is built through its own serialized form (one copy of the payload).
pub(crate) fn publish_with_id(
    topic: &[u8],
    payload: &[u8],
    qos: u8,
    pkid: u16,
    retain: bool,
    dup: bool,
) -> Publish {
    let mut b = BytesMut::with_capacity(5 + topic.len() + payload.len());
    b.put_u8(0b0011_0000 | u8::from(retain) | ((qos & 3) << 1) | (u8::from(dup) << 3));
    b.put_u16(pkid);
    b.put_u16(topic.len() as u16);
    b.put_slice(topic);
    b.put_slice(payload);
    Publish::deserialize(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{Connect, Login};

    fn connect_bytes(version: Version) -> BytesMut {
        let mut out = BytesMut::new();
        let packet = Packet::Connect(
            Connect {
                keep_alive: 30,
                client_id: "c".into(),
                clean_session: true,
            },
            None,
            None,
            None,
            Some(Login {
                username: "t/x".into(),
                password: "k".into(),
            }),
        );
        match version {
            Version::V4 => V4.write(packet, &mut out),
            Version::V5 => V5.write(packet, &mut out),
        }
        .expect("encodes");
        out
    }

    #[test]
    fn the_version_comes_from_the_connect_level() {
        for v in [Version::V4, Version::V5] {
            let b = connect_bytes(v);
            assert_eq!(peek_version(&b, 1024), Ok(Some(v)));
            // Incomplete: wait for more.
            assert_eq!(peek_version(&b[..b.len() - 1], 1024), Ok(None));
        }
        let mut b = connect_bytes(Version::V4);
        b[8] = 3;
        assert_eq!(
            peek_version(&b, 1024),
            Err(FrameError::UnsupportedVersion(3))
        );
        assert_eq!(peek_version(&[0x30, 0], 1024), Err(FrameError::Protocol(3)));
        assert_eq!(
            peek_version(&[0x10, 0xff, 0xff, 0xff, 0xff], 1024),
            Err(FrameError::Malformed(
                "the remaining length is longer than 4 bytes".into()
            ))
        );
        assert_eq!(
            peek_version(&[0x10, 0xff, 0x7f], 1024),
            Err(FrameError::TooLarge(16383))
        );
    }

    #[test]
    fn the_protocol_level_is_read_from_the_connect_alone() {
        // Found by the `mqtt_packets` fuzz target: a protocol name longer than its CONNECT
        // took the level from the next packet when both came in one read.
        let mut b = connect_bytes(Version::V4).to_vec();
        b[3] = 200;
        b.extend_from_slice(&[5; 256]);
        let frame = usize::from(b[1]) + 2;
        assert_eq!(
            peek_version(&b[..frame], 1024),
            Err(FrameError::Malformed(
                "CONNECT without protocol level".into()
            ))
        );
        assert_eq!(peek_version(&b, 1024), peek_version(&b[..frame], 1024));
    }

    #[test]
    fn v5_publish_properties_that_run_past_their_length_are_refused() {
        // Found by the `mqtt_packets` fuzz target: rumqttd read a property that ran past the
        // properties length out of the payload, and wrote the packet back differently.
        let codec = Codec::new(Version::V5);
        let props = rumqttd::protocol::PublishProperties {
            content_type: Some("ab".into()),
            ..rumqttd::protocol::PublishProperties::default()
        };
        let mut out = BytesMut::new();
        let publish = publish_with_id(b"m/t/c/x", b"hi", 1, 7, false, false);
        codec
            .write(Packet::Publish(publish, Some(props)), &mut out)
            .expect("encodes");
        let mut good = out.clone();
        assert!(matches!(
            codec.read(&mut good, 1024),
            Ok(Some(Frame {
                packet: Packet::Publish(..),
                ..
            }))
        ));
        // Topic (2 + 7) and packet id (2) after the 2-byte fixed header: the properties length.
        assert_eq!(out[13], 5);
        out[13] = 3;
        assert_eq!(
            codec.read(&mut out, 1024).err(),
            Some(FrameError::Malformed(
                "the PUBLISH properties run past their length".into()
            ))
        );
    }

    #[test]
    fn a_v5_connack_from_a_client_is_refused_before_the_decoder() {
        let codec = Codec::new(Version::V5);
        let mut b = BytesMut::from(&[0x20u8, 3, 0, 0, 0][..]);
        assert_eq!(
            codec.read(&mut b, 1024).err(),
            Some(FrameError::Protocol(2))
        );
        let mut b = BytesMut::from(&[0xb0u8, 3, 0, 1, 0][..]);
        assert_eq!(
            codec.read(&mut b, 1024).err(),
            Some(FrameError::Protocol(11))
        );
    }

    #[test]
    fn publish_qos_and_id_are_read_from_the_frame() {
        let codec = Codec::new(Version::V4);
        let mut out = BytesMut::new();
        codec
            .write(
                Packet::Publish(publish_with_id(b"m/t/c/x", b"hi", 2, 7, true, true), None),
                &mut out,
            )
            .expect("encodes");
        let frame = codec
            .read(&mut out, 1024)
            .expect("valid")
            .expect("complete");
        assert_eq!((frame.qos, frame.pkid, frame.dup), (2, 7, true));
        match frame.packet {
            Packet::Publish(p, None) => {
                assert!(p.retain);
                assert_eq!(&p.topic[..], b"m/t/c/x");
                assert_eq!(&p.payload[..], b"hi");
            }
            other => panic!("not a publish: {other:?}"),
        }
    }
}
