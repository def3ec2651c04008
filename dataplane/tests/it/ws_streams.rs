//! Plain WebSocket streams driven by tokio-tungstenite: MQTT→WS, HTTP→WS and WS→MQTT delivery,
//! refusals before and on the socket, tenant isolation, and revocation (also of a channel
//! deleted and created again) closing the socket.

use crate::adapters;
use crate::common;

use std::time::Duration;

use adapters::{
    Adapters, Frame, WsAuth, curl, next_frame, next_json, publish_text, send_json, thing_auth,
    ws_connect, ws_connect_from,
};
use common::{resources, v4, v5};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(3);
const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn mqtt_publishes_stream_to_websocket_clients_as_json() {
    let fx = Adapters::start().await;
    let (mut ws, protocol) = ws_connect(
        &fx.ws_url("/m/acme/c/telemetry/%23"),
        WsAuth::Basic("acme", "reader"),
    )
    .await
    .expect("accepted");
    assert_eq!(protocol, None, "no subprotocol was offered");
    let sensor = v5::connect(fx.mqtt, "acme", "sensor", "s").await;
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        content_type: Some("application/json".into()),
        // A client cannot forge the dataplane's metadata: its `fleetward-*` copies are dropped.
        user_properties: vec![
            ("site".into(), "north".into()),
            ("fleetward-publisher".into(), "user:boss".into()),
        ],
        ..Default::default()
    };
    sensor
        .client
        .publish_with_properties(
            "m/acme/c/telemetry/room1",
            v5::QoS::AtLeastOnce,
            false,
            r#"{"t":1}"#,
            props,
        )
        .await
        .expect("queued");
    let v = next_json(&mut ws, WAIT).await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["topic"], "m/acme/c/telemetry/room1");
    assert_eq!(v["payload"], r#"{"t":1}"#);
    assert_eq!(v["base64"], false);
    assert_eq!(v["content_type"], "application/json");
    assert_eq!(v["publisher"], json!({"kind": "thing", "name": "sensor"}));
    assert_eq!(v["protocol"], "mqtt");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["user_properties"], json!([["site", "north"]]));
    assert!(
        v["created"].as_str().is_some_and(|c| c.ends_with('Z')),
        "{v}"
    );
    let id = v["id"].as_str().unwrap_or_default();
    assert!(
        id.parse::<fleetward_history::MessageId>().is_ok() && &id[14..15] == "7",
        "a UUIDv7 id: {v}"
    );

    // A binary payload arrives base64.
    let old = v4::connect(fx.mqtt, "acme", "sensor", "s4").await;
    old.client
        .publish(
            "m/acme/c/telemetry/raw",
            v4::QoS::AtMostOnce,
            false,
            vec![0xffu8, 0x00],
        )
        .await
        .expect("queued");
    let v = next_json(&mut ws, WAIT).await;
    assert_eq!(
        (v["payload"].as_str(), v["base64"].as_bool()),
        (Some("/wA="), Some(true))
    );
}

#[tokio::test]
async fn http_publishes_reach_a_browser_style_stream_with_retained_first() {
    let fx = Adapters::start().await;
    let publish = |body: &'static str, query: &'static str| {
        let url = fx.url(&format!("/m/acme/c/telemetry/state{query}"));
        async move {
            curl(&[
                "-H",
                &thing_auth("acme", "sensor"),
                "-H",
                "Content-Type: application/senml+json",
                "--data-binary",
                body,
                &url,
            ])
            .await
        }
    };
    assert_eq!(publish("[1]", "?retain=true").await.status, 202);
    // Credentials in the subprotocol, as a browser must send them.
    let (mut ws, protocol) = ws_connect(
        &fx.ws_url("/m/acme/c/telemetry/state"),
        WsAuth::Subprotocol("acme", "reader"),
    )
    .await
    .expect("accepted");
    assert_eq!(protocol.as_deref(), Some("fleetward.v1"));
    let retained = next_json(&mut ws, WAIT).await;
    assert_eq!(
        (retained["payload"].as_str(), retained["retain"].as_bool()),
        (Some("[1]"), Some(true))
    );
    assert_eq!(publish("[2]", "").await.status, 202);
    let v = next_json(&mut ws, WAIT).await;
    assert_eq!(v["payload"], "[2]");
    assert_eq!(v["protocol"], "http");
    assert_eq!(v["content_type"], "application/senml+json");
    assert_eq!(v["publisher"]["name"], "sensor");
}

#[tokio::test]
async fn websocket_frames_publish_to_mqtt_when_granted_and_are_refused_on_the_socket_otherwise() {
    let fx = Adapters::start().await;
    let mut reader = v5::connect(fx.mqtt, "acme", "reader", "r").await;
    reader
        .subscribe("m/acme/c/telemetry/#", v5::QoS::AtMostOnce)
        .await;
    // `mounted` may publish and subscribe on telemetry.
    let (mut ws, _) = ws_connect(
        &fx.ws_url("/m/acme/c/telemetry/panel"),
        WsAuth::Basic("acme", "mounted"),
    )
    .await
    .expect("accepted");
    send_json(
        &mut ws,
        json!({"payload": "on", "id": 1, "content_type": "text/plain"}),
    )
    .await;
    let ack = next_json(&mut ws, WAIT).await;
    assert_eq!(ack["type"], "published", "{ack}");
    assert_eq!(ack["id"], 1);
    // Its own stream sees it too.
    let echo = next_json(&mut ws, WAIT).await;
    assert_eq!(
        (echo["type"].as_str(), echo["protocol"].as_str()),
        (Some("message"), Some("websocket"))
    );
    let got = reader.next_publish(WAIT).await.expect("delivered to MQTT");
    assert_eq!(&got.topic[..], b"m/acme/c/telemetry/panel");
    assert_eq!(&got.payload[..], b"on");
    let props = got.properties.expect("v5 properties");
    assert!(
        props
            .user_properties
            .contains(&("fleetward-protocol".into(), "websocket".into()))
    );
    assert!(
        props
            .user_properties
            .contains(&("fleetward-publisher".into(), "thing:mounted".into()))
    );

    // The reader may stream but not publish: answered on the socket, which stays open.
    let (mut ro, _) = ws_connect(
        &fx.ws_url("/m/acme/c/telemetry/panel"),
        WsAuth::Basic("acme", "reader"),
    )
    .await
    .expect("accepted");
    send_json(&mut ro, json!({"payload": "off", "id": "x"})).await;
    let e = next_json(&mut ro, WAIT).await;
    assert_eq!(
        (e["type"].as_str(), e["status"].as_u64(), e["id"].as_str()),
        (Some("error"), Some(403), Some("x"))
    );
    for (frame, status) in [
        (json!({"payload": "x", "content_type": "image/png"}), 415),
        (json!({"payload": "", "id": 2}), 400),
        (
            json!({"payload": "x", "topic": "m/acme/c/telemetry/+"}),
            400,
        ),
        (json!({"nonsense": true}), 400),
    ] {
        send_json(&mut ro, frame.clone()).await;
        let e = next_json(&mut ro, WAIT).await;
        assert_eq!(
            (e["type"].as_str(), e["status"].as_u64()),
            (Some("error"), Some(status)),
            "{frame}: {e}"
        );
    }
    assert!(
        reader.next_publish(QUIET).await.is_none(),
        "nothing refused was delivered"
    );
}

#[tokio::test]
async fn streams_are_refused_before_the_upgrade() {
    let fx = Adapters::start().await;
    let url = fx.ws_url("/m/acme/c/telemetry/%23");
    assert_eq!(ws_connect(&url, WsAuth::None).await.err(), Some(401));
    assert_eq!(
        ws_connect(&url, WsAuth::Basic("acme", "stranger"))
            .await
            .err(),
        Some(403)
    );
    // A channel that does not exist answers like one without a grant.
    assert_eq!(
        ws_connect(
            &fx.ws_url("/m/acme/c/nope/%23"),
            WsAuth::Basic("acme", "reader")
        )
        .await
        .err(),
        Some(403)
    );
    // The same names in the other tenant.
    assert_eq!(
        ws_connect(&url, WsAuth::Basic("globex", "reader"))
            .await
            .err(),
        Some(403)
    );
    // A plain GET is told to upgrade.
    let r = curl(&[
        "-H",
        &thing_auth("acme", "reader"),
        &fx.url("/m/acme/c/telemetry"),
    ])
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (426, Some("upgrade_required"))
    );
}

/// The close a refused stream ends with, or a panic saying what came instead.
async fn refused_with(ws: &mut adapters::Ws) -> (u16, String) {
    match next_frame(ws, WAIT).await {
        Frame::Closed(Some(close)) => close,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_page_sees_a_refused_stream_close_4401_or_4403_with_the_reason() {
    const PAGE: Option<&str> = Some("https://dash.acme.example");
    let fx = Adapters::start().await;
    let url = fx.ws_url("/m/acme/c/telemetry/%23");

    // A handshake with Origin (a browser's) is upgraded, then closed with the refusal.
    let (mut ws, _) = ws_connect_from(&url, WsAuth::None, PAGE)
        .await
        .expect("upgraded to be closed");
    let (code, reason) = refused_with(&mut ws).await;
    assert_eq!(code, 4401, "{reason}");
    assert!(
        reason.starts_with("unauthorized: no credentials"),
        "{reason}"
    );
    assert!(reason.len() <= 123, "{reason}");

    // Credentials in the subprotocol, as a page sends them: the offered one is selected, so
    // the browser accepts the handshake and shows the close.
    let (mut ws, protocol) = ws_connect_from(&url, WsAuth::Subprotocol("acme", "stranger"), PAGE)
        .await
        .expect("upgraded to be closed");
    assert_eq!(protocol.as_deref(), Some("fleetward.v1"));
    let (code, reason) = refused_with(&mut ws).await;
    assert_eq!(code, 4403, "{reason}");
    assert!(
        reason.starts_with("forbidden: acme/stranger may not subscribe"),
        "{reason}"
    );

    // Another tenant's channel is refused the same way.
    let (mut ws, _) = ws_connect_from(&url, WsAuth::Subprotocol("globex", "reader"), PAGE)
        .await
        .expect("upgraded to be closed");
    assert_eq!(refused_with(&mut ws).await.0, 4403);

    // `?refusal=close` asks for it without Origin, `?refusal=http` declines it with Origin.
    let (mut ws, _) = ws_connect(&format!("{url}?refusal=close"), WsAuth::None)
        .await
        .expect("upgraded to be closed");
    assert_eq!(refused_with(&mut ws).await.0, 4401);
    assert_eq!(
        ws_connect_from(&format!("{url}?refusal=http"), WsAuth::None, PAGE)
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        ws_connect(&format!("{url}?refusal=maybe"), WsAuth::None)
            .await
            .err(),
        Some(400)
    );

    // A granted page's stream is served as before, and gets its messages.
    let (mut ws, _) = ws_connect_from(&url, WsAuth::Subprotocol("acme", "reader"), PAGE)
        .await
        .expect("accepted");
    let r = publish_text(&fx, "acme", "sensor", "/m/acme/c/telemetry/door", "on").await;
    assert_eq!(r.status, 202, "{r:?}");
    let v = next_json(&mut ws, WAIT).await;
    assert_eq!(
        (v["type"].as_str(), v["payload"].as_str()),
        (Some("message"), Some("on"))
    );
}

#[tokio::test]
async fn tenants_with_the_same_names_stay_apart_over_websocket() {
    let fx = Adapters::start().await;
    let (mut acme, _) = ws_connect(
        &fx.ws_url("/m/acme/c/telemetry/%23"),
        WsAuth::Basic("acme", "reader"),
    )
    .await
    .expect("accepted");
    let (mut globex, _) = ws_connect(
        &fx.ws_url("/m/globex/c/telemetry/%23"),
        WsAuth::Subprotocol("globex", "reader"),
    )
    .await
    .expect("accepted");
    let sensor = v4::connect(fx.mqtt, "acme", "sensor", "s").await;
    sensor
        .client
        .publish(
            "m/acme/c/telemetry/x",
            v4::QoS::AtMostOnce,
            false,
            "for-acme",
        )
        .await
        .expect("queued");
    assert_eq!(next_json(&mut acme, WAIT).await["payload"], "for-acme");
    assert!(matches!(
        next_frame(&mut globex, QUIET).await,
        Frame::Nothing
    ));
    // globex's mounted thing publishing over its own stream reaches globex only.
    let (mut gm, _) = ws_connect(
        &fx.ws_url("/m/globex/c/telemetry/x"),
        WsAuth::Basic("globex", "mounted"),
    )
    .await
    .expect("accepted");
    send_json(&mut gm, json!({"payload": "for-globex"})).await;
    assert_eq!(next_json(&mut gm, WAIT).await["type"], "published");
    assert_eq!(next_json(&mut globex, WAIT).await["payload"], "for-globex");
    assert!(matches!(next_frame(&mut acme, QUIET).await, Frame::Nothing));
}

#[tokio::test]
async fn revocation_closes_the_stream_with_a_code_and_reason() {
    let mut fx = Adapters::start().await;
    let url = fx.ws_url("/m/acme/c/telemetry/%23");
    let (mut grant_ws, _) = ws_connect(&url, WsAuth::Basic("acme", "reader"))
        .await
        .expect("accepted");
    let (mut thing_ws, _) = ws_connect(
        &fx.ws_url("/m/acme/c/telemetry/%23"),
        WsAuth::Basic("acme", "mounted"),
    )
    .await
    .expect("accepted");
    let (mut other, _) = ws_connect(
        &fx.ws_url("/m/globex/c/telemetry/%23"),
        WsAuth::Basic("globex", "reader"),
    )
    .await
    .expect("accepted");

    // The reader's telemetry grant goes: 4403.
    let mut r = resources();
    r.grants
        .retain(|g| !(g.tenant == "acme" && g.name == "reader-telemetry"));
    fx.apply(r.clone());
    match next_frame(&mut grant_ws, WAIT).await {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!(code, 4403);
            assert!(reason.contains("revoked"), "{reason}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    // The mounted thing is disabled: 4401.
    for t in &mut r.things {
        if t.tenant == "acme" && t.name == "mounted" {
            t.disabled = true;
        }
    }
    fx.apply(r.clone());
    match next_frame(&mut thing_ws, WAIT).await {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!(code, 4401);
            assert!(reason.contains("subject_disabled"), "{reason}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // globex's stream is untouched, and still delivers.
    assert!(matches!(
        next_frame(&mut other, QUIET).await,
        Frame::Nothing
    ));

    // A suspended tenant closes its streams.
    for t in &mut r.tenants {
        if t.name == "globex" {
            t.suspended = true;
        }
    }
    fx.apply(r);
    match next_frame(&mut other, WAIT).await {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!(code, 4401);
            assert!(reason.contains("tenant_suspended"), "{reason}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_to_a_channel_created_again_closes_4403() {
    // acme's `telemetry` (and globex's, which stays) under `uid`.
    let under = |uid: &str| {
        let mut r = resources();
        for c in &mut r.channels {
            if c.name == "telemetry" {
                c.uid = format!("{}-{uid}", c.tenant);
            }
        }
        r
    };
    let mut fx = Adapters::start().await;
    fx.apply(under("c1"));
    let (mut ws, _) = ws_connect(
        &fx.ws_url("/m/acme/c/telemetry/%23"),
        WsAuth::Basic("acme", "reader"),
    )
    .await
    .expect("accepted");
    // The same uids: the stream goes on.
    fx.apply(under("c1"));
    assert!(matches!(next_frame(&mut ws, QUIET).await, Frame::Nothing));
    let mut r = under("c1");
    for c in &mut r.channels {
        if c.tenant == "acme" && c.name == "telemetry" {
            c.uid = "acme-c2".into();
        }
    }
    fx.apply(r);
    match next_frame(&mut ws, WAIT).await {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!(code, 4403);
            assert!(reason.contains("channel_recreated"), "{reason}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_count_against_the_tenants_connections_and_close_1008_past_them() {
    let mut r = resources();
    for t in r.tenants.iter_mut().filter(|t| t.name == "acme") {
        t.limits.max_connections = Some(2);
    }
    let fx = Adapters::start_with(r).await;
    let url = fx.ws_url("/m/acme/c/telemetry/%23");
    let (_one, _) = ws_connect(&url, WsAuth::Basic("acme", "reader"))
        .await
        .expect("accepted");
    let (_two, _) = ws_connect(&url, WsAuth::Basic("acme", "reader"))
        .await
        .expect("accepted");
    // The third stream of the tenant is closed with 1008 (policy) and a reason.
    let (mut three, _) = ws_connect(&url, WsAuth::Basic("acme", "reader"))
        .await
        .expect("the upgrade completes");
    match next_frame(&mut three, WAIT).await {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!(code, 1008, "{reason}");
            assert!(reason.contains("maxConnections"), "{reason}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // Streams and MQTT share the tenant's count.
    let o = v5::options(fx.mqtt, "acme", "sensor", "m");
    assert_eq!(
        v5::connect_with(o).await.err().as_deref(),
        Some("QuotaExceeded")
    );
    // Another tenant is not affected.
    let mut other = v5::connect(fx.mqtt, "globex", "reader", "g").await;
    let codes = other
        .subscribe("m/globex/c/telemetry/#", v5::QoS::AtLeastOnce)
        .await;
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, v5::SubscribeReasonCode::Success(_))),
        "{codes:?}"
    );
}

#[tokio::test]
async fn a_stream_past_its_things_own_limit_closes_1008() {
    let mut r = resources();
    for t in r
        .things
        .iter_mut()
        .filter(|t| t.tenant == "acme" && t.name == "reader")
    {
        t.max_connections = Some(1);
    }
    let fx = Adapters::start_with(r).await;
    let _mqtt = v5::connect(fx.mqtt, "acme", "reader", "m").await;
    let url = fx.ws_url("/m/acme/c/telemetry/%23");
    let (mut ws, _) = ws_connect(&url, WsAuth::Basic("acme", "reader"))
        .await
        .expect("the upgrade completes");
    match next_frame(&mut ws, WAIT).await {
        Frame::Closed(Some((code, reason))) => {
            assert_eq!(code, 1008, "{reason}");
            assert!(reason.contains("acme/reader"), "{reason}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A subtopic deny withholds topics from a stream whose filter overlaps it, retained ones
/// included, instead of refusing the stream; a stream wholly inside the deny is refused.
#[tokio::test]
async fn a_stream_over_a_denied_subtopic_is_accepted_and_never_sees_it() {
    let mut r = resources();
    for g in r.grants.iter_mut().filter(|g| g.name == "reader-telemetry") {
        g.deny = vec!["test/nosubscribe".parse().expect("a valid pattern")];
    }
    let fx = Adapters::start_with(r).await;
    let publish = |sub: &'static str, body: &'static str, query: &'static str| {
        let url = fx.url(&format!("/m/acme/c/telemetry/{sub}{query}"));
        async move {
            let answer = curl(&[
                "-H",
                &thing_auth("acme", "sensor"),
                "-H",
                "Content-Type: text/plain",
                "--data-binary",
                body,
                &url,
            ])
            .await;
            assert_eq!(answer.status, 202, "{answer:?}");
        }
    };
    publish("test/nosubscribe", "retained-secret", "?retain=true").await;
    publish("kept", "retained-ok", "?retain=true").await;
    let (mut ws, _) = ws_connect(
        &fx.ws_url("/m/acme/c/telemetry/%23"),
        WsAuth::Basic("acme", "reader"),
    )
    .await
    .expect("a stream overlapping the deny is accepted");
    let v = next_json(&mut ws, WAIT).await;
    assert_eq!(
        (v["topic"].as_str(), v["payload"].as_str()),
        (Some("m/acme/c/telemetry/kept"), Some("retained-ok"))
    );
    // The denied topic first: it would be the next frame if it got through.
    publish("test/nosubscribe", "secret", "").await;
    publish("test/allowed", "open", "").await;
    let v = next_json(&mut ws, WAIT).await;
    assert_eq!(
        (v["topic"].as_str(), v["payload"].as_str()),
        (Some("m/acme/c/telemetry/test/allowed"), Some("open"))
    );
    assert!(matches!(next_frame(&mut ws, QUIET).await, Frame::Nothing));

    let refused = ws_connect(
        &fx.ws_url("/m/acme/c/telemetry/test/nosubscribe"),
        WsAuth::Basic("acme", "reader"),
    )
    .await
    .err();
    assert_eq!(refused, Some(403), "a stream inside the deny is refused");
}
