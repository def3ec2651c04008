//! What the PolicySync server reads: the current version, the deltas between versions, the
//! snapshot, and a wake-up on each new version. The server knows nothing else of the index.

use std::sync::Arc;

use fleetward_policy::{Delta, Snapshot};
use tokio::sync::watch;

/// A versioned policy snapshot with the deltas between its versions.
///
/// Every method hands out owned values and `Arc` handles: a caller holds no lock of the source
/// once a method returns, so whatever it then does with them (encoding) never stalls the
/// source's writers.
pub trait PolicySource: Send + Sync {
    /// The current version: the one dataplanes are brought to.
    fn version(&self) -> u64;

    /// The current snapshot, at [`version`](Self::version) or (when a commit just landed)
    /// newer. It may copy the snapshot, so call it off the async runtime's threads.
    fn snapshot(&self) -> Arc<Snapshot>;

    /// The deltas that take version `from` to version `to`, oldest first: empty when they are
    /// equal, `None` when the source no longer keeps them (or never had `from` or `to`).
    fn deltas(&self, from: u64, to: u64) -> Option<Vec<Arc<Delta>>>;

    /// A receiver of the current version; it changes on every new version.
    fn subscribe(&self) -> watch::Receiver<u64>;
}
