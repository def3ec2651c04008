//! The Fleetward dataplane as a benchmark target: authorization on, a snapshot granting each pair.
//!
//! Tenant `bench`; per pair `i` a channel `pair-<i>` (QoS ≤ 1), a thing `pub-<i>` that may
//! publish on it and a thing `sub-<i>` that may subscribe to it, with the keys `mqtt_load
//! --auth` sends. Default limits and router settings, as `fleetward dataplane` runs them.
//!
//! Run: `cargo run --release -p fleetward-dataplane --example bench_dataplane -- \
//!   --mqtt-listen 127.0.0.1:1883 --admin-listen 127.0.0.1:8081`

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use fleetward_dataplane::Dataplane;
use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, KeyDigest, Qos, Resources, Snapshot, Tenant, Thing,
};

/// The allocator the fleetward binary runs on, so the figure is the binary's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Address of the MQTT listener.
    #[arg(long)]
    mqtt_listen: SocketAddr,
    /// Address of /metrics.
    #[arg(long)]
    admin_listen: SocketAddr,
    /// Publisher/subscriber pairs to grant.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
}

fn thing(name: String) -> Thing {
    Thing {
        tenant: "bench".into(),
        key_digests: vec![KeyDigest::of(
            format!("bench-key-{name}-0123456789").as_bytes(),
        )],
        name,
        disabled: false,
        mountpoint: None,
    }
}

fn grant(thing: &str, channel: &str, actions: Actions) -> Grant {
    Grant {
        tenant: "bench".into(),
        name: format!("{thing}-{channel}"),
        subject: GrantSubject::Thing(thing.into()),
        channel: channel.into(),
        actions,
        allow: Vec::new(),
        deny: Vec::new(),
    }
}

fn policy(pairs: usize) -> anyhow::Result<Arc<Snapshot>> {
    let mut r = Resources::default();
    r.tenants.push(Tenant {
        name: "bench".into(),
        suspended: false,
        limits: Default::default(),
    });
    for i in 0..pairs {
        let channel = format!("pair-{i}");
        let (publisher, subscriber) = (format!("pub-{i}"), format!("sub-{i}"));
        r.grants.push(grant(&publisher, &channel, Actions::PUBLISH));
        r.grants
            .push(grant(&subscriber, &channel, Actions::SUBSCRIBE));
        r.things.push(thing(publisher));
        r.things.push(thing(subscriber));
        r.channels.push(Channel {
            tenant: "bench".into(),
            name: channel,
            max_qos: Qos::AtLeastOnce,
            retained_allowed: false,
            max_message_size: None,
        });
    }
    Ok(Arc::new(Snapshot::from_resources(1, r)?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (_policy, rx) = tokio::sync::watch::channel(policy(args.pairs)?);
    let dp = Dataplane::new(rx)
        .mqtt_listen(args.mqtt_listen)
        .admin_listen(Some(args.admin_listen))
        .start()
        .await?;
    println!(
        "mqtt={} admin={}",
        dp.mqtt_addr,
        dp.admin_addr.map_or_else(String::new, |a| a.to_string())
    );
    dp.wait().await
}
