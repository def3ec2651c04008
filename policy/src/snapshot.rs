//! The versioned policy snapshot: resource tables with O(1) lookups and their derived indexes.

use std::fmt;
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};
use serde::{Deserialize, Serialize};

use crate::credentials::KeyDigest;
use crate::engine::{EngineSlot, TenantEngine};
use crate::model::{
    AUDIT_CHANNEL, Channel, Engine, Grant, GrantSubject, GrantSubjectKind, Group, ResourceName,
    Resources, SigningKey, SubjectKind, Tenant, TenantPolicy, Thing, User,
};

/// Where grants are indexed: a subject (by kind and name) and a channel, in one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GrantTarget {
    tenant: String,
    kind: GrantSubjectKind,
    subject: String,
    channel: String,
}

/// A borrowed [`GrantTarget`], hashed identically, for lookups without allocating.
#[derive(Hash)]
struct GrantTargetRef<'a> {
    tenant: &'a str,
    kind: GrantSubjectKind,
    subject: &'a str,
    channel: &'a str,
}

impl Equivalent<GrantTarget> for GrantTargetRef<'_> {
    fn equivalent(&self, key: &GrantTarget) -> bool {
        self.kind == key.kind
            && self.tenant == key.tenant
            && self.subject == key.subject
            && self.channel == key.channel
    }
}

/// A group member's identity, for the member → groups index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MemberKey {
    tenant: String,
    kind: SubjectKind,
    name: String,
}

#[derive(Hash)]
struct MemberKeyRef<'a> {
    tenant: &'a str,
    kind: SubjectKind,
    name: &'a str,
}

impl Equivalent<MemberKey> for MemberKeyRef<'_> {
    fn equivalent(&self, key: &MemberKey) -> bool {
        self.kind == key.kind && self.tenant == key.tenant && self.name == key.name
    }
}

#[derive(Hash)]
struct NameRef<'a> {
    tenant: &'a str,
    name: &'a str,
}

impl Equivalent<ResourceName> for NameRef<'_> {
    fn equivalent(&self, key: &ResourceName) -> bool {
        self.tenant == key.tenant && self.name == key.name
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

/// A versioned, immutable-by-convention set of policy tables.
///
/// The dataplane evaluates it (it implements [`crate::PolicyEvaluator`]); the operator keeps one
/// up to date with the `upsert_*` / `remove_*` methods and ships [`crate::Delta`]s between
/// versions. Equality compares the version, every table and every derived index.
#[derive(Clone, Default, PartialEq)]
pub struct Snapshot {
    pub(crate) version: u64,
    pub(crate) tenants: HashMap<String, Arc<Tenant>>,
    pub(crate) things: HashMap<ResourceName, Arc<Thing>>,
    pub(crate) users: HashMap<ResourceName, Arc<User>>,
    pub(crate) groups: HashMap<ResourceName, Arc<Group>>,
    pub(crate) channels: HashMap<ResourceName, Arc<Channel>>,
    pub(crate) grants: HashMap<ResourceName, Arc<Grant>>,
    /// Each tenant's audit channel ([`AUDIT_CHANNEL`]), made with the tenant: not a resource,
    /// so never listed, counted, serialized or diffed.
    audit_channels: HashMap<String, Arc<Channel>>,
    /// Grants by subject and channel; each list sorted by grant name.
    grants_by_target: HashMap<GrantTarget, Vec<Arc<Grant>>>,
    /// Group names by member; each list sorted.
    groups_by_member: HashMap<MemberKey, Vec<String>>,
    /// Things by key digest; normally one, sorted.
    things_by_key: HashMap<KeyDigest, Vec<ResourceName>>,
    /// Tenants by the DER subject of a CA in their `device_ca`: who a certificate that names
    /// no tenant may belong to. Sorted.
    pub(crate) tenants_by_ca_subject: HashMap<Vec<u8>, Vec<String>>,
    /// Things by the certificate common name that names them (`x509.common_name`), as
    /// `(tenant, common name)`; normally one, sorted.
    pub(crate) things_by_common_name: HashMap<ResourceName, Vec<String>>,
    /// The token signing keys, sorted by `kid`; shared, so a dataplane rebuilds its keyring
    /// only when they change.
    pub(crate) signing_keys: Arc<Vec<SigningKey>>,
    /// The policy texts of tenants with an external engine.
    pub(crate) policies: HashMap<ResourceName, Arc<TenantPolicy>>,
    /// The engine that decides tenants with an external engine, once attached.
    engine: EngineSlot,
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

fn sorted_insert<T: Ord>(list: &mut Vec<T>, item: T) {
    if let Err(at) = list.binary_search(&item) {
        list.insert(at, item);
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
        s.tenants.reserve(resources.tenants.len());
        s.things.reserve(resources.things.len());
        s.users.reserve(resources.users.len());
        s.groups.reserve(resources.groups.len());
        s.channels.reserve(resources.channels.len());
        s.grants.reserve(resources.grants.len());
        s.grants_by_target.reserve(resources.grants.len());
        for t in resources.tenants {
            let name = t.name.clone();
            if s.upsert_tenant(t).is_some() {
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
        for t in resources.things {
            if s.thing(&t.tenant, &t.name).is_some() {
                return Err(dup("thing", &t.tenant, &t.name));
            }
            s.upsert_thing(t);
        }
        for u in resources.users {
            if s.user(&u.tenant, &u.name).is_some() {
                return Err(dup("user", &u.tenant, &u.name));
            }
            s.upsert_user(u);
        }
        for g in resources.groups {
            if s.group(&g.tenant, &g.name).is_some() {
                return Err(dup("group", &g.tenant, &g.name));
            }
            s.upsert_group(g);
        }
        for c in resources.channels {
            if s.channel(&c.tenant, &c.name).is_some() {
                return Err(dup("channel", &c.tenant, &c.name));
            }
            s.upsert_channel(c);
        }
        for g in resources.grants {
            if s.grant(&g.tenant, &g.name).is_some() {
                return Err(dup("grant", &g.tenant, &g.name));
            }
            s.upsert_grant(g);
        }
        for p in resources.policies {
            if s.policy(&p.tenant, &p.name).is_some() {
                return Err(dup("policy", &p.tenant, &p.name));
            }
            s.upsert_policy(p);
        }
        s.set_signing_keys(resources.signing_keys);
        Ok(s)
    }

    /// Every resource as plain lists, each sorted by identity.
    pub fn to_resources(&self) -> Resources {
        fn sorted<K: Ord + Clone, T: Clone>(m: &HashMap<K, Arc<T>>) -> Vec<T> {
            let mut v: Vec<(&K, &Arc<T>)> = m.iter().collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            v.into_iter().map(|(_, t)| T::clone(t)).collect()
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
    pub fn set_signing_keys(&mut self, mut keys: Vec<SigningKey>) {
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        if *self.signing_keys != keys {
            self.signing_keys = Arc::new(keys);
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
        let key = ResourceName::new(&*policy.tenant, &*policy.name);
        self.policies.insert(key, Arc::new(policy))
    }

    /// Removes a policy text; returns it.
    pub fn remove_policy(&mut self, tenant: &str, name: &str) -> Option<Arc<TenantPolicy>> {
        self.policies.remove(&NameRef { tenant, name })
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
        self.tenants.values().any(|t| !t.engine.is_builtin())
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

    /// Adds or replaces a tenant; returns the previous one.
    pub fn upsert_tenant(&mut self, tenant: Tenant) -> Option<Arc<Tenant>> {
        let audit = Channel::audit_of(&tenant);
        let fresh = self
            .audit_channels
            .get(&tenant.name)
            .is_none_or(|c| c.uid != audit.uid);
        if fresh {
            self.audit_channels
                .insert(tenant.name.clone(), Arc::new(audit));
        }
        if let Some(ca) = &tenant.device_ca {
            for subject in ca.subjects() {
                let list = self.tenants_by_ca_subject.entry(subject.to_vec());
                sorted_insert(list.or_default(), tenant.name.clone());
            }
        }
        let old = self.tenants.insert(tenant.name.clone(), Arc::new(tenant));
        if let Some(old) = &old {
            self.unindex_ca(old, self.tenants.get(&old.name).cloned().as_deref());
        }
        old
    }

    /// Removes a tenant (not its resources); returns it.
    pub fn remove_tenant(&mut self, name: &str) -> Option<Arc<Tenant>> {
        self.audit_channels.remove(name);
        let old = self.tenants.remove(name)?;
        self.unindex_ca(&old, None);
        Some(old)
    }

    /// Drops `old`'s CA subjects from the index, except those `now` (its replacement) has.
    fn unindex_ca(&mut self, old: &Tenant, now: Option<&Tenant>) {
        let Some(ca) = &old.device_ca else { return };
        let kept = |subject: &[u8]| {
            now.and_then(|t| t.device_ca.as_ref())
                .is_some_and(|ca| ca.subjects().any(|s| s == subject))
        };
        for subject in ca.subjects() {
            if kept(subject) {
                continue;
            }
            if let Some(list) = self.tenants_by_ca_subject.get_mut(subject) {
                list.retain(|t| *t != old.name);
                if list.is_empty() {
                    self.tenants_by_ca_subject.remove(subject);
                }
            }
        }
    }

    /// Adds or replaces a thing; returns the previous one.
    pub fn upsert_thing(&mut self, thing: Thing) -> Option<Arc<Thing>> {
        let key = ResourceName::new(&*thing.tenant, &*thing.name);
        let thing = Arc::new(thing);
        let old = self.things.insert(key.clone(), thing.clone());
        if let Some(old) = &old {
            self.unindex_keys(&key, old);
        }
        for d in &thing.key_digests {
            sorted_insert(self.things_by_key.entry(*d).or_default(), key.clone());
        }
        if let Some(cn) = thing.x509.as_ref().and_then(|x| x.common_name.as_deref()) {
            let by = self
                .things_by_common_name
                .entry(ResourceName::new(&*thing.tenant, cn));
            sorted_insert(by.or_default(), thing.name.clone());
        }
        old
    }

    /// Removes a thing; returns it.
    pub fn remove_thing(&mut self, tenant: &str, name: &str) -> Option<Arc<Thing>> {
        let (key, old) = self.things.remove_entry(&NameRef { tenant, name })?;
        self.unindex_keys(&key, &old);
        Some(old)
    }

    fn unindex_keys(&mut self, key: &ResourceName, thing: &Thing) {
        for d in &thing.key_digests {
            if let Some(list) = self.things_by_key.get_mut(d) {
                list.retain(|k| k != key);
                if list.is_empty() {
                    self.things_by_key.remove(d);
                }
            }
        }
        if let Some(cn) = thing.x509.as_ref().and_then(|x| x.common_name.as_deref()) {
            let by = ResourceName::new(&*thing.tenant, cn);
            if let Some(list) = self.things_by_common_name.get_mut(&by) {
                list.retain(|n| *n != thing.name);
                if list.is_empty() {
                    self.things_by_common_name.remove(&by);
                }
            }
        }
    }

    /// Adds or replaces a user; returns the previous one.
    pub fn upsert_user(&mut self, user: User) -> Option<Arc<User>> {
        let key = ResourceName::new(&*user.tenant, &*user.name);
        self.users.insert(key, Arc::new(user))
    }

    /// Removes a user; returns it.
    pub fn remove_user(&mut self, tenant: &str, name: &str) -> Option<Arc<User>> {
        self.users.remove(&NameRef { tenant, name })
    }

    /// Adds or replaces a group; returns the previous one.
    pub fn upsert_group(&mut self, group: Group) -> Option<Arc<Group>> {
        let key = ResourceName::new(&*group.tenant, &*group.name);
        let group = Arc::new(group);
        let old = self.groups.insert(key, group.clone());
        if let Some(old) = &old {
            self.unindex_members(old);
        }
        for m in &group.members {
            let member = MemberKey {
                tenant: group.tenant.clone(),
                kind: m.kind,
                name: m.name.clone(),
            };
            sorted_insert(
                self.groups_by_member.entry(member).or_default(),
                group.name.clone(),
            );
        }
        old
    }

    /// Removes a group; returns it.
    pub fn remove_group(&mut self, tenant: &str, name: &str) -> Option<Arc<Group>> {
        let old = self.groups.remove(&NameRef { tenant, name })?;
        self.unindex_members(&old);
        Some(old)
    }

    fn unindex_members(&mut self, group: &Group) {
        for m in &group.members {
            let key = MemberKeyRef {
                tenant: &group.tenant,
                kind: m.kind,
                name: &m.name,
            };
            if let Some(list) = self.groups_by_member.get_mut(&key) {
                list.retain(|g| *g != group.name);
                if list.is_empty() {
                    self.groups_by_member.remove(&key);
                }
            }
        }
    }

    /// Adds or replaces a channel; returns the previous one.
    pub fn upsert_channel(&mut self, channel: Channel) -> Option<Arc<Channel>> {
        let key = ResourceName::new(&*channel.tenant, &*channel.name);
        self.channels.insert(key, Arc::new(channel))
    }

    /// Removes a channel; returns it.
    pub fn remove_channel(&mut self, tenant: &str, name: &str) -> Option<Arc<Channel>> {
        self.channels.remove(&NameRef { tenant, name })
    }

    /// Adds or replaces a grant; returns the previous one.
    pub fn upsert_grant(&mut self, grant: Grant) -> Option<Arc<Grant>> {
        let key = ResourceName::new(&*grant.tenant, &*grant.name);
        let grant = Arc::new(grant);
        let old = self.grants.insert(key, grant.clone());
        if let Some(old) = &old {
            self.unindex_grant(old);
        }
        let (kind, subject) = grant.subject.parts();
        let target = GrantTarget {
            tenant: grant.tenant.clone(),
            kind,
            subject: subject.to_owned(),
            channel: grant.channel.clone(),
        };
        let list = self.grants_by_target.entry(target).or_default();
        match list.binary_search_by(|g| g.name.cmp(&grant.name)) {
            Ok(at) => list[at] = grant,
            Err(at) => list.insert(at, grant),
        }
        old
    }

    /// Removes a grant; returns it.
    pub fn remove_grant(&mut self, tenant: &str, name: &str) -> Option<Arc<Grant>> {
        let old = self.grants.remove(&NameRef { tenant, name })?;
        self.unindex_grant(&old);
        Some(old)
    }

    fn unindex_grant(&mut self, grant: &Grant) {
        let (kind, subject) = grant.subject.parts();
        let key = GrantTargetRef {
            tenant: &grant.tenant,
            kind,
            subject,
            channel: &grant.channel,
        };
        if let Some(list) = self.grants_by_target.get_mut(&key) {
            list.retain(|g| g.name != grant.name);
            if list.is_empty() {
                self.grants_by_target.remove(&key);
            }
        }
    }
}

/// The serialized form: the version and every resource, sorted; indexes are rebuilt on load.
#[derive(Serialize)]
struct SnapshotView<'a> {
    version: u64,
    tenants: Vec<&'a Tenant>,
    things: Vec<&'a Thing>,
    users: Vec<&'a User>,
    groups: Vec<&'a Group>,
    channels: Vec<&'a Channel>,
    grants: Vec<&'a Grant>,
    #[serde(skip_serializing_if = "<[SigningKey]>::is_empty")]
    signing_keys: &'a [SigningKey],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policies: Vec<&'a TenantPolicy>,
}

#[derive(Deserialize)]
struct SnapshotOwned {
    version: u64,
    #[serde(default)]
    tenants: Vec<Tenant>,
    #[serde(default)]
    things: Vec<Thing>,
    #[serde(default)]
    users: Vec<User>,
    #[serde(default)]
    groups: Vec<Group>,
    #[serde(default)]
    channels: Vec<Channel>,
    #[serde(default)]
    grants: Vec<Grant>,
    #[serde(default)]
    signing_keys: Vec<SigningKey>,
    #[serde(default)]
    policies: Vec<TenantPolicy>,
}

fn sorted_refs<K: Ord, T>(m: &HashMap<K, Arc<T>>) -> Vec<&T> {
    let mut v: Vec<(&K, &Arc<T>)> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v.into_iter().map(|(_, t)| &**t).collect()
}

impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SnapshotView {
            version: self.version,
            tenants: sorted_refs(&self.tenants),
            things: sorted_refs(&self.things),
            users: sorted_refs(&self.users),
            groups: sorted_refs(&self.groups),
            channels: sorted_refs(&self.channels),
            grants: sorted_refs(&self.grants),
            signing_keys: &self.signing_keys,
            policies: sorted_refs(&self.policies),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let o = SnapshotOwned::deserialize(deserializer)?;
        let resources = Resources {
            tenants: o.tenants,
            things: o.things,
            users: o.users,
            groups: o.groups,
            channels: o.channels,
            grants: o.grants,
            signing_keys: o.signing_keys,
            policies: o.policies,
        };
        Snapshot::from_resources(o.version, resources).map_err(serde::de::Error::custom)
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Snapshot>();
};
