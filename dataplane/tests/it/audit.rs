//! The audit trail through real clients: refusals by mosquitto_pub/mosquitto_sub and curl
//! (MQTT CONNECT, PUBLISH and SUBSCRIBE, HTTP publish, a WebSocket stream, a sign-in) each
//! become an event a tenant's admin reads with `GET /audit`; a flood is cut per subject and
//! what was held back is counted; nobody but the tenant's admins reads it.

use crate::common;

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

/// A `mosquitto_sub -d` (MQTT 5) whose output lines arrive on `lines`; killed on drop.
struct Sub {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Sub {
    /// Subscribes `user` of `tenant` (with its token) to `filter`; returns it and the SUBACK's
    /// reason code.
    async fn start(fx: &Fx, tenant: &str, user: &str, token: &str, filter: &str) -> (Self, u8) {
        use tokio::io::AsyncBufReadExt;
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &fx.mqtt_port(),
            ])
            .args([
                "-V",
                "5",
                "-d",
                "-v",
                "-u",
                &format!("{tenant}/{user}"),
                "-P",
                token,
            ])
            .args(["-t", filter])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub runs");
        let stdout = child.stdout.take().expect("piped");
        let mut sub = Self {
            _child: child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        };
        // `Subscribed (mid: 1): 0`: the granted QoS, or the v5 reason code.
        let line = sub.line_with("Subscribed (mid:").await;
        let code = line
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no reason code in {line:?}"));
        (sub, code)
    }

    /// The next line containing `needle` within 20 s.
    async fn line_with(&mut self, needle: &str) -> String {
        let read = async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("mosquitto_sub ended before a line with {needle:?}");
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("no line with {needle:?} within 20 s"))
    }
}

#[tokio::test]
async fn a_tenants_admins_and_only_they_receive_its_events_on_the_audit_channel() {
    let fx = Fx::start().await;
    let acme_admin = fx.token("acme", "adam").await;
    let globex_admin = fx.token("globex", "adam").await;
    let (mut acme, code) = Sub::start(&fx, "acme", "adam", &acme_admin, "m/acme/c/$audit").await;
    assert_eq!(code, 0, "an admin subscribes to its tenant's audit channel");
    let (mut globex, code) =
        Sub::start(&fx, "globex", "adam", &globex_admin, "m/globex/c/$audit").await;
    assert_eq!(code, 0);

    // A refused publish in acme reaches acme's admin, as the JSON event.
    let stranger = key("acme", "stranger");
    fx.mosquitto_pub(
        ("acme", "stranger"),
        &stranger,
        &["-q", "1", "-t", "m/acme/c/telemetry/x", "-m", "x"],
    )
    .await;
    let line = acme.line_with("m/acme/c/$audit ").await;
    let json = line
        .split_once(' ')
        .map(|(_, j)| j)
        .expect("topic and payload");
    let event: Value = serde_json::from_str(json).expect("the event as JSON");
    assert_eq!(
        (&event["subject"], &event["action"], &event["reason"]),
        (&"stranger".into(), &"publish".into(), &"no_grant".into()),
        "{event}"
    );
    assert_eq!(event["topic"], "m/acme/c/telemetry/x");

    // Not globex's admin: a globex refusal is the first thing its subscription hears.
    let globex_stranger = key("globex", "stranger");
    fx.mosquitto_pub(
        ("globex", "stranger"),
        &globex_stranger,
        &["-q", "1", "-t", "m/globex/c/telemetry/y", "-m", "y"],
    )
    .await;
    let line = globex.line_with("m/globex/c/$audit ").await;
    assert!(line.contains("m/globex/c/telemetry/y"), "{line}");
    assert!(!line.contains("m/acme/"), "{line}");

    // Refused: another tenant's admin, a viewer, a thing (0x87).
    let viewer = fx.token("acme", "vera").await;
    let reader = key("acme", "reader");
    for (tenant, who, secret) in [
        ("globex", "adam", globex_admin.as_str()),
        ("acme", "vera", viewer.as_str()),
        ("acme", "reader", reader.as_str()),
    ] {
        let (_, code) = Sub::start(&fx, tenant, who, secret, "m/acme/c/$audit").await;
        assert_eq!(
            code, 0x87,
            "{tenant}/{who} subscribing to acme's audit channel"
        );
    }
    // Nobody publishes there, an admin included: PUBACK 0x87, and the admin hears only the
    // refusal's own event.
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &fx.mqtt_port(), "-V", "5"])
        .args(["-u", "acme/adam", "-P", &acme_admin, "-q", "1"])
        .args(["-t", "m/acme/c/$audit", "-m", "{\"forged\":true}"])
        .output()
        .await
        .expect("mosquitto_pub runs");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Not authorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = acme
        .line_with("\"subject\":\"adam\",\"action\":\"publish\"")
        .await;
    assert!(line.starts_with("m/acme/c/$audit "), "{line}");
    assert!(line.contains("\"reason\":\"audit_channel\""), "{line}");
    assert!(!line.contains("forged\":true}"), "{line}");
}
