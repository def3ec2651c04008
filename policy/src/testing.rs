//! Test support: an evaluator that answers by a fixed rule and counts how often it is asked.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::Subject;
use crate::evaluator::{Action, Credential, Decision, DenyReason, PolicyEvaluator, Refusal};
use crate::topic::Topic;

/// Answers `authorize` with `rule(version, action, topic)`; refuses every credential.
pub(crate) struct Counting {
    pub version: AtomicU64,
    pub calls: AtomicUsize,
    rule: fn(u64, Action, &Topic<'_>) -> Decision,
}

impl Counting {
    /// At version 1, answering by `rule`.
    pub fn new(rule: fn(u64, Action, &Topic<'_>) -> Decision) -> Self {
        Self {
            version: AtomicU64::new(1),
            calls: AtomicUsize::new(0),
            rule,
        }
    }

    /// How often `authorize` was asked.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl PolicyEvaluator for Counting {
    fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }
    fn authenticate(&self, _: &Credential<'_>) -> Result<Subject, Refusal> {
        Err(DenyReason::BadCredential.into())
    }
    fn authorize(&self, _: &Subject, action: Action, topic: &Topic<'_>) -> Decision {
        self.calls.fetch_add(1, Ordering::SeqCst);
        (self.rule)(self.version(), action, topic)
    }
    fn check_subject(&self, _: &Subject) -> Result<(), Refusal> {
        Ok(())
    }
}
