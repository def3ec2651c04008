//! The status writer: applies each object's full status with server-side apply, only when it differs from what the object shows.
//!
//! It runs on every replica but writes only while the replica leads. It re-evaluates after
//! every index commit, dataplane change and watched status change, so an idle cluster gets no
//! writes; a failed write is retried with backoff. A `Ready=False` status is written once it
//! has held for a moment (longer while the leader is creating the Thing's Secret), so the
//! passing states of a bulk apply cost no writes. A written status that changes a condition
//! records an Event on the object (see [`super::events`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_crds::status::READY;
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::watch;

use super::events::{ConditionEvent, Reported, transitions};
use super::observed::{Observed, ShownStatus};
use super::status::{differs, enforcement_across, full_status, now, status_json};
use super::{Error, FIELD_MANAGER, Retries, api_resource, object_reference};
use crate::dataplanes::Dataplanes;
use crate::index::{DesiredStatus, ObjectKey, Readiness, Reason};
use crate::metrics::Metrics;
use crate::replicas::Replicas;
use crate::shared::SharedIndex;

/// How long changes are gathered before the statuses are evaluated again.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Status writes in flight at once.
const CONCURRENT_WRITES: usize = 32;
/// Status writes per round; then the statuses are planned again from the index.
const WRITES_PER_ROUND: usize = 256;
/// How long a `Ready=False` status must hold before it is written: transient states (a
/// Channel applied a moment after its Connection) then cost no write.
const HOLD_NOT_READY: Duration = Duration::from_secs(2);
/// The same for states this operator is about to resolve itself (a Thing waiting for the
/// Secret the leader creates, a Connection waiting for that Thing).
const HOLD_AWAITING_CREDENTIALS: Duration = Duration::from_secs(15);

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
    /// The Events its condition transitions call for, recorded once it is written.
    events: Vec<ConditionEvent>,
}

/// See the module documentation.
pub struct StatusWriter {
    /// The API client.
    pub client: Client,
    /// The index: desired statuses and included versions.
    pub index: Arc<SharedIndex>,
    /// The connected dataplanes: the enforced version.
    pub dataplanes: Arc<Dataplanes>,
    /// What the other replicas' dataplanes enforce.
    pub replicas: Arc<Replicas>,
    /// What the objects show.
    pub observed: Arc<Observed>,
    /// Write counts, errors and durations.
    pub metrics: Arc<Metrics>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// Records a Warning when a write fails, and the condition transitions.
    pub recorder: Recorder,
}

impl StatusWriter {
    /// Runs until the index, the dataplanes or the leadership go away.
    pub async fn run(mut self) -> &'static str {
        let mut commits = self.index.subscribe();
        let mut dataplanes = self.dataplanes.subscribe();
        let mut peers = self.replicas.subscribe();
        let mut seen = self.observed.subscribe();
        let mut retries = Retries::default();
        let mut holds = Holds::default();
        let mut reported = Reported::default();
        loop {
            let leading = *self.leader.borrow_and_update();
            if leading && self.observed.ready().is_ok() {
                let mut writes = self.plan(&retries, &mut holds, &mut reported);
                let more = writes.len() > WRITES_PER_ROUND;
                // Ready statuses first; the rest waits for a fresh plan, so a backlog never
                // writes a status that has gone stale meanwhile.
                writes.sort_by_key(|w| !is_ready(&w.status));
                writes.truncate(WRITES_PER_ROUND);
                if !writes.is_empty() {
                    self.write_all(writes, &mut retries, &mut reported).await;
                }
                if more {
                    continue;
                }
            }
            let retry = [retries.next(), holds.next()].into_iter().flatten().min();
            let closed = tokio::select! {
                r = commits.changed() => r.is_err(),
                r = dataplanes.changed() => r.is_err(),
                r = peers.changed() => r.is_err(),
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
            peers.mark_unchanged();
            seen.mark_unchanged();
        }
    }

    /// The statuses that differ from what their objects show.
    fn plan(&self, retries: &Retries, holds: &mut Holds, reported: &mut Reported) -> Vec<Write> {
        let enforced = self.dataplanes.enforced_version();
        let now = now();
        let instant = Instant::now();
        let unsynced = self.observed.unsynced_namespaces();
        let credentials_errors = self.observed.credentials_errors();
        let idx = self.index.read();
        let remote = self.replicas.judge(&idx);
        holds.retain(|key| idx.status(key).is_some());
        reported.retain(|key| idx.status(key).is_some());
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
                    let enforcement = enforcement_across(
                        desired.served,
                        idx.included_version(key),
                        enforced,
                        remote.enforces(key, desired.generation),
                    );
                    let status =
                        full_status(key.kind, desired, &enforcement, shown.status.as_ref(), &now)?;
                    if !differs(&status, shown.status.as_ref()) {
                        holds.clear(key);
                        return None;
                    }
                    if !holds.admit(key, hold_for(&desired.readiness), instant) {
                        return None;
                    }
                    let events =
                        transitions(shown.status.as_ref(), &status, reported.enforced(key));
                    Some(Write {
                        key: key.clone(),
                        uid: shown.uid.clone(),
                        status,
                        events,
                    })
                })
                .collect()
        })
    }

    async fn write_all(&self, writes: Vec<Write>, retries: &mut Retries, reported: &mut Reported) {
        let results: Vec<(Write, Result<Option<ShownStatus>, Error>)> =
            futures::stream::iter(writes)
                .map(|w| async move {
                    let started = Instant::now();
                    let result = self.write(&w).await;
                    self.metrics.reconciled(w.key.kind, started.elapsed());
                    if let Ok(Some(_)) = &result {
                        self.record(&w).await;
                    }
                    (w, result)
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect()
                .await;
        for (w, result) in results {
            match result {
                Ok(shown) => {
                    retries.succeeded(&w.key);
                    if shown.is_some() {
                        for event in &w.events {
                            reported.published(&w.key, event);
                        }
                    }
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

    /// Records the Events of a written status's transitions; a failure is logged, not retried
    /// (the status, which says the same, is written).
    async fn record(&self, w: &Write) {
        let reference = object_reference(&w.key, w.uid.clone());
        for event in &w.events {
            if let Err(e) = self.recorder.publish(&event.event(), &reference).await {
                tracing::debug!(object = %w.key, reason = %event.reason, error = %e, "recording an Event failed");
            }
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
    use crate::index::Kind;
    use crate::k8s::status::tests::thing_desired;

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
