//! What the API server shows: each object's uid, generation and status, the Secrets in tenant namespaces, and which watches have synced.
//!
//! The index keeps what objects declare; this keeps what the status writer compares against
//! and what the Secret reconciler needs (uids for owner references, which Secrets exist).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use fleetward_crds::{PolicyStatus, ResourceStatus, TenantStatus, ThingStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use tokio::sync::watch;

use crate::changes::{ChangeFeed, ChangedKeys};
use crate::index::{Kind, ObjectKey};

use super::packed::{Interned, Kept};

/// The kinds watched cluster-wide; all must have synced before the operator is ready.
pub const WATCHED_KINDS: [Kind; 7] = [
    Kind::Tenant,
    Kind::Thing,
    Kind::Channel,
    Kind::Connection,
    Kind::User,
    Kind::Group,
    Kind::Policy,
];

/// A resourceVersion as the number it is: the API server's are etcd revisions. `None` for
/// one that is absent or not a number, which is then not kept.
pub(crate) fn revision(version: Option<&str>) -> Option<u64> {
    version.and_then(|v| v.parse().ok())
}

/// An object's status, typed by kind.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ShownStatus {
    /// A Tenant's.
    Tenant(TenantStatus),
    /// A Thing's.
    Thing(ThingStatus),
    /// A Channel's, Connection's, User's or Group's.
    Resource(ResourceStatus),
    /// A Policy's.
    Policy(PolicyStatus),
}

impl ShownStatus {
    /// The status conditions.
    pub fn conditions(&self) -> &[Condition] {
        match self {
            ShownStatus::Tenant(s) => &s.conditions,
            ShownStatus::Thing(s) => &s.conditions,
            ShownStatus::Resource(s) => &s.conditions,
            ShownStatus::Policy(s) => &s.conditions,
        }
    }

    /// The status conditions, to change.
    pub fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        match self {
            ShownStatus::Tenant(s) => &mut s.conditions,
            ShownStatus::Thing(s) => &mut s.conditions,
            ShownStatus::Resource(s) => &mut s.conditions,
            ShownStatus::Policy(s) => &mut s.conditions,
        }
    }

    /// Parses the `status` of an object of `kind`, as the API server returned it.
    pub fn from_json(kind: Kind, status: serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            Kind::Tenant => ShownStatus::Tenant(serde_json::from_value(status)?),
            Kind::Thing => ShownStatus::Thing(serde_json::from_value(status)?),
            Kind::Policy => ShownStatus::Policy(serde_json::from_value(status)?),
            _ => ShownStatus::Resource(serde_json::from_value(status)?),
        })
    }
}

/// What the API server shows of one Fleetward object.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shown {
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Whether `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `status`, when it has one.
    pub status: Option<ShownStatus>,
}

/// The Secrets of one tenant namespace.
#[derive(Debug, Default)]
struct SecretNamespace {
    synced: bool,
    names: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<ObjectKey, Kept>,
    /// The strings and condition shapes the kept statuses share.
    interned: Interned,
    synced: BTreeSet<Kind>,
    /// Per kind, the resourceVersion up to which every watch event has been applied (see
    /// [`Observed::seen_version`]).
    versions: BTreeMap<Kind, u64>,
    claims: BTreeMap<String, String>,
    secrets: BTreeMap<String, SecretNamespace>,
    credentials_errors: HashMap<ObjectKey, String>,
    /// Other sources the first snapshot waits for (cert-manager's issuers).
    holds: BTreeSet<&'static str>,
    ready: bool,
}

/// Every object's shown state, as [`Observed::with_objects`] lends it.
pub struct ShownObjects<'a>(&'a HashMap<ObjectKey, Kept>);

impl ShownObjects<'_> {
    /// What an object shows, when it exists.
    pub fn get(&self, key: &ObjectKey) -> Option<Shown> {
        self.0.get(key).map(Kept::unpack)
    }
}

/// See the module documentation. Share it in an `Arc`.
#[derive(Debug)]
pub struct Observed {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    claimed: watch::Sender<BTreeSet<String>>,
    changes: ChangeFeed,
}

impl Default for Observed {
    fn default() -> Self {
        Self::new()
    }
}

impl Observed {
    /// Nothing observed yet.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            claimed: watch::channel(BTreeSet::new()).0,
            changes: ChangeFeed::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data: a panic elsewhere must not stop the watches.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Fires when a shown status, uid or Secret changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The objects whose shown state or credentials error changes from now on; everything
    /// after a relist or when a namespace's Secrets are listed. Take them after
    /// [`Self::subscribe`] fires. (A Secret's own changes reach its Thing through the index.)
    pub fn changes(&self) -> ChangedKeys {
        self.changes.subscribe()
    }

    /// Fires when the set of namespaces claimed by Tenants changes.
    pub fn claimed(&self) -> watch::Receiver<BTreeSet<String>> {
        self.claimed.subscribe()
    }

    /// Records what an object shows.
    pub fn set(&self, key: ObjectKey, shown: Shown) {
        let changed = {
            let state = &mut *self.lock();
            let kept = Kept::pack(shown, &mut state.interned);
            let changed = state.objects.get(&key) != Some(&kept);
            if changed {
                state.objects.insert(key.clone(), kept);
            }
            changed
        };
        if changed {
            self.changes.publish([&key]);
            self.notify();
        }
    }

    /// Records what an object shows without telling anyone: for a list in progress, whose
    /// end ([`Self::listed`]) tells that everything of its kind may have changed.
    pub(crate) fn record(&self, key: ObjectKey, shown: Shown) {
        let state = &mut *self.lock();
        let kept = Kept::pack(shown, &mut state.interned);
        state.objects.insert(key, kept);
    }

    /// Records the status an object shows after a write, if the object is still known.
    pub fn set_status(&self, key: &ObjectKey, status: ShownStatus) {
        let changed = {
            let state = &mut *self.lock();
            state
                .objects
                .get_mut(key)
                .is_some_and(|kept| kept.set_status(status, &mut state.interned))
        };
        if changed {
            self.changes.publish([key]);
            self.notify();
        }
    }

    /// Forgets a deleted object.
    pub fn remove(&self, key: &ObjectKey) {
        let removed = self.lock().objects.remove(key).is_some();
        if removed {
            self.changes.publish([key]);
            self.notify();
        }
    }

    /// Whether any object of `kind` is known.
    pub(crate) fn has_any(&self, kind: Kind) -> bool {
        self.lock().objects.keys().any(|k| k.kind == kind)
    }

    /// The keys of the known objects of `kind`.
    pub(crate) fn keys_of(&self, kind: Kind) -> Vec<ObjectKey> {
        let state = self.lock();
        state
            .objects
            .keys()
            .filter(|k| k.kind == kind)
            .cloned()
            .collect()
    }

    /// Records that every watch event of `kind` up to resourceVersion `version` has been
    /// applied to the index and recorded here: call it after both. The state the operator saves
    /// for a restart resumes each kind's watch from here (`super::resume`). The API server's
    /// resourceVersions are etcd revisions ([`revision`]); a kind none of whose versions was
    /// a number is listed at a restart.
    pub(crate) fn seen_version(&self, kind: Kind, version: u64) {
        let mut state = self.lock();
        let kept = state.versions.entry(kind).or_default();
        *kept = (*kept).max(version);
    }

    /// The resourceVersion up to which `kind`'s events are all applied, once one was seen.
    pub(crate) fn version(&self, kind: Kind) -> Option<u64> {
        self.lock().versions.get(&kind).copied()
    }

    /// Marks `kind` listed: its watch has synced, and everything of it may have changed.
    pub(crate) fn listed(&self, kind: Kind) {
        self.lock().synced.insert(kind);
        self.changes.publish_everything();
        self.notify();
    }

    /// What an object shows, when it exists.
    pub fn shown(&self, key: &ObjectKey) -> Option<Shown> {
        self.lock().objects.get(key).map(Kept::unpack)
    }

    /// Runs `f` with every object's shown state, under one lock.
    pub fn with_objects<R>(&self, f: impl FnOnce(&ShownObjects<'_>) -> R) -> R {
        f(&ShownObjects(&self.lock().objects))
    }

    /// Records that Tenant `tenant` claims `namespace`.
    pub fn claim(&self, tenant: &str, namespace: &str) {
        let mut state = self.lock();
        state.claims.insert(tenant.to_owned(), namespace.to_owned());
        self.publish_claims(&state);
    }

    /// Forgets the claim of a deleted Tenant.
    pub fn unclaim(&self, tenant: &str) {
        let mut state = self.lock();
        state.claims.remove(tenant);
        self.publish_claims(&state);
    }

    fn publish_claims(&self, state: &State) {
        let namespaces: BTreeSet<String> = state.claims.values().cloned().collect();
        self.claimed.send_if_modified(|current| {
            if *current == namespaces {
                return false;
            }
            *current = namespaces;
            true
        });
    }

    /// Records that the Secrets of `namespace` are being watched (not yet synced).
    pub fn secrets_watched(&self, namespace: &str) {
        self.lock()
            .secrets
            .insert(namespace.to_owned(), SecretNamespace::default());
    }

    /// Stops tracking the Secrets of `namespace`; returns the names it held.
    pub fn secrets_unwatched(&self, namespace: &str) -> BTreeSet<String> {
        let names = self
            .lock()
            .secrets
            .remove(namespace)
            .map(|s| s.names)
            .unwrap_or_default();
        // Its Things can no longer be judged, then can again once listed: replan them.
        self.changes.publish_everything();
        self.notify();
        names
    }

    /// Replaces the Secrets of `namespace` (a relist) and marks it synced; returns the names
    /// that are gone.
    pub fn reset_secrets(&self, namespace: &str, names: BTreeSet<String>) -> BTreeSet<String> {
        let gone = {
            let mut state = self.lock();
            let ns = state.secrets.entry(namespace.to_owned()).or_default();
            let gone = ns.names.difference(&names).cloned().collect();
            ns.names = names;
            ns.synced = true;
            gone
        };
        self.changes.publish_everything();
        self.notify();
        gone
    }

    /// Records a Secret that exists.
    pub fn secret_applied(&self, namespace: &str, name: &str) {
        let added = self
            .lock()
            .secrets
            .get_mut(namespace)
            .is_some_and(|ns| ns.names.insert(name.to_owned()));
        if added {
            self.notify();
        }
    }

    /// Records a deleted Secret.
    pub fn secret_deleted(&self, namespace: &str, name: &str) {
        let removed = self
            .lock()
            .secrets
            .get_mut(namespace)
            .is_some_and(|ns| ns.names.remove(name));
        if removed {
            self.notify();
        }
    }

    /// Whether Secret `namespace/name` exists; `None` while the namespace's Secrets are not
    /// watched or not yet synced, when nobody can tell.
    pub fn secret_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        let state = self.lock();
        let ns = state.secrets.get(namespace).filter(|ns| ns.synced)?;
        Some(ns.names.contains(name))
    }

    /// Claimed namespaces whose Secrets have not synced yet: their objects cannot be judged
    /// (a Thing would look as if its Secret were missing).
    pub fn unsynced_namespaces(&self) -> BTreeSet<String> {
        let claimed = self.claimed.borrow().clone();
        let state = self.lock();
        claimed
            .into_iter()
            .filter(|ns| !state.secrets.get(ns).is_some_and(|s| s.synced))
            .collect()
    }

    /// Records why creating a Thing's Secret failed (`None` once it succeeded), so its status
    /// can say so.
    pub fn set_credentials_error(&self, thing: &ObjectKey, error: Option<String>) {
        let changed = {
            let mut state = self.lock();
            match error {
                Some(e) => state.credentials_errors.insert(thing.clone(), e.clone()) != Some(e),
                None => state.credentials_errors.remove(thing).is_some(),
            }
        };
        if changed {
            self.changes.publish([thing]);
            self.notify();
        }
    }

    /// Why creating each Thing's Secret last failed, for the Things where it did.
    pub fn credentials_errors(&self) -> HashMap<ObjectKey, String> {
        self.lock().credentials_errors.clone()
    }

    /// Marks a kind's watch synced.
    pub fn kind_synced(&self, kind: Kind) {
        self.lock().synced.insert(kind);
        self.notify();
    }

    /// Makes readiness wait for `source` too, until [`Observed::release`]; no effect once ready.
    pub fn hold(&self, source: &'static str) {
        self.lock().holds.insert(source);
    }

    /// `source` has listed what it feeds; whether it was still held.
    pub fn release(&self, source: &'static str) -> bool {
        let held = self.lock().holds.remove(source);
        if held {
            self.notify();
        }
        held
    }

    /// `Ok` once every watch has listed its objects (the kinds, and the Secrets of every
    /// claimed namespace); then it stays ready. Otherwise what is still pending.
    pub fn ready(&self) -> Result<(), String> {
        let claimed = self.claimed.borrow().clone();
        let mut state = self.lock();
        if state.ready {
            return Ok(());
        }
        let mut pending: Vec<String> = WATCHED_KINDS
            .iter()
            .filter(|k| !state.synced.contains(k))
            .map(|k| format!("{}s", k.as_str()))
            .collect();
        pending.extend(
            claimed
                .iter()
                .filter(|ns| !state.secrets.get(*ns).is_some_and(|s| s.synced))
                .map(|ns| format!("Secrets in {ns}")),
        );
        pending.extend(state.holds.iter().map(|s| (*s).to_owned()));
        if pending.is_empty() {
            state.ready = true;
            return Ok(());
        }
        Err(format!("waiting for the watches of {}", pending.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_kind_and_every_claimed_namespace_has_synced() {
        let o = Observed::new();
        o.claim("acme", "acme");
        for kind in WATCHED_KINDS {
            assert!(o.ready().is_err());
            o.kind_synced(kind);
        }
        let pending = o.ready().expect_err("acme's Secrets are not synced");
        assert!(pending.contains("Secrets in acme"), "{pending}");
        o.secrets_watched("acme");
        assert_eq!(o.secret_exists("acme", "a-credentials"), None);
        o.reset_secrets("acme", BTreeSet::from(["a-credentials".to_owned()]));
        o.hold("cert-manager issuers");
        let pending = o.ready().expect_err("the issuers are not listed");
        assert!(pending.contains("cert-manager issuers"), "{pending}");
        o.release("cert-manager issuers");
        assert_eq!(o.ready(), Ok(()));
        assert_eq!(o.secret_exists("acme", "a-credentials"), Some(true));
        assert_eq!(o.secret_exists("acme", "b-credentials"), Some(false));
        o.claim("globex", "globex");
        assert_eq!(o.ready(), Ok(()), "readiness is a latch");
        assert_eq!(
            o.unsynced_namespaces(),
            BTreeSet::from(["globex".to_owned()])
        );
    }

    #[test]
    fn a_relist_of_secrets_reports_the_ones_that_are_gone() {
        let o = Observed::new();
        o.secrets_watched("acme");
        o.reset_secrets("acme", BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        let gone = o.reset_secrets("acme", BTreeSet::from(["b".to_owned()]));
        assert_eq!(gone, BTreeSet::from(["a".to_owned()]));
        assert_eq!(
            o.secrets_unwatched("acme"),
            BTreeSet::from(["b".to_owned()])
        );
        assert_eq!(o.secret_exists("acme", "b"), None);
    }

    #[test]
    fn credentials_errors_are_kept_until_cleared_and_notify_only_on_change() {
        let o = Observed::new();
        let mut rx = o.subscribe();
        let thing = ObjectKey::namespaced(Kind::Thing, "acme", "sensor-1");
        o.set_credentials_error(&thing, Some("forbidden".into()));
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        o.set_credentials_error(&thing, Some("forbidden".into()));
        assert!(
            !rx.has_changed().unwrap_or(true),
            "the same error is no change"
        );
        assert_eq!(o.credentials_errors()[&thing], "forbidden");
        o.set_credentials_error(&thing, None);
        assert!(o.credentials_errors().is_empty());
    }

    #[test]
    fn claims_publish_only_real_changes() {
        let o = Observed::new();
        let mut rx = o.claimed();
        o.claim("acme", "acme");
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        o.claim("acme-too", "acme");
        assert!(
            !rx.has_changed().unwrap_or(true),
            "a second claim on a namespace changes no namespace"
        );
        o.unclaim("acme");
        assert!(
            !rx.has_changed().unwrap_or(true),
            "acme-too still claims the namespace"
        );
        o.unclaim("acme-too");
        assert!(rx.has_changed().unwrap_or(false));
        assert!(rx.borrow().is_empty());
    }
}
