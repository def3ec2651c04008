//! One dataplane's PolicySync stream: what it has, what was sent, and its ACKs and NACKs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetward_proto::convert::delta_to_proto;
use fleetward_proto::pb;
use fleetward_proto::pb::dataplane_message::Message as In;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::encoded::{EncodedSnapshot, EncodedSnapshots};
use super::wire::Outgoing;
use crate::dataplanes::Dataplanes;
use crate::source::PolicySource;

/// What every session of one server shares.
pub(crate) struct SessionContext {
    pub(crate) source: Arc<dyn PolicySource>,
    /// The newest full snapshot's protobuf form, shared by the streams that send it.
    pub(crate) snapshots: EncodedSnapshots,
    pub(crate) dataplanes: Arc<Dataplanes>,
    pub(crate) lineage: String,
    pub(crate) max_message_size: usize,
    pub(crate) hello_timeout: Duration,
    pub(crate) drain: watch::Receiver<bool>,
    /// The newest session of each node id: an older stream of a restarted dataplane must not
    /// unregister or ACK for the new one.
    pub(crate) active: Mutex<HashMap<String, u64>>,
    pub(crate) next_session: AtomicU64,
}

impl SessionContext {
    fn is_active(&self, node: &str, id: u64) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            == Some(&id)
    }
}

/// Waits for the stream's first message, which must be a Hello with a node id.
pub(crate) async fn read_hello(
    inbound: &mut Streaming<pb::DataplaneMessage>,
    timeout: Duration,
) -> Result<pb::Hello, Status> {
    let first = tokio::time::timeout(timeout, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no Hello within the hello timeout"))??;
    match first.and_then(|m| m.message) {
        Some(In::Hello(h)) if !h.node_id.is_empty() => Ok(h),
        Some(In::Hello(_)) => Err(Status::invalid_argument(
            "Hello has an empty node_id; give every dataplane a node id (its pod name)",
        )),
        _ => Err(Status::invalid_argument(
            "the first message of a PolicySync stream must be Hello",
        )),
    }
}

/// The update on the wire that the dataplane has not answered yet.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    nonce: u64,
    version: u64,
    full: bool,
}

/// One stream. Sends at most one update at a time and waits for its answer, so every ACK
/// names the newest update and the registry follows the dataplane closely.
pub(crate) struct Session {
    shared: Arc<SessionContext>,
    id: u64,
    node: String,
    peer: Option<SocketAddr>,
    tx: mpsc::Sender<Result<Outgoing, Status>>,
    published: watch::Receiver<u64>,
    /// The version the dataplane has (or will have once it applies what is in flight), in our
    /// lineage; `None` when only a full snapshot can bring it up to date.
    base: Option<u64>,
    nonce: u64,
    in_flight: Option<InFlight>,
    /// Send as soon as nothing is in flight, without waiting for a new version.
    pending: bool,
    /// The next update is sent even when the dataplane is already current, to confirm it.
    confirm: bool,
}

impl Session {
    /// Registers the dataplane and prepares its first update.
    pub(crate) fn start(
        shared: Arc<SessionContext>,
        hello: pb::Hello,
        peer: Option<SocketAddr>,
        tx: mpsc::Sender<Result<Outgoing, Status>>,
    ) -> Self {
        let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let same_lineage = !hello.lineage.is_empty() && hello.lineage == shared.lineage;
        let base = same_lineage.then_some(hello.version);
        shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hello.node_id.clone(), id);
        // A version of another lineage says nothing about what this index has enforced.
        if hello.version == 0 {
            shared.dataplanes.connected_empty(&hello.node_id);
        } else {
            shared
                .dataplanes
                .connected(&hello.node_id, base.unwrap_or(0));
        }
        tracing::info!(
            node = %hello.node_id,
            ?peer,
            version = hello.version,
            same_lineage,
            software = %hello.software_version,
            "dataplane connected"
        );
        let published = shared.source.subscribe();
        Self {
            shared,
            id,
            node: hello.node_id,
            peer,
            tx,
            published,
            base,
            nonce: 0,
            in_flight: None,
            pending: true,
            confirm: true,
        }
    }

    /// Serves the stream until the dataplane goes, the server drains, or an update is refused.
    pub(crate) async fn run(mut self, mut inbound: Streaming<pb::DataplaneMessage>) {
        let mut drain = self.shared.drain.clone();
        let end = loop {
            if self.pending && self.in_flight.is_none() {
                self.pending = false;
                if let Err(status) = self.send_next().await {
                    break Some(status);
                }
            }
            tokio::select! {
                _ = drain.wait_for(|d| *d) => break None,
                () = self.tx.closed() => break None,
                changed = self.published.changed(), if self.in_flight.is_none() => {
                    if changed.is_err() {
                        break None;
                    }
                    self.pending = true;
                }
                message = inbound.message() => match message {
                    Ok(Some(m)) => self.answer(m),
                    Ok(None) => break None,
                    Err(status) => {
                        tracing::info!(node = %self.node, %status, "PolicySync stream failed");
                        break None;
                    }
                },
            }
        };
        if let Some(status) = end {
            let _ = self.tx.send(Err(status)).await;
        }
        let mut active = self.shared.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.get(&self.node) == Some(&self.id) {
            active.remove(&self.node);
            self.shared.dataplanes.disconnected(&self.node);
        }
        tracing::info!(node = %self.node, peer = ?self.peer, "dataplane disconnected");
    }

    fn answer(&mut self, message: pb::DataplaneMessage) {
        let (version, nonce, error) = match message.message {
            Some(In::Ack(a)) => (a.version, a.nonce, None),
            Some(In::Nack(n)) => (n.version, n.nonce, Some(n.error)),
            Some(In::Hello(_)) => {
                tracing::warn!(node = %self.node, "ignoring a second Hello on one stream");
                return;
            }
            None => return, // a message kind of a newer release
        };
        let Some(sent) = self
            .in_flight
            .filter(|f| f.nonce == nonce && f.version == version)
        else {
            tracing::debug!(node = %self.node, version, nonce, "ignoring an answer to a superseded update");
            return;
        };
        self.in_flight = None;
        let active = self.shared.is_active(&self.node, self.id);
        match error {
            None => {
                if active {
                    self.shared.dataplanes.acked(&self.node, version);
                }
                tracing::debug!(node = %self.node, version, "dataplane applied");
            }
            Some(error) => {
                tracing::warn!(node = %self.node, version, %error, full = sent.full, "dataplane refused an update");
                if active {
                    self.shared.dataplanes.nacked(&self.node, version, &error);
                }
                self.base = None;
                // A refused delta is recovered by a full snapshot now; a refused full snapshot
                // would be refused again, so the next one waits for a new version.
                self.pending = !sent.full;
            }
        }
    }

    async fn send_next(&mut self) -> Result<(), Status> {
        let Some(outgoing) = self.next_update().await? else {
            return Ok(());
        };
        let full = outgoing.snapshot.is_some();
        let version = outgoing.update.version;
        let nonce = outgoing.update.nonce;
        if self.tx.send(Ok(outgoing)).await.is_err() {
            return Ok(()); // the stream is gone; the loop notices
        }
        tracing::debug!(node = %self.node, version, nonce, full, "sent an update");
        self.base = Some(version);
        self.in_flight = Some(InFlight {
            nonce,
            version,
            full,
        });
        Ok(())
    }

    /// The update that brings the dataplane to the current version, if it needs one; a delta
    /// batch over the size cap falls back to a full snapshot, a full snapshot over it is an error.
    /// Encodes with no lock of the source held: the source hands out `Arc`s.
    async fn next_update(&mut self) -> Result<Option<Outgoing>, Status> {
        let current = *self.published.borrow_and_update();
        let confirm = std::mem::take(&mut self.confirm);
        let deltas = match self.base {
            Some(base) if base == current && !confirm => return Ok(None),
            Some(base) => self.shared.source.deltas(base, current).map(|d| (base, d)),
            None => None,
        };
        self.nonce += 1;
        let mut update = pb::Update {
            version: current,
            nonce: self.nonce,
            from_version: self.base.unwrap_or(0),
            payload: None,
            lineage: self.shared.lineage.clone(),
        };
        if let Some((base, deltas)) = deltas {
            update.from_version = base;
            update.payload = Some(pb::update::Payload::Deltas(pb::DeltaBatch {
                deltas: deltas.iter().map(|d| delta_to_proto(d)).collect(),
            }));
            if wire_len(&update) <= self.shared.max_message_size {
                return Ok(Some(Outgoing {
                    update,
                    snapshot: None,
                }));
            }
            update.payload = None;
        }
        let encoded = self
            .shared
            .snapshots
            .get(&self.shared.source, current)
            .await?;
        // A commit may have landed meanwhile: the snapshot can be newer than `current`.
        update.version = encoded.version;
        self.with_full_snapshot(update, encoded).map(Some)
    }

    /// `update` carrying the full snapshot, when it fits under the size cap.
    fn with_full_snapshot(
        &self,
        update: pb::Update,
        snapshot: Arc<EncodedSnapshot>,
    ) -> Result<Outgoing, Status> {
        let size = full_wire_len(&update, snapshot.bytes.len());
        if size <= self.shared.max_message_size {
            // Every stream sends the same shared bytes.
            return Ok(Outgoing {
                update,
                snapshot: Some(snapshot),
            });
        }
        let version = update.version;
        tracing::error!(
            node = %self.node,
            version,
            size,
            cap = self.shared.max_message_size,
            "the policy snapshot is over the PolicySync message size cap; raise the cap on the \
             operator and on every dataplane"
        );
        Err(Status::resource_exhausted(format!(
            "the policy snapshot at version {version} is {size} bytes, over the PolicySync \
             message size cap of {} bytes; raise the cap on the operator and on every dataplane",
            self.shared.max_message_size
        )))
    }
}

/// The encoded size of the OperatorMessage carrying `update`.
fn wire_len(update: &pb::Update) -> usize {
    message_len(update.encoded_len())
}

/// The encoded size of the OperatorMessage carrying `update` (without a payload yet) with a
/// full snapshot of `snapshot_len` bytes.
pub(crate) fn full_wire_len(update: &pb::Update, snapshot_len: usize) -> usize {
    // Field 4 of Update: a one-byte tag, the length prefix, the snapshot.
    let payload = 1 + prost::length_delimiter_len(snapshot_len) + snapshot_len;
    message_len(update.encoded_len() + payload)
}

/// The size of an OperatorMessage around an Update of `update_len` bytes: the oneof field's
/// tag and length prefix, then the update.
fn message_len(update_len: usize) -> usize {
    1 + prost::length_delimiter_len(update_len) + update_len
}
