//! Fleet provisioning claims as the snapshot carries them: who may ask (the SHA-256 of each
//! claim certificate), for which names, how many, and how many were made.

use serde::{Deserialize, Serialize};

/// One provisioning claim of a tenant (`Tenant.spec.provisioning.claims`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningClaim {
    /// The claim's name.
    pub name: String,
    /// SHA-256 of each claim certificate (DER) a device may present.
    #[serde(with = "hex_digests")]
    pub certificates: Vec<[u8; 32]>,
    /// The regular expression a whole requested thing name must match.
    pub name_pattern: String,
    /// The most Things the claim may make.
    pub max_things: u32,
    /// Things made so far (those carrying the claim's label).
    pub provisioned: u32,
    /// Requests are refused.
    #[serde(default)]
    pub disabled: bool,
}

impl ProvisioningClaim {
    /// Whether a presented certificate (its SHA-256) is one of the claim's.
    pub fn accepts(&self, fingerprint: &[u8; 32]) -> bool {
        self.certificates.iter().any(|c| c == fingerprint)
    }

    /// Whether the claim has room for one more Thing.
    pub fn has_room(&self) -> bool {
        self.provisioned < self.max_things
    }
}

/// Whether `name` is one a claim with `pattern` gives: the regular expression matches the
/// whole name. A pattern that does not compile gives none.
pub fn name_allowed(pattern: &str, name: &str) -> bool {
    regex::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(name))
}

mod hex_digests {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(digests: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(digests.iter().map(|d| crate::certificates::hex(d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| {
                let bytes: Vec<u8> = (0..t.len())
                    .step_by(2)
                    .map(|i| t.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| D::Error::custom("a digest is 64 hex digits"))?;
                bytes
                    .try_into()
                    .map_err(|_| D::Error::custom("a digest is 64 hex digits"))
            })
            .collect()
    }
}
