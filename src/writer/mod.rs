//! `fleetward writer`: the cluster-mode history writer. It consumes the JetStream stream the
//! dataplanes publish history records to, stores them in PostgreSQL (acknowledging after the
//! commit), and, on one replica at a time, sweeps and reports what each Channel holds.

mod cluster;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use fleetward_history::stream::{self, ConsumerConfig, ConsumerStats, StreamConfig};
use fleetward_history::{HistoryStore, PgSslMode, PostgresOptions, PostgresStore, Store as _};
use tokio::sync::watch;

/// The flags of `fleetward writer`.
#[derive(Debug, Args)]
pub struct WriterArgs {
    /// NATS servers, comma-separated (the dataplanes' `--nats`).
    #[arg(long, env = "FLEETWARD_NATS", value_delimiter = ',', required = true)]
    nats: Vec<String>,
    /// The PostgreSQL URL, `postgres://user:password@host:5432/db` (the chart reads it from
    /// `history.postgres.existingSecret`, key `url`).
    #[arg(long, env = "FLEETWARD_HISTORY_POSTGRES_URL", hide_env_values = true)]
    postgres_url: String,
    /// Connections to PostgreSQL per writer.
    #[arg(
        long,
        env = "FLEETWARD_HISTORY_POSTGRES_POOL_SIZE",
        default_value_t = 8
    )]
    postgres_pool_size: u32,
    /// TLS to PostgreSQL: disable, prefer, require, verify-ca or verify-full (default: what
    /// the URL says, else prefer).
    #[arg(long, env = "FLEETWARD_HISTORY_POSTGRES_SSL_MODE")]
    postgres_ssl_mode: Option<PgSslMode>,
    /// The CA bundle that signs PostgreSQL's certificate (for verify-ca and verify-full).
    #[arg(long, env = "FLEETWARD_HISTORY_POSTGRES_CA")]
    postgres_ca: Option<PathBuf>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, default_value = "0.0.0.0:9464")]
    metrics_listen: SocketAddr,
    /// The most bytes the stream holds while PostgreSQL is down or slow; past it dataplanes
    /// refuse publishes on history channels (MQTT v5 0x97, HTTP 503) until writers catch up.
    #[arg(long, default_value_t = stream::DEFAULT_MAX_BACKLOG_BYTES)]
    max_backlog_bytes: u64,
    /// Records per transaction.
    #[arg(long, default_value_t = 1000)]
    max_batch: usize,
    /// How long JetStream waits for a writer's ack before another replica gets the records.
    #[arg(long, default_value = "60s", value_parser = humantime_secs)]
    ack_wait: Duration,
    /// Consume only: no sweep and no Channel status (a writer outside Kubernetes; history
    /// then grows until another writer, or `fleetward start`, sweeps it).
    #[arg(long)]
    no_maintenance: bool,
    /// How often the maintenance replica sweeps and writes Channel status.
    #[arg(long, default_value = "60s", value_parser = humantime_secs)]
    maintenance_every: Duration,
}

/// `30s`, `5m`, `1h`, or plain seconds.
fn humantime_secs(text: &str) -> Result<Duration, String> {
    let (n, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 5m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{text}`: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// Runs the writer until SIGTERM or Ctrl-C.
pub async fn run(args: WriterArgs) -> anyhow::Result<()> {
    let store = PostgresStore::connect(&PostgresOptions {
        url: args.postgres_url.clone(),
        pool_size: args.postgres_pool_size,
        ssl_mode: args.postgres_ssl_mode,
        ca_file: args.postgres_ca.clone(),
    })
    .context("the --postgres-url is not a PostgreSQL URL (postgres://user:password@host/db)")?;
    let stats = Arc::new(ConsumerStats::default());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    metrics::serve(args.metrics_listen, stats.clone(), ready.clone()).await?;
    migrate(&store).await;
    let js = connect_nats(&args.nats).await?;
    ensure_stream(&js, args.max_backlog_bytes).await;
    ready.store(true, std::sync::atomic::Ordering::SeqCst);

    let (stop_tx, stop) = watch::channel(false);
    if !args.no_maintenance {
        let client = kube::Client::try_default().await.context(
            "no Kubernetes API for the maintenance (sweep, Channel status); run in the cluster \
             or pass --no-maintenance",
        )?;
        tokio::spawn(cluster::maintain(
            client,
            store.clone(),
            args.maintenance_every,
        ));
    }
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: finishing the batch in hand");
        let _ = stop_tx.send(true);
    });
    let config = ConsumerConfig {
        max_batch: args.max_batch.max(1),
        ack_wait: args.ack_wait,
        max_ack_pending: i64::try_from(args.max_batch.max(1) * 20).unwrap_or(i64::MAX),
        ..ConsumerConfig::default()
    };
    let store = HistoryStore::Postgres(store);
    stream::consume(js, &store, &config, stats, stop).await;
    tracing::info!("stopped");
    Ok(())
}

/// Migrates under the store's advisory lock, retrying while PostgreSQL is unreachable.
async fn migrate(store: &PostgresStore) {
    let mut wait = Duration::from_millis(500);
    loop {
        match store.migrate().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "cannot migrate the history schema yet (is PostgreSQL up and the URL right?); retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn connect_nats(servers: &[String]) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .name("fleetward-writer")
        .retry_on_initial_connect()
        .max_reconnects(None::<usize>)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(100 * 2u64.pow(attempt.min(6) as u32)).min(Duration::from_secs(5))
        })
        .connect(servers.to_vec())
        .await
        .map_err(|e| {
            anyhow::anyhow!("the NATS servers {servers:?} are not usable ({e}); give --nats URLs like nats://host:4222")
        })?;
    Ok(async_nats::jetstream::new(client))
}

async fn ensure_stream(js: &async_nats::jetstream::Context, max_bytes: u64) {
    let config = StreamConfig {
        max_bytes,
        ..StreamConfig::default()
    };
    let mut wait = Duration::from_millis(200);
    loop {
        match stream::ensure_stream(js, &config).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "cannot make the history stream {} yet (is JetStream on: nats-server -js?); retrying", stream::STREAM);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
