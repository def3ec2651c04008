//! Attaches the external authorization engines a snapshot's tenants ask for (today Cedar, for
//! tenants with `engine: cedar`): built once per snapshot version, before the snapshot is
//! published to the evaluator. A tenant whose policy texts do not build is refused with
//! `policy_unavailable` (the operator serves only validated texts; this is a second line), and
//! the error is logged.

use std::sync::Arc;

use fleetward_cedar::CedarEngine;
use fleetward_policy::Snapshot;

/// `snapshot` with the engines its tenants need attached, at its current version.
pub fn attach(mut snapshot: Snapshot) -> Snapshot {
    if !snapshot.needs_engine() {
        return snapshot;
    }
    let (engine, errors) = CedarEngine::build(&snapshot);
    for e in errors {
        tracing::error!(
            version = snapshot.version(),
            "{e}; the tenant's requests are refused (policy_unavailable)"
        );
    }
    snapshot.attach_engine(Arc::new(engine));
    snapshot
}

/// [`attach`] for a shared snapshot: copied only when it needs an engine.
pub fn attach_shared(snapshot: Arc<Snapshot>) -> Arc<Snapshot> {
    if !snapshot.needs_engine() {
        return snapshot;
    }
    Arc::new(attach(Arc::unwrap_or_clone(snapshot)))
}
