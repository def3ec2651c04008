//! The versioned policy snapshot: resource tables with O(1)-ish lookups and their derived
//! indexes, in persistent maps, so that a copy costs O(1) and a change to it O(log n).

mod table;
mod tables;
mod wire;

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use equivalent::{Comparable, Equivalent};

use crate::changes::{ChangeLog, Since, next_stamp};

use crate::credentials::KeyDigest;
use crate::engine::{EngineSlot, TenantEngine};
use crate::model::{
    AUDIT_CHANNEL, Channel, Engine, Grant, GrantSubject, GrantSubjectKind, Group, ResourceName,
    Resources, SigningKey, SubjectKind, Tenant, TenantPolicy, Thing, User,
};

/// Where grants are indexed: a subject (by kind and name) and a channel, in one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct GrantTarget {
    tenant: String,
    kind: GrantSubjectKind,
    subject: String,
    channel: String,
}

impl GrantTarget {
    /// Where `grant` is indexed.
    fn of(grant: &Grant) -> Self {
        let (kind, subject) = grant.subject.parts();
        Self {
            tenant: grant.tenant.clone(),
            kind,
            subject: subject.to_owned(),
            channel: grant.channel.clone(),
        }
    }
}

/// A borrowed [`GrantTarget`], hashed and ordered identically, for lookups without allocating.
#[derive(Hash)]
struct GrantTargetRef<'a> {
    tenant: &'a str,
    kind: GrantSubjectKind,
    subject: &'a str,
    channel: &'a str,
}

impl Equivalent<GrantTarget> for GrantTargetRef<'_> {
    fn equivalent(&self, key: &GrantTarget) -> bool {
        self.compare(key).is_eq()
    }
}

impl Comparable<GrantTarget> for GrantTargetRef<'_> {
    fn compare(&self, key: &GrantTarget) -> Ordering {
        (self.tenant, self.kind, self.subject, self.channel).cmp(&(
            key.tenant.as_str(),
            key.kind,
            key.subject.as_str(),
            key.channel.as_str(),
        ))
    }
}

/// A group member's identity, for the member → groups index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MemberKey {
    tenant: String,
    kind: SubjectKind,
    name: String,
}

/// A borrowed [`MemberKey`], hashed and ordered identically.
#[derive(Hash)]
struct MemberKeyRef<'a> {
    tenant: &'a str,
    kind: SubjectKind,
    name: &'a str,
}

impl Equivalent<MemberKey> for MemberKeyRef<'_> {
    fn equivalent(&self, key: &MemberKey) -> bool {
        self.compare(key).is_eq()
    }
}

impl Comparable<MemberKey> for MemberKeyRef<'_> {
    fn compare(&self, key: &MemberKey) -> Ordering {
        (self.tenant, self.kind, self.name).cmp(&(key.tenant.as_str(), key.kind, key.name.as_str()))
    }
}

/// A borrowed [`ResourceName`], hashed and ordered identically.
#[derive(Hash)]
struct NameRef<'a> {
    tenant: &'a str,
    name: &'a str,
}

impl Equivalent<ResourceName> for NameRef<'_> {
    fn equivalent(&self, key: &ResourceName) -> bool {
        self.compare(key).is_eq()
    }
}

impl Comparable<ResourceName> for NameRef<'_> {
    fn compare(&self, key: &ResourceName) -> Ordering {
        (self.tenant, self.name).cmp(&(key.tenant.as_str(), key.name.as_str()))
    }
}

/// Why a snapshot could not be built from a list of resources.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Two resources of one kind have the same identity.
    #[error("{kind} {name} is declared twice; names must be unique per tenant and kind")]
    Duplicate {
        /// The kind, such as `thing`.
        kind: &'static str,
        /// `<tenant>/<name>`, or the tenant's name.
        name: String,
    },
}

pub(crate) use table::Table;

/// A versioned, immutable-by-convention set of policy tables.
///
/// The dataplane evaluates it (it implements [`crate::PolicyEvaluator`]); the operator keeps one
/// up to date with the `upsert_*` / `remove_*` methods and ships [`crate::Delta`]s between
/// versions. A clone shares its tables (O(1)), and applying a delta to it costs the delta's
/// size times O(log n).
///
/// Equality compares the version, every table and every derived index; not the tenant versions
/// or the log of changes, which say how a snapshot came to be, not what it holds.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub(crate) version: u64,
    pub(crate) tenants: Table<String, Arc<Tenant>>,
    pub(crate) things: Table<ResourceName, Arc<Thing>>,
    pub(crate) users: Table<ResourceName, Arc<User>>,
    pub(crate) groups: Table<ResourceName, Arc<Group>>,
    pub(crate) channels: Table<ResourceName, Arc<Channel>>,
    pub(crate) grants: Table<ResourceName, Arc<Grant>>,
    /// Each tenant's audit channel ([`AUDIT_CHANNEL`]), made with the tenant: not a resource,
    /// so never listed, counted, serialized or diffed.
    audit_channels: Table<String, Arc<Channel>>,
    /// Grants by subject and channel; each list sorted by grant name.
    grants_by_target: Table<GrantTarget, Vec<Arc<Grant>>>,
    /// Group names by member; each list sorted.
    groups_by_member: Table<MemberKey, Vec<String>>,
    /// Things by key digest; normally one, sorted.
    things_by_key: Table<KeyDigest, Vec<ResourceName>>,
    /// Tenants by the DER subject of a CA in their `device_ca`: who a certificate that names
    /// no tenant may belong to. Sorted.
    pub(crate) tenants_by_ca_subject: Table<Vec<u8>, Vec<String>>,
    /// Things by the certificate common name that names them (`x509.common_name`), as
    /// `(tenant, common name)`; normally one, sorted.
    pub(crate) things_by_common_name: Table<ResourceName, Vec<String>>,
    /// The token signing keys, sorted by `kid`; shared, so a dataplane rebuilds its keyring
    /// only when they change.
    pub(crate) signing_keys: Arc<Vec<SigningKey>>,
    /// The policy texts of tenants with an external engine.
    pub(crate) policies: Table<ResourceName, Arc<TenantPolicy>>,
    /// The engine that decides tenants with an external engine, once attached.
    engine: EngineSlot,
    /// How many tenants use an external engine.
    external_tenants: usize,
    /// The stamp of the last change (see [`crate::changes`]).
    stamp: u64,
    /// Each tenant's version: the stamp of the last change that touched it.
    tenant_versions: Table<String, u64>,
    /// The version of every tenant not in `tenant_versions`: the stamp this snapshot was built
    /// with.
    base_tenant_version: u64,
    /// What the last deltas touched.
    changes: ChangeLog,
}

impl PartialEq for Snapshot {
    fn eq(&self, o: &Self) -> bool {
        self.version == o.version
            && self.tenants == o.tenants
            && self.things == o.things
            && self.users == o.users
            && self.groups == o.groups
            && self.channels == o.channels
            && self.grants == o.grants
            && self.audit_channels == o.audit_channels
            && self.grants_by_target == o.grants_by_target
            && self.groups_by_member == o.groups_by_member
            && self.things_by_key == o.things_by_key
            && self.tenants_by_ca_subject == o.tenants_by_ca_subject
            && self.things_by_common_name == o.things_by_common_name
            && self.signing_keys == o.signing_keys
            && self.policies == o.policies
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("tenants", &self.tenants.len())
            .field("things", &self.things.len())
            .field("users", &self.users.len())
            .field("groups", &self.groups.len())
            .field("channels", &self.channels.len())
            .field("grants", &self.grants.len())
            .field("signing_keys", &self.signing_keys.len())
            .field("policies", &self.policies.len())
            .field("engine", &self.engine)
            .finish()
    }
}

impl Snapshot {
    /// An empty snapshot at `version`.
    pub fn new(version: u64) -> Self {
        Self {
            version,
            ..Self::default()
        }
    }

    /// Builds a snapshot from plain resource lists; identities must be unique per kind.
    pub fn from_resources(version: u64, resources: Resources) -> Result<Self, BuildError> {
        let mut s = Self::new(version);
        for t in resources.tenants {
            let name = t.name.clone();
            if s.put_tenant(t).is_some() {
                return Err(BuildError::Duplicate {
                    kind: "tenant",
                    name,
                });
            }
        }
        fn dup(kind: &'static str, tenant: &str, name: &str) -> BuildError {
            BuildError::Duplicate {
                kind,
                name: format!("{tenant}/{name}"),
            }
        }
        // Each put returns what it replaced: one descent per object, not a lookup before it.
        for t in resources.things {
            if let Some(old) = s.put_thing(t) {
                return Err(dup("thing", &old.tenant, &old.name));
            }
        }
        for u in resources.users {
            if let Some(old) = s.put_user(u) {
                return Err(dup("user", &old.tenant, &old.name));
            }
        }
        for g in resources.groups {
            if let Some(old) = s.put_group(g) {
                return Err(dup("group", &old.tenant, &old.name));
            }
        }
        for c in resources.channels {
            if let Some(old) = s.put_channel(c) {
                return Err(dup("channel", &old.tenant, &old.name));
            }
        }
        for g in resources.grants {
            if let Some(old) = s.put_grant(g) {
                return Err(dup("grant", &old.tenant, &old.name));
            }
        }
        for p in resources.policies {
            if let Some(old) = s.put_policy(p) {
                return Err(dup("policy", &old.tenant, &old.name));
            }
        }
        s.put_signing_keys(resources.signing_keys);
        // A new snapshot: every tenant at a version none had before, and no known changes.
        let stamp = next_stamp();
        s.base_tenant_version = stamp;
        s.stamp = stamp;
        s.changes.forget(stamp);
        Ok(s)
    }

    /// Every resource as plain lists, each sorted by identity.
    pub fn to_resources(&self) -> Resources {
        fn sorted<K: Ord + Clone + std::hash::Hash, T: Clone>(m: &Table<K, Arc<T>>) -> Vec<T> {
            m.sorted_values().into_iter().map(|t| T::clone(t)).collect()
        }
        Resources {
            tenants: sorted(&self.tenants),
            things: sorted(&self.things),
            users: sorted(&self.users),
            groups: sorted(&self.groups),
            channels: sorted(&self.channels),
            grants: sorted(&self.grants),
            signing_keys: self.signing_keys.to_vec(),
            policies: sorted(&self.policies),
        }
    }

    /// The token signing keys, sorted by `kid`.
    pub fn signing_keys(&self) -> &Arc<Vec<SigningKey>> {
        &self.signing_keys
    }

    /// Replaces the token signing keys (sorted here by `kid`); unchanged keys keep their
    /// allocation, so readers can tell by pointer that nothing changed.
    ///
    /// Keys touch no tenant: they decide whether a token's signature holds, which is checked
    /// each time a token is presented and never cached under a tenant version, and a session
    /// signed in with a token is ended by its expiry or its user's `tokenEpoch` (a User change).
    pub fn set_signing_keys(&mut self, keys: Vec<SigningKey>) {
        if self.put_signing_keys(keys) {
            let stamp = next_stamp();
            self.stamp = stamp;
            self.changes.forget(stamp);
        }
    }

    /// The version; it only ever grows on a dataplane.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version (the operator bumps it after a batch of changes).
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    /// The number of resources of every kind together.
    pub fn resource_count(&self) -> usize {
        self.tenants.len()
            + self.things.len()
            + self.users.len()
            + self.groups.len()
            + self.channels.len()
            + self.grants.len()
            + self.policies.len()
    }

    /// A tenant by name.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name).map(|t| &**t)
    }

    /// A thing by tenant and name.
    pub fn thing(&self, tenant: &str, name: &str) -> Option<&Thing> {
        self.things.get(&NameRef { tenant, name }).map(|t| &**t)
    }

    /// A user by tenant and name.
    pub fn user(&self, tenant: &str, name: &str) -> Option<&User> {
        self.users.get(&NameRef { tenant, name }).map(|t| &**t)
    }

    /// A group by tenant and name.
    pub fn group(&self, tenant: &str, name: &str) -> Option<&Group> {
        self.groups.get(&NameRef { tenant, name }).map(|t| &**t)
    }

    /// A channel by tenant and name.
    /// The tenant's [`AUDIT_CHANNEL`] is one too, while the tenant exists.
    pub fn channel(&self, tenant: &str, name: &str) -> Option<&Channel> {
        if name == AUDIT_CHANNEL {
            return self.audit_channels.get(tenant).map(|c| &**c);
        }
        self.channels.get(&NameRef { tenant, name }).map(|t| &**t)
    }

    /// A grant by tenant and name.
    pub fn grant(&self, tenant: &str, name: &str) -> Option<&Grant> {
        self.grants.get(&NameRef { tenant, name }).map(|t| &**t)
    }

    /// A policy text by tenant and name.
    pub fn policy(&self, tenant: &str, name: &str) -> Option<&TenantPolicy> {
        self.policies.get(&NameRef { tenant, name }).map(|p| &**p)
    }

    /// Every policy text, in no particular order.
    pub fn policies(&self) -> impl Iterator<Item = &TenantPolicy> {
        self.policies.values().map(|p| &**p)
    }

    /// Adds or replaces a policy text; returns the previous one.
    pub fn upsert_policy(&mut self, policy: TenantPolicy) -> Option<Arc<TenantPolicy>> {
        self.changed_by_hand(&policy.tenant);
        self.put_policy(policy)
    }

    /// Removes a policy text; returns it.
    pub fn remove_policy(&mut self, tenant: &str, name: &str) -> Option<Arc<TenantPolicy>> {
        self.changed_by_hand(tenant);
        self.take_policy(tenant, name)
    }

    /// Attaches the engine that decides the tenants with an external engine. It must have been
    /// built from this snapshot at its current version: one of another version is never asked
    /// (see [`crate::engine`]).
    pub fn attach_engine(&mut self, engine: Arc<dyn TenantEngine>) {
        self.engine = EngineSlot(Some(engine));
    }

    /// Drops the attached engine (it answers for an older version once the tables change).
    pub fn detach_engine(&mut self) {
        self.engine = EngineSlot(None);
    }

    /// Whether any tenant uses an external engine (an engine must then be attached).
    pub fn needs_engine(&self) -> bool {
        self.external_tenants > 0
    }

    /// How `tenant` is decided: `None` by the built-in logic; `Some(Ok(engine))` by the attached
    /// engine; `Some(Err(()))` when it needs an engine this snapshot does not have (at its
    /// version), which refuses.
    pub(crate) fn external(&self, tenant: &str) -> Option<Result<&dyn TenantEngine, ()>> {
        let engine = self.tenants.get(tenant)?.engine;
        if engine == Engine::Builtin {
            return None;
        }
        if engine == Engine::Unsupported {
            return Some(Err(()));
        }
        Some(match &self.engine.0 {
            Some(e) if e.version() == self.version => Ok(&**e),
            _ => Err(()),
        })
    }

    /// Every tenant, in no particular order.
    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values().map(|t| &**t)
    }

    /// Every thing, in no particular order.
    pub fn things(&self) -> impl Iterator<Item = &Thing> {
        self.things.values().map(|t| &**t)
    }

    /// Every user, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values().map(|t| &**t)
    }

    /// Every group, in no particular order.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values().map(|t| &**t)
    }

    /// Every channel, in no particular order.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.values().map(|t| &**t)
    }

    /// Every grant, in no particular order.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values().map(|t| &**t)
    }

    /// The grants naming this subject directly on this channel, sorted by grant name.
    pub fn grants_for(&self, tenant: &str, subject: &GrantSubject, channel: &str) -> &[Arc<Grant>] {
        let (kind, name) = subject.parts();
        self.grants_on(tenant, kind, name, channel)
    }

    pub(crate) fn grants_on(
        &self,
        tenant: &str,
        kind: GrantSubjectKind,
        subject: &str,
        channel: &str,
    ) -> &[Arc<Grant>] {
        let key = GrantTargetRef {
            tenant,
            kind,
            subject,
            channel,
        };
        self.grants_by_target.get(&key).map_or(&[], Vec::as_slice)
    }

    /// The groups a thing or user belongs to, sorted by name.
    pub fn groups_of(&self, tenant: &str, kind: SubjectKind, name: &str) -> &[String] {
        let key = MemberKeyRef { tenant, kind, name };
        self.groups_by_member.get(&key).map_or(&[], Vec::as_slice)
    }

    /// The things that have a key with this digest (normally at most one).
    pub fn things_with_key(&self, digest: &KeyDigest) -> &[ResourceName] {
        self.things_by_key.get(digest).map_or(&[], Vec::as_slice)
    }

    /// The channel a thing's topics are mounted on, if any.
    pub fn mountpoint_of(&self, tenant: &str, thing: &str) -> Option<&str> {
        self.thing(tenant, thing)?.mountpoint.as_deref()
    }

    /// The tenant's version: it changes with every change to the tenant or any of its records
    /// (and with every full snapshot), and never comes back within a process. Every answer
    /// about a subject of the tenant depends only on what this version names, so an answer
    /// kept under it holds for as long as the tenant's version is the same.
    pub fn tenant_version(&self, tenant: &str) -> u64 {
        self.tenant_versions
            .get(tenant)
            .copied()
            .unwrap_or(self.base_tenant_version)
    }

    /// The stamp of this snapshot's last change (see [`crate::changes`]): a consumer that notes
    /// it can ask [`Snapshot::changes_since`] what changed after it.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// What changed since the snapshot of stamp `seen`: the deltas applied since, when this
    /// snapshot knows them all, else [`Since::Everything`].
    pub fn changes_since(&self, seen: u64) -> Since<'_> {
        self.changes.since(seen)
    }

    /// Gives `tenants` the version `stamp` (the stamp of a change that touched them).
    pub(crate) fn touch_tenants<'a>(
        &mut self,
        stamp: u64,
        tenants: impl IntoIterator<Item = &'a str>,
    ) {
        for t in tenants {
            match self.tenant_versions.get_mut(t) {
                Some(v) => *v = stamp,
                None => drop(self.tenant_versions.insert(t.to_owned(), stamp)),
            }
        }
        self.stamp = stamp;
    }

    /// Notes the delta applied at `stamp`, which touched `touched`.
    pub(crate) fn record_change(&mut self, stamp: u64, touched: crate::changes::Touched) {
        self.changes.record(stamp, touched);
    }

    /// A record of `tenant` changed outside a delta: its reach is not known.
    fn changed_by_hand(&mut self, tenant: &str) {
        let stamp = next_stamp();
        self.touch_tenants(stamp, [tenant]);
        self.changes.forget(stamp);
    }

    /// Adds or replaces a tenant; returns the previous one.
    pub fn upsert_tenant(&mut self, tenant: Tenant) -> Option<Arc<Tenant>> {
        self.changed_by_hand(&tenant.name);
        self.put_tenant(tenant)
    }

    /// Removes a tenant (not its resources); returns it.
    pub fn remove_tenant(&mut self, name: &str) -> Option<Arc<Tenant>> {
        self.changed_by_hand(name);
        self.take_tenant(name)
    }

    /// Adds or replaces a thing; returns the previous one.
    pub fn upsert_thing(&mut self, thing: Thing) -> Option<Arc<Thing>> {
        self.changed_by_hand(&thing.tenant);
        self.put_thing(thing)
    }

    /// Removes a thing; returns it.
    pub fn remove_thing(&mut self, tenant: &str, name: &str) -> Option<Arc<Thing>> {
        self.changed_by_hand(tenant);
        self.take_thing(tenant, name)
    }

    /// Adds or replaces a user; returns the previous one.
    pub fn upsert_user(&mut self, user: User) -> Option<Arc<User>> {
        self.changed_by_hand(&user.tenant);
        self.put_user(user)
    }

    /// Removes a user; returns it.
    pub fn remove_user(&mut self, tenant: &str, name: &str) -> Option<Arc<User>> {
        self.changed_by_hand(tenant);
        self.take_user(tenant, name)
    }

    /// Adds or replaces a group; returns the previous one.
    pub fn upsert_group(&mut self, group: Group) -> Option<Arc<Group>> {
        self.changed_by_hand(&group.tenant);
        self.put_group(group)
    }

    /// Removes a group; returns it.
    pub fn remove_group(&mut self, tenant: &str, name: &str) -> Option<Arc<Group>> {
        self.changed_by_hand(tenant);
        self.take_group(tenant, name)
    }

    /// Adds or replaces a channel; returns the previous one.
    pub fn upsert_channel(&mut self, channel: Channel) -> Option<Arc<Channel>> {
        self.changed_by_hand(&channel.tenant);
        self.put_channel(channel)
    }

    /// Removes a channel; returns it.
    pub fn remove_channel(&mut self, tenant: &str, name: &str) -> Option<Arc<Channel>> {
        self.changed_by_hand(tenant);
        self.take_channel(tenant, name)
    }

    /// Adds or replaces a grant; returns the previous one.
    pub fn upsert_grant(&mut self, grant: Grant) -> Option<Arc<Grant>> {
        self.changed_by_hand(&grant.tenant);
        self.put_grant(grant)
    }

    /// Removes a grant; returns it.
    pub fn remove_grant(&mut self, tenant: &str, name: &str) -> Option<Arc<Grant>> {
        self.changed_by_hand(tenant);
        self.take_grant(tenant, name)
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Snapshot>();
};
