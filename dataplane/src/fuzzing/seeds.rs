//! The seed corpus of the fuzz targets (dataplane/fuzz/corpus): valid packets and frames the
//! fuzzers start from, written by the ignored test below.

use bytes::BytesMut;

use super::{Packet, Version, write_packet};

/// A seed of `mqtt_packets`: its file name, the target's control byte, the packets.
type MqttSeed = (&'static str, u8, Vec<(Version, Packet)>);

/// Rewrites the seeds: `cargo test -p fleetward-dataplane --lib fuzzing -- --ignored`.
#[test]
#[ignore = "writes dataplane/fuzz/corpus"]
fn write_the_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).expect("creates the corpus directory");
        std::fs::write(d.join(name), bytes).expect("writes a seed");
    };
    for (name, control, packets) in mqtt_seeds() {
        let mut wire = vec![control];
        for (version, packet) in packets {
            let mut out = BytesMut::new();
            write_packet(version, packet, &mut out).expect("a seed packet encodes");
            wire.extend_from_slice(&out);
        }
        write("mqtt_packets", name, &wire);
    }
    for (name, frame) in ws_seeds() {
        write("ws_frames", name, frame.to_string().as_bytes());
    }
}

/// The MQTT seeds: (file name, the fuzz target's control byte, the packets).
#[allow(
    clippy::too_many_lines,
    reason = "a data table: one seed per packet kind"
)]
fn mqtt_seeds() -> Vec<MqttSeed> {
    use rumqttd::protocol::*;
    let v = |version, packets: Vec<Packet>| {
        packets
            .into_iter()
            .map(|p| (version, p))
            .collect::<Vec<_>>()
    };
    let login_as = |thing: &str| {
        Some(Login {
            username: format!("acme/{thing}"),
            password: super::MQTT_KEY.into(),
        })
    };
    let login = || login_as("device");
    let connect = |client_id: &str| Connect {
        keep_alive: 30,
        client_id: client_id.into(),
        clean_session: true,
    };
    let user = || vec![("site".to_owned(), "north".to_owned())];
    let publish = |topic: &str, qos, pkid| {
        crate::mqtt::publish_with_id(topic.as_bytes(), b"{\"t\":21.5}", qos, pkid, false, false)
    };
    let filter = |path: &str, qos| Filter {
        path: path.into(),
        qos,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    };
    let subscribe = |pkid| Subscribe {
        pkid,
        filters: vec![
            filter("m/acme/c/telemetry/#", QoS::AtLeastOnce),
            filter("$share/g/m/acme/c/commands/+", QoS::ExactlyOnce),
        ],
    };
    let will = || {
        Some(LastWill {
            topic: "m/acme/c/telemetry/status".into(),
            message: "gone".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
        })
    };
    let v5_session = || {
        vec![
            Packet::Publish(
                publish("m/acme/c/telemetry/room", 1, 1),
                Some(PublishProperties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(60),
                    topic_alias: Some(1),
                    response_topic: Some("m/acme/c/commands/reply".into()),
                    correlation_data: Some("42".into()),
                    user_properties: user(),
                    subscription_identifiers: Vec::new(),
                    content_type: Some("application/json".into()),
                }),
            ),
            Packet::Publish(
                publish("", 2, 2),
                Some(PublishProperties {
                    topic_alias: Some(1),
                    ..PublishProperties::default()
                }),
            ),
            Packet::Subscribe(
                subscribe(3),
                Some(SubscribeProperties {
                    id: Some(7),
                    user_properties: user(),
                }),
            ),
            Packet::PubRel(
                PubRel {
                    pkid: 2,
                    reason: PubRelReason::Success,
                },
                None,
            ),
            Packet::PubAck(
                PubAck {
                    pkid: 1,
                    reason: PubAckReason::Success,
                },
                None,
            ),
            Packet::Unsubscribe(
                Unsubscribe {
                    pkid: 4,
                    filters: vec!["m/acme/c/telemetry/#".into()],
                },
                Some(UnsubscribeProperties {
                    user_properties: user(),
                }),
            ),
            Packet::PingReq(PingReq),
            Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::DisconnectWithWillMessage,
                },
                Some(DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some("bye".into()),
                    user_properties: user(),
                    server_reference: None,
                }),
            ),
        ]
    };
    let v4_session = || {
        vec![
            Packet::Publish(publish("m/acme/c/telemetry/room", 0, 0), None),
            Packet::Publish(publish("m/acme/c/telemetry/room", 1, 1), None),
            Packet::Publish(publish("m/acme/c/telemetry/room", 2, 2), None),
            Packet::PubRel(
                PubRel {
                    pkid: 2,
                    reason: PubRelReason::Success,
                },
                None,
            ),
            Packet::Subscribe(subscribe(3), None),
            Packet::Unsubscribe(
                Unsubscribe {
                    pkid: 4,
                    filters: vec!["m/acme/c/telemetry/#".into()],
                },
                None,
            ),
            Packet::PingReq(PingReq),
            Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ),
        ]
    };
    let mut v4_connection = vec![Packet::Connect(
        connect("v4-sensor"),
        None,
        will(),
        None,
        login(),
    )];
    v4_connection.extend(v4_session());
    let mut v5_connection = vec![Packet::Connect(
        connect("v5-sensor"),
        Some(ConnectProperties {
            session_expiry_interval: Some(300),
            receive_maximum: Some(20),
            max_packet_size: Some(65536),
            topic_alias_max: Some(10),
            request_response_info: Some(1),
            request_problem_info: Some(1),
            user_properties: user(),
            authentication_method: None,
            authentication_data: None,
        }),
        will(),
        Some(LastWillProperties {
            delay_interval: Some(5),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: None,
            correlation_data: None,
            user_properties: user(),
        }),
        login(),
    )];
    v5_connection.extend(v5_session());
    // Control bytes (see the target): bit 2 after the CONNECT, bit 3 v5, bits 4-6 the read
    // size, bits 0-1 the packet size limit.
    vec![
        ("v4-connection", 0x00, v(Version::V4, v4_connection)),
        ("v5-connection", 0x30, v(Version::V5, v5_connection)),
        ("v4-session", 0x04, v(Version::V4, v4_session())),
        ("v5-session", 0x0c, v(Version::V5, v5_session())),
        ("v5-session-small-limit", 0x2d, v(Version::V5, v5_session())),
        (
            "v4-mounted",
            0x11,
            v(
                Version::V4,
                vec![
                    Packet::Connect(connect("m"), None, None, None, login_as("mounted")),
                    Packet::Subscribe(
                        Subscribe {
                            pkid: 1,
                            filters: vec![filter("room/+", QoS::AtLeastOnce)],
                        },
                        None,
                    ),
                    Packet::Publish(publish("room/1", 1, 2), None),
                ],
            ),
        ),
        (
            "v5-retained",
            0x50,
            v(
                Version::V5,
                vec![
                    Packet::Connect(connect("r"), None, None, None, login()),
                    Packet::Publish(
                        crate::mqtt::publish_with_id(
                            b"m/acme/c/status/door",
                            b"open",
                            1,
                            1,
                            true,
                            false,
                        ),
                        None,
                    ),
                    Packet::Subscribe(
                        Subscribe {
                            pkid: 2,
                            filters: vec![filter("m/acme/c/status/#", QoS::AtLeastOnce)],
                        },
                        None,
                    ),
                ],
            ),
        ),
        (
            "v4-connect-alone",
            0x70,
            v(
                Version::V4,
                vec![Packet::Connect(connect(""), None, None, None, login())],
            ),
        ),
    ]
}

/// The WebSocket seeds: (file name, the text frame).
fn ws_seeds() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    vec![
        ("text", json!({"payload": "hello", "id": 1})),
        (
            "base64",
            json!({"topic": "m/acme/c/telemetry/room/1", "payload": "aGk=", "base64": true, "content_type": "application/octet-stream", "qos": 1, "id": "a"}),
        ),
        (
            "json-qos2",
            json!({"topic": "m/acme/c/telemetry/room", "payload": "{\"t\":1}", "content_type": "application/json; charset=utf-8", "qos": 2, "retain": false}),
        ),
        (
            "denied",
            json!({"topic": "m/acme/c/telemetry/secret/x", "payload": "x"}),
        ),
        (
            "other-tenant",
            json!({"topic": "m/globex/c/telemetry/x", "payload": "x", "id": [1, {"k": null}]}),
        ),
        (
            "retained",
            json!({"payload": "x", "retain": true, "qos": 1}),
        ),
    ]
}
