//! The front-end driven by clients no one here wrote: `mosquitto_pub`/`mosquitto_sub`
//! (Debian `mosquitto-clients`) and paho-mqtt (Python). `scripts/install-tools.sh` installs them.

use crate::common;

use std::process::Output;
use std::time::Duration;

use common::{Fixture, key};
use tokio::process::Command;

fn tool_missing(name: &str) -> bool {
    let missing = std::process::Command::new(name)
        .arg("--help")
        .output()
        .is_err();
    if missing {
        // Fail loudly in CI rather than pass without testing.
        panic!("{name} is not installed; run scripts/install-tools.sh");
    }
    false
}

fn auth(tenant: &str, thing: &str) -> Vec<String> {
    vec![
        "-u".into(),
        format!("{tenant}/{thing}"),
        "-P".into(),
        key(tenant, thing),
    ]
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn mosquitto_pub(fx: &Fixture, version: &str, who: (&str, &str), args: &[&str]) -> Output {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &fx.port().to_string(),
            "-V",
            version,
            "-i",
            "pub",
        ])
        .args(auth(who.0, who.1))
        .args(args)
        .output()
        .await
        .expect("mosquitto_pub runs")
}

fn mosquitto_sub(fx: &Fixture, version: &str, who: (&str, &str), args: &[&str]) -> Command {
    let mut c = Command::new("mosquitto_sub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &fx.port().to_string(),
        "-V",
        version,
        "-i",
        "sub",
        "-v",
    ])
    .args(auth(who.0, who.1))
    .args(args)
    .kill_on_drop(true);
    c
}

#[tokio::test]
async fn mosquitto_delivers_within_a_tenant_and_not_across() {
    tool_missing("mosquitto_pub");
    let fx = Fixture::start().await;
    for version in ["mqttv311", "mqttv5"] {
        let acme = mosquitto_sub(
            &fx,
            version,
            ("acme", "reader"),
            &[
                "-t",
                "m/acme/c/telemetry/#",
                "-q",
                "1",
                "-C",
                "1",
                "-W",
                "5",
            ],
        )
        .output();
        let globex = mosquitto_sub(
            &fx,
            version,
            ("globex", "reader"),
            &[
                "-t",
                "m/globex/c/telemetry/#",
                "-q",
                "1",
                "-C",
                "1",
                "-W",
                "2",
            ],
        )
        .output();
        let publish = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            mosquitto_pub(
                &fx,
                version,
                ("acme", "sensor"),
                &["-t", "m/acme/c/telemetry/room1", "-m", "hello", "-q", "1"],
            )
            .await
        };
        let (acme, globex, publish) = tokio::join!(acme, globex, publish);
        let (acme, globex) = (acme.expect("runs"), globex.expect("runs"));
        assert!(publish.status.success(), "{}", text(&publish));
        assert_eq!(
            String::from_utf8_lossy(&acme.stdout),
            "m/acme/c/telemetry/room1 hello\n",
            "{}",
            text(&acme)
        );
        assert!(globex.stdout.is_empty(), "{}", text(&globex));
    }
}

#[tokio::test]
async fn mosquitto_sees_connect_and_subscribe_refusals() {
    tool_missing("mosquitto_sub");
    let fx = Fixture::start().await;
    for version in ["mqttv311", "mqttv5"] {
        let out = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &fx.port().to_string(),
                "-V",
                version,
            ])
            .args([
                "-u",
                "acme/sensor",
                "-P",
                "wrong",
                "-t",
                "m/acme/c/telemetry/x",
                "-m",
                "x",
            ])
            .output()
            .await
            .expect("runs");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        let expected = if version == "mqttv311" {
            "not authorised"
        } else {
            "bad user name or password"
        };
        assert!(err.contains(expected), "{version}: {}", text(&out));
        for filter in ["$SYS/#", "m/+/c/+/#", "#"] {
            let out = mosquitto_sub(&fx, version, ("acme", "reader"), &["-t", filter, "-W", "3"])
                .output()
                .await
                .expect("runs");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("denied"), "{version} {filter}: {}", text(&out));
        }
    }
}

#[tokio::test]
async fn paho_v5_reason_codes_and_delivery() {
    let fx = Fixture::start().await;
    let script = r#"
import json, sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

port, tenant, reader_key, sensor_key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
out = {}
got = threading.Event()
subacked = threading.Event()
pubacked = {}

def on_subscribe(c, userdata, mid, reason_codes, props):
    out["suback"] = [rc.value for rc in reason_codes]
    subacked.set()

def on_message(c, userdata, msg):
    up = msg.properties.UserProperty if hasattr(msg.properties, "UserProperty") else []
    # The dataplane's own metadata (fleetward-*) is checked in http_publish.rs and ws_mqtt.rs.
    up = [p for p in up if not p[0].startswith("fleetward-")]
    out["message"] = [msg.topic, msg.payload.decode(), msg.qos, up]
    got.set()

def on_publish(c, userdata, mid, reason_code, props):
    pubacked[mid] = reason_code.value

r = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-r", protocol=mqtt.MQTTv5)
r.username_pw_set(tenant + "/reader", reader_key)
r.on_subscribe, r.on_message, r.on_publish = on_subscribe, on_message, on_publish
r.connect("127.0.0.1", port)
r.loop_start()
r.subscribe([("m/%s/c/telemetry/#" % tenant, 1), ("$SYS/#", 0), ("m/other/c/telemetry/#", 0)])
subacked.wait(5)

s = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-s", protocol=mqtt.MQTTv5)
s.username_pw_set(tenant + "/sensor", sensor_key)
s.on_publish = on_publish
s.connect("127.0.0.1", port)
s.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = ("k", "v")
s.publish("m/%s/c/telemetry/paho" % tenant, b"from-paho", qos=1, properties=props).wait_for_publish(5)
got.wait(5)
# The reader may not publish: PUBACK 0x87.
info = r.publish("m/%s/c/telemetry/paho" % tenant, b"refused", qos=1)
info.wait_for_publish(5)
time.sleep(0.3)
out["refused_puback"] = pubacked.get(info.mid)
print(json.dumps(out))
r.loop_stop(); s.loop_stop()
"#;
    let out = Command::new("python3")
        .args(["-c", script, &fx.port().to_string(), "acme"])
        .arg(key("acme", "reader"))
        .arg(key("acme", "sensor"))
        .output()
        .await
        .expect("python3 runs");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON from the script");
    assert_eq!(v["suback"], serde_json::json!([1, 135, 135]), "{stdout}");
    assert_eq!(
        v["message"],
        serde_json::json!(["m/acme/c/telemetry/paho", "from-paho", 1, [["k", "v"]]]),
        "{stdout}"
    );
    assert_eq!(v["refused_puback"], serde_json::json!(135), "{stdout}");
}

/// A subtopic deny withholds, it does not refuse wildcards (DESIGN §4): with
/// `deny: ["test/nosubscribe"]` on the reader's grant, `#` is granted, and neither a live nor a
/// retained message on the denied topic reaches it, while the allowed ones do; a subscription
/// to exactly the denied topic is refused.
#[tokio::test]
async fn mosquitto_sub_to_everything_never_hears_a_denied_subtopic() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    tool_missing("mosquitto_sub");
    let mut fx = Fixture::start().await;
    let mut r = common::resources();
    for g in r.grants.iter_mut().filter(|g| g.name == "reader-telemetry") {
        g.deny = vec!["test/nosubscribe".parse().expect("a valid pattern")];
    }
    fx.apply(r);
    let sensor = ("acme", "sensor");
    let denied = "m/acme/c/telemetry/test/nosubscribe";
    for version in ["mqttv311", "mqttv5"] {
        for (topic, payload) in [
            (denied, "retained-secret"),
            ("m/acme/c/telemetry/kept", "retained-ok"),
        ] {
            let out = mosquitto_pub(
                &fx,
                version,
                sensor,
                &["-t", topic, "-m", payload, "-r", "-q", "1"],
            )
            .await;
            assert!(out.status.success(), "{}", text(&out));
        }
        let mut sub = mosquitto_sub(
            &fx,
            version,
            ("acme", "reader"),
            &[
                "-t",
                "m/acme/c/telemetry/#",
                "-q",
                "1",
                "-C",
                "2",
                "-W",
                "30",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts");
        let mut lines = BufReader::new(sub.stdout.take().expect("piped")).lines();
        let next = async |lines: &mut tokio::io::Lines<_>| {
            tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("a line within 30 s")
                .expect("stdout readable")
        };
        // The retained messages come first: only the allowed one. Its arrival also says the
        // subscription is in place.
        assert_eq!(
            next(&mut lines).await.as_deref(),
            Some("m/acme/c/telemetry/kept retained-ok"),
            "{version}"
        );
        // Live: the denied topic first, so that it would be the next line if it got through.
        for (topic, payload) in [
            (denied, "secret"),
            ("m/acme/c/telemetry/test/allowed", "open"),
        ] {
            let out = mosquitto_pub(
                &fx,
                version,
                sensor,
                &["-t", topic, "-m", payload, "-q", "1"],
            )
            .await;
            assert!(out.status.success(), "{}", text(&out));
        }
        assert_eq!(
            next(&mut lines).await.as_deref(),
            Some("m/acme/c/telemetry/test/allowed open"),
            "{version}"
        );
        let done = sub.wait_with_output().await.expect("mosquitto_sub ends");
        assert!(done.status.success(), "{version}: {}", text(&done));

        // Exactly the denied topic lies wholly inside the deny: refused.
        let out = mosquitto_sub(
            &fx,
            version,
            ("acme", "reader"),
            &["-t", denied, "-W", "10"],
        )
        .output()
        .await
        .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("denied"), "{version}: {}", text(&out));
    }
}
