//! Bare rumqttd 0.20 as a benchmark baseline: its own broker and v4 network listener, with the
//! router settings the dataplane gives it (`RumqttdConfig::default()`), and no authentication.
//! Every rumqttd connection takes one of the router's links, so `[max-connections]` (default:
//! the dataplane's link count) is raised for the idle-connection runs.
//!
//! Run: `cargo run --release -p fleetward-bench --bin bench-rumqttd -- 127.0.0.1:1883 [max-connections]`

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use fleetward_dataplane::router::RumqttdConfig;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

fn main() -> anyhow::Result<()> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .context("give the address to listen on, for example 127.0.0.1:1883")?
        .parse()
        .context("the listen address is not host:port")?;
    let ours = RumqttdConfig::default();
    let max_connections = match std::env::args().nth(2) {
        Some(n) => n.parse().context("max-connections is not a number")?,
        None => ours.max_links + 1,
    };
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: ours.max_outgoing_packet_count,
            max_segment_size: ours.segment_size,
            max_segment_count: ours.segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Config::default()
    };
    println!("mqtt={listen}");
    Broker::new(config)
        .start()
        .map_err(|e| anyhow::anyhow!("rumqttd stopped: {e}"))
}
