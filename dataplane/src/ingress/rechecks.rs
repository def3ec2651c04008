//! Re-checking only the sessions a policy change concerns.
//!
//! Each MQTT session and WebSocket stream holds an [`Interest`]: its subject (and so its
//! tenant) and the channels it subscribes to. [`follow`] follows the policy: for each new
//! snapshot it asks [`Snapshot::changes_since`] what changed since the one it saw before, and
//! wakes only the sessions that reaches: a subject named by the change (its record, a group it
//! is or was in, a grant to it or to such a group), a channel it subscribes to, or its whole
//! tenant (a Tenant record or policy text changed, or the tenant is on an external engine). A
//! full snapshot, or a change whose reach is not known, wakes every session. The others sleep
//! on: a grant to one thing re-checks that thing's sessions, not the pod's.
//!
//! `fleetward_policy_rechecks_total` counts the sessions woken; `fleetward_policy_rechecks_last`
//! is the number the last snapshot woke.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleetward_policy::{ResourceName, Since, Snapshot, Subject, SubjectName, Touched};
use foldhash::{HashMap, HashSet, HashSetExt};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;

/// Who depends on what, for waking only the sessions a change concerns.
#[derive(Default)]
pub(crate) struct Rechecks {
    next_id: AtomicU64,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    sessions: HashMap<u64, Entry>,
    by_tenant: HashMap<String, HashSet<u64>>,
    by_subject: HashMap<SubjectName, HashSet<u64>>,
    by_channel: HashMap<ResourceName, HashSet<u64>>,
}

struct Entry {
    signal: Arc<Notify>,
    subject: SubjectName,
    channels: HashSet<ResourceName>,
}

/// A session's registration: what it depends on, and how it is told to re-check. Dropped with
/// the session.
pub(crate) struct Interest {
    id: u64,
    rechecks: Arc<Rechecks>,
    signal: Arc<Notify>,
}

impl Rechecks {
    /// Registers a session of `subject`, with no channel yet.
    pub(crate) fn register(self: &Arc<Self>, subject: &Subject) -> Interest {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Notify::new());
        let name = SubjectName::new(&*subject.tenant, subject.kind, &*subject.name);
        let mut r = self.registry.lock();
        r.by_tenant
            .entry(name.tenant.clone())
            .or_default()
            .insert(id);
        r.by_subject.entry(name.clone()).or_default().insert(id);
        r.sessions.insert(
            id,
            Entry {
                signal: signal.clone(),
                subject: name,
                channels: HashSet::new(),
            },
        );
        Interest {
            id,
            rechecks: self.clone(),
            signal,
        }
    }

    /// Tells every session `since` reaches to re-check; how many that is.
    fn wake(&self, since: &Since<'_>) -> usize {
        let r = self.registry.lock();
        let Since::Deltas(deltas) = since else {
            for e in r.sessions.values() {
                e.signal.notify_one();
            }
            return r.sessions.len();
        };
        let mut reached = HashSet::new();
        for touched in deltas {
            r.reached(touched, &mut reached);
        }
        for id in &reached {
            if let Some(e) = r.sessions.get(id) {
                e.signal.notify_one();
            }
        }
        reached.len()
    }

    /// The number of sessions registered.
    #[cfg(test)]
    pub(crate) fn sessions(&self) -> usize {
        self.registry.lock().sessions.len()
    }
}

impl Registry {
    fn reached(&self, touched: &Touched, out: &mut HashSet<u64>) {
        let tenants = touched.tenants.iter().filter_map(|t| self.by_tenant.get(t));
        let subjects = touched
            .subjects
            .iter()
            .filter_map(|s| self.by_subject.get(s));
        let channels = touched
            .channels
            .iter()
            .filter_map(|c| self.by_channel.get(c));
        for ids in tenants.chain(subjects).chain(channels) {
            out.extend(ids);
        }
    }
}

/// Drops `id` from the set under `key`, and the set once empty.
fn forget<K: std::hash::Hash + Eq>(index: &mut HashMap<K, HashSet<u64>>, key: &K, id: u64) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

impl Interest {
    /// Resolves when the policy changed in a way that concerns the session (at once if it
    /// did since the last time).
    pub(crate) fn changed(&self) -> impl Future<Output = ()> + Send + '_ {
        self.signal.notified()
    }

    /// Has the session re-check at its next turn.
    pub(crate) fn recheck_now(&self) {
        self.signal.notify_one();
    }

    /// Adds a channel the session subscribes to.
    pub(crate) fn watch_channel(&self, tenant: &str, channel: &str) {
        let key = ResourceName::new(tenant, channel);
        let mut r = self.rechecks.registry.lock();
        let Some(e) = r.sessions.get_mut(&self.id) else {
            return;
        };
        if e.channels.insert(key.clone()) {
            r.by_channel.entry(key).or_default().insert(self.id);
        }
    }

    /// Sets the channels the session subscribes to: those given, and no other.
    pub(crate) fn set_channels(&self, channels: impl IntoIterator<Item = ResourceName>) {
        let now: HashSet<ResourceName> = channels.into_iter().collect();
        let mut r = self.rechecks.registry.lock();
        let Some(e) = r.sessions.get_mut(&self.id) else {
            return;
        };
        let was = std::mem::replace(&mut e.channels, now.clone());
        for gone in was.difference(&now) {
            forget(&mut r.by_channel, gone, self.id);
        }
        for added in now.difference(&was) {
            r.by_channel
                .entry(added.clone())
                .or_default()
                .insert(self.id);
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut r = self.rechecks.registry.lock();
        let Some(e) = r.sessions.remove(&self.id) else {
            return;
        };
        forget(&mut r.by_tenant, &e.subject.tenant, self.id);
        forget(&mut r.by_subject, &e.subject, self.id);
        for c in &e.channels {
            forget(&mut r.by_channel, c, self.id);
        }
    }
}

/// Follows the policy until its source is gone, waking the sessions each change concerns.
pub(crate) async fn follow(
    rechecks: Arc<Rechecks>,
    mut policy: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
) {
    let mut seen = policy.borrow_and_update().stamp();
    while policy.changed().await.is_ok() {
        let snapshot = policy.borrow_and_update().clone();
        let woken = rechecks.wake(&snapshot.changes_since(seen));
        seen = snapshot.stamp();
        metrics.policy_rechecked(woken);
    }
}

#[cfg(test)]
mod tests {
    use fleetward_policy::{
        Actions, Channel, Delta, Grant, GrantSubject, Qos, Resources, Tenant, Thing,
    };
    use futures_util::FutureExt;

    use super::*;

    fn resources() -> Resources {
        let mut r = Resources::default();
        for t in ["a", "b"] {
            r.tenants.push(Tenant::named(t));
            for name in ["t", "u"] {
                r.things.push(Thing {
                    x509: Default::default(),
                    credential_mode: Default::default(),
                    attributes: Default::default(),
                    tenant: t.into(),
                    name: name.into(),
                    key_digests: vec![],
                    disabled: false,
                    mountpoint: None,
                    max_connections: None,
                });
            }
            r.channels.push(Channel {
                history_retention_secs: Default::default(),
                uid: String::new(),
                tenant: t.into(),
                name: "ch".into(),
                max_qos: Qos::AtLeastOnce,
                retained_allowed: true,
                delivery_metadata: false,
                max_message_size: None,
            });
            r.grants.push(Grant {
                tenant: t.into(),
                name: "t-ch".into(),
                subject: GrantSubject::Thing("t".into()),
                channel: "ch".into(),
                actions: Actions::BOTH,
                allow: vec![],
                deny: vec![],
            });
        }
        r
    }

    fn woken(i: &Interest) -> bool {
        i.changed().now_or_never().is_some()
    }

    /// `a/t`, `a/u` subscribed to `a/ch`, and `b/t`; what `change` applied to the fixture
    /// wakes, in that order, and the count `wake` gives.
    fn wakes(change: impl FnOnce(&mut Delta)) -> ([bool; 3], usize) {
        let rechecks = Arc::new(Rechecks::default());
        let s1 = Snapshot::from_resources(1, resources()).expect("unique");
        let sessions = [("a", "t"), ("a", "u"), ("b", "t")]
            .map(|(tenant, thing)| rechecks.register(&Subject::thing(tenant, thing)));
        sessions[1].watch_channel("a", "ch");
        let mut delta = Delta {
            from_version: 1,
            to_version: 2,
            ..Delta::default()
        };
        change(&mut delta);
        let mut s2 = s1.clone();
        s2.apply(&delta).expect("same version");
        let n = rechecks.wake(&s2.changes_since(s1.stamp()));
        (sessions.each_ref().map(woken), n)
    }

    #[test]
    fn a_grant_wakes_its_subjects_sessions_only() {
        let removed = |d: &mut Delta| d.grants.removals.push(ResourceName::new("a", "t-ch"));
        assert_eq!(wakes(removed), ([true, false, false], 1));
    }

    #[test]
    fn a_channel_wakes_its_subscribers_only() {
        let removed = |d: &mut Delta| d.channels.removals.push(ResourceName::new("a", "ch"));
        assert_eq!(wakes(removed), ([false, true, false], 1));
    }

    #[test]
    fn a_tenant_record_wakes_the_whole_tenant() {
        let suspended = |d: &mut Delta| {
            let mut t = resources().tenants.remove(1);
            t.suspended = true;
            d.tenants.upserts.push(t);
        };
        assert_eq!(wakes(suspended), ([false, false, true], 1));
    }

    #[test]
    fn a_full_snapshot_wakes_everyone() {
        let rechecks = Arc::new(Rechecks::default());
        let s1 = Snapshot::from_resources(1, resources()).expect("unique");
        let a = rechecks.register(&Subject::thing("a", "t"));
        let b = rechecks.register(&Subject::thing("b", "t"));
        let s2 = Snapshot::from_resources(2, resources()).expect("unique");
        assert_eq!(rechecks.wake(&s2.changes_since(s1.stamp())), 2);
        assert!(woken(&a) && woken(&b));
    }

    #[test]
    fn a_session_gone_is_forgotten_and_channels_can_be_reset() {
        let rechecks = Arc::new(Rechecks::default());
        let a = rechecks.register(&Subject::thing("a", "t"));
        a.watch_channel("a", "ch");
        a.set_channels([ResourceName::new("a", "other")]);
        {
            let r = rechecks.registry.lock();
            assert!(!r.by_channel.contains_key(&ResourceName::new("a", "ch")));
            assert!(r.by_channel.contains_key(&ResourceName::new("a", "other")));
        }
        let b = rechecks.register(&Subject::thing("a", "u"));
        drop(a);
        assert_eq!(rechecks.sessions(), 1);
        drop(b);
        let r = rechecks.registry.lock();
        assert!(r.by_tenant.is_empty() && r.by_subject.is_empty() && r.by_channel.is_empty());
    }
}
