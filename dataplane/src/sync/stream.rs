//! One PolicySync stream to one operator: Hello, then apply and answer every update.

use std::sync::Arc;

use fleetward_policy::Snapshot;
use fleetward_proto::convert::{delta_from_proto, snapshot_from_proto};
use fleetward_proto::pb;
use fleetward_proto::pb::dataplane_message::Message as Out;
use fleetward_proto::pb::policy_sync_client::PolicySyncClient;
use fleetward_proto::pb::update::Payload;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status};

use super::Stored;
use super::client_config::SyncConfig;
use super::status::{SyncStatus, now_ms};

pub(super) struct Session<'a> {
    pub(super) config: &'a SyncConfig,
    pub(super) url: &'a str,
    pub(super) status: &'a SyncStatus,
    pub(super) snapshot: &'a watch::Sender<Arc<Snapshot>>,
    pub(super) stored: &'a watch::Sender<Option<Stored>>,
}

impl Session<'_> {
    /// Runs one stream until it ends; returns whether any update arrived on it.
    pub(super) async fn run(&self, endpoint: Endpoint) -> bool {
        let url = self.url;
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%url, error = %error_chain(&e), "cannot reach the operator");
                self.status
                    .set_error(format!("cannot reach the operator at {url}: {e}"));
                return false;
            }
        };
        let auth = match self.config.token.as_deref().map(bearer).transpose() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "the PolicySync token cannot be sent");
                self.status.set_error(e);
                return false;
            }
        };
        let mut client = PolicySyncClient::with_interceptor(channel, move |mut r: Request<()>| {
            if let Some(a) = &auth {
                r.metadata_mut().insert("authorization", a.clone());
            }
            Ok(r)
        })
        .max_decoding_message_size(self.config.max_message_size)
        .max_encoding_message_size(self.config.max_message_size);

        let (tx, rx) = mpsc::channel(4);
        let (version, lineage) = match &*self.stored.borrow() {
            Some(s) => (s.snapshot.version(), s.lineage.clone()),
            None => (0, String::new()),
        };
        let hello = pb::Hello {
            node_id: self.config.node_id.clone(),
            version,
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            lineage,
        };
        if tx.send(message(Out::Hello(hello))).await.is_err() {
            return false;
        }
        let mut inbound = match client.sync(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.failed(&status);
                return false;
            }
        };
        self.status.connected();
        tracing::info!(%url, version, "connected to the operator");
        let mut got_updates = false;
        loop {
            match inbound.message().await {
                Ok(Some(pb::OperatorMessage {
                    message: Some(pb::operator_message::Message::Update(update)),
                })) => {
                    got_updates = true;
                    let answer = self.apply(update);
                    if tx.send(message(answer)).await.is_err() {
                        break;
                    }
                }
                Ok(Some(_)) => {} // a message kind of a newer release
                Ok(None) => {
                    tracing::info!(%url, "the operator ended the stream");
                    break;
                }
                Err(status) => {
                    self.failed(&status);
                    break;
                }
            }
        }
        self.status.disconnected();
        got_updates
    }

    fn failed(&self, status: &Status) {
        let url = self.url;
        let advice = match status.code() {
            Code::Unauthenticated => "; check the PolicySync token on the operator and here",
            Code::ResourceExhausted | Code::OutOfRange => {
                "; raise the PolicySync message size cap on the operator and every dataplane"
            }
            _ => "",
        };
        let text = format!(
            "PolicySync with {url} failed: {}: {}{advice}",
            status.code(),
            status.message()
        );
        tracing::warn!("{text}");
        self.status.set_error(text);
    }

    /// Applies an update to a copy of the snapshot (O(1), then O(delta · log n)); on success
    /// publishes and persists it and ACKs, else NACKs and keeps the old snapshot.
    fn apply(&self, update: pb::Update) -> Out {
        let (version, nonce) = (update.version, update.nonce);
        match self.build(update) {
            Ok((next, full, lineage)) => {
                let at = now_ms();
                if let Some(next) = next {
                    let next = Arc::new(super::engines::attach(next));
                    // Compute first: the borrow must end before `send_replace` takes the lock.
                    let published = monotonic(&self.snapshot.borrow(), &next);
                    self.snapshot.send_replace(published);
                    self.stored.send_replace(Some(Stored {
                        snapshot: next,
                        lineage,
                        updated_unix_ms: at,
                    }));
                }
                self.status.applied(version, full, at);
                tracing::debug!(version, full, "applied a policy update");
                Out::Ack(pb::Ack { version, nonce })
            }
            Err(error) => {
                tracing::warn!(version, %error, "refused a policy update; keeping the snapshot");
                self.status
                    .refused(format!("update to version {version}: {error}"));
                Out::Nack(pb::Nack {
                    version,
                    nonce,
                    error,
                })
            }
        }
    }

    /// The snapshot after `update` (`None` when it confirms the current one), whether it was a
    /// full snapshot, and its lineage.
    fn build(&self, update: pb::Update) -> Result<(Option<Snapshot>, bool, String), String> {
        let version = update.version;
        match update.payload {
            Some(Payload::Snapshot(s)) => {
                if s.version != version {
                    return Err(format!(
                        "the full snapshot says version {} but the update {version}",
                        s.version
                    ));
                }
                let next = snapshot_from_proto(s).map_err(|e| e.to_string())?;
                Ok((Some(next), true, update.lineage))
            }
            Some(Payload::Deltas(batch)) => {
                let stored = self.stored.borrow();
                let (current, lineage) = match &*stored {
                    Some(s) => (s.snapshot.clone(), s.lineage.as_str()),
                    None => return Err("a delta arrived but there is no snapshot to apply it to; send a full snapshot".into()),
                };
                if lineage != update.lineage {
                    return Err(format!(
                        "the deltas count in lineage {:?} but the snapshot in {lineage:?}; send a full snapshot",
                        update.lineage
                    ));
                }
                if update.from_version != current.version() {
                    return Err(format!(
                        "the deltas apply to version {} but the snapshot is at version {}; \
                         send a full snapshot",
                        update.from_version,
                        current.version()
                    ));
                }
                if batch.deltas.is_empty() {
                    if version != current.version() {
                        return Err(format!(
                            "an empty delta batch cannot move version {} to {version}",
                            current.version()
                        ));
                    }
                    return Ok((None, false, update.lineage));
                }
                let mut next = Snapshot::clone(&current);
                drop(stored);
                for d in batch.deltas {
                    let delta = delta_from_proto(d).map_err(|e| e.to_string())?;
                    next.apply(&delta).map_err(|e| e.to_string())?;
                }
                if next.version() != version {
                    return Err(format!(
                        "the deltas end at version {} but the update says {version}",
                        next.version()
                    ));
                }
                Ok((Some(next), false, update.lineage))
            }
            None => Err(
                "an update without a payload; this dataplane may be older than the operator".into(),
            ),
        }
    }
}

fn message(m: Out) -> pb::DataplaneMessage {
    pb::DataplaneMessage { message: Some(m) }
}

fn bearer(token: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| "the PolicySync token must be printable ASCII".to_owned())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// The snapshot to publish to the evaluator: `next` itself, unless its version does not move
/// past the published one (another operator replica numbers its versions on its own). Then a
/// copy (O(1): it shares its tables) with the next local version: the sessions' publish memos
/// and delivery gates take an equal version for the same policy, so a version seen before
/// must never come back with another one. (The decision cache keys answers by tenant version,
/// which the operator's numbering does not touch.)
fn monotonic(published: &Arc<Snapshot>, next: &Arc<Snapshot>) -> Arc<Snapshot> {
    if next.version() > published.version() {
        return next.clone();
    }
    let mut renumbered = Snapshot::clone(next);
    renumbered.set_version(published.version() + 1);
    // The engine was built for the old number; one of another version is never asked.
    Arc::new(super::engines::attach(renumbered))
}
