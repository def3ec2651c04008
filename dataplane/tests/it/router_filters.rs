//! The router frees what no one holds: a session's many distinct filters take a bounded set of
//! router filters, which are given back when it unsubscribes or goes; a SUBSCRIBE costs the
//! same after thousands of filters; overlapping filters deliver a message once.

use crate::common;

use std::time::{Duration, Instant};

use common::{Fixture, raw, v4};
use fleetward_dataplane::MqttConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// A pod that lets one session hold many thousands of filters, as the attack in the issue did
/// (the default `--max-subscriptions-per-session` would refuse them first).
async fn many_filters_pod() -> Fixture {
    Fixture::start_with(MqttConfig {
        max_subscriptions_per_session: 100_000,
        ..MqttConfig::default()
    })
    .await
}

/// Router filters a session may cost per channel: the buckets (`router::DEFAULT_BUCKETS`), `+`
/// and a shared group.
const ROUTES_PER_CHANNEL: u64 = 256 + 2;

/// A v3.1.1 SUBSCRIBE (QoS 0) or UNSUBSCRIBE of several filters.
fn packet(subscribe: bool, pkid: u16, filters: &[String]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for f in filters {
        raw::mqtt_str(&mut body, f.as_bytes());
        if subscribe {
            body.push(0);
        }
    }
    raw::with_header(if subscribe { 0x82 } else { 0xA2 }, body)
}

fn filters(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("m/acme/c/telemetry/{prefix}/{i}"))
        .collect()
}

/// Sends one (UN)SUBSCRIBE and reads its ack; every filter must be granted.
async fn request(s: &mut TcpStream, subscribe: bool, pkid: u16, filters: &[String]) {
    s.write_all(&packet(subscribe, pkid, filters))
        .await
        .expect("writes");
    let (first, body) = raw::read_packet(s, WAIT).await.expect("an ack");
    assert_eq!(first, if subscribe { 0x90 } else { 0xB0 });
    assert_eq!(&body[..2], &pkid.to_be_bytes());
    if subscribe {
        assert!(
            body[2..].iter().all(|&c| c == 0),
            "every filter granted: {:?}",
            &body[2..]
        );
    }
}

async fn metrics(fx: &Fixture) -> String {
    let addr = fx.dataplane.admin_addr.expect("admin listener");
    let mut s = TcpStream::connect(addr).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("sent");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// The router filters held now, from `/metrics`.
async fn router_filters(fx: &Fixture) -> Option<u64> {
    let text = metrics(fx).await;
    text.lines()
        .find_map(|l| l.strip_prefix("fleetward_router_filters "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the router holds `n` filters.
async fn wait_for_filters(fx: &Fixture, n: u64) {
    let until = Instant::now() + WAIT;
    loop {
        let now = router_filters(fx).await;
        if now == Some(n) {
            return;
        }
        assert!(
            Instant::now() < until,
            "the router holds {now:?} filters, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn thousands_of_distinct_filters_leave_the_router_with_their_session() {
    let fx = many_filters_pod().await;
    let start = router_filters(&fx)
        .await
        .expect("the router's filter count");
    let mut s = raw::connected(fx.addr, "many", "acme", "reader").await;
    let all = filters("d", 0..4_000);
    for (i, chunk) in all.chunks(200).enumerate() {
        request(&mut s, true, i as u16 + 1, chunk).await;
    }
    let held = router_filters(&fx).await.expect("a count");
    assert!(
        held > start && held <= start + ROUTES_PER_CHANNEL,
        "4,000 filters in one channel hold {held} router filters"
    );

    // Still delivered, to exactly the filters subscribed.
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    for topic in [
        "m/acme/c/telemetry/d/not-subscribed",
        "m/acme/c/telemetry/d/1234",
    ] {
        sensor
            .client
            .publish(topic, v4::QoS::AtMostOnce, false, topic.as_bytes().to_vec())
            .await
            .expect("queued");
    }
    let (first, body) = raw::read_packet(&mut s, WAIT).await.expect("a delivery");
    assert_eq!(first & 0xF0, 0x30);
    assert!(
        body.ends_with(b"m/acme/c/telemetry/d/1234"),
        "only the subscribed topic arrives: {body:?}"
    );

    // Half unsubscribed, then a clean disconnect: every router filter goes.
    for (i, chunk) in all[..2_000].chunks(200).enumerate() {
        request(&mut s, false, i as u16 + 100, chunk).await;
    }
    s.write_all(&[0xE0, 0]).await.expect("DISCONNECT");
    drop(s);
    wait_for_filters(&fx, start).await;

    // Churn: new distinct filters each round, and the count comes back each time.
    for round in 0..3 {
        let mut s = raw::connected(fx.addr, "churn", "acme", "reader").await;
        let batch = filters(&format!("r{round}"), 0..1_000);
        for (i, chunk) in batch.chunks(250).enumerate() {
            request(&mut s, true, i as u16 + 1, chunk).await;
        }
        for (i, chunk) in batch.chunks(250).enumerate() {
            request(&mut s, false, i as u16 + 10, chunk).await;
        }
        wait_for_filters(&fx, start).await;
        s.write_all(&[0xE0, 0]).await.expect("DISCONNECT");
    }
}

#[tokio::test]
async fn a_subscribe_costs_no_more_after_ten_thousand_filters() {
    let fx = many_filters_pod().await;
    let mut s = raw::connected(fx.addr, "cost", "acme", "reader").await;
    // Time for 500 new filters, in SUBSCRIBEs of 100.
    async fn five_hundred(s: &mut TcpStream, from: usize, pkid: u16) -> Duration {
        let started = Instant::now();
        let batch = filters("c", from..from + 500);
        for (i, chunk) in batch.chunks(100).enumerate() {
            request(s, true, pkid + i as u16, chunk).await;
        }
        started.elapsed()
    }
    // Warmed up, then the first 500 after the first few.
    five_hundred(&mut s, 0, 1).await;
    let early = five_hundred(&mut s, 500, 10).await;
    let mut pkid = 20;
    for from in (1_000..10_000).step_by(500) {
        five_hundred(&mut s, from, pkid).await;
        pkid += 10;
    }
    let late = five_hundred(&mut s, 10_000, pkid).await;
    // A generous ratio: a cost that grows with the filters held is 10× here.
    assert!(
        late < early * 4 + Duration::from_millis(200),
        "500 SUBSCRIBEd filters took {early:?} at 500 held and {late:?} at 10,000 held"
    );
}

#[tokio::test]
async fn overlapping_filters_deliver_a_message_once() {
    let fx = Fixture::start().await;
    let mut reader = v4::connect(fx.addr, "acme", "reader", "overlap").await;
    for f in [
        "m/acme/c/telemetry/#",
        "m/acme/c/telemetry/+/x",
        "m/acme/c/telemetry/a/x",
    ] {
        reader.subscribe(f, v4::QoS::AtLeastOnce).await;
    }
    let sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    sensor
        .client
        .publish(
            "m/acme/c/telemetry/a/x",
            v4::QoS::AtLeastOnce,
            false,
            "once",
        )
        .await
        .expect("queued");
    let p = reader.next_publish(WAIT).await.expect("delivered");
    assert_eq!(p.payload, "once".as_bytes());
    assert_eq!(p.qos, v4::QoS::AtLeastOnce, "the highest granted QoS");
    assert!(
        reader
            .next_publish(Duration::from_millis(500))
            .await
            .is_none(),
        "a second copy arrived"
    );
}
