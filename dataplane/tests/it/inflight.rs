//! The per-client in-flight window (`--max-inflight`), both ways, with clients that do not ack.

use crate::common;

use std::time::Duration;

use common::{Fixture, raw, v4};
use fleetward_dataplane::MqttConfig;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(3);

fn small_window() -> MqttConfig {
    MqttConfig {
        max_inflight: 3,
        ..MqttConfig::default()
    }
}

#[tokio::test]
async fn a_v3_client_has_at_most_max_inflight_unacknowledged_deliveries() {
    let fx = Fixture::start_with(small_window()).await;
    let mut o = v4::options(fx.addr, "acme", "reader", "slow-acker");
    o.set_manual_acks(true);
    let mut reader = v4::connect_with(o).await.expect("connects");
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    for i in 0..6 {
        sensor
            .client
            .publish(
                "m/acme/c/telemetry/x",
                v4::QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .expect("queued");
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(reader.next_publish(WAIT).await.expect("within the window"));
    }
    assert!(
        reader
            .next_publish(Duration::from_millis(700))
            .await
            .is_none(),
        "a fourth delivery while three are unacknowledged"
    );
    for p in &first {
        reader.client.ack(p).await.expect("ack queued");
    }
    let mut payloads: Vec<String> = first
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    for _ in 0..3 {
        let p = reader.next_publish(WAIT).await.expect("after the acks");
        payloads.push(String::from_utf8_lossy(&p.payload).into_owned());
        reader.client.ack(&p).await.expect("ack queued");
    }
    assert_eq!(payloads, ["0", "1", "2", "3", "4", "5"]);
}

/// A v3.1.1 QoS 2 PUBLISH.
fn publish_qos2(pkid: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    let mut out = vec![0x34, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[tokio::test]
async fn inbound_qos2_beyond_max_inflight_without_pubrel_closes_the_connection() {
    let fx = Fixture::start_with(small_window()).await;
    let mut s = raw::connected(fx.addr, "no-pubrel", "acme", "sensor").await;
    for pkid in 1..=3 {
        s.write_all(&publish_qos2(pkid, "m/acme/c/telemetry/x", b"p"))
            .await
            .expect("writes");
        let (first, body) = raw::read_packet(&mut s, WAIT).await.expect("PUBREC");
        assert_eq!((first, body), (0x50, pkid.to_be_bytes().to_vec()));
    }
    // A fourth, with three still awaiting PUBREL.
    s.write_all(&publish_qos2(4, "m/acme/c/telemetry/x", b"p"))
        .await
        .expect("writes");
    let (rest, closed) = raw::read_until_closed(&mut s, WAIT).await;
    assert!(closed, "the connection stayed open");
    assert!(rest.is_empty(), "no PUBREC for the fourth: {rest:?}");
    assert_eq!(
        fx.dataplane.metrics().refusals("limit", "receive_maximum"),
        1
    );
}
