//! MQTT over WebSocket at `/mqtt` with paho-mqtt (`transport="websockets"`), v3.1.1 and v5:
//! the same front-end as TCP, so refusals, delivery and metadata are the same.

use crate::adapters;
use crate::common;

use std::time::Duration;

use adapters::{Adapters, publish_text};
use common::{key, v4};
use tokio::process::Command;

const SCRIPT: &str = r#"
import json, sys, threading, time
import paho.mqtt.client as mqtt

port, version, reader_key, sensor_key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
out = {"messages": []}
subacked, got_two = threading.Event(), threading.Event()

def client(cid, user, pw):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto,
                    transport="websockets")
    c.ws_set_options(path="/mqtt")
    c.username_pw_set(user, pw)
    return c

def on_connect(c, userdata, flags, rc, props):
    out.setdefault("connack", []).append(rc.value)

def on_subscribe(c, userdata, mid, rcs, props):
    out["suback"] = [rc.value for rc in rcs]
    subacked.set()

def on_message(c, userdata, msg):
    up = []
    if proto == mqtt.MQTTv5 and hasattr(msg.properties, "UserProperty"):
        up = [list(p) for p in msg.properties.UserProperty]
    out["messages"].append([msg.topic, msg.payload.decode(), msg.qos, up])
    if len(out["messages"]) == 2:
        got_two.set()

r = client("ws-r-" + version, "acme/reader", reader_key)
r.on_connect, r.on_subscribe, r.on_message = on_connect, on_subscribe, on_message
r.connect("127.0.0.1", port)
r.loop_start()
r.subscribe([("m/acme/c/telemetry/#", 1), ("m/globex/c/telemetry/#", 0)])
subacked.wait(5)

s = client("ws-s-" + version, "acme/sensor", sensor_key)
s.on_connect = on_connect
s.connect("127.0.0.1", port)
s.loop_start()
s.publish("m/acme/c/telemetry/ws", b"over-ws", qos=1).wait_for_publish(5)
# Tell the harness to publish over HTTP now.
print("READY", flush=True)
got_two.wait(8)

bad = client("ws-bad-" + version, "acme/sensor", "wrong")
bad.on_connect = on_connect
# One attempt only: paho's loop would retry a refused CONNECT after its reconnect delay.
bad.reconnect_delay_set(min_delay=60, max_delay=60)
try:
    bad.connect("127.0.0.1", port)
    bad.loop_start()
    time.sleep(1)
    bad.loop_stop()
except Exception as e:
    out["bad_error"] = str(e)
r.loop_stop(); s.loop_stop()
print(json.dumps(out), flush=True)
"#;

async fn run_paho(fx: &Adapters, version: &str) -> serde_json::Value {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, &fx.http.port().to_string(), version])
        .arg(key("acme", "reader"))
        .arg(key("acme", "sensor"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (scripts/install-tools.sh installs paho-mqtt)");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(15), lines.next_line()).await;
    assert!(
        matches!(&ready, Ok(Ok(Some(l))) if l == "READY"),
        "paho did not get ready: {ready:?}"
    );
    let r = publish_text(
        fx,
        "acme",
        "sensor",
        "/m/acme/c/telemetry/http",
        "over-http",
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    let last = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("paho finishes")
        .expect("reads")
        .expect("a JSON line");
    let status = child.wait().await.expect("exits");
    assert!(status.success(), "paho script failed");
    serde_json::from_str(&last).expect("JSON from the script")
}

#[tokio::test]
async fn paho_over_websocket_v311() {
    let fx = Adapters::start().await;
    // A TCP subscriber sees what the WebSocket client publishes: one front-end, one router.
    let mut tcp = v4::connect(fx.mqtt, "acme", "reader", "tcp").await;
    tcp.subscribe("m/acme/c/telemetry/ws", v4::QoS::AtMostOnce)
        .await;
    let v = run_paho(&fx, "311").await;
    // CONNACK 0 twice, then 5 (not authorized) for the wrong key.
    assert_eq!(v["connack"], serde_json::json!([0, 0, 135]), "{v}");
    // v3.1.1: 0x80 for the other tenant's filter.
    assert_eq!(v["suback"], serde_json::json!([1, 128]), "{v}");
    assert_eq!(
        v["messages"],
        serde_json::json!([
            ["m/acme/c/telemetry/ws", "over-ws", 1, []],
            ["m/acme/c/telemetry/http", "over-http", 0, []]
        ]),
        "{v}"
    );
    let got = tcp
        .next_publish(Duration::from_secs(3))
        .await
        .expect("delivered over TCP");
    assert_eq!(&got.payload[..], b"over-ws");
}

#[tokio::test]
async fn paho_over_websocket_v5_sees_the_metadata() {
    let fx = Adapters::start().await;
    let v = run_paho(&fx, "5").await;
    assert_eq!(v["connack"], serde_json::json!([0, 0, 134]), "{v}");
    assert_eq!(v["suback"], serde_json::json!([1, 135]), "{v}");
    let messages = v["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2, "{v}");
    let props = |i: usize| -> Vec<(String, String)> {
        serde_json::from_value(messages[i][3].clone()).expect("pairs")
    };
    assert_eq!(messages[0][1], "over-ws");
    assert!(
        props(0).contains(&("fleetward-protocol".into(), "mqtt".into())),
        "{v}"
    );
    assert!(
        props(0).contains(&("fleetward-publisher".into(), "thing:sensor".into())),
        "{v}"
    );
    assert_eq!(messages[1][1], "over-http");
    assert!(
        props(1).contains(&("fleetward-protocol".into(), "http".into())),
        "{v}"
    );
}
