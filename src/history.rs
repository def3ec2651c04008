//! Message history in `fleetward start`: the embedded SQLite store at
//! `<state-dir>/history.db`, written in-process with the cluster writer's batching, swept on a
//! schedule, and read by the dataplane's reader.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use fleetward_dataplane::{History, HistorySink};
use fleetward_history::writer::{self, WriterConfig};
use fleetward_history::{ChannelStats, HistoryStore, Kept, SqliteStore, Store as _};
use fleetward_policy::Snapshot;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The store's file in the state directory.
pub const HISTORY_FILE: &str = "history.db";

/// What a channel's history holds, as the status report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryFigures {
    /// Messages kept.
    pub messages: u64,
    /// Bytes kept (payload, topic, properties and publisher, and 64 a message).
    pub bytes: u64,
    /// The oldest kept message's time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<String>,
}

/// The latest figures per `(tenant, channel)`, written by the sweep.
#[derive(Clone, Debug, Default)]
pub struct Figures(Arc<Mutex<BTreeMap<(String, String), HistoryFigures>>>);

impl Figures {
    /// The figures of one channel, if it holds anything.
    pub fn of(&self, tenant: &str, channel: &str) -> Option<HistoryFigures> {
        self.0
            .lock()
            .ok()?
            .get(&(tenant.to_owned(), channel.to_owned()))
            .cloned()
    }

    /// Takes the figures of a count; `true` when they changed.
    fn set(&self, stats: Vec<ChannelStats>) -> bool {
        let next: BTreeMap<_, _> = stats
            .into_iter()
            .map(|s| {
                let oldest = s.oldest_ns.map(|ns| {
                    let secs = i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX);
                    chrono::DateTime::from_timestamp(secs, (ns % 1_000_000_000) as u32)
                        .unwrap_or_default()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                });
                let figures = HistoryFigures {
                    messages: s.messages,
                    bytes: s.bytes,
                    oldest,
                };
                ((s.tenant, s.channel), figures)
            })
            .collect();
        let Ok(mut now) = self.0.lock() else {
            return false;
        };
        let changed = *now != next;
        *now = next;
        changed
    }
}

/// The running history: what the dataplane is given, and the writer to wait for at shutdown.
pub struct Running {
    /// The dataplane's sink and reader.
    pub history: History,
    /// What the channels hold.
    pub figures: Figures,
    /// Wakes when the figures changed.
    pub changed: watch::Receiver<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    writer: JoinHandle<()>,
}

impl Running {
    /// Closes the writer's queue and waits until everything queued is written.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(30), &mut self.writer)
            .await
            .is_err()
        {
            tracing::warn!("history: the writer did not finish within 30 s");
        }
    }
}

/// Opens (or creates) `<state_dir>/history.db`, migrates it, and starts the writer and the
/// sweep (every `sweep_every`), which follows `policy` for what each channel keeps.
pub async fn start(
    state_dir: &Path,
    policy: watch::Receiver<Arc<Snapshot>>,
    sweep_every: Duration,
) -> anyhow::Result<Running> {
    let path = state_dir.join(HISTORY_FILE);
    let store = SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening the history store {}", path.display()))?;
    store
        .migrate()
        .await
        .with_context(|| format!("migrating the history store {}", path.display()))?;
    let config = WriterConfig::default();
    let (sink, rx) = writer::channel(&config);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(writer::run(
        store.clone(),
        rx,
        config,
        sink.stats().clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let figures = Figures::default();
    let (changed_tx, changed) = watch::channel(());
    let report = figures.clone();
    tokio::spawn(writer::maintain(
        store.clone(),
        sweep_every,
        move || kept(&policy.borrow()),
        move |stats| {
            if report.set(stats) {
                let _ = changed_tx.send(());
            }
        },
    ));
    Ok(Running {
        history: History {
            sink: HistorySink::Local(sink),
            reader: Some(HistoryStore::Sqlite(store)),
        },
        figures,
        changed,
        stop: Some(stop_tx),
        writer,
    })
}

/// The channels of `snapshot` that keep history, with their retention and tenant's quota.
pub fn kept(snapshot: &Snapshot) -> Vec<Kept> {
    snapshot
        .channels()
        .filter_map(|c| {
            let secs = c.history_retention_secs?;
            let max = snapshot
                .tenant(&c.tenant)
                .and_then(|t| t.limits.max_history_bytes)
                .unwrap_or(fleetward_history::DEFAULT_MAX_HISTORY_BYTES);
            Some(Kept {
                tenant: c.tenant.clone(),
                channel: c.name.clone(),
                channel_uid: c.uid.clone(),
                retention: Duration::from_secs(secs),
                max_tenant_bytes: max,
            })
        })
        .collect()
}
