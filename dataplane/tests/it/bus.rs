//! The cross-pod bus with a real nats-server: two (or three) in-process dataplanes, rumqttc
//! clients on each. Needs `nats-server` on the PATH (fails, never skips, without it).

use crate::bus_support;
use crate::common;

use std::time::{Duration, Instant};

use bus_support::{Nats, Pod};
use common::{v4, v5};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(700);
const TELEMETRY: [&str; 2] = ["m.acme.c.telemetry", "m.acme.c.telemetry.>"];

/// Every publish received within `quiet` of the previous one.
async fn drain(c: &mut v4::Client, quiet: Duration) -> Vec<rumqttc::Publish> {
    let mut out = Vec::new();
    while let Some(p) = c.next_publish(quiet).await {
        out.push(p);
    }
    out
}

async fn reader(pod: &Pod, tenant: &str, id: &str, filter: &str) -> v4::Client {
    let mut c = v4::connect(pod.addr, tenant, "reader", id).await;
    assert_eq!(
        c.subscribe(filter, v4::QoS::AtLeastOnce).await,
        vec![v4::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce)]
    );
    c
}

fn payloads(got: &[rumqttc::Publish]) -> Vec<String> {
    got.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

#[tokio::test]
async fn delivery_both_ways_exactly_once() {
    let nats = Nats::start().await;
    let a = Pod::start("pod-a", vec![nats.url()]).await;
    let b = Pod::start("pod-b", vec![nats.url()]).await;
    a.wait_connected(true).await;
    b.wait_connected(true).await;
    let mut on_a = reader(&a, "acme", "ra", "m/acme/c/telemetry/#").await;
    let mut on_b = reader(&b, "acme", "rb", "m/acme/c/telemetry/#").await;
    nats.wait_subjects("pod-a", &TELEMETRY).await;
    nats.wait_subjects("pod-b", &TELEMETRY).await;

    let n = 100;
    for (pod, name) in [(&a, "from-a"), (&b, "from-b")] {
        let sensor = v4::connect(pod.addr, "acme", "sensor", name).await;
        for i in 0..n {
            sensor
                .client
                .publish(
                    format!("m/acme/c/telemetry/{name}"),
                    v4::QoS::AtLeastOnce,
                    false,
                    format!("{name}-{i}"),
                )
                .await
                .expect("queued");
        }
        let want: Vec<String> = (0..n).map(|i| format!("{name}-{i}")).collect();
        // Each reader gets each message exactly once and in order: the publishing pod's
        // reader locally (never again from the bus), the other pod's reader over NATS.
        assert_eq!(
            payloads(&drain(&mut on_a, QUIET).await),
            want,
            "reader on pod-a"
        );
        assert_eq!(
            payloads(&drain(&mut on_b, QUIET).await),
            want,
            "reader on pod-b"
        );
    }
    let (a_out, a_in) = a.dataplane.metrics().bus_messages();
    let (b_out, b_in) = b.dataplane.metrics().bus_messages();
    assert_eq!((a_out, a_in, b_out, b_in), (n, n, n, n));
    assert_eq!(a.dataplane.metrics().bus_drops("duplicate"), 0);
}

#[tokio::test]
async fn v5_properties_and_user_properties_cross_pods() {
    let nats = Nats::start().await;
    let a = Pod::start("pod-a", vec![nats.url()]).await;
    let b = Pod::start("pod-b", vec![nats.url()]).await;
    let mut r = v5::connect(b.addr, "acme", "reader", "r").await;
    r.subscribe("m/acme/c/telemetry/+", v5::QoS::AtLeastOnce)
        .await;
    nats.wait_subjects("pod-b", &["m.acme.c.telemetry.*"]).await;
    a.wait_connected(true).await;
    let s = v5::connect(a.addr, "acme", "sensor", "s").await;
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        content_type: Some("application/json".into()),
        response_topic: Some("m/acme/c/commands/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        ..Default::default()
    };
    s.client
        .publish_with_properties(
            "m/acme/c/telemetry/a b",
            v5::QoS::AtLeastOnce,
            false,
            "{\"t\":1}",
            props,
        )
        .await
        .expect("queued");
    let got = r.next_publish(WAIT).await.expect("delivered across pods");
    assert_eq!(&got.topic[..], b"m/acme/c/telemetry/a b");
    let p = got.properties.expect("properties kept");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert!(matches!(p.message_expiry_interval, Some(599 | 600)));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.response_topic.as_deref(), Some("m/acme/c/commands/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(
        p.user_properties[..2],
        [
            ("k".to_owned(), "v1".to_owned()),
            ("k".to_owned(), "v2".to_owned())
        ]
    );
    // The publisher and protocol of the other pod's client travel too.
    assert!(
        p.user_properties
            .contains(&("fleetward-publisher".to_owned(), "thing:sensor".to_owned())),
        "{:?}",
        p.user_properties
    );
    assert!(
        p.user_properties
            .contains(&("fleetward-protocol".to_owned(), "mqtt".to_owned()))
    );
}

#[tokio::test]
async fn a_pod_subscribes_on_nats_only_to_what_its_subscribers_need() {
    let nats = Nats::start().await;
    let a = Pod::start("pod-a", vec![nats.url()]).await;
    let b = Pod::start("pod-b", vec![nats.url()]).await;
    b.wait_connected(true).await;
    a.wait_connected(true).await;
    nats.wait_subjects("pod-b", &[]).await;
    // Nobody on pod-b listens: a publish on pod-a does not reach pod-b at all.
    let sensor = v4::connect(a.addr, "acme", "sensor", "s").await;
    sensor
        .client
        .publish(
            "m/acme/c/telemetry/x",
            v4::QoS::AtLeastOnce,
            false,
            "unheard",
        )
        .await
        .expect("queued");
    tokio::time::sleep(QUIET).await;
    assert_eq!(b.dataplane.metrics().bus_messages().1, 0);

    let mut first = reader(&b, "acme", "r1", "m/acme/c/telemetry/#").await;
    nats.wait_subjects("pod-b", &TELEMETRY).await;
    let second = reader(&b, "acme", "r2", "m/acme/c/telemetry/#").await;
    let narrow = reader(&b, "acme", "r3", "m/acme/c/commands/room/+").await;
    nats.wait_subjects(
        "pod-b",
        &["m.acme.c.commands.room.*", TELEMETRY[0], TELEMETRY[1]],
    )
    .await;
    // The channel subject itself is covered by `#`.
    sensor
        .client
        .publish(
            "m/acme/c/telemetry",
            v4::QoS::AtLeastOnce,
            false,
            "on the channel",
        )
        .await
        .expect("queued");
    let got = first.next_publish(WAIT).await.expect("delivered");
    assert_eq!(&got.payload[..], b"on the channel");

    // Reference-counted: the subjects stay until the last subscriber leaves.
    narrow.client.disconnect().await.expect("queued");
    nats.wait_subjects("pod-b", &TELEMETRY).await;
    first.client.disconnect().await.expect("queued");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(nats.subjects_of("pod-b").await, TELEMETRY);
    second
        .client
        .unsubscribe("m/acme/c/telemetry/#")
        .await
        .expect("queued");
    nats.wait_subjects("pod-b", &[]).await;
}

#[tokio::test]
async fn retained_messages_reach_new_subscribers_on_other_pods() {
    let nats = Nats::start().await;
    let a = Pod::start("pod-a", vec![nats.url()]).await;
    a.wait_connected(true).await;
    let sensor = v4::connect(a.addr, "acme", "sensor", "s").await;
    sensor
        .client
        .publish("m/acme/c/telemetry/state", v4::QoS::AtLeastOnce, true, "on")
        .await
        .expect("queued");
    // A pod started after the publish, and one already running, both serve it.
    let b = Pod::start("pod-b", vec![nats.url()]).await;
    let c = Pod::start("pod-c", vec![nats.url()]).await;
    for pod in [&b, &c] {
        let got = retained_on(pod, "m/acme/c/telemetry/#").await;
        assert_eq!(payloads(&got), ["on"], "on {}", pod.node);
        assert!(got[0].retain);
    }
    // Cleared on pod-b, gone on pod-a and pod-c too.
    let sensor_b = v4::connect(b.addr, "acme", "sensor", "sb").await;
    sensor_b
        .client
        .publish("m/acme/c/telemetry/state", v4::QoS::AtLeastOnce, true, "")
        .await
        .expect("queued");
    for pod in [&a, &c] {
        let until = Instant::now() + WAIT;
        while !retained_once(pod, "m/acme/c/telemetry/#", 0)
            .await
            .is_empty()
        {
            assert!(Instant::now() < until, "still retained on {}", pod.node);
        }
    }
    // The other tenant's channel of the same name never had it.
    let got = retained_once(&c, "m/globex/c/telemetry/#", 0).await;
    assert!(got.is_empty());
}

/// What a fresh subscriber on `pod` gets right after subscribing.
async fn retained_once(pod: &Pod, filter: &str, n: u32) -> Vec<rumqttc::Publish> {
    let tenant = filter.split('/').nth(1).unwrap_or_default().to_owned();
    let mut r = reader(pod, &tenant, &format!("retained-{n}"), filter).await;
    drain(&mut r, Duration::from_millis(300)).await
}

/// The same, retried until something arrives or 5 s pass (the bucket's watch is
/// asynchronous).
async fn retained_on(pod: &Pod, filter: &str) -> Vec<rumqttc::Publish> {
    let until = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let got = retained_once(pod, filter, n).await;
        if !got.is_empty() || Instant::now() > until {
            return got;
        }
    }
}

#[tokio::test]
async fn a_channel_created_again_loses_its_retained_messages_on_every_pod() {
    // acme's `telemetry` under `uid`, at `version`.
    let under = |uid: &str, version: u64| {
        let mut r = common::resources();
        for c in &mut r.channels {
            if c.tenant == "acme" && c.name == "telemetry" {
                c.uid = uid.into();
            }
        }
        common::snapshot(version, r)
    };
    let nats = Nats::start().await;
    let a = Pod::start("pod-a", vec![nats.url()]).await;
    let b = Pod::start("pod-b", vec![nats.url()]).await;
    for pod in [&a, &b] {
        pod.wait_connected(true).await;
        pod.policy.send_replace(under("c1", 2));
    }
    let sensor = v4::connect(a.addr, "acme", "sensor", "s").await;
    sensor.retain("m/acme/c/telemetry/state", "old").await;
    let got = retained_on(&b, "m/acme/c/telemetry/#").await;
    assert_eq!(payloads(&got), ["old"], "mirrored on pod-b");
    // Let the bucket's echo of its own write reach pod-a too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Deleted and created again where neither pod applied a snapshot without it: pod-b's
    // mirrored copy knows no uid, pod-a's does, and pod-a's purge clears the bucket.
    for pod in [&a, &b] {
        pod.policy.send_replace(under("c2", 3));
    }
    for pod in [&a, &b] {
        let until = Instant::now() + WAIT;
        while !retained_once(pod, "m/acme/c/telemetry/#", 0)
            .await
            .is_empty()
        {
            assert!(Instant::now() < until, "still retained on {}", pod.node);
        }
    }
}

#[tokio::test]
async fn tenants_with_the_same_names_stay_apart_across_pods() {
    let nats = Nats::start().await;
    let a = Pod::start("pod-a", vec![nats.url()]).await;
    let b = Pod::start("pod-b", vec![nats.url()]).await;
    a.wait_connected(true).await;
    let mut acme = reader(&b, "acme", "r", "m/acme/c/telemetry/#").await;
    let mut globex = reader(&b, "globex", "r", "m/globex/c/telemetry/#").await;
    nats.wait_subjects(
        "pod-b",
        &[
            TELEMETRY[0],
            TELEMETRY[1],
            "m.globex.c.telemetry",
            "m.globex.c.telemetry.>",
        ],
    )
    .await;
    for tenant in ["acme", "globex"] {
        let s = v4::connect(a.addr, tenant, "sensor", "s").await;
        s.client
            .publish(
                format!("m/{tenant}/c/telemetry/x"),
                v4::QoS::AtLeastOnce,
                false,
                tenant,
            )
            .await
            .expect("queued");
    }
    assert_eq!(payloads(&drain(&mut acme, QUIET).await), ["acme"]);
    assert_eq!(payloads(&drain(&mut globex, QUIET).await), ["globex"]);
}

#[tokio::test]
async fn nats_killed_and_restarted_mid_stream() {
    let mut nats = Nats::start().await;
    let a = Pod::start("pod-a", vec![nats.url()]).await;
    let b = Pod::start("pod-b", vec![nats.url()]).await;
    a.wait_connected(true).await;
    b.wait_connected(true).await;
    let mut local = reader(&a, "acme", "local", "m/acme/c/telemetry/#").await;
    let mut remote = reader(&b, "acme", "remote", "m/acme/c/telemetry/#").await;
    nats.wait_subjects("pod-b", &TELEMETRY).await;

    let sensor = v4::connect(a.addr, "acme", "sensor", "s").await;
    let mut next = 0u32;
    let publish = |i: u32| {
        let c = sensor.client.clone();
        async move {
            c.publish(
                "m/acme/c/telemetry/seq",
                v4::QoS::AtLeastOnce,
                false,
                i.to_string(),
            )
            .await
            .expect("queued");
        }
    };
    for _ in 0..50 {
        publish(next).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nats.kill();
    a.wait_connected(false).await;
    // The outage shows in the metrics.
    assert!(a.dataplane.metrics().bus_disconnects() >= 1);
    // Local delivery goes on while NATS is away.
    for _ in 0..50 {
        publish(next).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nats.restart().await;
    a.wait_connected(true).await;
    b.wait_connected(true).await;
    nats.wait_subjects("pod-b", &TELEMETRY).await;
    let resumed_from = next;
    for _ in 0..50 {
        publish(next).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let numbers = |got: Vec<rumqttc::Publish>| -> Vec<u32> {
        got.iter()
            .map(|p| {
                String::from_utf8_lossy(&p.payload)
                    .parse()
                    .expect("a number")
            })
            .collect()
    };
    let local = numbers(drain(&mut local, Duration::from_secs(2)).await);
    assert_eq!(
        local,
        (0..next).collect::<Vec<_>>(),
        "local delivery lost nothing"
    );
    let remote = numbers(drain(&mut remote, Duration::from_secs(2)).await);
    // Never a duplicate, never out of order.
    assert!(remote.windows(2).all(|w| w[0] < w[1]), "{remote:?}");
    // Everything before the kill and everything after the reconnect arrived; only what was
    // published during the outage may be missing, and each such loss is counted.
    assert!(
        remote.starts_with(&(0..50).collect::<Vec<_>>()),
        "{remote:?}"
    );
    assert!(
        remote.ends_with(&(resumed_from..next).collect::<Vec<_>>()),
        "{remote:?}"
    );
    let lost = u64::from(next) - remote.len() as u64;
    let counted = a.dataplane.metrics().bus_drops("disconnected")
        + a.dataplane.metrics().bus_drops("publish_failed");
    assert!(
        lost <= 50 && counted + 50 >= lost,
        "lost {lost}, counted {counted}"
    );
    let text = reqwest_metrics(&a).await;
    assert!(text.contains("fleetward_bus_connected 1"), "{text}");
    assert!(text.contains("fleetward_bus_disconnects_total 1"), "{text}");
}

pub(crate) async fn reqwest_metrics(pod: &Pod) -> String {
    admin_get(pod, "/metrics").await
}

/// The whole answer (status line included) to a GET on the pod's admin listener.
async fn admin_get(pod: &Pod, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = pod.dataplane.admin_addr.expect("admin listener");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("sent");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn a_pod_joins_nats_before_it_serves_then_serves_locally_while_nats_is_unreachable() {
    let mut nats = Nats::start().await;
    let url = nats.url();
    nats.kill();
    let a = Pod::start("pod-a", vec![url]).await;
    // Until the bus has joined NATS once, the pod does not serve (`fleetward dataplane`'s
    // readiness and its listeners wait for it: tests/it/drain.rs in the root crate).
    assert!(!a.dataplane.metrics().bus_is_connected());
    nats.restart().await;
    a.wait_connected(true).await;
    // Joined (ready) once the pod has had an answer from NATS, not at the connect event.
    let until = std::time::Instant::now() + WAIT;
    while !admin_get(&a, "/readyz").await.starts_with("HTTP/1.0 200") {
        assert!(
            std::time::Instant::now() < until,
            "the pod never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // NATS goes away after the join: local clients are still served.
    nats.kill();
    a.wait_connected(false).await;
    let mut r = reader(&a, "acme", "r", "m/acme/c/telemetry/#").await;
    let s = v4::connect(a.addr, "acme", "sensor", "s").await;
    s.client
        .publish("m/acme/c/telemetry/x", v4::QoS::AtLeastOnce, false, "local")
        .await
        .expect("queued");
    assert_eq!(payloads(&drain(&mut r, QUIET).await), ["local"]);
    assert!(a.dataplane.metrics().bus_drops("disconnected") >= 1);
    // When NATS comes back, the pod joins the bus again on its own.
    nats.restart().await;
    a.wait_connected(true).await;
    nats.wait_subjects("pod-a", &TELEMETRY).await;
}

#[tokio::test]
async fn a_bus_without_servers_is_refused() {
    let (_tx, rx) = tokio::sync::watch::channel(common::snapshot(1, common::resources()));
    let err = fleetward_dataplane::Dataplane::new(rx)
        .mqtt_listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .nats(Some(fleetward_dataplane::bus::NatsConfig::new(
            Vec::new(),
            "pod-a",
        )))
        .start()
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("--nats needs at least one server URL"));
}
