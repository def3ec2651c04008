//! HTTP publish driven by curl: delivery to MQTT subscribers with the publisher's metadata,
//! every refusal status, retained publishes, and tenant isolation.

use crate::adapters;
use crate::common;

use std::time::Duration;

use adapters::{Adapters, basic_user, curl, publish_text, thing_auth};
use common::{resources, v4, v5};

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn http_publish_reaches_mqtt_subscribers_with_its_metadata() {
    let fx = Adapters::start().await;
    let mut reader = v5::connect(fx.mqtt, "acme", "reader", "r5").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    let mut old = v4::connect(fx.mqtt, "acme", "reader", "r4").await;
    old.subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;

    let r = curl(&[
        "-X",
        "POST",
        "-H",
        &thing_auth("acme", "sensor"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        r#"{"t":21.5}"#,
        &fx.url("/m/acme/c/telemetry/room1?qos=1"),
    ])
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    let mut answer = r.json();
    // The id the message is known by; subscribers with metadata see the same one.
    let id = answer["message_id"].take();
    assert_eq!(
        answer,
        serde_json::json!({"topic": "m/acme/c/telemetry/room1", "qos": 1, "retained": false,
                           "message_id": null})
    );

    let got = reader.next_publish(WAIT).await.expect("delivered over v5");
    assert_eq!(&got.topic[..], b"m/acme/c/telemetry/room1");
    assert_eq!(&got.payload[..], br#"{"t":21.5}"#);
    assert_eq!(got.qos, v5::QoS::AtLeastOnce);
    let props = got.properties.expect("v5 properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    let up = |name: &str| {
        props
            .user_properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(up("fleetward-publisher").as_deref(), Some("thing:sensor"));
    assert_eq!(up("fleetward-protocol").as_deref(), Some("http"));
    assert_eq!(up("fleetward-id").as_deref(), id.as_str());
    let created = up("fleetward-created").expect("a created time");
    assert!(
        created.starts_with("20") && created.ends_with('Z') && created.contains('T'),
        "{created}"
    );

    // v3.1.1 subscribers get the message itself (v3 has no properties).
    let got = old.next_publish(WAIT).await.expect("delivered over v3");
    assert_eq!(&got.payload[..], br#"{"t":21.5}"#);

    // HTTP Basic works the same, on the channel's own topic.
    let r = curl(&[
        "-u",
        &basic_user("acme", "sensor"),
        "-H",
        "Content-Type: text/plain; charset=utf-8",
        "--data-binary",
        "plain",
        &fx.url("/m/acme/c/telemetry"),
    ])
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    let got = reader.next_publish(WAIT).await.expect("delivered");
    assert_eq!(&got.topic[..], b"m/acme/c/telemetry");
    assert_eq!(
        got.properties.and_then(|p| p.content_type).as_deref(),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test]
async fn mosquitto_sub_receives_an_http_publish() {
    let fx = Adapters::start().await;
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &fx.mqtt.port().to_string()])
        .args(["-V", "mqttv5", "-i", "msub", "-u", "acme/reader", "-P"])
        .arg(common::key("acme", "reader"))
        .args(["-t", "m/acme/c/commands/#", "-C", "1", "-W", "5", "-v"])
        // `commands` carries no delivery metadata; this subscription asks for it.
        .args([
            "-D",
            "subscribe",
            "user-property",
            "fleetward-metadata",
            "true",
        ])
        .args(["-F", "%t %p %P"])
        .kill_on_drop(true)
        .output();
    let publish = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        curl(&[
            "-H",
            &thing_auth("acme", "sensor"),
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            "open",
            &fx.url("/m/acme/c/commands/door"),
        ])
        .await
    };
    let (sub, r) = tokio::join!(sub, publish);
    assert_eq!(r.status, 202, "{r:?}");
    let sub = sub.expect("mosquitto_sub runs (scripts/install-tools.sh)");
    let out = String::from_utf8_lossy(&sub.stdout);
    assert!(
        out.starts_with("m/acme/c/commands/door open "),
        "{out} / {}",
        String::from_utf8_lossy(&sub.stderr)
    );
    assert!(out.contains("fleetward-protocol:http"), "{out}");
    assert!(out.contains("fleetward-publisher:thing:sensor"), "{out}");
}

#[tokio::test]
async fn every_refusal_has_its_status_and_a_readable_json_body() {
    let mut r = resources();
    for t in &mut r.tenants {
        t.limits.publish_rate = Some(1);
        t.limits.publish_burst = Some(1);
    }
    for c in &mut r.channels {
        c.max_message_size = Some(16);
    }
    let fx = Adapters::start_with(r).await;
    let url = fx.url("/m/acme/c/telemetry/x");
    let sensor = thing_auth("acme", "sensor");
    let post = |auth: String, ct: &'static str, body: &'static str, url: String| async move {
        let mut args = vec!["-X".to_owned(), "POST".to_owned()];
        if !auth.is_empty() {
            args.extend(["-H".to_owned(), auth]);
        }
        if !ct.is_empty() {
            args.extend(["-H".to_owned(), format!("Content-Type: {ct}")]);
        }
        args.extend(["--data-binary".to_owned(), body.to_owned(), url]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args).await
    };

    // 401: none, a wrong key, a malformed header; each with WWW-Authenticate.
    for auth in [
        String::new(),
        "Authorization: Thing wrong-key".to_owned(),
        "Authorization: Basic !!!".to_owned(),
        // A key of the same thing name in the other tenant.
        format!(
            "Authorization: Basic {}",
            base64_of(&format!("acme/sensor:{}", common::key("globex", "sensor")))
        ),
    ] {
        let r = post(auth.clone(), "text/plain", "x", url.clone()).await;
        assert_eq!(r.status, 401, "{auth}: {r:?}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.contains("Basic") && v.contains("Thing")),
            "{r:?}"
        );
        assert_eq!(r.json()["error"], "unauthorized");
        assert!(r.json()["message"].as_str().is_some_and(|m| m.len() > 10));
    }

    // 403: not granted, and a channel that does not exist, answered alike.
    let no_grant = post(thing_auth("acme", "reader"), "text/plain", "x", url.clone()).await;
    let no_channel = post(
        sensor.clone(),
        "text/plain",
        "x",
        fx.url("/m/acme/c/nope/x"),
    )
    .await;
    assert_eq!((no_grant.status, no_channel.status), (403, 403));
    assert_eq!(no_grant.json()["error"], "forbidden");
    assert_eq!(no_channel.json()["error"], "forbidden");
    let shape = |m: &serde_json::Value| {
        m["message"]
            .as_str()
            .unwrap_or_default()
            .replace("reader", "X")
            .replace("sensor", "X")
            .replace("telemetry", "Y")
            .replace("nope", "Y")
    };
    assert_eq!(shape(&no_grant.json()), shape(&no_channel.json()));
    // Another tenant's topic.
    let r = post(
        sensor.clone(),
        "text/plain",
        "x",
        fx.url("/m/globex/c/telemetry/x"),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");

    // 400: bad topic, bad query, empty body.
    for bad in [
        fx.url("/m/acme/c/telemetry/a/%2B/b"),
        fx.url("/m/acme%2Fc%2Fx/c/telemetry"),
        fx.url("/m/acme/c/telemetry/x?qos=3"),
        fx.url("/m/acme/c/telemetry/x?retain=maybe"),
    ] {
        let r = post(sensor.clone(), "text/plain", "x", bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert!(r.json()["message"].is_string());
    }
    let r = post(sensor.clone(), "text/plain", "", url.clone()).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("empty_body"))
    );

    // 415: a form post (curl's default) and no content type at all.
    let r = post(sensor.clone(), "", "x", url.clone()).await;
    assert_eq!(r.status, 415, "{r:?}");
    let r = post(
        sensor.clone(),
        "application/x-www-form-urlencoded",
        "x",
        url.clone(),
    )
    .await;
    assert_eq!(r.status, 415, "{r:?}");
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("application/senml+cbor"))
    );

    // 413: over the channel's 16 bytes.
    let r = post(
        sensor.clone(),
        "text/plain",
        "0123456789abcdefX",
        url.clone(),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("too_large"))
    );

    // 429: one publish per second; the refusals above took no token.
    let ok = post(sensor.clone(), "text/plain", "1", url.clone()).await;
    assert_eq!(ok.status, 202, "{ok:?}");
    let r = post(sensor.clone(), "text/plain", "2", url.clone()).await;
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(r.json()["error"], "rate_limited");
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn retained_and_qos_are_chosen_with_query_parameters() {
    let fx = Adapters::start().await;
    let r = publish_text(
        &fx,
        "acme",
        "sensor",
        "/m/acme/c/telemetry/state?retain=true&qos=2",
        "kept",
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["retained"], true);
    assert_eq!(r.json()["qos"], 2);
    let mut late = v4::connect(fx.mqtt, "acme", "reader", "late").await;
    late.subscribe("m/acme/c/telemetry/state", v4::QoS::ExactlyOnce)
        .await;
    let got = late.next_publish(WAIT).await.expect("the retained message");
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"kept");
    assert_eq!(got.qos, v4::QoS::ExactlyOnce);

    // `commands` takes no retained messages and caps QoS at 1: the answer says what happened.
    let r = publish_text(
        &fx,
        "acme",
        "sensor",
        "/m/acme/c/commands/x?retain=true&qos=2",
        "go",
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        (r.json()["retained"].as_bool(), r.json()["qos"].as_u64()),
        (Some(false), Some(1))
    );
}

#[tokio::test]
async fn tenants_with_the_same_names_stay_apart_over_http() {
    let fx = Adapters::start().await;
    let mut acme = v4::connect(fx.mqtt, "acme", "reader", "a").await;
    acme.subscribe("m/acme/c/telemetry/#", v4::QoS::AtMostOnce)
        .await;
    let mut globex = v4::connect(fx.mqtt, "globex", "reader", "g").await;
    globex
        .subscribe("m/globex/c/telemetry/#", v4::QoS::AtMostOnce)
        .await;

    // globex's sensor, on acme's path: refused, and nothing reaches anyone.
    let r = publish_text(&fx, "globex", "sensor", "/m/acme/c/telemetry/x", "intruder").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(acme.next_publish(QUIET).await.is_none());

    for tenant in ["acme", "globex"] {
        let r = curl(&[
            "-u",
            &basic_user(tenant, "sensor"),
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            tenant,
            &fx.url(&format!("/m/{tenant}/c/telemetry/x")),
        ])
        .await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    let a = acme.next_publish(WAIT).await.expect("acme's own");
    assert_eq!(&a.payload[..], b"acme");
    let g = globex.next_publish(WAIT).await.expect("globex's own");
    assert_eq!(&g.payload[..], b"globex");
    assert!(acme.next_publish(QUIET).await.is_none());
    assert!(globex.next_publish(QUIET).await.is_none());
}

#[tokio::test]
async fn no_policy_yet_is_503_and_unknown_routes_404() {
    let (_policy, rx) = tokio::sync::watch::channel(std::sync::Arc::new(
        fleetward_policy::Snapshot::from_resources(0, fleetward_policy::Resources::default())
            .expect("empty snapshot"),
    ));
    let dp = fleetward_dataplane::Dataplane::new(rx)
        .mqtt_listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .http_listen(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))))
        .start()
        .await
        .expect("starts");
    let http = dp.http_addr.expect("HTTP");
    let r = curl(&[
        "-H",
        "Authorization: Thing k",
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        "x",
        &format!("http://{http}/m/acme/c/telemetry"),
    ])
    .await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("retry-after").is_some());
    let r = curl(&[&format!("http://{http}/nothing/here")]).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn without_its_key_a_disabled_thing_or_suspended_tenant_gets_401_not_403() {
    let mut r = resources();
    r.things
        .iter_mut()
        .filter(|t| t.tenant == "acme" && t.name == "sensor")
        .for_each(|t| t.disabled = true);
    r.tenants
        .iter_mut()
        .filter(|t| t.name == "globex")
        .for_each(|t| t.suspended = true);
    let fx = Adapters::start_with(r).await;
    let post = |who: &str, tenant: &str| {
        let auth = format!("Authorization: Basic {}", base64_of(who));
        let url = fx.url(&format!("/m/{tenant}/c/telemetry/x"));
        async move {
            curl(&[
                "-X",
                "POST",
                "-H",
                auth.as_str(),
                "--data-binary",
                "x",
                url.as_str(),
            ])
            .await
        }
    };
    let unknown = post("acme/nobody:wrong", "acme").await;
    let disabled = post("acme/sensor:wrong", "acme").await;
    let suspended = post("globex/sensor:wrong", "globex").await;
    for r in [&unknown, &disabled, &suspended] {
        assert_eq!(r.status, 401, "{r:?}");
    }
    assert_eq!(unknown.json(), disabled.json(), "one answer");
    assert_eq!(unknown.json(), suspended.json(), "one answer");
    // The right key learns that the thing may not publish.
    let r = post(
        &format!("acme/sensor:{}", common::key("acme", "sensor")),
        "acme",
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
}

/// Acme allows `https://dash.acme.example`; the pod allows `http://localhost:5173` for all.
async fn with_cors() -> Adapters {
    let mut r = resources();
    for t in &mut r.tenants {
        if t.name == "acme" {
            t.web.allowed_origins = vec![ACME_PAGE.to_owned()];
        }
    }
    Adapters::start_with_cors(r, &[POD_PAGE]).await
}

const ACME_PAGE: &str = "https://dash.acme.example";
const POD_PAGE: &str = "http://localhost:5173";

async fn preflight(fx: &Adapters, origin: &str, path: &str) -> adapters::Curl {
    curl(&[
        "-X",
        "OPTIONS",
        "-H",
        &format!("Origin: {origin}"),
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: authorization,content-type",
        &fx.url(path),
    ])
    .await
}

#[tokio::test]
async fn cors_preflights_are_answered_for_allowed_origins_and_refused_for_others() {
    let fx = with_cors().await;

    // The tenant's own origin, on the tenant's paths and on sign-in (which names no tenant).
    for path in ["/m/acme/c/telemetry/room1", "/users/tokens"] {
        let r = preflight(&fx, ACME_PAGE, path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some(ACME_PAGE));
        let methods = r.header("access-control-allow-methods").unwrap_or("");
        assert!(methods.contains("POST") && methods.contains("GET"), "{r:?}");
        let headers = r
            .header("access-control-allow-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "{r:?}"
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert!(
            r.header("vary")
                .is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
            "{r:?}"
        );
        // Credentials travel in Authorization, never in cookies: no credentials mode.
        assert_eq!(r.header("access-control-allow-credentials"), None);
    }

    // Another tenant's origin, and an origin nobody listed: 403 and no allow-origin.
    for (origin, path) in [
        (ACME_PAGE, "/m/globex/c/telemetry/room1"),
        ("https://evil.example", "/m/acme/c/telemetry/room1"),
        ("https://evil.example", "/users/tokens"),
    ] {
        let r = preflight(&fx, origin, path).await;
        assert_eq!(r.status, 403, "{origin} {path}: {r:?}");
        assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
        assert_eq!(r.json()["error"], "origin_not_allowed");
        assert!(
            r.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("spec.web.allowedOrigins")),
            "{r:?}"
        );
    }

    // The pod's flag allows its origin for every tenant.
    for path in ["/m/globex/c/telemetry/room1", "/users/tokens/refresh"] {
        let r = preflight(&fx, POD_PAGE, path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some(POD_PAGE));
    }
}

#[tokio::test]
async fn cors_answers_carry_the_origin_and_expose_retry_after() {
    let fx = with_cors().await;
    let publish = |origin: &'static str| {
        let url = fx.url("/m/acme/c/telemetry/room1");
        async move {
            curl(&[
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                &thing_auth("acme", "sensor"),
                "-H",
                "Content-Type: text/plain",
                "--data-binary",
                "21.5",
                &url,
            ])
            .await
        }
    };
    let r = publish(ACME_PAGE).await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(ACME_PAGE));
    assert!(
        r.header("access-control-expose-headers")
            .is_some_and(|v| v.to_ascii_lowercase().contains("retry-after")),
        "{r:?}"
    );
    assert!(
        r.header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
        "{r:?}"
    );
    assert_eq!(r.header("access-control-allow-credentials"), None);

    // A page of an origin nobody listed gets no allow-origin: the browser hides the answer.
    let r = publish("https://evil.example").await;
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");

    // A refused sign-in is readable by the page, so it can say what went wrong.
    let r = curl(&[
        "-H",
        &format!("Origin: {ACME_PAGE}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        r#"{"tenant":"acme","username":"nobody","password":"wrong"}"#,
        &fx.url("/users/tokens"),
    ])
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some(ACME_PAGE));
}
