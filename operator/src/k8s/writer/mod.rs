//! The status writer: applies each object's full status with server-side apply, only when it differs from what the object shows.
//!
//! It runs on every replica but writes only while the replica leads. Each round plans only
//! what changed (see [`plan`]): the objects an index commit changed or included, the objects
//! whose shown status changed, those the dataplanes' newly applied version now enforces, and
//! the holds, throttled Tenants and retries that are due. Everything is planned when the
//! replica starts leading, when dataplanes come or go or report an older version, when
//! another replica's report changes, on a relist, and every [`super::RESYNC`] as a safety net;
//! so an idle cluster gets no writes and a fresh operator finding every status right writes
//! nothing. A failed write is retried with backoff. A `Ready=False` status, and a `Ready` one
//! whose `Enforced` is `Pending`, is written once it has held for a moment (longer while the
//! leader is creating the Thing's Secret), so the passing states of a bulk apply cost no
//! writes and a new object is written once, `Enforced`. A Tenant whose counts alone changed is
//! written at most once a second. A written status that changes a condition records an Event
//! on the object (see [`super::events`]).

mod plan;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use fleetward_crds::status::READY;
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use super::events::Events;
use super::observed::{Observed, ShownStatus};
use super::status::status_json;
use super::{Error, FIELD_MANAGER, api_resource, object_reference};
use crate::dataplanes::Dataplanes;
use crate::metrics::Metrics;
use crate::replicas::Replicas;
use crate::shared::SharedIndex;
use plan::{Inputs, Planner, Scope, Write};

/// How long changes are gathered before the statuses are evaluated again.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Status writes in flight at once.
const CONCURRENT_WRITES: usize = 32;
/// Status writes per round; the rest are planned again next round, so a backlog never writes
/// a status that has gone stale meanwhile.
const WRITES_PER_ROUND: usize = 256;
/// Statuses planned per round at most: the Ready ones among them are written first, the rest
/// and the objects not yet planned are planned again next round.
const PLANNED_PER_ROUND: usize = 4 * WRITES_PER_ROUND;
/// The planner's name in the metrics.
const PLANNER: &str = "status";

fn is_ready(status: &ShownStatus) -> bool {
    status
        .conditions()
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

/// What wakes the writer: a commit, the dataplanes, the other replicas, what objects show, or
/// the leadership.
struct Wakers {
    commits: watch::Receiver<crate::shared::Published>,
    dataplanes: watch::Receiver<u64>,
    peers: watch::Receiver<u64>,
    seen: watch::Receiver<u64>,
}

impl Wakers {
    /// Waits for a change or `at`, then gathers changes for [`DEBOUNCE`]; `None` when a
    /// channel closed, else whether the other replicas' reports changed.
    async fn wait(&mut self, leader: &mut watch::Receiver<bool>, at: Instant) -> Option<bool> {
        let mut peers = false;
        let closed = tokio::select! {
            r = self.commits.changed() => r.is_err(),
            r = self.dataplanes.changed() => r.is_err(),
            r = self.peers.changed() => {
                peers = true;
                r.is_err()
            }
            r = self.seen.changed() => r.is_err(),
            r = leader.changed() => r.is_err(),
            () = tokio::time::sleep_until(at) => false,
        };
        if closed {
            return None;
        }
        tokio::time::sleep(DEBOUNCE).await;
        let peers = peers || self.peers.has_changed().unwrap_or(false);
        self.commits.mark_unchanged();
        self.dataplanes.mark_unchanged();
        self.peers.mark_unchanged();
        self.seen.mark_unchanged();
        Some(peers)
    }
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
    pub events: Events,
}

impl StatusWriter {
    /// Runs until the index, the dataplanes or the leadership go away.
    pub async fn run(mut self) -> &'static str {
        let mut wakers = Wakers {
            commits: self.index.subscribe(),
            dataplanes: self.dataplanes.subscribe(),
            peers: self.replicas.subscribe(),
            seen: self.observed.subscribe(),
        };
        let mut planner = Planner::new(self.index.changes(), self.observed.changes());
        loop {
            let now = Instant::now();
            if !*self.leader.borrow_and_update() {
                planner.idle();
            } else if self.observed.ready().is_ok() && self.round(&mut planner, now).await {
                continue;
            }
            match wakers.wait(&mut self.leader, planner.next_wake(now)).await {
                None => return "status writer",
                Some(true) => planner.plan_everything(),
                Some(false) => {}
            }
        }
    }

    /// Plans and writes one round; whether writes were left for the next one.
    async fn round(&self, planner: &mut Planner, now: Instant) -> bool {
        let enforced = self.dataplanes.enforced_version();
        let scope = planner.scope(enforced, now);
        let mut writes = self.plan(planner, &scope, enforced, now);
        let more = writes.len() > WRITES_PER_ROUND || planner.carries();
        // Ready statuses first; the rest is planned again next round.
        writes.sort_by_key(|w| !is_ready(&w.status));
        if writes.len() > WRITES_PER_ROUND {
            planner.carry(writes.drain(WRITES_PER_ROUND..).map(|w| w.key));
        }
        if !writes.is_empty() {
            self.write_all(writes, planner).await;
        }
        more
    }

    /// The statuses of `scope` that differ from what their objects show.
    fn plan(
        &self,
        planner: &mut Planner,
        scope: &Scope,
        enforced: Option<u64>,
        now: Instant,
    ) -> Vec<Write> {
        let unsynced = self.observed.unsynced_namespaces();
        let credentials_errors = self.observed.credentials_errors();
        let idx = self.index.read();
        let inputs = Inputs {
            enforced,
            remote: self.replicas.judge(&idx),
            unsynced,
            credentials_errors,
            time: super::status::now(),
            now,
        };
        let planned = match scope {
            Scope::Everything => idx.objects().count(),
            Scope::Keys(keys) => keys.len(),
        };
        self.metrics
            .planned(PLANNER, planned, *scope == Scope::Everything);
        self.observed
            .with_objects(|objects| planner.plan(scope, &idx, objects, &inputs, PLANNED_PER_ROUND))
    }

    async fn write_all(&self, writes: Vec<Write>, planner: &mut Planner) {
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
                    planner.written(&w.key, Instant::now());
                    if shown.is_some() {
                        for event in &w.events {
                            planner.reported.published(&w.key, event);
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
                    let failures = planner.retries.failed(w.key.clone());
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
            if let Err(e) = self.events.publish(&event.event(), &reference).await {
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
        if let Err(e) = self.events.publish(&event, &reference).await {
            tracing::debug!(object = %w.key, error = %e, "recording an Event failed");
        }
    }
}
