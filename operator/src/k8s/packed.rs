//! What the API server shows of an object, kept compactly. Across a namespace of 100k objects
//! the conditions the operator writes repeat a few type, status, reason and message strings;
//! the observed state holds each of them once, shared, and a Channel's, Connection's, User's
//! or Group's status without its conditions is one number. At 110k Connections this keeps
//! the observed state at about half of what it took as plain statuses.

use std::collections::HashSet;
use std::sync::Arc;

use fleetward_crds::ResourceStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::observed::{Shown, ShownStatus};

/// The fewest strings kept before the ones no status holds any more are dropped.
const MIN_PURGE: usize = 1024;

/// Strings held once, shared by every packed status that shows them.
#[derive(Debug, Default)]
pub(crate) struct Strings {
    set: HashSet<Arc<str>>,
    /// The set's size at which the strings no status holds any more are dropped.
    purge_at: usize,
}

impl Strings {
    fn intern(&mut self, s: String) -> Arc<str> {
        if let Some(shared) = self.set.get(s.as_str()) {
            return shared.clone();
        }
        if self.set.len() >= self.purge_at {
            self.set.retain(|s| Arc::strong_count(s) > 1);
            self.purge_at = (2 * self.set.len()).max(MIN_PURGE);
        }
        let shared: Arc<str> = Arc::from(s);
        self.set.insert(shared.clone());
        shared
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
}

/// A condition with shared strings.
#[derive(Clone, Debug, PartialEq)]
struct PackedCondition {
    type_: Arc<str>,
    status: Arc<str>,
    reason: Arc<str>,
    message: Arc<str>,
    last_transition_time: Time,
    observed_generation: Option<i64>,
}

impl PackedCondition {
    fn pack(c: Condition, strings: &mut Strings) -> Self {
        Self {
            type_: strings.intern(c.type_),
            status: strings.intern(c.status),
            reason: strings.intern(c.reason),
            message: strings.intern(c.message),
            last_transition_time: c.last_transition_time,
            observed_generation: c.observed_generation,
        }
    }

    fn unpack(&self) -> Condition {
        Condition {
            type_: self.type_.to_string(),
            status: self.status.to_string(),
            reason: self.reason.to_string(),
            message: self.message.to_string(),
            last_transition_time: self.last_transition_time.clone(),
            observed_generation: self.observed_generation,
        }
    }
}

/// A status without its conditions: one number for the kinds that show nothing else.
#[derive(Clone, Debug, PartialEq)]
enum Rest {
    Resource { observed_generation: Option<i64> },
    Other(Box<ShownStatus>),
}

/// A shown status with its conditions' strings shared.
#[derive(Clone, Debug, PartialEq)]
struct PackedStatus {
    conditions: Box<[PackedCondition]>,
    rest: Rest,
}

impl PackedStatus {
    fn pack(mut status: ShownStatus, strings: &mut Strings) -> Self {
        let conditions = std::mem::take(status.conditions_mut())
            .into_iter()
            .map(|c| PackedCondition::pack(c, strings))
            .collect();
        let rest = match status {
            ShownStatus::Resource(s) => Rest::Resource {
                observed_generation: s.observed_generation,
            },
            other => Rest::Other(Box::new(other)),
        };
        Self { conditions, rest }
    }

    fn unpack(&self) -> ShownStatus {
        let mut status = match &self.rest {
            Rest::Resource {
                observed_generation,
            } => ShownStatus::Resource(ResourceStatus {
                conditions: Vec::new(),
                observed_generation: *observed_generation,
            }),
            Rest::Other(status) => (**status).clone(),
        };
        *status.conditions_mut() = self
            .conditions
            .iter()
            .map(PackedCondition::unpack)
            .collect();
        status
    }
}

/// What the API server shows of one object, as the observed state keeps it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Kept {
    uid: Option<Box<str>>,
    generation: Option<i64>,
    deleting: bool,
    status: Option<PackedStatus>,
}

impl Kept {
    pub(crate) fn pack(shown: Shown, strings: &mut Strings) -> Self {
        Self {
            uid: shown.uid.map(String::into_boxed_str),
            generation: shown.generation,
            deleting: shown.deleting,
            status: shown.status.map(|s| PackedStatus::pack(s, strings)),
        }
    }

    pub(crate) fn unpack(&self) -> Shown {
        Shown {
            uid: self.uid.as_deref().map(str::to_owned),
            generation: self.generation,
            deleting: self.deleting,
            status: self.status.as_ref().map(PackedStatus::unpack),
        }
    }

    /// Replaces the status; whether it changed.
    pub(crate) fn set_status(&mut self, status: ShownStatus, strings: &mut Strings) -> bool {
        let status = PackedStatus::pack(status, strings);
        if self.status.as_ref() == Some(&status) {
            return false;
        }
        self.status = Some(status);
        true
    }
}

#[cfg(test)]
mod tests {
    use fleetward_crds::{TenantStatus, ThingStatus};

    use super::*;

    fn condition(type_: &str, message: &str, second: i64) -> Condition {
        Condition {
            last_transition_time: Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + second).expect("a time"),
            ),
            message: message.to_owned(),
            observed_generation: Some(3),
            reason: "Applied".to_owned(),
            status: "True".to_owned(),
            type_: type_.to_owned(),
        }
    }

    fn shown(status: ShownStatus) -> Shown {
        Shown {
            uid: Some("5d1f7c1e-7425-40de-944b-000000000001".to_owned()),
            generation: Some(3),
            deleting: false,
            status: Some(status),
        }
    }

    #[test]
    fn every_kind_of_status_unpacks_to_what_was_packed() {
        let conditions = vec![
            condition("Ready", "the grant is served", 1),
            condition(
                "Enforced",
                "every connected dataplane (2) has applied it",
                2,
            ),
        ];
        let statuses = [
            ShownStatus::Resource(ResourceStatus {
                conditions: conditions.clone(),
                observed_generation: Some(3),
            }),
            ShownStatus::Thing(ThingStatus {
                conditions: conditions.clone(),
                observed_generation: Some(3),
                secret_name: Some("sensor-1-credentials".to_owned()),
                keys: Some(2),
                ..Default::default()
            }),
            ShownStatus::Tenant(TenantStatus {
                conditions: conditions.clone(),
                ..Default::default()
            }),
            ShownStatus::Resource(ResourceStatus::default()),
        ];
        let mut strings = Strings::default();
        for status in statuses {
            let kept = Kept::pack(shown(status.clone()), &mut strings);
            assert_eq!(kept.unpack(), shown(status));
        }
        let without = Shown {
            uid: None,
            generation: None,
            deleting: true,
            status: None,
        };
        assert_eq!(Kept::pack(without.clone(), &mut strings).unpack(), without);
    }

    #[test]
    fn statuses_share_their_strings_and_unheld_strings_go() {
        let mut strings = Strings::default();
        let status = |i: usize| {
            ShownStatus::Resource(ResourceStatus {
                conditions: vec![condition("Ready", &format!("grant {i} is broken"), 1)],
                observed_generation: Some(1),
            })
        };
        let kept: Vec<Kept> = (0..10)
            .map(|_| Kept::pack(shown(status(0)), &mut strings))
            .collect();
        // Ready, True, Applied and one message, whatever the number of statuses.
        assert_eq!(strings.len(), 4);
        drop(kept);
        // Past the purge size, strings no status holds go: the set stays bounded.
        let mut one = Kept::pack(shown(status(0)), &mut strings);
        for i in 1..=5 * MIN_PURGE {
            assert!(
                one.set_status(status(i), &mut strings),
                "message {i} is new"
            );
        }
        assert!(
            strings.len() <= 2 * MIN_PURGE,
            "{} strings kept for one status",
            strings.len()
        );
        assert!(!one.set_status(status(5 * MIN_PURGE), &mut strings));
    }
}
