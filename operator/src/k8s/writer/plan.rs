//! What the status writer plans each round: the objects a commit or the API server changed, those whose `Enforced` moved with the dataplanes' version, the holds, throttles and retries that are due, and now and then everything.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::time::Instant;

use super::super::events::{ConditionEvent, Reported, transitions};
use super::super::observed::{ShownObjects, ShownStatus};
use super::super::status::{
    Enforcement, REASON_NO_DATAPLANES, REASON_PENDING, differs, enforcement_across, full_status,
    same_conditions,
};
use super::super::{RESYNC, Retries};
use crate::changes::{ChangedKeys, MAX_KEYS};
use crate::index::{DesiredStatus, Index, Kind, ObjectKey, Readiness, Reason};
use crate::replicas::RemoteJudge;

/// How long a `Ready=False` status must hold before it is written: transient states (a
/// Channel applied a moment after its Connection) then cost no write.
pub(super) const HOLD_NOT_READY: Duration = Duration::from_secs(2);
/// The same for a `Ready` object the connected dataplanes have not applied yet (`Pending`): a
/// new object the dataplanes apply within it is written once, `Enforced`, not `Pending` then
/// `Enforced`.
pub(super) const HOLD_NOT_ENFORCED: Duration = Duration::from_secs(2);
/// The same with no dataplane connected (`NoDataplanes`). At a start the dataplanes reconnect
/// only once this replica serves, within their backoff (at most 1.5 s by default), and then
/// take its full snapshot: at 330k objects the leader was ready 3.1 s before both had applied
/// it, and a 2 s hold rewrote 1,536 statuses that were right. Once a dataplane connects, the
/// object is `Pending` and its hold shortens to [`HOLD_NOT_ENFORCED`] from then.
pub(super) const HOLD_NO_DATAPLANES: Duration = Duration::from_secs(10);
/// The same for states this operator is about to resolve itself (a Thing waiting for the
/// Secret the leader creates, a Connection waiting for that Thing).
pub(super) const HOLD_AWAITING_CREDENTIALS: Duration = Duration::from_secs(15);
/// A Tenant whose status changed only in its facts (counts, provisioning claims) waits this
/// long after its last write: a bulk apply then writes it once a second, not once per object.
pub(super) const TENANT_FACTS_EVERY: Duration = Duration::from_secs(1);

/// How long a status with this readiness and enforcement waits before it is written.
pub(super) fn hold_for(readiness: &Readiness, enforcement: &Enforcement) -> Duration {
    match (readiness.ready, readiness.reason) {
        (true, _) if enforcement.reason == REASON_NO_DATAPLANES => HOLD_NO_DATAPLANES,
        (true, _) if enforcement.reason == REASON_PENDING => HOLD_NOT_ENFORCED,
        (true, _) => Duration::ZERO,
        (false, Reason::CredentialsPending) if readiness.message.starts_with(FAILED_PREFIX) => {
            HOLD_NOT_READY
        }
        (false, Reason::CredentialsPending | Reason::SubjectNotReady) => HOLD_AWAITING_CREDENTIALS,
        (false, _) => HOLD_NOT_READY,
    }
}

/// How a Thing's `Ready` message starts when creating its Secret failed.
const FAILED_PREFIX: &str = "the operator could not create the credentials Secret: ";

/// A Thing still waiting for its Secret says why creating it failed, when it did.
pub(super) fn with_credentials_error<'a>(
    desired: &'a DesiredStatus,
    error: Option<&str>,
) -> Cow<'a, DesiredStatus> {
    match error {
        Some(error) if desired.readiness.reason == Reason::CredentialsPending => {
            let mut desired = desired.clone();
            desired.readiness.message = format!(
                "{FAILED_PREFIX}{error}. Or create the Secret yourself with your key under `key`"
            )
            .into();
            Cow::Owned(desired)
        }
        _ => Cow::Borrowed(desired),
    }
}

/// Statuses waiting out their hold: when each may be written.
///
/// At most [`MAX_KEYS`] holds are kept one by one. Past that (a cold start, when every status
/// waits for the dataplanes to reconnect), the holds that do not fit share one: it starts with
/// the first of them and lasts the longest hold any of them needs. When it ends the planner
/// plans everything, and that round lets every status without a hold of its own go. An object
/// whose hold began later than the shared one's start is then written early, or first seen in
/// that very round, skips its hold: at worst one early write each, where keeping every one of
/// 110k objects costs about 11 MiB. Being fixed at its start, the shared hold always ends,
/// even while the objects in it are planned again and again.
#[derive(Debug, Default)]
pub(super) struct Holds {
    until: HashMap<ObjectKey, Instant>,
    /// The shared hold of those past the bound: when it started and when it ends.
    overflow: Option<(Instant, Instant)>,
    /// This round lets the holds past the bound go.
    releasing: bool,
}

impl Holds {
    /// Whether a write of `key` may go now; starts its hold when first seen, and shortens it
    /// when the state now held needs a shorter one.
    pub(super) fn admit(&mut self, key: &ObjectKey, hold: Duration, now: Instant) -> bool {
        if hold.is_zero() {
            self.until.remove(key);
            return true;
        }
        let Some(until) = self.until.get_mut(key) else {
            if self.releasing {
                return true;
            }
            if self.until.len() >= MAX_KEYS {
                let (start, end) = self.overflow.unwrap_or((now, now));
                self.overflow = Some((start, end.max(start + hold)));
                return false;
            }
            self.until.insert(key.clone(), now + hold);
            return false;
        };
        *until = (*until).min(now + hold);
        if *until <= now {
            self.until.remove(key);
            return true;
        }
        false
    }

    /// Forgets the hold of an object whose status needs no write.
    pub(super) fn clear(&mut self, key: &ObjectKey) {
        self.until.remove(key);
    }

    fn retain(&mut self, keep: impl Fn(&ObjectKey) -> bool) {
        self.until.retain(|k, _| keep(k));
    }

    /// The objects whose hold has ended by `now`.
    fn due(&self, now: Instant) -> impl Iterator<Item = &ObjectKey> {
        self.until
            .iter()
            .filter(move |(_, until)| **until <= now)
            .map(|(key, _)| key)
    }

    /// Whether the holds past the bound have ended by `now`: if so the next round plans
    /// everything and lets them go.
    pub(super) fn overflow_due(&mut self, now: Instant) -> bool {
        self.releasing = self.overflow.is_some_and(|(_, end)| end <= now);
        if self.releasing {
            self.overflow = None;
        }
        self.releasing
    }

    /// The first hold that ends after `now`.
    pub(super) fn next_after(&self, now: Instant) -> Option<Instant> {
        self.until
            .values()
            .chain(self.overflow.as_ref().map(|(_, end)| end))
            .filter(|u| **u > now)
            .min()
            .copied()
    }
}

/// Tenants' last writes, and the facts-only writes deferred until a second after them.
#[derive(Debug, Default)]
struct TenantWrites {
    last: HashMap<ObjectKey, Instant>,
    deferred: HashMap<ObjectKey, Instant>,
}

impl TenantWrites {
    /// Whether a facts-only write of `key` must wait; if so it is planned again when it may go.
    fn defer(&mut self, key: &ObjectKey, now: Instant) -> bool {
        let Some(at) = self.last.get(key).map(|last| *last + TENANT_FACTS_EVERY) else {
            return false;
        };
        if at <= now {
            return false;
        }
        self.deferred.insert(key.clone(), at);
        true
    }

    fn written(&mut self, key: &ObjectKey, now: Instant) {
        self.deferred.remove(key);
        self.last.insert(key.clone(), now);
    }

    fn clear(&mut self, key: &ObjectKey) {
        self.deferred.remove(key);
    }

    fn forget(&mut self, key: &ObjectKey) {
        self.deferred.remove(key);
        self.last.remove(key);
    }

    /// Takes the deferred writes that may go at `now`, and forgets writes too old to matter.
    fn due(&mut self, now: Instant) -> Vec<ObjectKey> {
        self.last.retain(|_, last| *last + TENANT_FACTS_EVERY > now);
        let due: Vec<ObjectKey> = self
            .deferred
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &due {
            self.deferred.remove(key);
        }
        due
    }

    fn next(&self) -> Option<Instant> {
        self.deferred.values().min().copied()
    }
}

/// Served objects this replica's dataplanes do not enforce yet, by the version that includes
/// them: when the dataplanes' version passes one, its objects are planned again, without a
/// look at the others.
///
/// At most [`MAX_KEYS`] objects are kept one by one; past that (a cold start, a bulk apply),
/// only the newest version awaited is, and the version reaching it plans everything.
#[derive(Debug, Default)]
pub(super) struct Awaiting {
    by_version: BTreeMap<u64, HashSet<ObjectKey>>,
    version_of: HashMap<ObjectKey, u64>,
    /// The newest version awaited by an object not kept.
    overflow: Option<u64>,
}

impl Awaiting {
    /// Records that `key` waits for `version` (`None`: for nothing).
    pub(super) fn set(&mut self, key: &ObjectKey, version: Option<u64>) {
        if let Some(v) = version
            && self.version_of.len() >= MAX_KEYS
            && !self.version_of.contains_key(key)
        {
            self.overflow = self.overflow.max(Some(v));
            return;
        }
        let old = match version {
            Some(v) => self.version_of.insert(key.clone(), v),
            None => self.version_of.remove(key),
        };
        if old == version {
            return;
        }
        if let Some(old) = old
            && let Some(keys) = self.by_version.get_mut(&old)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_version.remove(&old);
            }
        }
        if let Some(v) = version {
            self.by_version.entry(v).or_default().insert(key.clone());
        }
    }

    /// Takes the objects included at `enforced` or before; `None` when objects not kept are
    /// among them: then everything is to be planned.
    pub(super) fn reached(&mut self, enforced: u64) -> Option<Vec<ObjectKey>> {
        if self.overflow.is_some_and(|v| v <= enforced) {
            self.clear();
            return None;
        }
        let later = self.by_version.split_off(&(enforced + 1));
        let reached = std::mem::replace(&mut self.by_version, later);
        let keys: Vec<ObjectKey> = reached.into_values().flatten().collect();
        for key in &keys {
            self.version_of.remove(key);
        }
        Some(keys)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// One status to write.
pub(super) struct Write {
    pub(super) key: ObjectKey,
    pub(super) uid: Option<String>,
    pub(super) status: ShownStatus,
    /// The Events its condition transitions call for, recorded once it is written.
    pub(super) events: Vec<ConditionEvent>,
}

/// Which objects a round plans.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// Every object of the index.
    Everything,
    /// Only these.
    Keys(Vec<ObjectKey>),
}

/// What a round's plan reads besides the index and the shown objects.
pub(super) struct Inputs {
    /// The version every serving dataplane of this replica has applied.
    pub(super) enforced: Option<u64>,
    /// What the other replicas' dataplanes enforce.
    pub(super) remote: RemoteJudge,
    /// Namespaces whose Secrets are not listed yet: their objects cannot be judged.
    pub(super) unsynced: BTreeSet<String>,
    /// Why creating a Thing's Secret failed, by Thing.
    pub(super) credentials_errors: HashMap<ObjectKey, String>,
    /// Condition transition time.
    pub(super) time: Time,
    /// The round's instant, for holds and retries.
    pub(super) now: Instant,
}

/// The status writer's memory between rounds. See the module documentation.
pub(super) struct Planner {
    index_changes: ChangedKeys,
    observed_changes: ChangedKeys,
    holds: Holds,
    tenants: TenantWrites,
    awaiting: Awaiting,
    /// Failed writes waiting for their retry.
    pub(super) retries: Retries,
    /// The `Enforced` Events already recorded.
    pub(super) reported: Reported,
    /// Objects planned but not written last round (past the round's cap).
    carried: HashSet<ObjectKey>,
    /// The dataplanes' version at the last plan; `None` before the first.
    enforced: Option<Option<u64>>,
    everything: bool,
    resync_at: Instant,
}

impl Planner {
    /// A planner whose first round plans everything.
    pub(super) fn new(index_changes: ChangedKeys, observed_changes: ChangedKeys) -> Self {
        Self {
            index_changes,
            observed_changes,
            holds: Holds::default(),
            tenants: TenantWrites::default(),
            awaiting: Awaiting::default(),
            retries: Retries::default(),
            reported: Reported::default(),
            carried: HashSet::new(),
            enforced: None,
            everything: true,
            resync_at: Instant::now() + RESYNC,
        }
    }

    /// Plans everything next round (leadership regained, another replica's report changed).
    pub(super) fn plan_everything(&mut self) {
        self.everything = true;
    }

    /// Drops the changes seen while this replica does not lead; it plans everything when it
    /// leads again.
    pub(super) fn idle(&mut self) {
        self.index_changes.take();
        self.observed_changes.take();
        self.carried.clear();
        self.everything = true;
    }

    /// Which objects to plan at `now`, the dataplanes having applied `enforced`.
    pub(super) fn scope(&mut self, enforced: Option<u64>, now: Instant) -> Scope {
        let index = self.index_changes.take();
        let observed = self.observed_changes.take();
        let released = self.holds.overflow_due(now);
        let mut everything = std::mem::take(&mut self.everything)
            || index.everything
            || observed.everything
            || released
            || now >= self.resync_at;
        let mut keys = std::mem::take(&mut self.carried);
        match (self.enforced.replace(enforced), enforced) {
            (Some(Some(before)), Some(after)) if after >= before => {
                match self.awaiting.reached(after) {
                    Some(reached) => keys.extend(reached),
                    None => everything = true,
                }
            }
            (Some(before), after) if before == after => {}
            // The first round, dataplanes that came or went, or a version that went back.
            _ => everything = true,
        }
        if everything {
            self.resync_at = now + RESYNC;
            self.awaiting.clear();
            return Scope::Everything;
        }
        keys.extend(index.keys);
        keys.extend(observed.keys);
        keys.extend(self.holds.due(now).cloned());
        keys.extend(self.retries.due(now).cloned());
        keys.extend(self.tenants.due(now));
        Scope::Keys(keys.into_iter().collect())
    }

    /// The statuses of `scope` that differ from what their objects show and may be written.
    ///
    /// At most `limit` writes are made: the objects of `scope` not planned past them are
    /// carried to the next round, so a round that finds every object to write (a cold start
    /// before the dataplanes have applied anything) holds `limit` planned statuses, not one
    /// per object.
    pub(super) fn plan(
        &mut self,
        scope: &Scope,
        idx: &Index,
        objects: &ShownObjects<'_>,
        inputs: &Inputs,
        limit: usize,
    ) -> Vec<Write> {
        let mut keys: Box<dyn Iterator<Item = &ObjectKey>> = match scope {
            Scope::Everything => {
                self.holds.retain(|key| idx.status(key).is_some());
                self.reported.retain(|key| idx.status(key).is_some());
                Box::new(idx.objects())
            }
            Scope::Keys(keys) => Box::new(keys.iter()),
        };
        let mut writes = Vec::new();
        for key in keys.by_ref() {
            writes.extend(self.plan_one(key, idx, objects, inputs));
            if writes.len() >= limit {
                break;
            }
        }
        self.carried.extend(keys.cloned());
        writes
    }

    /// The write `key` needs now, if any.
    fn plan_one(
        &mut self,
        key: &ObjectKey,
        idx: &Index,
        objects: &ShownObjects<'_>,
        inputs: &Inputs,
    ) -> Option<Write> {
        let Some(desired) = idx.status(key) else {
            self.forget(key);
            return None;
        };
        if inputs.unsynced.contains(&key.namespace) || self.retries.blocks(key, inputs.now) {
            return None;
        }
        let error = inputs.credentials_errors.get(key).map(String::as_str);
        let desired = with_credentials_error(desired, error);
        let desired = desired.as_ref();
        let shown = objects.get(key)?;
        // A newer generation is in the index's next commit; write after it.
        if shown.deleting || shown.generation != desired.generation {
            return None;
        }
        let included = idx.included_version(key);
        let awaited = included.filter(|v| inputs.enforced.is_some_and(|e| *v > e));
        self.awaiting.set(key, awaited);
        let remote = inputs.remote.enforces(key, desired.generation);
        let enforcement = enforcement_across(desired.served, included, inputs.enforced, remote);
        let status = full_status(
            key.kind,
            desired,
            &enforcement,
            shown.status.as_ref(),
            &inputs.time,
        )?;
        if !differs(&status, shown.status.as_ref()) {
            self.holds.clear(key);
            self.tenants.clear(key);
            self.retries.succeeded(key);
            return None;
        }
        let hold = hold_for(&desired.readiness, &enforcement);
        if !self.holds.admit(key, hold, inputs.now) {
            return None;
        }
        if key.kind == Kind::Tenant
            && same_conditions(&status, shown.status.as_ref())
            && self.tenants.defer(key, inputs.now)
        {
            return None;
        }
        let events = transitions(shown.status.as_ref(), &status, self.reported.enforced(key));
        Some(Write {
            key: key.clone(),
            uid: shown.uid.clone(),
            status,
            events,
        })
    }

    /// Forgets an object the index no longer knows.
    fn forget(&mut self, key: &ObjectKey) {
        self.holds.clear(key);
        self.tenants.forget(key);
        self.awaiting.set(key, None);
        self.reported.forget(key);
    }

    /// Whether objects are carried to the next round.
    pub(super) fn carries(&self) -> bool {
        !self.carried.is_empty()
    }

    /// Plans these again next round (they were past the round's cap).
    pub(super) fn carry(&mut self, keys: impl IntoIterator<Item = ObjectKey>) {
        self.carried.extend(keys);
    }

    /// Records a write the API server accepted at `now`.
    pub(super) fn written(&mut self, key: &ObjectKey, now: Instant) {
        self.retries.succeeded(key);
        if key.kind == Kind::Tenant {
            self.tenants.written(key, now);
        }
    }

    /// When the next round is due without any change: a hold ending, a throttled Tenant, a
    /// retry, or the resync.
    pub(super) fn next_wake(&self, now: Instant) -> Instant {
        [
            self.holds.next_after(now),
            self.tenants.next(),
            self.retries.next_after(now),
        ]
        .into_iter()
        .flatten()
        .fold(self.resync_at, Instant::min)
    }
}
