//! Persistent sessions in JetStream (MQTT.md, "Persistent sessions across pods"): resumed on
//! another pod with what was queued while the client was away, nothing acknowledged lost
//! when a pod goes or NATS restarts, takeover across pods. Real nats-server, in-process
//! dataplanes, rumqttc v5 clients.

use std::time::{Duration, Instant};

use crate::bus_support::{Nats, Pod};
use crate::common::{v4, v5};

const WAIT: Duration = Duration::from_secs(10);

fn persistent(addr: std::net::SocketAddr, id: &str) -> v5::MqttOptions {
    let mut o = v5::options(addr, "acme", "reader", id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(300));
    o
}

async fn pods(nats: &Nats) -> (Pod, Pod) {
    let a = Pod::start("pod-a", vec![nats.url()]).await;
    let b = Pod::start("pod-b", vec![nats.url()]).await;
    a.wait_connected(true).await;
    b.wait_connected(true).await;
    // A persistent session on the probe topic: its channel's messages are stored from then on.
    let mut probe = v5::connect_with(persistent(a.addr, "probe"))
        .await
        .expect("connects");
    probe
        .subscribe("m/acme/c/telemetry/probe", v5::QoS::AtLeastOnce)
        .await;
    wait_durable(&a).await;
    wait_durable(&b).await;
    probe.client.disconnect().await.expect("disconnects");
    (a, b)
}

/// Waits until the pod stores the telemetry channel's QoS 1/2 messages in JetStream: it asked
/// JetStream once, and knows a persistent session follows the channel.
async fn wait_durable(pod: &Pod) {
    let until = Instant::now() + WAIT;
    while !durable_ready(pod).await {
        assert!(
            Instant::now() < until,
            "{}: JetStream never answered",
            pod.node
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A probe publish at QoS 1 that is stored: the pod's durable store is up.
async fn durable_ready(pod: &Pod) -> bool {
    let before = pod.dataplane.metrics().durable_counts().0;
    let sensor = v4::connect(pod.addr, "acme", "sensor", &format!("probe-{}", pod.node)).await;
    let _ = sensor
        .client
        .publish("m/acme/c/telemetry/probe", v4::QoS::AtLeastOnce, false, "p")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    pod.dataplane.metrics().durable_counts().0 > before
}

async fn publish_n(pod: &Pod, id: &str, topic: &str, from: u32, n: u32) {
    let mut sensor = v4::connect(pod.addr, "acme", "sensor", id).await;
    for i in from..from + n {
        sensor
            .client
            .publish(topic, v4::QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .expect("queued");
    }
    // Every PUBACK back: the messages are accepted (and, on a NATS pod, stored).
    let mut acked = 0;
    while acked < n {
        match sensor.next(WAIT).await {
            Some(Ok(v4::Packet::PubAck(_))) => acked += 1,
            Some(Ok(_)) => {}
            other => panic!("publisher on {} lost its PUBACKs: {other:?}", pod.node),
        }
    }
}

/// Payloads received (as numbers) until `quiet` passes without one, and how many had DUP.
async fn received(c: &mut v5::Client, quiet: Duration) -> (Vec<u32>, usize) {
    let mut got = Vec::new();
    let mut dups = 0;
    while let Some(p) = c.next_publish(quiet).await {
        if p.topic.ends_with(b"probe") {
            continue;
        }
        dups += usize::from(p.dup);
        got.push(
            String::from_utf8_lossy(&p.payload)
                .parse()
                .expect("a number"),
        );
    }
    (got, dups)
}

#[tokio::test]
async fn a_session_resumes_on_another_pod_with_what_was_queued_while_away() {
    let nats = Nats::start().await;
    let (a, b) = pods(&nats).await;
    let mut reader = v5::connect_with(persistent(a.addr, "durable-1"))
        .await
        .expect("connects");
    assert!(!reader.connack.session_present);
    assert_eq!(
        reader
            .subscribe("m/acme/c/telemetry/x", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    publish_n(&b, "s1", "m/acme/c/telemetry/x", 0, 10).await;
    let (got, _) = received(&mut reader, Duration::from_millis(700)).await;
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "live, across pods");
    reader.client.disconnect().await.expect("disconnects");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Away: 100 messages, published on both pods.
    publish_n(&a, "s2", "m/acme/c/telemetry/x", 10, 50).await;
    publish_n(&b, "s3", "m/acme/c/telemetry/x", 60, 50).await;

    let started = Instant::now();
    let mut back = v5::connect_with(persistent(b.addr, "durable-1"))
        .await
        .expect("connects");
    assert!(back.connack.session_present, "resumed on the other pod");
    let (got, _) = received(&mut back, Duration::from_millis(700)).await;
    let resumed_in = started.elapsed();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (10..110).collect::<Vec<_>>(),
        "every queued message"
    );
    // Order per publisher (and topic) is kept.
    let from_a: Vec<u32> = got.iter().copied().filter(|i| *i < 60).collect();
    assert_eq!(from_a, (10..60).collect::<Vec<_>>());
    eprintln!("resumed on another pod with 100 queued in {resumed_in:?}");

    // The subscription came back too: live messages flow to the new pod.
    publish_n(&a, "s4", "m/acme/c/telemetry/x", 200, 3).await;
    let (got, _) = received(&mut back, Duration::from_millis(700)).await;
    assert_eq!(got, vec![200, 201, 202]);
}

#[tokio::test]
async fn a_pod_that_dies_loses_nothing_it_acknowledged() {
    let nats = Nats::start().await;
    let (a, b) = pods(&nats).await;
    let mut reader = v5::connect_with(persistent(a.addr, "durable-2"))
        .await
        .expect("connects");
    reader
        .subscribe("m/acme/c/telemetry/y", v5::QoS::AtLeastOnce)
        .await;
    // Unacknowledged by the client when the pod goes: rumqttc acknowledges as it reads, so
    // stop reading first (the event loop task) and let messages pile up in flight.
    reader.task.abort();
    publish_n(&b, "s5", "m/acme/c/telemetry/y", 0, 40).await;
    // The pod goes without a word (its tasks aborted, its NATS connection closed).
    drop(a);
    publish_n(&b, "s6", "m/acme/c/telemetry/y", 40, 40).await;
    let mut back = v5::connect_with(persistent(b.addr, "durable-2"))
        .await
        .expect("connects");
    assert!(back.connack.session_present);
    let (got, _) = received(&mut back, Duration::from_millis(1000)).await;
    let mut unique = got.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique,
        (0..80).collect::<Vec<_>>(),
        "nothing acknowledged is lost"
    );
}

#[tokio::test]
async fn a_connect_on_another_pod_takes_the_session_over_within_a_second() {
    let nats = Nats::start().await;
    let (a, b) = pods(&nats).await;
    let mut first = v5::connect_with(persistent(a.addr, "durable-3"))
        .await
        .expect("connects");
    first
        .subscribe("m/acme/c/telemetry/z", v5::QoS::AtLeastOnce)
        .await;
    let started = Instant::now();
    let mut second = v5::connect_with(persistent(b.addr, "durable-3"))
        .await
        .expect("connects");
    assert!(second.connack.session_present);
    let closed = first.closed_within(Duration::from_secs(1)).await;
    assert_eq!(
        closed.as_deref(),
        Some("disconnect SessionTakenOver"),
        "the old connection ends with 0x8E"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    publish_n(&a, "s7", "m/acme/c/telemetry/z", 0, 5).await;
    let (got, _) = received(&mut second, Duration::from_millis(700)).await;
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_nats_restart_loses_no_acknowledged_message() {
    let mut nats = Nats::start().await;
    let (a, b) = pods(&nats).await;
    let mut reader = v5::connect_with(persistent(b.addr, "durable-4"))
        .await
        .expect("connects");
    reader
        .subscribe("m/acme/c/telemetry/w", v5::QoS::AtLeastOnce)
        .await;
    publish_n(&a, "s8", "m/acme/c/telemetry/w", 0, 20).await;
    nats.kill();
    // Published while NATS is down: the PUBACKs wait for JetStream.
    let late = tokio::spawn({
        let addr = a.addr;
        async move {
            let pod_a = PodAddr(addr);
            pod_a.publish(20, 20).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart().await;
    tokio::time::timeout(Duration::from_secs(30), late)
        .await
        .expect("the PUBACKs came once NATS was back")
        .expect("publisher ran");
    // A NATS server killed at once may deliver again what was acknowledged just before (its
    // consumers' state is written behind); nothing is lost.
    let mut got = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(30);
    while got.len() < 40 && Instant::now() < until {
        if let Some(p) = reader.next_publish(Duration::from_secs(1)).await {
            got.insert(
                String::from_utf8_lossy(&p.payload)
                    .parse::<u32>()
                    .expect("n"),
            );
        } else if reader.task.is_finished() {
            reader = v5::connect_with(persistent(b.addr, "durable-4"))
                .await
                .expect("connects");
        }
    }
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        (0..40).collect::<Vec<_>>(),
        "nothing acknowledged is lost"
    );
}

/// A pod's address, for a publisher in a task.
struct PodAddr(std::net::SocketAddr);

impl PodAddr {
    async fn publish(&self, from: u32, n: u32) {
        let mut sensor = v4::connect(self.0, "acme", "sensor", "late").await;
        for i in from..from + n {
            sensor
                .client
                .publish(
                    "m/acme/c/telemetry/w",
                    v4::QoS::AtLeastOnce,
                    false,
                    format!("{i}"),
                )
                .await
                .expect("queued");
        }
        let mut acked = 0;
        while acked < n {
            match sensor.next(Duration::from_secs(30)).await {
                Some(Ok(v4::Packet::PubAck(_))) => acked += 1,
                Some(Ok(_)) => {}
                other => panic!("the late publisher lost its PUBACKs: {other:?}"),
            }
        }
    }
}

/// A sensor's persistent session with a will on `m/acme/c/telemetry/will-<id>` after `delay`.
fn with_will(addr: std::net::SocketAddr, id: &str, delay: u32) -> v5::MqttOptions {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    let mut o = v5::options(addr, "acme", "sensor", id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(300));
    o.set_last_will(LastWill::new(
        format!("m/acme/c/telemetry/will-{id}"),
        "gone",
        v5::QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    ));
    o
}

/// Wills received on `filter` by a clean reader on `pod` within `wait`.
async fn wills_seen(mut watcher: v5::Client, wait: Duration) -> usize {
    let mut n = 0;
    let until = Instant::now() + wait;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match watcher.next_publish(left).await {
            Some(p) if p.payload.as_ref() == b"gone" => n += 1,
            Some(_) => {}
            None => break,
        }
    }
    n
}

#[tokio::test]
async fn a_delayed_will_goes_out_once_from_another_pod_when_its_pod_is_gone() {
    let nats = Nats::start().await;
    let (a, b) = pods(&nats).await;
    let mut watcher = v5::connect(b.addr, "acme", "reader", "will-watcher-1").await;
    watcher
        .subscribe("m/acme/c/telemetry/will-w1", v5::QoS::AtLeastOnce)
        .await;
    let device = v5::connect_with(with_will(a.addr, "w1", 2))
        .await
        .expect("connects");
    // Its connection drops without DISCONNECT; then its pod goes before the delay ends.
    device.task.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(a);
    assert_eq!(
        wills_seen(watcher, Duration::from_secs(6)).await,
        1,
        "the will goes out once, from the pod that is left"
    );
}

#[tokio::test]
async fn a_reconnect_on_another_pod_within_the_delay_cancels_the_will() {
    let nats = Nats::start().await;
    let (a, b) = pods(&nats).await;
    let mut watcher = v5::connect(b.addr, "acme", "reader", "will-watcher-2").await;
    watcher
        .subscribe("m/acme/c/telemetry/will-w2", v5::QoS::AtLeastOnce)
        .await;
    let device = v5::connect_with(with_will(a.addr, "w2", 3))
        .await
        .expect("connects");
    device.task.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = v5::connect_with(with_will(b.addr, "w2", 3))
        .await
        .expect("connects");
    assert!(back.connack.session_present);
    assert_eq!(
        wills_seen(watcher, Duration::from_secs(6)).await,
        0,
        "no will: the client came back within the delay"
    );
    drop(back);
}

#[tokio::test]
async fn deliveries_sent_again_on_another_pod_keep_their_packet_ids() {
    let nats = Nats::start().await;
    let (a, b) = pods(&nats).await;
    // A client that never acknowledges: what it got stays in flight.
    let mut o = persistent(a.addr, "durable-5");
    o.set_manual_acks(true);
    let mut first = v5::connect_with(o).await.expect("connects");
    first
        .subscribe("m/acme/c/telemetry/v", v5::QoS::AtLeastOnce)
        .await;
    publish_n(&b, "s9", "m/acme/c/telemetry/v", 0, 5).await;
    let mut ids = Vec::new();
    while let Some(p) = first.next_publish(Duration::from_millis(700)).await {
        assert!(!p.dup);
        ids.push((p.payload.clone(), p.pkid));
    }
    assert_eq!(ids.len(), 5, "every message delivered once, unacknowledged");
    first.task.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut o = persistent(b.addr, "durable-5");
    o.set_manual_acks(true);
    let mut back = v5::connect_with(o).await.expect("connects");
    assert!(back.connack.session_present);
    let mut again = Vec::new();
    while let Some(p) = back.next_publish(Duration::from_millis(700)).await {
        assert!(p.dup, "sent again: DUP");
        again.push((p.payload.clone(), p.pkid));
    }
    assert_eq!(
        again, ids,
        "the same messages, in order, with their packet ids"
    );
}

#[tokio::test]
async fn a_tenant_holds_at_most_its_share_of_delayed_wills_across_the_cluster() {
    let nats = Nats::start().await;
    let mqtt = fleetward_dataplane::MqttConfig {
        max_pending_wills_per_tenant: 1,
        ..Default::default()
    };
    let a = Pod::start_with("pod-a", vec![nats.url()], mqtt).await;
    a.wait_connected(true).await;
    let mut probe = v5::connect_with(persistent(a.addr, "probe"))
        .await
        .expect("connects");
    probe
        .subscribe("m/acme/c/telemetry/probe", v5::QoS::AtLeastOnce)
        .await;
    wait_durable(&a).await;
    let mut watcher = v5::connect(a.addr, "acme", "reader", "will-watcher-3").await;
    watcher
        .subscribe("m/acme/c/telemetry/+", v5::QoS::AtLeastOnce)
        .await;
    // The first waits out its delay in the bucket; the second is past the tenant's share and
    // goes out at once, counted.
    let first = v5::connect_with(with_will(a.addr, "w3", 60))
        .await
        .expect("connects");
    first.task.abort();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = v5::connect_with(with_will(a.addr, "w4", 60))
        .await
        .expect("connects");
    second.task.abort();
    let mut wills = Vec::new();
    while let Some(p) = watcher.next_publish(Duration::from_secs(2)).await {
        if p.payload.as_ref() == b"gone" {
            wills.push(String::from_utf8_lossy(&p.topic).into_owned());
        }
    }
    assert_eq!(
        wills,
        ["m/acme/c/telemetry/will-w4"],
        "only the will past the share, at once"
    );
    assert!(
        crate::bus::reqwest_metrics(&a)
            .await
            .contains("reason=\"tenant_pending_wills_full\"} 1"),
        "counted"
    );
}
