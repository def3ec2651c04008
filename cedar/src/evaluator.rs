//! [`CedarEvaluator`]: a [`PolicyEvaluator`] that decides every tenant of a snapshot with
//! Cedar, whatever its `engine` says: the engine under test, beside the built-in one, in the
//! oracle property test and the benchmark. The dataplane attaches a [`CedarEngine`] to its
//! snapshot instead, for the tenants that chose Cedar.

use std::sync::Arc;

use fleetward_policy::{
    Action, Credential, Decision, PolicyEvaluator, Refusal, Snapshot, Subject, TenantEngine,
    TenantPolicy, Topic,
};

use crate::engine::{BuildError, CedarEngine};

/// One `Policy` object's text, for a tenant.
pub type UserPolicy = TenantPolicy;

/// A decision with the Cedar policies behind it (for `fleetward can-i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CedarExplanation {
    /// The decision, exactly as [`PolicyEvaluator::authorize`] answers it.
    pub decision: Decision,
    /// The policies that decided: the permits that allowed, or the forbids that refused.
    /// Empty when the decision was taken before Cedar was asked, or no permit applied.
    pub policies: Vec<String>,
}

/// Answers from a [`Snapshot`] and each tenant's Cedar policies: the translation of its grants
/// and roles, and its own `Policy` texts.
#[derive(Debug)]
pub struct CedarEvaluator {
    snapshot: Arc<Snapshot>,
    engine: CedarEngine,
}

impl CedarEvaluator {
    /// Translates every tenant of `snapshot` and adds the `policies` of each; every policy is
    /// validated against the schema. Its version is the snapshot's: a change of policies must
    /// come with a new snapshot version.
    pub fn new(snapshot: Arc<Snapshot>, policies: &[UserPolicy]) -> Result<Self, BuildError> {
        let tenants: Vec<&str> = snapshot.tenants().map(|t| t.name.as_str()).collect();
        let policies: Vec<&TenantPolicy> = policies.iter().collect();
        let (engine, mut errors) = CedarEngine::for_tenants(&snapshot, &tenants, &policies);
        if !errors.is_empty() {
            return Err(errors.swap_remove(0));
        }
        Ok(Self { snapshot, engine })
    }

    /// The snapshot answered from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The number of Cedar policies of `tenant` (translated and its own).
    pub fn policy_count(&self, tenant: &str) -> usize {
        self.engine.policy_count(tenant)
    }

    /// Decides like [`PolicyEvaluator::authorize`] and names the Cedar policies that decided.
    pub fn explain(
        &self,
        subject: &Subject,
        action: Action,
        topic: &Topic<'_>,
    ) -> CedarExplanation {
        let (decision, policies) = self.engine.explain(&self.snapshot, subject, action, topic);
        CedarExplanation { decision, policies }
    }
}

impl PolicyEvaluator for CedarEvaluator {
    fn version(&self) -> u64 {
        self.snapshot.version()
    }

    fn authenticate(&self, credential: &Credential<'_>) -> Result<Subject, Refusal> {
        let subject = self.snapshot.builtin().authenticate(credential)?;
        self.engine.may_connect(&self.snapshot, &subject)?;
        Ok(subject)
    }

    fn authorize(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> Decision {
        self.engine
            .authorize(&self.snapshot, subject, action, topic)
    }

    fn withholds(&self, subject: &Subject, filter: &Topic<'_>) -> bool {
        self.engine.withholds(&self.snapshot, subject, filter)
    }

    fn check_subject(&self, subject: &Subject) -> Result<(), Refusal> {
        self.snapshot.builtin().check_subject(subject)?;
        self.engine.may_connect(&self.snapshot, subject)
    }
}
