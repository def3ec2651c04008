//! What each change to a snapshot touched: per-tenant versions for the decision cache, and a
//! short log of the deltas' reach for the dataplane, which re-checks only the sessions a change
//! concerns.
//!
//! Tenant versions are not the operator's version numbers. They are stamps of one counter per
//! process ([`next_stamp`]): every change to a snapshot takes a new stamp, and gives it to each
//! tenant it touched. So two snapshots that give a tenant the same version hold the same records
//! of that tenant, whichever way each was made (applied deltas, a full snapshot, a renumbered
//! copy, another operator's lineage), and a tenant's version only grows, also across a full
//! replacement, which simply gives every tenant a new one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{ResourceName, SubjectKind};

static STAMPS: AtomicU64 = AtomicU64::new(0);

/// A stamp no change in this process had before, greater than all of them.
pub(crate) fn next_stamp() -> u64 {
    STAMPS.fetch_add(1, Ordering::Relaxed) + 1
}

/// A thing or a user, by tenant and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectName {
    /// The subject's tenant.
    pub tenant: String,
    /// Thing or user.
    pub kind: SubjectKind,
    /// The subject's name in its tenant.
    pub name: String,
}

impl SubjectName {
    /// A subject by tenant, kind and name.
    pub fn new(tenant: impl Into<String>, kind: SubjectKind, name: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            kind,
            name: name.into(),
        }
    }
}

/// What one applied delta touched, as the sessions it may concern see it.
///
/// A session is concerned when its tenant is in `tenants`, its subject in `subjects`, or a
/// channel it subscribes to in `channels`. Group and grant changes are already resolved to the
/// subjects they reach: a group's members before and after the change, a grant's subject (or
/// its group's members) before and after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Tenants every session of which re-checks: the Tenant record changed (suspension, limits,
    /// engine, device CA), a policy text changed, or the tenant is decided by an external
    /// engine, whose answers may read any of the tenant's records.
    pub tenants: BTreeSet<String>,
    /// Things and users whose record, groups or grants changed.
    pub subjects: BTreeSet<SubjectName>,
    /// Channels changed or removed.
    pub channels: BTreeSet<ResourceName>,
}

impl Touched {
    /// Whether it concerns no session at all (a signing-key change, for one).
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.subjects.is_empty() && self.channels.is_empty()
    }
}

/// What changed in a snapshot since a consumer last looked, by [`crate::Snapshot::changes_since`].
#[derive(Debug)]
pub enum Since<'a> {
    /// Nothing is known of what changed (a full snapshot, a change made record by record, more
    /// deltas than the log keeps, or a snapshot that does not descend from the one seen):
    /// everything may have.
    Everything,
    /// The deltas applied since, oldest first; empty when nothing changed.
    Deltas(Vec<&'a Touched>),
}

/// The last deltas' reach, shared between snapshot copies.
#[derive(Clone, Default)]
pub(crate) struct ChangeLog {
    entries: imbl::Vector<(u64, Arc<Touched>)>,
    /// The stamp of the oldest state the log starts from: a full build, a change of unknown
    /// reach, or the last delta dropped from the log.
    floor: u64,
}

/// How many deltas the log keeps: enough for any burst a dataplane applies between two looks
/// of the task that follows it.
const KEPT: usize = 64;

impl ChangeLog {
    /// Notes the delta applied at `stamp`.
    pub(crate) fn record(&mut self, stamp: u64, touched: Touched) {
        self.entries.push_back((stamp, Arc::new(touched)));
        if self.entries.len() > KEPT
            && let Some((dropped, _)) = self.entries.pop_front()
        {
            self.floor = dropped;
        }
    }

    /// Notes a change of unknown reach made at `stamp`.
    pub(crate) fn forget(&mut self, stamp: u64) {
        self.entries.clear();
        self.floor = stamp;
    }

    /// What changed after `seen`, the stamp of the snapshot a consumer last looked at. Known
    /// only when that snapshot is one this one came from: its stamp is the log's floor or one
    /// of its deltas'.
    pub(crate) fn since(&self, seen: u64) -> Since<'_> {
        let passed_through = seen == self.floor || self.entries.iter().any(|(s, _)| *s == seen);
        if !passed_through {
            return Since::Everything;
        }
        Since::Deltas(
            self.entries
                .iter()
                .filter(|(stamp, _)| *stamp > seen)
                .map(|(_, t)| &**t)
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touching(tenant: &str) -> Touched {
        Touched {
            tenants: [tenant.to_owned()].into(),
            ..Touched::default()
        }
    }

    #[test]
    fn stamps_only_grow() {
        let a = next_stamp();
        let b = next_stamp();
        assert!(b > a);
    }

    #[test]
    fn a_consumer_gets_the_deltas_after_what_it_saw() {
        let mut log = ChangeLog::default();
        log.forget(10);
        log.record(11, touching("a"));
        log.record(12, touching("b"));
        let Since::Deltas(after) = log.since(11) else {
            panic!("the log holds everything after 10");
        };
        assert_eq!(after, [&touching("b")]);
        assert!(matches!(log.since(12), Since::Deltas(d) if d.is_empty()));
        assert!(matches!(log.since(9), Since::Everything));
        // A stamp this log never passed through: another line of snapshots.
        assert!(matches!(log.since(13), Since::Everything));
    }

    #[test]
    fn a_consumer_older_than_the_log_gets_everything() {
        let mut log = ChangeLog::default();
        for stamp in 1..=(KEPT as u64 + 2) {
            log.record(stamp, touching("a"));
        }
        assert!(matches!(log.since(1), Since::Everything));
        assert!(matches!(log.since(2), Since::Deltas(d) if d.len() == KEPT));
    }
}
