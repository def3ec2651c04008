//! Packet size limits both ways, and v5 message expiry passed through to subscribers.

use crate::common;

use std::time::Duration;

use common::{Fixture, raw, v4, v5};
use fleetward_dataplane::MqttConfig;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_v5_clients_maximum_packet_size_drops_larger_deliveries_for_it_only() {
    let fx = Fixture::start().await;
    let mut o = v5::options(fx.addr, "acme", "reader", "small");
    o.set_max_packet_size(Some(200));
    let mut small = v5::connect_with(o).await.expect("connects");
    small
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtMostOnce)
        .await;
    let mut big = v4::connect(fx.addr, "acme", "reader", "big").await;
    big.subscribe("m/acme/c/telemetry/#", v4::QoS::AtMostOnce)
        .await;
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    for payload in [vec![b'x'; 500], b"small".to_vec()] {
        sensor
            .client
            .publish("m/acme/c/telemetry/t", v4::QoS::AtMostOnce, false, payload)
            .await
            .expect("queued");
    }
    let got = small.next_publish(WAIT).await.expect("the small one");
    assert_eq!(&got.payload[..], b"small", "the large one was not dropped");
    assert_eq!(
        big.next_publish(WAIT).await.expect("large").payload.len(),
        500
    );
    assert_eq!(
        &big.next_publish(WAIT).await.expect("small").payload[..],
        b"small"
    );
    assert!(
        small
            .closed_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the small client stays connected"
    );
}

#[tokio::test]
async fn a_packet_over_the_pods_maximum_closes_that_connection_only() {
    let fx = Fixture::start_with(MqttConfig {
        max_packet_size: 1000,
        ..MqttConfig::default()
    })
    .await;
    let mut reader = v4::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtMostOnce)
        .await;
    let mut s = raw::connected(fx.addr, "huge", "acme", "sensor").await;
    // A QoS 0 PUBLISH announcing 2000 bytes: refused on its fixed header.
    let topic = b"m/acme/c/telemetry/t";
    let len = 2 + topic.len() + 1978;
    let mut packet = vec![0x30, (len % 128) as u8 | 0x80, (len / 128) as u8];
    packet.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    packet.extend_from_slice(topic);
    packet.extend(std::iter::repeat_n(b'x', 1978));
    s.write_all(&packet).await.expect("writes");
    let (_, closed) = raw::read_until_closed(&mut s, WAIT).await;
    assert!(closed, "the connection stayed open");
    assert!(
        reader
            .next_publish(Duration::from_millis(500))
            .await
            .is_none()
    );
    assert_eq!(fx.dataplane.metrics().refusals("packet", "too_large"), 1);

    // The reader and new publishers are unaffected.
    let sensor = v5::connect(fx.addr, "acme", "sensor", "ok").await;
    sensor
        .client
        .publish("m/acme/c/telemetry/t", v5::QoS::AtMostOnce, false, "fits")
        .await
        .expect("queued");
    assert_eq!(
        &reader.next_publish(WAIT).await.expect("delivered").payload[..],
        b"fits"
    );
}

#[tokio::test]
async fn v5_message_expiry_passes_through_to_subscribers() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let fx = Fixture::start().await;
    let mut reader = v5::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    let sensor = v5::connect(fx.addr, "acme", "sensor", "s").await;
    sensor
        .client
        .publish_with_properties(
            "m/acme/c/telemetry/t",
            v5::QoS::AtLeastOnce,
            false,
            "soon stale",
            PublishProperties {
                message_expiry_interval: Some(60),
                ..PublishProperties::default()
            },
        )
        .await
        .expect("queued");
    let got = reader.next_publish(WAIT).await.expect("delivered");
    let left = got
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("the expiry interval is passed on");
    assert!((1..=60).contains(&left), "{left}");
}
