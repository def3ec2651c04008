//! MQTT v5 features through rumqttc: retain handling, QoS 2 refusals, inbound topic aliases,
//! receive maximum.

use crate::common;

use std::time::Duration;

use common::{Fixture, v5};
use rumqttc::v5::mqttbytes::v5::{
    Filter, PubRecReason, PublishProperties, RetainForwardRule, SubscribeReasonCode,
};

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(500);

async fn suback(c: &mut v5::Client) -> Vec<SubscribeReasonCode> {
    loop {
        match c.next(WAIT).await {
            Some(Ok(v5::Packet::SubAck(a))) => return a.return_codes,
            Some(Ok(_)) => {}
            other => panic!("no SUBACK: {other:?}"),
        }
    }
}

#[tokio::test]
async fn retain_handling_decides_when_retained_messages_are_sent() {
    let fx = Fixture::start().await;
    let mut sensor = v5::connect(fx.addr, "acme", "sensor", "s").await;
    sensor
        .client
        .publish("m/acme/c/telemetry/state", v5::QoS::AtLeastOnce, true, "on")
        .await
        .expect("queued");
    assert!(matches!(
        sensor.next(WAIT).await,
        Some(Ok(v5::Packet::PubAck(_)))
    ));
    let mut reader = v5::connect(fx.addr, "acme", "reader", "r").await;
    let filter = |rule| Filter {
        path: "m/acme/c/telemetry/#".into(),
        qos: v5::QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: rule,
    };
    // 2: never.
    reader
        .client
        .subscribe_many([filter(RetainForwardRule::Never)])
        .await
        .expect("queued");
    suback(&mut reader).await;
    assert!(reader.next_publish(QUIET).await.is_none());
    // 1: only for a new subscription, and this one exists already.
    reader
        .client
        .subscribe_many([filter(RetainForwardRule::OnNewSubscribe)])
        .await
        .expect("queued");
    suback(&mut reader).await;
    assert!(reader.next_publish(QUIET).await.is_none());
    // 0: on every subscribe.
    reader
        .client
        .subscribe_many([filter(RetainForwardRule::OnEverySubscribe)])
        .await
        .expect("queued");
    suback(&mut reader).await;
    let p = reader.next_publish(WAIT).await.expect("retained sent");
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"on");
}

#[tokio::test]
async fn a_refused_qos2_publish_gets_pubrec_0x87() {
    let fx = Fixture::start().await;
    let mut reader = v5::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .client
        .publish("m/acme/c/telemetry/x", v5::QoS::ExactlyOnce, false, "no")
        .await
        .expect("queued");
    loop {
        match reader.next(WAIT).await {
            Some(Ok(v5::Packet::PubRec(r))) => {
                assert_eq!(r.reason, PubRecReason::NotAuthorized);
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("no PUBREC: {other:?}"),
        }
    }
}

#[tokio::test]
async fn inbound_topic_aliases_are_resolved_before_authorization() {
    let fx = Fixture::start().await;
    let mut reader = v5::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtMostOnce)
        .await;
    let sensor = v5::connect(fx.addr, "acme", "sensor", "s").await;
    let alias = |a| PublishProperties {
        topic_alias: Some(a),
        ..PublishProperties::default()
    };
    sensor
        .client
        .publish_with_properties(
            "m/acme/c/telemetry/aliased",
            v5::QoS::AtMostOnce,
            false,
            "1",
            alias(3),
        )
        .await
        .expect("queued");
    sensor
        .client
        .publish_with_properties("", v5::QoS::AtMostOnce, false, "2", alias(3))
        .await
        .expect("queued");
    for payload in ["1", "2"] {
        let p = reader.next_publish(WAIT).await.expect("delivered");
        assert_eq!(&p.topic[..], b"m/acme/c/telemetry/aliased");
        assert_eq!(&p.payload[..], payload.as_bytes());
    }
}

#[tokio::test]
async fn deliveries_respect_the_clients_receive_maximum() {
    use rumqttc::v5::mqttbytes::v5::ConnectProperties;
    let fx = Fixture::start().await;
    let mut o = v5::options(fx.addr, "acme", "reader", "r");
    let mut props = ConnectProperties::new();
    props.receive_maximum = Some(2);
    o.set_connect_properties(props);
    o.set_manual_acks(true);
    let mut reader = v5::connect_with(o).await.expect("connects");
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    let sensor = v5::connect(fx.addr, "acme", "sensor", "s").await;
    for i in 0..5 {
        sensor
            .client
            .publish(
                "m/acme/c/telemetry/x",
                v5::QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .expect("queued");
    }
    let first = reader.next_publish(WAIT).await.expect("first");
    let second = reader.next_publish(WAIT).await.expect("second");
    // Two unacknowledged: nothing more until one is acknowledged.
    assert!(reader.next_publish(QUIET).await.is_none());
    reader.client.ack(&first).await.expect("ack queued");
    let third = reader.next_publish(WAIT).await.expect("third after an ack");
    assert_eq!(&third.payload[..], b"2");
    reader.client.ack(&second).await.expect("ack queued");
    reader.client.ack(&third).await.expect("ack queued");
    assert!(reader.next_publish(WAIT).await.is_some());
}

#[tokio::test]
async fn no_local_and_retain_as_published() {
    let fx = Fixture::start().await;
    // `mounted` may publish and subscribe on telemetry (topics relative to it).
    let mut me = v5::connect(fx.addr, "acme", "mounted", "me").await;
    let mut peer = v5::connect(fx.addr, "acme", "mounted", "peer").await;
    let filter = |no_local, rap| Filter {
        path: "t/#".into(),
        qos: v5::QoS::AtMostOnce,
        nolocal: no_local,
        preserve_retain: rap,
        retain_forward_rule: RetainForwardRule::Never,
    };
    me.client
        .subscribe_many([filter(true, true)])
        .await
        .expect("queued");
    suback(&mut me).await;
    peer.client
        .subscribe_many([filter(false, false)])
        .await
        .expect("queued");
    suback(&mut peer).await;
    me.client
        .publish("t/mine", v5::QoS::AtMostOnce, true, "from me")
        .await
        .expect("queued");
    // The peer gets it, live, with retain 0 (no retain-as-published).
    let p = peer.next_publish(WAIT).await.expect("peer delivery");
    assert_eq!(&p.payload[..], b"from me");
    assert!(!p.retain);
    assert!(me.next_publish(QUIET).await.is_none(), "no-local");
    peer.client
        .publish("t/theirs", v5::QoS::AtMostOnce, true, "from peer")
        .await
        .expect("queued");
    // Retain-as-published keeps the flag on a live delivery.
    let p = me.next_publish(WAIT).await.expect("delivery");
    assert_eq!(&p.payload[..], b"from peer");
    assert!(p.retain);
}

#[tokio::test]
async fn outbound_topic_aliases_within_the_clients_maximum() {
    let fx = Fixture::start().await;
    let mut o = v5::options(fx.addr, "acme", "reader", "r");
    o.set_topic_alias_max(Some(1));
    let mut reader = v5::connect_with(o).await.expect("connects");
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtMostOnce)
        .await;
    let sensor = v5::connect(fx.addr, "acme", "sensor", "s").await;
    for topic in [
        "m/acme/c/telemetry/a",
        "m/acme/c/telemetry/a",
        "m/acme/c/telemetry/b",
    ] {
        sensor
            .client
            .publish(topic, v5::QoS::AtMostOnce, false, topic)
            .await
            .expect("queued");
    }
    // What went over the wire (rumqttc reports the packet as received).
    let mut seen = Vec::new();
    for _ in 0..3 {
        let p = reader.next_publish(WAIT).await.expect("delivered");
        let alias = p.properties.and_then(|p| p.topic_alias);
        seen.push((
            String::from_utf8_lossy(&p.topic).into_owned(),
            alias,
            p.payload,
        ));
    }
    // One alias allowed: `a` is named with alias 1, then sent as the alias alone; `b` goes
    // out by name.
    assert_eq!(
        seen,
        vec![
            (
                "m/acme/c/telemetry/a".into(),
                Some(1),
                "m/acme/c/telemetry/a".into()
            ),
            (String::new(), Some(1), "m/acme/c/telemetry/a".into()),
            (
                "m/acme/c/telemetry/b".into(),
                None,
                "m/acme/c/telemetry/b".into()
            ),
        ]
    );
}

#[tokio::test]
async fn a_subscription_identifier_of_0_is_a_protocol_error() {
    let fx = Fixture::start().await;
    let mut reader = v5::connect(fx.addr, "acme", "reader", "sid0").await;
    reader
        .client
        .subscribe_with_properties(
            "m/acme/c/telemetry/#",
            v5::QoS::AtMostOnce,
            rumqttc::v5::mqttbytes::v5::SubscribeProperties {
                id: Some(0),
                user_properties: Vec::new(),
            },
        )
        .await
        .expect("queued");
    assert_eq!(
        reader.closed_within(WAIT).await.as_deref(),
        Some("disconnect ProtocolError")
    );
    assert_eq!(
        fx.dataplane
            .metrics()
            .refusals("subscribe", "subscription_id_zero"),
        1
    );
}

fn with_response_topic(topic: &str) -> PublishProperties {
    PublishProperties {
        response_topic: Some(topic.to_owned()),
        ..PublishProperties::default()
    }
}

#[tokio::test]
async fn a_response_topic_with_a_wildcard_is_a_protocol_error() {
    let fx = Fixture::start().await;
    let mut sensor = v5::connect(fx.addr, "acme", "sensor", "rt1").await;
    sensor
        .client
        .publish_with_properties(
            "m/acme/c/telemetry/q",
            v5::QoS::AtLeastOnce,
            false,
            "1",
            with_response_topic("m/acme/c/telemetry/replies/#"),
        )
        .await
        .expect("queued");
    assert_eq!(
        sensor.closed_within(WAIT).await.as_deref(),
        Some("disconnect ProtocolError")
    );
}

#[tokio::test]
async fn a_response_topic_outside_fleetwards_topics_is_refused_with_0x83() {
    let fx = Fixture::start().await;
    let mut reader = v5::connect(fx.addr, "acme", "reader", "rt2r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    let mut sensor = v5::connect(fx.addr, "acme", "sensor", "rt2").await;
    for rt in ["replies/1", "$SYS/x"] {
        sensor
            .client
            .publish_with_properties(
                "m/acme/c/telemetry/q",
                v5::QoS::AtLeastOnce,
                false,
                "1",
                with_response_topic(rt),
            )
            .await
            .expect("queued");
        match sensor.next(WAIT).await {
            Some(Ok(v5::Packet::PubAck(a))) => {
                assert_eq!(
                    a.reason,
                    v5::PubAckReason::ImplementationSpecificError,
                    "{rt}"
                );
            }
            other => panic!("no PUBACK for {rt}: {other:?}"),
        }
    }
    assert!(reader.next_publish(QUIET).await.is_none(), "nothing routed");
    // The connection stays, and a response topic in the tenant's topics passes.
    sensor
        .client
        .publish_with_properties(
            "m/acme/c/telemetry/q",
            v5::QoS::AtLeastOnce,
            false,
            "2",
            with_response_topic("m/acme/c/commands/reply"),
        )
        .await
        .expect("queued");
    let got = reader.next_publish(WAIT).await.expect("delivered");
    assert_eq!(
        got.properties.and_then(|p| p.response_topic).as_deref(),
        Some("m/acme/c/commands/reply")
    );
}

#[tokio::test]
async fn a_mounted_things_response_topic_is_mounted_in_and_stripped_out() {
    let fx = Fixture::start().await;
    let mut reader = v5::connect(fx.addr, "acme", "reader", "rt3r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    let mut mounted = v5::connect(fx.addr, "acme", "mounted", "rt3").await;
    mounted.subscribe("#", v5::QoS::AtLeastOnce).await;
    mounted
        .client
        .publish_with_properties(
            "q",
            v5::QoS::AtLeastOnce,
            false,
            "1",
            with_response_topic("replies/1"),
        )
        .await
        .expect("queued");
    // Others see where to answer in full; the mounted thing sees it relative to its mount.
    let got = reader.next_publish(WAIT).await.expect("delivered");
    assert_eq!(
        got.properties.and_then(|p| p.response_topic).as_deref(),
        Some("m/acme/c/telemetry/replies/1")
    );
    let own = mounted.next_publish(WAIT).await.expect("delivered");
    assert_eq!(&own.topic[..], b"q");
    assert_eq!(
        own.properties.and_then(|p| p.response_topic).as_deref(),
        Some("replies/1")
    );
}

fn will_with_response_topic(topic: &str, rt: &str) -> rumqttc::v5::mqttbytes::v5::LastWill {
    rumqttc::v5::mqttbytes::v5::LastWill::new(
        topic,
        "gone",
        v5::QoS::AtMostOnce,
        false,
        Some(rumqttc::v5::mqttbytes::v5::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: Some(rt.to_owned()),
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

#[tokio::test]
async fn a_wills_response_topic_is_checked_and_mounted_at_connect() {
    let fx = Fixture::start().await;
    let mut o = v5::options(fx.addr, "acme", "sensor", "w1");
    o.set_last_will(will_with_response_topic(
        "m/acme/c/telemetry/will",
        "m/acme/c/telemetry/+",
    ));
    assert_eq!(
        v5::connect_with(o).await.err().as_deref(),
        Some("ProtocolError")
    );
    let mut o = v5::options(fx.addr, "acme", "sensor", "w2");
    o.set_last_will(will_with_response_topic(
        "m/acme/c/telemetry/will",
        "replies",
    ));
    assert_eq!(
        v5::connect_with(o).await.err().as_deref(),
        Some("ImplementationSpecificError")
    );
    // A mounted thing's will answers under its mountpoint.
    let mut reader = v5::connect(fx.addr, "acme", "reader", "w3r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtMostOnce)
        .await;
    let mut o = v5::options(fx.addr, "acme", "mounted", "w3");
    o.set_last_will(will_with_response_topic("will", "replies/1"));
    let mounted = v5::connect_with(o).await.expect("connects");
    mounted.task.abort();
    let got = reader.next_publish(WAIT).await.expect("the will");
    assert_eq!(&got.topic[..], b"m/acme/c/telemetry/will");
    assert_eq!(
        got.properties.and_then(|p| p.response_topic).as_deref(),
        Some("m/acme/c/telemetry/replies/1")
    );
}
