//! Limits: per-tenant message size, publish rate and connections, the pod's connection cap,
//! and a client that stops reading.

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, key, raw, resources, v4, v5};
use fleetward_dataplane::MqttConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn per_tenant_message_size_and_publish_rate() {
    let mut fx = Fixture::start().await;
    let mut r = resources();
    for t in r.tenants.iter_mut().filter(|t| t.name == "acme") {
        t.limits.max_message_size = Some(100);
        t.limits.publish_rate = Some(2);
        t.limits.publish_burst = Some(3);
    }
    fx.apply(r);
    let mut big = v5::connect(fx.addr, "acme", "sensor", "big").await;
    big.client
        .publish(
            "m/acme/c/telemetry/x",
            v5::QoS::AtMostOnce,
            false,
            vec![b'x'; 101],
        )
        .await
        .expect("queued");
    let e = big.closed_within(WAIT).await.expect("disconnected");
    assert!(e.contains("PacketTooLarge"), "{e}");
    let mut big3 = v4::connect(fx.addr, "acme", "sensor", "big3").await;
    big3.client
        .publish(
            "m/acme/c/telemetry/x",
            v4::QoS::AtMostOnce,
            false,
            vec![b'x'; 101],
        )
        .await
        .expect("queued");
    assert!(big3.closed_within(WAIT).await.is_some());
    // The other tenant has no such limit.
    let mut fine = v5::connect(fx.addr, "globex", "sensor", "fine").await;
    fine.client
        .publish(
            "m/globex/c/telemetry/x",
            v5::QoS::AtLeastOnce,
            false,
            vec![b'x'; 5000],
        )
        .await
        .expect("queued");
    assert!(matches!(
        fine.next(WAIT).await,
        Some(Ok(v5::Packet::PubAck(_)))
    ));

    let mut fast = v5::connect(fx.addr, "acme", "sensor", "fast").await;
    for i in 0..6 {
        fast.client
            .publish(
                "m/acme/c/telemetry/x",
                v5::QoS::AtMostOnce,
                false,
                format!("{i}"),
            )
            .await
            .expect("queued");
    }
    let e = fast.closed_within(WAIT).await.expect("disconnected");
    assert!(e.contains("MessageRateTooHigh"), "{e}");
    assert!(fx.dataplane.metrics().refusals("limit", "publish_rate") >= 1);
}

#[tokio::test]
async fn v3_publishers_over_the_rate_are_throttled_not_dropped() {
    let mut fx = Fixture::start().await;
    let mut r = resources();
    for t in r.tenants.iter_mut().filter(|t| t.name == "acme") {
        t.limits.publish_rate = Some(10);
        t.limits.publish_burst = Some(1);
    }
    fx.apply(r);
    let mut reader = v4::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtMostOnce)
        .await;
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    let start = Instant::now();
    for i in 0..6 {
        sensor
            .client
            .publish(
                "m/acme/c/telemetry/x",
                v4::QoS::AtMostOnce,
                false,
                format!("{i}"),
            )
            .await
            .expect("queued");
    }
    for i in 0..6 {
        let p = reader
            .next_publish(WAIT)
            .await
            .expect("every message arrives");
        assert_eq!(p.payload, format!("{i}").as_bytes());
    }
    // Five tokens at 10/s after the first.
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn the_pod_connection_limit_answers_server_busy() {
    let fx = Fixture::start_with(MqttConfig {
        max_connections: 2,
        ..MqttConfig::default()
    })
    .await;
    let _a = v5::connect(fx.addr, "acme", "reader", "a").await;
    let _b = v4::connect(fx.addr, "acme", "reader", "b").await;
    let o = v5::options(fx.addr, "acme", "reader", "c");
    assert_eq!(
        v5::connect_with(o).await.err().as_deref(),
        Some("ServerBusy")
    );
    let o = v4::options(fx.addr, "acme", "reader", "d");
    assert_eq!(
        v4::connect_with(o).await.err().as_deref(),
        Some("ServiceUnavailable")
    );
}

#[tokio::test]
async fn a_tenants_connection_limit_answers_quota_exceeded() {
    let mut fx = Fixture::start().await;
    let mut r = resources();
    for t in r.tenants.iter_mut().filter(|t| t.name == "acme") {
        t.limits.max_connections = Some(1);
    }
    fx.apply(r);
    let first = v5::connect(fx.addr, "acme", "reader", "a").await;
    let o = v5::options(fx.addr, "acme", "sensor", "b");
    assert_eq!(
        v5::connect_with(o).await.err().as_deref(),
        Some("QuotaExceeded")
    );
    let o = v4::options(fx.addr, "acme", "sensor", "c");
    assert_eq!(
        v4::connect_with(o).await.err().as_deref(),
        Some("ServiceUnavailable")
    );
    // Another tenant is not affected, and the slot comes back when the connection ends.
    let _other = v5::connect(fx.addr, "globex", "reader", "a").await;
    first.task.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _again = v5::connect(fx.addr, "acme", "sensor", "d").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let fx = Fixture::start_with(MqttConfig {
        write_timeout: Duration::from_millis(500),
        ..MqttConfig::default()
    })
    .await;
    let mut stalled = TcpStream::connect(fx.addr).await.expect("connects");
    stalled
        .write_all(&raw::connect(
            "stall",
            true,
            0,
            "acme/reader",
            &key("acme", "reader"),
            None,
        ))
        .await
        .expect("writes");
    let mut ack = [0u8; 4];
    stalled.read_exact(&mut ack).await.expect("CONNACK");
    stalled
        .write_all(&raw::subscribe(1, "m/acme/c/telemetry/#", 0))
        .await
        .expect("writes");
    let mut suback = [0u8; 5];
    stalled.read_exact(&mut suback).await.expect("SUBACK");
    let mut healthy = v4::connect(fx.addr, "acme", "reader", "healthy").await;
    healthy
        .subscribe("m/acme/c/commands/#", v4::QoS::AtMostOnce)
        .await;
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    // Far more than the socket buffers hold, while the stalled client reads nothing.
    for _ in 0..2000 {
        sensor
            .client
            .publish(
                "m/acme/c/telemetry/big",
                v4::QoS::AtMostOnce,
                false,
                vec![b'x'; 8000],
            )
            .await
            .expect("queued");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, closed) = raw::read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(closed, "the stalled connection was kept open");
    sensor
        .client
        .publish(
            "m/acme/c/commands/ok",
            v4::QoS::AtMostOnce,
            false,
            "still here",
        )
        .await
        .expect("queued");
    let p = healthy
        .next_publish(WAIT)
        .await
        .expect("the pod still delivers");
    assert_eq!(&p.payload[..], b"still here");
}
