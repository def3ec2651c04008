//! The decision cache: a bounded moka cache of authorization answers in front of any evaluator.
//!
//! Entries are keyed by a fixed-size key: the version of the subject's tenant and a 64-bit hash
//! of (subject, action, tenant, channel, subtopic or filter). The entry keeps the request's text
//! and is only served when that text equals the request, so a hash collision is a miss, never a
//! wrong answer. A hit hashes, looks up and compares: it does not allocate.
//!
//! Why the tenant's version is enough (DESIGN: never an answer from an older policy for the
//! tenant it concerns): an answer about a subject depends only on the records of the subject's
//! tenant (the tenant, the subject, its groups, the tenant's channels, grants and policy texts);
//! a topic of another tenant is refused as `cross_tenant` whatever either tenant holds. A
//! [`crate::Snapshot`] gives a tenant a new version with every change to any of those records,
//! and a version never comes back for another policy of the tenant (see [`crate::changes`]).
//! So an entry is only found under the policy of its tenant it was computed from, while a
//! change to one tenant leaves every other tenant's answers in place.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::evaluator::{Action, Credential, Decision, PolicyEvaluator, Refusal, Subject};
use crate::model::SubjectKind;
use crate::topic::Topic;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    version: u64,
    request: u64,
}

/// A cached answer and the request it answers, stored as one string and its cut points.
struct Entry {
    text: Box<str>,
    /// End offsets of subject tenant, subject name, topic tenant, channel in `text`.
    cuts: [usize; 4],
    kind: SubjectKind,
    token_epoch: Option<u64>,
    action: Action,
    has_subtopic: bool,
    decision: Decision,
}

impl Entry {
    fn new(subject: &Subject, action: Action, topic: &Topic<'_>, decision: Decision) -> Self {
        let parts = [
            subject.tenant.as_str(),
            subject.name.as_str(),
            topic.tenant(),
            topic.channel(),
            topic.subtopic().unwrap_or(""),
        ];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut cuts = [0; 4];
        for (i, p) in parts.iter().enumerate() {
            text.push_str(p);
            if i < 4 {
                cuts[i] = text.len();
            }
        }
        Self {
            text: text.into_boxed_str(),
            cuts,
            kind: subject.kind,
            token_epoch: subject.token_epoch,
            action,
            has_subtopic: topic.subtopic().is_some(),
            decision,
        }
    }

    fn answers(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> bool {
        let t = &*self.text;
        let [a, b, c, d] = self.cuts;
        self.kind == subject.kind
            && self.action == action
            && self.token_epoch == subject.token_epoch
            && self.has_subtopic == topic.subtopic().is_some()
            && t.get(..a) == Some(subject.tenant.as_str())
            && t.get(a..b) == Some(subject.name.as_str())
            && t.get(b..c) == Some(topic.tenant())
            && t.get(c..d) == Some(topic.channel())
            && t.get(d..) == Some(topic.subtopic().unwrap_or(""))
    }
}

/// Cache counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Answers computed by the evaluator (including collisions).
    pub misses: u64,
}

/// A bounded cache of decisions for one policy source.
///
/// A cache of 0 entries is off: every request goes to the evaluator (and counts as a miss), so
/// the cache's worth can be measured against its absence.
///
/// Use one cache per evaluator: entries are keyed by version, so two evaluators that share
/// version numbers but not policies must not share a cache. Answers of versions no longer
/// asked for are not dropped at once: they go as the cache's bound makes room.
pub struct DecisionCache {
    entries: moka::sync::Cache<CacheKey, Arc<Entry>, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
    enabled: bool,
}

impl std::fmt::Debug for DecisionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl DecisionCache {
    /// A cache holding at most `max_entries` decisions; 0 turns it off.
    pub fn new(max_entries: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            hasher: foldhash::fast::RandomState::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            enabled: max_entries > 0,
        }
    }

    /// Answers from the cache, or asks `evaluator` and remembers the answer.
    pub fn authorize<E: PolicyEvaluator + ?Sized>(
        &self,
        evaluator: &E,
        subject: &Subject,
        action: Action,
        topic: &Topic<'_>,
    ) -> Decision {
        if !self.enabled {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return evaluator.authorize(subject, action, topic);
        }
        // Read before the evaluator is asked: an answer is never filed under a newer version
        // than the one it was computed from.
        let version = evaluator.tenant_version(&subject.tenant);
        let key = CacheKey {
            version,
            request: self.hasher.hash_one((
                subject.tenant.as_str(),
                subject.kind,
                subject.name.as_str(),
                subject.token_epoch,
                action,
                topic.tenant(),
                topic.channel(),
                topic.subtopic(),
            )),
        };
        if let Some(entry) = self.entries.get(&key)
            && entry.answers(subject, action, topic)
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return entry.decision;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let decision = evaluator.authorize(subject, action, topic);
        self.entries
            .insert(key, Arc::new(Entry::new(subject, action, topic, decision)));
        decision
    }

    /// Whether the cache is on (`max_entries` > 0). A caller that keeps copies of answers
    /// of its own keeps them only while it is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Counts `n` answers a caller took from its own copy of an earlier answer of this cache
    /// (under the same tenant version) as hits.
    pub fn count_hits(&self, n: u64) {
        if n > 0 {
            self.hits.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The number of entries held (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Finishes pending evictions and counts now (for tests and metrics).
    pub fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }
}

/// Any evaluator with a [`DecisionCache`] in front of its `authorize`.
pub struct CachedEvaluator<E> {
    inner: E,
    cache: DecisionCache,
}

impl<E> CachedEvaluator<E> {
    /// Wraps `inner` with a cache of at most `max_entries` decisions.
    pub fn new(inner: E, max_entries: u64) -> Self {
        Self {
            inner,
            cache: DecisionCache::new(max_entries),
        }
    }

    /// The wrapped evaluator.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// The cache.
    pub fn cache(&self) -> &DecisionCache {
        &self.cache
    }
}

impl<E: PolicyEvaluator> PolicyEvaluator for CachedEvaluator<E> {
    fn version(&self) -> u64 {
        self.inner.version()
    }

    fn tenant_version(&self, tenant: &str) -> u64 {
        self.inner.tenant_version(tenant)
    }

    fn authenticate(&self, credential: &Credential<'_>) -> Result<Subject, Refusal> {
        self.inner.authenticate(credential)
    }

    fn authorize(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> Decision {
        self.cache.authorize(&self.inner, subject, action, topic)
    }

    fn withholds(&self, subject: &Subject, filter: &Topic<'_>) -> bool {
        // Asked per SUBSCRIBE and per new policy, not per message: not cached.
        self.inner.withholds(subject, filter)
    }

    fn check_subject(&self, subject: &Subject) -> Result<(), Refusal> {
        self.inner.check_subject(subject)
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<CachedEvaluator<crate::Snapshot>>();
    send_sync::<DecisionCache>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::{AllowReason, DenyReason};
    use crate::testing::Counting;
    use crate::topic::{TopicLimits, parse_topic_name};

    fn counting() -> CachedEvaluator<Counting> {
        counting_with(1000)
    }

    fn counting_with(entries: u64) -> CachedEvaluator<Counting> {
        // Version 1 allows `open`; later versions allow nothing.
        let rule = |version, _, topic: &Topic<'_>| {
            if version == 1 && topic.subtopic() == Some("open") {
                Decision::Allow(AllowReason::Grant)
            } else {
                Decision::Deny(DenyReason::NoGrant)
            }
        };
        CachedEvaluator::new(Counting::new(rule), entries)
    }

    #[test]
    fn a_cache_of_no_entries_asks_the_evaluator_every_time() {
        let c = counting_with(0);
        let s = Subject::thing("a", "t");
        let t = parse_topic_name("m/a/c/ch/open", &TopicLimits::default()).expect("valid");
        for _ in 0..5 {
            assert!(c.authorize(&s, Action::Publish, &t).is_allowed());
        }
        assert_eq!(c.inner().calls(), 5);
        assert_eq!(c.cache().stats(), CacheStats { hits: 0, misses: 5 });
        c.cache().run_pending_tasks();
        assert_eq!(c.cache().entry_count(), 0);
    }

    #[test]
    fn hits_skip_the_evaluator() {
        let c = counting();
        let s = Subject::thing("a", "t");
        let t = parse_topic_name("m/a/c/ch/open", &TopicLimits::default()).expect("valid");
        for _ in 0..5 {
            assert!(c.authorize(&s, Action::Publish, &t).is_allowed());
        }
        assert_eq!(c.inner().calls(), 1);
        assert_eq!(c.cache().stats(), CacheStats { hits: 4, misses: 1 });
        // Another subject, action or subtopic is another entry.
        let other = Subject::thing("a", "u");
        c.authorize(&other, Action::Publish, &t);
        c.authorize(&s, Action::Subscribe, &t);
        assert_eq!(c.inner().calls(), 3);
    }

    #[test]
    fn a_new_version_makes_old_answers_unreachable() {
        let c = counting();
        let s = Subject::thing("a", "t");
        let t = parse_topic_name("m/a/c/ch/open", &TopicLimits::default()).expect("valid");
        assert!(c.authorize(&s, Action::Publish, &t).is_allowed());
        c.inner().version.store(2, Ordering::SeqCst);
        assert!(!c.authorize(&s, Action::Publish, &t).is_allowed());
        assert_eq!(c.inner().calls(), 2);
    }

    #[test]
    fn a_colliding_entry_is_a_miss_not_a_wrong_answer() {
        let c = counting();
        let s = Subject::thing("a", "t");
        let open = parse_topic_name("m/a/c/ch/open", &TopicLimits::default()).expect("valid");
        let closed = parse_topic_name("m/a/c/ch/closed", &TopicLimits::default()).expect("valid");
        let allowed = c.authorize(&s, Action::Publish, &open);
        assert!(allowed.is_allowed());
        // File the `open` answer under the key of the `closed` request, as a collision would.
        let key = CacheKey {
            version: 1,
            request: c.cache.hasher.hash_one((
                s.tenant.as_str(),
                s.kind,
                s.name.as_str(),
                s.token_epoch,
                Action::Publish,
                closed.tenant(),
                closed.channel(),
                closed.subtopic(),
            )),
        };
        c.cache.entries.insert(
            key,
            Arc::new(Entry::new(&s, Action::Publish, &open, allowed)),
        );
        assert_eq!(
            c.authorize(&s, Action::Publish, &closed),
            Decision::Deny(DenyReason::NoGrant)
        );
        assert_eq!(c.inner().calls(), 2);
    }

    #[test]
    fn entries_compare_every_part() {
        let s = Subject::thing("ab", "c");
        let t = parse_topic_name("m/x/c/y/z", &TopicLimits::default()).expect("valid");
        let e = Entry::new(&s, Action::Publish, &t, Decision::Deny(DenyReason::NoGrant));
        assert!(e.answers(&s, Action::Publish, &t));
        // Same concatenated text, other cut points.
        assert!(!e.answers(&Subject::thing("a", "bc"), Action::Publish, &t));
        assert!(!e.answers(&s, Action::Subscribe, &t));
        let root = parse_topic_name("m/x/c/y", &TopicLimits::default()).expect("valid");
        let empty = parse_topic_name("m/x/c/y/", &TopicLimits::default()).expect("valid");
        let e = Entry::new(
            &s,
            Action::Publish,
            &root,
            Decision::Deny(DenyReason::NoGrant),
        );
        assert!(e.answers(&s, Action::Publish, &root));
        assert!(!e.answers(&s, Action::Publish, &empty));
        let mut with_epoch = s.clone();
        with_epoch.token_epoch = Some(1);
        assert!(!e.answers(&with_epoch, Action::Publish, &root));
    }
}
