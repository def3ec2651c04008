//! Probe: the dataplane's resident memory per idle MQTT connection, with and without a router
//! link (a subscription). Run: `cargo run --release -p fleetward-dataplane --example idle_rss -- 2000`
//! (add `same` to have every connection subscribe to one filter instead of one each).

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fleetward_dataplane::{Dataplane, MqttConfig};
use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, KeyDigest, Qos, Resources, Snapshot, Tenant, Thing,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The allocator the fleetward binary runs on, so the figure is the binary's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const KEY: &str = "probe-key-0123456789";

fn policy() -> Arc<Snapshot> {
    let r = Resources {
        tenants: vec![Tenant::named("acme")],
        things: vec![Thing {
            x509: Default::default(),
            credential_mode: Default::default(),
            attributes: Default::default(),
            tenant: "acme".into(),
            name: "probe".into(),
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
            name: "probe".into(),
            subject: GrantSubject::Thing("probe".into()),
            channel: "telemetry".into(),
            actions: Actions::BOTH,
            allow: vec![],
            deny: vec![],
        }],
        ..Resources::default()
    };
    Arc::new(Snapshot::from_resources(1, r).expect("valid policy"))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 0];
    for s in [id, "acme/probe", KEY] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(1);
    let mut out = vec![0x82, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

async fn serve() -> anyhow::Result<()> {
    let (_tx, rx) = tokio::sync::watch::channel(policy());
    let mut dp = Dataplane::new(rx)
        .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .mqtt_config(MqttConfig {
            max_connections: 20_000,
            ..MqttConfig::default()
        })
        .start()
        .await?;
    println!("{}", dp.mqtt_addr.port());
    dp.wait().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        return serve().await;
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let same_filter = args.get(2).map(String::as_str) == Some("same");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], line.trim().parse::<u16>()?));

    let open = |count: usize, offset: usize| async move {
        let mut conns = Vec::with_capacity(count);
        for i in 0..count {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(&connect_packet(&format!("c{}", i + offset)))
                .await?;
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).await?;
            anyhow::ensure!(ack == [0x20, 2, 0, 0], "CONNACK {ack:?}");
            conns.push(s);
        }
        anyhow::Ok(conns)
    };
    // Warm up allocator, runtime and cache with a few connections, then measure.
    let warm = open(50, 1_000_000).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(pid);
    let mut conns = open(n, 0).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid);
    println!(
        "{n} idle connections (no subscription): RSS {base} KiB -> {idle} KiB, {:.1} KiB per connection",
        (idle - base) as f64 / n as f64
    );
    for (i, s) in conns.iter_mut().enumerate() {
        let filter = if same_filter {
            "m/acme/c/telemetry/all".to_owned()
        } else {
            format!("m/acme/c/telemetry/{i}")
        };
        s.write_all(&subscribe_packet(&filter)).await?;
        let mut ack = [0u8; 5];
        s.read_exact(&mut ack).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let linked = rss_kib(pid);
    println!(
        "{n} idle connections with one subscription each ({}): RSS {linked} KiB, {:.1} KiB per connection",
        if same_filter {
            "router link, one shared filter"
        } else {
            "router link and a filter log each"
        },
        (linked - base) as f64 / n as f64
    );
    drop(conns);
    drop(warm);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
