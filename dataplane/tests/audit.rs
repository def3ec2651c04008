//! The audit trail through real clients: refusals by mosquitto_pub/mosquitto_sub and curl
//! (MQTT CONNECT, PUBLISH and SUBSCRIBE, HTTP publish, a WebSocket stream, a sign-in) each
//! become an event a tenant's admin reads with `GET /audit`; a flood is cut per subject and
//! what was held back is counted; nobody but the tenant's admins reads it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{key, resources};
use fleetward_dataplane::audit::BURST_PER_SUBJECT;
use fleetward_dataplane::users::UsersConfig;
use fleetward_dataplane::{Dataplane, RunningDataplane};
use fleetward_policy::{
    Role, SigningAlgorithm, Snapshot, User, generate_signing_key, hash_password,
};
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::watch;

const PASSWORD: &str = "correct horse battery staple";

struct Fx {
    _policy: watch::Sender<Arc<Snapshot>>,
    dataplane: RunningDataplane,
}

impl Fx {
    /// The common fixture plus, in each tenant, `adam` (admin) and `vera` (viewer).
    async fn start() -> Self {
        let hash = hash_password(PASSWORD.as_bytes()).expect("hash");
        let mut r = resources();
        for t in common::TENANTS {
            for (name, role) in [("adam", Role::Admin), ("vera", Role::Viewer)] {
                r.users.push(User {
                    tenant: t.into(),
                    name: name.into(),
                    role,
                    password_hash: Some(hash.clone()),
                    token_epoch: 0,
                    disabled: false,
                });
            }
        }
        r.signing_keys = vec![generate_signing_key(SigningAlgorithm::EdDSA, "k1").expect("key")];
        let snapshot = Snapshot::from_resources(1, r).expect("valid");
        let (policy, rx) = watch::channel(Arc::new(snapshot));
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let dataplane = Dataplane::new(rx)
            .mqtt_listen(local)
            .http_listen(Some(local))
            .node_id(Some("dataplane-audit-test".into()))
            .users(UsersConfig {
                logins_per_user_per_minute: 1000,
                logins_per_address_per_minute: 1000,
                ..UsersConfig::default()
            })
            .start()
            .await
            .expect("dataplane starts");
        Self {
            _policy: policy,
            dataplane,
        }
    }

    fn http(&self) -> String {
        format!(
            "http://{}",
            self.dataplane.http_addr.expect("http listener")
        )
    }

    fn mqtt_port(&self) -> String {
        self.dataplane.mqtt_addr.port().to_string()
    }

    async fn token(&self, tenant: &str, user: &str) -> String {
        let body = serde_json::json!({"tenant": tenant, "username": user, "password": PASSWORD});
        let (status, v) = curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body.to_string(),
            &format!("{}/users/tokens", self.http()),
        ])
        .await;
        assert_eq!(status, 200, "sign-in of {tenant}/{user}: {v}");
        v["access_token"].as_str().expect("token").to_owned()
    }

    /// `GET /audit?<query>` with `token`.
    async fn audit(&self, token: &str, query: &str) -> (u16, Value) {
        curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/audit?{query}", self.http()),
        ])
        .await
    }

    /// The events of `query`, once there are at least `n` (polled: an event is written after
    /// the client got its answer).
    async fn events(&self, token: &str, query: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, page) = self.audit(token, query).await;
            assert_eq!(status, 200, "{page}");
            let events = page["events"].as_array().expect("events").clone();
            if events.len() >= n || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn mosquitto_pub(&self, who: (&str, &str), password: &str, args: &[&str]) {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.mqtt_port(), "-V", "5"])
            .args(["-u", &format!("{}/{}", who.0, who.1), "-P", password])
            .args(args)
            .output()
            .await
            .expect("mosquitto_pub runs (scripts/install-tools.sh)");
        // Refused on purpose: whatever it says, the server's side is what is checked.
        let _ = out;
    }
}

async fn curl(args: &[&str]) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status line");
    (
        code.trim().parse().expect("a status code"),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_refused_publish_is_one_event_and_a_flood_is_cut_with_a_count() {
    let fx = Fx::start().await;
    let admin = fx.token("acme", "adam").await;
    let stranger = key("acme", "stranger");
    fx.mosquitto_pub(
        ("acme", "stranger"),
        &stranger,
        &["-q", "1", "-t", "m/acme/c/telemetry", "-m", "x"],
    )
    .await;
    let events = fx
        .events(&admin, "subject=thing/stranger&action=publish", 1)
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["tenant"], "acme");
    assert_eq!(e["subject_kind"], "thing");
    assert_eq!(e["reason"], "no_grant");
    assert_eq!(e["topic"], "m/acme/c/telemetry");
    assert_eq!(e["protocol"], "mqtt");
    assert_eq!(e["pod"], "dataplane-audit-test");
    assert_eq!(e["suppressed"], 0);
    assert!(
        e["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{e}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(e["time"].as_str().expect("time")).is_ok(),
        "{e}"
    );

    // A flood from one subject (`reader` may not publish): 100 refused publishes, one
    // connection, each answered PUBACK 0x87.
    let reader = key("acme", "reader");
    let lines: String = (0..100).map(|i| format!("{i}\n")).collect();
    let mut flood = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &fx.mqtt_port(),
            "-V",
            "5",
            "-q",
            "1",
        ])
        .args([
            "-u",
            "acme/reader",
            "-P",
            &reader,
            "-t",
            "m/acme/c/commands",
            "-l",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto_pub runs");
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = flood.stdin.take().expect("stdin");
        stdin.write_all(lines.as_bytes()).await.expect("lines");
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), flood.wait()).await;
    let refused = || fx.dataplane.metrics().refusals("publish", "no_grant");
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused() < 101 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused(), 101, "every publish of the flood was refused");
    let flood_events = fx
        .events(&admin, "subject=thing/reader&limit=1000", 0)
        .await;
    assert!(
        !flood_events.is_empty() && flood_events.len() <= BURST_PER_SUBJECT as usize,
        "{} events for 100 refusals",
        flood_events.len()
    );
    let (_, suppressed) = fx.dataplane.metrics().audit_events();
    assert_eq!(suppressed, 100 - flood_events.len() as u64);

    // The subject's next event, once its limit lets one through, says how many were held.
    let mut sent = 100u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    let events = loop {
        fx.mosquitto_pub(
            ("acme", "reader"),
            &reader,
            &["-q", "1", "-t", "m/acme/c/commands", "-m", "again"],
        )
        .await;
        sent += 1;
        let events = fx
            .events(&admin, "subject=thing/reader&limit=1000", 0)
            .await;
        if events.iter().any(|e| e["suppressed"].as_u64() > Some(0)) {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "no event with a suppressed count"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Every refusal is an event or counted in one, and no more than that.
    let accounted: u64 = events
        .iter()
        .map(|e| 1 + e["suppressed"].as_u64().expect("a count"))
        .sum();
    assert_eq!(accounted, sent, "{events:?}");
}

#[tokio::test]
async fn connect_subscribe_http_ws_and_sign_in_refusals_are_audited() {
    let fx = Fx::start().await;
    let admin = fx.token("acme", "adam").await;

    // CONNECT with a wrong key.
    fx.mosquitto_pub(
        ("acme", "sensor"),
        "not-the-key",
        &["-t", "m/acme/c/telemetry", "-m", "x"],
    )
    .await;
    let e = fx.events(&admin, "action=connect", 1).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (&e[0]["subject"], &e[0]["reason"], &e[0]["protocol"]),
        (&"sensor".into(), &"bad_credential".into(), &"mqtt".into())
    );

    // SUBSCRIBE where `sensor` may only publish.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &fx.mqtt_port(), "-V", "5"])
        .args(["-u", "acme/sensor", "-P", &key("acme", "sensor")])
        .args(["-t", "m/acme/c/telemetry", "-C", "1", "-W", "3"])
        .output()
        .await
        .expect("mosquitto_sub runs");
    let _ = out;
    let e = fx
        .events(&admin, "action=subscribe&subject=sensor", 1)
        .await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["reason"], "no_grant");
    assert_eq!(e[0]["topic"], "m/acme/c/telemetry");

    // HTTP publish where `reader` may only subscribe.
    let basic = format!("acme/reader:{}", key("acme", "reader"));
    let (status, _) = curl(&[
        "-u",
        &basic,
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        "x",
        &format!("{}/m/acme/c/telemetry", fx.http()),
    ])
    .await;
    assert_eq!(status, 403);
    let e = fx.events(&admin, "subject=reader&action=publish", 1).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (&e[0]["protocol"], &e[0]["reason"]),
        (&"http".into(), &"no_grant".into())
    );

    // A WebSocket stream where `sensor` may not subscribe.
    let basic = format!("acme/sensor:{}", key("acme", "sensor"));
    let (status, _) = curl(&[
        "-u",
        &basic,
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        &format!("{}/m/acme/c/commands", fx.http()),
    ])
    .await;
    assert_eq!(status, 403);
    let e = fx
        .events(&admin, "subject=sensor&action=subscribe", 2)
        .await;
    let ws: Vec<&Value> = e.iter().filter(|e| e["protocol"] == "ws").collect();
    assert_eq!(ws.len(), 1, "{e:?}");
    assert_eq!(ws[0]["topic"], "m/acme/c/commands");

    // A sign-in with a wrong password.
    let body = serde_json::json!({"tenant": "acme", "username": "vera", "password": "wrong"});
    let (status, _) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body.to_string(),
        &format!("{}/users/tokens", fx.http()),
    ])
    .await;
    assert_eq!(status, 401);
    let e = fx.events(&admin, "action=sign_in", 1).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (&e[0]["subject_kind"], &e[0]["subject"], &e[0]["reason"]),
        (&"user".into(), &"vera".into(), &"bad_credential".into())
    );

    // Filters by reason and time.
    let (_, page) = fx
        .audit(&admin, "reason=bad_credential&since=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2), "{page}");
    let (status, _) = fx.audit(&admin, "since=yesterday").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn only_a_tenants_admin_reads_its_audit() {
    let fx = Fx::start().await;
    fx.mosquitto_pub(
        ("acme", "stranger"),
        &key("acme", "stranger"),
        &["-q", "1", "-t", "m/acme/c/telemetry", "-m", "x"],
    )
    .await;
    let acme_admin = fx.token("acme", "adam").await;
    assert_eq!(fx.events(&acme_admin, "", 1).await.len(), 1);

    // No token, a thing's key, a viewer: refused.
    let (status, _) = curl(&[&format!("{}/audit", fx.http())]).await;
    assert_eq!(status, 401);
    let thing = format!("acme/sensor:{}", key("acme", "sensor"));
    let (status, _) = curl(&["-u", &thing, &format!("{}/audit", fx.http())]).await;
    assert_eq!(status, 403);
    let viewer = fx.token("acme", "vera").await;
    let (status, body) = fx.audit(&viewer, "").await;
    assert_eq!(status, 403, "{body}");

    // Another tenant's admin sees none of acme's events, and may not ask for them.
    let globex_admin = fx.token("globex", "adam").await;
    let (status, page) = fx.audit(&globex_admin, "").await;
    assert_eq!(status, 200);
    assert_eq!(page["events"], Value::Array(Vec::new()), "{page}");
    let (status, _) = fx.audit(&globex_admin, "tenant=acme").await;
    assert_eq!(status, 403);
}
