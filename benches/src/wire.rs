//! MQTT 3.1.1 packets, pre-encoded, and a framer for what brokers send back.
//!
//! The load generator writes raw bytes instead of going through a client library, so that it
//! spends little CPU beside the broker under test (on two cores every cycle it takes is one the
//! broker does not get).

/// Packet types, as the high nibble of the first byte.
pub const CONNACK: u8 = 2;
/// PUBLISH.
pub const PUBLISH: u8 = 3;
/// PUBACK.
pub const PUBACK: u8 = 4;
/// SUBACK.
pub const SUBACK: u8 = 9;

/// PINGREQ, whole.
pub const PINGREQ: [u8; 2] = [0xc0, 0];
/// DISCONNECT, whole.
pub const DISCONNECT: [u8; 2] = [0xe0, 0];

/// An MQTT string (or binary data): its length, then its bytes.
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).expect("MQTT strings are shorter than 64 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
}

/// A whole packet: the fixed header's first byte, the remaining length, the body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// CONNECT with a clean session, `keep_alive` seconds (0: none) and an optional login.
pub fn connect(client_id: &str, login: Option<(&str, &str)>, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4);
    let mut flags = 0b10; // clean session
    if login.is_some() {
        flags |= 0b1100_0000;
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    if let Some((user, pass)) = login {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, pass.as_bytes());
    }
    packet(0x10, &body)
}

/// SUBSCRIBE to one filter at `qos`, packet id 1.
pub fn subscribe(filter: &str, qos: u8) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    packet(0x82, &body)
}

/// A PUBLISH of `payload` on `topic`. At QoS 1 it carries packet id 1; [`Publish::set_id`]
/// changes it in place.
#[derive(Clone, Debug)]
pub struct Publish {
    bytes: Vec<u8>,
    /// Offset of the packet id (QoS 1) or of the payload (QoS 0) in `bytes`.
    at: usize,
    qos: u8,
}

impl Publish {
    /// Encodes the packet once; `payload` bytes of `x`.
    pub fn new(topic: &str, qos: u8, payload: usize) -> Self {
        assert!(qos <= 1, "the load generator publishes at QoS 0 or 1");
        let mut body = Vec::new();
        put_str(&mut body, topic.as_bytes());
        if qos == 1 {
            body.extend_from_slice(&1u16.to_be_bytes());
        }
        body.extend(std::iter::repeat_n(b'x', payload));
        let bytes = packet(0x30 | (qos << 1), &body);
        let at = bytes.len() - payload - if qos == 1 { 2 } else { 0 };
        Self { bytes, at, qos }
    }

    /// The encoded packet.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Sets the packet id (QoS 1 only).
    pub fn set_id(&mut self, id: u16) {
        debug_assert_eq!(self.qos, 1);
        self.bytes[self.at..self.at + 2].copy_from_slice(&id.to_be_bytes());
    }

    /// Writes `stamp` into the first 8 payload bytes (the payload must have room).
    pub fn set_stamp(&mut self, stamp: u64) {
        let at = self.at + if self.qos == 1 { 2 } else { 0 };
        self.bytes[at..at + 8].copy_from_slice(&stamp.to_be_bytes());
    }
}

/// PUBACK for packet `id`.
pub fn puback(id: u16) -> [u8; 4] {
    let [hi, lo] = id.to_be_bytes();
    [0x40, 2, hi, lo]
}

/// One packet read by [`Framer`]: its first byte and its body.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The fixed header's first byte.
    pub first: u8,
    /// Everything after the remaining length.
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// The packet type.
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// For a PUBLISH: its QoS, packet id (QoS > 0) and payload. `None` when malformed.
    pub fn publish(&self) -> Option<(u8, Option<u16>, &[u8])> {
        let qos = (self.first >> 1) & 3;
        let topic_len = usize::from(u16::from_be_bytes(self.body.get(..2)?.try_into().ok()?));
        let mut at = 2 + topic_len;
        let id = if qos > 0 {
            let id = u16::from_be_bytes(self.body.get(at..at + 2)?.try_into().ok()?);
            at += 2;
            Some(id)
        } else {
            None
        };
        Some((qos, id, self.body.get(at..)?))
    }

    /// For a PUBACK: its packet id.
    pub fn puback_id(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.body.get(..2)?.try_into().ok()?))
    }
}

/// Splits a byte stream into packets, keeping a partial packet for the next read.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
    consumed: usize,
}

impl Framer {
    /// Adds bytes read from the socket.
    pub fn feed(&mut self, data: &[u8]) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, if one has arrived.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        let rest = &self.buf[self.consumed..];
        let first = *rest.first()?;
        let mut len = 0usize;
        let mut header = 1;
        let mut complete = false;
        for (i, b) in rest[1..].iter().take(4).enumerate() {
            len |= usize::from(b & 0x7f) << (7 * i);
            header += 1;
            if b & 0x80 == 0 {
                complete = true;
                break;
            }
        }
        if !complete || rest.len() < header + len {
            return None;
        }
        let start = self.consumed + header;
        self.consumed = start + len;
        Some(Frame {
            first,
            body: &self.buf[start..start + len],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let mut p = Publish::new("a/b", 1, 200);
        p.set_id(7);
        p.set_stamp(42);
        let mut stream = p.bytes().repeat(3);
        stream.extend_from_slice(&[0xd0, 0]); // PINGRESP
        let mut framer = Framer::default();
        let (a, b) = stream.split_at(150);
        framer.feed(a);
        assert!(framer.next_frame().is_none());
        framer.feed(b);
        let mut kinds = Vec::new();
        while let Some(f) = framer.next_frame() {
            if f.kind() == PUBLISH {
                let (qos, id, payload) = f.publish().expect("a well-formed PUBLISH");
                assert_eq!((qos, id, payload.len()), (1, Some(7), 200));
                assert_eq!(u64::from_be_bytes(payload[..8].try_into().unwrap()), 42);
            }
            kinds.push(f.kind());
        }
        assert_eq!(kinds, [PUBLISH, PUBLISH, PUBLISH, 13]);
    }

    #[test]
    fn a_qos0_publish_has_no_packet_id() {
        let mut p = Publish::new("t", 0, 16);
        p.set_stamp(9);
        let mut framer = Framer::default();
        framer.feed(p.bytes());
        let f = framer.next_frame().expect("one frame");
        let (qos, id, payload) = f.publish().expect("a well-formed PUBLISH");
        assert_eq!((qos, id), (0, None));
        assert_eq!(u64::from_be_bytes(payload[..8].try_into().unwrap()), 9);
    }

    #[test]
    fn long_packets_use_a_multi_byte_length() {
        let p = packet(0x30, &[0; 200]);
        assert_eq!(&p[..3], &[0x30, 0xc8, 0x01]);
        assert_eq!(puback(0x0102), [0x40, 2, 1, 2]);
    }
}
