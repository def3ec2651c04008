//! The incremental pass: what one changed object marks dirty, and resolving the dirty objects
//! of a namespace one at a time, in dependency order, with an early exit for records that did
//! not change. `incremental.rs` holds the bookkeeping; `resolve.rs` resolves one object.

use std::collections::{BTreeSet, HashMap};

use fleetward_policy::{self as policy, ResourceName, Snapshot};

use super::incremental::{Dirty, State, age_key};
use super::resolve::{self, Context, Namespace, Resolution, Resolved, ServedNames};
use super::{Facts, Index, Kind, Object, ObjectKey, Served, Touched, claims};

impl ServedNames for Served {
    fn serves(&self, kind: Kind, name: &str) -> bool {
        match kind {
            Kind::Channel => self.channels.contains(name),
            Kind::Thing => self.things.contains(name),
            Kind::User => self.users.contains(name),
            Kind::Group => self.groups.contains(name),
            _ => false,
        }
    }
}

/// A policy record the incremental pass serves, with where it lives in the snapshot.
trait Record: PartialEq + Sized {
    const KIND: Kind;
    fn get<'s>(s: &'s Snapshot, tenant: &str, name: &str) -> Option<&'s Self>;
    fn upsert(s: &mut Snapshot, record: Self);
    fn remove(s: &mut Snapshot, tenant: &str, name: &str);
    fn touched(t: &mut Touched) -> &mut BTreeSet<ResourceName>;
    fn served(s: &mut Served) -> &mut BTreeSet<String>;
}

macro_rules! record {
    ($t:ty, $kind:expr, $get:ident, $upsert:ident, $remove:ident, $field:ident) => {
        impl Record for $t {
            const KIND: Kind = $kind;
            fn get<'s>(s: &'s Snapshot, tenant: &str, name: &str) -> Option<&'s Self> {
                s.$get(tenant, name)
            }
            fn upsert(s: &mut Snapshot, record: Self) {
                s.$upsert(record);
            }
            fn remove(s: &mut Snapshot, tenant: &str, name: &str) {
                s.$remove(tenant, name);
            }
            fn touched(t: &mut Touched) -> &mut BTreeSet<ResourceName> {
                &mut t.$field
            }
            fn served(s: &mut Served) -> &mut BTreeSet<String> {
                &mut s.$field
            }
        }
    };
}

record!(
    policy::Channel,
    Kind::Channel,
    channel,
    upsert_channel,
    remove_channel,
    channels
);
record!(
    policy::Thing,
    Kind::Thing,
    thing,
    upsert_thing,
    remove_thing,
    things
);
record!(
    policy::User,
    Kind::User,
    user,
    upsert_user,
    remove_user,
    users
);
record!(
    policy::Group,
    Kind::Group,
    group,
    upsert_group,
    remove_group,
    groups
);
record!(
    policy::Grant,
    Kind::Connection,
    grant,
    upsert_grant,
    remove_grant,
    grants
);
record!(
    policy::TenantPolicy,
    Kind::Policy,
    policy,
    upsert_policy,
    remove_policy,
    policies
);

impl Index {
    /// Notes that an object of a namespace changed from `old` (`None`: it is new) to what the
    /// namespace holds now (nothing, when it was deleted): updates the references and marks
    /// dirty what must resolve again.
    pub(super) fn changed(&mut self, key: &ObjectKey, old: Option<Object>) {
        let Some(ns) = self.namespaces.get_mut(&key.namespace) else {
            return;
        };
        let name = key.name.as_str();
        let refs = &mut ns.refs;
        #[cfg(test)]
        let whole = self.whole;
        #[cfg(not(test))]
        let whole = false;
        let mut state = self.states.get_mut(&key.namespace).filter(|_| !whole);
        let incremental = match key.kind {
            Kind::Thing => {
                let old = match old {
                    Some(Object::Thing(t)) => Some(t),
                    _ => None,
                };
                let new = ns.things.get(name);
                refs.thing(name, old.as_ref(), new);
                state
                    .map(|s| s.thing(refs, name, old.as_ref(), new))
                    .is_some()
            }
            Kind::Channel => {
                let old = match &old {
                    Some(Object::Channel(c)) => Some(&c.meta),
                    _ => None,
                };
                let new = ns.channels.get(name).map(|c| &c.meta);
                state.map(|s| s.channel(refs, name, old, new)).is_some()
            }
            Kind::Connection => {
                let old = match &old {
                    Some(Object::Connection(c)) => Some(c),
                    _ => None,
                };
                refs.connection(name, old, ns.connections.get(name));
                let mark = |s: &mut State| s.dirty.connections.insert(name.to_owned());
                state.map(mark).is_some()
            }
            Kind::User => {
                let old = match &old {
                    Some(Object::User(u)) => Some(u),
                    _ => None,
                };
                let new = ns.users.get(name);
                refs.user(name, old, new);
                let (existed, exists) = (old.is_some(), new.is_some());
                let mark = |s: &mut State| s.subject(refs, Kind::User, name, existed, exists);
                state.map(mark).is_some()
            }
            Kind::Group => {
                let old = match &old {
                    Some(Object::Group(g)) => Some(g),
                    _ => None,
                };
                let new = ns.groups.get(name);
                refs.group(name, old, new);
                let (existed, exists) = (old.is_some(), new.is_some());
                let mark = |s: &mut State| s.subject(refs, Kind::Group, name, existed, exists);
                state.map(mark).is_some()
            }
            Kind::Policy => state.as_mut().map(|s| s.dirty.policies = true).is_some(),
            Kind::Secret => state.as_mut().is_some_and(|s| s.secret(refs, name)),
            Kind::Tenant => unreachable!("a Tenant is not in a namespace"),
        };
        if incremental {
            self.pending.insert(key.namespace.clone());
        } else {
            self.dirty.insert(key.namespace.clone());
        }
    }

    /// Resolves a namespace's dirty objects one at a time.
    pub(super) fn resolve_dirty(&mut self, namespace: &str) {
        let Some(mut state) = self.states.remove(namespace) else {
            return;
        };
        let objects = self.namespaces.remove(namespace).unwrap_or_default();
        let mut served = self.served.remove(namespace).unwrap_or_default();
        let dirty = std::mem::take(&mut state.dirty);
        match state.cx.clone() {
            None => self.refuse_dirty(namespace, &objects, &dirty),
            Some(cx) => {
                let mut pass = Pass {
                    index: self,
                    cx: &cx,
                    state: &state,
                    objects: &objects,
                    served: &mut served,
                };
                pass.run(dirty);
            }
        }
        if served.tenant.is_some() {
            self.served.insert(namespace.to_owned(), served);
        }
        if !objects.is_empty() {
            self.namespaces.insert(namespace.to_owned(), objects);
        }
        self.states.insert(namespace.to_owned(), state);
    }

    /// In a namespace no Tenant owns, every dirty object that exists is refused.
    fn refuse_dirty(&mut self, namespace: &str, objects: &Namespace, dirty: &Dirty) {
        let key = |kind: Kind, name: &str| ObjectKey::namespaced(kind, namespace, name);
        let mut refuse = |key: ObjectKey, generation: Option<i64>| {
            self.set_status(key, resolve::no_tenant(namespace, generation), false);
        };
        for name in &dirty.channels {
            if let Some(o) = objects.channels.get(name) {
                refuse(key(Kind::Channel, name), o.meta.generation);
            }
        }
        for name in &dirty.things {
            if let Some(o) = objects.things.get(name) {
                refuse(key(Kind::Thing, name), o.meta.generation);
            }
        }
        for name in &dirty.users {
            if let Some(o) = objects.users.get(name) {
                refuse(key(Kind::User, name), o.meta.generation);
            }
        }
        for name in &dirty.groups {
            if let Some(o) = objects.groups.get(name) {
                refuse(key(Kind::Group, name), o.meta.generation);
            }
        }
        for name in &dirty.connections {
            if let Some(o) = objects.connections.get(name) {
                refuse(key(Kind::Connection, name), o.meta.generation);
            }
        }
        if dirty.policies {
            for (name, o) in &objects.policies {
                refuse(key(Kind::Policy, name), o.meta.generation);
            }
        }
    }

    /// Serves one object's resolution (`None`: the object is gone) and sets its status;
    /// returns whether it went from served to not, or back.
    fn serve_one<R: Record>(
        &mut self,
        namespace: &str,
        tenant: &str,
        name: &str,
        resolved: Option<Resolved<R>>,
        served: &mut Served,
    ) -> bool {
        let (record, status) = resolved.map_or((None, None), |(r, s)| (r, Some(s)));
        let changed = R::get(&self.snapshot, tenant, name) != record.as_ref();
        let is = record.is_some();
        if changed {
            match record {
                Some(r) => R::upsert(&mut self.snapshot, r),
                None => R::remove(&mut self.snapshot, tenant, name),
            }
            R::touched(&mut self.touched).insert(ResourceName::new(tenant, name));
        }
        let names = R::served(served);
        let was = if is {
            !names.insert(name.to_owned())
        } else {
            names.remove(name)
        };
        if let Some(status) = status {
            let key = ObjectKey::namespaced(R::KIND, namespace, name);
            self.set_status(key, status, changed);
        }
        was != is
    }

    /// The claimants' statuses and the owning Tenant's provisioning counts, again.
    fn refresh_tenant(&mut self, namespace: &str, objects: &Namespace, device_ca: &State) {
        let provisioned = |claim: &str| objects.refs.provisioned(claim);
        let claimants = self.claimants(namespace);
        // The owner's claims once: their certificates are parsed for the record and the status.
        let (provisioning, owner_claims) = match claimants.first() {
            Some(t) => {
                let (served, facts) = claims::resolve(t, objects, &provisioned);
                (Some(served), facts)
            }
            None => (None, Vec::new()),
        };
        let mut statuses = super::tenant_statuses(namespace, &claimants, objects, owner_claims);
        if let Some((_, status)) = statuses.first_mut()
            && let Facts::Tenant { device_ca: d, .. } = &mut *status.facts
        {
            d.clone_from(&device_ca.device_ca);
        }
        let mut record_changed = false;
        if let (Some(provisioning), Some(cx)) = (provisioning, device_ca.cx.as_ref())
            && let Some(t) = self.snapshot.tenant(&cx.tenant)
            && t.provisioning != provisioning
        {
            let mut t = t.clone();
            t.provisioning = provisioning;
            self.touched.tenants.insert(t.name.clone());
            self.snapshot.upsert_tenant(t);
            record_changed = true;
        }
        for (key, status) in statuses {
            let owner = device_ca.cx.as_ref().is_some_and(|c| c.tenant == key.name);
            self.set_status(key, status, owner && record_changed);
        }
    }
}

/// One namespace's incremental pass.
struct Pass<'a> {
    index: &'a mut Index,
    cx: &'a Context,
    state: &'a State,
    objects: &'a Namespace,
    served: &'a mut Served,
}

impl Pass<'_> {
    /// Resolves the dirty objects kind by kind, in dependency order: a kind marks dirty only
    /// kinds after it.
    fn run(&mut self, mut d: Dirty) {
        let (cx, objects, state) = (self.cx, self.objects, self.state);
        for name in std::mem::take(&mut d.channels) {
            let resolved = objects.channels.get(&name).map(|ch| {
                let within = state.channels.is_within(&age_key(&ch.meta));
                resolve::channel(cx, &name, ch, within)
            });
            if self.serve(&name, resolved) {
                d.dependents(&objects.refs, Kind::Channel, &name);
            }
        }
        for name in std::mem::take(&mut d.things) {
            let resolved = objects.things.get(&name).map(|t| {
                let within = state.things.is_within(&age_key(&t.meta));
                resolve::thing(cx, objects, &name, t, within, self.served)
            });
            if self.serve(&name, resolved) {
                d.dependents(&objects.refs, Kind::Thing, &name);
            }
        }
        for name in std::mem::take(&mut d.users) {
            let passwords = &mut self.index.passwords;
            let resolved =
                (objects.users.get(&name)).map(|u| resolve::user(cx, objects, passwords, &name, u));
            if self.serve(&name, resolved) {
                d.dependents(&objects.refs, Kind::User, &name);
            }
        }
        for name in std::mem::take(&mut d.groups) {
            let resolved =
                (objects.groups.get(&name)).map(|g| resolve::group(cx, &name, g, self.served));
            if self.serve(&name, resolved) {
                d.dependents(&objects.refs, Kind::Group, &name);
            }
        }
        for name in std::mem::take(&mut d.connections) {
            let resolved = (objects.connections.get(&name))
                .map(|c| resolve::connection(cx, objects, &name, c, self.served));
            self.serve(&name, resolved);
        }
        if d.policies {
            self.policies();
        }
        if d.tenant {
            self.index.refresh_tenant(&cx.namespace, objects, state);
        }
    }

    fn serve<R: Record>(&mut self, name: &str, resolved: Option<Resolved<R>>) -> bool {
        let cx = self.cx;
        (self.index).serve_one(&cx.namespace, &cx.tenant, name, resolved, self.served)
    }

    /// Every Policy of the namespace (they are few, and validated once per change).
    fn policies(&mut self) {
        let cx = self.cx;
        let mut out = Resolution::default();
        let enforced = &mut self.index.enforced_policies;
        let ns = &cx.namespace;
        super::policies::resolve(ns, &cx.tenant, self.objects, cx.engine, enforced, &mut out);
        let mut records: HashMap<String, policy::TenantPolicy> = (out.policies.into_iter())
            .map(|p| (p.name.clone(), p))
            .collect();
        for (key, status) in out.statuses {
            let record = records.remove(&key.name);
            self.serve(&key.name, Some((record, status)));
        }
        let gone: Vec<String> = (self.served.policies.iter())
            .filter(|name| !self.objects.policies.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.serve::<policy::TenantPolicy>(&name, None);
        }
    }
}
