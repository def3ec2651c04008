//! Deltas between snapshots: per-kind upserts and removals, computed by `diff`, applied by `apply`.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::changes::{SubjectName, Touched, next_stamp};
use crate::model::{
    Channel, Grant, GrantSubject, Group, ResourceName, SigningKey, SubjectKind, Tenant,
    TenantPolicy, Thing, User,
};
use crate::snapshot::{Snapshot, Table};

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

fn diff_table<K, T>(a: &Table<K, Arc<T>>, b: &Table<K, Arc<T>>) -> Changes<T, K>
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

impl Delta {
    /// Every tenant a change of this delta belongs to.
    pub fn tenants_touched(&self) -> BTreeSet<&str> {
        let mut out: BTreeSet<&str> = self.tenants.removals.iter().map(String::as_str).collect();
        out.extend(self.tenants.upserts.iter().map(|t| t.name.as_str()));
        out.extend(
            names(&self.things, |t| (&t.tenant, &t.name))
                .chain(names(&self.users, |u| (&u.tenant, &u.name)))
                .chain(names(&self.groups, |g| (&g.tenant, &g.name)))
                .chain(names(&self.channels, |c| (&c.tenant, &c.name)))
                .chain(names(&self.grants, |g| (&g.tenant, &g.name)))
                .chain(names(&self.policies, |p| (&p.tenant, &p.name)))
                .map(|(tenant, _)| tenant),
        );
        out
    }
}

/// The ids of one kind's changes: removed and upserted.
fn names<T>(
    c: &Changes<T, ResourceName>,
    id: fn(&T) -> (&str, &str),
) -> impl Iterator<Item = (&str, &str)> {
    c.removals
        .iter()
        .map(|r| (r.tenant.as_str(), r.name.as_str()))
        .chain(c.upserts.iter().map(id))
}

impl Snapshot {
    /// Applies a delta computed against this snapshot's version; it costs the delta's size
    /// times O(log n). Every tenant the delta touches gets a new version, and what it touched is
    /// noted for [`Snapshot::changes_since`].
    pub fn apply(&mut self, delta: &Delta) -> Result<(), ApplyError> {
        if delta.from_version != self.version {
            return Err(ApplyError::VersionMismatch {
                expected: delta.from_version,
                actual: self.version,
            });
        }
        let mut touched = Touched::default();
        // A group's members and a grant's subjects as they were, and as they are after.
        self.reach(delta, &mut touched);
        self.apply_removals(delta);
        self.apply_upserts(delta);
        self.reach(delta, &mut touched);
        let stamp = next_stamp();
        self.touch_tenants(stamp, delta.tenants_touched());
        self.record_change(stamp, touched);
        self.version = delta.to_version;
        self.detach_engine();
        Ok(())
    }

    fn apply_removals(&mut self, delta: &Delta) {
        for name in &delta.tenants.removals {
            self.take_tenant(name);
        }
        for r in &delta.things.removals {
            self.take_thing(&r.tenant, &r.name);
        }
        for r in &delta.users.removals {
            self.take_user(&r.tenant, &r.name);
        }
        for r in &delta.groups.removals {
            self.take_group(&r.tenant, &r.name);
        }
        for r in &delta.channels.removals {
            self.take_channel(&r.tenant, &r.name);
        }
        for r in &delta.grants.removals {
            self.take_grant(&r.tenant, &r.name);
        }
        for r in &delta.policies.removals {
            self.take_policy(&r.tenant, &r.name);
        }
    }

    fn apply_upserts(&mut self, delta: &Delta) {
        for t in &delta.tenants.upserts {
            self.put_tenant(t.clone());
        }
        for t in &delta.things.upserts {
            self.put_thing(t.clone());
        }
        for u in &delta.users.upserts {
            self.put_user(u.clone());
        }
        for g in &delta.groups.upserts {
            self.put_group(g.clone());
        }
        for c in &delta.channels.upserts {
            self.put_channel(c.clone());
        }
        for g in &delta.grants.upserts {
            self.put_grant(g.clone());
        }
        for p in &delta.policies.upserts {
            self.put_policy(p.clone());
        }
        if let Some(keys) = &delta.signing_keys {
            self.put_signing_keys(keys.clone());
        }
    }

    /// Adds to `touched` whom `delta`'s changes reach in this snapshot as it is: tenants whose
    /// Tenant record or policy texts change, or that an external engine decides; the things
    /// and users changed, the members of the groups changed and the subjects of the grants
    /// changed (a group's through its members); the channels changed.
    fn reach(&self, delta: &Delta, touched: &mut Touched) {
        touched
            .tenants
            .extend(delta.tenants.removals.iter().cloned());
        touched
            .tenants
            .extend(delta.tenants.upserts.iter().map(|t| t.name.clone()));
        for (tenant, _) in names(&delta.policies, |p| (&p.tenant, &p.name)) {
            touched.tenants.insert(tenant.to_owned());
        }
        for t in delta.tenants_touched() {
            if self.tenant(t).is_some_and(|t| !t.engine.is_builtin()) {
                touched.tenants.insert(t.to_owned());
            }
        }
        let mut subject = |tenant: &str, kind, name: &str| {
            touched
                .subjects
                .insert(SubjectName::new(tenant, kind, name));
        };
        for (tenant, name) in names(&delta.things, |t| (&t.tenant, &t.name)) {
            subject(tenant, SubjectKind::Thing, name);
        }
        for (tenant, name) in names(&delta.users, |u| (&u.tenant, &u.name)) {
            subject(tenant, SubjectKind::User, name);
        }
        for (tenant, name) in names(&delta.groups, |g| (&g.tenant, &g.name)) {
            self.members_of(tenant, name, &mut subject);
        }
        for (tenant, name) in names(&delta.grants, |g| (&g.tenant, &g.name)) {
            match self.grant(tenant, name).map(|g| &g.subject) {
                Some(GrantSubject::Thing(n)) => subject(tenant, SubjectKind::Thing, n),
                Some(GrantSubject::User(n)) => subject(tenant, SubjectKind::User, n),
                Some(GrantSubject::Group(g)) => self.members_of(tenant, g, &mut subject),
                None => {}
            }
        }
        for (tenant, name) in names(&delta.channels, |c| (&c.tenant, &c.name)) {
            touched.channels.insert(ResourceName::new(tenant, name));
        }
    }

    fn members_of(&self, tenant: &str, group: &str, f: &mut impl FnMut(&str, SubjectKind, &str)) {
        for m in self.group(tenant, group).map_or(&[][..], |g| &g.members) {
            f(tenant, m.kind, &m.name);
        }
    }
}
