//! The TLS listener (driven by mosquitto_sub/mosquitto_pub over TLS) and the admin endpoints.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Fixture, key, resources, snapshot};
use fleetward_dataplane::Dataplane;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin listener");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("writes");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("reads");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let (policy, rx) =
        tokio::sync::watch::channel(std::sync::Arc::new(fleetward_policy::Snapshot::new(0)));
    let dp = Dataplane::new(rx)
        .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .admin_listen(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .start()
        .await
        .expect("starts");
    let admin = dp.admin_addr.expect("admin listener");
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    // No snapshot yet: not ready, and CONNECTs are refused as unavailable.
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no policy snapshot"), "{body}");
    let o = common::v5::options(dp.mqtt_addr, "acme", "reader", "r");
    assert_eq!(
        common::v5::connect_with(o).await.err().as_deref(),
        Some("ServerUnavailable")
    );
    policy.send_replace(snapshot(3, resources()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(http_get(admin, "/readyz").await.0, 200);

    let mut reader = common::v4::connect(dp.mqtt_addr, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", common::v4::QoS::AtMostOnce)
        .await;
    reader.subscribe("#", common::v4::QoS::AtMostOnce).await;
    let sensor = common::v4::connect(dp.mqtt_addr, "acme", "sensor", "s").await;
    for _ in 0..3 {
        sensor
            .client
            .publish(
                "m/acme/c/telemetry/x",
                common::v4::QoS::AtMostOnce,
                false,
                "m",
            )
            .await
            .expect("queued");
        reader
            .next_publish(Duration::from_secs(3))
            .await
            .expect("delivered");
    }
    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("fleetward_mqtt_connections 2\n"), "{text}");
    assert!(
        text.contains("fleetward_mqtt_messages_in_total{tenant=\"acme\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("fleetward_mqtt_messages_out_total{tenant=\"acme\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "fleetward_mqtt_refusals_total{what=\"connect\",reason=\"policy_unavailable\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "fleetward_mqtt_refusals_total{what=\"subscribe\",reason=\"wildcard_in_prefix\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("fleetward_policy_snapshot_version 3\n"),
        "{text}"
    );
    // Three publishes of one topic: one miss, then hits.
    assert!(
        text.contains("fleetward_decision_cache_hits_total 2\n"),
        "{text}"
    );
}

#[tokio::test]
async fn mqtt_over_tls_with_mosquitto_clients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key_file)
        .arg("-out")
        .arg(&cert)
        .output()
        .await
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let fx = Fixture::start().await;
    let (_policy, rx) = (fx.policy.clone(), fx.policy.subscribe());
    let dp = Dataplane::new(rx)
        .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .mqtts_listen(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            cert.clone(),
            key_file.clone(),
        )
        .start()
        .await
        .expect("starts with TLS");
    let port = dp.mqtts_addr.expect("TLS listener").port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "--cafile"])
        .arg(&cert)
        .args(["-u", "acme/reader", "-P", &key("acme", "reader")])
        .args(["-t", "m/acme/c/telemetry/#", "-C", "1", "-W", "5", "-v"])
        .kill_on_drop(true)
        .output();
    let publish = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "--cafile"])
            .arg(&cert)
            .args(["-u", "acme/sensor", "-P", &key("acme", "sensor")])
            .args(["-t", "m/acme/c/telemetry/tls", "-m", "secret", "-q", "1"])
            .output()
            .await
            .expect("mosquitto_pub runs")
    };
    let (sub, publish) = tokio::join!(sub, publish);
    let sub = sub.expect("mosquitto_sub runs");
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&sub.stdout),
        "m/acme/c/telemetry/tls secret\n",
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );
    // Plain MQTT on the TLS port fails the handshake and costs only that connection.
    let mut s = TcpStream::connect(dp.mqtts_addr.expect("TLS"))
        .await
        .expect("connects");
    s.write_all(&[0x10, 0x00]).await.expect("writes");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(_)) | Ok(Err(_))),
        "TLS port kept a plain connection open"
    );
}
