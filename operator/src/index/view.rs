//! A digest of what the index serves, kept as it changes: replicas compare it to tell whether
//! they were fed the same objects (`replicas.rs`).

use sha2::{Digest, Sha256};

use super::object::ObjectKey;

/// An order-independent digest of the served objects and the generation each serves: the
/// wrapping sum of a 128-bit hash per object, so adding or removing one costs one hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewDigest(u128);

impl ViewDigest {
    fn entry(key: &ObjectKey, generation: Option<i64>) -> u128 {
        let text = format!(
            "{}/{}/{}@{}",
            key.kind.as_str(),
            key.namespace,
            key.name,
            generation.unwrap_or(0)
        );
        let hash = Sha256::digest(text.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&hash[..16]);
        u128::from_be_bytes(first)
    }

    pub(crate) fn add(&mut self, key: &ObjectKey, generation: Option<i64>) {
        self.0 = self.0.wrapping_add(Self::entry(key, generation));
    }

    pub(crate) fn remove(&mut self, key: &ObjectKey, generation: Option<i64>) {
        self.0 = self.0.wrapping_sub(Self::entry(key, generation));
    }

    /// The digest of a whole view, computed from scratch.
    pub fn of<'a>(entries: impl Iterator<Item = (&'a ObjectKey, Option<i64>)>) -> Self {
        let mut digest = Self::default();
        for (key, generation) in entries {
            digest.add(key, generation);
        }
        digest
    }

    /// The digest as 32 hexadecimal digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}
