//! What the dataplanes of every replica have enforced, so the leader decides `Enforced` for dataplanes connected to any replica.
//!
//! Snapshot versions are local to a replica (each index has its own lineage), so a replica
//! cannot publish "my dataplanes applied version 42" in a form the leader could use. It
//! publishes a [`Report`] instead: a digest of its view (every served object and generation)
//! and the objects its dataplanes have not applied yet. When the leader's own view has the
//! same digest, every object of the view not listed as pending is enforced on that replica's
//! dataplanes. The leader remembers, per replica, the generation of each object last seen
//! enforced there, so a report that no longer matches (the views drift for a moment after a
//! change) only holds back the objects that changed, never every status.
//!
//! Pure: the Kubernetes side (`k8s::replica_leases`) moves reports through Leases.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::dataplanes::Dataplanes;
use crate::index::{Index, ObjectKey};

/// At most this many pending objects are listed in a report; past it the report says it is
/// truncated and the leader learns nothing new from it until the dataplanes catch up.
pub const MAX_PENDING: usize = 2000;

/// One dataplane as its replica reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedDataplane {
    /// Its node id.
    pub node: String,
    /// The version (of the reporting replica's lineage) it has applied.
    pub applied: u64,
    /// Its last NACK, until an ACK clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one replica publishes about its dataplanes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// [`view_digest`] of the replica's index when the report was made.
    pub view: String,
    /// Its connected dataplanes.
    pub dataplanes: Vec<ReportedDataplane>,
    /// Objects of the view some of its dataplanes have not applied yet, as [`key_text`].
    #[serde(default)]
    pub pending: Vec<String>,
    /// More than [`MAX_PENDING`] objects are pending; `pending` lists only some.
    #[serde(default)]
    pub truncated: bool,
}

/// An object key as reports spell it: `Kind/namespace/name` (`Tenant//name`).
pub fn key_text(key: &ObjectKey) -> String {
    format!("{}/{}/{}", key.kind.as_str(), key.namespace, key.name)
}

/// A digest of what the index serves: every served object with the generation it serves.
/// Two replicas whose indexes were fed the same objects have the same digest.
pub fn view_digest(idx: &Index) -> String {
    idx.view_digest().hex()
}

/// The report of a replica with these dataplanes; `None` when none is connected (the replica
/// then publishes nothing).
pub fn report(idx: &Index, dataplanes: &Dataplanes) -> Option<Report> {
    let nodes = dataplanes.all();
    let enforced = nodes.values().map(|n| n.applied).min()?;
    let mut pending = Vec::new();
    let mut truncated = false;
    for (key, _, version) in idx.included() {
        if version > enforced {
            if pending.len() == MAX_PENDING {
                truncated = true;
                break;
            }
            pending.push(key_text(key));
        }
    }
    pending.sort_unstable();
    Some(Report {
        view: view_digest(idx),
        dataplanes: nodes
            .into_iter()
            .map(|(node, state)| ReportedDataplane {
                node,
                applied: state.applied,
                error: state.last_error,
            })
            .collect(),
        pending,
        truncated,
    })
}

/// Whether the dataplanes of the other replicas enforce an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remote {
    /// No other replica has a dataplane connected.
    None,
    /// Every dataplane of every other replica has applied the object's generation.
    Enforced,
    /// Some have not (yet).
    Pending,
}

/// One other replica, as the last report and its renewals tell.
#[derive(Debug)]
struct Peer {
    report: Report,
    expires: SystemTime,
    /// The view digest `enforced` was last brought up to date against.
    matched: Option<String>,
    /// The generation of each object last seen enforced on this replica's dataplanes.
    enforced: HashMap<ObjectKey, Option<i64>>,
}

/// The other replicas' reports, and what the leader concluded from them. Share in an `Arc`.
#[derive(Debug)]
pub struct Replicas {
    peers: Mutex<BTreeMap<String, Peer>>,
    changed: watch::Sender<u64>,
}

impl Default for Replicas {
    fn default() -> Self {
        Self::new()
    }
}

impl Replicas {
    /// No other replica known.
    pub fn new() -> Self {
        Self {
            peers: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Peer>> {
        // Plain data: a panic elsewhere must not stop the status writer.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Fires when a report arrives, changes or goes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records the report of `replica`, valid until `expires`.
    pub fn update(&self, replica: &str, report: Report, expires: SystemTime) {
        let changed = {
            let mut peers = self.lock();
            match peers.get_mut(replica) {
                Some(peer) => {
                    let changed = peer.report != report;
                    if changed {
                        peer.report = report;
                        peer.matched = None;
                    }
                    peer.expires = expires;
                    changed
                }
                None => {
                    peers.insert(
                        replica.to_owned(),
                        Peer {
                            report,
                            expires,
                            matched: None,
                            enforced: HashMap::new(),
                        },
                    );
                    true
                }
            }
        };
        if changed {
            self.notify();
        }
    }

    /// Forgets `replica` (its report was deleted: it has no dataplanes, or it stopped).
    pub fn remove(&self, replica: &str) {
        if self.lock().remove(replica).is_some() {
            self.notify();
        }
    }

    /// Forgets replicas whose report was not renewed in time; returns the earliest expiry left.
    pub fn prune(&self, now: SystemTime) -> Option<SystemTime> {
        let (removed, next) = {
            let mut peers = self.lock();
            let before = peers.len();
            peers.retain(|replica, peer| {
                let alive = peer.expires > now;
                if !alive {
                    tracing::info!(%replica, "forgetting a replica whose dataplane report expired");
                }
                alive
            });
            (
                before != peers.len(),
                peers.values().map(|p| p.expires).min(),
            )
        };
        if removed {
            self.notify();
        }
        next
    }

    /// The other replicas' dataplanes, by replica.
    pub fn dataplanes(&self) -> BTreeMap<String, Vec<ReportedDataplane>> {
        self.lock()
            .iter()
            .map(|(replica, peer)| (replica.clone(), peer.report.dataplanes.clone()))
            .collect()
    }

    /// Brings what is known to be enforced up to date with `idx`: a report whose view matches
    /// the index says which of its objects every dataplane of that replica has applied.
    /// Returns the judge of remote enforcement for this index.
    pub fn judge(&self, idx: &Index) -> RemoteJudge {
        let mut peers = self.lock();
        let mut digest: Option<String> = None;
        for peer in peers.values_mut() {
            if peer.report.dataplanes.is_empty() || peer.report.truncated {
                continue;
            }
            let view = digest.get_or_insert_with(|| view_digest(idx));
            if peer.report.view != *view || peer.matched.as_deref() == Some(view.as_str()) {
                continue;
            }
            let pending: HashSet<&str> = peer.report.pending.iter().map(String::as_str).collect();
            peer.enforced.clear();
            for (key, generation, _) in idx.included() {
                if !pending.contains(key_text(key).as_str()) {
                    peer.enforced.insert(key.clone(), generation);
                }
            }
            peer.matched = Some(view.clone());
        }
        RemoteJudge {
            peers: peers
                .values()
                .filter(|p| !p.report.dataplanes.is_empty())
                .map(|p| p.enforced.clone())
                .collect(),
        }
    }
}

/// What the other replicas enforce, fixed for one planning round.
#[derive(Debug, Default)]
pub struct RemoteJudge {
    peers: Vec<HashMap<ObjectKey, Option<i64>>>,
}

impl RemoteJudge {
    /// Whether the other replicas' dataplanes enforce `key` at `generation`.
    pub fn enforces(&self, key: &ObjectKey, generation: Option<i64>) -> Remote {
        if self.peers.is_empty() {
            return Remote::None;
        }
        if self
            .peers
            .iter()
            .all(|enforced| enforced.get(key) == Some(&generation))
        {
            Remote::Enforced
        } else {
            Remote::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::index::Kind;
    use crate::manifest::{self, Document};
    use crate::resource::Resource;

    fn index_of(yaml: &str) -> Index {
        let mut idx = Index::starting_at(100);
        for doc in manifest::read(yaml) {
            if let Document::Object(o) = doc.expect("valid manifest") {
                idx.apply(*o);
            }
        }
        idx.commit();
        idx
    }

    const ACME: &str = "apiVersion: fleetward.io/v1alpha1\nkind: Tenant\nmetadata: {name: acme, generation: 1}\nspec: {}\n---\napiVersion: fleetward.io/v1alpha1\nkind: Channel\nmetadata: {name: telemetry, namespace: acme, generation: 1}\nspec: {}\n---\n";

    fn channel(name: &str, generation: i64) -> Resource {
        let yaml = format!(
            "apiVersion: fleetward.io/v1alpha1\nkind: Channel\nmetadata: {{name: {name}, namespace: acme, generation: {generation}}}\nspec: {{maxQos: {qos}}}\n",
            qos = generation % 2
        );
        match manifest::read(&yaml).remove(0).expect("valid manifest") {
            Document::Object(o) => *o,
            Document::Skipped { .. } => panic!("a channel"),
        }
    }

    fn telemetry() -> ObjectKey {
        ObjectKey::namespaced(Kind::Channel, "acme", "telemetry")
    }

    #[test]
    fn the_digest_depends_on_served_generations_not_on_versions() {
        let a = index_of(ACME);
        let mut b = Index::starting_at(9_000);
        b.apply(channel("telemetry", 1));
        for doc in manifest::read(ACME) {
            if let Document::Object(o) = doc.expect("valid") {
                b.apply(*o);
            }
        }
        b.commit();
        assert_ne!(a.snapshot().version(), b.snapshot().version());
        assert_eq!(view_digest(&a), view_digest(&b), "same objects, same view");
        b.apply(channel("telemetry", 2));
        b.commit();
        assert_ne!(
            view_digest(&a),
            view_digest(&b),
            "a new generation moves it"
        );
    }

    #[test]
    fn a_report_lists_what_its_slowest_dataplane_has_not_applied() {
        let mut idx = index_of(ACME);
        let first = idx.snapshot().version();
        let dataplanes = Dataplanes::new();
        assert!(
            report(&idx, &dataplanes).is_none(),
            "no dataplane, no report"
        );
        dataplanes.connected("dp-a", first);
        dataplanes.connected("dp-b", first);
        idx.apply(channel("orders", 1));
        idx.commit();
        dataplanes.acked("dp-a", idx.snapshot().version());
        let r = report(&idx, &dataplanes).expect("a report");
        assert_eq!(r.pending, vec!["Channel/acme/orders".to_owned()]);
        assert_eq!(r.dataplanes.len(), 2);
        assert!(!r.truncated);
        dataplanes.acked("dp-b", idx.snapshot().version());
        assert!(
            report(&idx, &dataplanes)
                .expect("a report")
                .pending
                .is_empty()
        );
    }

    #[test]
    fn the_leader_trusts_a_report_only_for_the_view_it_was_made_on() {
        let leader = index_of(ACME);
        let mut peer_idx = index_of(ACME);
        let dataplanes = Dataplanes::new();
        dataplanes.connected("dp-x", peer_idx.snapshot().version());
        let replicas = Replicas::new();
        let far = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(
            replicas.judge(&leader).enforces(&telemetry(), Some(1)),
            Remote::None
        );

        replicas.update(
            "op-1",
            report(&peer_idx, &dataplanes).expect("a report"),
            far,
        );
        let judge = replicas.judge(&leader);
        assert_eq!(judge.enforces(&telemetry(), Some(1)), Remote::Enforced);
        assert_eq!(
            judge.enforces(&telemetry(), Some(2)),
            Remote::Pending,
            "a newer generation than the peer applied"
        );

        // The peer sees generation 2 (a new record) first and its dataplane has not applied
        // it: pending.
        let mut leader2 = index_of(ACME);
        leader2.apply(channel("telemetry", 2));
        leader2.commit();
        peer_idx.apply(channel("telemetry", 2));
        peer_idx.commit();
        replicas.update(
            "op-1",
            report(&peer_idx, &dataplanes).expect("a report"),
            far,
        );
        assert_eq!(
            replicas.judge(&leader2).enforces(&telemetry(), Some(2)),
            Remote::Pending
        );
        // A view that differs teaches nothing: what was learnt on the last match stays.
        assert_eq!(
            replicas
                .judge(&leader)
                .enforces(&ObjectKey::tenant("acme"), Some(1)),
            Remote::Enforced
        );
        dataplanes.acked("dp-x", peer_idx.snapshot().version());
        replicas.update(
            "op-1",
            report(&peer_idx, &dataplanes).expect("a report"),
            far,
        );
        assert_eq!(
            replicas.judge(&leader2).enforces(&telemetry(), Some(2)),
            Remote::Enforced
        );
    }

    #[test]
    fn a_lagging_peer_view_enforces_nothing_new_and_expired_peers_are_dropped() {
        let leader = {
            let mut idx = index_of(ACME);
            idx.apply(channel("orders", 1));
            idx.commit();
            idx
        };
        let peer_idx = index_of(ACME); // has not seen `orders` yet
        let dataplanes = Dataplanes::new();
        dataplanes.connected("dp-x", peer_idx.snapshot().version());
        let replicas = Replicas::new();
        let now = SystemTime::now();
        replicas.update(
            "op-1",
            report(&peer_idx, &dataplanes).expect("a report"),
            now + Duration::from_secs(5),
        );
        let orders = ObjectKey::namespaced(Kind::Channel, "acme", "orders");
        assert_eq!(
            replicas.judge(&leader).enforces(&orders, Some(1)),
            Remote::Pending,
            "the peer's dataplane has applied nothing with `orders` in it"
        );
        let mut rx = replicas.subscribe();
        rx.mark_unchanged();
        assert_eq!(
            replicas.prune(now + Duration::from_secs(1)),
            Some(now + Duration::from_secs(5))
        );
        assert_eq!(replicas.prune(now + Duration::from_secs(6)), None);
        assert!(
            rx.has_changed().unwrap_or(false),
            "dropping a peer notifies"
        );
        assert_eq!(
            replicas.judge(&leader).enforces(&orders, Some(1)),
            Remote::None
        );
    }

    #[test]
    fn a_report_survives_json() {
        let r = Report {
            view: "ab".into(),
            dataplanes: vec![ReportedDataplane {
                node: "dp-a".into(),
                applied: 7,
                error: Some("version 7: bad".into()),
            }],
            pending: vec!["Thing/acme/t1".into()],
            truncated: false,
        };
        let text = serde_json::to_string(&r).expect("serializes");
        assert!(text.contains("\"applied\":7"), "{text}");
        assert_eq!(serde_json::from_str::<Report>(&text).expect("parses"), r);
    }
}
