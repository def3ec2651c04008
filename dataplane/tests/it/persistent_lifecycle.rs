//! What a persistent session keeps while its client is away is bounded, and goes with what it
//! belonged to: a deleted thing's sessions, a deleted (or deleted and re-created) channel's
//! queued messages.

use crate::common;

use std::time::{Duration, Instant};

use common::{Fixture, resources, v4};
use fleetward_dataplane::MqttConfig;
use fleetward_policy::Resources;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(700);

async fn persistent_reader(fx: &Fixture, id: &str) -> v4::Client {
    let mut o = v4::options(fx.addr, "acme", "reader", id);
    o.set_clean_session(false);
    v4::connect_with(o).await.expect("connects")
}

/// A persistent reader subscribed to the telemetry channel, gone away cleanly.
async fn reader_away(fx: &Fixture, id: &str) {
    let mut reader = persistent_reader(fx, id).await;
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    reader.client.disconnect().await.expect("queued");
    assert!(reader.closed_within(WAIT).await.is_some());
}

async fn publish(fx: &Fixture, n: usize) {
    let mut sensor = v4::connect(fx.addr, "acme", "sensor", "s").await;
    for i in 0..n {
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
    while acks < n {
        match sensor.next(WAIT).await {
            Some(Ok(v4::Packet::PubAck(_))) => acks += 1,
            Some(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
}

async fn metrics(fx: &Fixture) -> String {
    let addr = fx.dataplane.admin_addr.expect("admin listener");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("sent");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// Waits (up to a deadline, then goes on) until `/metrics` has `line`.
async fn wait_for_metric(fx: &Fixture, line: &str) -> bool {
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        if metrics(fx).await.contains(line) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_resumed_session_gets_at_most_the_offline_bound_and_the_rest_is_counted() {
    let fx = Fixture::start_with(MqttConfig {
        max_offline_messages: 5,
        ..MqttConfig::default()
    })
    .await;
    reader_away(&fx, "bounded").await;
    publish(&fx, 20).await;

    let mut back = persistent_reader(&fx, "bounded").await;
    assert!(back.session_present);
    for i in 0..5 {
        let p = back.next_publish(WAIT).await.expect("a queued message");
        assert_eq!(p.payload, format!("m{i}").as_bytes(), "the oldest first");
    }
    assert!(
        back.next_publish(QUIET).await.is_none(),
        "more than the bound was delivered"
    );
    assert!(
        wait_for_metric(
            &fx,
            "fleetward_mqtt_refusals_total{what=\"offline\",reason=\"queue_full\"} 15"
        )
        .await,
        "{}",
        metrics(&fx).await
    );
    // Live messages after the resume are not bounded.
    publish(&fx, 8).await;
    for _ in 0..8 {
        assert!(back.next_publish(WAIT).await.is_some(), "a live message");
    }
}

#[tokio::test]
async fn deleting_a_thing_drops_its_persistent_sessions() {
    let mut fx = Fixture::start().await;
    reader_away(&fx, "deleted").await;
    publish(&fx, 3).await;

    let mut without = resources();
    without
        .things
        .retain(|t| !(t.tenant == "acme" && t.name == "reader"));
    without
        .grants
        .retain(|g| !(g.tenant == "acme" && g.name.starts_with("reader-")));
    fx.apply(without);
    // The drop is counted; waited for so the re-creation below is a later snapshot.
    wait_for_metric(
        &fx,
        "fleetward_mqtt_refusals_total{what=\"session\",reason=\"subject_deleted\"} 1",
    )
    .await;
    fx.apply(resources());

    let mut back = persistent_reader(&fx, "deleted").await;
    assert!(
        !back.session_present,
        "the re-created thing resumed a session"
    );
    assert!(
        back.next_publish(QUIET).await.is_none(),
        "an old queued message arrived"
    );
}

#[tokio::test]
async fn deleting_a_channel_drops_what_persistent_sessions_queued_for_it() {
    let mut fx = Fixture::start().await;
    reader_away(&fx, "channel").await;
    publish(&fx, 3).await;

    let mut without = resources();
    without
        .channels
        .retain(|c| !(c.tenant == "acme" && c.name == "telemetry"));
    without
        .grants
        .retain(|g| !(g.tenant == "acme" && g.channel == "telemetry"));
    without
        .things
        .retain(|t| !(t.tenant == "acme" && t.name == "mounted"));
    fx.apply(without);
    wait_for_metric(
        &fx,
        "fleetward_mqtt_refusals_total{what=\"session\",reason=\"channel_deleted\"} 1",
    )
    .await;
    fx.apply(resources());

    let mut back = persistent_reader(&fx, "channel").await;
    assert!(back.session_present, "the session itself is kept");
    assert!(
        back.next_publish(QUIET).await.is_none(),
        "a message queued for the deleted channel arrived"
    );
}

/// The fixture's resources with acme's `telemetry` channel under `uid`.
fn telemetry_under(uid: &str) -> Resources {
    let mut r = resources();
    for c in &mut r.channels {
        if c.tenant == "acme" && c.name == "telemetry" {
            c.uid = uid.into();
        }
    }
    r
}

#[tokio::test]
async fn a_channel_deleted_and_created_again_between_two_snapshots_starts_empty() {
    let mut fx = Fixture::start().await;
    fx.apply(telemetry_under("c1"));
    reader_away(&fx, "recreated").await;
    publish(&fx, 3).await;
    let mut sensor = v4::connect(fx.addr, "acme", "sensor", "retainer").await;
    sensor.retain("m/acme/c/telemetry/state", "old").await;
    assert!(matches!(
        sensor.next(WAIT).await,
        Some(Ok(v4::Packet::PubAck(_)))
    ));

    // Deleted and created again where this pod saw no snapshot without it (one reconciliation,
    // or a PolicySync outage): only the uid tells the new channel from the old.
    fx.apply(telemetry_under("c2"));
    assert!(
        wait_for_metric(
            &fx,
            "fleetward_mqtt_refusals_total{what=\"session\",reason=\"channel_deleted\"} 1",
        )
        .await
    );
    let mut back = persistent_reader(&fx, "recreated").await;
    assert!(back.session_present, "the session itself is kept");
    assert!(
        back.next_publish(QUIET).await.is_none(),
        "a message queued for the old channel arrived"
    );
    let mut fresh = v4::connect(fx.addr, "acme", "reader", "fresh").await;
    fresh
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    assert!(
        fresh.next_publish(QUIET).await.is_none(),
        "the old channel's retained message arrived"
    );
}
