//! The snapshot's persistent map: an imbl B-tree whose keys are ordered by a fixed hash of the
//! key first. A clone shares every node and a change copies the path to what it changes, as
//! with a hash trie; but a B-tree's nodes are at least half full, where a hash trie's leaves
//! are fixed arrays of 16 or 32 entries, mostly empty at 100k keys (the grant tables took
//! several times the size of their entries). Ordering by the hash first keeps a lookup to
//! integer comparisons down the tree and one key comparison at the end.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, Hash};

use equivalent::{Comparable, Equivalent};
use imbl::OrdMap;

/// The hash the keys are ordered by: fixed, so that equal tables iterate alike.
fn hash_of<Q: Hash + ?Sized>(key: &Q) -> u64 {
    foldhash::fast::FixedState::with_seed(0x6f6c_6474_6162_6c65).hash_one(key)
}

/// A key with its hash, ordered by the hash, then the key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Hashed<K> {
    hash: u64,
    key: K,
}

impl<K: Hash> Hashed<K> {
    fn new(key: K) -> Self {
        Self {
            hash: hash_of(&key),
            key,
        }
    }
}

/// A borrowed key with its hash, for lookups without allocating. `Q` must hash and compare as
/// the table's keys do (`String` and `str`, a key and its `…Ref` twin).
struct Probe<'a, Q: ?Sized> {
    hash: u64,
    key: &'a Q,
}

impl<'a, Q: Hash + ?Sized> Probe<'a, Q> {
    fn new(key: &'a Q) -> Self {
        Self {
            hash: hash_of(key),
            key,
        }
    }
}

impl<K, Q: Comparable<K> + ?Sized> Equivalent<Hashed<K>> for Probe<'_, Q> {
    fn equivalent(&self, other: &Hashed<K>) -> bool {
        self.hash == other.hash && self.key.equivalent(&other.key)
    }
}

impl<K, Q: Comparable<K> + ?Sized> Comparable<Hashed<K>> for Probe<'_, Q> {
    fn compare(&self, other: &Hashed<K>) -> Ordering {
        self.hash
            .cmp(&other.hash)
            .then_with(|| self.key.compare(&other.key))
    }
}

/// A persistent map for the snapshot's tables. See the module documentation. It iterates in
/// an order fixed by its keys' hashes; sort what must come out by key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Table<K: Ord + Clone, V: Clone>(OrdMap<Hashed<K>, V>);

impl<K: Ord + Clone, V: Clone> Default for Table<K, V> {
    fn default() -> Self {
        Self(OrdMap::new())
    }
}

impl<K: Ord + Clone + Hash + fmt::Debug, V: Clone + fmt::Debug> fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord + Clone + Hash, V: Clone> Table<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn get<Q: Hash + Comparable<K> + ?Sized>(&self, key: &Q) -> Option<&V> {
        self.0.get(&Probe::new(key))
    }

    pub(crate) fn get_mut<Q: Hash + Comparable<K> + ?Sized>(&mut self, key: &Q) -> Option<&mut V> {
        self.0.get_mut(&Probe::new(key))
    }

    pub(crate) fn contains_key<Q: Hash + Comparable<K> + ?Sized>(&self, key: &Q) -> bool {
        self.0.contains_key(&Probe::new(key))
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.0.insert(Hashed::new(key), value)
    }

    pub(crate) fn remove<Q: Hash + Comparable<K> + ?Sized>(&mut self, key: &Q) -> Option<V> {
        self.0.remove(&Probe::new(key))
    }

    pub(crate) fn remove_with_key<Q: Hash + Comparable<K> + ?Sized>(
        &mut self,
        key: &Q,
    ) -> Option<(K, V)> {
        self.0
            .remove_with_key(&Probe::new(key))
            .map(|(k, v)| (k.key, v))
    }

    /// The value at `key`, inserted with `V::default()` when there is none.
    pub(crate) fn entry_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.0.entry(Hashed::new(key)).or_default()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (&k.key, v))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.keys().map(|k| &k.key)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.0.values()
    }

    /// The values, in their keys' order.
    pub(crate) fn sorted_values(&self) -> Vec<&V> {
        let mut entries: Vec<(&K, &V)> = self.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries.into_iter().map(|(_, v)| v).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_by_borrowed_keys_find_what_owned_keys_put() {
        let mut t: Table<String, u32> = Table::default();
        for i in 0..1000 {
            assert_eq!(t.insert(format!("k{i}"), i), None);
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.get("k7"), Some(&7));
        assert_eq!(t.get(&"k7".to_owned()), Some(&7));
        assert!(t.contains_key("k999") && !t.contains_key("k1000"));
        *t.get_mut("k7").expect("k7") += 1;
        assert_eq!(t.remove("k7"), Some(8));
        assert_eq!(t.remove_with_key("k8"), Some(("k8".to_owned(), 8)));
        assert_eq!(t.get("k7"), None);
        *t.entry_or_default("new".to_owned()) += 5;
        assert_eq!(t.get("new"), Some(&5));
        let sorted: Vec<u32> = t.sorted_values().into_iter().copied().take(3).collect();
        assert_eq!(sorted, [0, 1, 10], "by key: k0, k1, k10");
        let copy = t.clone();
        assert_eq!(copy, t);
        t.insert("k1".to_owned(), 0);
        assert_ne!(copy, t);
    }
}
