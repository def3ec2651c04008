//! Message history in `fleetward start`, as a user runs it: a channel with `spec.history`,
//! messages published with mosquitto_pub (MQTT), curl (HTTP) and Node's `ws` (a WebSocket
//! stream), read back with curl: filters, pages and cursors, both orders, SenML, a subtopic
//! deny that a wider filter cannot read around, every refusal, a restart that keeps what was
//! stored, and a deleted and re-created channel that starts empty.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Start, StartOptions, tempdir};

const SENSOR_KEY: &str = "Hq3Vb8Xn2Lk5Tr7Wy1Zp4Md6Fs9Gc0Je2Ua5Oi8Ek1A";
const DASHBOARD_KEY: &str = "Rt6Yu1Io3Pa8Sd5Fg2Hj7Kl0Zx4Cv9Bn6Mq3We8Rt1A";
const PARTIAL_KEY: &str = "Mn2Bv5Cx8Zl1Kj4Hg7Fd0Sa3Qw6Er9Ty2Ui5Op8As1A";
const NOSY_KEY: &str = "Pl9Ok8Ij7Uh6Yg5Tf4Rd3Es2Wa1Qz0Xs9Cd8Vf7Bg6A";

const TENANTS: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Tenant
metadata: {name: plant}
spec: {}
---
apiVersion: fleetward.io/v1alpha1
kind: Tenant
metadata: {name: other}
spec: {}
---
apiVersion: v1
kind: Secret
metadata: {name: sensor-credentials, namespace: plant}
stringData: {key: SENSOR_KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: dashboard-credentials, namespace: plant}
stringData: {key: DASHBOARD_KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: partial-credentials, namespace: plant}
stringData: {key: PARTIAL_KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: nosy-credentials, namespace: other}
stringData: {key: NOSY_KEY}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: sensor, namespace: plant}
spec: {}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: dashboard, namespace: plant}
spec: {}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: partial, namespace: plant}
spec: {}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: nosy, namespace: other}
spec: {}
---
apiVersion: fleetward.io/v1alpha1
kind: Channel
metadata: {name: plain, namespace: plant}
spec: {}
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: sensor-readings, namespace: plant}
spec:
  subject: {kind: Thing, name: sensor}
  channel: readings
  actions: [publish, subscribe]
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: dashboard-readings, namespace: plant}
spec:
  subject: {kind: Thing, name: dashboard}
  channel: readings
  actions: [subscribe]
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: dashboard-plain, namespace: plant}
spec:
  subject: {kind: Thing, name: dashboard}
  channel: plain
  actions: [subscribe]
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: partial-readings, namespace: plant}
spec:
  subject: {kind: Thing, name: partial}
  channel: readings
  actions: [subscribe]
  subtopics: {deny: ["secret/#"]}
"#;

/// The channel with history, in a file of its own so a test can delete and re-create it.
const READINGS: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Channel
metadata: {name: readings, namespace: plant}
spec:
  history: {retention: 7d}
"#;

fn manifests(root: &Path) -> std::path::PathBuf {
    let dir = root.join("manifests");
    std::fs::create_dir_all(&dir).expect("dir");
    let tenants = TENANTS
        .replace("SENSOR_KEY", SENSOR_KEY)
        .replace("DASHBOARD_KEY", DASHBOARD_KEY)
        .replace("PARTIAL_KEY", PARTIAL_KEY)
        .replace("NOSY_KEY", NOSY_KEY);
    std::fs::write(dir.join("tenants.yaml"), tenants).expect("write");
    std::fs::write(dir.join("readings.yaml"), READINGS).expect("write");
    dir
}

fn start(root: &Path) -> Start {
    StartOptions::new(&root.join("manifests"), &root.join("state"))
        .args(["--history-sweep-secs=1"])
        .run()
}

/// curl GET of `path` with `Authorization: Thing <key>` (none for an empty key) and extra
/// headers: the status, the headers and the body.
fn get(http: SocketAddr, path: &str, key: &str, extra: &[&str]) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-D", "-", "--max-time", "10"]);
    if !key.is_empty() {
        cmd.args(["-H", &format!("Authorization: Thing {key}")]);
    }
    for h in extra {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("http://{http}{path}"))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// The payloads of a page read as `key`, and its next cursor.
fn page(http: SocketAddr, query: &str, key: &str) -> (Vec<String>, Option<String>, Value) {
    let (status, _, body) = get(
        http,
        &format!("/m/plant/c/readings/messages{query}"),
        key,
        &[],
    );
    assert_eq!(status, 200, "{query}: {body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let payloads = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["payload"].as_str().unwrap_or_default().to_owned())
        .collect();
    let next = v["next_cursor"].as_str().map(str::to_owned);
    (payloads, next, v)
}

/// Publishes the four messages: MQTT, HTTP, WebSocket, and one on the denied subtopic.
fn publish_all(start: &Start) {
    let port = start.mqtt.port().to_string();
    let mqtt = |topic: &str, message: &str| {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1"])
            .args([
                "-u",
                "plant/sensor",
                "-P",
                SENSOR_KEY,
                "-t",
                topic,
                "-m",
                message,
            ])
            .output()
            .expect("mosquitto_pub is installed");
        assert!(out.status.success(), "{out:?}");
    };
    mqtt("m/plant/c/readings/room1/temp", "m1");
    let http = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", &format!("Authorization: Thing {SENSOR_KEY}")])
        .args(["-H", "Content-Type: application/senml+json"])
        .args([
            "--data-binary",
            r#"[{"bn":"room2:","n":"temp","v":21.5,"t":-1}]"#,
        ])
        .arg(format!(
            "http://{}/m/plant/c/readings/room2/temp",
            start.http
        ))
        .output()
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&http.stdout), "202");
    let modules = std::env::var("FLEETWARD_BROWSER_MODULES")
        .expect("FLEETWARD_BROWSER_MODULES (scripts/install-tools.sh) names mqtt.js and ws");
    let script = format!(
        "const WebSocket = require('ws');
         const ws = new WebSocket('ws://{}/m/plant/c/readings/room1/hum',
           {{headers: {{Authorization: 'Thing {SENSOR_KEY}'}}}});
         ws.on('open', () => ws.send(JSON.stringify({{payload: 'w1', qos: 1}})));
         ws.on('message', m => {{ const f = JSON.parse(m);
           if (f.type !== 'message') {{ console.log(f.type); process.exit(0); }} }});
         setTimeout(() => process.exit(1), 10000);",
        start.http
    );
    let ws = Command::new("node")
        .env("NODE_PATH", modules)
        .args(["-e", &script])
        .output()
        .expect("node is installed");
    assert_eq!(
        String::from_utf8_lossy(&ws.stdout).trim(),
        "published",
        "{ws:?}"
    );
    mqtt("m/plant/c/readings/secret/code", "s1");
}

/// Waits until the dashboard reads `n` messages (the writer batches for up to 20 ms).
fn wait_for(http: SocketAddr, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (payloads, _, _) = page(http, "", DASHBOARD_KEY);
        if payloads.len() >= n || Instant::now() > deadline {
            return payloads;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn messages_from_every_protocol_read_back_in_pages_filtered_and_authorized() {
    let root = tempdir("history-read");
    manifests(&root);
    let mut server = start(&root);
    publish_all(&server);
    let http = server.http;
    let all = wait_for(http, 4);
    let senml = r#"[{"bn":"room2:","n":"temp","v":21.5,"t":-1}]"#;
    assert_eq!(all, ["s1", "w1", senml, "m1"], "newest first");
    let (_, next, v) = page(http, "", DASHBOARD_KEY);
    assert_eq!(next, None);
    let protocols: Vec<&str> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["protocol"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(protocols, ["mqtt", "websocket", "http", "mqtt"]);
    assert!(
        v["messages"][0]["id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    );

    // Oldest first, a filter, an exact topic.
    assert_eq!(
        page(http, "?order=asc", DASHBOARD_KEY).0,
        ["m1", senml, "w1", "s1"]
    );
    assert_eq!(
        page(http, "?filter=room1/%2B", DASHBOARD_KEY).0,
        ["w1", "m1"]
    );
    assert_eq!(page(http, "?filter=room2/temp", DASHBOARD_KEY).0, [senml]);

    // Pages of one, by cursor: the same messages, no duplicate, no gap.
    let mut seen = Vec::new();
    let mut query = "?limit=1".to_owned();
    for _ in 0..10 {
        let (payloads, next, _) = page(http, &query, DASHBOARD_KEY);
        seen.extend(payloads);
        let Some(next) = next else { break };
        query = format!("?limit=1&cursor={next}");
    }
    assert_eq!(seen, all);

    // A time range that ends before everything holds nothing.
    assert!(
        page(http, "?to=2020-01-01T00:00:00Z", DASHBOARD_KEY)
            .0
            .is_empty()
    );
    assert_eq!(
        page(http, "?from=2020-01-01T00:00:00Z", DASHBOARD_KEY)
            .0
            .len(),
        4
    );

    // A subtopic deny is not read around with a wider filter.
    assert_eq!(page(http, "", PARTIAL_KEY).0, ["w1", senml, "m1"]);
    let (status, _, body) = get(
        http,
        "/m/plant/c/readings/messages?filter=secret/%23",
        PARTIAL_KEY,
        &[],
    );
    assert_eq!(status, 403, "{body}");

    // SenML: the pack, resolved, with its time made absolute.
    let (status, head, body) = get(
        http,
        "/m/plant/c/readings/messages",
        DASHBOARD_KEY,
        &["Accept: application/senml+json"],
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/senml+json"),
        "{head}"
    );
    let pack: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(pack[0]["n"], "room2:temp");
    assert_eq!(pack[0]["v"], 21.5);
    assert!(pack[0]["t"].as_f64().is_some_and(|t| t > 1.7e9), "{pack}");

    refusals(http);

    // A restart keeps what was stored.
    drop(server);
    server = start(&root);
    assert_eq!(wait_for(server.http, 4), all);
}

/// Each refusal of the reader, with its status.
fn refusals(http: SocketAddr) {
    let path = "/m/plant/c/readings/messages";
    for (query, key, status) in [
        ("", "", 401),
        ("", "bm90LWEta2V5LWF0LWFsbC1ub3QtYS1rZXktYXQtYWxs", 401),
        ("", NOSY_KEY, 403),
        ("?filter=a/%23/b", DASHBOARD_KEY, 400),
        ("?limit=0", DASHBOARD_KEY, 400),
        ("?limit=1001", DASHBOARD_KEY, 400),
        ("?order=sideways", DASHBOARD_KEY, 400),
        ("?cursor=not-ours", DASHBOARD_KEY, 400),
        ("?from=yesterday", DASHBOARD_KEY, 400),
    ] {
        let (got, _, body) = get(http, &format!("{path}{query}"), key, &[]);
        assert_eq!(got, status, "{query} as {key:?}: {body}");
    }
    // Another tenant's channel of the same name is refused like any other of its topics.
    let (got, _, body) = get(http, "/m/other/c/readings/messages", DASHBOARD_KEY, &[]);
    assert_eq!(got, 403, "{body}");
    let (got, _, body) = get(http, "/m/plant/c/plain/messages", DASHBOARD_KEY, &[]);
    assert_eq!((got, body.contains("no_history")), (404, true), "{body}");
}

#[test]
fn a_deleted_and_recreated_channel_starts_empty_and_its_old_messages_are_swept() {
    let root = tempdir("history-recreate");
    let dir = manifests(&root);
    let server = start(&root);
    publish_all(&server);
    assert_eq!(wait_for(server.http, 4).len(), 4);
    let held = |server: &Start| -> Option<u64> {
        let report: Value = serde_json::from_slice(
            &std::fs::read(server.state.join("status.json")).expect("the status report"),
        )
        .expect("JSON");
        report["objects"]
            .as_array()?
            .iter()
            .find(|o| o["kind"] == "Channel" && o["name"] == "readings")?["history"]["messages"]
            .as_u64()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while held(&server) != Some(4) {
        assert!(
            Instant::now() < deadline,
            "the report never counted 4 messages"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    std::fs::remove_file(dir.join("readings.yaml")).expect("delete the channel");
    server.wait_log("Channel plant/readings: removed", Duration::from_secs(10));
    std::fs::write(dir.join("readings.yaml"), READINGS).expect("create it again");
    server.wait_log("Channel plant/readings: Ready", Duration::from_secs(10));
    let (payloads, _, _) = page(server.http, "", DASHBOARD_KEY);
    assert!(
        payloads.is_empty(),
        "the new channel shows the old one's: {payloads:?}"
    );
    // The sweep removes the old channel's rows: the report stops counting them.
    let deadline = Instant::now() + Duration::from_secs(15);
    while held(&server).is_some() {
        assert!(
            Instant::now() < deadline,
            "the old messages were never swept"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
