//! A dataplane for the HTTP publish benchmark (`scripts/bench-http.sh`): one tenant, one thing
//! that may publish on one channel, and an MQTT subscriber on it so every publish is delivered.
//! Run: `cargo run --release -p fleetward-dataplane --example http_bench -- 127.0.0.1:18080`;
//! it prints `READY <http addr> <mqtt addr> <key>` and serves until killed.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

use std::net::SocketAddr;
use std::sync::Arc;

use fleetward_dataplane::Dataplane;
use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, KeyDigest, Qos, Resources, Snapshot, Tenant, Thing,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "bench-key-0123456789";

fn policy() -> Arc<Snapshot> {
    let thing = |name: &str| Thing {
        x509: Default::default(),
        credential_mode: Default::default(),
        attributes: Default::default(),
        tenant: "bench".into(),
        name: name.into(),
        key_digests: vec![KeyDigest::of(format!("{KEY}-{name}").as_bytes())],
        disabled: false,
        mountpoint: None,
        max_connections: None,
    };
    let r = Resources {
        tenants: vec![Tenant::named("bench")],
        things: vec![thing("sensor"), thing("reader")],
        channels: vec![Channel {
            history_retention_secs: Default::default(),
            uid: String::new(),
            tenant: "bench".into(),
            name: "telemetry".into(),
            max_qos: Qos::AtLeastOnce,
            retained_allowed: true,
            delivery_metadata: false,
            max_message_size: None,
        }],
        grants: ["sensor", "reader"]
            .into_iter()
            .map(|t| Grant {
                tenant: "bench".into(),
                name: t.into(),
                subject: GrantSubject::Thing(t.into()),
                channel: "telemetry".into(),
                actions: Actions::BOTH,
                allow: vec![],
                deny: vec![],
            })
            .collect(),
        ..Resources::default()
    };
    Arc::new(Snapshot::from_resources(1, r).expect("valid policy"))
}

fn mqtt_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A v3.1.1 subscriber on `m/bench/c/telemetry/#` that drains what it is sent.
async fn subscriber(mqtt: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(mqtt).await?;
    let mut body = Vec::new();
    mqtt_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0b1100_0010, 0, 0]);
    mqtt_str(&mut body, b"bench-reader");
    mqtt_str(&mut body, b"bench/reader");
    mqtt_str(&mut body, format!("{KEY}-reader").as_bytes());
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend_from_slice(&body);
    s.write_all(&connect).await?;
    let mut sub = vec![0, 1];
    mqtt_str(&mut sub, b"m/bench/c/telemetry/#");
    sub.push(0);
    let mut packet = vec![0x82, sub.len() as u8];
    packet.extend_from_slice(&sub);
    s.write_all(&packet).await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if s.read(&mut buf).await? == 0 {
            anyhow::bail!("the benchmark subscriber was disconnected");
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let http: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .map_err(|e| anyhow::anyhow!("the first argument must be host:port to listen on: {e}"))?;
    let (_tx, rx) = tokio::sync::watch::channel(policy());
    let mut dp = Dataplane::new(rx)
        .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .http_listen(Some(http))
        .start()
        .await?;
    let http = dp
        .http_addr
        .ok_or_else(|| anyhow::anyhow!("no HTTP listener"))?;
    let sub = tokio::spawn(subscriber(dp.mqtt_addr));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    println!("READY {http} {} {KEY}-sensor", dp.mqtt_addr);
    tokio::select! {
        r = dp.wait() => r,
        r = sub => r?,
    }
}
