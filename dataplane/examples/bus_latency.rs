//! Benchmark: the extra latency of cross-pod over same-pod delivery, and core NATS against
//! JetStream for QoS 1. Starts its own `nats-server -js` on free ports and two dataplanes.
//! Run: `cargo run --release -p fleetward-dataplane --example bus_latency -- [messages]`

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

#[path = "support/nats_server.rs"]
mod nats_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fleetward_dataplane::Dataplane;
use fleetward_dataplane::bus::NatsConfig;
use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, KeyDigest, Qos, Resources, Snapshot, Tenant, Thing,
};
use futures_util::StreamExt as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use nats_server::{free_port, nats_server};

const KEY: &str = "bench-key-0123456789";

fn policy() -> Arc<Snapshot> {
    let r = Resources {
        tenants: vec![Tenant::named("acme")],
        things: vec![Thing {
            x509: Default::default(),
            credential_mode: Default::default(),
            attributes: Default::default(),
            tenant: "acme".into(),
            name: "bench".into(),
            key_digests: vec![KeyDigest::of(KEY.as_bytes())],
            disabled: false,
            mountpoint: None,
            max_connections: None,
        }],
        channels: vec![Channel {
            history_retention_secs: Default::default(),
            uid: String::new(),
            tenant: "acme".into(),
            name: "telemetry".into(),
            max_qos: Qos::AtLeastOnce,
            retained_allowed: true,
            delivery_metadata: false,
            max_message_size: None,
        }],
        grants: vec![Grant {
            tenant: "acme".into(),
            name: "bench".into(),
            subject: GrantSubject::Thing("bench".into()),
            channel: "telemetry".into(),
            actions: Actions::BOTH,
            allow: vec![],
            deny: vec![],
        }],
        ..Resources::default()
    };
    Arc::new(Snapshot::from_resources(1, r).expect("valid policy"))
}

/// A connected rumqttc client whose received payloads (with their arrival time) go to a channel.
async fn client(
    addr: SocketAddr,
    id: &str,
    filter: Option<&str>,
) -> (AsyncClient, mpsc::UnboundedReceiver<(Vec<u8>, Instant)>) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials("acme/bench", KEY);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut ev) = AsyncClient::new(o, 10_000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.payload.to_vec(), Instant::now()));
                }
                Ok(Event::Incoming(Packet::SubAck(_) | Packet::ConnAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    });
    ready.recv().await;
    if let Some(f) = filter {
        c.subscribe(f, QoS::AtLeastOnce).await.expect("queued");
        ready.recv().await;
    }
    (c, rx)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut d: Vec<Duration>) -> Duration {
    d.sort();
    let p50 = percentile(&d, 0.5);
    println!(
        "{name:<44} n={:<6} p50={:>8.3} ms  p99={:>8.3} ms",
        d.len(),
        p50.as_secs_f64() * 1e3,
        percentile(&d, 0.99).as_secs_f64() * 1e3
    );
    p50
}

async fn dataplanes(n: usize, qos: QoS, url: &str) {
    let mut pods = Vec::new();
    for node in ["bench-a", "bench-b"] {
        let (_tx, rx) = tokio::sync::watch::channel(policy());
        let d = Dataplane::new(rx)
            .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .nats(Some(NatsConfig::new(vec![url.to_owned()], node)))
            .start()
            .await
            .expect("dataplane starts");
        pods.push((d, _tx));
    }
    let (a, b) = (pods[0].0.mqtt_addr, pods[1].0.mqtt_addr);
    while !pods.iter().all(|(d, _)| d.metrics().bus_is_connected()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_same_c, mut same) = client(a, "same", Some("m/acme/c/telemetry/#")).await;
    let (_cross_c, mut cross) = client(b, "cross", Some("m/acme/c/telemetry/#")).await;
    let (publisher, _) = client(a, "pub", None).await;
    // Let the NATS subscription settle, then warm up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let mut sent = Vec::with_capacity(n);
    let warmup = n / 10;
    for i in 0..n + warmup {
        let at = Instant::now();
        publisher
            .publish("m/acme/c/telemetry/t", qos, false, i.to_string())
            .await
            .expect("queued");
        if i >= warmup {
            sent.push(at);
        }
        // One message at a time in flight, paced: latency, not queueing.
        tokio::time::sleep(Duration::from_micros(1500)).await;
    }
    let collect = |rx: &mut mpsc::UnboundedReceiver<(Vec<u8>, Instant)>| {
        let mut out = Vec::new();
        while let Ok((p, at)) = rx.try_recv() {
            let i: usize = String::from_utf8_lossy(&p).parse().unwrap_or(usize::MAX);
            if i >= warmup && i < n + warmup {
                out.push(at.duration_since(sent[i - warmup]));
            }
        }
        out
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let q = if qos == QoS::AtMostOnce { 0 } else { 1 };
    let s = report(&format!("MQTT QoS {q} same pod"), collect(&mut same));
    let c = report(
        &format!("MQTT QoS {q} cross pod (via NATS)"),
        collect(&mut cross),
    );
    println!(
        "  => extra cross-pod p50 at QoS {q}: {:.3} ms  ({:.1} s run)",
        (c.as_secs_f64() - s.as_secs_f64()) * 1e3,
        start.elapsed().as_secs_f64()
    );
}

async fn core_vs_jetstream(n: usize, url: &str) {
    let publisher = async_nats::connect(url).await.expect("connects");
    let subscriber = async_nats::connect(url).await.expect("connects");
    let payload = bytes::Bytes::from(vec![7u8; 256]);
    core_nats(n, &publisher, &subscriber, &payload).await;
    jetstream_publish(n, &publisher, &payload).await;
}

/// Core NATS: publish → subscriber latency, then throughput.
async fn core_nats(
    n: usize,
    publisher: &async_nats::Client,
    subscriber: &async_nats::Client,
    payload: &bytes::Bytes,
) {
    // Core NATS: latency one at a time, then throughput.
    let mut sub = subscriber.subscribe("bench.core").await.expect("sub");
    subscriber.flush().await.expect("flush");
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let at = Instant::now();
        publisher
            .publish("bench.core", payload.clone())
            .await
            .expect("publish");
        publisher.flush().await.expect("flush");
        sub.next().await.expect("a message");
        lat.push(at.elapsed());
    }
    report("core NATS publish -> subscriber", lat);
    let total = n * 20;
    let at = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..total {
            sub.next().await.expect("a message");
        }
    });
    for _ in 0..total {
        publisher
            .publish("bench.core", payload.clone())
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    reader.await.expect("reader");
    println!(
        "{:<44} {:>10.0} msg/s (256 B, {total} messages)",
        "core NATS throughput",
        total as f64 / at.elapsed().as_secs_f64()
    );
}

/// JetStream: acknowledged publish → consumer latency, then acknowledged throughput.
async fn jetstream_publish(n: usize, publisher: &async_nats::Client, payload: &bytes::Bytes) {
    let total = n * 20;
    // JetStream: a file stream, publish acknowledged by the server, a push consumer.
    let js = jetstream::new(publisher.clone());
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: "bench".into(),
            subjects: vec!["bench.js".into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut ack_lat = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let at = Instant::now();
        let ack = js
            .publish("bench.js", payload.clone())
            .await
            .expect("publish");
        ack.await.expect("stored");
        ack_lat.push(at.elapsed());
        messages.next().await.expect("a message").expect("ok");
        lat.push(at.elapsed());
    }
    report("JetStream publish -> server ack (stored)", ack_lat);
    report("JetStream publish -> ack -> consumer", lat);
    let at = Instant::now();
    // Acks are awaited a window at a time: async-nats holds a permit per unawaited ack
    // (`max_ack_inflight`), and a publish waits for one, so awaiting them all at the end of the
    // loop stalls it for good.
    let mut acks = Vec::with_capacity(1000);
    for _ in 0..total {
        acks.push(
            js.publish("bench.js", payload.clone())
                .await
                .expect("publish"),
        );
        if acks.len() == 1000 {
            for a in acks.drain(..) {
                a.await.expect("stored");
            }
        }
    }
    for a in acks {
        a.await.expect("stored");
    }
    println!(
        "{:<44} {:>10.0} msg/s (256 B, {total} messages, acks pipelined 1,000 at a time)",
        "JetStream acknowledged publish throughput",
        total as f64 / at.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let port = free_port();
    let _server = nats_server(port);
    let url = format!("nats://127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    dataplanes(n, QoS::AtMostOnce, &url).await;
    dataplanes(n, QoS::AtLeastOnce, &url).await;
    core_vs_jetstream(n, &url).await;
}
