//! Readiness and staleness of the policy snapshot, as plain getters for probes and a
//! collector for `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use super::store::Stored;
use crate::metrics::{counter, gauge};

/// What the sync client reports. Shared behind an `Arc`; every getter is cheap.
#[derive(Debug, Default)]
pub struct SyncStatus {
    ready: AtomicBool,
    connected: AtomicBool,
    version: AtomicU64,
    /// Milliseconds since the Unix epoch; 0 for never.
    last_contact_ms: AtomicU64,
    last_update_ms: AtomicU64,
    full_snapshots: AtomicU64,
    delta_updates: AtomicU64,
    nacks: AtomicU64,
    /// Serving the snapshot loaded from disk, not yet confirmed by an operator.
    from_disk: AtomicBool,
    last_error: Mutex<Option<String>>,
}

pub(crate) fn now_ms() -> u64 {
    fleetward_process::unix_millis()
}

fn seconds_since(ms: u64) -> Option<f64> {
    (ms != 0).then(|| now_ms().saturating_sub(ms) as f64 / 1000.0)
}

impl SyncStatus {
    /// Whether a snapshot has been applied, from an operator or from disk.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether a stream to an operator is open now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The version of the snapshot being enforced.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Seconds since an operator was last heard from: 0 while a stream is open, `None` if
    /// none ever was since this process started.
    pub fn seconds_since_contact(&self) -> Option<f64> {
        if self.is_connected() {
            return Some(0.0);
        }
        seconds_since(self.last_contact_ms.load(Ordering::Acquire))
    }

    /// Seconds since the snapshot was last updated or confirmed by an operator (across
    /// restarts, through the persisted snapshot); `None` if it never was.
    pub fn seconds_since_update(&self) -> Option<f64> {
        seconds_since(self.last_update_ms.load(Ordering::Acquire))
    }

    /// Whether the snapshot being enforced came from the state directory at start and no
    /// operator has confirmed or replaced it since (fail static).
    pub fn is_serving_persisted(&self) -> bool {
        self.from_disk.load(Ordering::Acquire)
    }

    /// How stale the snapshot may be, in seconds: 0 while a stream to an operator is open,
    /// else the time since an operator was last heard from or the snapshot last updated
    /// (whichever is later; the update time survives restarts in the persisted snapshot);
    /// `None` if neither ever happened.
    pub fn staleness_seconds(&self) -> Option<f64> {
        if self.is_connected() {
            return Some(0.0);
        }
        let last = self
            .last_contact_ms
            .load(Ordering::Acquire)
            .max(self.last_update_ms.load(Ordering::Acquire));
        seconds_since(last)
    }

    /// Full snapshots applied since start.
    pub fn full_snapshots(&self) -> u64 {
        self.full_snapshots.load(Ordering::Relaxed)
    }

    /// Delta updates applied since start (including confirmations that changed nothing).
    pub fn delta_updates(&self) -> u64 {
        self.delta_updates.load(Ordering::Relaxed)
    }

    /// Updates refused (NACKed) since start.
    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }

    /// The last problem: a refused update, a failed connection, an unreadable state file.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub(crate) fn loaded(&self, stored: &Stored) {
        self.version
            .store(stored.snapshot.version(), Ordering::Release);
        self.last_update_ms
            .store(stored.updated_unix_ms, Ordering::Release);
        self.from_disk.store(true, Ordering::Release);
        self.ready.store(true, Ordering::Release);
    }

    pub(crate) fn connected(&self) {
        self.last_contact_ms.store(now_ms(), Ordering::Release);
        self.connected.store(true, Ordering::Release);
    }

    pub(crate) fn disconnected(&self) {
        if self.connected.swap(false, Ordering::AcqRel) {
            self.last_contact_ms.store(now_ms(), Ordering::Release);
        }
    }

    pub(crate) fn applied(&self, version: u64, full: bool, at_ms: u64) {
        self.version.store(version, Ordering::Release);
        self.last_update_ms.store(at_ms, Ordering::Release);
        self.last_contact_ms.store(at_ms, Ordering::Release);
        if full {
            self.full_snapshots.fetch_add(1, Ordering::Relaxed);
        } else {
            self.delta_updates.fetch_add(1, Ordering::Relaxed);
        }
        self.from_disk.store(false, Ordering::Release);
        self.ready.store(true, Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn refused(&self, error: String) {
        self.last_contact_ms.store(now_ms(), Ordering::Release);
        self.nacks.fetch_add(1, Ordering::Relaxed);
        self.set_error(error);
    }
}

/// The sync client's metrics, read at scrape time: seconds are `+Inf` for "never".
impl Collector for SyncStatus {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let secs = |v: Option<f64>| v.unwrap_or(f64::INFINITY);
        let flag = |b: bool| i64::from(b);
        gauge(
            &mut e,
            "fleetward_policy_snapshot_staleness_seconds",
            "Seconds the enforced policy may lag the operator: 0 while a PolicySync stream is open, else since the operator was last heard from or the snapshot last updated; +Inf if never.",
            secs(self.staleness_seconds()),
        )?;
        gauge(
            &mut e,
            "fleetward_policy_snapshot_age_seconds",
            "Seconds since the enforced snapshot was last applied or confirmed from an operator (across restarts); +Inf if never.",
            secs(self.seconds_since_update()),
        )?;
        gauge(
            &mut e,
            "fleetward_policy_operator_contact_age_seconds",
            "Seconds since this process last heard from an operator: 0 while connected, +Inf if never.",
            secs(self.seconds_since_contact()),
        )?;
        gauge(
            &mut e,
            "fleetward_policy_sync_connected",
            "Whether a PolicySync stream to an operator is open.",
            flag(self.is_connected()),
        )?;
        gauge(
            &mut e,
            "fleetward_policy_snapshot_from_disk",
            "Whether the snapshot enforced is the persisted one, unconfirmed by an operator since start (fail static).",
            flag(self.is_serving_persisted()),
        )?;
        let mut updates = e.encode_descriptor(
            "fleetward_policy_sync_updates",
            "Updates applied from an operator, by kind.",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in [
            ("full", self.full_snapshots()),
            ("delta", self.delta_updates()),
        ] {
            ConstCounter::new(n).encode(updates.encode_family(&[("kind", kind)])?)?;
        }
        counter(
            &mut e,
            "fleetward_policy_sync_nacks",
            "Updates refused (NACKed).",
            self.nacks(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn render(s: &Arc<SyncStatus>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(s.clone()));
        crate::metrics::encode(&registry)
    }

    fn metric(text: &str, name: &str) -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
            .to_owned()
    }

    #[test]
    fn staleness_is_infinite_before_anything_then_follows_contact_and_updates() {
        let s = Arc::new(SyncStatus::default());
        let text = render(&s);
        assert_eq!(
            metric(&text, "fleetward_policy_snapshot_staleness_seconds"),
            "+Inf"
        );
        assert_eq!(metric(&text, "fleetward_policy_snapshot_from_disk"), "0");

        // Loaded from disk, last updated a minute ago, no operator yet.
        let minute_ago = now_ms() - 60_000;
        s.loaded(&Stored {
            snapshot: std::sync::Arc::new(fleetward_policy::Snapshot::new(3)),
            lineage: "l".into(),
            updated_unix_ms: minute_ago,
        });
        let stale = s.staleness_seconds().expect("known");
        assert!((60.0..70.0).contains(&stale), "{stale}");
        let text = render(&s);
        assert_eq!(metric(&text, "fleetward_policy_snapshot_from_disk"), "1");
        assert_eq!(
            metric(&text, "fleetward_policy_operator_contact_age_seconds"),
            "+Inf"
        );

        // Connected: not stale; the persisted snapshot still unconfirmed until an update.
        s.connected();
        assert_eq!(s.staleness_seconds(), Some(0.0));
        assert!(s.is_serving_persisted());
        s.applied(4, false, now_ms());
        assert!(!s.is_serving_persisted());
        let text = render(&s);
        assert_eq!(metric(&text, "fleetward_policy_sync_connected"), "1");
        assert_eq!(
            metric(&text, "fleetward_policy_sync_updates_total{kind=\"delta\"}"),
            "1"
        );

        // The stream drops: staleness counts from then on.
        s.disconnected();
        let stale = s.staleness_seconds().expect("known");
        assert!((0.0..5.0).contains(&stale), "{stale}");
        assert_eq!(metric(&render(&s), "fleetward_policy_sync_connected"), "0");
    }
}
