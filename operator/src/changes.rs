//! Which objects changed since a consumer last looked, so the status writer and the Secret reconciler plan only those instead of walking every object.
//!
//! A source (the index's commits, what the API server shows) publishes the keys it changed to
//! every subscriber; each subscriber takes its own set when it plans. The sets are deduplicated,
//! so one that is not drained for a while grows with the objects, never with the changes. A
//! change too wide to list (a relist) marks the set "everything": that consumer plans in full.
//! So does a set that grows past [`MAX_KEYS`] (a first commit, a bulk apply): planning every
//! object costs about what planning that many does, and each subscriber would otherwise hold
//! its own copy of every key, 2 × 110k of them at a cold start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::index::ObjectKey;

/// What changed since the last [`ChangedKeys::take`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Something changed that no key list says: plan everything.
    pub everything: bool,
    /// The keys that changed (empty when `everything`).
    pub keys: HashSet<ObjectKey>,
}

/// The most keys a subscriber's set holds; past it, the set is "everything".
pub const MAX_KEYS: usize = 8192;

impl Changed {
    fn add(&mut self, keys: impl IntoIterator<Item = ObjectKey>) {
        if self.everything {
            return;
        }
        for key in keys {
            if self.keys.len() == MAX_KEYS {
                self.everything();
                return;
            }
            self.keys.insert(key);
        }
    }

    fn everything(&mut self) {
        self.everything = true;
        self.keys = HashSet::new();
    }
}

/// One subscriber's changes, filled by a [`ChangeFeed`].
#[derive(Debug)]
pub struct ChangedKeys(Arc<Mutex<Changed>>);

impl ChangedKeys {
    /// Takes what changed since the last call, leaving nothing.
    pub fn take(&self) -> Changed {
        std::mem::take(&mut *lock(&self.0))
    }
}

/// The subscribers of one source of changes.
#[derive(Debug, Default)]
pub struct ChangeFeed {
    subscribers: Mutex<Vec<Weak<Mutex<Changed>>>>,
}

impl ChangeFeed {
    /// A new subscriber: it sees every change published from now on, starting from nothing.
    pub fn subscribe(&self) -> ChangedKeys {
        let changed = Arc::new(Mutex::new(Changed::default()));
        lock(&self.subscribers).push(Arc::downgrade(&changed));
        ChangedKeys(changed)
    }

    /// Tells every subscriber that `keys` changed.
    pub fn publish<'a>(&self, keys: impl IntoIterator<Item = &'a ObjectKey> + Clone) {
        self.each(|c| c.add(keys.clone().into_iter().cloned()));
    }

    /// Tells every subscriber that everything may have changed.
    pub fn publish_everything(&self) {
        self.each(Changed::everything);
    }

    fn each(&self, mut f: impl FnMut(&mut Changed)) {
        // A dropped subscriber is forgotten on the next publication.
        lock(&self.subscribers).retain(|s| match s.upgrade() {
            Some(changed) => {
                f(&mut lock(&changed));
                true
            }
            None => false,
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere must not stop the consumers.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Kind;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::namespaced(Kind::Channel, "acme", name)
    }

    #[test]
    fn each_subscriber_takes_its_own_deduplicated_changes() {
        let feed = ChangeFeed::default();
        let writer = feed.subscribe();
        let secrets = feed.subscribe();
        feed.publish(&[key("a"), key("b")]);
        feed.publish(&[key("a")]);
        let taken = writer.take();
        assert!(!taken.everything);
        assert_eq!(taken.keys, HashSet::from([key("a"), key("b")]));
        assert_eq!(writer.take(), Changed::default(), "taken once");
        assert_eq!(secrets.take().keys.len(), 2, "the other keeps its own");
    }

    #[test]
    fn everything_replaces_the_keys_until_taken_and_dropped_subscribers_are_forgotten() {
        let feed = ChangeFeed::default();
        let writer = feed.subscribe();
        feed.publish(&[key("a")]);
        feed.publish_everything();
        feed.publish(&[key("b")]);
        let taken = writer.take();
        assert!(taken.everything);
        assert!(taken.keys.is_empty(), "everything covers them");
        feed.publish(&[key("c")]);
        assert_eq!(writer.take().keys, HashSet::from([key("c")]));
        drop(writer);
        feed.publish(&[key("d")]);
        assert!(lock(&feed.subscribers).is_empty());
    }

    #[test]
    fn a_set_past_its_bound_becomes_everything() {
        let feed = ChangeFeed::default();
        let writer = feed.subscribe();
        let keys: Vec<ObjectKey> = (0..MAX_KEYS).map(|i| key(&format!("c{i}"))).collect();
        feed.publish(&keys);
        let taken = writer.take();
        assert!(!taken.everything, "up to the bound, the keys are listed");
        assert_eq!(taken.keys.len(), MAX_KEYS);
        feed.publish(&keys);
        feed.publish(&[key("one-more")]);
        let taken = writer.take();
        assert!(taken.everything, "one key past the bound plans everything");
        assert!(taken.keys.is_empty(), "and holds no key");
        feed.publish(&[key("a")]);
        assert_eq!(writer.take().keys, HashSet::from([key("a")]), "until taken");
    }
}
