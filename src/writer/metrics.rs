//! The writer's `/metrics` (Prometheus text), `/healthz` and `/readyz`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use fleetward_history::stream::ConsumerStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The consumer's figures, read at each scrape.
#[derive(Debug)]
struct WriterCollector(Arc<ConsumerStats>);

impl Collector for WriterCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let counters = [
            (
                "history_written",
                "Rows written to the history store (redeliveries not counted twice).",
                s.writer.written.load(Ordering::Relaxed),
            ),
            (
                "history_batches",
                "Batches committed.",
                s.writer.batches.load(Ordering::Relaxed),
            ),
            (
                "history_failures",
                "Batch inserts that failed and were retried (PostgreSQL down or refusing).",
                s.writer.failures.load(Ordering::Relaxed),
            ),
            (
                "history_undecodable",
                "Stream messages that were not records, dropped.",
                s.undecodable.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            ConstCounter::new(v).encode(e.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let gauges = [
            (
                "history_backlog_messages",
                "Records in the JetStream stream not yet stored: waiting, or delivered and unacknowledged.",
                s.backlog_messages.load(Ordering::Relaxed),
            ),
            (
                "history_backlog_bytes",
                "Bytes the JetStream stream holds (what no writer has stored yet).",
                s.backlog_bytes.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let v = i64::try_from(v).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(e.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// Serves on `listen` in the background; fails only when the address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    stats: Arc<ConsumerStats>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut registry = Registry::with_prefix("fleetward");
    registry.register_collector(Box::new(WriterCollector(stats)));
    let registry = Arc::new(registry);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::SeqCst);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "migrating or waiting for NATS",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut text = String::new();
                    match prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
                    {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                            )],
                            text,
                        ),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(header::CONTENT_TYPE, "text/plain")],
                            String::from("the metrics could not be encoded"),
                        ),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on --metrics-listen {listen}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}
