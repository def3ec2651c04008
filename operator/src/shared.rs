//! The index shared between its feeders (watchers or a directory reader), the batcher that
//! commits it, and its readers (PolicySync streams, the status writer, metrics).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::changes::{ChangeFeed, ChangedKeys};
use crate::index::{Commit, Index};

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
#[derive(Debug)]
pub struct SharedIndex {
    index: RwLock<Index>,
    dirty: Notify,
    published: watch::Sender<Published>,
    changes: ChangeFeed,
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
            changes: ChangeFeed::default(),
        }
    }

    /// Changes the index; the batcher commits soon after.
    pub fn update<R>(&self, f: impl FnOnce(&mut Index) -> R) -> R {
        let out = f(&mut self.write());
        self.dirty.notify_one();
        out
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::index::Object;

    #[tokio::test(start_paused = true)]
    async fn changes_within_the_window_become_one_version() {
        let shared = Arc::new(SharedIndex::new(Index::new()));
        let batcher = tokio::spawn({
            let shared = shared.clone();
            async move { shared.run_batcher(Duration::from_millis(20)).await }
        });
        let mut rx = shared.subscribe();
        for i in 0..3 {
            shared.update(|idx| {
                let mut t = fleetward_crds::Tenant::new(
                    &format!("t{i}"),
                    fleetward_crds::TenantSpec {
                        provisioning: Default::default(),
                        device_ca: Default::default(),
                        authorization: Default::default(),
                        namespace: None,
                        display_name: None,
                        suspended: false,
                        limits: None,
                        web: None,
                    },
                );
                t.metadata.generation = Some(1);
                idx.apply(Object::Tenant(t));
            });
        }
        rx.changed().await.expect("published");
        let published = rx.borrow_and_update().clone();
        assert_eq!(published.version, 1, "three changes, one version");
        assert_eq!(shared.read().snapshot().tenants().count(), 3);
        batcher.abort();
    }
}
