//! Persistent sessions that any pod resumes (MQTT.md, "Persistent sessions across pods").
//!
//! On a pod with `--nats` and JetStream, a persistent session keeps no state in the pod:
//! - its record (the subscriptions as the client made them, the expiry, when it ended) is in
//!   the KV bucket `fleetward-sessions`, keyed by a hash of the session key (subject and
//!   client id);
//! - its QoS 1/2 deliveries come from a durable consumer on its tenant's stream (`queue.rs`,
//!   the stream is filled by `bus/durable.rs`), acknowledged to JetStream when the client
//!   acknowledges them, so what was not acknowledged is delivered again, with DUP, wherever
//!   the session resumes;
//! - a CONNECT announces its session key on NATS, and the pod holding a live session with that
//!   key ends it (v5 0x8E) and drops a will it was waiting to send.
//!
//! QoS 0 deliveries, and every clean session, stay on the router's fast path.

mod link;
mod queue;
mod wills;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::OnceCell;

pub(crate) use self::link::{DurableLink, Seen};
pub(crate) use self::queue::{Delivery, DurableQueue};
pub(crate) use self::wills::StoredWill;
use crate::bus::DurableConfig;

/// The KV bucket of session records.
pub(crate) const BUCKET: &str = "fleetward-sessions";
/// Where pods announce a CONNECT's session key.
const TAKEOVER_SUBJECT: &str = "fleetward.sessions.takeover";

/// One subscription as the client made it, replayed (and authorized again) on resume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordedSub {
    /// The filter as the client sent it, `$share/<group>/` included.
    pub(crate) path: String,
    /// The QoS the client asked for.
    pub(crate) qos: u8,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    pub(crate) id: Option<usize>,
    pub(crate) metadata: bool,
}

/// A persistent session's record in the bucket.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// The router-side session id, to tell a hash collision apart.
    pub(crate) id: String,
    /// By full filter.
    pub(crate) subs: BTreeMap<String, RecordedSub>,
    pub(crate) expiry_secs: u64,
    /// When its last connection ended (ms since the epoch); `None` while connected.
    pub(crate) ended_ms: Option<u64>,
    /// The pod that wrote it last.
    pub(crate) pod: String,
}

impl SessionRecord {
    /// Whether its expiry has passed since its connection ended.
    fn expired(&self, now_ms: u64) -> bool {
        self.ended_ms
            .is_some_and(|ended| now_ms.saturating_sub(ended) >= self.expiry_secs * 1000)
    }
}

fn now_ms() -> u64 {
    crate::router::now_ns() / 1_000_000
}

/// The hash naming a session in the bucket and its consumer.
fn session_hash(id: &str) -> String {
    let digest = sha2::Sha256::digest(id.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The pod's handle on durable sessions.
pub(crate) struct DurableSessions {
    client: async_nats::Client,
    js: jetstream::Context,
    node_id: String,
    config: DurableConfig,
    /// The consumers' cap on unacknowledged deliveries: the pod's in-flight window.
    max_inflight: u16,
    kv: OnceCell<kv::Store>,
    wills_kv: OnceCell<kv::Store>,
    /// Wills waiting in the bucket per tenant (`wills.rs`).
    wills_per_tenant: parking_lot::Mutex<HashMap<String, usize>>,
    /// The channels persistent sessions follow, fed from the records (`follow_records`).
    pub(crate) interest: Option<Arc<crate::bus::durable::DurableInterest>>,
}

impl DurableSessions {
    pub(crate) fn new(
        client: async_nats::Client,
        node_id: String,
        config: DurableConfig,
        max_inflight: u16,
    ) -> Self {
        Self {
            js: jetstream::new(client.clone()),
            client,
            node_id,
            config,
            max_inflight,
            kv: OnceCell::new(),
            wills_kv: OnceCell::new(),
            wills_per_tenant: parking_lot::Mutex::default(),
            interest: None,
        }
    }

    /// Feeds `interest` from the session records (`follow_records`).
    pub(crate) fn with_interest(
        mut self,
        interest: Option<Arc<crate::bus::durable::DurableInterest>>,
    ) -> Self {
        self.interest = interest;
        self
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    async fn bucket(&self) -> Result<&kv::Store, String> {
        open_bucket(
            &self.js,
            &self.kv,
            BUCKET,
            "Fleetward persistent sessions, by session hash",
        )
        .await
    }

    /// The session's record and its revision, unless there is none or it expired (an expired
    /// one is deleted, with its consumer).
    pub(crate) async fn load(&self, id: &str, tenant: &str) -> Option<(SessionRecord, u64)> {
        let bucket = self.bucket().await.ok()?;
        let key = format!("s.{}", session_hash(id));
        let entry = match bucket.entry(&key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "could not read a persistent session's record");
                return None;
            }
        };
        let record: SessionRecord = match serde_json::from_slice(&entry.value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable persistent session record; starting anew");
                return None;
            }
        };
        if record.id != id {
            return None;
        }
        if record.expired(now_ms()) {
            self.drop_session(id, tenant).await;
            return None;
        }
        Some((record, entry.revision))
    }

    /// Writes the record; its new revision.
    pub(crate) async fn save(&self, record: &SessionRecord) -> Option<u64> {
        let bucket = self.bucket().await.ok()?;
        let value = serde_json::to_vec(record).ok()?;
        let key = format!("s.{}", session_hash(&record.id));
        match bucket.put(&key, value.into()).await {
            Ok(revision) => Some(revision),
            Err(e) => {
                tracing::warn!(error = %e, "could not store a persistent session's record");
                None
            }
        }
    }

    /// Writes the record only if no one wrote it since `revision` (a successor on another pod
    /// owns it then); whether it was written.
    pub(crate) async fn save_if(&self, record: &SessionRecord, revision: u64) -> Option<u64> {
        let bucket = self.bucket().await.ok()?;
        let value = serde_json::to_vec(record).ok()?;
        let key = format!("s.{}", session_hash(&record.id));
        bucket.update(&key, value.into(), revision).await.ok()
    }

    /// Drops a session: its record and its consumer (its queue).
    pub(crate) async fn drop_session(&self, id: &str, tenant: &str) {
        if let Ok(bucket) = self.bucket().await {
            let _ = bucket.delete(format!("s.{}", session_hash(id))).await;
        }
        if let Ok(stream) = self
            .js
            .get_stream(crate::bus::durable::stream_name(tenant))
            .await
        {
            let _ = stream.delete_consumer(&consumer_name(id)).await;
        }
    }

    /// Drops the session when its expiry ends, unless it was written since `revision` (resumed,
    /// on this pod or another).
    pub(crate) fn expire_later(
        self: &Arc<Self>,
        id: String,
        tenant: String,
        revision: u64,
        after: Duration,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Ok(bucket) = this.bucket().await else {
                return;
            };
            let key = format!("s.{}", session_hash(&id));
            let current = bucket.entry(&key).await.ok().flatten();
            if current.is_some_and(|e| e.revision == revision) {
                this.drop_session(&id, &tenant).await;
            }
        });
    }

    /// Opens the session's queue: its consumer made or taken over with `filters` (bus
    /// subjects, `m.…`). On resume, deliveries the client had not acknowledged come again
    /// first, marked DUP.
    pub(crate) async fn open_queue(
        &self,
        id: &str,
        tenant: &str,
        filters: Vec<String>,
        expiry: Duration,
        resume: bool,
    ) -> Result<DurableQueue, String> {
        let stream = self
            .js
            .get_or_create_stream(crate::bus::durable::stream_config(tenant, &self.config))
            .await
            .map_err(|e| format!("opening the tenant's durable stream: {e}"))?;
        queue::open(
            queue::Opening {
                client: self.client.clone(),
                stream,
                name: consumer_name(id),
                tenant: tenant.to_owned(),
                node_id: self.node_id.clone(),
                max_ack_pending: self.max_inflight,
                expiry,
            },
            filters,
            resume,
        )
        .await
    }

    /// Tells the other pods a CONNECT with this session key arrived (now). Not while NATS is
    /// away (no pod would hear it), and never holding the CONNECT up for long.
    pub(crate) async fn announce_takeover(&self, id: &str) {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return;
        }
        let payload = format!("{}\n{}\n{id}", self.node_id, crate::router::now_ns());
        let publish = self
            .client
            .publish(TAKEOVER_SUBJECT, payload.into_bytes().into());
        match tokio::time::timeout(Duration::from_millis(250), publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not announce a session takeover to the other pods");
            }
            Err(_) => tracing::warn!("announcing a session takeover took over 250 ms; went on"),
        }
    }

    /// Ends local sessions that a CONNECT on another pod takes over, through `kick` (given the
    /// session id and when that CONNECT came), for as long as the pod runs.
    pub(crate) fn follow_takeovers(
        self: &Arc<Self>,
        kick: impl Fn(&str, u64) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match this.client.subscribe(TAKEOVER_SUBJECT).await {
                    Ok(mut sub) => {
                        while let Some(msg) = sub.next().await {
                            let text = String::from_utf8_lossy(&msg.payload);
                            let mut parts = text.splitn(3, '\n');
                            if let (Some(node), Some(at), Some(id)) =
                                (parts.next(), parts.next(), parts.next())
                                && node != this.node_id
                                && let Ok(at) = at.parse::<u64>()
                            {
                                kick(id, at);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not follow session takeovers"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }
}

impl DurableSessions {
    /// Feeds `interest` the channels persistent sessions subscribe to at QoS 1/2, from every
    /// session record, for as long as the pod runs: only those channels' messages are stored.
    pub(crate) fn follow_records(
        self: &Arc<Self>,
        interest: Arc<crate::bus::durable::DurableInterest>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                // Counted from this watch only; what an interrupted one counted goes first.
                let mut by_key: HashMap<String, BTreeSet<String>> = HashMap::new();
                if let Err(e) = this.watch_records(&interest, &mut by_key).await {
                    tracing::debug!(error = %e, "the session record watch broke; reopening");
                }
                for (_, prefixes) in by_key.drain() {
                    interest.count(&prefixes, -1);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    async fn watch_records(
        &self,
        interest: &crate::bus::durable::DurableInterest,
        by_key: &mut HashMap<String, BTreeSet<String>>,
    ) -> Result<(), String> {
        let bucket = self.bucket().await?;
        let mut watch = bucket
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        // An empty bucket replays nothing: every record (none) is read.
        if bucket.status().await.is_ok_and(|s| s.values() == 0) {
            interest.synced();
        }
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            let prefixes: BTreeSet<String> = match entry.operation {
                kv::Operation::Put => serde_json::from_slice::<SessionRecord>(&entry.value)
                    .map(|r| {
                        r.subs
                            .iter()
                            .filter(|(_, s)| s.qos > 0)
                            .filter_map(|(full, _)| {
                                crate::bus::durable::channel_prefix(full.as_bytes())
                            })
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
                kv::Operation::Delete | kv::Operation::Purge => BTreeSet::new(),
            };
            interest.count(&prefixes, 1);
            if let Some(old) = by_key.insert(entry.key, prefixes) {
                interest.count(&old, -1);
            }
            if entry.delta == 0 {
                interest.synced();
            }
        }
        Ok(())
    }
}

/// A KV bucket of the pod's, opened (or made) once and kept in `cell`; an attempt that failed
/// (NATS away) is made again by the next caller.
async fn open_bucket<'a>(
    js: &jetstream::Context,
    cell: &'a OnceCell<kv::Store>,
    name: &str,
    description: &str,
) -> Result<&'a kv::Store, String> {
    cell.get_or_try_init(|| async {
        match js.get_key_value(name).await {
            Ok(store) => Ok(store),
            Err(_) => crate::bus::nats::create_bucket(js, name, description, Duration::ZERO).await,
        }
    })
    .await
}

/// A session's consumer name.
fn consumer_name(id: &str) -> String {
    format!("s-{}", session_hash(id))
}

/// When a session record says its connection ended: now.
pub(crate) fn ended_now() -> Option<u64> {
    Some(now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_expires_once_its_expiry_has_passed_since_it_ended() {
        let mut r = SessionRecord {
            expiry_secs: 10,
            ..Default::default()
        };
        assert!(!r.expired(1_000_000), "connected: never expired");
        r.ended_ms = Some(1_000_000);
        assert!(!r.expired(1_009_999));
        assert!(r.expired(1_010_000));
    }

    #[test]
    fn session_hashes_are_fixed_and_fit_kv_keys_and_consumer_names() {
        let h = session_hash("acme:thing:dev-1:c1");
        assert_eq!(h.len(), 32);
        assert_eq!(h, session_hash("acme:thing:dev-1:c1"));
        assert_ne!(h, session_hash("acme:thing:dev-1:c2"));
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
