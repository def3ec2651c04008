//! `fleetward dataplane` as processes, with real MQTT clients:
//! - fail static: with a persisted snapshot in `--state-dir` and no operator listening, a
//!   dataplane becomes ready and serves from it;
//! - two dataplane processes on one `nats-server`: delivery both ways, each message once,
//!   retained messages across pods;
//! - a user signs in on one pod (curl) and subscribes with the token on the other
//!   (mosquitto_sub); refresh families are shared, so a replay on either pod is caught; no
//!   token reaches the logs.
//!
//! Needs `mosquitto_pub`/`mosquitto_sub` (Debian `mosquitto-clients`) and `nats-server` (Debian
//! `nats-server`); scripts/install-tools.sh installs both.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetward_dataplane::sync::store::{self, Stored};
use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, KeyDigest, Qos, Resources, Role, SigningAlgorithm,
    SigningKey, Snapshot, Tenant, Thing, User, generate_signing_key, hash_password,
};

const VERSION: u64 = 42;
const PASSWORD: &str = "alice's long password";

/// One signing key and one password hash for every pod of a test run.
fn shared_secrets() -> &'static (SigningKey, String) {
    static SECRETS: std::sync::OnceLock<(SigningKey, String)> = std::sync::OnceLock::new();
    SECRETS.get_or_init(|| {
        (
            generate_signing_key(SigningAlgorithm::EdDSA, "k-test").expect("a key"),
            hash_password(PASSWORD.as_bytes()).expect("a hash"),
        )
    })
}

pub(crate) fn key(thing: &str) -> String {
    format!("key-acme-{thing}-0123456789")
}

fn thing(name: &str) -> Thing {
    Thing {
        x509: Default::default(),
        credential_mode: Default::default(),
        attributes: Default::default(),
        tenant: "acme".into(),
        name: name.into(),
        key_digests: vec![KeyDigest::of(key(name).as_bytes())],
        disabled: false,
        mountpoint: None,
        max_connections: None,
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

/// Tenant `acme`, channel `tele`: `sensor` publishes, `reader` and user `alice` subscribe.
/// The persisted snapshot, its channel `tele` keeping history for `history_secs`.
fn persisted_snapshot_with(history_secs: Option<u64>) -> Stored {
    let (signing_key, hash) = shared_secrets();
    let resources = Resources {
        tenants: vec![Tenant::named("acme")],
        things: vec![thing("sensor"), thing("reader")],
        channels: vec![Channel {
            history_retention_secs: history_secs,
            uid: String::new(),
            tenant: "acme".into(),
            name: "tele".into(),
            max_qos: Qos::AtLeastOnce,
            retained_allowed: true,
            delivery_metadata: false,
            max_message_size: None,
        }],
        grants: vec![
            grant("sensor", Actions::PUBLISH),
            grant("reader", Actions::SUBSCRIBE),
            Grant {
                subject: GrantSubject::User("alice".into()),
                ..grant("alice", Actions::SUBSCRIBE)
            },
        ],
        users: vec![User {
            tenant: "acme".into(),
            name: "alice".into(),
            role: Role::Member,
            password_hash: Some(hash.clone()),
            token_epoch: 0,
            disabled: false,
        }],
        signing_keys: vec![signing_key.clone()],
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

/// `N` distinct free addresses: all held until all are picked.
pub(crate) fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("an address"))
}

pub(crate) fn free_addr() -> SocketAddr {
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

/// A `fleetward dataplane` process with its persisted snapshot and every listener on a free
/// port, ready (`/readyz` 200) when returned.
pub(crate) struct Dataplane {
    _process: Running,
    pub(crate) mqtt: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) http: SocketAddr,
    /// Everything the process logged (at debug level).
    log: std::path::PathBuf,
    _state: tempfile::TempDir,
}

impl Dataplane {
    fn start(node_id: &str, nats: Option<&str>) -> Self {
        Self::start_with(node_id, nats, None, &[])
    }

    /// [`Dataplane::start`] with `tele` keeping history for `history_secs`, and `extra` flags.
    pub(crate) fn start_with(
        node_id: &str,
        nats: Option<&str>,
        history_secs: Option<u64>,
        extra: &[String],
    ) -> Self {
        let mut pod = Self::spawn(node_id, nats, history_secs, extra);
        pod.wait_ready(node_id);
        pod
    }

    /// [`Dataplane::start_with`] without waiting for it to be ready.
    pub(crate) fn spawn(
        node_id: &str,
        nats: Option<&str>,
        history_secs: Option<u64>,
        extra: &[String],
    ) -> Self {
        let state = tempfile::tempdir().expect("a temp dir");
        store::save(state.path(), &persisted_snapshot_with(history_secs))
            .expect("the snapshot is written");
        // An operator address where nothing listens, and the listeners: picked together, so
        // they are distinct.
        let [operator, mqtt, admin, http] = free_addrs();
        let operator = format!("http://{operator}");
        let log = state.path().join("dataplane.log");
        let log_file = std::fs::File::create(&log).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_fleetward"));
        command
            .arg("dataplane")
            .arg(format!("--operator={operator}"))
            .args(["--node-id", node_id])
            .arg("--state-dir")
            .arg(state.path())
            .arg(format!("--mqtt-listen={mqtt}"))
            .arg(format!("--admin-listen={admin}"))
            .arg(format!("--http-listen={http}"))
            .env("RUST_LOG", "debug")
            .stdout(log_file.try_clone().expect("the log file"))
            .stderr(log_file);
        if let Some(nats) = nats {
            command.arg(format!("--nats={nats}"));
        }
        command.args(extra);
        let process = Running(command.spawn().expect("fleetward dataplane starts"));
        Self {
            _process: process,
            mqtt,
            admin,
            http,
            log,
            _state: state,
        }
    }

    /// Waits (30 s at most) for `/readyz` to answer 200.
    pub(crate) fn wait_ready(&mut self, node_id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self._process.0.try_wait().expect("waitable") {
                panic!(
                    "fleetward dataplane {node_id} exited before it was ready: {status}\n{}",
                    self.log_text()
                );
            }
            if http_get(self.admin, "/readyz").is_some_and(|(code, _)| code == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "{node_id} not ready within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the process logged so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process, to signal and wait for.
    pub(crate) fn child(&mut self) -> &mut Child {
        &mut self._process.0
    }
}

pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
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
    let dataplane = Dataplane::start("fail-static", None);
    let (mqtt, admin) = (dataplane.mqtt, dataplane.admin);
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
    let subscriber = reader_sub(mqtt, &["-t", "m/acme/c/tele/#", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs");
    std::thread::sleep(Duration::from_millis(700));
    publish_on(&dataplane, "m/acme/c/tele/temp", "21.5", &[]);
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

/// A `nats-server` with JetStream on a free 127.0.0.1 port, killed when dropped.
pub(crate) struct NatsServer {
    _process: Running,
    pub(crate) url: String,
    _store: tempfile::TempDir,
}

impl NatsServer {
    pub(crate) fn start() -> Self {
        Self::start_on(free_addr())
    }

    /// A `nats-server` on `addr`.
    pub(crate) fn start_on(addr: SocketAddr) -> Self {
        let store = tempfile::tempdir().expect("a temp dir");
        let process = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-js"])
            .args(["-p", &addr.port().to_string()])
            .arg("-sd")
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nats-server ({e}); run scripts/install-tools.sh")
            });
        let process = Running(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server not listening in 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            _process: process,
            url: format!("nats://{addr}"),
            _store: store,
        }
    }
}

/// `mosquitto_sub` as acme/reader on the dataplane at `mqtt`.
fn reader_sub(mqtt: SocketAddr, args: &[&str]) -> Command {
    mosquitto("mosquitto_sub", mqtt, "reader", &key("reader"), args)
}

/// A `mosquitto_sub` on `pod` as acme/reader, printing `topic payload` lines for `wait_s`.
fn subscribe_for(pod: &Dataplane, id: &str, wait_s: u32) -> Child {
    mosquitto(
        "mosquitto_sub",
        pod.mqtt,
        "reader",
        &key("reader"),
        &[
            "-t",
            "m/acme/c/tele/#",
            "-v",
            "-q",
            "1",
            "-W",
            &wait_s.to_string(),
        ],
    )
    .args(["-i", id])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("mosquitto_sub runs")
}

fn publish_on(pod: &Dataplane, topic: &str, message: &str, extra: &[&str]) {
    let out = mosquitto(
        "mosquitto_pub",
        pod.mqtt,
        "sensor",
        &key("sensor"),
        &["-t", topic, "-m", message, "-q", "1"],
    )
    .args(extra)
    .output()
    .expect("mosquitto_pub runs");
    assert!(out.status.success(), "{}", text(&out));
}

fn sorted_lines(out: &Output) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn two_dataplane_processes_on_nats_deliver_both_ways_once_and_share_retained_messages() {
    let nats = NatsServer::start();
    let a = Dataplane::start("pod-a", Some(&nats.url));
    let b = Dataplane::start("pod-b", Some(&nats.url));

    // A subscriber on each pod for the whole channel; each pod then subscribes on NATS.
    let on_a = subscribe_for(&a, "reader-on-a", 6);
    let on_b = subscribe_for(&b, "reader-on-b", 6);
    std::thread::sleep(Duration::from_millis(1500));
    for i in 1..=3 {
        publish_on(&a, "m/acme/c/tele/from-a", &format!("a-{i}"), &[]);
        publish_on(&b, "m/acme/c/tele/from-b", &format!("b-{i}"), &[]);
    }
    let expected: Vec<String> = (1..=3)
        .map(|i| format!("m/acme/c/tele/from-a a-{i}"))
        .chain((1..=3).map(|i| format!("m/acme/c/tele/from-b b-{i}")))
        .collect();
    for (pod, sub) in [("a", on_a), ("b", on_b)] {
        let out = sub.wait_with_output().expect("mosquitto_sub ends");
        // Every message once: its own pod's from the router, the other pod's over NATS, and
        // none of its own back from NATS.
        assert_eq!(
            sorted_lines(&out),
            expected,
            "subscriber on pod {pod}: {}",
            text(&out)
        );
    }
    let (_, metrics) = http_get(a.admin, "/metrics").expect("/metrics answers");
    assert!(
        metrics.lines().any(|l| l == "fleetward_bus_connected 1"),
        "pod a is on the bus:\n{metrics}"
    );

    // A retained message published on pod A reaches a new subscriber on pod B.
    publish_on(&a, "m/acme/c/tele/state", "on", &["-r"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = reader_sub(b.mqtt, &["-t", "m/acme/c/tele/state", "-C", "1", "-W", "2"])
            .args(["-i", "late-reader-on-b"])
            .output()
            .expect("mosquitto_sub runs");
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "on");
            break;
        }
        // The retained copy travels through JetStream KV; give it a moment, not forever.
        assert!(
            Instant::now() < deadline,
            "the retained message never reached pod b: {}",
            text(&out)
        );
    }
}

/// `curl` POSTing JSON; the status and the JSON answer.
fn post_json(addr: SocketAddr, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data-binary", &body.to_string()])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').expect("a status line");
    (
        code.trim().parse().expect("a status code"),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn a_user_signs_in_on_one_pod_and_uses_its_tokens_on_the_other() {
    let nats = NatsServer::start();
    let a = Dataplane::start("users-a", Some(&nats.url));
    let b = Dataplane::start("users-b", Some(&nats.url));

    // Sign in over HTTP on pod A.
    let login = serde_json::json!({"tenant": "acme", "username": "alice", "password": PASSWORD});
    let (status, tokens) = post_json(a.http, "/users/tokens", &login);
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned();
    let first_refresh = tokens["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();

    // Subscribe over MQTT on pod B with the token; a thing publishes on pod A.
    let subscriber = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.mqtt.port().to_string(),
            "-V",
            "mqttv5",
        ])
        .args(["-i", "alice-on-b", "-u", "acme/alice", "-P", &access])
        .args(["-t", "m/acme/c/tele/#", "-v", "-C", "1", "-W", "15"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs");
    std::thread::sleep(Duration::from_millis(1500));
    publish_on(&a, "m/acme/c/tele/temp", "22.5", &[]);
    let received = subscriber.wait_with_output().expect("mosquitto_sub ends");
    assert!(received.status.success(), "{}", text(&received));
    assert_eq!(
        String::from_utf8_lossy(&received.stdout).trim(),
        "m/acme/c/tele/temp 22.5"
    );

    // The refresh family lives in NATS: refreshed on B, the old token is a replay on A.
    let (status, renewed) = post_json(
        b.http,
        "/users/tokens/refresh",
        &serde_json::json!({ "refresh_token": first_refresh }),
    );
    assert_eq!(status, 200, "{renewed}");
    let second_refresh = renewed["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_owned();
    let (status, replay) = post_json(
        a.http,
        "/users/tokens/refresh",
        &serde_json::json!({ "refresh_token": first_refresh }),
    );
    assert_eq!(status, 401, "{replay}");
    let (status, _) = post_json(
        b.http,
        "/users/tokens/refresh",
        &serde_json::json!({ "refresh_token": second_refresh }),
    );
    assert_eq!(status, 401, "the family is revoked on every pod");

    // Tokens and passwords never reach the logs, even at debug level.
    for pod in [&a, &b] {
        let log = std::fs::read_to_string(&pod.log).expect("the log");
        assert!(log.contains("DEBUG"), "the pod logged at debug level");
        let signature = access.rsplit('.').next().expect("a signature");
        for secret in [signature, &first_refresh, &second_refresh, PASSWORD] {
            assert!(
                !log.contains(secret),
                "a secret is in {}",
                pod.log.display()
            );
        }
    }
}
