//! Users with real tokens through real clients: sign-in and refresh with curl, the access token
//! as MQTT password (mosquitto_sub/pub, rumqttc), as HTTP `Bearer` and as WebSocket
//! subprotocol; every refusal: expired, forged, other tenant, replayed refresh, revoked epoch,
//! disabled user, group change, viewer publish, key rotation, the sign-in limit.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{key, resources, v5};
use fleetward_dataplane::users::UsersConfig;
use fleetward_dataplane::{Dataplane, MqttConfig, RunningDataplane};
use fleetward_policy::tokens::{Keyring, TokenSettings};
use fleetward_policy::{
    Actions, Grant, GrantSubject, Group, Member, Resources, Role, SigningAlgorithm, SigningKey,
    Snapshot, SubjectKind, User, generate_signing_key, hash_password,
};
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(3);
const PASSWORD: &str = "correct horse battery staple";

fn user(tenant: &str, name: &str, role: Role, hash: &str) -> User {
    User {
        tenant: tenant.into(),
        name: name.into(),
        role,
        password_hash: Some(hash.to_owned()),
        token_epoch: 0,
        disabled: false,
    }
}

fn user_grant(tenant: &str, name: &str, subject: GrantSubject, channel: &str, a: Actions) -> Grant {
    Grant {
        tenant: tenant.into(),
        name: name.into(),
        subject,
        channel: channel.into(),
        actions: a,
        allow: Vec::new(),
        deny: Vec::new(),
    }
}

/// The common fixture plus users: in each tenant `ann` (member, subscribes to `telemetry`),
/// `vera` (viewer), `adam` (admin); in acme, group `ops` (ann and the thing `stranger`) may
/// subscribe to `commands`. One Ed25519 signing key.
fn users_resources(hash: &str, keys: Vec<SigningKey>) -> Resources {
    let mut r = resources();
    for t in common::TENANTS {
        r.users.push(user(t, "ann", Role::Member, hash));
        r.users.push(user(t, "vera", Role::Viewer, hash));
        r.users.push(user(t, "adam", Role::Admin, hash));
        r.grants.push(user_grant(
            t,
            "ann-telemetry",
            GrantSubject::User("ann".into()),
            "telemetry",
            Actions::SUBSCRIBE,
        ));
    }
    r.groups.push(Group {
        tenant: "acme".into(),
        name: "ops".into(),
        members: vec![
            Member {
                kind: SubjectKind::User,
                name: "ann".into(),
            },
            Member {
                kind: SubjectKind::Thing,
                name: "stranger".into(),
            },
        ],
    });
    r.grants.push(user_grant(
        "acme",
        "ops-commands",
        GrantSubject::Group("ops".into()),
        "commands",
        Actions::SUBSCRIBE,
    ));
    r.signing_keys = keys;
    r
}

struct Users {
    policy: watch::Sender<Arc<Snapshot>>,
    dataplane: RunningDataplane,
    resources: Resources,
    version: u64,
}

impl Users {
    async fn start(config: UsersConfig) -> Self {
        let hash = hash_password(PASSWORD.as_bytes()).expect("hash");
        let key = generate_signing_key(SigningAlgorithm::EdDSA, "k1").expect("key");
        let resources = users_resources(&hash, vec![key]);
        let snapshot = Snapshot::from_resources(1, resources.clone()).expect("valid");
        let (policy, rx) = watch::channel(Arc::new(snapshot));
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let dataplane = Dataplane::new(rx)
            .mqtt_listen(local)
            .http_listen(Some(local))
            .admin_listen(Some(local))
            .mqtt_config(MqttConfig::default())
            .users(config)
            .start()
            .await
            .expect("dataplane starts");
        Self {
            policy,
            dataplane,
            resources,
            version: 1,
        }
    }

    async fn default() -> Self {
        Self::start(UsersConfig {
            logins_per_user_per_minute: 1000,
            logins_per_address_per_minute: 1000,
            ..UsersConfig::default()
        })
        .await
    }

    fn http(&self) -> SocketAddr {
        self.dataplane.http_addr.expect("http listener")
    }

    fn mqtt(&self) -> SocketAddr {
        self.dataplane.mqtt_addr
    }

    fn change(&mut self, f: impl FnOnce(&mut Resources)) {
        f(&mut self.resources);
        self.version += 1;
        let s = Snapshot::from_resources(self.version, self.resources.clone()).expect("valid");
        self.policy.send_replace(Arc::new(s));
    }

    fn user_mut<'a>(r: &'a mut Resources, tenant: &str, name: &str) -> &'a mut User {
        r.users
            .iter_mut()
            .find(|u| u.tenant == tenant && u.name == name)
            .expect("fixture user")
    }

    async fn login(&self, tenant: &str, user: &str, password: &str) -> (u16, Value) {
        let body = serde_json::json!({"tenant": tenant, "username": user, "password": password});
        curl_json(self.http(), "POST", "/users/tokens", &[], Some(&body)).await
    }

    async fn tokens(&self, tenant: &str, user: &str) -> (String, String) {
        let (status, body) = self.login(tenant, user, PASSWORD).await;
        assert_eq!(status, 200, "sign-in of {tenant}/{user}: {body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
        (
            body["access_token"].as_str().expect("access").to_owned(),
            body["refresh_token"].as_str().expect("refresh").to_owned(),
        )
    }

    async fn refresh(&self, token: &str) -> (u16, Value) {
        let body = serde_json::json!({ "refresh_token": token });
        curl_json(
            self.http(),
            "POST",
            "/users/tokens/refresh",
            &[],
            Some(&body),
        )
        .await
    }
}

/// curl, with the status code on the last line of its output.
async fn curl(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    body: Option<&str>,
) -> (u16, String, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-X", method, "-D", "-", "-w", "\n%{http_code}"]);
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    c.arg(format!("http://{addr}{path}"));
    let out = c.output().await.expect("curl runs (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').expect("status line");
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.trim().parse().expect("a status code"),
        head.to_owned(),
        body.to_owned(),
    )
}

async fn curl_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(Value::to_string);
    let (status, _, text) = curl(addr, method, path, headers, body.as_deref()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}")]
}

async fn http_publish(addr: SocketAddr, token: &str, topic: &str, body: &str) -> (u16, String) {
    let (status, _, text) = curl(
        addr,
        "POST",
        &format!("/{topic}"),
        &bearer(token),
        Some(body),
    )
    .await;
    (status, text)
}

fn token_options(
    addr: SocketAddr,
    tenant: &str,
    user: &str,
    token: &str,
    id: &str,
) -> v5::MqttOptions {
    let mut o = v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(format!("{tenant}/{user}"), token);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

async fn publish_as_sensor(addr: SocketAddr, tenant: &str, topic: &str, payload: &str) {
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-V",
            "5",
            "-q",
            "1",
        ])
        .args([
            "-u",
            &format!("{tenant}/sensor"),
            "-P",
            &key(tenant, "sensor"),
        ])
        .args(["-t", topic, "-m", payload])
        .output()
        .await
        .expect("mosquitto_pub runs (scripts/install-tools.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_signed_in_user_uses_the_token_over_mqtt_http_and_websocket() {
    let fx = Users::default().await;
    let (ann, _) = fx.tokens("acme", "ann").await;

    // mosquitto_sub with the token as password receives what a thing publishes.
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &fx.mqtt().port().to_string(),
            "-V",
            "5",
        ])
        .args([
            "-u",
            "acme/ann",
            "-P",
            &ann,
            "-t",
            "m/acme/c/telemetry/#",
            "-v",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs");
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_as_sensor(fx.mqtt(), "acme", "m/acme/c/telemetry/room1", "21.5").await;
    let out = tokio::time::timeout(Duration::from_secs(12), async {
        let mut s = String::new();
        use tokio::io::AsyncReadExt as _;
        sub.stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut s)
            .await
            .expect("read");
        s
    })
    .await
    .expect("mosquitto_sub ends");
    assert_eq!(out.trim(), "m/acme/c/telemetry/room1 21.5");

    // An admin publishes over HTTP with Bearer; a viewer's stream over WebSocket sees it.
    let (adam, _) = fx.tokens("acme", "adam").await;
    let (vera, _) = fx.tokens("acme", "vera").await;
    let url = format!("ws://{}/m/acme/c/commands/%23", fx.http());
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("fleetward.v1, fleetward.bearer.{vera}")
            .parse()
            .expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("stream opens");
    let (status, body) = http_publish(fx.http(), &adam, "m/acme/c/commands/valve", "open").await;
    assert_eq!(status, 202, "{body}");
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame")
        .expect("open")
        .expect("frame");
    let v: Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
    assert_eq!(v["topic"], "m/acme/c/commands/valve", "{v}");
    let _ = ws.close(None).await;

    // The JWKS lists the key, public half only.
    let (status, jwks) = curl_json(fx.http(), "GET", "/.well-known/jwks.json", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"][0]["kid"], "k1", "{jwks}");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private part: {jwks}"
    );
    assert_eq!(fx.dataplane.metrics().user_tokens("login", "ok"), 3);
}

#[tokio::test]
async fn expired_forged_and_other_tenant_tokens_are_refused() {
    let fx = Users::default().await;
    let settings = TokenSettings::default();
    let snapshot = fx.policy.borrow().clone();
    let ring = Keyring::new(snapshot.signing_keys()).expect("ring");
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let (expired, _) = ring
        .issue(&settings, "acme", "ann", 0, an_hour_ago)
        .expect("issued");
    // Same kid, another key: a forgery.
    let other = Keyring::new(&[generate_signing_key(SigningAlgorithm::EdDSA, "k1").expect("key")])
        .expect("ring");
    let (forged, _) = other
        .issue(&settings, "acme", "ann", 0, SystemTime::now())
        .expect("issued");
    let (globex_ann, _) = fx.tokens("globex", "ann").await;
    let (acme_vera, _) = fx.tokens("acme", "vera").await;

    for (what, username, token) in [
        ("expired", "acme/ann", expired.as_str()),
        ("forged", "acme/ann", forged.as_str()),
        ("another tenant's", "acme/ann", globex_ann.as_str()),
        ("another user's", "acme/ann", acme_vera.as_str()),
    ] {
        let (tenant, name) = username.split_once('/').expect("tenant/user");
        let refused = v5::connect_with(token_options(fx.mqtt(), tenant, name, token, "c"))
            .await
            .err();
        assert_eq!(
            refused.as_deref(),
            Some("BadUserNamePassword"),
            "{what} token over MQTT"
        );
    }
    for (what, token) in [("expired", &expired), ("forged", &forged)] {
        let (status, body) = http_publish(fx.http(), token, "m/acme/c/telemetry/x", "1").await;
        assert_eq!(status, 401, "{what} token over HTTP: {body}");
        assert!(
            !body.contains(token.as_str()),
            "the token is not echoed: {body}"
        );
    }
    // A globex token is globex's: it may not reach acme's channels.
    let (globex_adam, _) = fx.tokens("globex", "adam").await;
    let (status, _) = http_publish(fx.http(), &globex_adam, "m/acme/c/telemetry/x", "1").await;
    assert_eq!(status, 403);
    let (status, _) = http_publish(fx.http(), &globex_adam, "m/globex/c/telemetry/x", "1").await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn a_refresh_token_works_once_and_its_replay_revokes_the_sign_in() {
    let fx = Users::default().await;
    let (_, first) = fx.tokens("acme", "ann").await;
    let (status, body) = fx.refresh(&first).await;
    assert_eq!(status, 200, "{body}");
    let second = body["refresh_token"].as_str().expect("rotated").to_owned();
    assert_ne!(second, first);
    let access = body["access_token"].as_str().expect("access").to_owned();
    assert!(
        v5::connect_with(token_options(fx.mqtt(), "acme", "ann", &access, "a"))
            .await
            .is_ok()
    );

    // The first token again: refused, and the family with it.
    let (status, body) = fx.refresh(&first).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already used"),
        "{body}"
    );
    let (status, _) = fx.refresh(&second).await;
    assert_eq!(
        status, 401,
        "the current token of a replayed family is revoked too"
    );
    let (status, _) = fx.refresh("not-a-token").await;
    assert_eq!(status, 401);
    assert_eq!(fx.dataplane.metrics().user_tokens("refresh", "replayed"), 2);
}

#[tokio::test]
async fn raising_the_epoch_revokes_every_token_and_ends_live_sessions() {
    let mut fx = Users::default().await;
    let (access, refresh) = fx.tokens("acme", "ann").await;
    let mut live = v5::connect_with(token_options(fx.mqtt(), "acme", "ann", &access, "live"))
        .await
        .expect("connects");
    fx.change(|r| Users::user_mut(r, "acme", "ann").token_epoch = 1);
    let closed = live.closed_within(Duration::from_secs(1)).await;
    assert!(closed.is_some(), "the live session ends within 1 s");
    let refused = v5::connect_with(token_options(fx.mqtt(), "acme", "ann", &access, "again"))
        .await
        .err();
    assert_eq!(refused.as_deref(), Some("NotAuthorized"));
    let (status, _) = http_publish(fx.http(), &access, "m/acme/c/telemetry/x", "1").await;
    assert_eq!(status, 401);
    let (status, _) = fx.refresh(&refresh).await;
    assert_eq!(status, 401, "a refresh token of the old epoch is refused");
    // A new sign-in carries the new epoch and works.
    let (fresh, _) = fx.tokens("acme", "ann").await;
    assert!(
        v5::connect_with(token_options(fx.mqtt(), "acme", "ann", &fresh, "new"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_disabled_user_is_cut_off_and_cannot_sign_in() {
    let mut fx = Users::default().await;
    let (access, _) = fx.tokens("acme", "ann").await;
    let mut live = v5::connect_with(token_options(fx.mqtt(), "acme", "ann", &access, "live"))
        .await
        .expect("connects");
    let started = Instant::now();
    fx.change(|r| Users::user_mut(r, "acme", "ann").disabled = true);
    assert!(live.closed_within(Duration::from_secs(1)).await.is_some());
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, body) = fx.login("acme", "ann", PASSWORD).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_credentials");
    let refused = v5::connect_with(token_options(fx.mqtt(), "acme", "ann", &access, "again"))
        .await
        .err();
    assert_eq!(refused.as_deref(), Some("NotAuthorized"));
    // Deleting the user does the same.
    let (adam, _) = fx.tokens("acme", "adam").await;
    fx.change(|r| {
        r.users
            .retain(|u| !(u.tenant == "acme" && u.name == "adam"))
    });
    let (status, _) = http_publish(fx.http(), &adam, "m/acme/c/telemetry/x", "1").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn group_membership_changes_reach_live_sessions_within_a_second() {
    let mut fx = Users::default().await;
    let (access, _) = fx.tokens("acme", "ann").await;
    let mut ann = v5::connect_with(token_options(fx.mqtt(), "acme", "ann", &access, "ann"))
        .await
        .expect("connects");
    assert_eq!(
        ann.subscribe("m/acme/c/commands/#", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    publish_as_sensor(fx.mqtt(), "acme", "m/acme/c/commands/a", "before").await;
    let got = ann
        .next_publish(WAIT)
        .await
        .expect("delivered through the group");
    assert_eq!(&got.payload[..], b"before");

    // Out of the group: the subscription goes within a second, nothing more arrives.
    fx.change(|r| {
        r.groups[0].members.retain(|m| m.kind != SubjectKind::User);
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish_as_sensor(fx.mqtt(), "acme", "m/acme/c/commands/a", "after").await;
    assert!(ann.next_publish(Duration::from_millis(700)).await.is_none());
    // Back in: a new subscription is allowed again.
    fx.change(|r| {
        r.groups[0].members.push(Member {
            kind: SubjectKind::User,
            name: "ann".into(),
        });
    });
    assert_eq!(
        ann.subscribe("m/acme/c/commands/#", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
}

#[tokio::test]
async fn a_viewer_subscribes_everywhere_and_never_publishes() {
    let mut fx = Users::default().await;
    // Even a Connection granting publish does not make a viewer publish.
    fx.change(|r| {
        r.grants.push(user_grant(
            "acme",
            "vera-publish",
            GrantSubject::User("vera".into()),
            "telemetry",
            Actions::PUBLISH,
        ));
    });
    let (vera, _) = fx.tokens("acme", "vera").await;
    let mut c = v5::connect_with(token_options(fx.mqtt(), "acme", "vera", &vera, "v"))
        .await
        .expect("connects");
    for filter in ["m/acme/c/telemetry/#", "m/acme/c/commands/#"] {
        assert_eq!(
            c.subscribe(filter, v5::QoS::AtMostOnce).await,
            vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)],
            "{filter}"
        );
    }
    assert_eq!(
        c.subscribe("m/globex/c/telemetry/#", v5::QoS::AtMostOnce)
            .await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    c.client
        .publish("m/acme/c/telemetry/x", v5::QoS::AtLeastOnce, false, "no")
        .await
        .expect("queued");
    let ack = loop {
        match c.next(WAIT).await {
            Some(Ok(v5::Packet::PubAck(a))) => break a,
            Some(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    };
    assert_eq!(ack.reason, v5::PubAckReason::NotAuthorized);
    let (status, _) = http_publish(fx.http(), &vera, "m/acme/c/telemetry/x", "1").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_key_rotation_fails_no_request() {
    let mut fx = Users::default().await;
    let new_key = generate_signing_key(SigningAlgorithm::ES256, "k2").expect("key");
    let http = fx.http();
    // A client signs in and publishes in a loop all through the rotation.
    let (stop_tx, stop) = watch::channel(false);
    let worker = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let body = serde_json::json!({"tenant": "acme", "username": "adam", "password": PASSWORD});
        while !*stop.borrow() {
            let (status, v) = curl_json(http, "POST", "/users/tokens", &[], Some(&body)).await;
            let token = v["access_token"].as_str().unwrap_or_default().to_owned();
            let (published, text) = http_publish(http, &token, "m/acme/c/telemetry/r", "1").await;
            if status == 200 && published == 202 {
                ok += 1;
            } else {
                failed.push(format!("{status} {published} {text}"));
            }
        }
        (ok, failed)
    });
    let (old_token, _) = fx.tokens("acme", "adam").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Step 1: the new key joins and signs; the old one still verifies.
    fx.change(|r| {
        r.signing_keys[0].active = false;
        r.signing_keys.push(new_key.clone());
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = http_publish(http, &old_token, "m/acme/c/telemetry/x", "1").await;
    assert_eq!(status, 202, "a token of the old key still works");
    let (new_token, _) = fx.tokens("acme", "adam").await;
    let header = new_token.split('.').next().expect("header");
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
            .expect("base64"),
    )
    .expect("json");
    assert_eq!(header["kid"], "k2");
    assert_eq!(header["alg"], "ES256");
    let (_, jwks) = curl_json(http, "GET", "/.well-known/jwks.json", &[], None).await;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2), "{jwks}");
    // Step 2: the old key goes; its tokens stop working, the new ones do not.
    fx.change(|r| r.signing_keys.retain(|k| k.kid == "k2"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send_replace(true);
    let (ok, failed) = worker.await.expect("worker");
    assert!(
        failed.is_empty(),
        "requests failed during the rotation: {failed:?}"
    );
    assert!(ok >= 3, "the worker made {ok} requests");
    let (status, _) = http_publish(http, &old_token, "m/acme/c/telemetry/x", "1").await;
    assert_eq!(status, 401, "a token of a removed key is refused");
    let (status, _) = http_publish(http, &new_token, "m/acme/c/telemetry/x", "1").await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn sign_in_is_rate_limited_and_does_not_tell_users_apart() {
    let fx = Users::start(UsersConfig {
        logins_per_user_per_minute: 5,
        logins_per_address_per_minute: 1000,
        // Five per hour: on a loaded machine the sign-ins below take longer than the 12 s in
        // which a per-minute rate of five gives one back, and the sixth would pass.
        login_window: Duration::from_secs(3600),
        ..UsersConfig::default()
    })
    .await;
    // A wrong password and an unknown user: the same answer, in about the same time.
    let mut wrong_password = Vec::new();
    let mut unknown_user = Vec::new();
    let mut answers = std::collections::BTreeSet::new();
    for i in 0..4 {
        let t = Instant::now();
        let (status, body) = fx.login("acme", "adam", "wrong").await;
        wrong_password.push(t.elapsed());
        answers.insert((status, body.to_string()));
        let t = Instant::now();
        let (status, body) = fx.login("acme", &format!("nobody-{i}"), "wrong").await;
        unknown_user.push(t.elapsed());
        answers.insert((status, body.to_string()));
    }
    assert_eq!(answers.len(), 1, "one answer for both: {answers:?}");
    assert_eq!(answers.first().map(|a| a.0), Some(401));
    wrong_password.sort();
    unknown_user.sort();
    let (a, b) = (
        wrong_password[2].as_secs_f64(),
        unknown_user[2].as_secs_f64(),
    );
    assert!(
        a / b < 2.0 && b / a < 2.0,
        "a wrong password took {a:.3} s, an unknown user {b:.3} s (medians)"
    );
    // The fifth attempt for adam is allowed (even with the right password), the sixth is not.
    let (status, _) = fx.login("acme", "adam", PASSWORD).await;
    assert_eq!(status, 200);
    let (status, body) = fx.login("acme", "adam", PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    let (_, head, _) = curl(
        fx.http(),
        "POST",
        "/users/tokens",
        &[],
        Some(r#"{"tenant":"acme","username":"adam","password":"x"}"#),
    )
    .await;
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    // Other users are not held back by adam's limit.
    let (status, _) = fx.login("acme", "vera", PASSWORD).await;
    assert_eq!(status, 200);
    assert!(fx.dataplane.metrics().user_tokens("login", "rate_limited") >= 2);
    // A malformed body is a 400 that says what to send.
    let (status, _, body) = curl(fx.http(), "POST", "/users/tokens", &[], Some("{")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("username"), "{body}");
}

#[tokio::test]
async fn a_session_ends_when_its_access_token_expires() {
    let fx = Users::start(UsersConfig {
        tokens: TokenSettings {
            access_ttl: Duration::from_secs(2),
            ..TokenSettings::default()
        },
        logins_per_user_per_minute: 1000,
        logins_per_address_per_minute: 1000,
        ..UsersConfig::default()
    })
    .await;
    let (status, body) = fx.login("acme", "vera", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 2);
    let token = body["access_token"].as_str().expect("access").to_owned();
    let mut mqtt = v5::connect_with(token_options(fx.mqtt(), "acme", "vera", &token, "v"))
        .await
        .expect("connects");
    let url = format!("ws://{}/m/acme/c/telemetry/%23", fx.http());
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("stream opens");
    // MQTT v5: DISCONNECT 0xA0 (maximum connect time) at expiry, not before.
    assert_eq!(mqtt.closed_within(Duration::from_millis(500)).await, None);
    assert_eq!(
        mqtt.closed_within(Duration::from_secs(4)).await.as_deref(),
        Some("disconnect MaximumConnectTime")
    );
    // The WebSocket stream closes with 4401.
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(4), ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4401));
    // And the expired token opens nothing new.
    let refused = v5::connect_with(token_options(fx.mqtt(), "acme", "vera", &token, "again"))
        .await
        .err();
    assert_eq!(refused.as_deref(), Some("BadUserNamePassword"));
}

#[tokio::test]
async fn a_user_and_a_thing_of_the_same_name_share_nothing() {
    let mut fx = Users::default().await;
    // A user `reader` beside the thing `reader`, with no grant of its own.
    fx.change(|r| {
        let mut u = Users::user_mut(r, "acme", "ann").clone();
        u.name = "reader".into();
        u.role = Role::Member;
        r.users.push(u);
    });
    // The thing's persistent session, with a QoS 1 delivery it has not acknowledged.
    let mut o = v5::options(fx.mqtt(), "acme", "reader", "same");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    o.set_manual_acks(true);
    let mut thing = v5::connect_with(o).await.expect("thing connects");
    assert_eq!(
        thing
            .subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce)]
    );
    publish_as_sensor(fx.mqtt(), "acme", "m/acme/c/telemetry/x", "for-the-thing").await;
    assert!(
        thing.next_publish(WAIT).await.is_some(),
        "delivered, not acked"
    );
    // The user with the same name and client id: its own, new session.
    let (access, _) = fx.tokens("acme", "reader").await;
    let mut o = token_options(fx.mqtt(), "acme", "reader", &access, "same");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let mut user = v5::connect_with(o).await.expect("user connects");
    assert!(!user.connack.session_present, "not the thing's session");
    assert!(
        user.next_publish(Duration::from_millis(500))
            .await
            .is_none(),
        "the thing's unacknowledged message is not the user's"
    );
    assert_eq!(
        user.subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
            .await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    // And the thing was not taken over.
    assert!(
        thing
            .closed_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}
