//! The seam for external authorization engines: a tenant whose `engine` is not the built-in one
//! is decided by a [`TenantEngine`] attached to the [`Snapshot`].
//!
//! The snapshot stays the one [`PolicyEvaluator`] the dataplane and its decision cache see, so
//! the cache's hit path is the same for every engine. What an engine decides is narrow: whether
//! a live subject may connect, publish and subscribe inside its own tenant. Credentials, subject
//! liveness, the tenant boundary, unknown channels and wildcard publishes are decided before it
//! is asked (the engine calls [`Snapshot::builtin`] for them).
//!
//! An engine is built for one snapshot version. A snapshot answers a tenant with an external
//! engine from an engine attached at its own version only; any other state (none attached, or
//! one of another version) refuses that tenant with `policy_unavailable`: never an answer from
//! another policy than the snapshot's.

use std::fmt;
use std::sync::Arc;

use crate::evaluator::{Action, Decision, Refusal, Subject};
use crate::snapshot::Snapshot;
use crate::topic::Topic;

/// An authorization engine for the tenants that opt into it.
pub trait TenantEngine: Send + Sync {
    /// The snapshot version this engine was built for.
    fn version(&self) -> u64;

    /// Whether a live, authenticated `subject` may connect.
    fn may_connect(&self, snapshot: &Snapshot, subject: &Subject) -> Result<(), Refusal>;

    /// Whether `subject` may take `action` on `topic`: a [`crate::PolicyEvaluator::authorize`].
    fn authorize(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        action: Action,
        topic: &Topic<'_>,
    ) -> Decision;

    /// Whether deliveries on a granted `filter` must be decided one by one.
    fn withholds(&self, snapshot: &Snapshot, subject: &Subject, filter: &Topic<'_>) -> bool;

    /// The decision of [`TenantEngine::authorize`] with the names of the engine's policies that
    /// took it (for `fleetward can-i`).
    fn explain(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        action: Action,
        topic: &Topic<'_>,
    ) -> (Decision, Vec<String>);

    /// The engine's name, for logs and explanations (`cedar`).
    fn name(&self) -> &'static str;
}

/// The engine attached to a snapshot. It is derived from the snapshot's tables, so it takes no
/// part in the snapshot's equality.
#[derive(Clone, Default)]
pub(crate) struct EngineSlot(pub(crate) Option<Arc<dyn TenantEngine>>);

impl PartialEq for EngineSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for EngineSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(e) => write!(f, "{} at version {}", e.name(), e.version()),
            None => f.write_str("none"),
        }
    }
}
