//! Limits: per-tenant message size, publish rate and connections, the pod's connection cap,
//! and a client that stops reading.

use crate::common;

use std::time::{Duration, Instant};

use std::net::SocketAddr;

use common::{Fixture, key, raw, resources, v4, v5};
use fleetward_dataplane::{Dataplane, HttpLimits, MqttConfig, RunningDataplane};
use fleetward_policy::Resources;
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
async fn past_the_pod_connection_limit_a_socket_is_closed_at_accept() {
    let fx = Fixture::start_with(MqttConfig {
        max_connections: 2,
        ..MqttConfig::default()
    })
    .await;
    let _a = v5::connect(fx.addr, "acme", "reader", "a").await;
    let _b = v4::connect(fx.addr, "acme", "reader", "b").await;
    // The third socket is closed before its CONNECT is read: no CONNACK, no session.
    let mut c = TcpStream::connect(fx.addr)
        .await
        .expect("the kernel accepts");
    let user = "acme/reader";
    let _ = c
        .write_all(&raw::connect(
            "c",
            true,
            0,
            user,
            &key("acme", "reader"),
            None,
        ))
        .await;
    let (bytes, closed) = raw::read_until_closed(&mut c, WAIT).await;
    assert!(closed, "the socket over the cap is closed");
    assert!(bytes.is_empty(), "and answered nothing: {bytes:?}");
    assert_eq!(fx.dataplane.sockets().0, 2);
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

/// A dataplane with MQTT and HTTP listeners, `max_pending` unauthenticated sockets at most,
/// and the HTTP limits.
async fn gated(
    max_connections: usize,
    max_pending: usize,
    http: HttpLimits,
) -> (
    tokio::sync::watch::Sender<std::sync::Arc<fleetward_policy::Snapshot>>,
    RunningDataplane,
) {
    let (tx, rx) = tokio::sync::watch::channel(common::snapshot(1, resources()));
    let dataplane = Dataplane::new(rx)
        .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .http_listen(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .mqtt_config(MqttConfig {
            max_connections,
            ..MqttConfig::default()
        })
        .max_pending_connections(Some(max_pending))
        .http_limits(http)
        .start()
        .await
        .expect("dataplane starts");
    (tx, dataplane)
}

/// Waits until the dataplane holds `open` sockets.
async fn until_open(dp: &RunningDataplane, open: usize) {
    let until = Instant::now() + WAIT;
    while dp.sockets().0 != open {
        assert!(
            Instant::now() < until,
            "{open} sockets open; now {:?}",
            dp.sockets()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the server closed `s` within `wait` (it sent nothing).
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    raw::read_until_closed(s, wait).await.1
}

#[tokio::test]
async fn the_oldest_pending_socket_is_closed_to_make_room() {
    let (_policy, dp) = gated(100, 3, HttpLimits::default()).await;
    let mut idle = Vec::new();
    for n in 1..=3 {
        idle.push(TcpStream::connect(dp.mqtt_addr).await.expect("connects"));
        until_open(&dp, n).await;
    }
    // A fourth (on another listener: the budget is the pod's) closes the oldest, not itself.
    let mut fourth = TcpStream::connect(dp.http_addr.expect("http"))
        .await
        .expect("connects");
    assert!(
        closed_within(&mut idle[0], WAIT).await,
        "the oldest is closed"
    );
    assert!(!closed_within(&mut idle[1], Duration::from_millis(300)).await);
    assert!(!closed_within(&mut fourth, Duration::from_millis(300)).await);
    assert_eq!(dp.sockets(), (3, 3));

    // A legitimate client still gets in while idle sockets hold the pending budget, and once
    // authenticated it is never the one evicted.
    let mut legit = v5::connect(dp.mqtt_addr, "acme", "sensor", "legit").await;
    let mut flood = Vec::new();
    for _ in 0..6 {
        flood.push(TcpStream::connect(dp.mqtt_addr).await.expect("connects"));
    }
    let until = Instant::now() + WAIT;
    while dp.sockets().1 != 3 || dp.sockets().0 > 4 {
        assert!(
            Instant::now() < until,
            "evictions settle: {:?}",
            dp.sockets()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    legit
        .client
        .publish("m/acme/c/telemetry/x", v5::QoS::AtLeastOnce, false, "hi")
        .await
        .expect("queued");
    assert!(matches!(
        legit.next(WAIT).await,
        Some(Ok(v5::Packet::PubAck(_)))
    ));
}

/// Writes `request` to a new HTTP socket and returns it.
async fn http_socket(addr: SocketAddr, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(request.as_bytes()).await.expect("writes");
    s
}

/// A publish with credentials whose body stops after 10 of its 100 bytes.
fn slow_post() -> String {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("acme/sensor:{}", key("acme", "sensor")));
    format!(
        "POST /m/acme/c/telemetry HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n\
         Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789"
    )
}

fn short_http() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        max_requests: 64,
    }
}

#[tokio::test]
async fn http_headers_bodies_and_idle_keep_alive_are_timed_out() {
    let (_policy, dp) = gated(100, 50, short_http()).await;
    let http = dp.http_addr.expect("http");

    // Headers that never end.
    let mut slow = http_socket(http, "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n").await;
    let (_, closed) = raw::read_until_closed(&mut slow, WAIT).await;
    assert!(closed, "a request whose headers never end is closed");

    // A body that never ends.
    let mut body = http_socket(http, &slow_post()).await;
    let (answer, closed) = raw::read_until_closed(&mut body, WAIT).await;
    assert!(closed, "a request whose body never ends is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    // A kept-alive connection that goes quiet after an answer.
    let mut idle = http_socket(
        http,
        "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let (answer, closed) = raw::read_until_closed(&mut idle, WAIT).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 "),
        "answered first"
    );
    assert!(closed, "then closed once idle");
    until_open(&dp, 0).await;
}

#[tokio::test]
async fn past_the_request_cap_http_answers_503() {
    let limits = HttpLimits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        max_requests: 1,
    };
    let (_policy, dp) = gated(100, 50, limits).await;
    let http = dp.http_addr.expect("http");
    // This request holds the only place while its body does not arrive.
    let _held = http_socket(http, &slow_post()).await;
    let until = Instant::now() + WAIT;
    loop {
        let mut next = http_socket(
            http,
            "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        let packet = tokio::time::timeout(WAIT, async {
            let mut buf = vec![0u8; 2048];
            let n = next.read(&mut buf).await.unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .await
        .unwrap_or_default();
        if packet.starts_with("HTTP/1.1 503") {
            assert!(
                packet.to_ascii_lowercase().contains("retry-after: 1"),
                "{packet}"
            );
            break;
        }
        // The held request may not have reached its handler yet.
        assert!(Instant::now() < until, "never 503: {packet}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The resources, with acme's sensor allowed one connection (its own `maxConnections`).
fn sensor_with_one_connection() -> Resources {
    let mut r = resources();
    for t in r
        .things
        .iter_mut()
        .filter(|t| t.tenant == "acme" && t.name == "sensor")
    {
        t.max_connections = Some(1);
    }
    r
}

#[tokio::test]
async fn a_things_own_connection_limit_answers_quota_exceeded() {
    let mut fx = Fixture::start().await;
    fx.apply(sensor_with_one_connection());
    let first = v5::connect(fx.addr, "acme", "sensor", "a").await;
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
    assert!(
        fx.dataplane
            .metrics()
            .refusals("connect", "thing_max_connections")
            >= 2
    );
    // Another thing of the tenant is not affected, and the place comes back.
    let _reader = v5::connect(fx.addr, "acme", "reader", "r").await;
    first.task.abort();
    let until = Instant::now() + WAIT;
    loop {
        let o = v5::options(fx.addr, "acme", "sensor", "d");
        if v5::connect_with(o).await.is_ok() {
            break;
        }
        assert!(Instant::now() < until, "the thing's place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_back_with_its_own_id_takes_its_place_over_at_the_things_limit() {
    let mut fx = Fixture::start().await;
    fx.apply(sensor_with_one_connection());
    // The old connection is still open (as after a half-open drop): the same client id takes
    // it over, where another id is refused.
    let mut first = v5::connect(fx.addr, "acme", "sensor", "same").await;
    let again = v5::connect_with(v5::options(fx.addr, "acme", "sensor", "same")).await;
    assert!(
        again.is_ok(),
        "a reconnect with its own id was refused at the thing's limit: {:?}",
        again.err()
    );
    assert!(
        first.closed_within(WAIT).await.is_some(),
        "the session taken over is ended"
    );
}

/// The head of the next HTTP answer on `s` (empty if none came within `wait`).
async fn http_head(s: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let until = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(until.into(), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

#[tokio::test]
async fn a_cors_preflight_leaves_its_socket_pending_and_a_publish_does_not() {
    let (_policy, dp) = gated(100, 10, HttpLimits::default()).await;
    let http = dp.http_addr.expect("http");
    let mut s = http_socket(
        http,
        "OPTIONS /m/acme/c/telemetry HTTP/1.1\r\nHost: x\r\n\
         Access-Control-Request-Method: POST\r\n\r\n",
    )
    .await;
    let answer = http_head(&mut s, WAIT).await;
    // Answered 200 (no Origin: nothing to refuse), which for another method would authenticate.
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        dp.sockets(),
        (1, 1),
        "the preflight's socket is still pending"
    );

    // The control: a publish with credentials on a socket authenticates it.
    let mut p = http_socket(
        http,
        &slow_post().replace("Content-Length: 100", "Content-Length: 10"),
    )
    .await;
    let answer = http_head(&mut p, WAIT).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 202"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        dp.sockets(),
        (2, 1),
        "the publish's socket is no longer pending"
    );
}
