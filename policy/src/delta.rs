//! Deltas between snapshots: per-kind upserts and removals, computed by `diff`, applied by `apply`.

use std::sync::Arc;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::model::{
    Channel, Grant, Group, ResourceName, SigningKey, Tenant, TenantPolicy, Thing, User,
};
use crate::snapshot::Snapshot;

/// The changes to one kind of resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "T: Serialize, K: Serialize",
    deserialize = "T: Deserialize<'de>, K: Deserialize<'de>"
))]
pub struct Changes<T, K> {
    /// Resources added or changed, whole.
    #[serde(default)]
    pub upserts: Vec<T>,
    /// Identities of resources removed.
    #[serde(default)]
    pub removals: Vec<K>,
}

impl<T, K> Default for Changes<T, K> {
    fn default() -> Self {
        Self {
            upserts: Vec::new(),
            removals: Vec::new(),
        }
    }
}

impl<T, K> Changes<T, K> {
    /// The number of resources changed.
    pub fn len(&self) -> usize {
        self.upserts.len() + self.removals.len()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What turns the snapshot at `from_version` into the one at `to_version`.
///
/// Its size is the number of resources that changed, whatever the size of the tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The version this delta applies to.
    pub from_version: u64,
    /// The version after applying it.
    pub to_version: u64,
    /// Tenant changes, keyed by tenant name.
    #[serde(default)]
    pub tenants: Changes<Tenant, String>,
    /// Thing changes.
    #[serde(default)]
    pub things: Changes<Thing, ResourceName>,
    /// User changes.
    #[serde(default)]
    pub users: Changes<User, ResourceName>,
    /// Group changes.
    #[serde(default)]
    pub groups: Changes<Group, ResourceName>,
    /// Channel changes.
    #[serde(default)]
    pub channels: Changes<Channel, ResourceName>,
    /// Grant changes.
    #[serde(default)]
    pub grants: Changes<Grant, ResourceName>,
    /// The whole new set of token signing keys, when it changed.
    #[serde(default)]
    pub signing_keys: Option<Vec<SigningKey>>,
    /// Policy text changes.
    #[serde(default)]
    pub policies: Changes<TenantPolicy, ResourceName>,
}

impl Delta {
    /// The number of resources changed, over every kind.
    pub fn len(&self) -> usize {
        self.tenants.len()
            + self.things.len()
            + self.users.len()
            + self.groups.len()
            + self.channels.len()
            + self.grants.len()
            + self.policies.len()
            + self.signing_keys.as_ref().map_or(0, Vec::len)
    }

    /// Whether no resource changed (the version may still move).
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.signing_keys.is_none()
    }
}

/// Why a delta could not be applied. The snapshot is left unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The delta starts from another version than the snapshot has.
    #[error(
        "the delta applies to version {expected} but the snapshot is at version {actual}; \
         ask for a full snapshot"
    )]
    VersionMismatch {
        /// The delta's `from_version`.
        expected: u64,
        /// The snapshot's version.
        actual: u64,
    },
}

fn diff_table<K, T>(a: &HashMap<K, Arc<T>>, b: &HashMap<K, Arc<T>>) -> Changes<T, K>
where
    K: Eq + std::hash::Hash + Ord + Clone,
    T: PartialEq + Clone,
{
    let mut upserts: Vec<(&K, &Arc<T>)> = b
        .iter()
        .filter(|(k, v)| match a.get(*k) {
            Some(old) => !Arc::ptr_eq(old, v) && **old != ***v,
            None => true,
        })
        .collect();
    upserts.sort_by(|x, y| x.0.cmp(y.0));
    let mut removals: Vec<K> = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    removals.sort();
    Changes {
        upserts: upserts.into_iter().map(|(_, v)| T::clone(v)).collect(),
        removals,
    }
}

/// The delta that turns `a` into `b`: `a.apply(&diff(a, b))` leaves `a == b`.
///
/// It scans both snapshots (unchanged records are skipped by pointer when `b` was cloned from
/// `a`); its size is only the number of changed resources.
pub fn diff(a: &Snapshot, b: &Snapshot) -> Delta {
    Delta {
        from_version: a.version,
        to_version: b.version,
        tenants: diff_table(&a.tenants, &b.tenants),
        things: diff_table(&a.things, &b.things),
        users: diff_table(&a.users, &b.users),
        groups: diff_table(&a.groups, &b.groups),
        channels: diff_table(&a.channels, &b.channels),
        grants: diff_table(&a.grants, &b.grants),
        policies: diff_table(&a.policies, &b.policies),
        signing_keys: (!Arc::ptr_eq(&a.signing_keys, &b.signing_keys)
            && a.signing_keys != b.signing_keys)
            .then(|| b.signing_keys.to_vec()),
    }
}

impl Snapshot {
    /// Applies a delta computed against this snapshot's version; cost is the delta's size.
    pub fn apply(&mut self, delta: &Delta) -> Result<(), ApplyError> {
        if delta.from_version != self.version {
            return Err(ApplyError::VersionMismatch {
                expected: delta.from_version,
                actual: self.version,
            });
        }
        for name in &delta.tenants.removals {
            self.remove_tenant(name);
        }
        for r in &delta.things.removals {
            self.remove_thing(&r.tenant, &r.name);
        }
        for r in &delta.users.removals {
            self.remove_user(&r.tenant, &r.name);
        }
        for r in &delta.groups.removals {
            self.remove_group(&r.tenant, &r.name);
        }
        for r in &delta.channels.removals {
            self.remove_channel(&r.tenant, &r.name);
        }
        for r in &delta.grants.removals {
            self.remove_grant(&r.tenant, &r.name);
        }
        for r in &delta.policies.removals {
            self.remove_policy(&r.tenant, &r.name);
        }
        for t in &delta.tenants.upserts {
            self.upsert_tenant(t.clone());
        }
        for t in &delta.things.upserts {
            self.upsert_thing(t.clone());
        }
        for u in &delta.users.upserts {
            self.upsert_user(u.clone());
        }
        for g in &delta.groups.upserts {
            self.upsert_group(g.clone());
        }
        for c in &delta.channels.upserts {
            self.upsert_channel(c.clone());
        }
        for g in &delta.grants.upserts {
            self.upsert_grant(g.clone());
        }
        for p in &delta.policies.upserts {
            self.upsert_policy(p.clone());
        }
        if let Some(keys) = &delta.signing_keys {
            self.set_signing_keys(keys.clone());
        }
        self.version = delta.to_version;
        self.detach_engine();
        Ok(())
    }
}
