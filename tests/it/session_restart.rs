//! Persistent sessions across a restart of `fleetward start` (SIGTERM, then start again over
//! the same state directory), with paho-mqtt: the session (its subscriptions) and the messages
//! queued while its client was away are in `<state-dir>/sessions.json` in between.

use crate::support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{SENSOR_KEY, Start, examples, tempdir};

/// paho-mqtt: `subscribe` connects with a clean start, subscribes QoS 1 to the telemetry
/// channel and disconnects (its session kept for `expiry` seconds); `resume` connects without
/// a clean start, prints `present <0|1>`, then `got <payload> dup=<0|1>` per message until
/// `expect` came or `wait` seconds passed. `version` is 5 or 311.
const CLIENT: &str = r#"
import sys, time
import paho.mqtt.client as mqtt
version, port, user, key, cid, action, expiry, wait, expect = sys.argv[1:10]
v5 = version == "5"
got = []
def on_connect(c, u, flags, rc, props):
    print("present", int(flags.session_present), flush=True)
def on_message(c, u, m):
    got.append(m.payload)
    print("got", m.payload.decode(), "dup=%d" % int(m.dup), flush=True)
if v5:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
else:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311,
                    clean_session=(action == "subscribe"))
c.username_pw_set(user, key)
c.on_connect = on_connect
c.on_message = on_message
props = None
if v5:
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = int(expiry)
    c.connect("127.0.0.1", int(port), clean_start=(action == "subscribe"), properties=props)
else:
    if action == "subscribe":
        # A clean session first, so that nothing of an earlier run is left; then the
        # persistent one.
        c.connect("127.0.0.1", int(port))
        c.loop_start(); time.sleep(0.5); c.disconnect(); c.loop_stop()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                        protocol=mqtt.MQTTv311, clean_session=False)
        c.username_pw_set(user, key)
        c.on_connect = on_connect
        c.on_message = on_message
    c.connect("127.0.0.1", int(port))
c.loop_start()
if action == "subscribe":
    time.sleep(0.5)
    r = c.subscribe("m/acme/c/telemetry/#", qos=1)
    time.sleep(1.0)
    print("subscribed", r[0], flush=True)
else:
    deadline = time.time() + float(wait)
    while time.time() < deadline and len(got) < int(expect):
        time.sleep(0.1)
    # Anything more (a duplicate) has a moment to arrive.
    time.sleep(1.0)
c.disconnect()
c.loop_stop()
"#;

/// Runs the paho client to its end; its output.
fn client(
    version: &str,
    mqtt: SocketAddr,
    key: &str,
    id: &str,
    action: &str,
    expiry: u32,
    expect: usize,
) -> String {
    let out: Output = Command::new("python3")
        .args([
            "-c",
            CLIENT,
            version,
            &mqtt.port().to_string(),
            "acme/dashboard",
            key,
            id,
            action,
        ])
        .args([expiry.to_string(), "20".to_owned(), expect.to_string()])
        .output()
        .expect("python3 with paho-mqtt (scripts/install-tools.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "[paho {id} {action}] {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn publish(addr: SocketAddr, message: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-u", "acme/sensor-1", "-P", SENSOR_KEY, "-q", "1"])
        .args(["-t", "m/acme/c/telemetry/status", "-m", message])
        .status()
        .expect("mosquitto_pub is installed");
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

/// SIGTERM, and waits for the process to end.
fn stop(mut start: Start) {
    let pid = start.pid().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while start.alive() {
        assert!(
            Instant::now() < deadline,
            "fleetward start did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `fleetward_mqtt_saved_sessions` of the server's `/metrics`.
fn saved_sessions(start: &Start) -> u64 {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{}/metrics", start.admin)])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("fleetward_mqtt_saved_sessions "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fleetward_mqtt_saved_sessions in /metrics: {text}"))
}

/// The example's manifests in `root/manifests`.
fn manifests(root: &std::path::Path) -> std::path::PathBuf {
    let dir = root.join("manifests");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(examples().join("acme.yaml"), dir.join("acme.yaml")).expect("copy");
    dir
}

/// The payloads received, in order.
fn received(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("got "))
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect()
}

fn survives_a_restart(version: &str) {
    let root = tempdir(&format!("restart-{version}"));
    let (manifests, state) = (manifests(&root), root.join("state"));
    let start = Start::run(&manifests, &state);
    let key = start.key_of("acme/dashboard");
    let id = format!("restart-{version}");
    let out = client(version, start.mqtt, &key, &id, "subscribe", 300, 0);
    assert!(out.contains("subscribed"), "{out}");
    for n in 1..=3 {
        publish(start.mqtt, &format!("away-{n}"));
    }
    stop(start);
    let file = state.join("sessions.json");
    assert!(file.exists(), "no session file after SIGTERM");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the session file is the owner's only");
    }

    let start = Start::run(&manifests, &state);
    // Restored before the listeners accept.
    assert_eq!(
        saved_sessions(&start),
        1,
        "the session is back, its client away"
    );
    assert!(!file.exists(), "the session file is removed once restored");
    publish(start.mqtt, "after-restart");
    let out = client(version, start.mqtt, &key, &id, "resume", 300, 4);
    assert!(out.contains("present 1"), "the session is resumed: {out}");
    assert_eq!(
        received(&out),
        ["away-1", "away-2", "away-3", "after-restart"],
        "every message, in order, once"
    );
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn a_v5_persistent_session_and_its_queue_survive_a_restart() {
    survives_a_restart("5");
}

#[test]
fn a_v311_persistent_session_and_its_queue_survive_a_restart() {
    survives_a_restart("311");
}

#[test]
fn a_session_that_expires_during_the_restart_is_gone() {
    let root = tempdir("restart-expired");
    let (manifests, state) = (manifests(&root), root.join("state"));
    let start = Start::run(&manifests, &state);
    let key = start.key_of("acme/dashboard");
    let out = client("5", start.mqtt, &key, "short", "subscribe", 3, 0);
    assert!(out.contains("subscribed"), "{out}");
    publish(start.mqtt, "away");
    stop(start);
    assert!(state.join("sessions.json").exists());
    std::thread::sleep(Duration::from_secs(4));
    let start = Start::run(&manifests, &state);
    assert_eq!(
        saved_sessions(&start),
        0,
        "it expired while the process was down"
    );
    assert!(!state.join("sessions.json").exists());
    let out = client("5", start.mqtt, &key, "short", "resume", 300, 1);
    assert!(
        out.contains("present 0"),
        "an expired session is not resumed: {out}"
    );
    assert!(received(&out).is_empty(), "{out}");
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn a_corrupt_session_file_is_moved_aside_and_start_serves() {
    let root = tempdir("restart-corrupt");
    let (manifests, state) = (manifests(&root), root.join("state"));
    std::fs::create_dir_all(&state).expect("dir");
    std::fs::write(
        state.join("sessions.json"),
        b"{\"version\":1,\"sessions\":[{",
    )
    .expect("write");
    let start = Start::run(&manifests, &state);
    assert!(!state.join("sessions.json").exists());
    let aside = std::fs::read_dir(&state)
        .expect("state dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("sessions.json.corrupt-")
        });
    assert!(aside, "the unreadable file is kept aside");
    // It serves: a client connects and gets a clean session.
    let key = start.key_of("acme/dashboard");
    let out = client("5", start.mqtt, &key, "fresh", "resume", 300, 0);
    assert!(out.contains("present 0"), "{out}");
    std::fs::remove_dir_all(root).ok();
}

/// paho-mqtt v5 as `acme/sensor-1`: connects with a will on the telemetry channel, delayed
/// `delay` seconds, with a session expiry of 300, then goes without a DISCONNECT.
const WILL: &str = r#"
import os, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, key, delay = sys.argv[1:4]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="will-maker", protocol=mqtt.MQTTv5)
c.username_pw_set("acme/sensor-1", key)
wp = Properties(PacketTypes.WILLMESSAGE)
wp.WillDelayInterval = int(delay)
c.will_set("m/acme/c/telemetry/will", "gone", qos=1, properties=wp)
cp = Properties(PacketTypes.CONNECT)
cp.SessionExpiryInterval = 300
c.connect("127.0.0.1", int(port), properties=cp)
c.loop_start()
time.sleep(1.0)
print("connected", flush=True)
os._exit(0)
"#;

#[test]
fn a_waiting_will_survives_a_restart_and_goes_out_after_its_delay() {
    let root = tempdir("restart-will");
    let (manifests, state) = (manifests(&root), root.join("state"));
    let start = Start::run(&manifests, &state);
    let out = Command::new("python3")
        .args(["-c", WILL, &start.mqtt.port().to_string(), SENSOR_KEY, "15"])
        .output()
        .expect("python3 with paho-mqtt");
    assert!(String::from_utf8_lossy(&out.stdout).contains("connected"));
    stop(start);
    let text = std::fs::read_to_string(state.join("sessions.json")).expect("a session file");
    assert!(text.contains("\"wills\":[{"), "the will is written: {text}");
    let start = Start::run(&manifests, &state);
    let key = start.key_of("acme/dashboard");
    let sub = support::mosquitto_sub(start.mqtt, "acme/dashboard", &key, "m/acme/c/telemetry/#");
    // What was left of its 15 s delay, counted across the restart.
    sub.expect("m/acme/c/telemetry/will gone", Duration::from_secs(30));
    std::fs::remove_dir_all(root).ok();
}
