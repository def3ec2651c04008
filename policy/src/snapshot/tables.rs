//! The snapshot's record-by-record changes and the upkeep of its derived indexes. These do not
//! stamp: [`Snapshot`]'s public `upsert_*` / `remove_*` and [`Snapshot::apply`] do.

use std::sync::Arc;

use super::{GrantTarget, GrantTargetRef, MemberKey, MemberKeyRef, NameRef, Snapshot};
use crate::model::{Channel, Grant, Group, ResourceName, Tenant, TenantPolicy, Thing, User};

fn sorted_insert<T: Ord>(list: &mut Vec<T>, item: T) {
    if let Err(at) = list.binary_search(&item) {
        list.insert(at, item);
    }
}

fn external(tenant: &Tenant) -> bool {
    !tenant.engine.is_builtin()
}

impl Snapshot {
    pub(crate) fn put_tenant(&mut self, tenant: Tenant) -> Option<Arc<Tenant>> {
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
                let list = self
                    .tenants_by_ca_subject
                    .entry_or_default(subject.to_vec());
                sorted_insert(list, tenant.name.clone());
            }
        }
        self.external_tenants += usize::from(external(&tenant));
        let old = self.tenants.insert(tenant.name.clone(), Arc::new(tenant));
        if let Some(old) = &old {
            self.external_tenants -= usize::from(external(old));
            self.unindex_ca(old, self.tenants.get(&old.name).cloned().as_deref());
        }
        old
    }

    pub(crate) fn take_tenant(&mut self, name: &str) -> Option<Arc<Tenant>> {
        self.audit_channels.remove(name);
        let old = self.tenants.remove(name)?;
        self.external_tenants -= usize::from(external(&old));
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

    pub(crate) fn put_thing(&mut self, thing: Thing) -> Option<Arc<Thing>> {
        let key = ResourceName::new(&*thing.tenant, &*thing.name);
        let thing = Arc::new(thing);
        let old = self.things.insert(key.clone(), thing.clone());
        if let Some(old) = &old {
            self.unindex_keys(&key, old);
        }
        for d in &thing.key_digests {
            sorted_insert(self.things_by_key.entry_or_default(*d), key.clone());
        }
        if let Some(cn) = thing.x509.as_ref().and_then(|x| x.common_name.as_deref()) {
            let by = self
                .things_by_common_name
                .entry_or_default(ResourceName::new(&*thing.tenant, cn));
            sorted_insert(by, thing.name.clone());
        }
        old
    }

    pub(crate) fn take_thing(&mut self, tenant: &str, name: &str) -> Option<Arc<Thing>> {
        let (key, old) = self.things.remove_with_key(&NameRef { tenant, name })?;
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

    pub(crate) fn put_user(&mut self, user: User) -> Option<Arc<User>> {
        let key = ResourceName::new(&*user.tenant, &*user.name);
        self.users.insert(key, Arc::new(user))
    }

    pub(crate) fn take_user(&mut self, tenant: &str, name: &str) -> Option<Arc<User>> {
        self.users.remove(&NameRef { tenant, name })
    }

    pub(crate) fn put_group(&mut self, group: Group) -> Option<Arc<Group>> {
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
                self.groups_by_member.entry_or_default(member),
                group.name.clone(),
            );
        }
        old
    }

    pub(crate) fn take_group(&mut self, tenant: &str, name: &str) -> Option<Arc<Group>> {
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

    pub(crate) fn put_channel(&mut self, channel: Channel) -> Option<Arc<Channel>> {
        let key = ResourceName::new(&*channel.tenant, &*channel.name);
        self.channels.insert(key, Arc::new(channel))
    }

    pub(crate) fn take_channel(&mut self, tenant: &str, name: &str) -> Option<Arc<Channel>> {
        self.channels.remove(&NameRef { tenant, name })
    }

    pub(crate) fn put_grant(&mut self, grant: Grant) -> Option<Arc<Grant>> {
        let key = ResourceName::new(&*grant.tenant, &*grant.name);
        let grant = Arc::new(grant);
        let old = self.grants.insert(key, grant.clone());
        if let Some(old) = &old {
            self.unindex_grant(old);
        }
        self.index_grant(grant);
        old
    }

    fn index_grant(&mut self, grant: Arc<Grant>) {
        // Most targets hold one grant: one descent for those, and a second to put back the
        // merged list for the rest (an entry would take a lookup and an insert for each).
        let first = vec![grant.clone()];
        let Some(mut list) = self.grants_by_target.insert(GrantTarget::of(&grant), first) else {
            return;
        };
        let target = GrantTarget::of(&grant);
        match list.binary_search_by(|g| g.name.cmp(&grant.name)) {
            Ok(at) => list[at] = grant,
            Err(at) => list.insert(at, grant),
        }
        self.grants_by_target.insert(target, list);
    }

    pub(crate) fn take_grant(&mut self, tenant: &str, name: &str) -> Option<Arc<Grant>> {
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

    pub(crate) fn put_policy(&mut self, policy: TenantPolicy) -> Option<Arc<TenantPolicy>> {
        let key = ResourceName::new(&*policy.tenant, &*policy.name);
        self.policies.insert(key, Arc::new(policy))
    }

    pub(crate) fn take_policy(&mut self, tenant: &str, name: &str) -> Option<Arc<TenantPolicy>> {
        self.policies.remove(&NameRef { tenant, name })
    }

    /// Replaces the signing keys, sorted by `kid`; whether they changed.
    pub(crate) fn put_signing_keys(&mut self, mut keys: Vec<crate::SigningKey>) -> bool {
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        let changed = *self.signing_keys != keys;
        if changed {
            self.signing_keys = Arc::new(keys);
        }
        changed
    }
}
