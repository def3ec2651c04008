//! A `fleetward dataplane` process drained by SIGTERM, with real clients (paho-mqtt v5 and
//! v3.1.1): v5 clients get DISCONNECT 0x8B (or 0x9C with the server reference), a v3 client's
//! socket closes, a QoS 1 publish in flight is either PUBACKed and delivered or not PUBACKed,
//! and the process exits 0 within the drain's bound. And readiness on NATS: not ready, and
//! not accepting, until the bus has joined NATS once; still ready through an outage.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::dataplane_processes::{Dataplane, NatsServer, free_addr, http_get, key};

/// Connects a v5 subscriber (acme/reader), a v5 publisher (acme/sensor) sending QoS 1 without
/// pause, and a v3.1.1 client; prints `READY` once messages flow, then, once every client was
/// disconnected, one JSON line of what each saw.
const CLIENTS: &str = r#"
import json, sys, threading, time
import paho.mqtt.client as mqtt

port, reader_key, sensor_key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
topic = "m/acme/c/tele/drain"
out = {"acked": [], "received": [], "disconnects": {}}
lock = threading.Lock()
gone = {name: threading.Event() for name in ("reader", "sensor", "v3")}
subscribed = threading.Event()
sent = {}

def on_disconnect(name):
    def handler(c, userdata, flags, reason_code, props):
        ref = getattr(props, "ServerReference", None) if props is not None else None
        out["disconnects"].setdefault(name, [reason_code.value, ref])
        gone[name].set()
    return handler

def client(name, cid, version, user, password):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=version,
                    reconnect_on_failure=False)
    c.username_pw_set(user, password)
    c.on_disconnect = on_disconnect(name)
    return c

r = client("reader", "drain-reader", mqtt.MQTTv5, "acme/reader", reader_key)
def on_message(c, userdata, msg):
    with lock:
        out["received"].append(msg.payload.decode())
r.on_message = on_message
r.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
r.connect("127.0.0.1", port)
r.loop_start()
r.subscribe(topic, qos=1)
assert subscribed.wait(10), "no SUBACK"

s = client("sensor", "drain-sensor", mqtt.MQTTv5, "acme/sensor", sensor_key)
def on_publish(c, userdata, mid, reason_code, props):
    if reason_code.value < 0x80:
        with lock:
            out["acked"].append(sent[mid])
s.on_publish = on_publish
s.connect("127.0.0.1", port)
s.loop_start()

v3 = client("v3", "drain-v3", mqtt.MQTTv311, "acme/reader", reader_key)
v3.connect("127.0.0.1", port)
v3.loop_start()

i = 0
while not gone["sensor"].is_set():
    i += 1
    info = s.publish(topic, str(i), qos=1)
    sent[info.mid] = str(i)
    if i == 50:
        print("READY", flush=True)
    time.sleep(0.002)
for name, event in gone.items():
    assert event.wait(30), name + " was not disconnected"
time.sleep(0.5)
with lock:
    print(json.dumps(out), flush=True)
"#;

/// What the clients saw.
#[derive(serde::Deserialize, Debug)]
struct Seen {
    acked: Vec<String>,
    received: Vec<String>,
    /// Client name → [reason code, server reference].
    disconnects: std::collections::BTreeMap<String, (u8, Option<String>)>,
}

/// Runs the clients against `pod`, sends it SIGTERM once messages flow, and returns what the
/// clients saw and how long the process took to exit after the signal.
fn drain_under_load(pod: &mut Dataplane) -> (Seen, Duration) {
    let mut clients = Command::new("python3")
        .args(["-c", CLIENTS, &pod.mqtt.port().to_string()])
        .args([key("reader"), key("sensor")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt runs (scripts/install-tools.sh)");
    let mut lines = BufReader::new(clients.stdout.take().expect("piped")).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(ready.as_deref(), Some("READY"), "{}", pod.log_text());
    let pid = pod.child().id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let signalled = Instant::now();
    let exit = loop {
        if let Some(exit) = pod.child().try_wait().expect("waitable") {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "the dataplane did not exit after SIGTERM\n{}",
            pod.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    assert!(exit.success(), "{exit}\n{}", pod.log_text());
    let report = lines
        .next()
        .and_then(Result::ok)
        .expect("the clients report what they saw");
    let _ = clients.wait();
    let seen: Seen = serde_json::from_str(&report).expect("the clients' JSON");
    (seen, took)
}

/// Every PUBACKed message reached the subscriber on the same pod.
fn assert_nothing_acked_was_lost(seen: &Seen, log: &str) {
    assert!(seen.acked.len() >= 10, "too few acked to tell: {seen:?}");
    let received: std::collections::HashSet<&String> = seen.received.iter().collect();
    let lost: Vec<&String> = seen
        .acked
        .iter()
        .filter(|m| !received.contains(m))
        .collect();
    assert!(
        lost.is_empty(),
        "PUBACKed and never delivered: {lost:?} (of {} acked)\n{log}",
        seen.acked.len()
    );
}

#[test]
fn sigterm_drains_v5_clients_with_0x8b_closes_v3_and_loses_nothing_acked() {
    let mut pod = Dataplane::start_with("drain-a", None, None, &["--drain-timeout-secs=8".into()]);
    let (seen, took) = drain_under_load(&mut pod);
    let log = pod.log_text();
    assert_eq!(seen.disconnects["reader"].0, 0x8B, "{seen:?}");
    assert_eq!(seen.disconnects["sensor"].0, 0x8B, "{seen:?}");
    // v3 has no server DISCONNECT: paho sees the socket close (not a clean 0).
    assert_ne!(seen.disconnects["v3"].0, 0, "{seen:?}");
    assert_nothing_acked_was_lost(&seen, &log);
    // Within the bound (8 s), with room for a loaded machine's start of the process.
    assert!(took < Duration::from_secs(15), "exit took {took:?}\n{log}");
    assert!(log.contains("drained"), "{log}");
}

#[test]
fn with_a_server_reference_v5_clients_are_told_to_use_another_server() {
    let mut pod = Dataplane::start_with(
        "drain-b",
        None,
        None,
        &["--drain-server-reference=mqtt-b.example.com:1883".into()],
    );
    let (seen, _) = drain_under_load(&mut pod);
    for name in ["reader", "sensor"] {
        let (code, reference) = &seen.disconnects[name];
        assert_eq!(*code, 0x9C, "{seen:?}");
        assert_eq!(
            reference.as_deref(),
            Some("mqtt-b.example.com:1883"),
            "{seen:?}"
        );
    }
    assert_nothing_acked_was_lost(&seen, &pod.log_text());
}

#[test]
fn on_nats_the_pod_is_ready_and_accepts_only_once_the_bus_joined_and_stays_ready_through_an_outage()
{
    let nats_addr = free_addr();
    let url = format!("nats://{nats_addr}");
    let mut pod = Dataplane::spawn("ready-a", Some(&url), None, &[]);
    // No NATS yet: not ready, and MQTT is not answered (the listener does not accept).
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = http_get(pod.admin, "/readyz").expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("NATS"), "{body}");
    let early = mqtt_connack(pod.mqtt, Duration::from_millis(800));
    assert!(
        early.is_none(),
        "a CONNECT was answered before the bus joined"
    );

    let nats = NatsServer::start_on(nats_addr);
    pod.wait_ready("ready-a");
    assert!(
        mqtt_connack(pod.mqtt, Duration::from_secs(10)).is_some(),
        "no CONNACK once ready\n{}",
        pod.log_text()
    );
    // NATS goes away: the pod stays ready (local clients are still served).
    drop(nats);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (code, body) = http_get(pod.admin, "/readyz").expect("/readyz answers");
        assert_eq!(code, 200, "readiness flipped on a bus outage: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends a v3.1.1 CONNECT as acme/reader and waits `within` for the CONNACK's return code.
fn mqtt_connack(addr: std::net::SocketAddr, within: Duration) -> Option<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(within)).ok()?;
    let (user, pass) = ("acme/reader".to_owned(), key("reader"));
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 30];
    for field in ["ready-probe", user.as_str(), pass.as_str()] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    s.write_all(&packet).ok()?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).ok()?;
    (connack[0] == 0x20).then_some(connack[3])
}
