//! Fuzzes the MQTT front-end's packet path on what a client sends: the handshake's CONNECT read
//! and version peek, then a session's framing (the fixed header and size limit, the QoS and
//! packet-id peek, rumqttd's v3 and v5 decoders) over reads of any size; and the whole
//! connection as the server serves it, handshake and session, over a fixed policy.
//!
//! The first byte chooses: bits 0–1 the `--max-packet-size`, bit 2 whether the bytes start
//! with the CONNECT (0) or come after it (1, bit 3 the version), bits 4–6 the read size.
#![no_main]

use bytes::BytesMut;
use fleetward_dataplane::fuzzing::{self, Frame, Packet, Version};
use libfuzzer_sys::fuzz_target;

/// MQTT's largest remaining length.
const MQTT_MAX: usize = 268_435_455;

fn max_packet_size(control: u8) -> usize {
    match control & 3 {
        0 => fuzzing::default_max_packet_size(),
        1 => 64,
        2 => 1024,
        _ => MQTT_MAX,
    }
}

/// The fixed header's length and the remaining length it declares, read here on its own so
/// the codec is not checked against itself.
fn declared(frame: &[u8]) -> (usize, usize) {
    let mut len = 0;
    for (i, b) in frame.iter().skip(1).take(4).enumerate() {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (2 + i, len);
        }
    }
    panic!("a fixed header that is cut or whose remaining length is over 4 bytes: {frame:?}");
}

/// The packets a session reads from `wire` arriving `chunk` bytes at a time, and how the
/// reading ended (`None`: the bytes ran out; an error closes the connection).
fn frames(
    version: Version,
    wire: &[u8],
    chunk: usize,
    max: usize,
) -> (Vec<(Packet, u8, u16, bool)>, Option<String>) {
    let mut buf = BytesMut::new();
    let mut unread = wire;
    let mut out = Vec::new();
    loop {
        let before = buf.clone();
        match fuzzing::read_frame(version, &mut buf, max) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                let (header, remaining) = declared(&before[..used]);
                assert!(
                    remaining <= max,
                    "a frame of {remaining} bytes read under a limit of {max}"
                );
                assert_eq!(
                    header + remaining,
                    used,
                    "the frame read is not the frame declared"
                );
                assert_eq!(
                    &before[used..],
                    &buf[..],
                    "bytes after the frame were touched"
                );
                check(version, &frame);
                out.push((frame.packet, frame.qos, frame.pkid, frame.dup));
            }
            Ok(None) => {
                assert_eq!(before, buf, "an incomplete frame consumed bytes");
                if unread.is_empty() {
                    return (out, None);
                }
                let (now, later) = unread.split_at(chunk.min(unread.len()));
                buf.extend_from_slice(now);
                unread = later;
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

/// What holds for every packet a session reads.
fn check(version: Version, frame: &Frame) {
    let mut out = BytesMut::new();
    let written = fuzzing::write_packet(version, frame.packet.clone(), &mut out);
    match &frame.packet {
        Packet::Publish(..) => {
            assert!(frame.qos <= 2, "a PUBLISH with QoS {} was read", frame.qos);
            assert!(
                frame.qos > 0 || frame.pkid == 0,
                "a QoS 0 PUBLISH has a packet id"
            );
            // Written again and read back, it is the same publish with the same peeked QoS,
            // packet id and DUP flag: the peek reads what rumqttd decoded.
            assert_eq!(written, Ok(()), "a PUBLISH that was read cannot be written");
            let again = fuzzing::read_frame(version, &mut out, MQTT_MAX)
                .expect("a written PUBLISH reads")
                .expect("a written PUBLISH is complete");
            assert!(out.is_empty(), "a written PUBLISH leaves bytes behind");
            // rumqttd's reader miscounts subscription identifiers, which a client must not
            // send (the session refuses them): those are not read back the same.
            let ids = matches!(&frame.packet, Packet::Publish(_, Some(p)) if !p.subscription_identifiers.is_empty());
            if !ids {
                assert_eq!(again.packet, frame.packet);
            }
            assert_eq!(
                (again.qos, again.pkid, again.dup),
                (frame.qos, frame.pkid, frame.dup)
            );
        }
        _ => {
            assert!((frame.qos, frame.pkid, frame.dup) == (0, 0, false));
        }
    }
}

/// Serves the connection: the handshake and the session (topic aliases, mountpoints,
/// authorization, limits, QoS 1 and 2, batching), as the server runs them.
fn served(wire: &[u8], chunk: usize, max: usize, assigned_id: bool) {
    let out = fuzzing::serve_mqtt(wire, chunk, max).expect("a connection is served");
    let whole = (!assigned_id)
        .then(|| fuzzing::serve_mqtt(wire, usize::MAX, max).expect("a connection is served"));
    let headers = packets(&out);
    // Packets handled in one batch are answered as if handled one by one. An assigned client
    // id is random, and a delivered message carries the time it was published.
    if let Some(whole) = whole {
        assert_eq!(
            headers,
            packets(&whole),
            "the answers depend on how the bytes arrive"
        );
        if !contains(&out, b"fleetward-created") {
            assert_eq!(out, whole, "the answers depend on how the bytes arrive");
        }
    }
}

/// The fixed headers (first byte, remaining length) of the packets the server wrote, which are
/// whole packets, the first a CONNACK.
fn packets(out: &[u8]) -> Vec<(u8, usize)> {
    let mut rest = out;
    let mut headers = Vec::new();
    while let Some(&first) = rest.first() {
        if headers.is_empty() {
            assert_eq!(
                first, 0x20,
                "the server's first packet is not a CONNACK: {out:?}"
            );
        }
        let (header, remaining) = declared(rest);
        assert!(
            header + remaining <= rest.len(),
            "the server wrote part of a packet: {out:?}"
        );
        headers.push((first, remaining));
        rest = &rest[header + remaining..];
    }
    headers
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let max = max_packet_size(control);
    let chunk = 1usize << ((control >> 4) & 7);
    let (version, rest) = if control & 4 == 0 {
        let connected = fuzzing::read_connect(wire, chunk);
        let whole = fuzzing::read_connect(wire, usize::MAX);
        assert_eq!(
            format!("{connected:?}"),
            format!("{whole:?}"),
            "the CONNECT read depends on how the bytes arrive"
        );
        let Ok(Some(connected)) = connected else {
            return;
        };
        assert!(
            matches!(connected.packet, Packet::Connect(..)),
            "{connected:?}"
        );
        assert_eq!(
            fuzzing::peek_version(wire, fuzzing::MAX_CONNECT),
            Ok(Some(connected.version))
        );
        let used = wire.len() - connected.rest.len();
        let (header, remaining) = declared(&wire[..used]);
        assert!(remaining <= fuzzing::MAX_CONNECT);
        assert_eq!(header + remaining, used);
        let assigned_id =
            matches!(&connected.packet, Packet::Connect(c, ..) if c.client_id.is_empty());
        served(wire, chunk, max, assigned_id);
        (connected.version, connected.rest.to_vec())
    } else {
        let version = if control & 8 == 0 {
            Version::V4
        } else {
            Version::V5
        };
        (version, wire.to_vec())
    };
    let chunked = frames(version, &rest, chunk, max);
    let whole = frames(version, &rest, usize::MAX, max);
    assert_eq!(
        chunked, whole,
        "the packets read depend on how the bytes arrive"
    );
});
