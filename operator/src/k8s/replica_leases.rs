//! Dataplane reports between replicas: each replica publishes its [`Report`] in a Lease of its own, renewed, and every replica watches the others' so the leader can decide `Enforced`.
//!
//! The Lease is `<election lease>-dataplanes-<identity>` in the election Lease's namespace,
//! labelled `fleetward.io/replica-of=<election lease>`, holder the replica's identity, with the
//! report as JSON in the annotation `fleetward.io/dataplanes`. A replica without dataplanes
//! publishes nothing (and deletes its Lease), so an operator with no dataplanes writes no
//! reports. A report not renewed within its lease duration is dropped by the readers: a
//! replica that died without deleting its Lease stops counting once it expires.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};

use super::FIELD_MANAGER;
use crate::dataplanes::Dataplanes;
use crate::replicas::{Replicas, Report, report};
use crate::shared::SharedIndex;

/// The annotation holding a replica's report.
pub const ANNOTATION_REPORT: &str = "fleetward.io/dataplanes";
/// The label naming the election Lease a report Lease belongs to.
pub const LABEL_REPLICA_OF: &str = "fleetward.io/replica-of";

/// Changes are gathered this long before a report is published.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How long to wait after a failed publication.
const RETRY: Duration = Duration::from_secs(2);

/// Where reports live and who this replica is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportConfig {
    /// The election Lease's namespace.
    pub namespace: String,
    /// The election Lease's name.
    pub election: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a report stays valid without renewal.
    pub duration: Duration,
}

impl ReportConfig {
    /// The name of this replica's report Lease: a valid object name whatever the identity.
    pub fn lease_name(&self) -> String {
        let raw = format!("{}-dataplanes-{}", self.election, self.identity).to_lowercase();
        let mut name: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        name.truncate(253);
        name.trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_owned()
    }

    fn api(&self, client: &Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }
}

/// The report Lease of `config`'s replica.
pub fn report_lease(config: &ReportConfig, report: &Report) -> Result<Lease, serde_json::Error> {
    Ok(Lease {
        metadata: ObjectMeta {
            name: Some(config.lease_name()),
            namespace: Some(config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                LABEL_REPLICA_OF.to_owned(),
                config.election.clone(),
            )])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_REPORT.to_owned(),
                serde_json::to_string(report)?,
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..LeaseSpec::default()
        }),
    })
}

/// Reads a report Lease: the replica, its report and when it expires. `None` (logged) when it
/// is not one.
pub fn read_report(lease: &Lease) -> Option<(String, Report, SystemTime)> {
    let spec = lease.spec.as_ref()?;
    let replica = spec.holder_identity.clone()?;
    let text = lease.annotations().get(ANNOTATION_REPORT)?;
    let report: Report = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(lease = %lease.name_any(), error = %e, "ignoring a dataplane report that does not parse (another operator release?)");
            return None;
        }
    };
    let renewed = spec.renew_time.as_ref()?.0;
    let duration = u64::try_from(spec.lease_duration_seconds?).ok()?;
    let renewed = SystemTime::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(renewed.as_millisecond()).ok()?);
    Some((replica, report, renewed + Duration::from_secs(duration)))
}

/// Publishes this replica's report while it has dataplanes. Runs until the task is dropped.
pub async fn publish(
    client: Client,
    config: ReportConfig,
    index: Arc<SharedIndex>,
    dataplanes: Arc<Dataplanes>,
) -> &'static str {
    let api = config.api(&client);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let renew_every = config.duration / 3;
    let mut commits = index.subscribe();
    let mut changes = dataplanes.subscribe();
    // A report left by an earlier run of this replica is stale: start from none.
    let mut published: Option<Report> = Some(Report {
        view: String::new(),
        dataplanes: Vec::new(),
        pending: Vec::new(),
        truncated: false,
    });
    let mut renewed = Instant::now();
    let mut wake: Option<Instant> = None;
    loop {
        let current = report(&index.read(), &dataplanes);
        let due = current.is_some() && renewed.elapsed() >= renew_every;
        if current != published || due {
            let outcome = match &current {
                Some(r) => match report_lease(&config, r) {
                    Ok(lease) => api
                        .patch(&config.lease_name(), &params, &Patch::Apply(&lease))
                        .await
                        .map(|_| ()),
                    Err(e) => Err(kube::Error::SerdeError(e)),
                },
                None => match api
                    .delete(&config.lease_name(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
                    Err(e) => Err(e),
                },
            };
            match outcome {
                Ok(()) => {
                    tracing::debug!(
                        dataplanes = current.as_ref().map_or(0, |r| r.dataplanes.len()),
                        "published the dataplane report"
                    );
                    published = current;
                    renewed = Instant::now();
                    wake = None;
                }
                Err(e) => {
                    tracing::warn!(lease = %config.lease_name(), error = %e, "publishing the dataplane report failed; retrying (check the RBAC allows patching and deleting Leases in {})", config.namespace);
                    wake = Some(Instant::now() + RETRY);
                }
            }
        }
        let renewal = published.as_ref().map(|_| renewed + renew_every);
        let at = [renewal, wake].into_iter().flatten().min();
        let closed = tokio::select! {
            r = commits.changed() => r.is_err(),
            r = changes.changed() => r.is_err(),
            () = async {
                if let Some(at) = at {
                    tokio::time::sleep_until(at.into()).await;
                }
            }, if at.is_some() => false,
        };
        if closed {
            return "dataplane report publisher";
        }
        tokio::time::sleep(DEBOUNCE).await;
        commits.mark_unchanged();
        changes.mark_unchanged();
    }
}

/// Deletes this replica's report, on shutdown.
pub async fn withdraw(client: &Client, config: &ReportConfig) {
    match config
        .api(client)
        .delete(&config.lease_name(), &DeleteParams::default())
        .await
    {
        Ok(_) => tracing::info!(lease = %config.lease_name(), "withdrew the dataplane report"),
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => {
            tracing::warn!(lease = %config.lease_name(), error = %e, "withdrawing the dataplane report failed; it expires by itself")
        }
    }
}

/// Watches the other replicas' reports into `replicas`, and drops the expired. Runs until the
/// task is dropped.
pub async fn watch_peers(
    client: Client,
    config: ReportConfig,
    replicas: Arc<Replicas>,
) -> &'static str {
    let selector = format!("{LABEL_REPLICA_OF}={}", config.election);
    let stream = watcher::watcher(
        config.api(&client),
        watcher::Config::default().labels(&selector),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut next_expiry: Option<SystemTime> = None;
    loop {
        let sleep = next_expiry
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .map(|d| d + Duration::from_millis(10));
        let event = tokio::select! {
            event = stream.next() => event,
            () = async {
                if let Some(d) = sleep {
                    tokio::time::sleep(d).await;
                }
            }, if next_expiry.is_some() => {
                next_expiry = replicas.prune(SystemTime::now());
                continue;
            }
        };
        let Some(event) = event else {
            return "replica report watch";
        };
        match event {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(lease)) => {
                if let Some(replica) = take(&config, &replicas, &lease) {
                    listed.insert(replica);
                }
            }
            Ok(Event::InitDone) => {
                for gone in replicas
                    .dataplanes()
                    .into_keys()
                    .filter(|r| !listed.contains(r))
                {
                    replicas.remove(&gone);
                }
            }
            Ok(Event::Apply(lease)) => {
                take(&config, &replicas, &lease);
            }
            Ok(Event::Delete(lease)) => {
                if let Some(replica) = lease.spec.and_then(|s| s.holder_identity) {
                    replicas.remove(&replica);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching the replicas' dataplane reports failed; retrying with backoff");
            }
        }
        next_expiry = replicas.prune(SystemTime::now());
    }
}

/// Records one report Lease unless it is this replica's own; returns the replica.
fn take(config: &ReportConfig, replicas: &Replicas, lease: &Lease) -> Option<String> {
    let (replica, report, expires) = read_report(lease)?;
    if replica == config.identity {
        return None;
    }
    replicas.update(&replica, report, expires);
    Some(replica)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicas::ReportedDataplane;

    fn config(identity: &str) -> ReportConfig {
        ReportConfig {
            namespace: "fleetward-system".into(),
            election: "fleetward-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_report_lease_reads_back_with_its_expiry() {
        let report = Report {
            view: "00ff".into(),
            dataplanes: vec![ReportedDataplane {
                node: "dp-a".into(),
                applied: 3,
                error: None,
            }],
            pending: vec![],
            truncated: false,
        };
        let c = config("operator-1");
        let lease = report_lease(&c, &report).expect("serializes");
        assert_eq!(
            lease.metadata.name.as_deref(),
            Some("fleetward-operator-dataplanes-operator-1")
        );
        let (replica, read, expires) = read_report(&lease).expect("reads back");
        assert_eq!(replica, "operator-1");
        assert_eq!(read, report);
        let left = expires
            .duration_since(SystemTime::now())
            .expect("in the future");
        assert!(left > Duration::from_secs(28) && left <= Duration::from_secs(30));

        let mut broken = lease.clone();
        broken
            .metadata
            .annotations
            .as_mut()
            .expect("annotated")
            .insert(ANNOTATION_REPORT.into(), "{not json".into());
        assert!(
            read_report(&broken).is_none(),
            "an unreadable report is skipped"
        );
    }

    #[test]
    fn odd_identities_still_make_a_valid_name() {
        assert_eq!(
            config("Node_7/x").lease_name(),
            "fleetward-operator-dataplanes-node-7-x"
        );
    }

    #[test]
    fn this_replicas_own_report_is_not_taken_as_a_peer() {
        let replicas = Replicas::new();
        let report = Report {
            view: "v".into(),
            dataplanes: vec![],
            pending: vec![],
            truncated: false,
        };
        let lease = report_lease(&config("operator-0"), &report).expect("serializes");
        assert_eq!(take(&config("operator-0"), &replicas, &lease), None);
        assert_eq!(
            take(&config("operator-1"), &replicas, &lease).as_deref(),
            Some("operator-0")
        );
        assert!(replicas.dataplanes().contains_key("operator-0"));
    }
}
