//! Message history in cluster mode under faults, with real parts: a `fleetward dataplane`
//! process on `nats-server -js`, `fleetward writer` processes, a PostgreSQL of its own
//! (scripts/postgres.sh), and paho-mqtt publishing QoS 1 at a steady rate to a channel with
//! history. PostgreSQL is stopped for 30 s and started again, then the writer is killed with
//! SIGKILL mid-stream and started again: every message the dataplane acknowledged (PUBACK
//! 0x00) is stored exactly once, and the reader serves them.

use crate::dataplane_processes::{Dataplane, NatsServer, free_addrs, http_get, key};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// paho-mqtt (v2 API, MQTT 5): publishes `<prefix>-<n>` at `rate` a second for `seconds`,
/// then waits for the last acknowledgements; prints `acked <payload>` or `refused <payload>`
/// per PUBACK.
const LOAD: &str = r#"
import sys, threading, time
import paho.mqtt.client as mqtt
host, port, user, key, topic, rate, seconds, prefix = sys.argv[1:9]
lock = threading.Lock()
pending = {}
def on_publish(client, userdata, mid, rc, props):
    with lock:
        seq = pending.pop(mid, None)
    if seq is not None:
        print(("refused " if rc.is_failure else "acked ") + seq, flush=True)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=prefix, protocol=mqtt.MQTTv5)
c.username_pw_set(user, key)
c.max_inflight_messages_set(1000)
c.on_publish = on_publish
c.connect(host, int(port))
c.loop_start()
start, n = time.time(), 0
while time.time() - start < float(seconds):
    with lock:
        info = c.publish(topic, f"{prefix}-{n}", qos=1)
        pending[info.mid] = f"{prefix}-{n}"
    n += 1
    time.sleep(1 / float(rate))
deadline = time.time() + 10
while pending and time.time() < deadline:
    time.sleep(0.1)
c.disconnect()
c.loop_stop()
"#;

/// A PostgreSQL cluster of this test's own, which it may stop and start.
struct Postgres {
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    fn script(&self, arg: Option<&str>) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("scripts/postgres.sh"))
            .args(arg)
            .env("FLEETWARD_POSTGRES_DIR", &self.dir)
            .env("FLEETWARD_POSTGRES_PORT", self.port.to_string())
            .output()
            .expect("scripts/postgres.sh runs");
        assert!(
            out.status.success(),
            "scripts/postgres.sh {arg:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn start() -> (Self, String) {
        let [addr] = free_addrs();
        let pg = Self {
            dir: std::env::temp_dir().join(format!("fleetward-pg-faults-{}", std::process::id())),
            port: addr.port(),
        };
        let url = pg.script(None);
        (pg, url)
    }

    /// The messages stored, each with how many rows it has.
    fn stored(&self, url: &str) -> BTreeMap<String, u32> {
        let out = Command::new("psql")
            .args([url, "-At", "-c"])
            .arg("SELECT convert_from(payload, 'UTF8') FROM messages")
            .output()
            .expect("psql runs (Debian's postgresql-client)");
        let mut rows = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            *rows.entry(line.to_owned()).or_insert(0) += 1;
        }
        rows
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.script(Some("stop"));
    }
}

/// A `fleetward writer` process, killed when dropped.
struct Writer(Child);

impl Writer {
    fn start(nats: &str, postgres: &str, log: &Path) -> Self {
        let [metrics] = free_addrs();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fleetward"))
            .arg("writer")
            .arg(format!("--nats={nats}"))
            .arg(format!("--postgres-url={postgres}"))
            .arg(format!("--metrics-listen={metrics}"))
            // Outside Kubernetes: no Channels to read, so no sweep.
            .arg("--no-maintenance")
            // A killed writer's batch goes to the next one after this.
            .args(["--ack-wait", "5s"])
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .expect("fleetward writer starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(metrics, "/readyz").is_none_or(|(code, _)| code != 200) {
            assert!(
                Instant::now() < deadline,
                "the writer was not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self(child)
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// paho publishing as `acme/sensor` on the dataplane, for `seconds`.
fn load(mqtt: SocketAddr, prefix: &str, seconds: u32) -> Child {
    Command::new("python3")
        .args(["-c", LOAD])
        .args([&mqtt.ip().to_string(), &mqtt.port().to_string()])
        .args(["acme/sensor", &key("sensor"), "m/acme/c/tele/load", "100"])
        .args([&seconds.to_string(), prefix])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with paho-mqtt (scripts/install-tools.sh)")
}

/// The payloads the load's PUBACKs accepted.
fn acked(load: Child) -> Vec<String> {
    let out = load.wait_with_output().expect("the load ends");
    let text = String::from_utf8_lossy(&out.stdout);
    let acked: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .map(str::to_owned)
        .collect();
    assert!(out.status.success(), "the load failed: {text}");
    acked
}

/// Waits until every acknowledged message is stored, then checks each is stored once.
fn every_acked_is_stored_once(pg: &Postgres, url: &str, acked: &[String], what: &str) {
    assert!(
        acked.len() > 100,
        "{what}: too few messages acknowledged: {}",
        acked.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = pg.stored(url);
        let missing: Vec<&String> = acked.iter().filter(|m| !stored.contains_key(*m)).collect();
        let twice: Vec<(&String, &u32)> = stored.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{what}: stored more than once: {twice:?}");
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {} acknowledged messages never stored, first {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn every_acknowledged_message_is_stored_once_through_a_database_outage_and_a_killed_writer() {
    let (pg, url) = Postgres::start();
    let nats = NatsServer::start();
    let logs = tempfile::tempdir().expect("a temp dir");
    let writer_log = logs.path().join("writer.log");
    let mut writer = Writer::start(&nats.url, &url, &writer_log);
    let reader = [format!("--history-postgres-url={url}")];
    let pod = Dataplane::start_with("pod-h", Some(&nats.url), Some(86_400), &reader);

    // PostgreSQL stopped for 30 s under load, then started again.
    let first = load(pod.mqtt, "outage", 40);
    std::thread::sleep(Duration::from_secs(4));
    pg.script(Some("pause"));
    std::thread::sleep(Duration::from_secs(30));
    pg.script(None);
    let outage = acked(first);
    every_acked_is_stored_once(&pg, &url, &outage, "database outage");

    // The writer killed mid-stream, a new one started 2 s later.
    let second = load(pod.mqtt, "killed", 12);
    std::thread::sleep(Duration::from_secs(4));
    writer.kill();
    std::thread::sleep(Duration::from_secs(2));
    writer = Writer::start(&nats.url, &url, &writer_log);
    let killed = acked(second);
    every_acked_is_stored_once(&pg, &url, &killed, "killed writer");

    // The dataplane's reader serves what the writer stored, newest first.
    let (status, body) = http_get_with_key(pod.http, "/m/acme/c/tele/messages?limit=1");
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let newest = page["messages"][0]["payload"].as_str().unwrap_or_default();
    assert!(newest.starts_with("killed-"), "{body}");
    drop(writer);
}

/// `curl` GET as the reader thing (it may subscribe to `tele`).
fn http_get_with_key(http: SocketAddr, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(["-H", &format!("Authorization: Thing {}", key("reader"))])
        .arg(format!("http://{http}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
