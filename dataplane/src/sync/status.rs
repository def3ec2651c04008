//! Readiness and staleness of the policy snapshot, as plain getters for probes and metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::store::Stored;

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
    last_error: Mutex<Option<String>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
        self.ready.store(true, Ordering::Release);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn refused(&self, error: String) {
        self.last_contact_ms.store(now_ms(), Ordering::Release);
        self.nacks.fetch_add(1, Ordering::Relaxed);
        self.set_error(error);
    }
}
