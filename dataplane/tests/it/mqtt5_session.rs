//! MQTT 5 session behaviour as paho-mqtt (Python) sees it (issue 18): one delivery for
//! overlapping subscriptions, the session expiry a DISCONNECT sets, a delayed will that never
//! outlives its session, and the Server Keep Alive of `--max-keep-alive-secs`.

use crate::common;

use std::time::Duration;

use common::{Fixture, key, raw};
use fleetward_dataplane::MqttConfig;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// What every script starts with: `Conn`, a paho client whose events are recorded with the
/// time they arrived, and `topic()`, a topic of tenant acme's `telemetry` channel.
const PRELUDE: &str = r#"
import json, sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

PORT, KEYS = int(sys.argv[1]), json.loads(sys.argv[2])
T0 = time.monotonic()
out = {}

def topic(sub, channel="telemetry"):
    return "m/acme/c/" + channel + "/" + sub

def props(kind, **values):
    p = Properties(kind)
    for k, v in values.items():
        setattr(p, k, v)
    return p

class Conn:
    """One connection of thing `thing` (v5 unless v5=False), with what it received."""
    def __init__(self, thing, cid, v5=True, clean=True, expiry=None, keepalive=30, will=None,
                 max_packet=None):
        self.v5 = v5
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             clean_session=None if v5 else clean, reconnect_on_failure=False)
        self.c.username_pw_set("acme/" + thing, KEYS[thing])
        self.messages, self.connack, self.disconnected = [], None, None
        self.acked, self.subacked, self.gone = threading.Event(), threading.Event(), threading.Event()
        self.c.on_connect, self.c.on_message = self._on_connect, self._on_message
        self.c.on_subscribe, self.c.on_disconnect = self._on_subscribe, self._on_disconnect
        if will:
            wt, wp, delay = will
            self.c.will_set(topic(wt), wp, qos=1,
                            properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay))
        kw = {}
        if v5:
            kw["clean_start"] = clean
            values = {}
            if expiry is not None:
                values["SessionExpiryInterval"] = expiry
            if max_packet is not None:
                values["MaximumPacketSize"] = max_packet
            if values:
                kw["properties"] = props(PacketTypes.CONNECT, **values)
        self.c.connect("127.0.0.1", PORT, keepalive, **kw)
        self.c.loop_start()
        assert self.acked.wait(10), "no CONNACK"

    def _on_connect(self, c, u, flags, rc, p):
        got = {}
        if p is not None:
            for name in ("ServerKeepAlive", "SessionExpiryInterval"):
                if hasattr(p, name):
                    got[name] = getattr(p, name)
        self.connack = {"rc": rc.value, "failure": rc.is_failure,
                        "present": bool(flags.session_present), "props": got}
        self.acked.set()

    def _on_message(self, c, u, m):
        ids = getattr(m.properties, "SubscriptionIdentifier", []) if m.properties else []
        user = getattr(m.properties, "UserProperty", []) if m.properties else []
        self.messages.append({"t": time.monotonic() - T0, "topic": m.topic,
                              "payload": m.payload.decode(), "qos": m.qos, "ids": sorted(ids),
                              "user": [list(kv) for kv in user]})

    def _on_subscribe(self, c, u, mid, codes, p):
        self.subacked.set()

    def _on_disconnect(self, c, u, flags, rc, p):
        self.disconnected = {"t": time.monotonic() - T0, "rc": rc.value}
        self.gone.set()

    def subscribe(self, sub, qos, sid=None, channel="telemetry", user=None):
        self.subacked.clear()
        values = {}
        if sid:
            values["SubscriptionIdentifier"] = sid
        if user:
            values["UserProperty"] = user
        p = props(PacketTypes.SUBSCRIBE, **values) if values else None
        if self.v5:
            self.c.subscribe(topic(sub, channel), qos, properties=p)
        else:
            self.c.subscribe(topic(sub, channel), qos)
        assert self.subacked.wait(10), "no SUBACK"

    def publish(self, sub, payload, qos, channel="telemetry", user=None):
        p = props(PacketTypes.PUBLISH, UserProperty=user) if user else None
        self.c.publish(topic(sub, channel), payload, qos=qos, properties=p).wait_for_publish(10)

    def disconnect(self, reason=0, **values):
        p = props(PacketTypes.DISCONNECT, **values) if values else None
        self.c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
                          if self.v5 else None, properties=p)
        self.gone.wait(10)
        self.c.loop_stop()

    def wait_messages(self, n, within):
        until = time.monotonic() + within
        while len(self.messages) < n and time.monotonic() < until:
            time.sleep(0.05)
        return self.messages

def now():
    return time.monotonic() - T0
"#;

/// Runs `script` after the prelude against `fx`; what it printed, as JSON.
async fn paho(fx: &Fixture, script: &str) -> Value {
    let keys: serde_json::Map<String, Value> = ["sensor", "reader"]
        .into_iter()
        .map(|t| (t.to_owned(), Value::String(key("acme", t))))
        .collect();
    let out = Command::new("python3")
        .args(["-c", &format!("{PRELUDE}\n{script}")])
        .arg(fx.port().to_string())
        .arg(Value::Object(keys).to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the paho script ends")
        .expect("python3 runs (scripts/install-tools.sh installs paho-mqtt)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paho script failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Item 1: `TopicA/#` at QoS 2 and `TopicA/+` at QoS 1 both match `TopicA/x`: one PUBLISH at
/// QoS 2, carrying both subscription identifiers in v5.
#[tokio::test]
async fn overlapping_subscriptions_get_one_delivery_at_the_highest_qos() {
    let fx = Fixture::start().await;
    let v = paho(
        &fx,
        r#"
for v5 in (True, False):
    r = Conn("reader", "overlap-r", v5=v5)
    r.subscribe("TopicA/#", 2, sid=1)
    r.subscribe("TopicA/+", 1, sid=2)
    s = Conn("sensor", "overlap-s", v5=v5)
    s.publish("TopicA/x", b"once", 2)
    r.wait_messages(1, 10)
    # Time for a second copy to arrive, were one sent.
    time.sleep(1.5)
    out["v5" if v5 else "v311"] = [[m["topic"], m["payload"], m["qos"], m["ids"]] for m in r.messages]
    r.disconnect(); s.disconnect()
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(
        v["v5"],
        json!([["m/acme/c/telemetry/TopicA/x", "once", 2, [1, 2]]])
    );
    assert_eq!(
        v["v311"],
        json!([["m/acme/c/telemetry/TopicA/x", "once", 2, []]])
    );
}

/// Item 4: a DISCONNECT's Session Expiry Interval replaces the CONNECT's. Expiry 1 at
/// CONNECT, 5 at DISCONNECT, back after 3 s: the session is there with what was published
/// meanwhile. The same client without the DISCONNECT's expiry finds no session.
#[tokio::test]
async fn the_session_expiry_of_a_disconnect_is_kept() {
    let fx = Fixture::start().await;
    let v = paho(
        &fx,
        r#"
for cid in ("longer", "as-connected"):
    r = Conn("reader", cid, clean=True, expiry=1)
    r.subscribe("away/" + cid, 1)
    if cid == "longer":
        r.disconnect(SessionExpiryInterval=5)
    else:
        r.disconnect()
s = Conn("sensor", "away-s")
for cid in ("longer", "as-connected"):
    s.publish("away/" + cid, b"while away", 1)
s.disconnect()
time.sleep(3)
for cid in ("longer", "as-connected"):
    r = Conn("reader", cid, clean=False, expiry=1)
    got = r.wait_messages(1, 5 if cid == "longer" else 1)
    out[cid] = {"present": r.connack["present"],
                "messages": [[m["payload"], m["qos"]] for m in got]}
    r.disconnect()
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(
        v["longer"],
        json!({"present": true, "messages": [["while away", 1]]})
    );
    assert_eq!(v["as-connected"], json!({"present": false, "messages": []}));
}

/// Item 4, capped: the DISCONNECT's expiry is capped by `max_session_expiry` as the CONNECT's
/// is, and a v5 CONNACK says which expiry the server uses when it is not the one asked.
#[tokio::test]
async fn the_session_expiry_of_a_disconnect_is_capped() {
    let fx = Fixture::start_with(MqttConfig {
        max_session_expiry: Duration::from_secs(2),
        ..MqttConfig::default()
    })
    .await;
    let v = paho(
        &fx,
        r#"
r = Conn("reader", "capped", clean=True, expiry=1)
out["asked_1"] = r.connack["props"]
r.subscribe("capped", 1)
r.disconnect(SessionExpiryInterval=100)
time.sleep(3.5)
r = Conn("reader", "capped", clean=False, expiry=100)
out["asked_100"] = r.connack["props"]
out["present_after_3s"] = r.connack["present"]
r.disconnect()
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(
        v["asked_1"],
        json!({}),
        "the expiry asked is used: not told"
    );
    assert_eq!(v["asked_100"], json!({"SessionExpiryInterval": 2}));
    assert_eq!(v["present_after_3s"], json!(false), "kept 2 s, not 100");
}

/// Item 4, refused: a CONNECT without an expiry, then a DISCONNECT with one, is a protocol
/// error (MQTT 5, 3.14.2.2.2): the server answers DISCONNECT 0x82, keeps no session, and
/// publishes the will as for any connection that ends in error.
#[tokio::test]
async fn a_disconnect_may_not_set_an_expiry_the_connect_did_not() {
    let fx = Fixture::start().await;
    let v = paho(
        &fx,
        r#"
w = Conn("reader", "will-watch")
w.subscribe("last/#", 1)
r = Conn("sensor", "no-expiry", clean=True, will=("last/no-expiry", b"gone", 0))
r.disconnect(SessionExpiryInterval=5)
w.wait_messages(1, 10)
out["wills"] = [m["payload"] for m in w.messages]
r = Conn("sensor", "no-expiry", clean=False)
out["present"] = r.connack["present"]
r.disconnect(); w.disconnect()
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(v["wills"], json!(["gone"]));
    assert_eq!(v["present"], json!(false));

    // The server's answer, read off the wire: CONNECT (v5, no expiry), then DISCONNECT 0x00
    // with Session Expiry Interval 5.
    let mut s = tokio::net::TcpStream::connect(fx.addr)
        .await
        .expect("connects");
    s.write_all(&v5_connect(
        "raw-expiry",
        "acme/sensor",
        &key("acme", "sensor"),
    ))
    .await
    .expect("writes");
    let (first, _) = raw::read_packet(&mut s, Duration::from_secs(5))
        .await
        .expect("CONNACK");
    assert_eq!(first, 0x20);
    // Reason 0x00, properties: length 5, Session Expiry Interval (0x11) = 5.
    let disconnect = raw::with_header(0xE0, vec![0x00, 5, 0x11, 0, 0, 0, 5]);
    s.write_all(&disconnect).await.expect("writes");
    let (first, body) = raw::read_packet(&mut s, Duration::from_secs(5))
        .await
        .expect("the server's DISCONNECT");
    assert_eq!((first, body.first()), (0xE0, Some(&0x82)), "{body:?}");
}

/// A v5 CONNECT of `client_id` with credentials, a clean start, keep-alive 0 and no
/// properties.
fn v5_connect(client_id: &str, user: &str, pass: &str) -> Vec<u8> {
    let mut body = Vec::new();
    raw::mqtt_str(&mut body, b"MQTT");
    body.extend_from_slice(&[5, 0b1100_0010, 0, 0, 0]);
    raw::mqtt_str(&mut body, client_id.as_bytes());
    raw::mqtt_str(&mut body, user.as_bytes());
    raw::mqtt_str(&mut body, pass.as_bytes());
    raw::with_header(0x10, body)
}

/// Item 5: a will goes out when its delay ends or its session does, whichever comes first.
/// Session expiry 0 and will delay 5: at once. Expiry 2 and delay 30: at about 2 s. Expiry 60
/// and delay 3, back after 1 s: never.
#[tokio::test]
async fn a_delayed_will_never_outlives_its_session() {
    let fx = Fixture::start().await;
    let v = paho(
        &fx,
        r#"
w = Conn("reader", "will-watch")
w.subscribe("will/#", 1)
# Every connection ends with DISCONNECT 0x04 (with will), as an unclean end would.
ends = {}
for cid, expiry, delay in (("no-expiry", 0, 5), ("expiry-2", 2, 30), ("back", 60, 3),
                           ("shortened", 60, 30)):
    c = Conn("sensor", cid, clean=True, expiry=expiry, will=("will/" + cid, cid.encode(), delay))
    ends[cid] = now()
    if cid == "shortened":
        # The DISCONNECT's expiry is the session's end now.
        c.disconnect(reason=4, SessionExpiryInterval=1)
    else:
        c.disconnect(reason=4)
time.sleep(1)
back = Conn("sensor", "back", clean=False, expiry=60)
# Past the "back" will's delay, and well past the others' session ends.
time.sleep(4)
back.disconnect()
out["after"] = {m["payload"]: m["t"] - ends[m["payload"]] for m in w.messages}
w.disconnect()
print(json.dumps(out))
"#,
    )
    .await;
    let after = v["after"].as_object().expect("an object");
    assert!(
        !after.contains_key("back"),
        "a reconnect cancels the will: {v}"
    );
    let at = |cid: &str| {
        after
            .get(cid)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("the will of {cid} arrived: {v}"))
    };
    // Expiry 0: at the connection's end, not after the 5 s delay.
    assert!(at("no-expiry") < 4.0, "{v}");
    // Expiry 2: when the session ends, not after the 30 s delay.
    let t = at("expiry-2");
    assert!((1.8..15.0).contains(&t), "{v}");
    // Expiry 60 at CONNECT, 1 at DISCONNECT: at about 1 s, not after the 30 s delay.
    let t = at("shortened");
    assert!((0.8..15.0).contains(&t), "{v}");
}

/// Item 5: a saved session dropped early (its tenant past `--max-saved-sessions-per-tenant`)
/// ends there, and its waiting will goes out then rather than after its delay.
#[tokio::test]
async fn a_will_goes_out_when_its_saved_session_is_dropped_early() {
    let fx = Fixture::start_with(MqttConfig {
        max_saved_sessions_per_tenant: 1,
        ..MqttConfig::default()
    })
    .await;
    let v = paho(
        &fx,
        r#"
w = Conn("reader", "will-watch")
w.subscribe("will/#", 1)
c = Conn("sensor", "oldest", clean=True, expiry=600, will=("will/oldest", b"oldest", 60))
c.disconnect(reason=4)
time.sleep(1)
out["before"] = len(w.messages)
t = now()
# A second saved session of the tenant: the oldest is dropped, and its will goes.
n = Conn("sensor", "newest", clean=True, expiry=600)
n.disconnect()
w.wait_messages(1, 20)
out["wills"] = [[m["payload"], m["t"] - t] for m in w.messages]
w.disconnect()
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(
        v["before"],
        json!(0),
        "the will waits while its session is kept"
    );
    let wills = v["wills"].as_array().expect("a list");
    assert_eq!(wills.len(), 1, "{v}");
    assert_eq!(wills[0][0], json!("oldest"));
    let t = wills[0][1].as_f64().expect("a time");
    assert!(t < 20.0, "at the drop, not after the 60 s delay: {v}");
}

/// Item 6: `--max-keep-alive-secs` 2. A v5 client asking 60, or 0 (none), is told 2 in its
/// CONNACK (Server Keep Alive) and is held to it (DISCONNECT 0x8D after 1.5 × 2 s of silence;
/// paho keeps pinging at its own 60 s). One asking 1 is not told and keeps its own. A v3.1.1
/// client asking more than 2, or 0, cannot be told and is refused (CONNACK 0x02).
#[tokio::test]
async fn a_capped_keep_alive_is_told_in_the_connack_and_enforced() {
    let fx = Fixture::start_with(MqttConfig {
        max_keep_alive: Some(2),
        ..MqttConfig::default()
    })
    .await;
    let v = paho(
        &fx,
        r#"
conns = {}
for ka in (60, 0, 1):
    t = now()
    c = Conn("reader", "ka-%d" % ka, keepalive=ka)
    conns[ka] = (c, t)
    out["v5_%d" % ka] = c.connack["props"]
time.sleep(0.5)
for ka, (c, t) in conns.items():
    if ka != 1:
        assert c.gone.wait(30), "not disconnected"
        out["v5_%d_closed" % ka] = [c.disconnected["rc"], c.disconnected["t"] - t]
        c.c.loop_stop()
# Pinging every second, the one that asked 1 is still there.
out["v5_1_alive"] = conns[1][0].disconnected is None
conns[1][0].disconnect()
for ka in (60, 0, 2):
    c = Conn("reader", "v3-ka-%d" % ka, v5=False, keepalive=ka)
    out["v3_%d" % ka] = [c.connack["failure"], c.connack["rc"]]
    if not c.connack["failure"]:
        c.disconnect()
    else:
        c.c.loop_stop()
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(v["v5_60"], json!({"ServerKeepAlive": 2}));
    assert_eq!(v["v5_0"], json!({"ServerKeepAlive": 2}));
    assert_eq!(v["v5_1"], json!({}), "within the maximum: not told");
    for ka in ["v5_60_closed", "v5_0_closed"] {
        let closed = &v[ka];
        assert_eq!(closed[0], json!(0x8D), "keep-alive timeout: {v}");
        let t = closed[1].as_f64().expect("a time");
        // 1.5 × 2 s, not 1.5 × 60 s (or never).
        assert!((2.5..30.0).contains(&t), "{ka}: {v}");
    }
    assert_eq!(v["v5_1_alive"], json!(true), "{v}");
    // paho reports a v3.1.1 CONNACK 0x02 (identifier rejected) as its v5 equivalent, 0x85.
    assert_eq!(v["v3_60"], json!([true, 0x85]), "refused: {v}");
    assert_eq!(v["v3_0"], json!([true, 0x85]), "refused: {v}");
    assert_eq!(v["v3_2"], json!([false, 0]), "accepted: {v}");
}

/// Item 3: who published, how and when travel as user properties only where the channel says
/// so (`deliveryMetadata`, on for the fixture's `telemetry`, off for `commands`) or the
/// SUBSCRIBE asked (`fleetward-metadata: true`); otherwise a delivery carries the publisher's
/// user properties exactly.
#[tokio::test]
async fn delivery_metadata_is_opt_in_per_channel_and_per_subscription() {
    let fx = Fixture::start().await;
    let v = paho(
        &fx,
        r#"
plain = Conn("reader", "meta-plain")
plain.subscribe("plain/#", 1, channel="commands")
asked = Conn("reader", "meta-asked")
asked.subscribe("asked/#", 1, channel="commands", user=[("fleetward-metadata", "true")])
on = Conn("reader", "meta-on")
on.subscribe("on/#", 1)
s = Conn("sensor", "meta-s")
s.publish("plain/x", b"a", 1, channel="commands", user=[("site", "north")])
s.publish("asked/x", b"b", 1, channel="commands", user=[("site", "north")])
s.publish("on/x", b"c", 1, user=[("site", "north")])
for name, conn in (("plain", plain), ("asked", asked), ("on", on)):
    out[name] = [m["user"] for m in conn.wait_messages(1, 10)]
    conn.disconnect()
s.disconnect()
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(v["plain"], json!([[["site", "north"]]]), "{v}");
    for name in ["asked", "on"] {
        let user = v[name][0].as_array().expect("one message");
        let names: Vec<&str> = user.iter().filter_map(|kv| kv[0].as_str()).collect();
        assert_eq!(
            names,
            [
                "site",
                "fleetward-publisher",
                "fleetward-protocol",
                "fleetward-created",
                "fleetward-id"
            ],
            "{name}: {v}"
        );
        assert_eq!(user[1], json!(["fleetward-publisher", "thing:sensor"]));
        assert_eq!(user[2], json!(["fleetward-protocol", "mqtt"]));
    }
}

/// Item 3: a client's Maximum Packet Size that only the delivery metadata would exceed still
/// gets the message, without it; one the message itself exceeds gets nothing (MQTT 5,
/// 3.1.2.11.4).
#[tokio::test]
async fn a_small_maximum_packet_size_gets_the_message_without_our_additions() {
    let fx = Fixture::start().await;
    let v = paho(
        &fx,
        r#"
r = Conn("reader", "small-r", max_packet=64)
r.subscribe("small/#", 1)
s = Conn("sensor", "small-s")
s.publish("small/big", b"x" * 100, 1)
s.publish("small/fits", b"hi", 1)
got = r.wait_messages(1, 10)
time.sleep(1)
out["messages"] = [[m["topic"], m["payload"], m["user"]] for m in r.messages]
r.disconnect(); s.disconnect()
print(json.dumps(out))
"#,
    )
    .await;
    assert_eq!(
        v["messages"],
        json!([["m/acme/c/telemetry/small/fits", "hi", []]]),
        "{v}"
    );
}
