//! The stream's record encoding: a version byte, then a protobuf message (prost). Fields are
//! only ever added, so a writer of another release reads what a dataplane sends during a
//! rolling upgrade; the version byte is there for a change protobuf cannot express.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::{MessageId, Record};

/// The encoding's version: the first byte of every stream message.
pub const VERSION: u8 = 1;

#[derive(Clone, PartialEq, prost::Message)]
struct WireRecord {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(string, tag = "2")]
    tenant: String,
    #[prost(string, tag = "3")]
    channel: String,
    #[prost(string, tag = "4")]
    channel_uid: String,
    #[prost(string, tag = "5")]
    subtopic: String,
    #[prost(bytes = "bytes", tag = "6")]
    payload: Bytes,
    #[prost(uint32, tag = "7")]
    qos: u32,
    #[prost(string, optional, tag = "8")]
    content_type: Option<String>,
    #[prost(string, optional, tag = "9")]
    publisher: Option<String>,
    #[prost(string, optional, tag = "10")]
    publisher_kind: Option<String>,
    #[prost(string, tag = "11")]
    protocol: String,
    #[prost(uint64, tag = "12")]
    created_ns: u64,
    #[prost(message, repeated, tag = "13")]
    user_properties: Vec<WireProperty>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireProperty {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// Why a stream message is not a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message is empty.
    #[error("an empty history stream message")]
    Empty,
    /// Written by a newer encoding than this build knows.
    #[error(
        "history stream message of encoding version {0}; this writer reads version {VERSION}: upgrade the writer"
    )]
    Version(u8),
    /// Not a protobuf record.
    #[error("history stream message is not a record: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The id is not 16 bytes.
    #[error("history stream message has an id of {0} bytes, not 16")]
    Id(usize),
    /// The QoS is not 0, 1 or 2.
    #[error("history stream message has QoS {0}")]
    Qos(u32),
}

/// A record as a stream message.
pub fn encode(record: &Record) -> Bytes {
    let wire = WireRecord {
        id: record.id.to_bytes().to_vec(),
        tenant: record.tenant.clone(),
        channel: record.channel.clone(),
        channel_uid: record.channel_uid.clone(),
        subtopic: record.subtopic.clone(),
        payload: record.payload.clone(),
        qos: u32::from(record.qos),
        content_type: record.content_type.clone(),
        publisher: record.publisher.clone(),
        publisher_kind: record.publisher_kind.clone(),
        protocol: record.protocol.clone(),
        created_ns: record.created_ns,
        user_properties: record
            .user_properties
            .iter()
            .map(|(key, value)| WireProperty {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
    };
    let mut out = BytesMut::with_capacity(1 + wire.encoded_len());
    out.put_u8(VERSION);
    // Encoding into a buffer with room for it cannot fail.
    let _ = wire.encode(&mut out);
    out.freeze()
}

/// The record of a stream message.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let wire = WireRecord::decode(body)?;
    let id = MessageId::from_slice(&wire.id).ok_or(DecodeError::Id(wire.id.len()))?;
    let qos = u8::try_from(wire.qos)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or(DecodeError::Qos(wire.qos))?;
    Ok(Record {
        id,
        tenant: wire.tenant,
        channel: wire.channel,
        channel_uid: wire.channel_uid,
        subtopic: wire.subtopic,
        payload: wire.payload,
        qos,
        content_type: wire.content_type,
        publisher: wire.publisher,
        publisher_kind: wire.publisher_kind,
        protocol: wire.protocol,
        created_ns: wire.created_ns,
        user_properties: wire
            .user_properties
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record() -> impl Strategy<Value = Record> {
        (
            any::<u64>(),
            "[a-z0-9-]{1,12}",
            "[a-z0-9-]{1,12}",
            "(/[^/]{0,6}){0,3}",
            proptest::collection::vec(any::<u8>(), 0..64),
            0u8..=2,
            proptest::option::of(".{0,8}"),
            proptest::option::of("[a-z]{1,8}"),
            proptest::collection::vec((".{0,6}", ".{0,6}"), 0..4),
        )
            .prop_map(
                |(at, tenant, channel, subtopic, payload, qos, ct, publisher, props)| Record {
                    id: MessageId::new(at),
                    tenant,
                    channel,
                    channel_uid: "uid-1".into(),
                    subtopic,
                    payload: Bytes::from(payload),
                    qos,
                    content_type: ct,
                    publisher_kind: publisher.as_ref().map(|_| "thing".into()),
                    publisher,
                    protocol: "mqtt".into(),
                    created_ns: at,
                    user_properties: props,
                },
            )
    }

    proptest! {
        #[test]
        fn every_record_reads_back_as_it_was_written(r in record()) {
            let bytes = encode(&r);
            prop_assert_eq!(bytes[0], VERSION);
            prop_assert_eq!(decode(&bytes).ok(), Some(r));
        }
    }

    #[test]
    fn what_is_not_a_record_is_refused_with_a_reason() {
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(decode(&[2, 0]), Err(DecodeError::Version(2))));
        assert!(matches!(
            decode(&[VERSION, 0xFF]),
            Err(DecodeError::Protobuf(_))
        ));
        // A valid protobuf whose id is short.
        let short = WireRecord {
            id: vec![1, 2, 3],
            ..WireRecord::default()
        };
        let mut bytes = vec![VERSION];
        bytes.extend(short.encode_to_vec());
        assert!(matches!(decode(&bytes), Err(DecodeError::Id(3))));
        let bad_qos = WireRecord {
            id: vec![0; 16],
            qos: 3,
            ..WireRecord::default()
        };
        let mut bytes = vec![VERSION];
        bytes.extend(bad_qos.encode_to_vec());
        assert!(matches!(decode(&bytes), Err(DecodeError::Qos(3))));
    }
}
