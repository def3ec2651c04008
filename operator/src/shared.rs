//! The index shared between its feeders (watchers or a directory reader), the batcher that
//! commits it, and its readers (PolicySync streams, the status writer, metrics).

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use fleetward_policy::{Delta, Snapshot};
use tokio::sync::{Notify, watch};

use crate::changes::{ChangeFeed, ChangedKeys};
use crate::index::{Commit, Index};
use crate::source::PolicySource;

/// How long changes are gathered before they become one snapshot version.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(20);

/// What the batcher last committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Counts commits; changes on every commit, including status-only ones.
    pub commits: u64,
    /// The snapshot version after the last commit.
    pub version: u64,
}

/// The index behind a lock, with change notification. Share it in an `Arc`.
///
/// As a [`PolicySource`] it hands out its snapshot as an `Arc<Snapshot>`, copied at most once
/// per version, so PolicySync streams encode it without holding the index's lock.
#[derive(Debug)]
pub struct SharedIndex {
    index: RwLock<Index>,
    dirty: Notify,
    published: watch::Sender<Published>,
    /// The snapshot version; changes only when the snapshot does.
    version: watch::Sender<u64>,
    /// The last copy of the snapshot handed out, kept while anyone holds it.
    copy: Mutex<Weak<Snapshot>>,
    changes: ChangeFeed,
}

impl Default for SharedIndex {
    /// An empty index at snapshot version 0.
    fn default() -> Self {
        Self::new(Index::new())
    }
}

impl SharedIndex {
    /// Shares `index`.
    pub fn new(index: Index) -> Self {
        let version = index.snapshot().version();
        Self {
            index: RwLock::new(index),
            dirty: Notify::new(),
            published: watch::channel(Published {
                commits: 0,
                version,
            })
            .0,
            version: watch::channel(version).0,
            copy: Mutex::new(Weak::new()),
            changes: ChangeFeed::default(),
        }
    }

    /// Changes the index; the batcher commits soon after.
    pub fn update<R>(&self, f: impl FnOnce(&mut Index) -> R) -> R {
        let out = f(&mut self.write());
        self.dirty.notify_one();
        out
    }

    /// Changes the index without waking the batcher: for a list in progress, which wakes it
    /// with [`Self::wake`] when it ends, so its objects are committed together.
    pub fn update_quietly<R>(&self, f: impl FnOnce(&mut Index) -> R) -> R {
        f(&mut self.write())
    }

    /// Wakes the batcher: it commits what changed.
    pub fn wake(&self) {
        self.dirty.notify_one();
    }

    /// Reads the index. Hold the guard briefly: feeders wait while it is held.
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        // The index holds plain data; a panic elsewhere must not stop every reader.
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of every commit.
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    /// The objects each commit from now on changes: their desired status, or the version that
    /// included them. Take them after [`Self::subscribe`] fires.
    pub fn changes(&self) -> ChangedKeys {
        self.changes.subscribe()
    }

    /// Commits now; returns what the commit produced.
    pub fn commit(&self) -> Option<Commit> {
        let commit = self.write().commit()?;
        // Before the notification, so whoever it wakes finds the keys.
        self.changes
            .publish(commit.statuses.iter().chain(&commit.included));
        // Two commits may race to here; the version only moves forward.
        self.version.send_if_modified(|v| {
            let newer = commit.version > *v;
            *v = (*v).max(commit.version);
            newer
        });
        self.published.send_modify(|p| {
            p.commits += 1;
            p.version = commit.version;
        });
        Some(commit)
    }

    /// Commits changes in batches: after the first change, waits `window` for more, then
    /// makes them one snapshot version. Runs until the task is dropped.
    pub async fn run_batcher(&self, window: Duration) {
        loop {
            self.dirty.notified().await;
            tokio::time::sleep(window).await;
            if let Some(commit) = self.commit() {
                tracing::debug!(
                    version = commit.version,
                    delta = commit.delta.as_ref().map_or(0, |d| d.len()),
                    statuses = commit.statuses.len(),
                    "committed the index"
                );
            }
        }
    }
}

impl PolicySource for SharedIndex {
    fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Copies the snapshot on the first call of a version and hands out that copy while anyone
    /// holds it; callers meanwhile wait for the one copy. The copy is made under the read lock:
    /// readers go on, feeders wait for it. `Snapshot::clone` copies every record today, so that
    /// costs time and memory in proportion to the snapshot, once per version a dataplane needs
    /// in full (no copy for a version only sent as deltas); with structurally shared maps it is
    /// a few reference counts and shares its memory with the index's snapshot.
    fn snapshot(&self) -> Arc<Snapshot> {
        let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        let index = self.read();
        let current = index.snapshot();
        if let Some(copy) = copy.upgrade().filter(|c| c.version() == current.version()) {
            return copy;
        }
        let snapshot = Arc::new(current.clone());
        *copy = Arc::downgrade(&snapshot);
        snapshot
    }

    fn deltas(&self, from: u64, to: u64) -> Option<Vec<Arc<Delta>>> {
        if from == to {
            return Some(Vec::new());
        }
        // Under the lock only reference counts are taken; the deltas are encoded outside it.
        let mut deltas = self.read().deltas_since(from)?;
        // The index may be a commit ahead of the published snapshot.
        let end = deltas.iter().position(|d| d.to_version == to)?;
        deltas.truncate(end + 1);
        Some(deltas)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::manifest::{self, Document};
    use crate::resource::Resource;

    fn orphan_channel() -> Resource {
        let yaml = "apiVersion: fleetward.io/v1alpha1\nkind: Channel\nmetadata:\n  name: c\n  \
                    namespace: nowhere\n  generation: 1\nspec: {}\n";
        match manifest::read(yaml).pop() {
            Some(Ok(Document::Object(o))) => *o,
            other => panic!("not a Channel: {other:?}"),
        }
    }

    fn tenant(name: &str) -> Resource {
        let mut t = fleetward_crds::Tenant::new(name, crate::k8s::fixtures::tenant_spec());
        t.metadata.generation = Some(1);
        Resource::Tenant(t)
    }

    #[test]
    fn only_a_commit_that_changes_the_snapshot_announces_a_version() {
        let shared = SharedIndex::default();
        let mut rx = PolicySource::subscribe(&shared);
        shared.update(|idx| idx.apply(tenant("a")));
        let v1 = shared.commit().expect("commits").version;
        assert!(rx.has_changed().expect("alive"));
        assert_eq!(*rx.borrow_and_update(), v1);
        assert_eq!(shared.version(), v1);

        // A commit of statuses only (a Channel without its Tenant).
        shared.update(|idx| idx.apply(orphan_channel()));
        let commit = shared.commit().expect("the Channel's status commits");
        assert_eq!(commit.version, v1, "{commit:?}");
        assert!(!rx.has_changed().expect("alive"));
    }

    #[test]
    fn the_snapshot_is_copied_once_per_version_while_it_is_held() {
        let shared = SharedIndex::default();
        shared.update(|idx| idx.apply(tenant("a")));
        shared.commit();
        let first = shared.snapshot();
        assert_eq!(&*first, shared.read().snapshot());
        assert!(Arc::ptr_eq(&first, &shared.snapshot()), "one copy");

        shared.update(|idx| idx.apply(tenant("b")));
        let v2 = shared.commit().expect("commits").version;
        let second = shared.snapshot();
        assert_eq!(second.version(), v2);
        assert_eq!(&*second, shared.read().snapshot());
        assert_ne!(first.version(), v2, "a held copy stays as it was");
        drop(second);
        // Nobody holds it: the next caller gets a fresh copy of the same version.
        assert_eq!(shared.snapshot().version(), v2);
    }

    #[test]
    fn deltas_end_at_the_version_asked_for() {
        let shared = SharedIndex::default();
        let mut versions = vec![0];
        for name in ["a", "b", "c"] {
            shared.update(|idx| idx.apply(tenant(name)));
            versions.push(shared.commit().expect("commits").version);
        }
        let (v0, v1, v3) = (versions[0], versions[1], versions[3]);
        let to = |d: Vec<Arc<Delta>>| d.iter().map(|d| d.to_version).collect::<Vec<_>>();
        assert_eq!(shared.deltas(v0, v1).map(to), Some(vec![v1]));
        assert_eq!(shared.deltas(v0, v3).map(to), Some(versions[1..].to_vec()));
        assert_eq!(shared.deltas(v1, v1).map(to), Some(vec![]));
        assert_eq!(shared.deltas(v3, v1), None, "no way back");
        assert_eq!(shared.deltas(v0, v3 + 1), None, "not committed yet");
    }

    #[tokio::test(start_paused = true)]
    async fn changes_within_the_window_become_one_version() {
        let shared = Arc::new(SharedIndex::new(Index::new()));
        let batcher = tokio::spawn({
            let shared = shared.clone();
            async move { shared.run_batcher(Duration::from_millis(20)).await }
        });
        let mut rx = shared.subscribe();
        for i in 0..3 {
            shared.update(|idx| idx.apply(tenant(&format!("t{i}"))));
        }
        rx.changed().await.expect("published");
        let published = rx.borrow_and_update().clone();
        assert_eq!(published.version, 1, "three changes, one version");
        assert_eq!(shared.read().snapshot().tenants().count(), 3);
        batcher.abort();
    }
}
