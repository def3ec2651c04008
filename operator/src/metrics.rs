//! Prometheus metrics of the operator and the admin endpoints that serve them (`/healthz`, `/readyz`, `/metrics`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::dataplanes::Dataplanes;
use crate::index::Kind;
use crate::k8s::observed::Observed;
use crate::replicas::Replicas;
use crate::shared::SharedIndex;

/// Labels: the kind of the object.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Labels: the kind and what failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    error: &'static str,
}

/// Labels: which planner (`status` or `secrets`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlannerLabel {
    planner: &'static str,
}

/// Labels: one dataplane.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

/// Labels: another operator replica.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    replica: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// The operator's metrics. Share it in an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabel, Histogram, fn() -> Histogram>,
    status_writes: Family<KindLabel, Counter>,
    planned: Family<PlannerLabel, Counter>,
    full_plans: Family<PlannerLabel, Counter>,
    secrets_created: Counter,
    watch_errors: Family<KindLabel, Counter>,
    objects_skipped: Family<KindLabel, Counter>,
    snapshot_version: Gauge,
    snapshot_size: Gauge,
    dataplanes: Gauge,
    applied: Family<NodeLabel, Gauge>,
    nacks: Family<NodeLabel, Gauge>,
    refusing: Family<NodeLabel, Gauge>,
    replica_dataplanes: Family<ReplicaLabel, Gauge>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered under the `fleetward_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fleetward_operator");
        let m = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            status_writes: Family::default(),
            planned: Family::default(),
            full_plans: Family::default(),
            secrets_created: Counter::default(),
            watch_errors: Family::default(),
            objects_skipped: Family::default(),
            snapshot_version: Gauge::default(),
            snapshot_size: Gauge::default(),
            dataplanes: Gauge::default(),
            applied: Family::default(),
            nacks: Family::default(),
            refusing: Family::default(),
            replica_dataplanes: Family::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        m.register_writes(&mut registry);
        m.register_state(&mut registry);
        Self { registry, ..m }
    }

    /// The metrics of writes and watches: reconciles, their errors and durations, Secrets.
    fn register_writes(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "Writes attempted for an object (status or Secret), by kind",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Writes that failed, by kind and error",
            self.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one write took, by kind",
            self.durations.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes that the API server accepted, by kind",
            self.status_writes.clone(),
        );
        registry.register(
            "planned_objects",
            "Objects whose status or Secret was planned (compared with what the object shows), \
             by planner: a change costs what it changes, a full resync costs every object",
            self.planned.clone(),
        );
        registry.register(
            "full_plans",
            "Plans of every object (start, leadership, dataplanes coming or going, the periodic \
             resync), by planner",
            self.full_plans.clone(),
        );
        registry.register(
            "secrets_created",
            "Thing Secrets created with a generated key",
            self.secrets_created.clone(),
        );
        registry.register(
            "watch_errors",
            "Watch errors (retried with backoff), by kind",
            self.watch_errors.clone(),
        );
        registry.register(
            "objects_skipped",
            "Objects that could not be read and were left out of the index, by kind",
            self.objects_skipped.clone(),
        );
    }

    /// The gauges of state: the snapshot, the dataplanes, the other replicas, the Lease.
    fn register_state(&self, registry: &mut Registry) {
        registry.register(
            "snapshot_version",
            "Version of this replica's policy snapshot",
            self.snapshot_version.clone(),
        );
        registry.register(
            "snapshot_resources",
            "Records in this replica's policy snapshot",
            self.snapshot_size.clone(),
        );
        registry.register(
            "dataplanes_connected",
            "Dataplanes connected to this replica",
            self.dataplanes.clone(),
        );
        registry.register(
            "dataplane_applied_version",
            "Snapshot version each connected dataplane has applied",
            self.applied.clone(),
        );
        registry.register(
            "dataplane_nacks",
            "Updates each connected dataplane has refused (NACKed) since it connected",
            self.nacks.clone(),
        );
        registry.register(
            "dataplane_refusing",
            "1 while a connected dataplane's last answer was a NACK, else 0",
            self.refusing.clone(),
        );
        registry.register(
            "replica_dataplanes",
            "Dataplanes each other replica reports (what the leader counts for Enforced)",
            self.replica_dataplanes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease and writes, else 0",
            self.leader.clone(),
        );
    }

    /// Counts one write attempt for an object of `kind` and how long it took.
    pub fn reconciled(&self, kind: Kind, took: Duration) {
        let label = KindLabel {
            kind: kind.as_str(),
        };
        self.reconciles.get_or_create(&label).inc();
        self.durations
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// Counts a failed write.
    pub fn reconcile_failed(&self, kind: Kind, error: &crate::k8s::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.as_str(),
                error: error.metric_label(),
            })
            .inc();
    }

    /// Counts an accepted status write.
    pub fn status_written(&self, kind: Kind) {
        self.status_writes
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts one plan of `planner` (`status` or `secrets`) over `objects` objects.
    pub fn planned(&self, planner: &'static str, objects: usize, everything: bool) {
        let label = PlannerLabel { planner };
        self.planned
            .get_or_create(&label)
            .inc_by(u64::try_from(objects).unwrap_or(u64::MAX));
        if everything {
            self.full_plans.get_or_create(&label).inc();
        }
    }

    /// How many objects `planner` has planned, and how many of its plans covered everything.
    pub fn plans(&self, planner: &'static str) -> (u64, u64) {
        let label = PlannerLabel { planner };
        (
            self.planned.get_or_create(&label).get(),
            self.full_plans.get_or_create(&label).get(),
        )
    }

    /// Counts a created Thing Secret.
    pub fn secret_created(&self) {
        self.secrets_created.inc();
    }

    /// Counts a watch error.
    pub fn watch_error(&self, kind: Kind) {
        self.watch_errors
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts an object left out of the index.
    pub fn object_skipped(&self, kind: Kind) {
        self.objects_skipped
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Sets the leader flag.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The Prometheus text exposition, with the gauges read from the index and the dataplanes.
    pub fn render(
        &self,
        index: &SharedIndex,
        dataplanes: &Dataplanes,
        replicas: &Replicas,
    ) -> String {
        {
            let idx = index.read();
            let snapshot = idx.snapshot();
            self.snapshot_version.set(saturate(snapshot.version()));
            self.snapshot_size
                .set(saturate(snapshot.resource_count() as u64));
        }
        let nodes = dataplanes.all();
        self.dataplanes.set(saturate(nodes.len() as u64));
        // Dataplanes that left must leave the exposition too.
        self.applied.clear();
        self.nacks.clear();
        self.refusing.clear();
        for (node, state) in nodes {
            let label = NodeLabel { node };
            self.applied
                .get_or_create(&label)
                .set(saturate(state.applied));
            self.nacks.get_or_create(&label).set(saturate(state.nacks));
            self.refusing
                .get_or_create(&label)
                .set(i64::from(state.last_error.is_some()));
        }
        self.replica_dataplanes.clear();
        for (replica, nodes) in replicas.dataplanes() {
            self.replica_dataplanes
                .get_or_create(&ReplicaLabel { replica })
                .set(saturate(nodes.len() as u64));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What the admin endpoints read.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The index, for the snapshot gauges.
    pub index: Arc<SharedIndex>,
    /// The dataplanes, for their gauges.
    pub dataplanes: Arc<Dataplanes>,
    /// The other replicas' dataplanes, for theirs.
    pub replicas: Arc<Replicas>,
    /// Watch sync state, for `/readyz`.
    pub observed: Arc<Observed>,
}

/// `/healthz` (the process serves), `/readyz` (every watch has synced) and `/metrics`.
pub fn admin_router(admin: Admin) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.observed.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(pending) => (StatusCode::SERVICE_UNAVAILABLE, format!("{pending}\n")),
    }
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin
            .metrics
            .render(&admin.index, &admin.dataplanes, &admin.replicas),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    #[test]
    fn the_exposition_names_kinds_dataplanes_and_the_leader_flag() {
        let m = Metrics::new();
        let index = SharedIndex::new(Index::starting_at(41));
        let dataplanes = Dataplanes::new();
        dataplanes.connected("dp-a", 40);
        dataplanes.nacked("dp-a", 41, "bad grant");
        m.reconciled(Kind::Thing, Duration::from_millis(3));
        m.status_written(Kind::Thing);
        m.set_leader(true);
        let replicas = Replicas::new();
        replicas.update(
            "operator-1",
            crate::replicas::Report {
                view: String::new(),
                dataplanes: vec![crate::replicas::ReportedDataplane {
                    node: "dp-b".into(),
                    applied: 3,
                    error: None,
                }],
                pending: vec![],
                truncated: false,
            },
            std::time::SystemTime::now() + Duration::from_secs(30),
        );
        let text = m.render(&index, &dataplanes, &replicas);
        for line in [
            "fleetward_operator_reconciles_total{kind=\"Thing\"} 1",
            "fleetward_operator_status_writes_total{kind=\"Thing\"} 1",
            "fleetward_operator_snapshot_version 41",
            "fleetward_operator_dataplanes_connected 1",
            "fleetward_operator_dataplane_applied_version{node=\"dp-a\"} 40",
            "fleetward_operator_dataplane_nacks{node=\"dp-a\"} 1",
            "fleetward_operator_dataplane_refusing{node=\"dp-a\"} 1",
            "fleetward_operator_leader 1",
            "fleetward_operator_replica_dataplanes{replica=\"operator-1\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        dataplanes.disconnected("dp-a");
        let text = m.render(&index, &dataplanes, &replicas);
        assert!(
            !text.contains("node=\"dp-a\""),
            "a gone dataplane stays:\n{text}"
        );
    }
}
