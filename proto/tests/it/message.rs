//! The internal message keeps what adapters put in it, including absent versus empty fields.

use fleetward_proto::message::v1::{Message, Protocol, Publisher, PublisherKind, UserProperty};
use prost::Message as _;

#[test]
fn a_message_survives_the_wire_and_an_absent_subtopic_stays_absent() {
    let m = Message {
        stored: false,
        tenant: "acme".into(),
        channel: "tele".into(),
        subtopic: Some("sensors/temp".into()),
        publisher: Some(Publisher {
            kind: PublisherKind::Thing.into(),
            name: "sensor-1".into(),
        }),
        protocol: Protocol::Http.into(),
        content_type: Some("application/json".into()),
        payload: b"{\"t\":21.5}".to_vec(),
        qos: 1,
        retain: true,
        created_ns: 1_700_000_000_123_456_789,
        origin_pod: "dataplane-0".into(),
        id: vec![7; 16],
        user_properties: vec![
            UserProperty {
                key: "a".into(),
                value: "1".into(),
            },
            UserProperty {
                key: "a".into(),
                value: "2".into(),
            },
        ],
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        response_topic: Some("m/acme/c/tele/replies".into()),
        correlation_data: Some(b"req-7".to_vec()),
        bus_sequence: 42,
    };
    let back = Message::decode(m.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back, m);

    let on_channel = Message {
        subtopic: None,
        ..m.clone()
    };
    let empty = Message {
        subtopic: Some(String::new()),
        ..m
    };
    let a = Message::decode(on_channel.encode_to_vec().as_slice()).expect("decodes");
    let b = Message::decode(empty.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(a.subtopic, None);
    assert_eq!(b.subtopic, Some(String::new()));
}
