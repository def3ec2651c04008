//! Persistent sessions: offline queueing, QoS 1 redelivery after reconnect, expiry, and the
//! policy re-checked on resume.

use crate::common;

use std::time::Duration;

use common::{Fixture, key, raw, resources, v4, v5};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(500);

async fn persistent_reader(fx: &Fixture, id: &str, clean: bool) -> v4::Client {
    let mut o = v4::options(fx.addr, "acme", "reader", id);
    o.set_clean_session(clean);
    v4::connect_with(o).await.expect("connects")
}

async fn publish_three(fx: &Fixture) {
    let mut sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    for i in 0..3 {
        sensor
            .client
            .publish(
                "m/acme/c/telemetry/q",
                v4::QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .expect("queued");
    }
    let mut acks = 0;
    while acks < 3 {
        match sensor.next(WAIT).await {
            Some(Ok(v4::Packet::PubAck(_))) => acks += 1,
            Some(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
}

#[tokio::test]
async fn messages_are_queued_while_a_persistent_client_is_away() {
    let fx = Fixture::start().await;
    let mut reader = persistent_reader(&fx, "p1", false).await;
    assert!(!reader.session_present);
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    reader.client.disconnect().await.expect("queued");
    assert!(reader.closed_within(WAIT).await.is_some());
    publish_three(&fx).await;

    let mut back = persistent_reader(&fx, "p1", false).await;
    assert!(back.session_present);
    for i in 0..3 {
        let p = back
            .next_publish(WAIT)
            .await
            .expect("queued message delivered");
        assert_eq!(p.payload, format!("m{i}").as_bytes());
        assert_eq!(p.qos, v4::QoS::AtLeastOnce);
    }
    // The subscription itself survived: new messages arrive too.
    publish_three(&fx).await;
    assert!(back.next_publish(WAIT).await.is_some());
}

#[tokio::test]
async fn a_clean_session_discards_what_was_saved() {
    let fx = Fixture::start().await;
    let mut reader = persistent_reader(&fx, "p2", false).await;
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    reader.client.disconnect().await.expect("queued");
    assert!(reader.closed_within(WAIT).await.is_some());
    publish_three(&fx).await;
    let mut clean = persistent_reader(&fx, "p2", true).await;
    assert!(!clean.session_present);
    assert!(clean.next_publish(QUIET).await.is_none());
    drop(clean);
    // And nothing is left for a later persistent connect either.
    let mut later = persistent_reader(&fx, "p2", false).await;
    assert!(!later.session_present);
    assert!(later.next_publish(QUIET).await.is_none());
}

#[tokio::test]
async fn an_unacknowledged_qos1_delivery_is_resent_with_dup_after_reconnect() {
    let fx = Fixture::start().await;
    let pass = key("acme", "reader");
    let mut s = TcpStream::connect(fx.addr).await.expect("connects");
    s.write_all(&raw::connect("raw1", false, 30, "acme/reader", &pass, None))
        .await
        .expect("writes");
    assert_eq!(
        raw::read_packet(&mut s, WAIT).await,
        Some((0x20, vec![0, 0]))
    );
    s.write_all(&raw::subscribe(1, "m/acme/c/telemetry/#", 1))
        .await
        .expect("writes");
    assert_eq!(
        raw::read_packet(&mut s, WAIT).await,
        Some((0x90, vec![0, 1, 1]))
    );
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    sensor
        .client
        .publish("m/acme/c/telemetry/r", v4::QoS::AtLeastOnce, false, "once")
        .await
        .expect("queued");
    let (first, body) = raw::read_packet(&mut s, WAIT).await.expect("delivered");
    assert_eq!(first, 0x32, "QoS 1, no DUP");
    assert!(body.ends_with(b"once"));
    // Gone without PUBACK.
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = TcpStream::connect(fx.addr).await.expect("connects");
    s.write_all(&raw::connect("raw1", false, 30, "acme/reader", &pass, None))
        .await
        .expect("writes");
    assert_eq!(
        raw::read_packet(&mut s, WAIT).await,
        Some((0x20, vec![1, 0])),
        "session present"
    );
    let (first, again) = raw::read_packet(&mut s, WAIT).await.expect("resent");
    assert_eq!(first, 0x3a, "QoS 1 with DUP");
    assert_eq!(again, body);
}

#[tokio::test]
async fn a_v5_session_expires_after_its_interval() {
    let fx = Fixture::start().await;
    let mut o = v5::options(fx.addr, "acme", "reader", "e1");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(1));
    let mut reader = v5::connect_with(o.clone()).await.expect("connects");
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    reader.client.disconnect().await.expect("queued");
    assert!(reader.closed_within(WAIT).await.is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish_three(&fx).await;
    let mut back = v5::connect_with(o).await.expect("connects");
    assert!(!back.connack.session_present);
    assert!(back.next_publish(QUIET).await.is_none());
}

#[tokio::test]
async fn a_grant_revoked_while_away_is_not_resumed() {
    let mut fx = Fixture::start().await;
    let mut reader = persistent_reader(&fx, "p3", false).await;
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    reader.client.disconnect().await.expect("queued");
    assert!(reader.closed_within(WAIT).await.is_some());
    publish_three(&fx).await;
    let mut r = resources();
    r.grants.retain(|g| g.name != "reader-telemetry");
    fx.apply(r);
    let mut back = persistent_reader(&fx, "p3", false).await;
    assert!(back.session_present);
    assert!(back.next_publish(QUIET).await.is_none());
}

/// A raw v3 persistent session of `acme/reader` with `id`, subscribed to telemetry at QoS 1,
/// that received one QoS 1 delivery and went away without acknowledging it.
async fn reader_gone_with_an_unacked_delivery(fx: &Fixture, id: &str) {
    let pass = key("acme", "reader");
    let mut s = TcpStream::connect(fx.addr).await.expect("connects");
    s.write_all(&raw::connect(id, false, 30, "acme/reader", &pass, None))
        .await
        .expect("writes");
    assert_eq!(
        raw::read_packet(&mut s, WAIT).await,
        Some((0x20, vec![0, 0]))
    );
    s.write_all(&raw::subscribe(1, "m/acme/c/telemetry/#", 1))
        .await
        .expect("writes");
    assert_eq!(
        raw::read_packet(&mut s, WAIT).await,
        Some((0x90, vec![0, 1, 1]))
    );
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    sensor
        .client
        .publish("m/acme/c/telemetry/r", v4::QoS::AtLeastOnce, false, "once")
        .await
        .expect("queued");
    let (first, _) = raw::read_packet(&mut s, WAIT).await.expect("delivered");
    assert_eq!(first, 0x32, "QoS 1, no DUP");
    drop(s);
}

#[tokio::test]
async fn an_unacknowledged_delivery_is_not_resent_after_its_grant_is_revoked() {
    let mut fx = Fixture::start().await;
    reader_gone_with_an_unacked_delivery(&fx, "raw2").await;
    let mut r = resources();
    r.grants.retain(|g| g.name != "reader-telemetry");
    fx.apply(r);
    let mut s = TcpStream::connect(fx.addr).await.expect("connects");
    let pass = key("acme", "reader");
    s.write_all(&raw::connect("raw2", false, 30, "acme/reader", &pass, None))
        .await
        .expect("writes");
    assert_eq!(
        raw::read_packet(&mut s, WAIT).await,
        Some((0x20, vec![1, 0])),
        "session present"
    );
    // Anything resent is written before the first packet is read, so before the PINGRESP.
    s.write_all(&[0xC0, 0]).await.expect("writes");
    let (first, _) = raw::read_packet(&mut s, WAIT).await.expect("answered");
    assert_eq!(first, 0xD0, "PINGRESP, and no resent PUBLISH before it");
    assert_eq!(
        fx.dataplane.metrics().refusals("resend", "no_grant"),
        1,
        "the dropped resend is counted"
    );
}

#[tokio::test]
async fn a_takeover_waits_for_a_stuck_session_only_a_bounded_time() {
    let mut fx = Fixture::start_with(fleetward_dataplane::MqttConfig {
        takeover_wait: Duration::from_millis(500),
        ..fleetward_dataplane::MqttConfig::default()
    })
    .await;
    let mut r = resources();
    for t in r.tenants.iter_mut().filter(|t| t.name == "acme") {
        t.limits.publish_rate = Some(1);
        t.limits.publish_burst = Some(1);
    }
    fx.apply(r);
    let pass = key("acme", "sensor");
    let mut old = TcpStream::connect(fx.addr).await.expect("connects");
    old.write_all(&raw::connect("stuck", true, 0, "acme/sensor", &pass, None))
        .await
        .expect("writes");
    assert_eq!(
        raw::read_packet(&mut old, WAIT).await,
        Some((0x20, vec![0, 0]))
    );
    // Far over the tenant's rate: a v3 session is throttled, not read, for about 30 s.
    let mut burst = Vec::new();
    for _ in 0..30 {
        burst.extend(raw::publish("m/acme/c/telemetry/x", 0, 0, b"1"));
    }
    old.write_all(&burst).await.expect("writes");
    let until = std::time::Instant::now() + WAIT;
    while fx
        .dataplane
        .metrics()
        .refusals("limit", "publish_rate_throttled")
        == 0
    {
        assert!(
            std::time::Instant::now() < until,
            "the old session is never throttled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let mut new = TcpStream::connect(fx.addr).await.expect("connects");
    new.write_all(&raw::connect("stuck", true, 0, "acme/sensor", &pass, None))
        .await
        .expect("writes");
    assert_eq!(
        raw::read_packet(&mut new, WAIT).await,
        Some((0x20, vec![0, 0])),
        "the new connection is accepted within the bound, not after the old one ends"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        fx.dataplane
            .metrics()
            .refusals("takeover", "predecessor_abandoned"),
        1
    );
}
