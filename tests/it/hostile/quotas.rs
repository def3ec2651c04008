//! Rows "v5 properties", "delayed wills" and "retained messages" of issue 17: sizes cover
//! whole messages, wills are checked and their delay capped, what a tenant's departed clients
//! leave (waiting wills, saved sessions) is capped per tenant, and retained messages leave with
//! their channel and tenant. Real MQTT v5 clients (paho, `quotas.py`) against `fleetward
//! start` over a manifest directory that the tests edit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::harness::{self, SENSOR_KEY, Scratch, Start, wait_until};

const CLIENT: &str = include_str!("quotas.py");

/// Runs one mode of `quotas.py` as `user`; the events it printed (`connack 0`, `puback 16`,
/// `disconnect 149`, `msg <payload>`, …).
fn paho(addr: SocketAddr, mode: &str, user: &str, key: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            CLIENT,
            mode,
            "127.0.0.1",
            &addr.port().to_string(),
            user,
            key,
        ])
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "quotas.py {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs one mode of `quotas.py` as acme's sensor-1.
fn as_sensor(start: &Start, mode: &str, args: &[&str]) -> Vec<String> {
    paho(start.mqtt, mode, "acme/sensor-1", SENSOR_KEY, args)
}

/// What a new subscriber of acme's telemetry is sent: its SUBACK and any retained message.
fn new_subscriber(start: &Start, id: &str) -> Vec<String> {
    let key = start.key_of("acme/dashboard");
    paho(
        start.mqtt,
        "retained",
        "acme/dashboard",
        &key,
        &["m/acme/c/telemetry/#", id],
    )
}

/// The `/metrics` text.
fn metric_text(start: &Start) -> String {
    let mut s = TcpStream::connect(start.admin).expect("admin listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("sent");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text
}

/// A gauge or counter of `/metrics` (0 when absent).
fn metric(start: &Start, line_prefix: &str) -> f64 {
    metric_text(start)
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn v5_properties_count_towards_the_message_size() {
    let scratch = Scratch::with_examples("properties");
    let mut start = scratch.start(|o| o);
    // acme: maxMessageSize 65536, telemetry 4096. A 4-byte payload with 900 KB of user
    // properties, and one with 65 KB of correlation data: each ends its connection with
    // DISCONNECT 0x95, and neither is retained.
    // A thousand one-byte user properties: over `--max-user-properties` (32), the same answer.
    for (kind, size) in [("user", "900000"), ("corr", "65000"), ("many", "1000")] {
        let events = as_sensor(&start, "publish", &["m/acme/c/telemetry/props", kind, size]);
        assert!(
            events.iter().any(|e| e == "disconnect 149"),
            "{kind}: {events:?}"
        );
        assert!(
            !events.iter().any(|e| e == "puback 0"),
            "{kind}: {events:?}"
        );
    }
    let seen = new_subscriber(&start, "late");
    assert!(seen.iter().any(|e| e == "suback 0"), "{seen:?}");
    assert!(!seen.iter().any(|e| e.starts_with("msg")), "{seen:?}");
    let refusals = metric_text(&start);
    for counted in [
        "fleetward_mqtt_refusals_total{what=\"limit\",reason=\"message_size\"} 2\n",
        "fleetward_mqtt_refusals_total{what=\"limit\",reason=\"user_properties\"} 1\n",
    ] {
        assert!(refusals.contains(counted), "{counted}: {refusals}");
    }
    harness::legitimate_pub_sub_works(&start, Duration::from_secs(5));
    assert!(start.alive());
}

#[test]
fn delayed_wills_are_checked_and_do_not_outlive_their_session() {
    let scratch = Scratch::with_examples("wills");
    let mut start = scratch.start(|o| o);
    let topic = "m/acme/c/telemetry/will";
    // A 65 KB will with delay 0xFFFFFFFF: over acme's sizes, refused at CONNECT with 0x95.
    let events = as_sensor(&start, "wills", &[topic, "65000", "4294967295", "0", "1"]);
    let connacks: Vec<&String> = events.iter().filter(|e| e.starts_with("connack")).collect();
    assert_eq!(connacks, ["connack 149"]);

    // Within the size, with the same delay and no session expiry: 80 dropped sockets (below
    // acme's publish burst of 100, which wills take too). Each will is sent when its session
    // ends, at once; none waits in memory.
    let rss_before = start.rss_kib();
    let events = as_sensor(&start, "wills", &[topic, "4000", "4294967295", "0", "80"]);
    assert_eq!(events.len(), 80);
    assert!(events.iter().all(|e| e == "connack 0"), "{events:?}");
    wait_until(Duration::from_secs(10), "every will published", || {
        metric(&start, "fleetward_mqtt_messages_in_total{tenant=\"acme\"}") >= 80.0
    });
    assert_eq!(metric(&start, "fleetward_mqtt_pending_wills "), 0.0);
    let grown = start.rss_kib().saturating_sub(rss_before);
    // Nothing is held for them; allow the allocator its slack.
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    harness::legitimate_pub_sub_works(&start, Duration::from_secs(5));
    assert!(start.alive());
}

#[test]
fn a_tenant_holds_a_bounded_number_of_waiting_wills_and_saved_sessions() {
    let scratch = Scratch::with_examples("held");
    let mut start = scratch.start(|o| {
        o.args([
            "--max-pending-wills-per-tenant",
            "2",
            "--max-saved-sessions-per-tenant",
            "3",
        ])
    });
    let topic = "m/acme/c/telemetry/will";
    // Five v5 clients with a 60 s will delay and a 60 s session expiry, dropped one after
    // another. Three sessions are kept and the two oldest dropped. At most two wills wait;
    // one that finds no room is published when its connection ends, and a dropped session's
    // waiting will goes out when the session goes (MQTT 5, 3.1.3.2.2). So each of the five
    // is either waiting or published, and no more than two wait. How many wait at the end
    // (none to two) depends on the order in which the pod handles one connection's end and
    // the next one's eviction.
    let events = as_sensor(&start, "wills", &[topic, "100", "60", "60", "5"]);
    assert!(events.iter().all(|e| e == "connack 0"), "{events:?}");
    let pending = || metric(&start, "fleetward_mqtt_pending_wills ");
    let published = || metric(&start, "fleetward_mqtt_messages_in_total{tenant=\"acme\"}");
    wait_until(
        Duration::from_secs(10),
        "wills and sessions settled",
        || {
            metric(&start, "fleetward_mqtt_saved_sessions ") == 3.0
                && pending() + published() == 5.0
        },
    );
    assert!(pending() <= 2.0, "{} waiting", pending());
    let text = metric_text(&start);
    assert!(
        text.contains(
            "fleetward_mqtt_refusals_total{what=\"session\",reason=\"tenant_saved_sessions_full\"} 2\n"
        ),
        "{text}"
    );
    // The oldest client comes back to nothing; the newest finds its session.
    let oldest = as_sensor(&start, "resume", &["hostile-will-0"]);
    assert_eq!(oldest[0], "connack 0 present 0", "{oldest:?}");
    let newest = as_sensor(&start, "resume", &["hostile-will-4"]);
    assert_eq!(newest[0], "connack 0 present 1", "{newest:?}");
    harness::legitimate_pub_sub_works(&start, Duration::from_secs(5));
    assert!(start.alive());
}

/// Rewrites `acme.yaml` without the documents `drop` picks.
fn acme_without(scratch: &Scratch, original: &str, drop: impl Fn(&str) -> bool) {
    let kept: Vec<&str> = original.split("\n---\n").filter(|d| !drop(d)).collect();
    scratch.write("acme.yaml", &kept.join("\n---\n"));
}

fn retain(start: &Start, payload_kind: &str) -> Vec<String> {
    as_sensor(
        start,
        "publish",
        &["m/acme/c/telemetry/state", payload_kind, "0"],
    )
}

#[test]
fn retained_messages_do_not_outlive_their_channel_or_tenant() {
    let scratch = Scratch::with_examples("retained");
    let original = std::fs::read_to_string(scratch.manifests().join("acme.yaml")).expect("acme");
    let mut start = scratch.start(|o| o);
    let within = Duration::from_secs(15);

    // The channel goes and comes back under the same name.
    assert_eq!(retain(&start, "plain"), ["connack 0", "puback 0"]);
    assert!(new_subscriber(&start, "s1").contains(&"msg tiny".to_owned()));
    acme_without(&scratch, &original, |d| d.contains("kind: Channel"));
    let mut n = 0;
    wait_until(within, "the channel is gone", || {
        n += 1;
        new_subscriber(&start, &format!("gone{n}")).contains(&"suback 135".to_owned())
    });
    scratch.write("acme.yaml", &original);
    let mut seen = Vec::new();
    wait_until(within, "the channel is back", || {
        n += 1;
        seen = new_subscriber(&start, &format!("back{n}"));
        seen.contains(&"suback 0".to_owned())
    });
    assert!(!seen.iter().any(|e| e.starts_with("msg")), "{seen:?}");

    // The tenant goes (its whole file) and comes back.
    assert_eq!(retain(&start, "plain"), ["connack 0", "puback 0"]);
    assert!(new_subscriber(&start, "s2").contains(&"msg tiny".to_owned()));
    std::fs::remove_file(scratch.manifests().join("acme.yaml")).expect("remove acme.yaml");
    wait_until(within, "the tenant is gone", || {
        let events = as_sensor(&start, "publish", &["m/acme/c/telemetry/x", "plain", "0"]);
        !events.contains(&"connack 0".to_owned())
    });
    scratch.write("acme.yaml", &original);
    wait_until(within, "the tenant is back", || {
        n += 1;
        seen = new_subscriber(&start, &format!("again{n}"));
        seen.contains(&"suback 0".to_owned())
    });
    assert!(!seen.iter().any(|e| e.starts_with("msg")), "{seen:?}");
    harness::legitimate_pub_sub_works(&start, Duration::from_secs(5));
    assert!(start.alive());
}
