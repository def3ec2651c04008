//! The bookkeeping that lets the index resolve one object at a time: references between a
//! namespace's objects (kept as objects come and go), the age-ordered limits, and what is
//! dirty.
//!
//! A change marks the changed object dirty, and the objects whose resolution reads whether it
//! exists. Resolving a dirty object marks the objects that read whether it is served when that
//! changed. Kinds resolve in dependency order (channels → things → users → groups →
//! connections), so one pass settles a commit. Only a Tenant's own change (its spec, its
//! claims on the namespace, the Secrets and issuers it names) resolves a namespace whole.

use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;

use super::device_ca::{IssuerCa, IssuerKey, Issuers};
use super::input::{self, Meta};
use super::object::Kind;
use super::readiness::Readiness;
use super::resolve::{Context, Namespace, member_kind, subject_of};

/// Where an object stands in its kind's limit order: oldest first, then by name.
pub(crate) type AgeKey = (bool, Option<Timestamp>, String);

pub(crate) fn age_key(meta: &Meta) -> AgeKey {
    let (none, created, name) = meta.age_order();
    (none, created, name.to_owned())
}

/// The objects of one kind split at a limit: the oldest `limit` are within it. Gaining or
/// losing an object moves at most one other across the boundary, found in O(log n).
#[derive(Debug)]
pub(crate) struct Limited {
    limit: usize,
    within: BTreeSet<AgeKey>,
    beyond: BTreeSet<AgeKey>,
}

impl Default for Limited {
    fn default() -> Self {
        Self::new(None, std::iter::empty())
    }
}

impl Limited {
    pub fn new(limit: Option<u32>, keys: impl Iterator<Item = AgeKey>) -> Self {
        let limit = limit.map_or(usize::MAX, |l| l as usize);
        let mut within: BTreeSet<AgeKey> = keys.collect();
        let beyond = match within.iter().nth(limit).cloned() {
            Some(first_beyond) => within.split_off(&first_beyond),
            None => BTreeSet::new(),
        };
        Self {
            limit,
            within,
            beyond,
        }
    }

    pub fn is_within(&self, key: &AgeKey) -> bool {
        self.within.contains(key)
    }

    /// Adds an object; names the one pushed beyond the limit, if any.
    pub fn insert(&mut self, key: AgeKey, moved: &mut Vec<String>) {
        if self.within.len() < self.limit {
            self.within.insert(key);
        } else if self.within.last().is_some_and(|last| key < *last) {
            if let Some(last) = self.within.pop_last() {
                moved.push(last.2.clone());
                self.beyond.insert(last);
            }
            self.within.insert(key);
        } else {
            self.beyond.insert(key);
        }
    }

    /// Removes an object; names the one brought within the limit, if any.
    pub fn remove(&mut self, key: &AgeKey, moved: &mut Vec<String>) {
        if self.within.remove(key) {
            if let Some(first) = self.beyond.pop_first() {
                moved.push(first.2.clone());
                self.within.insert(first);
            }
        } else {
            self.beyond.remove(key);
        }
    }
}

/// Names by a referenced name.
type Referrers<K> = HashMap<K, BTreeSet<String>>;

fn link<K: std::hash::Hash + Eq>(map: &mut Referrers<K>, to: Option<K>, from: &str, add: bool) {
    let Some(to) = to else { return };
    if add {
        map.entry(to).or_default().insert(from.to_owned());
    } else if let Some(set) = map.get_mut(&to) {
        set.remove(from);
        if set.is_empty() {
            map.remove(&to);
        }
    }
}

/// References between one namespace's objects, by name (whether or not the named object
/// exists), kept up to date by diffing each object's old and new spec.
#[derive(Debug, Default)]
pub(crate) struct Refs {
    things_by_mountpoint: Referrers<String>,
    connections_by_channel: Referrers<String>,
    connections_by_subject: Referrers<(Kind, String)>,
    groups_by_member: Referrers<(Kind, String)>,
    things_by_secret: Referrers<String>,
    users_by_secret: Referrers<String>,
    /// Things per provisioning claim (their claim label).
    provisioned: HashMap<String, u32>,
}

impl Refs {
    /// How many Things `claim` provisioned.
    pub fn provisioned(&self, claim: &str) -> u32 {
        self.provisioned.get(claim).copied().unwrap_or(0)
    }

    pub fn thing(&mut self, name: &str, old: Option<&input::Thing>, new: Option<&input::Thing>) {
        for (t, add) in [(old, false), (new, true)] {
            let Some(t) = t else { continue };
            link(
                &mut self.things_by_mountpoint,
                t.mountpoint.clone(),
                name,
                add,
            );
            let secret = Some(t.secret_name.clone());
            link(&mut self.things_by_secret, secret, name, add);
            let tls = Some(t.tls_secret_name.clone());
            link(&mut self.things_by_secret, tls, name, add);
            if let Some(claim) = t.claim.as_deref() {
                let count = self.provisioned.entry(claim.to_owned()).or_default();
                *count = if add {
                    *count + 1
                } else {
                    count.saturating_sub(1)
                };
                if *count == 0 {
                    self.provisioned.remove(claim);
                }
            }
        }
    }

    pub fn connection(
        &mut self,
        name: &str,
        old: Option<&input::Connection>,
        new: Option<&input::Connection>,
    ) {
        for (c, add) in [(old, false), (new, true)] {
            let Some(c) = c else { continue };
            let channel = Some(c.channel.clone());
            link(&mut self.connections_by_channel, channel, name, add);
            let (kind, subject) = subject_of(&c.subject);
            let subject = (kind, subject.to_owned());
            link(&mut self.connections_by_subject, Some(subject), name, add);
        }
    }

    pub fn user(&mut self, name: &str, old: Option<&input::User>, new: Option<&input::User>) {
        for (u, add) in [(old, false), (new, true)] {
            let secret = u.and_then(|u| u.password.as_ref());
            link(
                &mut self.users_by_secret,
                secret.map(|r| r.name.clone()),
                name,
                add,
            );
        }
    }

    pub fn group(&mut self, name: &str, old: Option<&input::Group>, new: Option<&input::Group>) {
        for (g, add) in [(old, false), (new, true)] {
            for m in g.map(|g| g.members.as_slice()).unwrap_or_default() {
                let member = (member_kind(m.kind), m.name.clone());
                link(&mut self.groups_by_member, Some(member), name, add);
            }
        }
    }
}

/// What a namespace must resolve again at the next commit, by kind.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub channels: BTreeSet<String>,
    pub things: BTreeSet<String>,
    pub users: BTreeSet<String>,
    pub groups: BTreeSet<String>,
    pub connections: BTreeSet<String>,
    pub policies: bool,
    /// The owning Tenant's record and the claimants' statuses (counts, claims).
    pub tenant: bool,
}

impl Dirty {
    fn extend(set: &mut BTreeSet<String>, names: Option<&BTreeSet<String>>) {
        set.extend(names.into_iter().flatten().cloned());
    }

    /// Marks dirty what reads whether the named object exists or is served.
    pub fn dependents(&mut self, refs: &Refs, kind: Kind, name: &str) {
        let named = (kind, name.to_owned());
        match kind {
            Kind::Channel => {
                Self::extend(&mut self.things, refs.things_by_mountpoint.get(name));
                Self::extend(&mut self.connections, refs.connections_by_channel.get(name));
            }
            Kind::Thing | Kind::User => {
                Self::extend(&mut self.groups, refs.groups_by_member.get(&named));
                Self::extend(
                    &mut self.connections,
                    refs.connections_by_subject.get(&named),
                );
            }
            Kind::Group => Self::extend(
                &mut self.connections,
                refs.connections_by_subject.get(&named),
            ),
            _ => {}
        }
    }
}

/// One namespace's incremental state, rebuilt whenever the namespace resolves whole.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The owning Tenant's settings; `None` when no Tenant owns the namespace.
    pub cx: Option<Context>,
    pub channels: Limited,
    pub things: Limited,
    pub dirty: Dirty,
    /// The Secrets the owning Tenant reads (device CA, CRL, claims): a change to one resolves
    /// the namespace whole.
    pub tenant_secrets: BTreeSet<String>,
    /// The owning Tenant's `DeviceCA` condition, from the last whole resolution.
    pub device_ca: Option<Readiness>,
}

impl State {
    /// The state of a namespace just resolved whole.
    pub fn resolved(
        cx: Option<Context>,
        objects: &Namespace,
        tenant_secrets: BTreeSet<String>,
        device_ca: Option<Readiness>,
    ) -> Self {
        let channels = objects.channels.values().map(|c| age_key(&c.meta));
        let things = objects.things.values().map(|t| age_key(&t.meta));
        Self {
            channels: Limited::new(cx.as_ref().and_then(|c| c.max_channels), channels),
            things: Limited::new(cx.as_ref().and_then(|c| c.max_things), things),
            cx,
            dirty: Dirty::default(),
            tenant_secrets,
            device_ca,
        }
    }

    /// Notes a Thing's change (`None`: absent before, or deleted).
    pub fn thing(
        &mut self,
        refs: &Refs,
        name: &str,
        old: Option<&input::Thing>,
        new: Option<&input::Thing>,
    ) {
        self.dirty.things.insert(name.to_owned());
        let mut moved = Vec::new();
        let (was, is) = (old.map(|t| age_key(&t.meta)), new.map(|t| age_key(&t.meta)));
        if was != is {
            if let Some(k) = &was {
                self.things.remove(k, &mut moved);
            }
            if let Some(k) = is {
                self.things.insert(k, &mut moved);
            }
        }
        self.dirty.things.extend(moved);
        if old.is_some() != new.is_some() {
            self.dirty.tenant = true;
            self.dirty.dependents(refs, Kind::Thing, name);
        }
        if old.and_then(|t| t.claim.as_ref()) != new.and_then(|t| t.claim.as_ref()) {
            self.dirty.tenant = true;
        }
    }

    /// Notes a Channel's change.
    pub fn channel(&mut self, refs: &Refs, name: &str, old: Option<&Meta>, new: Option<&Meta>) {
        self.dirty.channels.insert(name.to_owned());
        let mut moved = Vec::new();
        let (was, is) = (old.map(age_key), new.map(age_key));
        if was != is {
            if let Some(k) = &was {
                self.channels.remove(k, &mut moved);
            }
            if let Some(k) = is {
                self.channels.insert(k, &mut moved);
            }
        }
        self.dirty.channels.extend(moved);
        if old.is_some() != new.is_some() {
            self.dirty.tenant = true;
            self.dirty.dependents(refs, Kind::Channel, name);
        }
    }

    /// Notes a User's or Group's change (`existed`/`exists`: before and after).
    pub fn subject(&mut self, refs: &Refs, kind: Kind, name: &str, existed: bool, exists: bool) {
        let set = match kind {
            Kind::User => &mut self.dirty.users,
            _ => &mut self.dirty.groups,
        };
        set.insert(name.to_owned());
        if existed != exists {
            self.dirty.dependents(refs, kind, name);
        }
    }

    /// Notes a Secret's change; `false` when the namespace must resolve whole.
    pub fn secret(&mut self, refs: &Refs, name: &str) -> bool {
        if self.tenant_secrets.contains(name) {
            return false;
        }
        Dirty::extend(&mut self.dirty.things, refs.things_by_secret.get(name));
        Dirty::extend(&mut self.dirty.users, refs.users_by_secret.get(name));
        true
    }
}

/// The Secrets of its namespace a Tenant's own resolution reads.
pub(crate) fn tenant_secrets(tenant: &input::Tenant, issuers: &Issuers) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Some(ca) = &tenant.device_ca {
        names.extend(ca.secret_name.clone());
        names.extend(ca.crl_secret_name.clone());
        let issuer = (ca.issuer.as_ref()).map(|r| IssuerKey::of(&tenant.namespace, r));
        // A ClusterIssuer's Secret is in cert-manager's namespace: set_issuer_secret's part.
        if let Some(key @ IssuerKey::Issuer { .. }) = &issuer
            && let Some(IssuerCa::Ca { secret_name }) = issuers.issuers.get(key)
        {
            names.insert(secret_name.clone());
        }
    }
    for claim in &tenant.claims {
        names.insert(claim.certificate_secret_name.clone());
        names.insert(claim.signing_secret_name.clone());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> AgeKey {
        (true, None, name.to_owned())
    }

    #[test]
    fn a_limit_moves_one_object_across_its_boundary() {
        let mut l = Limited::new(Some(2), ["b", "c", "d"].into_iter().map(key));
        assert!(l.is_within(&key("b")) && l.is_within(&key("c")) && !l.is_within(&key("d")));
        let mut moved = Vec::new();
        l.insert(key("a"), &mut moved);
        assert_eq!(moved, ["c"]);
        assert!(l.is_within(&key("a")) && !l.is_within(&key("c")));
        moved.clear();
        l.insert(key("e"), &mut moved);
        assert!(moved.is_empty() && !l.is_within(&key("e")));
        l.remove(&key("b"), &mut moved);
        assert_eq!(moved, ["c"]);
        moved.clear();
        l.remove(&key("e"), &mut moved);
        assert!(moved.is_empty());
        assert!(l.is_within(&key("a")) && l.is_within(&key("c")) && !l.is_within(&key("d")));
    }

    #[test]
    fn a_limit_of_zero_holds_nothing() {
        let mut l = Limited::new(Some(0), ["a"].into_iter().map(key));
        let mut moved = Vec::new();
        l.insert(key("b"), &mut moved);
        l.remove(&key("a"), &mut moved);
        assert!(moved.is_empty() && !l.is_within(&key("a")) && !l.is_within(&key("b")));
    }
}
