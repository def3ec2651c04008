//! The publish path's side of message history: an accepted publish on a channel with
//! `spec.history` reaches the history writer with its id, one the writer cannot take is refused
//! (v5 PUBACK 0x97, HTTP 503 `history_behind`) so nothing accepted is missing, and the reader's
//! refusals when a pod has no store or the channel keeps no history.

use crate::adapters;
use crate::common;

use crate::quotas::puback;
use adapters::{Adapters, curl, publish_text, thing_auth};
use common::{resources, v5};
use fleetward_dataplane::{History, HistorySink};
use fleetward_history::writer::{self, WriterConfig};
use fleetward_policy::Resources;
use rumqttc::v5::mqttbytes::v5::PubAckReason;

/// acme's `telemetry` keeps a day of history; `commands` keeps none.
fn with_history() -> Resources {
    let mut r = resources();
    for c in &mut r.channels {
        if c.name == "telemetry" {
            c.history_retention_secs = Some(86_400);
        }
    }
    r
}

#[tokio::test]
async fn a_publish_the_history_writer_cannot_take_is_refused_and_what_it_took_is_whole() {
    // A writer whose queue holds one record, and that writes nothing.
    let (sink, mut queue) = writer::channel(&WriterConfig {
        queue: 1,
        ..WriterConfig::default()
    });
    let history = History {
        sink: HistorySink::Local(sink),
        reader: None,
    };
    let fx = Adapters::start_with_history(with_history(), history).await;
    let mut c = v5::connect(fx.mqtt, "acme", "sensor", "s").await;
    let sender = c.client.clone();
    let publish = |topic: &'static str, payload: &'static str| {
        let client = sender.clone();
        async move {
            client
                .publish(topic, v5::QoS::AtLeastOnce, false, payload)
                .await
                .expect("queued");
        }
    };
    publish("m/acme/c/telemetry/room1", "first").await;
    assert_eq!(puback(&mut c).await, PubAckReason::Success);
    publish("m/acme/c/telemetry/room1", "second").await;
    assert_eq!(puback(&mut c).await, PubAckReason::QuotaExceeded);
    // A channel without history is not held up.
    publish("m/acme/c/commands/open", "go").await;
    assert_eq!(puback(&mut c).await, PubAckReason::Success);
    let r = publish_text(&fx, "acme", "sensor", "/m/acme/c/telemetry/room2", "third").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("history_behind"), "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));

    // What the writer took is the first message, whole.
    let record = queue
        .try_recv()
        .expect("the accepted message was handed on");
    assert_eq!(
        (
            record.tenant.as_str(),
            record.channel.as_str(),
            record.subtopic.as_str()
        ),
        ("acme", "telemetry", "/room1")
    );
    assert_eq!(&record.payload[..], b"first");
    assert_eq!(
        (
            record.publisher.as_deref(),
            record.protocol.as_str(),
            record.qos
        ),
        (Some("sensor"), "mqtt", 1)
    );
    assert!(queue.try_recv().is_err(), "nothing refused was handed on");

    // With room again, HTTP publishes are kept, and their answer names the id they are kept
    // under.
    let r = publish_text(&fx, "acme", "sensor", "/m/acme/c/telemetry/room2", "third").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let answer: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    let record = queue.try_recv().expect("the HTTP publish was handed on");
    assert_eq!(answer["message_id"], record.id.to_string());
    assert_eq!(record.protocol, "http");
}

#[tokio::test]
async fn the_reader_says_when_a_pod_has_no_store_or_the_channel_keeps_no_history() {
    let fx = Adapters::start_with_history(with_history(), History::default()).await;
    let read = |path: &'static str| {
        let url = fx.url(path);
        async move { curl(&["-H", &thing_auth("acme", "reader"), &url]).await }
    };
    let r = read("/m/acme/c/telemetry/messages").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("no_history_store"), "{}", r.body);
    let r = read("/m/acme/c/commands/messages").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("no_history"), "{}", r.body);
    // Refusals come before either: no credentials, and a filter the reader may not see.
    let r = curl(&[&fx.url("/m/acme/c/telemetry/messages")]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = curl(&[
        "-H",
        &thing_auth("acme", "stranger"),
        &fx.url("/m/acme/c/telemetry/messages"),
    ])
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // A POST to the reader's path publishes on the subtopic `messages`, as before.
    let r = publish_text(&fx, "acme", "sensor", "/m/acme/c/commands/messages", "x").await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body.contains("m/acme/c/commands/messages"), "{}", r.body);
}

#[tokio::test]
async fn a_read_takes_a_token_of_the_tenants_rate_and_is_refused_over_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = fleetward_history::SqliteStore::open(&dir.path().join("history.db"))
        .await
        .expect("the store opens");
    fleetward_history::Store::migrate(&store)
        .await
        .expect("migrated");
    let mut r = with_history();
    for t in &mut r.tenants {
        t.limits.publish_rate = Some(1);
        t.limits.publish_burst = Some(1);
    }
    let history = History {
        sink: HistorySink::Off,
        reader: Some(fleetward_history::HistoryStore::Sqlite(store)),
    };
    let fx = Adapters::start_with_history(r, history).await;
    let read = || {
        let url = fx.url("/m/acme/c/telemetry/messages");
        async move { curl(&["-H", &thing_auth("acme", "reader"), &url]).await }
    };
    let first = read().await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body.contains(r#""messages":[]"#), "{}", first.body);
    let second = read().await;
    assert_eq!(second.status, 429, "{}", second.body);
    assert!(second.body.contains("rate_limited"), "{}", second.body);
    assert!(
        second.header("retry-after").is_some(),
        "{:?}",
        second.headers
    );
}
