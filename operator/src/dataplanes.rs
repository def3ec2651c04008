//! The dataplanes connected to this operator replica and the snapshot version each has applied.
//!
//! The PolicySync server records connections and ACKs here; the status writer reads
//! [`Dataplanes::enforced_version`] to decide `Enforced`, and metrics export every entry.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

/// What is known of one connected dataplane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneState {
    /// The version the dataplane last ACKed (or said it had when it connected).
    pub applied: u64,
    /// The error of its last NACK, until a later ACK clears it.
    pub last_error: Option<String>,
    /// How many updates it has refused on this connection.
    pub nacks: u64,
    /// When it connected.
    pub connected_at: SystemTime,
    /// Whether it serves clients: it had a snapshot when it connected (fail-static, from its
    /// state directory), or has applied one since. A dataplane that connected empty is not
    /// ready, so it enforces nothing yet and holds nothing back from `Enforced`.
    pub serving: bool,
}

/// The registry of connected dataplanes. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Dataplanes {
    nodes: Mutex<BTreeMap<String, DataplaneState>>,
    changed: watch::Sender<u64>,
}

impl Default for Dataplanes {
    fn default() -> Self {
        Self::new()
    }
}

impl Dataplanes {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            nodes: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }

    /// A receiver that fires whenever a dataplane connects, disconnects, ACKs or NACKs.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records a dataplane that connected serving `version`: the version of this index's
    /// lineage it has, or 0 for a snapshot of another lineage (it serves, but nothing this
    /// index committed is known to be enforced there).
    pub fn connected(&self, node: &str, version: u64) {
        self.insert(node, version, true);
    }

    /// Records a dataplane that connected with no snapshot at all: until its first ACK it
    /// serves no client, so it does not lower [`Self::enforced_version`].
    pub fn connected_empty(&self, node: &str) {
        self.insert(node, 0, false);
    }

    fn insert(&self, node: &str, applied: u64, serving: bool) {
        self.update(|nodes| {
            nodes.insert(
                node.to_owned(),
                DataplaneState {
                    applied,
                    last_error: None,
                    nacks: 0,
                    connected_at: SystemTime::now(),
                    serving,
                },
            );
        });
    }

    /// Records that a dataplane applied `version`.
    pub fn acked(&self, node: &str, version: u64) {
        self.update(|nodes| {
            if let Some(n) = nodes.get_mut(node) {
                n.applied = n.applied.max(version);
                n.last_error = None;
                n.serving = true;
            }
        });
    }

    /// Records that a dataplane refused `version` with `error`; it keeps its older version.
    pub fn nacked(&self, node: &str, version: u64, error: &str) {
        self.update(|nodes| {
            if let Some(n) = nodes.get_mut(node) {
                n.last_error = Some(format!("version {version}: {error}"));
                n.nacks += 1;
            }
        });
    }

    /// Forgets a dataplane whose stream ended.
    pub fn disconnected(&self, node: &str) {
        self.update(|nodes| {
            nodes.remove(node);
        });
    }

    /// Every connected dataplane, by node id.
    pub fn all(&self) -> BTreeMap<String, DataplaneState> {
        self.lock().clone()
    }

    /// The highest version every serving dataplane has applied; `None` when none serves,
    /// since nothing is enforced then. A dataplane still loading its first snapshot is left
    /// out: counting it would turn every object's `Enforced` false (and back) whenever a new
    /// pod starts, one status write per object each way.
    pub fn enforced_version(&self) -> Option<u64> {
        self.lock()
            .values()
            .filter(|n| n.serving)
            .map(|n| n.applied)
            .min()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DataplaneState>> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut BTreeMap<String, DataplaneState>)) {
        f(&mut self.lock());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataplane_without_a_snapshot_counts_once_it_has_applied_one() {
        let d = Dataplanes::new();
        d.connected("a", 9);
        d.connected_empty("new");
        assert_eq!(
            d.enforced_version(),
            Some(9),
            "the empty newcomer serves no one yet"
        );
        d.acked("new", 7);
        assert_eq!(d.enforced_version(), Some(7));
        d.disconnected("a");
        d.connected_empty("b");
        assert_eq!(d.enforced_version(), Some(7));
        d.disconnected("new");
        assert_eq!(
            d.enforced_version(),
            None,
            "nothing is enforced by empty dataplanes"
        );
        // A dataplane serving another lineage's snapshot holds Enforced back until it ACKs.
        d.connected("c", 0);
        d.acked("b", 12);
        assert_eq!(d.enforced_version(), Some(0));
    }

    #[test]
    fn enforced_is_the_lowest_applied_version_of_connected_dataplanes() {
        let d = Dataplanes::new();
        assert_eq!(
            d.enforced_version(),
            None,
            "nothing is enforced without dataplanes"
        );
        d.connected("a", 3);
        d.connected("b", 5);
        assert_eq!(d.enforced_version(), Some(3));
        d.acked("a", 7);
        assert_eq!(d.enforced_version(), Some(5));
        d.nacked("b", 7, "bad delta");
        assert_eq!(d.enforced_version(), Some(5));
        assert_eq!(d.all()["b"].nacks, 1);
        assert!(
            d.all()["b"]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("bad delta"))
        );
        d.disconnected("b");
        assert_eq!(d.enforced_version(), Some(7));
        d.acked("a", 6);
        assert_eq!(
            d.enforced_version(),
            Some(7),
            "an old ACK never moves it back"
        );
    }

    #[test]
    fn every_change_notifies_subscribers() {
        let d = Dataplanes::new();
        let mut rx = d.subscribe();
        d.connected("a", 1);
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        d.acked("a", 2);
        assert!(rx.has_changed().unwrap_or(false));
    }
}
