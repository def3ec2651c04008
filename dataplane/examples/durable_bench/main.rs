//! Benchmark of issue 25: persistent sessions on JetStream (BENCHMARKS.md, "Persistent
//! sessions on JetStream"). Starts its own `nats-server -js` (free ports, store in a temporary
//! directory) and four in-process dataplanes on it: pods A and B store QoS 1/2 messages in
//! JetStream (the default with `--nats`), pods C and D do not (`NatsConfig::durable = None`, the
//! message path before the change), so that every figure is taken side by side in one run.
//! Clients are rumqttc MQTT v5 clients in the same process.
//!
//! 1. resume: a persistent session (expiry 300) subscribed at QoS 1 on A disconnects, 100 QoS 1
//!    messages are published and acknowledged, it connects again on B: CONNECT → CONNACK
//!    (session present must be 1) and CONNECT → the 100th queued message.
//! 2. throughput: QoS 1 1:1 (one publisher, 32 in flight, one subscriber), persistent against
//!    clean sessions, publisher on A and subscriber on B, and both on A; plus clean QoS 1 and
//!    QoS 0 on the pods without JetStream storage (C, D). Modes interleaved, rotated per round.
//! 3. latency: publish → deliver at a fixed rate (10 pairs, timestamps in the payload), QoS 1,
//!    persistent subscribers on B, publishers on A; the same with clean subscribers beside it.
//!
//! Every figure is printed as a line `RESULT {json}` for scripts/bench_durable.py. Duplicates,
//! losses and reordering seen by a scenario are counted in its result, never hidden.
//!
//! Run: `cargo run --release -p fleetward-dataplane --example durable_bench -- [--smoke]`

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetward_dataplane::bus::NatsConfig;
use fleetward_dataplane::{Dataplane, RunningDataplane};
use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, KeyDigest, Qos, Resources, Snapshot, Tenant, Thing,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, watch};

const KEY: &str = "bench-key-0123456789";

/// Sizes: the full run, or `--smoke` (what CI runs: seconds, figures meaningless).
struct Sizes {
    resumes: usize,
    queued: u32,
    rounds: usize,
    warmup: Duration,
    window: Duration,
    rate: u32,
    pairs: u32,
    latency_window: Duration,
}

impl Sizes {
    fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                resumes: 3,
                queued: 100,
                rounds: 1,
                warmup: Duration::from_millis(300),
                window: Duration::from_millis(700),
                rate: 1_000,
                pairs: 2,
                latency_window: Duration::from_secs(1),
            }
        } else {
            Self {
                resumes: 20,
                queued: 100,
                rounds: 3,
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(4),
                rate: 10_000,
                pairs: 10,
                latency_window: Duration::from_secs(8),
            }
        }
    }
}

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
        // `telemetry` has persistent sessions; `live` never does (its messages are not stored).
        channels: ["telemetry", "live"]
            .into_iter()
            .map(|name| Channel {
                history_retention_secs: Default::default(),
                uid: String::new(),
                tenant: "acme".into(),
                name: name.into(),
                max_qos: Qos::AtLeastOnce,
                retained_allowed: true,
                delivery_metadata: false,
                max_message_size: None,
            })
            .collect(),
        grants: ["telemetry", "live"]
            .into_iter()
            .map(|channel| Grant {
                tenant: "acme".into(),
                name: format!("bench-{channel}"),
                subject: GrantSubject::Thing("bench".into()),
                channel: channel.into(),
                actions: Actions::BOTH,
                allow: vec![],
                deny: vec![],
            })
            .collect(),
        ..Resources::default()
    };
    Arc::new(Snapshot::from_resources(1, r).expect("valid policy"))
}

/// An in-process dataplane on the NATS server.
struct Pod {
    dp: RunningDataplane,
    addr: SocketAddr,
    _policy: watch::Sender<Arc<Snapshot>>,
}

async fn pod(node: &str, url: &str, durable: bool) -> Pod {
    let (tx, rx) = watch::channel(policy());
    let mut nats = NatsConfig::new(vec![url.to_owned()], node);
    if !durable {
        nats.durable = None;
    }
    let dp = Dataplane::new(rx)
        .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .nats(Some(nats))
        .start()
        .await
        .expect("dataplane starts");
    let until = Instant::now() + Duration::from_secs(15);
    while !dp.metrics().bus_is_connected() {
        assert!(Instant::now() < until, "{node}: the bus did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = dp.mqtt_addr;
    let p = Pod {
        dp,
        addr,
        _policy: tx,
    };
    if durable {
        // JetStream answered once, and the pod knows a persistent session follows
        // `telemetry` (the probe's own): a probe QoS 1 publish there is stored.
        let mut follower = Conn::connect(p.addr, &format!("follower-{node}"), true, false).await;
        follower
            .subscribe("m/acme/c/telemetry/probe", QoS::AtLeastOnce)
            .await;
        while p.dp.metrics().durable_counts().0 == 0 {
            assert!(Instant::now() < until, "{node}: JetStream never stored");
            let c = Conn::connect(p.addr, &format!("probe-{node}"), false, false).await;
            let _ = c.publish("m/acme/c/telemetry/probe", QoS::AtLeastOnce, vec![0]);
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.close().await;
        }
        follower.close().await;
    }
    p
}

/// A received PUBLISH: payload, DUP flag, arrival.
struct Got {
    payload: bytes::Bytes,
    dup: bool,
    at: Instant,
}

/// A connected rumqttc v5 client; its PUBLISHes are counted and, if `forward`, sent on `rx`.
struct Conn {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Got>,
    received: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    session_present: bool,
    connack_in: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Conn {
    async fn connect(addr: SocketAddr, id: &str, persistent: bool, forward: bool) -> Self {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_credentials("acme/bench", KEY);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_clean_start(!persistent);
        o.set_session_expiry_interval(persistent.then_some(300));
        // The suite's QoS 1 pairs keep 32 in flight per publisher.
        o.set_outgoing_inflight_upper_limit(32);
        let (client, mut ev) = AsyncClient::new(o, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        let acked = Arc::new(AtomicU64::new(0));
        let acks = acked.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut ack_tx = Some(ack_tx);
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        if forward {
                            let at = Instant::now();
                            let (payload, dup) = (p.payload, p.dup);
                            let _ = tx.send(Got { payload, dup, at });
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(c))) => {
                        if let Some(t) = ack_tx.take() {
                            let _ = t.send((c.session_present, started.elapsed()));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let (session_present, connack_in) = tokio::time::timeout(Duration::from_secs(10), ack_rx)
            .await
            .expect("a CONNACK within 10 s")
            .expect("a CONNACK, not a closed connection");
        Self {
            client,
            rx,
            received,
            acked,
            session_present,
            connack_in,
            task,
        }
    }

    /// Subscribes and waits until the subscription holds (a probe to itself comes back).
    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("queued");
        // The SUBACK is not forwarded; a short pause covers it and the bus interest.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    fn publish(&self, topic: &str, qos: QoS, payload: Vec<u8>) -> Result<(), String> {
        self.client
            .try_publish(topic, qos, false, payload)
            .map_err(|e| e.to_string())
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn result(v: serde_json::Value) {
    println!("RESULT {v}");
}

#[path = "../support/nats_server.rs"]
mod nats_server;
mod scenarios;

use nats_server::{free_port, nats_server};

#[tokio::main]
async fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let sizes = Sizes::new(smoke);
    let port = free_port();
    let _server = nats_server(port);
    let url = format!("nats://127.0.0.1:{port}");
    let a = pod("pod-a", &url, true).await;
    let b = pod("pod-b", &url, true).await;
    let c = pod("pod-c", &url, false).await;
    let d = pod("pod-d", &url, false).await;
    let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
    if want("resume") {
        scenarios::resume(&sizes, &a, &b).await;
    }
    if want("throughput") {
        scenarios::throughput(&sizes, [&a, &b, &c, &d]).await;
    }
    if want("latency") {
        scenarios::latency(&sizes, &a, &b).await;
    }
}
