//! Withholding denied topics from a subscriber: the per-delivery check behind a subscription
//! that a subtopic deny overlaps (DESIGN §4).
//!
//! A filter that overlaps a deny is granted, so the topics the deny covers must be filtered out
//! as messages arrive. A subscriber whose subscriptions overlap no deny
//! ([`PolicyEvaluator::withholds`] is `false` for each) is never asked here. One that does asks
//! [`DeliveryGate::allows`] per message: the last topic's answer is kept under its policy
//! version and its tenant's version (a comparison, for a subscriber that mostly hears one
//! topic, which a change to another tenant leaves valid), and any other topic
//! goes to the [`DecisionCache`], so a topic seen before never re-runs the evaluator.

use crate::cache::DecisionCache;
use crate::evaluator::{Action, PolicyEvaluator, Subject};
use crate::topic::{TopicLimits, parse_topic_name};

/// One subscriber's memo of its last delivery check. Cheap to make: nothing is allocated until
/// the first check.
#[derive(Debug, Default)]
pub struct DeliveryGate {
    /// The policy version and the subject's tenant version `topic`'s answer was given under;
    /// `None` before the first.
    under: Option<(u64, u64)>,
    topic: String,
    allowed: bool,
    /// Answers given from the memo since the last [`DeliveryGate::take_hits`].
    hits: u64,
}

impl DeliveryGate {
    /// Whether `subject` may receive a message on the full topic name `topic` now: `authorize`
    /// of [`Action::Subscribe`] on it, through the memo and `cache`. A topic that does not
    /// parse is withheld.
    pub fn allows<E: PolicyEvaluator + ?Sized>(
        &mut self,
        cache: &DecisionCache,
        evaluator: &E,
        subject: &Subject,
        topic: &str,
    ) -> bool {
        let version = evaluator.version();
        // The memo is a tier of the cache: kept only while the cache is on, so that the
        // cache's worth can still be measured against nothing at all.
        let memo = cache.is_enabled();
        if memo
            && self.topic == topic
            && let Some((v, tenant_version)) = self.under
            // The same policy, or one that did not touch the subject's tenant.
            && (v == version || tenant_version == evaluator.tenant_version(&subject.tenant))
        {
            self.under = Some((version, tenant_version));
            self.hits += 1;
            return self.allowed;
        }
        let tenant_version = evaluator.tenant_version(&subject.tenant);
        let allowed = parse_topic_name(topic, &TopicLimits::default()).is_ok_and(|t| {
            cache
                .authorize(evaluator, subject, Action::Subscribe, &t)
                .is_allowed()
        });
        if memo {
            // Reused, so a subscriber that hears many topics does not allocate per message.
            self.topic.clear();
            self.topic.push_str(topic);
            self.under = Some((version, tenant_version));
            self.allowed = allowed;
            cache.count_hits(self.take_hits());
        }
        allowed
    }

    /// The answers the memo gave since the last call, for the cache's hit count (they are
    /// added to it on each miss; a caller may add the rest when it stops).
    pub fn take_hits(&mut self) -> u64 {
        std::mem::take(&mut self.hits)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::evaluator::{AllowReason, Decision, DenyReason};
    use crate::testing::Counting;

    /// Denies `secret`, allows the rest, and counts how often it is asked.
    fn counting() -> Counting {
        Counting::new(|_, action, topic| {
            assert_eq!(action, Action::Subscribe);
            if topic.subtopic() == Some("secret") {
                Decision::Deny(DenyReason::SubtopicDenied)
            } else {
                Decision::Allow(AllowReason::Grant)
            }
        })
    }

    #[test]
    fn a_repeated_topic_is_answered_by_the_memo_and_other_ones_by_the_cache() {
        let e = counting();
        let cache = DecisionCache::new(100);
        let s = Subject::thing("a", "t");
        let mut gate = DeliveryGate::default();
        for _ in 0..5 {
            assert!(!gate.allows(&cache, &e, &s, "m/a/c/ch/secret"));
        }
        assert_eq!(e.calls(), 1);
        assert_eq!(gate.take_hits(), 4);
        // Alternating topics miss the memo but hit the cache: the evaluator is asked once each.
        for _ in 0..3 {
            assert!(gate.allows(&cache, &e, &s, "m/a/c/ch/open"));
            assert!(!gate.allows(&cache, &e, &s, "m/a/c/ch/secret"));
        }
        assert_eq!(e.calls(), 2);
        // A new policy version is asked again.
        e.version.store(2, Ordering::SeqCst);
        assert!(!gate.allows(&cache, &e, &s, "m/a/c/ch/secret"));
        assert_eq!(e.calls(), 3);
    }

    #[test]
    fn without_a_cache_every_message_asks_and_bad_topics_are_withheld() {
        let e = counting();
        let cache = DecisionCache::new(0);
        let s = Subject::thing("a", "t");
        let mut gate = DeliveryGate::default();
        for _ in 0..3 {
            assert!(gate.allows(&cache, &e, &s, "m/a/c/ch/open"));
        }
        assert_eq!(e.calls(), 3);
        assert!(!gate.allows(&cache, &e, &s, "m/a/c/ch/+"));
        assert!(!gate.allows(&cache, &e, &s, "elsewhere"));
        assert_eq!(e.calls(), 3);
    }
}
