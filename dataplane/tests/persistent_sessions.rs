//! Persistent sessions: offline queueing, QoS 1 redelivery after reconnect, expiry, and the
//! policy re-checked on resume.

mod common;

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
