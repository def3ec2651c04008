//! What the API server shows of an object, kept compactly. Across a namespace of 100k objects
//! the conditions the operator writes repeat a few shapes (type, status, reason, message and
//! generation); the observed state holds each string and each list of shapes once, shared, so
//! an object keeps only a pointer to its shapes and its conditions' transition times. A
//! Channel's, Connection's, User's or Group's status without its conditions is one number,
//! and a uid that is a UUID is kept as its 16 bytes. At 110k Connections this keeps the
//! observed state at about a third of what it took as plain statuses.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

use fleetward_crds::ResourceStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::observed::{Shown, ShownStatus};

/// The fewest values a pool keeps before the ones no status holds any more are dropped.
const MIN_PURGE: usize = 1024;

/// Values held once, shared by every packed status that shows them.
#[derive(Debug)]
struct Pool<T: ?Sized> {
    set: HashSet<Arc<T>>,
    /// The set's size at which the values no status holds any more are dropped.
    purge_at: usize,
}

impl<T: ?Sized> Default for Pool<T> {
    fn default() -> Self {
        Self {
            set: HashSet::new(),
            purge_at: 0,
        }
    }
}

impl<T: ?Sized + Hash + Eq> Pool<T> {
    /// The shared copy of `value`; `make` makes one when there is none.
    fn intern(&mut self, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        if let Some(shared) = self.set.get(value) {
            return shared.clone();
        }
        if self.set.len() >= self.purge_at {
            self.set.retain(|v| Arc::strong_count(v) > 1);
            self.purge_at = (2 * self.set.len()).max(MIN_PURGE);
        }
        let shared = make();
        self.set.insert(shared.clone());
        shared
    }
}

/// The strings and condition shapes the packed statuses share.
#[derive(Debug, Default)]
pub(crate) struct Interned {
    strings: Pool<str>,
    shapes: Pool<[Shape]>,
}

impl Interned {
    fn string(&mut self, s: String) -> Arc<str> {
        self.strings.intern(&s, || Arc::from(s.as_str()))
    }

    fn shapes(&mut self, shapes: Vec<Shape>) -> Arc<[Shape]> {
        self.shapes.intern(&shapes, || Arc::from(shapes.as_slice()))
    }

    #[cfg(test)]
    pub(crate) fn strings(&self) -> usize {
        self.strings.set.len()
    }

    #[cfg(test)]
    pub(crate) fn shapes_kept(&self) -> usize {
        self.shapes.set.len()
    }
}

/// A condition without its transition time, with shared strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Shape {
    type_: Arc<str>,
    status: Arc<str>,
    reason: Arc<str>,
    message: Arc<str>,
    observed_generation: Option<i64>,
}

impl Shape {
    fn of(c: Condition, interned: &mut Interned) -> (Self, Time) {
        let shape = Self {
            type_: interned.string(c.type_),
            status: interned.string(c.status),
            reason: interned.string(c.reason),
            message: interned.string(c.message),
            observed_generation: c.observed_generation,
        };
        (shape, c.last_transition_time)
    }

    fn condition(&self, last_transition_time: &Time) -> Condition {
        Condition {
            type_: self.type_.to_string(),
            status: self.status.to_string(),
            reason: self.reason.to_string(),
            message: self.message.to_string(),
            last_transition_time: last_transition_time.clone(),
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

/// A shown status: its conditions' shapes, shared, and their transition times.
#[derive(Clone, Debug, PartialEq)]
struct PackedStatus {
    shapes: Arc<[Shape]>,
    times: Box<[Time]>,
    rest: Rest,
}

impl PackedStatus {
    fn pack(mut status: ShownStatus, interned: &mut Interned) -> Self {
        let (shapes, times): (Vec<Shape>, Vec<Time>) = std::mem::take(status.conditions_mut())
            .into_iter()
            .map(|c| Shape::of(c, interned))
            .unzip();
        let rest = match status {
            ShownStatus::Resource(s) => Rest::Resource {
                observed_generation: s.observed_generation,
            },
            other => Rest::Other(Box::new(other)),
        };
        Self {
            shapes: interned.shapes(shapes),
            times: times.into_boxed_slice(),
            rest,
        }
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
            .shapes
            .iter()
            .zip(&self.times)
            .map(|(shape, at)| shape.condition(at))
            .collect();
        status
    }
}

/// A uid: the 16 bytes of a UUID in its usual lower-case form (as the API server makes them),
/// or the text of any other.
#[derive(Clone, Debug, PartialEq)]
enum Uid {
    Uuid([u8; 16]),
    Other(Box<str>),
}

/// Where the dashes of a UUID's text are.
const UUID_DASHES: [usize; 4] = [8, 13, 18, 23];

impl Uid {
    fn pack(uid: String) -> Self {
        Self::uuid(&uid).map_or_else(|| Self::Other(uid.into_boxed_str()), Self::Uuid)
    }

    /// The bytes of `text` when it is a UUID that [`Self::unpack`] writes back the same.
    fn uuid(text: &str) -> Option<[u8; 16]> {
        let text = text.as_bytes();
        if text.len() != 36 || UUID_DASHES.iter().any(|&i| text[i] != b'-') {
            return None;
        }
        let mut digits = text
            .iter()
            .enumerate()
            .filter(|(i, _)| !UUID_DASHES.contains(i));
        let mut bytes = [0u8; 16];
        for byte in &mut bytes {
            let mut next = || match digits.next()?.1 {
                d @ b'0'..=b'9' => Some(d - b'0'),
                d @ b'a'..=b'f' => Some(d - b'a' + 10),
                _ => None,
            };
            *byte = (next()? << 4) | next()?;
        }
        Some(bytes)
    }

    fn unpack(&self) -> String {
        match self {
            Uid::Uuid(bytes) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut text = String::with_capacity(36);
                for (i, byte) in bytes.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        text.push('-');
                    }
                    text.push(char::from(HEX[usize::from(byte >> 4)]));
                    text.push(char::from(HEX[usize::from(byte & 0xf)]));
                }
                text
            }
            Uid::Other(text) => text.to_string(),
        }
    }
}

/// What the API server shows of one object, as the observed state keeps it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Kept {
    uid: Option<Uid>,
    generation: Option<i64>,
    deleting: bool,
    status: Option<PackedStatus>,
}

impl Kept {
    pub(crate) fn pack(shown: Shown, interned: &mut Interned) -> Self {
        Self {
            uid: shown.uid.map(Uid::pack),
            generation: shown.generation,
            deleting: shown.deleting,
            status: shown.status.map(|s| PackedStatus::pack(s, interned)),
        }
    }

    pub(crate) fn unpack(&self) -> Shown {
        Shown {
            uid: self.uid.as_ref().map(Uid::unpack),
            generation: self.generation,
            deleting: self.deleting,
            status: self.status.as_ref().map(PackedStatus::unpack),
        }
    }

    /// Replaces the status; whether it changed.
    pub(crate) fn set_status(&mut self, status: ShownStatus, interned: &mut Interned) -> bool {
        let status = PackedStatus::pack(status, interned);
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
        let mut strings = Interned::default();
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
    fn uids_unpack_to_what_was_packed_whatever_their_form() {
        let uuid = "5d1f7c1e-7425-40de-944b-0123456789af";
        assert!(matches!(Uid::pack(uuid.to_owned()), Uid::Uuid(_)));
        for uid in [
            uuid,
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            // Not kept as bytes: upper case, no dashes, misplaced dashes, a non-hex digit,
            // too short or long, a multi-byte character, empty.
            "5D1F7C1E-7425-40DE-944B-0123456789AF",
            "5d1f7c1e742540de944b0123456789af",
            "5d1f7c1e7-425-40de-944b-0123456789af",
            "5d1f7c1g-7425-40de-944b-0123456789af",
            "5d1f7c1e-7425-40de-944b-0123456789a",
            "5d1f7c1e-7425-40de-944b-0123456789afa",
            "5d1f7c1é-7425-40de-944b-0123456789a",
            "a-uid-from-a-manifest",
            "",
        ] {
            assert_eq!(Uid::pack(uid.to_owned()).unpack(), uid, "{uid}");
        }
    }

    #[test]
    fn statuses_share_their_strings_and_unheld_strings_go() {
        let mut strings = Interned::default();
        let status = |i: usize| {
            ShownStatus::Resource(ResourceStatus {
                conditions: vec![condition("Ready", &format!("grant {i} is broken"), 1)],
                observed_generation: Some(1),
            })
        };
        let kept: Vec<Kept> = (0..10)
            .map(|_| Kept::pack(shown(status(0)), &mut strings))
            .collect();
        // Ready, True, Applied and one message, and one list of shapes, whatever the number
        // of statuses.
        assert_eq!(strings.strings(), 4);
        assert_eq!(strings.shapes_kept(), 1);
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
            strings.strings() <= 2 * MIN_PURGE && strings.shapes_kept() <= 2 * MIN_PURGE,
            "{} strings and {} shapes kept for one status",
            strings.strings(),
            strings.shapes_kept()
        );
        assert!(!one.set_status(status(5 * MIN_PURGE), &mut strings));
    }
}
