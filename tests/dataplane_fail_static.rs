//! Fail static through the binary: `fleetward dataplane` with a persisted snapshot in
//! `--state-dir` and no operator listening becomes ready and serves real MQTT clients from it.
//! Needs `mosquitto_pub`/`mosquitto_sub` (Debian `mosquitto-clients`, scripts/install-tools.sh).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetward_dataplane::sync::store::{self, Stored};
use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, KeyDigest, Qos, Resources, Snapshot, Tenant, Thing,
};

const VERSION: u64 = 42;

fn key(thing: &str) -> String {
    format!("key-acme-{thing}-0123456789")
}

fn thing(name: &str) -> Thing {
    Thing {
        tenant: "acme".into(),
        name: name.into(),
        key_digests: vec![KeyDigest::of(key(name).as_bytes())],
        disabled: false,
        mountpoint: None,
    }
}

fn grant(thing: &str, actions: Actions) -> Grant {
    Grant {
        tenant: "acme".into(),
        name: format!("{thing}-tele"),
        subject: GrantSubject::Thing(thing.into()),
        channel: "tele".into(),
        actions,
        allow: Vec::new(),
        deny: Vec::new(),
    }
}

/// Tenant `acme`, channel `tele`: `sensor` publishes, `reader` subscribes.
fn persisted_snapshot() -> Stored {
    let resources = Resources {
        tenants: vec![Tenant {
            name: "acme".into(),
            suspended: false,
            limits: Default::default(),
        }],
        things: vec![thing("sensor"), thing("reader")],
        channels: vec![Channel {
            tenant: "acme".into(),
            name: "tele".into(),
            max_qos: Qos::AtLeastOnce,
            retained_allowed: false,
            max_message_size: None,
        }],
        grants: vec![
            grant("sensor", Actions::PUBLISH),
            grant("reader", Actions::SUBSCRIBE),
        ],
        ..Resources::default()
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64;
    Stored {
        snapshot: Arc::new(Snapshot::from_resources(VERSION, resources).expect("valid policy")),
        lineage: "test-lineage".into(),
        updated_unix_ms: now - 30_000,
    }
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("an address")
}

/// Kills the dataplane when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mosquitto(tool: &str, mqtt: SocketAddr, thing: &str, key: &str, args: &[&str]) -> Command {
    let mut c = Command::new(tool);
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &mqtt.port().to_string(),
        "-V",
        "mqttv311",
    ])
    .args(["-i", &format!("{tool}-{thing}")])
    .args(["-u", &format!("acme/{thing}"), "-P", key])
    .args(args);
    c
}

#[test]
fn with_no_operator_the_dataplane_serves_its_persisted_snapshot() {
    for tool in ["mosquitto_pub", "mosquitto_sub"] {
        assert!(
            Command::new(tool).arg("--help").output().is_ok(),
            "{tool} is not installed; run scripts/install-tools.sh"
        );
    }
    let state = tempfile::tempdir().expect("a temp dir");
    store::save(state.path(), &persisted_snapshot()).expect("the snapshot is written");
    // An operator address where nothing listens.
    let operator = format!("http://{}", free_addr());
    let (mqtt, admin) = (free_addr(), free_addr());
    let mut dataplane = Running(
        Command::new(env!("CARGO_BIN_EXE_fleetward"))
            .arg("dataplane")
            .arg(format!("--operator={operator}"))
            .args(["--node-id", "fail-static"])
            .arg("--state-dir")
            .arg(state.path())
            .arg(format!("--mqtt-listen={mqtt}"))
            .arg(format!("--admin-listen={admin}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fleetward dataplane starts"),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = dataplane.0.try_wait().expect("waitable") {
            panic!("fleetward dataplane exited before it was ready: {status}");
        }
        if http_get(admin, "/readyz").is_some_and(|(code, _)| code == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not ready within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http_get(admin, "/metrics").expect("/metrics answers");
    for line in [
        format!("fleetward_policy_snapshot_version {VERSION}"),
        "fleetward_policy_snapshot_from_disk 1".to_owned(),
        "fleetward_policy_sync_connected 0".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }

    // A granted subscriber receives a granted publisher's message.
    let subscriber = mosquitto(
        "mosquitto_sub",
        mqtt,
        "reader",
        &key("reader"),
        &["-t", "m/acme/c/tele/#", "-C", "1", "-W", "10"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("mosquitto_sub runs");
    std::thread::sleep(Duration::from_millis(700));
    let published = mosquitto(
        "mosquitto_pub",
        mqtt,
        "sensor",
        &key("sensor"),
        &["-t", "m/acme/c/tele/temp", "-m", "21.5", "-q", "1"],
    )
    .output()
    .expect("mosquitto_pub runs");
    assert!(published.status.success(), "{}", text(&published));
    let received = subscriber.wait_with_output().expect("mosquitto_sub ends");
    assert!(received.status.success(), "{}", text(&received));
    assert_eq!(String::from_utf8_lossy(&received.stdout).trim(), "21.5");

    // Still fail closed for what the snapshot does not know: a wrong key is refused.
    let refused = mosquitto(
        "mosquitto_pub",
        mqtt,
        "sensor",
        "not-the-key",
        &["-t", "m/acme/c/tele/temp", "-m", "x"],
    )
    .output()
    .expect("mosquitto_pub runs");
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not authorised"),
        "{}",
        text(&refused)
    );
}
