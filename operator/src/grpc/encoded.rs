//! The full snapshot in its protobuf form, encoded once per version and shared by every stream
//! that needs it: as bytes, which the streams send as they are (`super::wire`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleetward_policy::Snapshot;
use fleetward_proto::convert::snapshot_to_proto;
use fleetward_proto::pb;
use prost::Message as _;
use tokio::sync::OnceCell;
use tonic::Status;

use crate::source::PolicySource;

/// Turns a snapshot into its protobuf form; tests put a slow one in its place.
pub(crate) type Encode = Arc<dyn Fn(&Snapshot) -> pb::FullSnapshot + Send + Sync>;

/// A snapshot's protobuf form: a `FullSnapshot` message's bytes.
#[derive(Debug)]
pub(crate) struct EncodedSnapshot {
    /// The snapshot's version.
    pub(crate) version: u64,
    pub(crate) bytes: Vec<u8>,
}

impl EncodedSnapshot {
    pub(crate) fn new(proto: &pb::FullSnapshot) -> Self {
        Self {
            version: proto.version,
            bytes: proto.encode_to_vec(),
        }
    }
}

/// The newest version's encoding, made by the first stream that asks for it; streams that ask
/// meanwhile wait for that one rather than encoding it again. It is kept until a newer version
/// is asked for, so dataplanes that connect one after another share it too.
pub(crate) struct EncodedSnapshots {
    encode: Encode,
    newest: Mutex<Option<Arc<Slot>>>,
    encodings: AtomicU64,
}

struct Slot {
    version: u64,
    encoded: OnceCell<Arc<EncodedSnapshot>>,
}

impl Default for EncodedSnapshots {
    fn default() -> Self {
        Self::new(Arc::new(snapshot_to_proto))
    }
}

impl EncodedSnapshots {
    pub(crate) fn new(encode: Encode) -> Self {
        Self {
            encode,
            newest: Mutex::new(None),
            encodings: AtomicU64::new(0),
        }
    }

    /// How many snapshots were encoded.
    #[cfg(test)]
    pub(crate) fn encodings(&self) -> u64 {
        self.encodings.load(Ordering::Relaxed)
    }

    /// The protobuf form of `source`'s snapshot at `version` or newer, encoded at most once per
    /// version.
    pub(crate) async fn get(
        &self,
        source: &Arc<dyn PolicySource>,
        version: u64,
    ) -> Result<Arc<EncodedSnapshot>, Status> {
        self.slot(version)
            .encoded
            .get_or_try_init(|| self.encode(source.clone(), version))
            .await
            .cloned()
    }

    /// The slot of `version`, or of a newer one another stream asked for already.
    fn slot(&self, version: u64) -> Arc<Slot> {
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        match &*newest {
            Some(slot) if slot.version >= version => slot.clone(),
            _ => {
                // The older encoding goes once the streams sending it are done with it.
                let slot = Arc::new(Slot {
                    version,
                    encoded: OnceCell::new(),
                });
                *newest = Some(slot.clone());
                slot
            }
        }
    }

    /// Takes the snapshot and encodes it on a blocking thread: both take time in proportion to
    /// the snapshot.
    async fn encode(
        &self,
        source: Arc<dyn PolicySource>,
        version: u64,
    ) -> Result<Arc<EncodedSnapshot>, Status> {
        let encodings = self.encodings.fetch_add(1, Ordering::Relaxed) + 1;
        let encode = self.encode.clone();
        tracing::debug!(version, encodings, "encoding the full policy snapshot");
        tokio::task::spawn_blocking(move || {
            let snapshot = source.snapshot();
            Arc::new(EncodedSnapshot::new(&encode(&snapshot)))
        })
        .await
        .map_err(|e| {
            tracing::error!(version, error = %e, "encoding the policy snapshot failed");
            Status::internal(format!(
                "encoding the policy snapshot at version {version} failed"
            ))
        })
    }
}
