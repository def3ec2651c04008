//! The policy index: every Fleetward resource, resolved per namespace into a versioned snapshot,
//! the deltas between its versions, and the status each object should show.
//!
//! It is source-agnostic: it resolves plain domain inputs ([`input`]), with no Kubernetes type in
//! them. The Kubernetes watchers and the single-binary directory reader both convert their
//! resources (`crate::resource`) and call [`Index::apply`] / [`Index::delete`] /
//! [`Index::reset`], then [`Index::commit`] to batch what changed into one new snapshot version.

mod claims;
mod device_ca;
mod incremental;
pub mod input;
mod object;
mod pass;
mod policies;
mod readiness;
mod resolve;
#[cfg(test)]
pub(crate) mod tests;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use fleetward_policy::{self as policy, Delta, ResourceName, Snapshot};

pub use device_ca::{CA_ENTRY, CRL_ENTRY, IssuerCa, IssuerKey, TLS_ENTRY};
pub use object::{Kind, Object, ObjectKey, SecretData};
pub use readiness::{
    BoxedFacts, CertificateFacts, CertificateRequest, ClaimFacts, DesiredStatus, Facts, Readiness,
    Reason, X509Facts,
};
pub use resolve::{MIN_KEY_LEN, is_key_entry};
pub use view::ViewDigest;

use device_ca::Issuers;
use incremental::State;
use input::{IssuerKind, IssuerRef};
use policies::EnforcedPolicies;
use resolve::{Namespace, PasswordHashes, Resolution, resolve};

/// How many deltas the index keeps for dataplanes that resume from an older version.
const HISTORY: usize = 1024;

/// The resources the kept deltas may hold together, at least: past this and past a quarter of
/// the snapshot, the oldest deltas go (a dataplane that far behind is sent the snapshot, which
/// is then little more to send than the deltas), so a bulk apply does not keep a second copy
/// of the world.
const HISTORY_RESOURCES: usize = 4096;

/// What one [`Index::commit`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// The snapshot version after the commit.
    pub version: u64,
    /// The policy delta, when the snapshot changed and the delta is small enough to keep (see
    /// [`HISTORY_RESOURCES`]); a larger change moves the version without one.
    pub delta: Option<Arc<Delta>>,
    /// Objects whose desired status changed (or was removed, for a deleted object).
    pub statuses: Vec<ObjectKey>,
    /// Objects included from this version on (new, or a changed record or generation): their
    /// `Enforced` waits for the dataplanes again.
    pub included: Vec<ObjectKey>,
}

/// When an object's current generation entered the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Included {
    generation: Option<i64>,
    version: u64,
}

/// What a namespace put into the snapshot, to remove it when it goes.
#[derive(Clone, Debug, Default)]
struct Served {
    tenant: Option<String>,
    things: BTreeSet<String>,
    channels: BTreeSet<String>,
    users: BTreeSet<String>,
    groups: BTreeSet<String>,
    grants: BTreeSet<String>,
    policies: BTreeSet<String>,
}

/// Policy records changed since the last commit, by kind.
#[derive(Debug, Default)]
struct Touched {
    tenants: BTreeSet<String>,
    things: BTreeSet<ResourceName>,
    channels: BTreeSet<ResourceName>,
    users: BTreeSet<ResourceName>,
    groups: BTreeSet<ResourceName>,
    grants: BTreeSet<ResourceName>,
    policies: BTreeSet<ResourceName>,
    signing_keys: bool,
}

impl Touched {
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The resources a delta of these changes holds (signing keys count as one).
    fn len(&self) -> usize {
        usize::from(self.signing_keys)
            + self.tenants.len()
            + self.things.len()
            + self.channels.len()
            + self.users.len()
            + self.groups.len()
            + self.grants.len()
            + self.policies.len()
    }
}

/// The policy index. See the module documentation.
#[derive(Debug, Default)]
pub struct Index {
    tenants: BTreeMap<String, input::Tenant>,
    namespaces: HashMap<String, Namespace>,
    snapshot: Snapshot,
    served: HashMap<String, Served>,
    statuses: HashMap<ObjectKey, DesiredStatus>,
    included: HashMap<ObjectKey, Included>,
    /// The digest of `included`'s keys and generations.
    view: ViewDigest,
    dirty: BTreeSet<String>,
    touched: Touched,
    pending_included: Vec<(ObjectKey, Option<i64>)>,
    changed_statuses: BTreeSet<ObjectKey>,
    passwords: PasswordHashes,
    enforced_policies: EnforcedPolicies,
    issuers: Issuers,
    /// cert-manager's CRDs are known to be missing (unknown counts as installed).
    cert_manager_missing: bool,
    history: VecDeque<Arc<Delta>>,
    /// The resources `history`'s deltas hold together.
    history_resources: usize,
    /// Each resolved namespace's incremental state.
    states: HashMap<String, State>,
    /// Namespaces with dirty objects to resolve one by one at the next commit (those in
    /// `dirty` resolve whole instead).
    pending: BTreeSet<String>,
    /// Resolve every changed namespace whole, as the oracle of the incremental index does.
    #[cfg(test)]
    whole: bool,
}

impl Index {
    /// An empty index at snapshot version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index whose first commit will be `version + 1`: an operator that restarts keeps
    /// its versions moving forward so dataplanes never mistake a new snapshot for an old one.
    pub fn starting_at(version: u64) -> Self {
        Self {
            snapshot: Snapshot::new(version),
            ..Self::default()
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The status the index wants an object to show, if it knows the object.
    pub fn status(&self, key: &ObjectKey) -> Option<&DesiredStatus> {
        self.statuses.get(key)
    }

    /// The snapshot version from which the object's current generation is enforced, once a
    /// dataplane has applied it; `None` while the object is not served.
    pub fn included_version(&self, key: &ObjectKey) -> Option<u64> {
        self.included.get(key).map(|i| i.version)
    }

    /// Every served object: its key, the generation served and the version that included it.
    pub fn included(&self) -> impl Iterator<Item = (&ObjectKey, Option<i64>, u64)> {
        self.included
            .iter()
            .map(|(key, i)| (key, i.generation, i.version))
    }

    /// The digest of what the index serves: every served object with the generation it
    /// serves, kept as it changes. Two indexes fed the same objects have the same digest.
    pub fn view_digest(&self) -> ViewDigest {
        self.view
    }

    /// Every object whose status the index knows.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectKey> {
        self.statuses.keys()
    }

    /// The deltas from `version` to the current version, oldest first; `None` when the index no
    /// longer keeps them all (the dataplane then needs a full snapshot).
    pub fn deltas_since(&self, version: u64) -> Option<Vec<Arc<Delta>>> {
        let current = self.snapshot.version();
        if version == current {
            return Some(Vec::new());
        }
        if version > current {
            return None;
        }
        let start = self
            .history
            .iter()
            .position(|d| d.from_version == version)?;
        Some(self.history.iter().skip(start).cloned().collect())
    }

    /// Adds or replaces an object (an edge's resource converts: see `crate::resource`).
    /// Objects without a name (or namespace) are ignored.
    pub fn apply(&mut self, object: impl Into<Object>) {
        let object = object.into();
        let Some(key) = object.key() else {
            tracing::warn!(?object, "ignoring an object without a name or namespace");
            return;
        };
        if let Object::Tenant(tenant) = object {
            let old = self.tenants.insert(key.name.clone(), tenant);
            let new = &self.tenants[&key.name];
            if old.as_ref() == Some(new) {
                return;
            }
            if let Some(old) = old {
                self.dirty.insert(old.namespace);
            }
            self.dirty.insert(new.namespace.clone());
            return;
        }
        let ns = self.namespaces.entry(key.namespace.clone()).or_default();
        let old = match object {
            Object::Tenant(_) => unreachable!("handled above"),
            Object::Thing(o) => put(&mut ns.things, &key.name, o).map(|o| o.map(Object::Thing)),
            Object::Channel(o) => {
                put(&mut ns.channels, &key.name, o).map(|o| o.map(Object::Channel))
            }
            Object::Connection(o) => {
                put(&mut ns.connections, &key.name, o).map(|o| o.map(Object::Connection))
            }
            Object::User(o) => put(&mut ns.users, &key.name, o).map(|o| o.map(Object::User)),
            Object::Group(o) => put(&mut ns.groups, &key.name, o).map(|o| o.map(Object::Group)),
            Object::Policy(o) => put(&mut ns.policies, &key.name, o).map(|o| o.map(Object::Policy)),
            Object::Secret(s) => match ns.secrets.get(&key.name) {
                Some(old) if *old == s => None,
                _ => Some(ns.secrets.insert(key.name.clone(), s).map(Object::Secret)),
            },
        };
        if let Some(old) = old {
            self.changed(&key, old);
        }
    }

    /// Removes an object.
    pub fn delete(&mut self, key: &ObjectKey) {
        if key.kind == Kind::Tenant {
            if let Some(old) = self.tenants.remove(&key.name) {
                self.dirty.insert(old.namespace);
                self.forget(key);
            }
            return;
        }
        let Some(ns) = self.namespaces.get_mut(&key.namespace) else {
            return;
        };
        let name = &key.name;
        let old = match key.kind {
            Kind::Tenant => unreachable!("handled above"),
            Kind::Thing => ns.things.remove(name).map(Object::Thing),
            Kind::Channel => ns.channels.remove(name).map(Object::Channel),
            Kind::Connection => ns.connections.remove(name).map(Object::Connection),
            Kind::User => {
                self.passwords.forget(&key.namespace, name);
                ns.users.remove(name).map(Object::User)
            }
            Kind::Group => ns.groups.remove(name).map(Object::Group),
            Kind::Policy => {
                self.enforced_policies.forget(&key.namespace, name);
                ns.policies.remove(name).map(Object::Policy)
            }
            Kind::Secret => ns.secrets.remove(name).map(Object::Secret),
        };
        if let Some(old) = old {
            self.changed(key, Some(old));
            if self
                .namespaces
                .get(&key.namespace)
                .is_some_and(Namespace::is_empty)
            {
                self.namespaces.remove(&key.namespace);
            }
            self.forget(key);
        }
    }

    /// Replaces every object of `kind` with `objects` (a relist after a watch restarts).
    pub fn reset<O: Into<Object>>(&mut self, kind: Kind, objects: impl IntoIterator<Item = O>) {
        let objects: Vec<Object> = objects.into_iter().map(Into::into).collect();
        // Borrowed names: a relist of 100k objects copies none of them to find the gone.
        let keep: HashSet<(&str, &str)> = objects
            .iter()
            .filter_map(Object::names)
            .map(|(_, namespace, name)| (namespace, name))
            .collect();
        let stale: Vec<ObjectKey> = self
            .keys_of(kind)
            .into_iter()
            .filter(|k| !keep.contains(&(k.namespace.as_str(), k.name.as_str())))
            .collect();
        drop(keep);
        for key in &stale {
            self.delete(key);
        }
        for object in objects {
            self.apply(object);
        }
    }

    /// Sets the token signing keys (from the platform's signing-key Secret); they go out with
    /// the next commit when they changed.
    pub fn set_signing_keys(&mut self, keys: Vec<policy::SigningKey>) {
        let before = self.snapshot.signing_keys().clone();
        self.snapshot.set_signing_keys(keys);
        if !Arc::ptr_eq(&before, self.snapshot.signing_keys()) {
            self.touched.signing_keys = true;
        }
    }

    /// Sets what a cert-manager issuer is (`None`: it does not exist); the namespaces of the
    /// Tenants that name it resolve again at the next commit when it changed.
    pub fn set_issuer(&mut self, key: IssuerKey, issuer: Option<IssuerCa>) {
        let old = match issuer {
            Some(issuer) => self.issuers.issuers.insert(key.clone(), issuer.clone()),
            None => self.issuers.issuers.remove(&key),
        };
        if old != self.issuers.issuers.get(&key).cloned() {
            self.dirty_tenants(|ns, r| IssuerKey::of(ns, r) == key);
        }
    }

    /// Replaces every issuer of one kind (`cluster`: ClusterIssuers, else Issuers) after a
    /// relist.
    pub fn reset_issuers(&mut self, cluster: bool, issuers: Vec<(IssuerKey, IssuerCa)>) {
        let is_kind = |k: &IssuerKey| matches!(k, IssuerKey::ClusterIssuer { .. }) == cluster;
        let keep: BTreeSet<IssuerKey> = issuers.iter().map(|(k, _)| k.clone()).collect();
        let stale: Vec<IssuerKey> = self
            .issuers
            .issuers
            .keys()
            .filter(|k| is_kind(k) && !keep.contains(*k))
            .cloned()
            .collect();
        for key in stale {
            self.set_issuer(key, None);
        }
        for (key, issuer) in issuers.into_iter().filter(|(k, _)| is_kind(k)) {
            self.set_issuer(key, Some(issuer));
        }
    }

    /// Sets a Secret of cert-manager's cluster resource namespace (`None`: it is gone), which a
    /// ClusterIssuer may name as its CA.
    pub fn set_issuer_secret(&mut self, name: &str, secret: Option<SecretData>) {
        let old = match secret {
            Some(s) => self.issuers.cluster_secrets.insert(name.to_owned(), s),
            None => self.issuers.cluster_secrets.remove(name),
        };
        if old.as_ref() == self.issuers.cluster_secrets.get(name) {
            return;
        }
        let issuers: BTreeSet<String> = self
            .issuers
            .issuers
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (IssuerKey::ClusterIssuer { name: issuer }, IssuerCa::Ca { secret_name })
                    if secret_name == name =>
                {
                    Some(issuer.clone())
                }
                _ => None,
            })
            .collect();
        self.dirty_tenants(|_, r| r.kind == IssuerKind::ClusterIssuer && issuers.contains(&r.name));
    }

    /// The Secrets of cert-manager's namespace that the CA ClusterIssuers of Tenants (without
    /// a `deviceCA.secretName` of their own) name: the only ones the operator reads there.
    pub fn cluster_issuer_secrets(&self) -> BTreeSet<String> {
        self.tenants
            .values()
            .filter_map(|t| t.device_ca.as_ref())
            .filter(|d| d.secret_name.is_none())
            .filter_map(|d| d.issuer.as_ref())
            .filter(|r| r.kind == IssuerKind::ClusterIssuer)
            .filter_map(|r| {
                let key = IssuerKey::ClusterIssuer {
                    name: r.name.clone(),
                };
                match self.issuers.issuers.get(&key)? {
                    IssuerCa::Ca { secret_name } => Some(secret_name.clone()),
                    IssuerCa::NotCa { .. } => None,
                }
            })
            .collect()
    }

    /// Whether cert-manager's CRDs are installed, as far as the index was told.
    pub fn cert_manager_installed(&self) -> bool {
        !self.cert_manager_missing
    }

    /// Sets whether cert-manager's CRDs are installed: the Things asking for a certificate
    /// say so when they are not.
    pub fn set_cert_manager_installed(&mut self, installed: bool) {
        if self.cert_manager_missing != installed {
            return;
        }
        self.cert_manager_missing = !installed;
        self.dirty_tenants(|_, _| true);
    }

    /// Marks dirty the namespace of every Tenant whose `deviceCA.issuerRef` matches.
    fn dirty_tenants(&mut self, names: impl Fn(&str, &IssuerRef) -> bool) {
        for t in self.tenants.values() {
            if let Some(r) = t.device_ca.as_ref().and_then(|d| d.issuer.as_ref())
                && names(&t.namespace, r)
            {
                self.dirty.insert(t.namespace.clone());
            }
        }
    }

    /// The most resources the kept deltas hold together.
    fn history_bound(&self) -> usize {
        HISTORY_RESOURCES.max(self.snapshot.resource_count() / 4)
    }

    /// Keeps a delta for dataplanes that resume, and lets the oldest go past the bounds.
    fn keep_delta(&mut self, delta: Arc<Delta>) {
        self.history_resources += delta.len();
        self.history.push_back(delta);
        let resources = self.history_bound();
        while self.history.len() > HISTORY || self.history_resources > resources {
            let Some(oldest) = self.history.pop_front() else {
                break;
            };
            self.history_resources -= oldest.len();
        }
    }

    /// Resolves every namespace that changed, and batches the policy changes into one new
    /// snapshot version. `None` when nothing changed.
    pub fn commit(&mut self) -> Option<Commit> {
        for ns in std::mem::take(&mut self.dirty) {
            self.pending.remove(&ns);
            self.resolve_namespace(&ns);
        }
        for ns in std::mem::take(&mut self.pending) {
            self.resolve_dirty(&ns);
        }
        if self.touched.is_empty()
            && self.changed_statuses.is_empty()
            && self.pending_included.is_empty()
        {
            return None;
        }
        let delta = if self.touched.is_empty() {
            None
        } else if self.touched.len() > self.history_bound() {
            // It would not be kept, so it is not built: at a cold start that is a copy of
            // every record of the world, made and dropped at the operator's peak. A dataplane
            // behind this version is sent the snapshot.
            self.skip_delta();
            None
        } else {
            let delta = Arc::new(self.take_delta());
            self.keep_delta(delta.clone());
            Some(delta)
        };
        let version = self.snapshot.version();
        let mut included = Vec::with_capacity(self.pending_included.len());
        for (key, generation) in std::mem::take(&mut self.pending_included) {
            included.push(key.clone());
            if let Some(old) = self.included.get(&key) {
                self.view.remove(&key, old.generation);
            }
            self.view.add(&key, generation);
            self.included.insert(
                key,
                Included {
                    generation,
                    version,
                },
            );
        }
        Some(Commit {
            version,
            delta,
            statuses: std::mem::take(&mut self.changed_statuses)
                .into_iter()
                .collect(),
            included,
        })
    }

    /// Whether the index holds any object of `kind`.
    pub(crate) fn has_any(&self, kind: Kind) -> bool {
        if kind == Kind::Tenant {
            return !self.tenants.is_empty();
        }
        self.namespaces.values().any(|ns| match kind {
            Kind::Tenant => unreachable!("handled above"),
            Kind::Thing => !ns.things.is_empty(),
            Kind::Channel => !ns.channels.is_empty(),
            Kind::Connection => !ns.connections.is_empty(),
            Kind::User => !ns.users.is_empty(),
            Kind::Group => !ns.groups.is_empty(),
            Kind::Policy => !ns.policies.is_empty(),
            Kind::Secret => !ns.secrets.is_empty(),
        })
    }

    /// The keys of every object of `kind` the index holds.
    pub(crate) fn keys_of(&self, kind: Kind) -> Vec<ObjectKey> {
        if kind == Kind::Tenant {
            return self.tenants.keys().map(ObjectKey::tenant).collect();
        }
        let mut keys = Vec::new();
        for (ns_name, ns) in &self.namespaces {
            let names: Vec<&String> = match kind {
                Kind::Tenant => unreachable!("handled above"),
                Kind::Thing => ns.things.keys().collect(),
                Kind::Channel => ns.channels.keys().collect(),
                Kind::Connection => ns.connections.keys().collect(),
                Kind::User => ns.users.keys().collect(),
                Kind::Group => ns.groups.keys().collect(),
                Kind::Policy => ns.policies.keys().collect(),
                Kind::Secret => ns.secrets.keys().collect(),
            };
            keys.extend(
                names
                    .into_iter()
                    .map(|n| ObjectKey::namespaced(kind, ns_name.clone(), n.clone())),
            );
        }
        keys
    }

    /// The input `key` was applied with, when the index holds it.
    pub(crate) fn object(&self, key: &ObjectKey) -> Option<Object> {
        if key.kind == Kind::Tenant {
            return self.tenants.get(&key.name).cloned().map(Object::Tenant);
        }
        let ns = self.namespaces.get(&key.namespace)?;
        let name = &key.name;
        Some(match key.kind {
            Kind::Tenant => unreachable!("handled above"),
            Kind::Thing => Object::Thing(ns.things.get(name)?.clone()),
            Kind::Channel => Object::Channel(ns.channels.get(name)?.clone()),
            Kind::Connection => Object::Connection(ns.connections.get(name)?.clone()),
            Kind::User => Object::User(ns.users.get(name)?.clone()),
            Kind::Group => Object::Group(ns.groups.get(name)?.clone()),
            Kind::Policy => Object::Policy(ns.policies.get(name)?.clone()),
            Kind::Secret => Object::Secret(ns.secrets.get(name)?.clone()),
        })
    }

    /// Takes an object that is no longer served out of the view digest.
    fn unview(&mut self, removed: Option<(ObjectKey, Included)>) {
        if let Some((key, old)) = removed {
            self.view.remove(&key, old.generation);
        }
    }

    fn forget(&mut self, key: &ObjectKey) {
        let old = self.included.remove_entry(key);
        self.unview(old);
        if self.statuses.remove(key).is_some() {
            self.changed_statuses.insert(key.clone());
        }
    }

    /// The Tenants claiming `namespace`, the owner (oldest, then by name) first.
    fn claimants(&self, namespace: &str) -> Vec<&input::Tenant> {
        let mut claimants: Vec<&input::Tenant> = self
            .tenants
            .values()
            .filter(|t| t.namespace == namespace)
            .collect();
        claimants.sort_by(|a, b| a.meta.age_order().cmp(&b.meta.age_order()));
        claimants
    }

    fn resolve_namespace(&mut self, namespace: &str) {
        let claimants = self.claimants(namespace);
        let owner = claimants.first().map(|t| (*t).clone());
        let empty = Namespace::default();
        let objects = self.namespaces.get(namespace).unwrap_or(&empty);
        let owner_claims = claimants.first().map_or_else(Vec::new, |t| {
            claims::resolve(t, objects, &|c| claims::count_provisioned(objects, c)).1
        });
        let mut tenant_statuses = tenant_statuses(namespace, &claimants, objects, owner_claims);
        let tenant_secrets = claimants
            .first()
            .map(|t| incremental::tenant_secrets(t, &self.issuers));
        let claimed = !claimants.is_empty();
        let mut resolution = resolve(
            namespace,
            owner.as_ref(),
            objects,
            &mut self.passwords,
            &mut self.enforced_policies,
            &self.issuers,
            !self.cert_manager_missing,
        );
        let state = State::resolved(
            resolution.context.take(),
            objects,
            tenant_secrets.unwrap_or_default(),
            resolution.device_ca.clone(),
        );
        // The owner comes first; only it has a device CA.
        if let Some((_, status)) = tenant_statuses.first_mut()
            && let Facts::Tenant { device_ca, .. } = &mut *status.facts
        {
            *device_ca = resolution.device_ca.take();
        }
        if !claimed && !self.namespaces.contains_key(namespace) {
            self.states.remove(namespace);
        } else {
            self.states.insert(namespace.to_owned(), state);
        }
        let changed = self.serve(namespace, resolution.take_records());
        for (key, status) in tenant_statuses.into_iter().chain(resolution.statuses) {
            let record_changed = changed.contains(&key);
            self.set_status(key, status, record_changed);
        }
    }

    /// Puts a namespace's records into the snapshot, removes what it no longer serves, and
    /// returns the objects whose records changed.
    fn serve(&mut self, namespace: &str, r: Records) -> BTreeSet<ObjectKey> {
        let mut changed = BTreeSet::new();
        let prev = self.served.remove(namespace).unwrap_or_default();
        let tenant = r.tenant.as_ref().map(|t| t.name.clone());
        self.drop_stale(namespace, &prev, &r, &mut changed);
        let mut now = Served {
            tenant,
            ..Served::default()
        };
        self.upsert_records(namespace, r, &mut now, &mut changed);
        if now.tenant.is_some() {
            self.served.insert(namespace.to_owned(), now);
        }
        changed
    }

    /// Removes what a namespace served before and serves no longer; everything, when its
    /// owning Tenant changed.
    fn drop_stale(
        &mut self,
        namespace: &str,
        prev: &Served,
        r: &Records,
        changed: &mut BTreeSet<ObjectKey>,
    ) {
        let tenant = r.tenant.as_ref().map(|t| t.name.clone());
        let key = |kind: Kind, name: &str| ObjectKey::namespaced(kind, namespace, name);

        // Everything the previous owner served goes when the owner changes.
        let same_owner = prev.tenant == tenant;
        if let Some(old) = prev.tenant.as_deref() {
            // A Tenant that moved to a namespace resolved before this one already serves its
            // records from there: they stay.
            let moved = (!same_owner)
                .then(|| {
                    let mut elsewhere = self.served.values();
                    elsewhere
                        .find(|s| s.tenant.as_deref() == Some(old))
                        .cloned()
                })
                .flatten();
            let keep = |set: &BTreeSet<String>, name: &String| same_owner && set.contains(name);
            macro_rules! drop_stale {
                ($field:ident, $remove:ident, $touched:ident, $kind:expr, $new:expr) => {
                    let new: BTreeSet<String> = $new;
                    for name in &prev.$field {
                        let served_elsewhere =
                            moved.as_ref().is_some_and(|m| m.$field.contains(name));
                        if !keep(&new, name) && !served_elsewhere {
                            self.snapshot.$remove(old, name);
                            self.touched
                                .$touched
                                .insert(ResourceName::new(old, name.clone()));
                            changed.insert(key($kind, name));
                        }
                    }
                };
            }
            drop_stale!(
                things,
                remove_thing,
                things,
                Kind::Thing,
                names(&r.things, |t| &t.name)
            );
            drop_stale!(
                channels,
                remove_channel,
                channels,
                Kind::Channel,
                names(&r.channels, |t| &t.name)
            );
            drop_stale!(
                users,
                remove_user,
                users,
                Kind::User,
                names(&r.users, |t| &t.name)
            );
            drop_stale!(
                groups,
                remove_group,
                groups,
                Kind::Group,
                names(&r.groups, |t| &t.name)
            );
            drop_stale!(
                grants,
                remove_grant,
                grants,
                Kind::Connection,
                names(&r.grants, |t| &t.name)
            );
            drop_stale!(
                policies,
                remove_policy,
                policies,
                Kind::Policy,
                names(&r.policies, |t| &t.name)
            );
            if !same_owner && moved.is_none() {
                self.snapshot.remove_tenant(old);
                self.touched.tenants.insert(old.to_owned());
                changed.insert(ObjectKey::tenant(old));
            }
        }
    }

    /// Puts a namespace's records into the snapshot where they differ, noting each in `now`.
    fn upsert_records(
        &mut self,
        namespace: &str,
        r: Records,
        now: &mut Served,
        changed: &mut BTreeSet<ObjectKey>,
    ) {
        let key = |kind: Kind, name: &str| ObjectKey::namespaced(kind, namespace, name);
        if let Some(t) = r.tenant
            && self.snapshot.tenant(&t.name) != Some(&t)
        {
            self.touched.tenants.insert(t.name.clone());
            changed.insert(ObjectKey::tenant(&t.name));
            self.snapshot.upsert_tenant(t);
        }
        macro_rules! upsert_all {
            ($records:expr, $get:ident, $upsert:ident, $touched:ident, $field:ident, $kind:expr) => {
                for rec in $records {
                    now.$field.insert(rec.name.clone());
                    if self.snapshot.$get(&rec.tenant, &rec.name) != Some(&rec) {
                        self.touched
                            .$touched
                            .insert(ResourceName::new(rec.tenant.clone(), rec.name.clone()));
                        changed.insert(key($kind, &rec.name));
                        self.snapshot.$upsert(rec);
                    }
                }
            };
        }
        upsert_all!(
            r.channels,
            channel,
            upsert_channel,
            channels,
            channels,
            Kind::Channel
        );
        upsert_all!(r.things, thing, upsert_thing, things, things, Kind::Thing);
        upsert_all!(r.users, user, upsert_user, users, users, Kind::User);
        upsert_all!(r.groups, group, upsert_group, groups, groups, Kind::Group);
        upsert_all!(
            r.grants,
            grant,
            upsert_grant,
            grants,
            grants,
            Kind::Connection
        );
        upsert_all!(
            r.policies,
            policy,
            upsert_policy,
            policies,
            policies,
            Kind::Policy
        );
    }

    /// Sets an object's desired status; `record_changed` says whether its policy record changed
    /// in this commit (then it is enforced from the new version on).
    fn set_status(&mut self, key: ObjectKey, status: DesiredStatus, record_changed: bool) {
        if status.served {
            let generation = status.generation;
            let moved = self
                .included
                .get(&key)
                .is_none_or(|i| i.generation != generation || record_changed);
            if moved {
                self.pending_included.push((key.clone(), generation));
            }
        } else {
            let old = self.included.remove_entry(&key);
            self.unview(old);
        }
        if self.statuses.get(&key) != Some(&status) {
            self.statuses.insert(key.clone(), status);
            self.changed_statuses.insert(key);
        }
    }

    /// Moves to the next version without a delta: the history before it is of no use any more.
    fn skip_delta(&mut self) {
        self.touched = Touched::default();
        self.snapshot.set_version(self.snapshot.version() + 1);
        self.history.clear();
        self.history_resources = 0;
    }

    /// Builds the delta of every touched record against the current snapshot, and moves the
    /// snapshot to the next version.
    fn take_delta(&mut self) -> Delta {
        let touched = std::mem::take(&mut self.touched);
        let from = self.snapshot.version();
        let to = from + 1;
        self.snapshot.set_version(to);
        let s = &self.snapshot;
        let mut delta = Delta {
            from_version: from,
            to_version: to,
            ..Delta::default()
        };
        for name in touched.tenants {
            match s.tenant(&name) {
                Some(t) => delta.tenants.upserts.push(t.clone()),
                None => delta.tenants.removals.push(name),
            }
        }
        macro_rules! collect {
            ($field:ident, $get:ident) => {
                for rn in touched.$field {
                    match s.$get(&rn.tenant, &rn.name) {
                        Some(r) => delta.$field.upserts.push(r.clone()),
                        None => delta.$field.removals.push(rn),
                    }
                }
            };
        }
        collect!(things, thing);
        collect!(channels, channel);
        collect!(users, user);
        collect!(groups, group);
        collect!(grants, grant);
        collect!(policies, policy);
        if touched.signing_keys {
            delta.signing_keys = Some(s.signing_keys().to_vec());
        }
        delta
    }
}

/// The policy records of a resolution, without its statuses.
struct Records {
    tenant: Option<policy::Tenant>,
    things: Vec<policy::Thing>,
    channels: Vec<policy::Channel>,
    users: Vec<policy::User>,
    groups: Vec<policy::Group>,
    grants: Vec<policy::Grant>,
    policies: Vec<policy::TenantPolicy>,
}

impl Resolution {
    fn take_records(&mut self) -> Records {
        Records {
            tenant: self.tenant.take(),
            things: std::mem::take(&mut self.things),
            channels: std::mem::take(&mut self.channels),
            users: std::mem::take(&mut self.users),
            groups: std::mem::take(&mut self.groups),
            grants: std::mem::take(&mut self.grants),
            policies: std::mem::take(&mut self.policies),
        }
    }
}

fn names<T>(records: &[T], name: impl Fn(&T) -> &String) -> BTreeSet<String> {
    records.iter().map(|r| name(r).clone()).collect()
}

/// Inserts an object: `None` when nothing the index resolves changed, else the object it
/// replaced, if any.
fn put<T: Resolves>(map: &mut BTreeMap<String, T>, name: &str, object: T) -> Option<Option<T>> {
    let changed = map.get(name).is_none_or(|old| !old.resolves_same(&object));
    let old = map.insert(name.to_owned(), object);
    changed.then_some(old)
}

/// Whether two versions of an input resolve the same.
trait Resolves {
    fn resolves_same(&self, other: &Self) -> bool;
}

macro_rules! resolves_by_eq {
    ($($t:ty),*) => {$(
        impl Resolves for $t {
            fn resolves_same(&self, other: &Self) -> bool {
                self == other
            }
        }
    )*};
}
resolves_by_eq!(
    input::Thing,
    input::Channel,
    input::Connection,
    input::User,
    input::Group
);

/// The text a Policy's status shows is read only when the Policy's current text is invalid
/// and nothing is remembered for it: a status write alone resolves nothing again.
impl Resolves for input::Policy {
    fn resolves_same(&self, other: &Self) -> bool {
        self.meta == other.meta && self.cedar == other.cedar
    }
}

/// The statuses of every Tenant claiming `namespace`: the owner is Ready, the others are
/// refused with `NamespaceClaimed`.
fn tenant_statuses(
    namespace: &str,
    claimants: &[&input::Tenant],
    objects: &Namespace,
    owner_claims: Vec<ClaimFacts>,
) -> Vec<(ObjectKey, DesiredStatus)> {
    let mut owner_claims = Some(owner_claims);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let things = count(objects.things.len());
    let channels = count(objects.channels.len());
    let owner = claimants
        .first()
        .map(|t| t.meta.name.as_str())
        .unwrap_or_default();
    claimants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let status = if i == 0 {
                let readiness = if t.suspended {
                    Readiness::ready(
                        Reason::Suspended,
                        "the tenant is suspended: every connection and message is refused; set \
                         spec.suspended to false to resume",
                    )
                } else {
                    Readiness::ready(
                        Reason::Accepted,
                        format!("the tenant owns namespace {namespace}"),
                    )
                };
                DesiredStatus {
                    generation: t.meta.generation,
                    readiness,
                    served: true,
                    facts: Facts::Tenant {
                        namespace: Some(namespace.to_owned()),
                        things,
                        channels,
                        claims: owner_claims.take().unwrap_or_default(),
                        device_ca: None,
                    }
                    .into(),
                }
            } else {
                DesiredStatus {
                    generation: t.meta.generation,
                    readiness: Readiness::not_ready(
                        Reason::NamespaceClaimed,
                        format!(
                            "namespace {namespace} is already owned by Tenant {owner}; set \
                             spec.namespace to a namespace no other Tenant claims"
                        ),
                    ),
                    served: false,
                    facts: Facts::Tenant {
                        namespace: None,
                        things: 0,
                        channels: 0,
                        claims: Vec::new(),
                        device_ca: None,
                    }
                    .into(),
                }
            };
            (ObjectKey::tenant(&t.meta.name), status)
        })
        .collect()
}
