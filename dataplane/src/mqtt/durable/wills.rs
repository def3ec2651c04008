//! Wills of persistent sessions waiting out their delay, kept in JetStream so that exactly one
//! pod sends each, whichever pods come and go (MQTT.md, "Persistent sessions across pods").
//!
//! A waiting will is a key of the KV bucket `fleetward-wills` (`w.<session hash>`): when it is
//! due, whose it is, and its message. Every pod watches the bucket and, when a will is due,
//! claims it by deleting its key at the revision it saw; the one whose delete succeeds sends
//! it. A CONNECT with the session's key deletes it (the will is cancelled); so does its
//! session's end, which sends it then.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use base64::Engine as _;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::{DurableSessions, now_ms, session_hash};
use crate::bus::bus_message;
use crate::router::Message;

/// The KV bucket of waiting wills.
pub(crate) const WILLS_BUCKET: &str = "fleetward-wills";

/// A will as the bucket keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredWill {
    /// The router-side session id.
    pub(crate) id: String,
    pub(crate) tenant: String,
    /// `thing` or `user`.
    pub(crate) kind: String,
    pub(crate) name: String,
    /// A user's token epoch when it connected: a later one refuses the will.
    pub(crate) token_epoch: Option<u64>,
    pub(crate) due_ms: u64,
    pub(crate) retain: bool,
    /// The message, as the bus encodes it, in base64.
    message: String,
}

impl StoredWill {
    pub(crate) fn new(
        id: String,
        subject: &fleetward_policy::Subject,
        message: &Message,
        retain: bool,
        due_ms: u64,
    ) -> Option<Self> {
        let bytes = bus_message::encode(message, "", 0)?;
        Some(Self {
            id,
            tenant: subject.tenant.clone(),
            kind: match subject.kind {
                fleetward_policy::SubjectKind::Thing => "thing".to_owned(),
                fleetward_policy::SubjectKind::User => "user".to_owned(),
            },
            name: subject.name.clone(),
            token_epoch: subject.token_epoch,
            due_ms,
            retain,
            message: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    }

    /// The subject it is published for.
    pub(crate) fn subject(&self) -> fleetward_policy::Subject {
        let kind = if self.kind == "user" {
            fleetward_policy::SubjectKind::User
        } else {
            fleetward_policy::SubjectKind::Thing
        };
        fleetward_policy::Subject {
            tenant: self.tenant.clone(),
            kind,
            name: self.name.clone(),
            token_epoch: self.token_epoch,
            certificate: None,
        }
    }

    /// Its message; `None` if it cannot be decoded (or expired meanwhile).
    pub(crate) fn message(&self) -> Option<Message> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.message)
            .ok()?;
        bus_message::decode(&bytes).ok()?.map(|r| r.message)
    }
}

fn will_key(id: &str) -> String {
    format!("w.{}", session_hash(id))
}

impl DurableSessions {
    async fn wills(&self) -> Result<&kv::Store, String> {
        super::open_bucket(
            &self.js,
            &self.wills_kv,
            WILLS_BUCKET,
            "Fleetward wills waiting out their delay, by session hash",
        )
        .await
    }

    /// Keeps a will until it is due; whether it was kept (else it is to be sent now).
    pub(crate) async fn keep_will(&self, will: &StoredWill) -> bool {
        let Ok(bucket) = self.wills().await else {
            return false;
        };
        let Ok(value) = serde_json::to_vec(will) else {
            return false;
        };
        bucket.put(will_key(&will.id), value.into()).await.is_ok()
    }

    /// Wills of `tenant` waiting in the bucket, as this pod's watch has seen them: a tenant has
    /// at most `--max-pending-wills-per-tenant` across the cluster (MQTT.md, Wills).
    pub(crate) fn wills_waiting(&self, tenant: &str) -> usize {
        self.wills_per_tenant
            .lock()
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    fn count_will(&self, tenant: &str, delta: isize) {
        let mut counts = self.wills_per_tenant.lock();
        let n = counts.entry(tenant.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            counts.remove(tenant);
        }
    }

    /// Cancels the will the session with `id` left waiting, if any: it connected again.
    pub(crate) async fn cancel_will(&self, id: &str) {
        if let Ok(bucket) = self.wills().await {
            let _ = bucket.delete(will_key(id)).await;
        }
    }

    /// Sends each will when it is due, through `send`, on whichever pod claims it first; for
    /// as long as the pod runs.
    pub(crate) fn follow_wills(
        self: &Arc<Self>,
        send: impl Fn(StoredWill) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.watch_wills(&send).await {
                    tracing::debug!(error = %e, "the will watch broke; reopening");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    async fn watch_wills(&self, send: &impl Fn(StoredWill)) -> Result<(), String> {
        let bucket = self.wills().await?;
        let mut watch = bucket
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        // By key: when due, the revision seen and whose tenant; and in due order. The tenants'
        // counts start again with the watch, which replays every will.
        let mut waiting: HashMap<String, (u64, u64, String)> = HashMap::new();
        self.wills_per_tenant.lock().clear();
        let mut order: BTreeSet<(u64, String)> = BTreeSet::new();
        loop {
            let next_due = order.first().map(|(due, _)| *due);
            let sleep = match next_due {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                entry = watch.next() => {
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Ok(()),
                    };
                    if let Some((due, _, tenant)) = waiting.remove(&entry.key) {
                        order.remove(&(due, entry.key.clone()));
                        self.count_will(&tenant, -1);
                    }
                    if entry.operation == kv::Operation::Put
                        && let Ok(will) = serde_json::from_slice::<StoredWill>(&entry.value)
                    {
                        order.insert((will.due_ms, entry.key.clone()));
                        self.count_will(&will.tenant, 1);
                        waiting.insert(entry.key, (will.due_ms, entry.revision, will.tenant));
                    }
                }
                () = tokio::time::sleep(sleep), if next_due.is_some() => {
                    let Some((_, key)) = order.pop_first() else { continue };
                    let Some((_, revision, tenant)) = waiting.remove(&key) else { continue };
                    self.count_will(&tenant, -1);
                    if let Some(will) = claim(bucket, &key, revision).await {
                        send(will);
                    }
                }
            }
        }
    }
}

/// The will under `key` if this pod deleted it at `revision`: no other pod sends it then.
async fn claim(bucket: &kv::Store, key: &str, revision: u64) -> Option<StoredWill> {
    let entry = bucket.entry(key).await.ok()??;
    if entry.revision != revision || entry.operation != kv::Operation::Put {
        return None;
    }
    let will: StoredWill = serde_json::from_slice(&entry.value).ok()?;
    bucket
        .delete_expect_revision(key, Some(revision))
        .await
        .ok()?;
    Some(will)
}
