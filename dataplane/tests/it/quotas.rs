//! Sizes cover whole messages (properties and wills included), the user-property cap, will
//! delays, per-tenant retained quotas, the per-session subscription cap, and retained messages
//! leaving with their channel or tenant.

use crate::adapters;
use crate::bus_support;
use crate::common;

use std::time::{Duration, Instant};

use adapters::{Adapters, Frame, WsAuth, curl, next_frame, send_json, thing_auth, ws_connect};
use common::{Fixture, key, raw, resources, v4, v5};
use fleetward_dataplane::MqttConfig;
use fleetward_policy::Resources;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties, PubAckReason, PublishProperties};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(500);

fn with_limits(f: impl Fn(&mut fleetward_policy::TenantLimits)) -> Resources {
    let mut r = resources();
    for t in r.tenants.iter_mut().filter(|t| t.name == "acme") {
        f(&mut t.limits);
    }
    r
}

fn user_props(n: usize, value_len: usize) -> PublishProperties {
    PublishProperties {
        user_properties: (0..n)
            .map(|i| (format!("k{i}"), "v".repeat(value_len)))
            .collect(),
        ..Default::default()
    }
}

/// The next PUBACK's reason code.
/// The reason code of the next PUBACK.
pub(crate) async fn puback(c: &mut v5::Client) -> PubAckReason {
    loop {
        match c.next(WAIT).await {
            Some(Ok(v5::Packet::PubAck(a))) => return a.reason,
            Some(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    }
}

/// Whether a new subscriber to acme's telemetry is sent any retained message.
async fn retained_seen(addr: std::net::SocketAddr, tenant: &str, id: &str) -> Option<Vec<u8>> {
    let mut r = v5::connect(addr, tenant, "reader", id).await;
    r.subscribe(&format!("m/{tenant}/c/telemetry/#"), v5::QoS::AtMostOnce)
        .await;
    r.next_publish(QUIET).await.map(|p| p.payload.to_vec())
}

#[tokio::test]
async fn properties_count_towards_the_message_size() {
    let mut fx = Fixture::start().await;
    fx.apply(with_limits(|l| l.max_message_size = Some(100)));
    let mut reader = v5::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtMostOnce)
        .await;

    // A 4-byte payload with 200 bytes of user properties: over, and neither retained nor
    // delivered.
    let mut big = v5::connect(fx.addr, "acme", "sensor", "big").await;
    big.client
        .publish_with_properties(
            "m/acme/c/telemetry/x",
            v5::QoS::AtLeastOnce,
            true,
            "tiny",
            user_props(1, 200),
        )
        .await
        .expect("queued");
    let e = big.closed_within(WAIT).await.expect("disconnected");
    assert!(e.contains("PacketTooLarge"), "{e}");
    // Correlation data counts too.
    let mut corr = v5::connect(fx.addr, "acme", "sensor", "corr").await;
    let props = PublishProperties {
        correlation_data: Some(vec![0u8; 200].into()),
        ..Default::default()
    };
    corr.client
        .publish_with_properties(
            "m/acme/c/telemetry/y",
            v5::QoS::AtLeastOnce,
            true,
            "tiny",
            props,
        )
        .await
        .expect("queued");
    let e = corr.closed_within(WAIT).await.expect("disconnected");
    assert!(e.contains("PacketTooLarge"), "{e}");
    assert!(reader.next_publish(QUIET).await.is_none());
    assert_eq!(retained_seen(fx.addr, "acme", "late").await, None);
    assert_eq!(fx.dataplane.metrics().refusals("limit", "message_size"), 2);

    // Within: 4 + 2 + 90 bytes.
    let mut fine = v5::connect(fx.addr, "acme", "sensor", "fine").await;
    fine.client
        .publish_with_properties(
            "m/acme/c/telemetry/z",
            v5::QoS::AtLeastOnce,
            false,
            "tiny",
            user_props(1, 90),
        )
        .await
        .expect("queued");
    assert_eq!(puback(&mut fine).await, PubAckReason::Success);
    assert!(reader.next_publish(WAIT).await.is_some());
}

#[tokio::test]
async fn too_many_user_properties_end_the_connection_with_0x95() {
    let fx = Fixture::start_with(MqttConfig {
        max_user_properties: 4,
        ..MqttConfig::default()
    })
    .await;
    let mut ok = v5::connect(fx.addr, "acme", "sensor", "ok").await;
    ok.client
        .publish_with_properties(
            "m/acme/c/telemetry/x",
            v5::QoS::AtLeastOnce,
            false,
            "x",
            user_props(4, 1),
        )
        .await
        .expect("queued");
    assert_eq!(puback(&mut ok).await, PubAckReason::Success);
    let mut many = v5::connect(fx.addr, "acme", "sensor", "many").await;
    many.client
        .publish_with_properties(
            "m/acme/c/telemetry/x",
            v5::QoS::AtLeastOnce,
            false,
            "x",
            user_props(5, 1),
        )
        .await
        .expect("queued");
    let e = many.closed_within(WAIT).await.expect("disconnected");
    assert!(e.contains("PacketTooLarge"), "{e}");
    assert_eq!(
        fx.dataplane.metrics().refusals("limit", "user_properties"),
        1
    );
}

fn will_options(
    addr: std::net::SocketAddr,
    id: &str,
    payload: Vec<u8>,
    props: LastWillProperties,
) -> v5::MqttOptions {
    let mut o = v5::options(addr, "acme", "sensor", id);
    o.set_last_will(LastWill::new(
        "m/acme/c/telemetry/will",
        payload,
        v5::QoS::AtMostOnce,
        false,
        Some(props),
    ));
    o
}

fn will_props(delay: Option<u32>, user_properties: Vec<(String, String)>) -> LastWillProperties {
    LastWillProperties {
        delay_interval: delay,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties,
    }
}

#[tokio::test]
async fn a_will_is_checked_against_the_size_limits_at_connect() {
    let fx = Fixture::start_with(MqttConfig {
        max_user_properties: 4,
        ..MqttConfig::default()
    })
    .await;
    let mut r = with_limits(|l| l.max_message_size = Some(1000));
    for c in r.channels.iter_mut().filter(|c| c.tenant == "acme") {
        c.max_message_size = Some(100);
    }
    let mut fx = fx;
    fx.apply(r);
    let refused = |id: &'static str, payload: usize, props| {
        let o = will_options(fx.addr, id, vec![b'w'; payload], props);
        async move { v5::connect_with(o).await.err() }
    };
    // Over the channel's 100 bytes: the payload, or a small payload with properties.
    assert_eq!(
        refused("a", 101, will_props(None, Vec::new()))
            .await
            .as_deref(),
        Some("PacketTooLarge")
    );
    let props = will_props(None, vec![("k".into(), "v".repeat(100))]);
    assert_eq!(
        refused("b", 4, props).await.as_deref(),
        Some("PacketTooLarge")
    );
    let props = will_props(None, (0..5).map(|i| (format!("{i}"), "v".into())).collect());
    assert_eq!(
        refused("c", 4, props).await.as_deref(),
        Some("PacketTooLarge")
    );
    // Within.
    assert_eq!(refused("d", 100, will_props(None, Vec::new())).await, None);
    // v3 has no "too large": 0x05.
    let mut s = TcpStream::connect(fx.addr).await.expect("connects");
    let big = "w".repeat(101);
    s.write_all(&raw::connect(
        "v3",
        true,
        30,
        "acme/sensor",
        &key("acme", "sensor"),
        Some(("m/acme/c/telemetry/will", &big)),
    ))
    .await
    .expect("writes");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.expect("CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 5]);
    let m = fx.dataplane.metrics();
    assert_eq!(m.refusals("connect", "will_message_size"), 3);
    assert_eq!(m.refusals("connect", "will_user_properties"), 1);
}

async fn pending_wills(fx: &Fixture) -> u64 {
    let addr = fx.dataplane.admin_addr.expect("admin listener");
    let mut s = TcpStream::connect(addr).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("sent");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.lines()
        .find_map(|l| l.strip_prefix("fleetward_mqtt_pending_wills "))
        .and_then(|n| n.parse().ok())
        .expect("the pending wills gauge")
}

#[tokio::test]
async fn a_will_delay_is_capped_by_the_session_expiry_and_the_pod_maximum() {
    let fx = Fixture::start_with(MqttConfig {
        max_will_delay: Duration::from_secs(1),
        ..MqttConfig::default()
    })
    .await;
    let mut reader = v4::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtMostOnce)
        .await;

    // No session expiry: the session ends with the socket, and the will goes then, whatever
    // its delay.
    let o = will_options(
        fx.addr,
        "forever",
        b"gone".to_vec(),
        will_props(Some(u32::MAX), Vec::new()),
    );
    let c = v5::connect_with(o).await.expect("connects");
    c.task.abort();
    let p = reader.next_publish(WAIT).await.expect("the will, at once");
    assert_eq!(&p.payload[..], b"gone");
    assert_eq!(pending_wills(&fx).await, 0);

    // A long session: the pod's maximum (1 s here) caps the delay.
    let mut o = will_options(
        fx.addr,
        "long",
        b"later".to_vec(),
        will_props(Some(u32::MAX), Vec::new()),
    );
    o.set_session_expiry_interval(Some(3600));
    let c = v5::connect_with(o).await.expect("connects");
    c.task.abort();
    let gone = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pending_wills(&fx).await, 1);
    let p = reader.next_publish(WAIT).await.expect("the will, capped");
    assert_eq!(&p.payload[..], b"later");
    assert!(gone.elapsed() >= Duration::from_millis(900));
    assert_eq!(pending_wills(&fx).await, 0);
}

#[tokio::test]
async fn retained_messages_have_a_quota_per_tenant() {
    let mut fx = Fixture::start().await;
    fx.apply(with_limits(|l| {
        l.max_retained_messages = Some(2);
        l.max_retained_bytes = Some(1000);
    }));
    let mut c = v5::connect(fx.addr, "acme", "sensor", "s").await;
    let sender = c.client.clone();
    let retain = |topic: &'static str, payload: Vec<u8>, qos| {
        let client = sender.clone();
        async move {
            client
                .publish(format!("m/acme/c/telemetry/{topic}"), qos, true, payload)
                .await
                .expect("queued");
        }
    };
    retain("a", b"1".to_vec(), v5::QoS::AtLeastOnce).await;
    assert_eq!(puback(&mut c).await, PubAckReason::Success);
    retain("b", b"2".to_vec(), v5::QoS::AtLeastOnce).await;
    assert_eq!(puback(&mut c).await, PubAckReason::Success);
    retain("c", b"3".to_vec(), v5::QoS::AtLeastOnce).await;
    assert_eq!(puback(&mut c).await, PubAckReason::QuotaExceeded);
    // Replacing one is allowed; clearing one frees its place.
    retain("a", b"1+".to_vec(), v5::QoS::AtLeastOnce).await;
    assert_eq!(puback(&mut c).await, PubAckReason::Success);
    retain("b", Vec::new(), v5::QoS::AtLeastOnce).await;
    assert_eq!(puback(&mut c).await, PubAckReason::Success);
    retain("c", b"3".to_vec(), v5::QoS::AtLeastOnce).await;
    assert_eq!(puback(&mut c).await, PubAckReason::Success);
    // Bytes: a new topic is refused on count first; a bigger replacement on bytes.
    retain("a", vec![b'x'; 2000], v5::QoS::AtLeastOnce).await;
    assert_eq!(puback(&mut c).await, PubAckReason::QuotaExceeded);
    // QoS 0: dropped (not delivered to anyone), and counted.
    let mut reader = v5::connect(fx.addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/d", v5::QoS::AtMostOnce)
        .await;
    retain("d", b"4".to_vec(), v5::QoS::AtMostOnce).await;
    assert!(reader.next_publish(QUIET).await.is_none());
    let m = fx.dataplane.metrics();
    assert_eq!(m.refusals("limit", "retained_messages"), 2);
    assert_eq!(m.refusals("limit", "retained_bytes"), 1);
    // The connection went on through all of it.
    retain("a", b"1".to_vec(), v5::QoS::AtLeastOnce).await;
    assert_eq!(puback(&mut c).await, PubAckReason::Success);

    // v3 has no code for it: the connection is closed.
    let mut old = v4::connect(fx.addr, "acme", "sensor", "old").await;
    old.client
        .publish("m/acme/c/telemetry/e", v4::QoS::AtLeastOnce, true, "5")
        .await
        .expect("queued");
    assert!(old.closed_within(WAIT).await.is_some());
    // Another tenant has its own quota.
    let mut other = v5::connect(fx.addr, "globex", "sensor", "g").await;
    for t in ["a", "b", "c"] {
        other
            .client
            .publish(
                format!("m/globex/c/telemetry/{t}"),
                v5::QoS::AtLeastOnce,
                true,
                "g",
            )
            .await
            .expect("queued");
        assert_eq!(puback(&mut other).await, PubAckReason::Success);
    }
}

#[tokio::test]
async fn subscriptions_per_session_are_capped() {
    let fx = Fixture::start_with(MqttConfig {
        max_subscriptions_per_session: 2,
        ..MqttConfig::default()
    })
    .await;
    let mut c = v5::connect(fx.addr, "acme", "reader", "r5").await;
    for f in ["a", "b"] {
        let codes = c
            .subscribe(&format!("m/acme/c/telemetry/{f}"), v5::QoS::AtMostOnce)
            .await;
        assert_eq!(
            codes,
            vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
        );
    }
    let codes = c
        .subscribe("m/acme/c/telemetry/c", v5::QoS::AtMostOnce)
        .await;
    assert_eq!(codes, vec![v5::SubscribeReasonCode::QuotaExceeded]);
    // Subscribing again to a filter it holds replaces it: not a new one.
    let codes = c
        .subscribe("m/acme/c/telemetry/a", v5::QoS::AtLeastOnce)
        .await;
    assert_eq!(
        codes,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    let mut old = v4::connect(fx.addr, "acme", "reader", "r4").await;
    for f in ["a", "b"] {
        old.subscribe(&format!("m/acme/c/telemetry/{f}"), v4::QoS::AtMostOnce)
            .await;
    }
    let codes = old
        .subscribe("m/acme/c/telemetry/c", v4::QoS::AtMostOnce)
        .await;
    assert_eq!(codes, vec![v4::SubscribeReasonCode::Failure]);
    assert_eq!(
        fx.dataplane
            .metrics()
            .refusals("limit", "subscriptions_per_session"),
        2
    );
}

async fn publish_retained(addr: std::net::SocketAddr, tenant: &str, payload: &str) {
    let mut c = v5::connect(addr, tenant, "sensor", "retainer").await;
    c.client
        .publish(
            format!("m/{tenant}/c/telemetry/state"),
            v5::QoS::AtLeastOnce,
            true,
            payload.to_owned(),
        )
        .await
        .expect("queued");
    assert_eq!(puback(&mut c).await, PubAckReason::Success);
}

/// Waits until a new subscriber of `tenant`'s telemetry sees `expected` as its retained
/// message (the purge follows the snapshot on its own task).
async fn wait_retained(fx: &Fixture, tenant: &str, expected: Option<&[u8]>) {
    let until = Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let seen = retained_seen(fx.addr, tenant, &format!("probe{n}")).await;
        if seen.as_deref() == expected {
            return;
        }
        assert!(
            Instant::now() < until,
            "{tenant}: {seen:?}, not {expected:?}"
        );
    }
}

#[tokio::test]
async fn retained_messages_go_with_their_channel_and_tenant() {
    let mut fx = Fixture::start().await;
    publish_retained(fx.addr, "acme", "old").await;
    publish_retained(fx.addr, "globex", "other").await;
    wait_retained(&fx, "acme", Some(b"old")).await;

    // The channel is deleted, then created again under the same name: it starts empty.
    let mut without = resources();
    without
        .channels
        .retain(|c| !(c.tenant == "acme" && c.name == "telemetry"));
    without.grants.retain(|g| g.channel != "telemetry");
    fx.apply(without);
    tokio::time::sleep(Duration::from_millis(100)).await;
    fx.apply(resources());
    wait_retained(&fx, "acme", None).await;
    // The other tenant's channel of the same name keeps its message.
    wait_retained(&fx, "globex", Some(b"other")).await;

    // The tenant is deleted and created again: the same.
    publish_retained(fx.addr, "acme", "old again").await;
    wait_retained(&fx, "acme", Some(b"old again")).await;
    let mut without = resources();
    without.tenants.retain(|t| t.name != "acme");
    without.things.retain(|t| t.tenant != "acme");
    without.channels.retain(|c| c.tenant != "acme");
    without.grants.retain(|g| g.tenant != "acme");
    fx.apply(without);
    tokio::time::sleep(Duration::from_millis(100)).await;
    fx.apply(resources());
    wait_retained(&fx, "acme", None).await;
    wait_retained(&fx, "globex", Some(b"other")).await;
}

#[tokio::test]
async fn http_and_websocket_publishes_answer_quotas_and_sizes() {
    let mut fx = Adapters::start().await;
    let mut r = with_limits(|l| l.max_retained_messages = Some(1));
    for c in r.channels.iter_mut().filter(|c| c.tenant == "acme") {
        c.max_message_size = Some(64);
    }
    fx.apply(r);
    let post = |url: String, body: &'static str| async move {
        curl(&[
            "-H",
            &thing_auth("acme", "sensor"),
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            body,
            &url,
        ])
        .await
    };
    let ok = post(fx.url("/m/acme/c/telemetry/a?retain=true"), "1").await;
    assert_eq!(ok.status, 202, "{ok:?}");
    let r = post(fx.url("/m/acme/c/telemetry/b?retain=true"), "2").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (429, Some("quota_exceeded"))
    );
    // The content type counts towards the size: 60 bytes and `text/plain` are over 64.
    let r = post(
        fx.url("/m/acme/c/telemetry/c"),
        "012345678901234567890123456789012345678901234567890123456789",
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");

    // A WebSocket stream is closed: 1008 for a quota, 1009 for a size.
    let open = || async {
        ws_connect(
            &fx.ws_url("/m/acme/c/telemetry/ws"),
            // `mounted` may publish and subscribe on telemetry.
            WsAuth::Basic("acme", "mounted"),
        )
        .await
        .expect("accepted")
        .0
    };
    let mut ws = open().await;
    send_json(&mut ws, json!({"payload": "x", "retain": true})).await;
    assert!(
        matches!(next_frame(&mut ws, WAIT).await, Frame::Json(v) if v["error"] == "quota_exceeded")
    );
    match next_frame(&mut ws, WAIT).await {
        Frame::Closed(Some((code, _))) => assert_eq!(code, 1008),
        other => panic!("expected a close, got {other:?}"),
    }
    let mut ws = open().await;
    send_json(&mut ws, json!({"payload": "y".repeat(64)})).await;
    assert!(matches!(next_frame(&mut ws, WAIT).await, Frame::Json(v) if v["error"] == "too_large"));
    match next_frame(&mut ws, WAIT).await {
        Frame::Closed(Some((code, _))) => assert_eq!(code, 1009),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_deleted_channel_leaves_the_shared_retained_bucket_too() {
    let nats = bus_support::Nats::start().await;
    let a = bus_support::Pod::start("pod-a", vec![nats.url()]).await;
    a.wait_connected(true).await;
    publish_retained(a.addr, "acme", "old").await;
    // pod-b mirrors the bucket; it will never apply a snapshot without the channel.
    let b = bus_support::Pod::start("pod-b", vec![nats.url()]).await;
    b.wait_connected(true).await;
    let until = Instant::now() + WAIT;
    let mut n = 0;
    while retained_seen(b.addr, "acme", &format!("b{n}"))
        .await
        .as_deref()
        != Some(b"old")
    {
        n += 1;
        assert!(Instant::now() < until, "pod-b never mirrored the message");
    }

    // pod-a applies the deletion, then the re-creation.
    let mut without = resources();
    without
        .channels
        .retain(|c| !(c.tenant == "acme" && c.name == "telemetry"));
    a.policy.send_replace(common::snapshot(2, without));
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.policy.send_replace(common::snapshot(3, resources()));

    // The key is gone from the bucket: pod-b's mirror drops it, and a pod started now never
    // sees it.
    let until = Instant::now() + WAIT;
    while retained_seen(b.addr, "acme", &format!("b{n}"))
        .await
        .is_some()
    {
        n += 1;
        assert!(Instant::now() < until, "still retained on pod-b");
    }
    let c = bus_support::Pod::start("pod-c", vec![nats.url()]).await;
    c.wait_connected(true).await;
    // Give the new pod's watch of the bucket time to deliver what it holds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(retained_seen(c.addr, "acme", "c").await, None);
    assert_eq!(retained_seen(a.addr, "acme", "a").await, None);
}
