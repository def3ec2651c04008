//! The status writer: each object's full status (`Ready` from the index, `Enforced` from the dataplanes, kind facts), applied only when it differs from what the object shows.
//!
//! It runs on every replica but writes only while the replica leads. It re-evaluates after
//! every index commit, dataplane change and watched status change, so an idle cluster gets no
//! writes; a failed write is retried with backoff. A `Ready=False` status is written once it
//! has held for a moment (longer while the leader is creating the Thing's Secret), so the
//! passing states of a bulk apply cost no writes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_crds::status::{ENFORCED, READY};
use fleetward_crds::{ResourceStatus, TenantStatus, ThingStatus};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::watch;

use super::observed::{Observed, ShownStatus};
use super::{Error, FIELD_MANAGER, Retries, api_resource, object_reference};
use crate::dataplanes::Dataplanes;
use crate::index::{DesiredStatus, Facts, Kind, ObjectKey, Readiness, Reason};
use crate::metrics::Metrics;
use crate::shared::SharedIndex;

/// `Enforced=True`: every connected dataplane has applied a snapshot containing the object.
pub const REASON_ENFORCED: &str = "Enforced";
/// `Enforced=False`: no dataplane is connected.
pub const REASON_NO_DATAPLANES: &str = "NoDataplanes";
/// `Enforced=False`: some connected dataplane has not applied it yet.
pub const REASON_PENDING: &str = "Pending";
/// `Enforced=False`: the object is not served (it is not `Ready`).
pub const REASON_NOT_SERVED: &str = "NotServed";

/// How long changes are gathered before the statuses are evaluated again.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Status writes in flight at once.
const CONCURRENT_WRITES: usize = 16;
/// Status writes per round; then the statuses are planned again from the index.
const WRITES_PER_ROUND: usize = 256;
/// How long a `Ready=False` status must hold before it is written: transient states (a
/// Channel applied a moment after its Connection) then cost no write.
const HOLD_NOT_READY: Duration = Duration::from_secs(2);
/// The same for states this operator is about to resolve itself (a Thing waiting for the
/// Secret the leader creates, a Connection waiting for that Thing).
const HOLD_AWAITING_CREDENTIALS: Duration = Duration::from_secs(15);

/// The `Enforced` condition an object should show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enforcement {
    /// `Enforced=True`.
    pub enforced: bool,
    /// The condition reason.
    pub reason: &'static str,
    /// The condition message.
    pub message: String,
}

/// `Enforced` for an object that is `served` and in the snapshot from version `included`, when
/// every connected dataplane has applied `enforced` (`None`: no dataplane is connected).
///
/// Messages name no version: versions differ between replicas and runs, and a message that
/// changed with them would rewrite every status after a restart or a failover.
pub fn enforcement(served: bool, included: Option<u64>, enforced: Option<u64>) -> Enforcement {
    let Some(included) = included.filter(|_| served) else {
        return Enforcement {
            enforced: false,
            reason: REASON_NOT_SERVED,
            message: "the resource is not in the policy snapshot (see the Ready condition), so no \
                      dataplane enforces it"
                .to_owned(),
        };
    };
    match enforced {
        None => Enforcement {
            enforced: false,
            reason: REASON_NO_DATAPLANES,
            message: "no dataplane is connected to the operator; the resource is enforced once \
                      dataplanes connect and apply the policy snapshot that contains it"
                .to_owned(),
        },
        Some(applied) if applied >= included => Enforcement {
            enforced: true,
            reason: REASON_ENFORCED,
            message: "every connected dataplane has applied a policy snapshot that contains \
                      this generation"
                .to_owned(),
        },
        Some(_) => Enforcement {
            enforced: false,
            reason: REASON_PENDING,
            message: "waiting for every connected dataplane to apply the policy snapshot that \
                      contains this generation"
                .to_owned(),
        },
    }
}

/// The current time in whole seconds, as the API server stores condition times.
pub fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    shown: &[Condition],
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    // The transition time moves only when the condition's status does.
    let last_transition_time = shown
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The full status an object of `kind` should show; `None` for kinds without a status.
pub fn full_status(
    kind: Kind,
    desired: &DesiredStatus,
    enforcement: &Enforcement,
    shown: Option<&ShownStatus>,
    now: &Time,
) -> Option<ShownStatus> {
    let shown_conditions = shown.map_or(&[][..], ShownStatus::conditions);
    let ready = &desired.readiness;
    let conditions = vec![
        condition(
            READY,
            ready.ready,
            ready.reason.as_str(),
            &ready.message,
            desired.generation,
            shown_conditions,
            now,
        ),
        condition(
            ENFORCED,
            enforcement.enforced,
            enforcement.reason,
            &enforcement.message,
            desired.generation,
            shown_conditions,
            now,
        ),
    ];
    let observed_generation = desired.generation;
    Some(match kind {
        Kind::Tenant => {
            let mut status = TenantStatus {
                conditions,
                observed_generation,
                ..TenantStatus::default()
            };
            if let Facts::Tenant {
                namespace: Some(namespace),
                things,
                channels,
            } = &desired.facts
            {
                status.namespace = Some(namespace.clone());
                status.things = Some(*things);
                status.channels = Some(*channels);
            }
            ShownStatus::Tenant(status)
        }
        Kind::Thing => {
            let mut status = ThingStatus {
                conditions,
                observed_generation,
                ..ThingStatus::default()
            };
            if let Facts::Thing {
                secret_name,
                key_fingerprint,
                keys,
            } = &desired.facts
            {
                status.secret_name = Some(secret_name.clone());
                status.key_fingerprint = key_fingerprint.clone();
                status.keys = Some(*keys);
            }
            ShownStatus::Thing(status)
        }
        Kind::Channel | Kind::Connection | Kind::User | Kind::Group => {
            ShownStatus::Resource(ResourceStatus {
                conditions,
                observed_generation,
            })
        }
        Kind::Secret => return None,
    })
}

/// Whether `desired` must be written: it differs from what the object shows in a field the
/// operator owns (conditions are compared by type, ignoring ones other writers own).
pub fn differs(desired: &ShownStatus, shown: Option<&ShownStatus>) -> bool {
    let Some(shown) = shown else {
        return true;
    };
    normalized(desired) != normalized(shown)
}

fn normalized(status: &ShownStatus) -> ShownStatus {
    let fix = |conditions: &mut Vec<Condition>| {
        conditions.retain(|c| c.type_ == READY || c.type_ == ENFORCED);
        conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    };
    let mut status = status.clone();
    match &mut status {
        ShownStatus::Tenant(s) => fix(&mut s.conditions),
        ShownStatus::Thing(s) => fix(&mut s.conditions),
        ShownStatus::Resource(s) => fix(&mut s.conditions),
    }
    status
}

fn status_json(status: &ShownStatus) -> serde_json::Result<serde_json::Value> {
    match status {
        ShownStatus::Tenant(s) => serde_json::to_value(s),
        ShownStatus::Thing(s) => serde_json::to_value(s),
        ShownStatus::Resource(s) => serde_json::to_value(s),
    }
}

/// How long a status with this readiness waits before it is written.
fn hold_for(readiness: &Readiness) -> Duration {
    match (readiness.ready, readiness.reason) {
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
fn with_credentials_error<'a>(
    desired: &'a DesiredStatus,
    error: Option<&str>,
) -> Cow<'a, DesiredStatus> {
    match error {
        Some(error) if desired.readiness.reason == Reason::CredentialsPending => {
            let mut desired = desired.clone();
            desired.readiness.message = format!(
                "{FAILED_PREFIX}{error}. Or create the Secret yourself with your key under `key`"
            );
            Cow::Owned(desired)
        }
        _ => Cow::Borrowed(desired),
    }
}

fn is_ready(status: &ShownStatus) -> bool {
    status
        .conditions()
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

/// Statuses waiting out their hold: when each may be written.
#[derive(Debug, Default)]
struct Holds {
    until: HashMap<ObjectKey, Instant>,
}

impl Holds {
    /// Whether a write of `key` may go now; starts its hold when first seen.
    fn admit(&mut self, key: &ObjectKey, hold: Duration, now: Instant) -> bool {
        if hold.is_zero() {
            self.until.remove(key);
            return true;
        }
        let until = *self.until.entry(key.clone()).or_insert(now + hold);
        if until <= now {
            self.until.remove(key);
            return true;
        }
        false
    }

    /// Forgets the hold of an object whose status needs no write.
    fn clear(&mut self, key: &ObjectKey) {
        self.until.remove(key);
    }

    fn retain(&mut self, keep: impl Fn(&ObjectKey) -> bool) {
        self.until.retain(|k, _| keep(k));
    }

    fn next(&self) -> Option<Instant> {
        self.until.values().min().copied()
    }
}

/// One status to write.
struct Write {
    key: ObjectKey,
    uid: Option<String>,
    status: ShownStatus,
}

/// See the module documentation.
pub struct StatusWriter {
    /// The API client.
    pub client: Client,
    /// The index: desired statuses and included versions.
    pub index: Arc<SharedIndex>,
    /// The connected dataplanes: the enforced version.
    pub dataplanes: Arc<Dataplanes>,
    /// What the objects show.
    pub observed: Arc<Observed>,
    /// Write counts, errors and durations.
    pub metrics: Arc<Metrics>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// Records a Warning when a write fails.
    pub recorder: Recorder,
}

impl StatusWriter {
    /// Runs until the index, the dataplanes or the leadership go away.
    pub async fn run(mut self) -> &'static str {
        let mut commits = self.index.subscribe();
        let mut dataplanes = self.dataplanes.subscribe();
        let mut seen = self.observed.subscribe();
        let mut retries = Retries::default();
        let mut holds = Holds::default();
        loop {
            let leading = *self.leader.borrow_and_update();
            if leading && self.observed.ready().is_ok() {
                let mut writes = self.plan(&retries, &mut holds);
                let more = writes.len() > WRITES_PER_ROUND;
                // Ready statuses first; the rest waits for a fresh plan, so a backlog never
                // writes a status that has gone stale meanwhile.
                writes.sort_by_key(|w| !is_ready(&w.status));
                writes.truncate(WRITES_PER_ROUND);
                if !writes.is_empty() {
                    self.write_all(writes, &mut retries).await;
                }
                if more {
                    continue;
                }
            }
            let retry = [retries.next(), holds.next()].into_iter().flatten().min();
            let closed = tokio::select! {
                r = commits.changed() => r.is_err(),
                r = dataplanes.changed() => r.is_err(),
                r = seen.changed() => r.is_err(),
                r = self.leader.changed() => r.is_err(),
                () = sleep_until(retry), if retry.is_some() => false,
            };
            if closed {
                return "status writer";
            }
            tokio::time::sleep(DEBOUNCE).await;
            commits.mark_unchanged();
            dataplanes.mark_unchanged();
            seen.mark_unchanged();
        }
    }

    /// The statuses that differ from what their objects show.
    fn plan(&self, retries: &Retries, holds: &mut Holds) -> Vec<Write> {
        let enforced = self.dataplanes.enforced_version();
        let now = now();
        let instant = Instant::now();
        let unsynced = self.observed.unsynced_namespaces();
        let credentials_errors = self.observed.credentials_errors();
        let idx = self.index.read();
        holds.retain(|key| idx.status(key).is_some());
        self.observed.with_objects(|objects| {
            idx.objects()
                .filter(|key| !unsynced.contains(&key.namespace) && !retries.blocks(key, instant))
                .filter_map(|key| {
                    let desired = with_credentials_error(
                        idx.status(key)?,
                        credentials_errors.get(key).map(String::as_str),
                    );
                    let desired = desired.as_ref();
                    let shown = objects.get(key)?;
                    // A newer generation is in the index's next commit; write after it.
                    if shown.deleting || shown.generation != desired.generation {
                        return None;
                    }
                    let enforcement =
                        enforcement(desired.served, idx.included_version(key), enforced);
                    let status =
                        full_status(key.kind, desired, &enforcement, shown.status.as_ref(), &now)?;
                    if !differs(&status, shown.status.as_ref()) {
                        holds.clear(key);
                        return None;
                    }
                    if !holds.admit(key, hold_for(&desired.readiness), instant) {
                        return None;
                    }
                    Some(Write {
                        key: key.clone(),
                        uid: shown.uid.clone(),
                        status,
                    })
                })
                .collect()
        })
    }

    async fn write_all(&self, writes: Vec<Write>, retries: &mut Retries) {
        let results: Vec<(Write, Result<Option<ShownStatus>, Error>)> =
            futures::stream::iter(writes)
                .map(|w| async move {
                    let started = Instant::now();
                    let result = self.write(&w).await;
                    self.metrics.reconciled(w.key.kind, started.elapsed());
                    (w, result)
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect()
                .await;
        for (w, result) in results {
            match result {
                Ok(shown) => {
                    retries.succeeded(&w.key);
                    self.metrics.status_written(w.key.kind);
                    tracing::debug!(object = %w.key, "status written");
                    if let Some(shown) = shown {
                        self.observed.set_status(&w.key, shown);
                    }
                }
                Err(e) => {
                    self.metrics.reconcile_failed(w.key.kind, &e);
                    let failures = retries.failed(w.key.clone());
                    tracing::warn!(object = %w.key, failures, error = %e, "status write failed; retrying with backoff");
                    if failures == 1 {
                        self.warn(&w, &e).await;
                    }
                }
            }
        }
    }

    /// Applies one status; returns what the object shows afterwards (`None` if it is gone).
    async fn write(&self, w: &Write) -> Result<Option<ShownStatus>, Error> {
        let kind = w.key.kind;
        let resource = api_resource(kind);
        let api: Api<DynamicObject> = if w.key.namespace.is_empty() {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), &w.key.namespace, &resource)
        };
        let status = status_json(&w.status).map_err(|e| Error::StatusWrite {
            key: w.key.clone(),
            source: kube::Error::SerdeError(e),
        })?;
        let body = serde_json::json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&w.key.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(object) => Ok(object
                .data
                .get("status")
                .cloned()
                .and_then(|s| ShownStatus::from_json(kind, s).ok())),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(None),
            Err(source) => Err(Error::StatusWrite {
                key: w.key.clone(),
                source,
            }),
        }
    }

    async fn warn(&self, w: &Write, error: &Error) {
        let event = Event {
            type_: EventType::Warning,
            reason: "StatusWriteFailed".into(),
            note: Some(error.to_string()),
            action: "WriteStatus".into(),
            secondary: None,
        };
        let reference = object_reference(&w.key, w.uid.clone());
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(object = %w.key, error = %e, "recording an Event failed");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Readiness, Reason};

    fn time(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("a valid time"))
    }

    fn thing_desired(ready: bool) -> DesiredStatus {
        DesiredStatus {
            generation: Some(2),
            readiness: if ready {
                Readiness::ready(Reason::Accepted, "the thing's credentials are in place")
            } else {
                Readiness::not_ready(Reason::CredentialsPending, "waiting for the Secret")
            },
            served: ready,
            facts: Facts::Thing {
                secret_name: "sensor-1-credentials".into(),
                key_fingerprint: ready.then(|| "0123456789ab".into()),
                keys: u32::from(ready),
            },
        }
    }

    #[test]
    fn enforced_follows_the_lowest_applied_version() {
        assert_eq!(
            enforcement(true, Some(5), None).reason,
            REASON_NO_DATAPLANES
        );
        assert_eq!(enforcement(true, Some(5), Some(4)).reason, REASON_PENDING);
        let e = enforcement(true, Some(5), Some(5));
        assert!(e.enforced);
        assert_eq!(e.reason, REASON_ENFORCED);
        assert!(enforcement(true, Some(5), Some(9)).enforced);
        assert_eq!(
            enforcement(false, Some(5), Some(9)).reason,
            REASON_NOT_SERVED
        );
        assert_eq!(enforcement(true, None, Some(9)).reason, REASON_NOT_SERVED);
        assert_eq!(
            enforcement(true, Some(5), Some(6)),
            enforcement(true, Some(5), Some(7)),
            "later ACKs do not change the condition, so they cause no write"
        );
    }

    #[test]
    fn a_thing_shows_ready_enforced_and_its_credentials() {
        let desired = thing_desired(true);
        let e = enforcement(true, Some(3), Some(3));
        let Some(ShownStatus::Thing(s)) = full_status(Kind::Thing, &desired, &e, None, &time(100))
        else {
            panic!("a Thing gets a ThingStatus");
        };
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.secret_name.as_deref(), Some("sensor-1-credentials"));
        assert_eq!(s.key_fingerprint.as_deref(), Some("0123456789ab"));
        assert_eq!(s.keys, Some(1));
        let ready = &s.conditions[0];
        assert_eq!(
            (
                ready.type_.as_str(),
                ready.status.as_str(),
                ready.reason.as_str()
            ),
            (READY, "True", "Accepted")
        );
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(ready.last_transition_time, time(100));
        let enforced = &s.conditions[1];
        assert_eq!(
            (enforced.type_.as_str(), enforced.status.as_str()),
            (ENFORCED, "True")
        );
    }

    #[test]
    fn a_tenant_shows_its_namespace_and_counts_only_when_it_owns_one() {
        let mut desired = DesiredStatus {
            generation: Some(1),
            readiness: Readiness::ready(Reason::Accepted, "owns acme"),
            served: true,
            facts: Facts::Tenant {
                namespace: Some("acme".into()),
                things: 2,
                channels: 1,
            },
        };
        let e = enforcement(true, Some(1), None);
        let Some(ShownStatus::Tenant(s)) = full_status(Kind::Tenant, &desired, &e, None, &time(1))
        else {
            panic!("a Tenant gets a TenantStatus");
        };
        assert_eq!(
            (s.namespace.as_deref(), s.things, s.channels),
            (Some("acme"), Some(2), Some(1))
        );
        desired.readiness = Readiness::not_ready(Reason::NamespaceClaimed, "taken");
        desired.facts = Facts::Tenant {
            namespace: None,
            things: 0,
            channels: 0,
        };
        desired.served = false;
        let e = enforcement(desired.served, None, Some(4));
        let Some(ShownStatus::Tenant(s)) = full_status(Kind::Tenant, &desired, &e, None, &time(1))
        else {
            panic!("a Tenant gets a TenantStatus");
        };
        assert_eq!((s.namespace, s.things, s.channels), (None, None, None));
        assert_eq!(s.conditions[0].reason, "NamespaceClaimed");
        assert_eq!(s.conditions[1].reason, REASON_NOT_SERVED);
    }

    #[test]
    fn transition_times_move_only_when_a_condition_status_changes() {
        let pending = thing_desired(false);
        let not_served = enforcement(false, None, None);
        let first =
            full_status(Kind::Thing, &pending, &not_served, None, &time(100)).expect("a status");
        assert!(!differs(&first, Some(&first)), "equal: no write");

        // Later, the same desired status: nothing to write, times kept.
        let again = full_status(Kind::Thing, &pending, &not_served, Some(&first), &time(200))
            .expect("a status");
        assert_eq!(again, first);
        assert!(!differs(&again, Some(&first)));

        // The Secret appears: Ready turns True at 300, Enforced stays False (now pending).
        let ready = thing_desired(true);
        let pending_push = enforcement(true, Some(7), Some(6));
        let next = full_status(Kind::Thing, &ready, &pending_push, Some(&first), &time(300))
            .expect("a status");
        assert!(differs(&next, Some(&first)));
        let c = next.conditions();
        assert_eq!(
            (c[0].status.as_str(), &c[0].last_transition_time),
            ("True", &time(300))
        );
        assert_eq!(
            (
                c[1].status.as_str(),
                c[1].reason.as_str(),
                &c[1].last_transition_time
            ),
            ("False", REASON_PENDING, &time(100)),
            "Enforced was False before too: its transition time is kept"
        );
    }

    #[test]
    fn condition_order_and_foreign_conditions_cause_no_write() {
        let desired = thing_desired(true);
        let e = enforcement(true, Some(3), Some(3));
        let status = full_status(Kind::Thing, &desired, &e, None, &time(5)).expect("a status");
        let ShownStatus::Thing(mut shown) = status.clone() else {
            panic!("a ThingStatus");
        };
        shown.conditions.reverse();
        shown.conditions.push(Condition {
            type_: "Audited".into(),
            status: "True".into(),
            reason: "Checked".into(),
            message: "written by another controller".into(),
            observed_generation: None,
            last_transition_time: time(1),
        });
        assert!(!differs(&status, Some(&ShownStatus::Thing(shown.clone()))));
        shown.keys = Some(2);
        assert!(
            differs(&status, Some(&ShownStatus::Thing(shown))),
            "a changed fact is written"
        );
        assert!(
            differs(&status, None),
            "an object without a status gets one"
        );
    }

    #[test]
    fn status_json_round_trips_through_what_the_api_server_returns() {
        let desired = thing_desired(true);
        let e = enforcement(true, Some(3), None);
        let status = full_status(Kind::Thing, &desired, &e, None, &now()).expect("a status");
        let json = status_json(&status).expect("serializable");
        assert_eq!(json["conditions"][0]["type"], "Ready");
        assert_eq!(json["secretName"], "sensor-1-credentials");
        let back = ShownStatus::from_json(Kind::Thing, json).expect("parses");
        assert!(
            !differs(&status, Some(&back)),
            "what was written reads back equal"
        );
    }

    #[test]
    fn not_ready_statuses_wait_out_their_hold_and_ready_ones_go_at_once() {
        let mut holds = Holds::default();
        let key = ObjectKey::namespaced(Kind::Connection, "acme", "grant");
        let t0 = Instant::now();
        let missing = Readiness::not_ready(Reason::ChannelNotFound, "no channel");
        assert_eq!(hold_for(&missing), HOLD_NOT_READY);
        assert!(!holds.admit(&key, hold_for(&missing), t0));
        assert_eq!(
            holds.next(),
            Some(t0 + HOLD_NOT_READY),
            "the writer wakes when it ends"
        );
        assert!(!holds.admit(&key, hold_for(&missing), t0 + Duration::from_secs(1)));
        assert!(holds.admit(&key, hold_for(&missing), t0 + HOLD_NOT_READY));
        assert!(holds.next().is_none());

        let pending = Readiness::not_ready(Reason::CredentialsPending, "creating");
        assert_eq!(hold_for(&pending), HOLD_AWAITING_CREDENTIALS);
        assert!(!holds.admit(&key, hold_for(&pending), t0));
        let ready = Readiness::ready(Reason::Accepted, "served");
        assert!(
            holds.admit(&key, hold_for(&ready), t0),
            "Ready is written at once"
        );
        assert!(holds.next().is_none(), "and it ends the hold");

        assert!(!holds.admit(&key, HOLD_NOT_READY, t0));
        holds.clear(&key);
        assert!(
            !holds.admit(&key, HOLD_NOT_READY, t0 + Duration::from_secs(5)),
            "a cleared hold starts again"
        );
    }

    #[test]
    fn a_failed_secret_creation_shows_in_the_thing_status_without_the_long_hold() {
        let pending = thing_desired(false);
        let error =
            "creating Secret acme/sensor-1-credentials for Thing sensor-1 failed: forbidden";
        let shown = with_credentials_error(&pending, Some(error));
        assert_eq!(shown.readiness.reason, Reason::CredentialsPending);
        assert!(
            shown.readiness.message.contains("forbidden"),
            "{}",
            shown.readiness.message
        );
        assert_eq!(hold_for(&shown.readiness), HOLD_NOT_READY);
        assert_eq!(
            with_credentials_error(&pending, None).as_ref(),
            &pending,
            "no error, no change"
        );
        let ready = thing_desired(true);
        assert_eq!(
            with_credentials_error(&ready, Some(error)).as_ref(),
            &ready,
            "a Thing with its Secret shows no stale error"
        );
    }

    #[test]
    fn retries_back_off_and_clear_on_success() {
        let mut r = Retries::default();
        let key = ObjectKey::tenant("acme");
        assert!(!r.blocks(&key, Instant::now()));
        assert_eq!(r.failed(key.clone()), 1);
        assert!(r.blocks(&key, Instant::now()));
        let first = r.next().expect("a retry is due");
        assert_eq!(r.failed(key.clone()), 2);
        assert!(r.next().expect("a retry is due") > first, "the wait grows");
        r.succeeded(&key);
        assert!(r.next().is_none());
    }
}
