//! Thing keys (generation, SHA-256 digests, constant-time checks) and user password hashes.

use std::fmt;
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of randomness in a generated thing key.
pub const THING_KEY_BYTES: usize = 32;

/// Why a key or password hash could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The operating system's random number generator failed.
    #[error(
        "the OS random number generator failed ({0}); check that /dev/urandom or getrandom(2) is available"
    )]
    Random(String),
    /// Hashing a password failed.
    #[error("hashing the password failed: {0}")]
    Hash(String),
}

/// Generates a thing key: 256 bits from the OS RNG, base64url without padding (43 characters).
pub fn generate_thing_key() -> Result<String, CredentialError> {
    let mut bytes = [0u8; THING_KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| CredentialError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 digest of a thing key, as the snapshot carries it.
///
/// The digest is over the key text exactly as the client presents it (for a generated key, the
/// base64url string), so brought-your-own keys of any form work. Serialized as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// All zeroes: the digest of no key, a stand-in to compare against.
    pub const ZERO: KeyDigest = KeyDigest([0; 32]);

    /// The digest of a key.
    pub fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// The digest from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares in constant time.
    pub fn ct_eq(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Whether `key` hashes to this digest, compared in constant time.
    pub fn verify(&self, key: &[u8]) -> bool {
        self.ct_eq(&KeyDigest::of(key))
    }

    /// The first 12 hex digits: enough to tell keys apart in status and logs, useless to guess.
    pub fn fingerprint(&self) -> String {
        self.to_hex()[..12].to_owned()
    }

    /// All 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 0xf)] as char);
        }
        s
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(format!(
                "a key digest is 64 hex digits (SHA-256); got {} characters",
                bytes.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]);
            let lo = hex_value(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(format!("a key digest is hex digits only; got {hex:?}")),
            }
        }
        Ok(Self(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({})", self.fingerprint())
    }
}

impl TryFrom<String> for KeyDigest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::from_hex(&s)
    }
}

impl From<KeyDigest> for String {
    fn from(d: KeyDigest) -> String {
        d.to_hex()
    }
}

/// Whether `key` matches any of `digests`; every digest is compared, in constant time.
pub fn verify_thing_key(digests: &[KeyDigest], key: &[u8]) -> bool {
    let presented = KeyDigest::of(key);
    let mut found = subtle::Choice::from(0);
    for d in digests {
        found |= d.0.ct_eq(&presented.0);
    }
    found.into()
}

/// Hashes a plaintext password into an argon2id PHC string with a random salt.
pub fn hash_password(password: &[u8]) -> Result<String, CredentialError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| CredentialError::Hash(e.to_string()))
}

/// Whether `password` matches an argon2 PHC string; a malformed hash never matches.
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(_) => false,
    }
}

/// A real argon2id hash of a fixed password, made once.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let salt = SaltString::from_b64("ZmxlZXR3YXJkLWR1bW15").ok()?;
            let hash = Argon2::default().hash_password(b"fleetward", &salt).ok()?;
            Some(hash.to_string())
        })
        .as_deref()
}

/// Spends the time of one password verification, so refusing an unknown user takes as long as
/// refusing a wrong password.
pub(crate) fn burn_password_check(password: &[u8]) {
    if let Some(phc) = dummy_hash() {
        let _ = verify_password(phc, password);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_256_bit_base64url() {
        let a = generate_thing_key().expect("OS RNG");
        let b = generate_thing_key().expect("OS RNG");
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let raw = URL_SAFE_NO_PAD.decode(&a).expect("base64url");
        assert_eq!(raw.len(), 32);
        assert!(!a.contains(['+', '/', '=']));
    }

    #[test]
    fn digests_verify_in_rotation() {
        let old = generate_thing_key().expect("OS RNG");
        let new = generate_thing_key().expect("OS RNG");
        let both = [KeyDigest::of(old.as_bytes()), KeyDigest::of(new.as_bytes())];
        assert!(verify_thing_key(&both, old.as_bytes()));
        assert!(verify_thing_key(&both, new.as_bytes()));
        assert!(!verify_thing_key(&both[1..], old.as_bytes()));
        assert!(!verify_thing_key(&[], old.as_bytes()));
        assert!(both[0].verify(old.as_bytes()));
        assert!(!both[0].verify(b"guess"));
    }

    #[test]
    fn digest_hex_and_fingerprint() {
        let d = KeyDigest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.fingerprint(), "ba7816bf8f01");
        assert_eq!(KeyDigest::from_hex(&d.to_hex()), Ok(d));
        assert!(KeyDigest::from_hex("zz").is_err());
        assert!(KeyDigest::from_hex(&"g".repeat(64)).is_err());
        let json = serde_json::to_string(&d).expect("serialize");
        assert_eq!(
            serde_json::from_str::<KeyDigest>(&json).expect("deserialize"),
            d
        );
    }

    #[test]
    fn passwords_hash_and_verify() {
        let phc = hash_password(b"correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password(&phc, b"correct horse"));
        assert!(!verify_password(&phc, b"wrong"));
        assert!(!verify_password("not a phc string", b"correct horse"));
    }

    #[test]
    fn the_timing_decoy_is_a_real_hash() {
        let phc = dummy_hash().expect("made");
        assert!(verify_password(phc, b"fleetward"));
        assert!(!verify_password(phc, b"other"));
    }
}
