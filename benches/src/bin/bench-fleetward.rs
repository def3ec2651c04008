//! The Fleetward dataplane as a benchmark target: authorization on, the policy of
//! `fleetward_bench::fixture` (tenant `bench`, things `pub-<i>`/`sub-<i>` with keys, channels
//! `pair-<i>` and `fan`), default limits and router settings as `fleetward dataplane` runs
//! them, on the allocator the `fleetward` binary uses.
//!
//! Run: `cargo run --release -p fleetward-bench --bin bench-fleetward -- \
//!   --mqtt-listen 127.0.0.1:1883 --admin-listen 127.0.0.1:8081 --pairs 10000`
//!
//! With `--mqtts-listen 127.0.0.1:8883 --tls-dir DIR` it serves MQTTS too, with a server
//! certificate it writes into DIR at start, and the tenant trusts a device CA written there
//! with a client certificate for each of the first `--client-certs` pairs' things (every thing
//! signs in with its key or a certificate); `fleetward-bench --tls-dir DIR` connects with
//! them (`fleetward_bench::tls`).

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

use std::net::SocketAddr;

use clap::Parser;
use fleetward_bench::{fixture, tls};
use fleetward_dataplane::{Dataplane, History, HistorySink, MqttConfig};
use fleetward_policy::Engine;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The jemalloc options the `fleetward` binary sets (its background thread returns freed
/// pages while the process is idle), so memory figures are the binary's.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 23] = b"background_thread:true\0";

#[derive(Parser, Debug)]
struct Args {
    /// Address of the MQTT listener.
    #[arg(long)]
    mqtt_listen: SocketAddr,
    /// Address of an MQTTS listener (needs --tls-dir).
    #[arg(long, requires = "tls_dir")]
    mqtts_listen: Option<SocketAddr>,
    /// Where to write the server certificate, the tenant's device CA and the things' client
    /// certificates at start (replacing what is there).
    #[arg(long, value_name = "DIR", requires = "mqtts_listen")]
    tls_dir: Option<std::path::PathBuf>,
    /// Things to write a client certificate for: `pub-<i>` and `sub-<i>` for `i` below this
    /// (at most --pairs).
    #[arg(long, default_value_t = 1_000)]
    client_certs: usize,
    /// Address of /metrics.
    #[arg(long)]
    admin_listen: SocketAddr,
    /// Publisher/subscriber pairs to grant (things `pub-<i>` and `sub-<i>`).
    #[arg(long, default_value_t = 10_000)]
    pairs: usize,
    /// Entries of the decision cache; 0 turns it off.
    #[arg(long, default_value_t = MqttConfig::default().decision_cache_entries)]
    decision_cache_entries: u64,
    /// The most client connections held (the suite raises it above a flood's size).
    #[arg(long, default_value_t = MqttConfig::default().max_connections)]
    max_connections: usize,
    /// The most of those not authenticated yet; when full, the oldest is closed. Default: the
    /// dataplane's (a quarter of --max-connections, at most 1,000).
    #[arg(long)]
    max_pending_connections: Option<usize>,
    /// Seconds a new connection has to send its CONNECT (the suite's flood scenarios raise it
    /// past their window, so that the flood is held open rather than closed and reopened).
    #[arg(long, default_value_t = MqttConfig::default().connect_timeout.as_secs())]
    connect_timeout_secs: u64,
    /// The tenant's authorization engine: `builtin`, or `cedar` (its Connections translated
    /// into Cedar policies, decided by the Cedar engine behind the same decision cache).
    #[arg(long, default_value = "builtin", value_parser = ["builtin", "cedar"])]
    engine: String,
    /// Keep the history of the `fan` channel in a SQLite file here, written by the
    /// in-process writer `fleetward start` runs.
    #[arg(long, value_name = "PATH")]
    history_sqlite: Option<std::path::PathBuf>,
    /// With --history-sqlite: the channels `pair-<i>` for `i` from this on keep history too.
    #[arg(long, value_name = "I")]
    history_pairs_from: Option<usize>,
}

/// The in-process history of `fleetward start` over a SQLite file at `path`.
async fn history(path: &std::path::Path) -> anyhow::Result<History> {
    use fleetward_history::writer::{self, WriterConfig};
    use fleetward_history::{HistoryStore, SqliteStore, Store as _};
    let store = SqliteStore::open(path).await?;
    store.migrate().await?;
    let config = WriterConfig::default();
    let (sink, rx) = writer::channel(&config);
    let stats = sink.stats().clone();
    tokio::spawn(writer::run(
        store.clone(),
        rx,
        config,
        stats,
        std::future::pending(),
    ));
    Ok(History {
        sink: HistorySink::Local(sink),
        reader: Some(HistoryStore::Sqlite(store)),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let engine = match args.engine.as_str() {
        "cedar" => Engine::Cedar,
        _ => Engine::Builtin,
    };
    let mut device_ca = None;
    let mut mqtts = None;
    if let (Some(addr), Some(dir)) = (args.mqtts_listen, &args.tls_dir) {
        let n = args.client_certs.min(args.pairs);
        let things = (0..n).flat_map(|i| [fixture::publisher(i), fixture::subscriber(i)]);
        let made = tls::generate(dir, things)?;
        device_ca = Some(made.device_ca);
        mqtts = Some((addr, made.server_cert, made.server_key));
    }
    let mut policy = fixture::policy_with_ca(args.pairs, engine, device_ca)?;
    let mut history_of = History::default();
    if let Some(path) = &args.history_sqlite {
        policy = fixture::with_history(&policy, args.history_pairs_from)?;
        history_of = history(path).await?;
    }
    let (_policy, rx) = tokio::sync::watch::channel(policy);
    let mut dp = Dataplane::new(rx);
    if let Some((addr, cert, key)) = mqtts {
        dp = dp.mqtts_listen(addr, cert, key);
    }
    let mut dp = dp
        .history(history_of)
        .mqtt_listen(args.mqtt_listen)
        .admin_listen(Some(args.admin_listen))
        .mqtt_config(MqttConfig {
            decision_cache_entries: args.decision_cache_entries,
            max_connections: args.max_connections,
            connect_timeout: std::time::Duration::from_secs(args.connect_timeout_secs),
            ..MqttConfig::default()
        })
        .max_pending_connections(args.max_pending_connections)
        .start()
        .await?;
    println!(
        "mqtt={} admin={}{}",
        dp.mqtt_addr,
        dp.admin_addr.map_or_else(String::new, |a| a.to_string()),
        dp.mqtts_addr
            .map_or_else(String::new, |a| format!(" mqtts={a}"))
    );
    dp.wait().await
}
