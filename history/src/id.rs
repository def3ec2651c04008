//! Message ids: UUIDv7 (RFC 9562), given once at ingress and carried everywhere after.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use uuid::Uuid;

/// A message's id: a UUIDv7 whose 48-bit millisecond time is followed by the sub-millisecond
/// fraction in 12 bits (RFC 9562 §6.2, method 3) and a per-process counter in 30 bits, so ids
/// sort in the order their messages were accepted on one dataplane, even within one clock
/// reading; 32 random bits keep two dataplanes' ids apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(Uuid);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl MessageId {
    /// A new id for a message accepted at `created_ns` (ns since the Unix epoch).
    pub fn new(created_ns: u64) -> Self {
        let counter = u64::from(COUNTER.fetch_add(1, Ordering::Relaxed) & 0x3FFF_FFFF);
        let random = u64::from(rand::random::<u32>());
        Self::with_tail(created_ns, (counter << 32) | random)
    }

    /// The smallest id of `at_ns`: the bound of a time range.
    pub fn floor(at_ns: u64) -> Self {
        Self::with_tail(at_ns, 0)
    }

    fn with_tail(at_ns: u64, tail: u64) -> Self {
        let ms = (at_ns / 1_000_000) & 0xFFFF_FFFF_FFFF;
        // The sub-millisecond part in 1/4096 ms.
        let frac = ((at_ns % 1_000_000) * 4096 / 1_000_000) & 0xFFF;
        let high = (ms << 16) | (0x7 << 12) | frac;
        let low = (0b10 << 62) | (tail & 0x3FFF_FFFF_FFFF_FFFF);
        Self(Uuid::from_u64_pair(high, low))
    }

    /// The id's 16 bytes, big-endian: byte order is time order.
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// The id of 16 stored bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// The id of a byte slice, if it is 16 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(bytes).ok().map(Self::from_bytes)
    }

    /// The id as a [`Uuid`].
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The millisecond time it carries, ms since the Unix epoch.
    pub fn unix_ms(self) -> u64 {
        self.0.as_u64_pair().0 >> 16
    }
}

impl fmt::Display for MessageId {
    /// The hyphenated lower-case form subscribers see, `0192f4c1-…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_one_clock_reading_sort_in_the_order_they_were_given() {
        let at = 1_764_950_400_123_456_789;
        let ids: Vec<MessageId> = (0..1000).map(|_| MessageId::new(at)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(ids[0].as_uuid().get_version_num(), 7);
        assert_eq!(ids[0].unix_ms(), at / 1_000_000);
    }

    #[test]
    fn later_times_sort_later_and_floors_bound_them() {
        let a = MessageId::new(1_000_000_000_000_000);
        let b = MessageId::new(1_000_000_000_000_300);
        let c = MessageId::new(1_000_000_000_001_000);
        assert!(a < c && b < c);
        assert!(MessageId::floor(1_000_000_000_000_000) <= a);
        assert!(MessageId::floor(1_000_000_000_001_000) > a);
    }

    #[test]
    fn the_text_form_reads_back() {
        let id = MessageId::new(1_764_950_400_000_000_000);
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<MessageId>().ok(), Some(id));
        assert_eq!(MessageId::from_slice(&id.to_bytes()), Some(id));
    }
}
