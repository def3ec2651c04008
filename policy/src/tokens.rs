//! User access tokens: signing-key generation, JWT issue and verification, and the JWKS.
//!
//! Pure code: the clock is a parameter and nothing here does I/O. Tokens are JWS compact
//! serializations signed with a platform key (Ed25519 or ECDSA P-256) named by its `kid`; every
//! key of the [`Keyring`] verifies, the active one signs.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType,
    PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::model::{SigningAlgorithm, SigningKey};

/// How far in the future a token's `iat` may be, for clock skew between issuer and verifier.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The longest token `verify` looks at. Ours are about 400 bytes; the cap keeps a hostile
/// multi-megabyte "token" from being base64-decoded and parsed.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Bytes of randomness in a token id (`jti`).
const JTI_BYTES: usize = 16;

/// Where and for whom tokens are issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSettings {
    /// The `iss` of issued tokens, and the only one accepted.
    pub issuer: String,
    /// The `aud` of issued tokens, and the only one accepted.
    pub audience: String,
    /// How long an access token is valid.
    pub access_ttl: Duration,
    /// How long a refresh token is valid.
    pub refresh_ttl: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            issuer: "fleetward".into(),
            audience: "fleetward".into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// The claims of an access token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The issuer.
    pub iss: String,
    /// The audience.
    pub aud: String,
    /// The user name.
    pub sub: String,
    /// The user's tenant.
    pub tenant: String,
    /// The user's `tokenEpoch` at issue; a greater epoch in the snapshot revokes the token.
    pub epoch: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at (refused from this second on), seconds since the Unix epoch.
    pub exp: u64,
    /// The token id: 128 random bits, base64url.
    pub jti: String,
}

/// Why a signing key could not be generated or loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// A key has an empty `kid`.
    #[error(
        "signing key #{index} has an empty kid; give every signing key a unique, non-empty kid"
    )]
    EmptyKid {
        /// The key's position in the list.
        index: usize,
    },
    /// Two keys share a `kid`.
    #[error(
        "signing key {kid:?} appears more than once; kids must be unique (remove or rename one)"
    )]
    DuplicateKid {
        /// The repeated kid.
        kid: String,
    },
    /// The private key is for another algorithm than the key declares.
    #[error(
        "signing key {kid:?} is declared {} but its private key is for another algorithm; fix the algorithm field or the key",
        .declared.as_str()
    )]
    WrongAlgorithm {
        /// The key's kid.
        kid: String,
        /// The algorithm the key declares.
        declared: SigningAlgorithm,
    },
    /// The private key is not a PKCS#8 DER document ring accepts.
    #[error(
        "signing key {kid:?}: the private key is not a valid PKCS#8 DER {} key ({reason}); generate one with generate_signing_key or `openssl genpkey` and convert it to DER",
        .algorithm.as_str()
    )]
    NotPkcs8 {
        /// The key's kid.
        kid: String,
        /// The algorithm the key declares.
        algorithm: SigningAlgorithm,
        /// What ring found wrong.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error(
        "the OS random number generator failed; check that /dev/urandom or getrandom(2) is available"
    )]
    Random,
}

/// Why a token could not be issued or was refused.
///
/// No variant carries any part of the token: these messages go to logs and to clients.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON with the expected claims, or too long.
    #[error(
        "the token is not a well-formed access token (a JWT with the Fleetward claims); sign in again to get a new one"
    )]
    Malformed,
    /// The header names no `kid`, or one that is not in the keyring.
    #[error(
        "the token was signed with a key this server does not know (missing, unknown or retired kid); sign in again to get a new token"
    )]
    UnknownKey,
    /// The header's `alg` is not the algorithm of the key its `kid` names (`none`, HS*, ...).
    #[error(
        "the token's algorithm is not the one of its signing key; only EdDSA or ES256, as the key declares, is accepted"
    )]
    WrongAlgorithm,
    /// The signature does not verify.
    #[error(
        "the token's signature does not verify: it was altered or signed by another key; sign in again to get a new token"
    )]
    BadSignature,
    /// `exp` is now or past.
    #[error("the token has expired; refresh it or sign in again")]
    Expired,
    /// `iat` is more than [`MAX_CLOCK_SKEW`] in the future.
    #[error(
        "the token was issued more than 60 s in the future; check the clocks of the issuing and this server"
    )]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error(
        "the token was issued by another issuer than {expected:?}; use a token of this installation"
    )]
    WrongIssuer {
        /// The issuer this server accepts.
        expected: String,
    },
    /// `aud` is not the configured audience.
    #[error(
        "the token is meant for another audience than {expected:?}; use a token of this installation"
    )]
    WrongAudience {
        /// The audience this server accepts.
        expected: String,
    },
    /// The tenant or the user name is empty.
    #[error("the token names no tenant or no user; both must be non-empty")]
    MissingSubject,
    /// The keyring is empty, so nothing can sign.
    #[error(
        "no token signing key is configured; add one (see generate_signing_key) to the platform configuration"
    )]
    NoSigningKey,
    /// The operating system's random number generator failed.
    #[error(
        "the OS random number generator failed; check that /dev/urandom or getrandom(2) is available"
    )]
    Random,
    /// Signing failed in the JWT library.
    #[error("signing the token failed: {0}")]
    Signing(String),
}

impl TokenError {
    /// A short snake_case reason, for metric labels and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer { .. } => "wrong_issuer",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::MissingSubject => "missing_subject",
            TokenError::NoSigningKey => "no_signing_key",
            TokenError::Random => "random",
            TokenError::Signing(_) => "signing_failed",
        }
    }
}

/// Generates a signing key from the OS RNG; the key is marked active.
pub fn generate_signing_key(
    algorithm: SigningAlgorithm,
    kid: impl Into<String>,
) -> Result<SigningKey, KeyError> {
    let kid = kid.into();
    if kid.is_empty() {
        return Err(KeyError::EmptyKid { index: 0 });
    }
    let rng = SystemRandom::new();
    let document = match algorithm {
        SigningAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng),
        SigningAlgorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        }
    }
    .map_err(|_| KeyError::Random)?;
    Ok(SigningKey {
        kid,
        algorithm,
        private_key: document.as_ref().to_vec(),
        active: true,
    })
}

/// A signing key from a PKCS#8 document whose algorithm is found by parsing it: Ed25519
/// (`EdDSA`) or P-256 (`ES256`). What `openssl genpkey -algorithm ed25519` or
/// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes, once out of PEM.
pub fn signing_key_from_pkcs8(
    kid: impl Into<String>,
    private_key: Vec<u8>,
    active: bool,
) -> Result<SigningKey, KeyError> {
    let kid = kid.into();
    if kid.is_empty() {
        return Err(KeyError::EmptyKid { index: 0 });
    }
    let rng = SystemRandom::new();
    let mut key = SigningKey {
        kid,
        algorithm: SigningAlgorithm::EdDSA,
        private_key,
        active,
    };
    let as_ed25519 = public_key(&key, &rng);
    if as_ed25519.is_ok() {
        return Ok(key);
    }
    key.algorithm = SigningAlgorithm::ES256;
    match public_key(&key, &rng) {
        Ok(_) => Ok(key),
        // Neither: report it as the Ed25519 key it most likely was meant to be.
        Err(KeyError::WrongAlgorithm { .. }) | Err(_) => Err(as_ed25519
            .err()
            .map(|e| match e {
                KeyError::WrongAlgorithm { kid, .. } => KeyError::NotPkcs8 {
                    kid,
                    algorithm: SigningAlgorithm::EdDSA,
                    reason: "neither an Ed25519 nor a P-256 key".into(),
                },
                other => other,
            })
            .unwrap_or(KeyError::Random)),
    }
}

/// A new kid: `k`, the UTC time as `20261126T145501Z`, and 4 random hex digits.
///
/// Kids so made sort by creation time, so the greatest kid (the one [`Keyring`] signs with when
/// no key or several are marked active) is the newest.
pub fn new_kid(now: SystemTime) -> String {
    let mut suffix = [0u8; 2];
    if getrandom::fill(&mut suffix).is_err() {
        // The suffix only tells apart keys made in the same second; it need not be secret.
        suffix = (now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos() as u16)
            .to_be_bytes();
    }
    // A clock before 1970 counts as the epoch, like everywhere else here.
    let at = chrono::DateTime::<chrono::Utc>::from(now.max(UNIX_EPOCH));
    format!(
        "k{}Z{:02x}{:02x}",
        at.format("%Y%m%dT%H%M%S"),
        suffix[0],
        suffix[1]
    )
}

/// Seconds since the Unix epoch; a clock before 1970 counts as 0.
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Every signing key, ready to sign (the active one) and verify (all).
///
/// Cloning is cheap (shared). `Debug` shows kids and algorithms only.
#[derive(Clone, Default)]
pub struct Keyring(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Sorted by kid; a handful at most, so a binary search beats hashing.
    verifiers: Vec<Verifier>,
    signer: Option<Signer>,
    jwks: Vec<Jwk>,
}

struct Verifier {
    kid: String,
    algorithm: SigningAlgorithm,
    /// The public key in ring's raw form (see `public_key`), prepared once.
    decoding: DecodingKey,
    /// Signature and `alg` only: the claims are checked against the caller's clock and settings.
    validation: Validation,
}

struct Signer {
    kid: String,
    encoding: EncodingKey,
    header: Header,
}

impl Keyring {
    /// Loads the keys. An empty slice gives an empty keyring, which signs nothing
    /// ([`TokenError::NoSigningKey`]) and verifies nothing ([`TokenError::UnknownKey`]).
    pub fn new(keys: &[SigningKey]) -> Result<Keyring, KeyError> {
        let rng = SystemRandom::new();
        let mut verifiers = Vec::with_capacity(keys.len());
        let mut jwks = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            if key.kid.is_empty() {
                return Err(KeyError::EmptyKid { index });
            }
            let public = public_key(key, &rng)?;
            jwks.push(jwk(key, &public));
            let algorithm = jws_algorithm(key.algorithm);
            let decoding = match key.algorithm {
                // Despite the names, ring (and so jsonwebtoken 9) wants the raw 32-byte key and
                // the uncompressed SEC1 point, not DER SubjectPublicKeyInfo.
                SigningAlgorithm::EdDSA => DecodingKey::from_ed_der(&public),
                SigningAlgorithm::ES256 => DecodingKey::from_ec_der(&public),
            };
            let mut validation = Validation::new(algorithm);
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            verifiers.push(Verifier {
                kid: key.kid.clone(),
                algorithm: key.algorithm,
                decoding,
                validation,
            });
        }
        verifiers.sort_by(|a, b| a.kid.cmp(&b.kid));
        if let Some(pair) = verifiers.windows(2).find(|w| w[0].kid == w[1].kid) {
            return Err(KeyError::DuplicateKid {
                kid: pair[0].kid.clone(),
            });
        }
        jwks.sort_by(|a, b| a.common.key_id.cmp(&b.common.key_id));

        let signer = active_key(keys).map(|key| {
            let algorithm = jws_algorithm(key.algorithm);
            let mut header = Header::new(algorithm);
            header.kid = Some(key.kid.clone());
            Signer {
                kid: key.kid.clone(),
                encoding: match key.algorithm {
                    SigningAlgorithm::EdDSA => EncodingKey::from_ed_der(&key.private_key),
                    SigningAlgorithm::ES256 => EncodingKey::from_ec_der(&key.private_key),
                },
                header,
            }
        });
        Ok(Keyring(Arc::new(Inner {
            verifiers,
            signer,
            jwks,
        })))
    }

    /// Whether the keyring has no key.
    pub fn is_empty(&self) -> bool {
        self.0.verifiers.is_empty()
    }

    /// The kid new tokens are signed with: among the keys marked active the greatest kid, or if
    /// none is marked, the greatest kid overall.
    pub fn active_kid(&self) -> Option<&str> {
        self.0.signer.as_ref().map(|s| s.kid.as_str())
    }

    /// Issues an access token for `user` of `tenant`, valid from `now` for
    /// `settings.access_ttl`. Returns the token and its claims.
    pub fn issue(
        &self,
        settings: &TokenSettings,
        tenant: &str,
        user: &str,
        epoch: u64,
        now: SystemTime,
    ) -> Result<(String, AccessClaims), TokenError> {
        let signer = self.0.signer.as_ref().ok_or(TokenError::NoSigningKey)?;
        if tenant.is_empty() || user.is_empty() {
            return Err(TokenError::MissingSubject);
        }
        let mut jti = [0u8; JTI_BYTES];
        getrandom::fill(&mut jti).map_err(|_| TokenError::Random)?;
        let iat = unix_secs(now);
        let claims = AccessClaims {
            iss: settings.issuer.clone(),
            aud: settings.audience.clone(),
            sub: user.to_owned(),
            tenant: tenant.to_owned(),
            epoch,
            iat,
            exp: iat.saturating_add(settings.access_ttl.as_secs()),
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let token = jsonwebtoken::encode(&signer.header, &claims, &signer.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok((token, claims))
    }

    /// Verifies a token at `now`: its key, algorithm and signature, then `iss`, `aud`, `exp`
    /// (refused from `exp` on, no leeway: the issuer's clock decided the lifetime), `iat` (at
    /// most [`MAX_CLOCK_SKEW`] ahead) and a non-empty tenant and user.
    ///
    /// Revocation (`epoch`, disabled or deleted users) is the caller's business, against the
    /// snapshot.
    pub fn verify(
        &self,
        settings: &TokenSettings,
        token: &str,
        now: SystemTime,
    ) -> Result<AccessClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let header = peek_header(token)?;
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let verifier = self.verifier(&kid).ok_or(TokenError::UnknownKey)?;
        if header.alg != jws_algorithm(verifier.algorithm) {
            return Err(TokenError::WrongAlgorithm);
        }
        let claims =
            jsonwebtoken::decode::<AccessClaims>(token, &verifier.decoding, &verifier.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        TokenError::WrongAlgorithm
                    }
                    _ => TokenError::Malformed,
                })?
                .claims;

        let now = unix_secs(now);
        if claims.iss != settings.issuer {
            return Err(TokenError::WrongIssuer {
                expected: settings.issuer.clone(),
            });
        }
        if claims.aud != settings.audience {
            return Err(TokenError::WrongAudience {
                expected: settings.audience.clone(),
            });
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.iat > now.saturating_add(MAX_CLOCK_SKEW.as_secs()) {
            return Err(TokenError::NotYetValid);
        }
        if claims.tenant.is_empty() || claims.sub.is_empty() {
            return Err(TokenError::MissingSubject);
        }
        Ok(claims)
    }

    /// The public keys as a JWK Set, sorted by kid, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::to_value(JwkSet {
            keys: self.0.jwks.clone(),
        })
        .unwrap_or_default()
    }

    fn verifier(&self, kid: &str) -> Option<&Verifier> {
        let v = &self.0.verifiers;
        v.binary_search_by(|v| v.kid.as_str().cmp(kid))
            .ok()
            .map(|i| &v[i])
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Keys<'a>(&'a [Verifier]);
        impl fmt::Debug for Keys<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|v| (&v.kid, v.algorithm)))
                    .finish()
            }
        }
        f.debug_struct("Keyring")
            .field("keys", &Keys(&self.0.verifiers))
            .field("active", &self.active_kid())
            .finish()
    }
}

/// The JWS algorithm of a key.
fn jws_algorithm(algorithm: SigningAlgorithm) -> Algorithm {
    match algorithm {
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
        SigningAlgorithm::ES256 => Algorithm::ES256,
    }
}

/// The key that signs: the greatest kid among those marked active, else the greatest overall.
fn active_key(keys: &[SigningKey]) -> Option<&SigningKey> {
    keys.iter()
        .filter(|k| k.active)
        .max_by(|a, b| a.kid.cmp(&b.kid))
        .or_else(|| keys.iter().max_by(|a, b| a.kid.cmp(&b.kid)))
}

/// The public key of a signing key as ring gives it: 32 bytes for Ed25519, the 65-byte
/// uncompressed point for P-256. Parsing also proves the private key usable.
fn public_key(key: &SigningKey, rng: &SystemRandom) -> Result<Vec<u8>, KeyError> {
    let parsed = match key.algorithm {
        // Also accepts PKCS#8 v1 (no public key inside), as `openssl genpkey` writes.
        SigningAlgorithm::EdDSA => Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key.private_key)
            .map(|pair| pair.public_key().as_ref().to_vec()),
        SigningAlgorithm::ES256 => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.private_key, rng)
                .map(|pair| pair.public_key().as_ref().to_vec())
        }
    };
    parsed.map_err(|rejected| {
        let reason = rejected.to_string();
        if reason == "WrongAlgorithm" {
            KeyError::WrongAlgorithm {
                kid: key.kid.clone(),
                declared: key.algorithm,
            }
        } else {
            KeyError::NotPkcs8 {
                kid: key.kid.clone(),
                algorithm: key.algorithm,
                reason,
            }
        }
    })
}

/// The public JWK of a key.
fn jwk(key: &SigningKey, public: &[u8]) -> Jwk {
    let (algorithm, params) = match key.algorithm {
        SigningAlgorithm::EdDSA => (
            KeyAlgorithm::EdDSA,
            AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(public),
            }),
        ),
        SigningAlgorithm::ES256 => (
            KeyAlgorithm::ES256,
            // Uncompressed point: 0x04, then x and y of 32 bytes each.
            AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: URL_SAFE_NO_PAD.encode(&public[1..33]),
                y: URL_SAFE_NO_PAD.encode(&public[33..65]),
            }),
        ),
    };
    Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(algorithm),
            key_id: Some(key.kid.clone()),
            ..CommonParameters::default()
        },
        algorithm: params,
    }
}

/// Decodes the header alone, to find the key before anything is verified. A header whose `alg`
/// jsonwebtoken does not know (`none`) is the wrong algorithm; anything else that does not
/// decode is malformed.
fn peek_header(token: &str) -> Result<Header, TokenError> {
    jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        // serde's message for a value outside an enum: here only `alg` is one.
        ErrorKind::Json(json) if json.to_string().starts_with("unknown variant") => {
            TokenError::WrongAlgorithm
        }
        _ => TokenError::Malformed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// 2026-11-26T14:55:01Z.
    const NOW: u64 = 1_795_704_901;
    const BOTH: [SigningAlgorithm; 2] = [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256];

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn mk_key(algorithm: SigningAlgorithm, kid: &str) -> SigningKey {
        generate_signing_key(algorithm, kid).expect("the OS RNG works")
    }

    fn mk_ring(keys: &[SigningKey]) -> Keyring {
        Keyring::new(keys).expect("valid keys")
    }

    /// A token issued at `NOW` by a one-key ring, with the ring.
    fn mk_token(algorithm: SigningAlgorithm, kid: &str) -> (Keyring, String, AccessClaims) {
        let ring = mk_ring(&[mk_key(algorithm, kid)]);
        let (token, claims) = ring
            .issue(&TokenSettings::default(), "acme", "alice", 7, at(NOW))
            .expect("issue");
        (ring, token, claims)
    }

    fn parts(token: &str) -> Vec<&str> {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWS compact serialization");
        parts
    }

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
    }

    fn encode_part(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"))
    }

    /// `token` with its header replaced, payload and signature kept.
    fn with_header(token: &str, header: Value) -> String {
        let p = parts(token);
        format!("{}.{}.{}", encode_part(&header), p[1], p[2])
    }

    /// Verifies with default settings at `NOW`, expecting a refusal that does not echo the token.
    fn refused(ring: &Keyring, token: &str) -> TokenError {
        refused_with(ring, &TokenSettings::default(), token, at(NOW))
    }

    fn refused_with(
        ring: &Keyring,
        settings: &TokenSettings,
        token: &str,
        now: SystemTime,
    ) -> TokenError {
        let err = ring
            .verify(settings, token, now)
            .expect_err("the token must be refused");
        let shown = format!("{err} {err:?}");
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!shown.contains(part), "error shows the token: {shown}");
        }
        err
    }

    /// Signs arbitrary claims with a signing key through jsonwebtoken directly.
    fn sign_raw(key: &SigningKey, claims: &Value) -> String {
        let mut header = Header::new(jws_algorithm(key.algorithm));
        header.kid = Some(key.kid.clone());
        let encoding = match key.algorithm {
            SigningAlgorithm::EdDSA => EncodingKey::from_ed_der(&key.private_key),
            SigningAlgorithm::ES256 => EncodingKey::from_ec_der(&key.private_key),
        };
        jsonwebtoken::encode(&header, claims, &encoding).expect("sign")
    }

    fn claims_json(tenant: &str, sub: &str) -> Value {
        json!({
            "iss": "fleetward", "aud": "fleetward", "sub": sub, "tenant": tenant,
            "epoch": 1, "iat": NOW, "exp": NOW + 900, "jti": "x",
        })
    }

    #[test]
    fn round_trip_both_algorithms() {
        for algorithm in BOTH {
            let (ring, token, claims) = mk_token(algorithm, "k1");
            assert_eq!(
                claims,
                AccessClaims {
                    jti: claims.jti.clone(),
                    iss: "fleetward".into(),
                    aud: "fleetward".into(),
                    sub: "alice".into(),
                    tenant: "acme".into(),
                    epoch: 7,
                    iat: NOW,
                    exp: NOW + 15 * 60,
                }
            );
            assert_eq!(URL_SAFE_NO_PAD.decode(&claims.jti).expect("b64").len(), 16);
            let header = decode_part(parts(&token)[0]);
            assert_eq!(header["alg"], algorithm.as_str());
            assert_eq!(header["kid"], "k1");
            assert_eq!(header["typ"], "JWT");
            let verified = ring
                .verify(&TokenSettings::default(), &token, at(NOW))
                .expect("verifies");
            assert_eq!(verified, claims);

            let (_, again) = ring
                .issue(&TokenSettings::default(), "acme", "alice", 7, at(NOW))
                .expect("issue");
            assert_ne!(again.jti, claims.jti, "every token gets a fresh jti");
        }
    }

    #[test]
    fn issue_uses_the_settings() {
        let ring = mk_ring(&[mk_key(SigningAlgorithm::EdDSA, "k1")]);
        let settings = TokenSettings {
            issuer: "https://fw.example".into(),
            audience: "mqtt".into(),
            access_ttl: Duration::from_secs(60),
            ..TokenSettings::default()
        };
        let (token, claims) = ring
            .issue(&settings, "acme", "alice", 0, at(NOW))
            .expect("issue");
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str(), claims.exp),
            ("https://fw.example", "mqtt", NOW + 60)
        );
        assert!(ring.verify(&settings, &token, at(NOW)).is_ok());
    }

    #[test]
    fn jwks_eddsa_is_the_public_key() {
        let key = mk_key(SigningAlgorithm::EdDSA, "k1");
        let ring = mk_ring(std::slice::from_ref(&key));
        let jwks = ring.jwks();
        let keys = jwks["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 1);
        let jwk = &keys[0];
        let pair = Ed25519KeyPair::from_pkcs8(&key.private_key).expect("pkcs8");
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        assert_eq!(
            *jwk,
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"})
        );
        assert_jwk_verifies(jwk, &ring, Algorithm::EdDSA);
    }

    #[test]
    fn jwks_es256_is_the_public_point() {
        let key = mk_key(SigningAlgorithm::ES256, "k1");
        let ring = mk_ring(std::slice::from_ref(&key));
        let jwk = &ring.jwks()["keys"][0];
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.private_key,
            &SystemRandom::new(),
        )
        .expect("pkcs8");
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 0x04, "uncompressed");
        assert_eq!(
            *jwk,
            json!({
                "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
                "kid": "k1", "alg": "ES256", "use": "sig",
            })
        );
        assert_jwk_verifies(jwk, &ring, Algorithm::ES256);
    }

    /// A third party that only has the JWK can verify our tokens.
    fn assert_jwk_verifies(jwk: &Value, ring: &Keyring, algorithm: Algorithm) {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).expect("a JWK");
        let key = DecodingKey::from_jwk(&jwk).expect("usable");
        let (token, claims) = ring
            .issue(
                &TokenSettings::default(),
                "acme",
                "alice",
                1,
                SystemTime::now(),
            )
            .expect("issue");
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&["fleetward"]);
        let data = jsonwebtoken::decode::<AccessClaims>(&token, &key, &validation)
            .expect("verifies with the JWK");
        assert_eq!(data.claims, claims);
    }

    #[test]
    fn jwks_lists_every_key_sorted_by_kid_without_private_parts() {
        let ring = mk_ring(&[
            mk_key(SigningAlgorithm::ES256, "kb"),
            mk_key(SigningAlgorithm::EdDSA, "kc"),
            mk_key(SigningAlgorithm::EdDSA, "ka"),
        ]);
        let jwks = ring.jwks();
        let keys = jwks["keys"].as_array().expect("keys");
        let kids: Vec<&str> = keys.iter().filter_map(|k| k["kid"].as_str()).collect();
        assert_eq!(kids, ["ka", "kb", "kc"]);
        for k in keys {
            assert!(k.get("d").is_none(), "no private part: {k}");
        }
    }

    #[test]
    fn expired_at_exp_valid_the_second_before() {
        for algorithm in BOTH {
            let (ring, token, claims) = mk_token(algorithm, "k1");
            let settings = TokenSettings::default();
            assert!(ring.verify(&settings, &token, at(claims.exp - 1)).is_ok());
            let err = refused_with(&ring, &settings, &token, at(claims.exp));
            assert_eq!(err, TokenError::Expired);
            assert_eq!(err.as_str(), "expired");
        }
    }

    #[test]
    fn iat_more_than_a_minute_ahead_is_refused() {
        let (ring, _, _) = mk_token(SigningAlgorithm::EdDSA, "k1");
        let settings = TokenSettings::default();
        let (skewed, _) = ring
            .issue(&settings, "acme", "alice", 0, at(NOW + 60))
            .expect("issue");
        assert!(ring.verify(&settings, &skewed, at(NOW)).is_ok());
        let (future, _) = ring
            .issue(&settings, "acme", "alice", 0, at(NOW + 61))
            .expect("issue");
        let err = refused(&ring, &future);
        assert_eq!(err, TokenError::NotYetValid);
        let (far, _) = ring
            .issue(&settings, "acme", "alice", 0, at(NOW + 86_400))
            .expect("issue");
        assert_eq!(refused(&ring, &far), TokenError::NotYetValid);
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let (ring, token, _) = mk_token(SigningAlgorithm::EdDSA, "k1");
        let settings = TokenSettings {
            issuer: "other".into(),
            ..TokenSettings::default()
        };
        let err = refused_with(&ring, &settings, &token, at(NOW));
        assert_eq!(
            err,
            TokenError::WrongIssuer {
                expected: "other".into()
            }
        );
        assert!(err.to_string().contains("\"other\""), "{err}");
        assert_eq!(err.as_str(), "wrong_issuer");
    }

    #[test]
    fn wrong_audience_is_refused() {
        let (ring, token, _) = mk_token(SigningAlgorithm::ES256, "k1");
        let settings = TokenSettings {
            audience: "http".into(),
            ..TokenSettings::default()
        };
        let err = refused_with(&ring, &settings, &token, at(NOW));
        assert_eq!(
            err,
            TokenError::WrongAudience {
                expected: "http".into()
            }
        );
        assert_eq!(err.as_str(), "wrong_audience");
    }

    #[test]
    fn another_key_with_the_same_kid_is_a_bad_signature() {
        for algorithm in BOTH {
            let (ring, _, _) = mk_token(algorithm, "k1");
            let (_, forged, _) = mk_token(algorithm, "k1");
            assert_eq!(refused(&ring, &forged), TokenError::BadSignature);
        }
    }

    #[test]
    fn unknown_or_missing_kid_is_refused() {
        let (ring, _, _) = mk_token(SigningAlgorithm::EdDSA, "k1");
        let (_, other, _) = mk_token(SigningAlgorithm::EdDSA, "k2");
        assert_eq!(refused(&ring, &other), TokenError::UnknownKey);
        let (_, token, _) = mk_token(SigningAlgorithm::EdDSA, "k1");
        let no_kid = with_header(&token, json!({"alg": "EdDSA", "typ": "JWT"}));
        let err = refused(&ring, &no_kid);
        assert_eq!(err, TokenError::UnknownKey);
        assert_eq!(err.as_str(), "unknown_key");
    }

    #[test]
    fn the_header_alg_must_be_the_keys() {
        for (algorithm, claimed) in [
            (SigningAlgorithm::EdDSA, "ES256"),
            (SigningAlgorithm::ES256, "EdDSA"),
            (SigningAlgorithm::ES256, "ES384"),
            (SigningAlgorithm::EdDSA, "RS256"),
            (SigningAlgorithm::EdDSA, "eddsa"),
        ] {
            let (ring, token, _) = mk_token(algorithm, "k1");
            let confused = with_header(&token, json!({"alg": claimed, "kid": "k1", "typ": "JWT"}));
            assert_eq!(
                refused(&ring, &confused),
                TokenError::WrongAlgorithm,
                "{algorithm:?} key, header says {claimed}"
            );
        }
    }

    #[test]
    fn hmac_with_the_public_key_as_secret_is_refused() {
        let (ring, _, _) = mk_token(SigningAlgorithm::EdDSA, "k1");
        let x = ring.jwks()["keys"][0]["x"].as_str().expect("x").to_owned();
        let public = URL_SAFE_NO_PAD.decode(x).expect("b64");
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let mut header = Header::new(alg);
            header.kid = Some("k1".into());
            let token = jsonwebtoken::encode(
                &header,
                &claims_json("acme", "alice"),
                &EncodingKey::from_secret(&public),
            )
            .expect("sign");
            assert_eq!(refused(&ring, &token), TokenError::WrongAlgorithm);
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let (ring, token, _) = mk_token(SigningAlgorithm::EdDSA, "k1");
        let none = with_header(&token, json!({"alg": "none", "kid": "k1", "typ": "JWT"}));
        assert_eq!(refused(&ring, &none), TokenError::WrongAlgorithm);
        let p = parts(&none);
        let unsigned = format!("{}.{}.", p[0], p[1]);
        let err = refused(&ring, &unsigned);
        assert_eq!(err, TokenError::WrongAlgorithm);
        assert_eq!(err.as_str(), "wrong_algorithm");
    }

    #[test]
    fn tampered_claims_are_a_bad_signature() {
        for algorithm in BOTH {
            let (ring, token, claims) = mk_token(algorithm, "k1");
            let p = parts(&token);
            for changed in [
                AccessClaims {
                    tenant: "evil".into(),
                    ..claims.clone()
                },
                AccessClaims {
                    epoch: claims.epoch + 1,
                    ..claims.clone()
                },
                AccessClaims {
                    exp: claims.exp + 86_400,
                    ..claims.clone()
                },
            ] {
                let payload = encode_part(&serde_json::to_value(&changed).expect("json"));
                let tampered = format!("{}.{payload}.{}", p[0], p[2]);
                let err = refused(&ring, &tampered);
                assert_eq!(err, TokenError::BadSignature);
                assert_eq!(err.as_str(), "bad_signature");
            }
            let mut signature = URL_SAFE_NO_PAD.decode(p[2]).expect("b64");
            signature[0] ^= 1;
            let flipped = format!("{}.{}.{}", p[0], p[1], URL_SAFE_NO_PAD.encode(signature));
            assert_eq!(refused(&ring, &flipped), TokenError::BadSignature);
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let key = mk_key(SigningAlgorithm::EdDSA, "k1");
        let ring = mk_ring(std::slice::from_ref(&key));
        let (token, _) = ring
            .issue(&TokenSettings::default(), "acme", "alice", 0, at(NOW))
            .expect("issue");
        let p = parts(&token);
        let not_claims = sign_raw(&key, &json!({"sub": "alice"}));
        let long = format!("{token}{}", "A".repeat(MAX_TOKEN_LEN));
        for bad in [
            "",
            "garbage",
            "a.b.c",
            "..",
            &format!("{}.{}", p[0], p[1]),
            &format!("{}.{}.{}.{}", p[0], p[1], p[2], p[2]),
            &format!("{}.{}.!!!", p[0], p[1]),
            &format!("{}.!!!.{}", p[0], p[2]),
            &format!("{}.{}.{}", encode_part(&json!("alg")), p[1], p[2]),
            &not_claims,
            &long,
        ] {
            let err = ring
                .verify(&TokenSettings::default(), bad, at(NOW))
                .expect_err("refused");
            assert!(
                matches!(err, TokenError::Malformed | TokenError::BadSignature),
                "{bad:?}: {err:?}"
            );
        }
        assert_eq!(refused(&ring, &not_claims), TokenError::Malformed);
        assert_eq!(refused(&ring, &long), TokenError::Malformed);
        assert_eq!(refused(&ring, "garbage").as_str(), "malformed");
    }

    #[test]
    fn tenant_and_user_must_be_named() {
        let key = mk_key(SigningAlgorithm::ES256, "k1");
        let ring = mk_ring(std::slice::from_ref(&key));
        let settings = TokenSettings::default();
        for (tenant, user) in [("", "alice"), ("acme", "")] {
            assert_eq!(
                ring.issue(&settings, tenant, user, 0, at(NOW)),
                Err(TokenError::MissingSubject)
            );
            let token = sign_raw(&key, &claims_json(tenant, user));
            assert_eq!(refused(&ring, &token), TokenError::MissingSubject);
        }
        assert!(
            ring.verify(
                &settings,
                &sign_raw(&key, &claims_json("acme", "alice")),
                at(NOW)
            )
            .is_ok()
        );
    }

    #[test]
    fn rotation_signs_with_the_new_key_and_verifies_the_old() {
        let settings = TokenSettings::default();
        let mut old = mk_key(SigningAlgorithm::EdDSA, "k20260101T000000Z0000");
        let before = mk_ring(std::slice::from_ref(&old));
        let (old_token, _) = before
            .issue(&settings, "acme", "alice", 0, at(NOW))
            .expect("issue");

        old.active = false;
        let new = mk_key(SigningAlgorithm::ES256, "k20261126T145501Z0000");
        let during = mk_ring(&[old.clone(), new.clone()]);
        assert_eq!(during.active_kid(), Some(new.kid.as_str()));
        let (new_token, _) = during
            .issue(&settings, "acme", "alice", 0, at(NOW))
            .expect("issue");
        assert_eq!(decode_part(parts(&new_token)[0])["kid"], new.kid.as_str());
        assert!(during.verify(&settings, &old_token, at(NOW)).is_ok());
        assert!(during.verify(&settings, &new_token, at(NOW)).is_ok());

        let after = mk_ring(&[new]);
        assert_eq!(refused(&after, &old_token), TokenError::UnknownKey);
        assert!(after.verify(&settings, &new_token, at(NOW)).is_ok());
    }

    #[test]
    fn the_active_key_is_the_greatest_marked_kid_else_the_greatest() {
        let mk = |kid: &str, active| SigningKey {
            active,
            ..mk_key(SigningAlgorithm::EdDSA, kid)
        };
        let ring = mk_ring(&[mk("a", true), mk("c", false), mk("b", true)]);
        assert_eq!(ring.active_kid(), Some("b"));
        let ring = mk_ring(&[mk("a", false), mk("c", false), mk("b", false)]);
        assert_eq!(ring.active_kid(), Some("c"));
        let (token, _) = ring
            .issue(&TokenSettings::default(), "acme", "alice", 0, at(NOW))
            .expect("issue");
        assert_eq!(decode_part(parts(&token)[0])["kid"], "c");
    }

    #[test]
    fn an_empty_keyring_signs_and_verifies_nothing() {
        let ring = mk_ring(&[]);
        assert!(ring.is_empty());
        assert_eq!(ring.active_kid(), None);
        assert_eq!(ring.jwks(), json!({"keys": []}));
        let err = ring
            .issue(&TokenSettings::default(), "acme", "alice", 0, at(NOW))
            .expect_err("no key");
        assert_eq!(
            (err.as_str(), err),
            ("no_signing_key", TokenError::NoSigningKey)
        );
        let (_, token, _) = mk_token(SigningAlgorithm::EdDSA, "k1");
        assert_eq!(refused(&ring, &token), TokenError::UnknownKey);
        assert!(Keyring::default().is_empty());
    }

    #[test]
    fn bad_keys_are_refused_by_kid() {
        let garbage = SigningKey {
            kid: "k-bad".into(),
            algorithm: SigningAlgorithm::ES256,
            private_key: b"not a key".to_vec(),
            active: true,
        };
        let err = Keyring::new(&[garbage]).expect_err("garbage");
        assert!(
            matches!(&err, KeyError::NotPkcs8 { kid, algorithm: SigningAlgorithm::ES256, .. } if kid == "k-bad"),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"k-bad\""), "{err}");

        let dup = Keyring::new(&[
            mk_key(SigningAlgorithm::EdDSA, "k1"),
            mk_key(SigningAlgorithm::EdDSA, "k0"),
            mk_key(SigningAlgorithm::ES256, "k1"),
        ])
        .expect_err("duplicate");
        assert_eq!(dup, KeyError::DuplicateKid { kid: "k1".into() });

        let mut empty = mk_key(SigningAlgorithm::EdDSA, "k1");
        empty.kid.clear();
        assert_eq!(
            Keyring::new(&[mk_key(SigningAlgorithm::EdDSA, "k0"), empty]).expect_err("empty"),
            KeyError::EmptyKid { index: 1 }
        );
        assert_eq!(
            generate_signing_key(SigningAlgorithm::EdDSA, "").expect_err("empty"),
            KeyError::EmptyKid { index: 0 }
        );

        for (declared, actual) in [
            (SigningAlgorithm::EdDSA, SigningAlgorithm::ES256),
            (SigningAlgorithm::ES256, SigningAlgorithm::EdDSA),
        ] {
            let key = SigningKey {
                algorithm: declared,
                ..mk_key(actual, "k-mixed")
            };
            assert_eq!(
                Keyring::new(&[key]).expect_err("wrong algorithm"),
                KeyError::WrongAlgorithm {
                    kid: "k-mixed".into(),
                    declared
                }
            );
        }
    }

    #[test]
    fn pkcs8_v1_ed25519_keys_as_openssl_writes_them_work() {
        // `openssl genpkey -algorithm ed25519 -outform DER`: PKCS#8 v1, the seed only.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&[7u8; 32]);
        let key = SigningKey {
            kid: "k1".into(),
            algorithm: SigningAlgorithm::EdDSA,
            private_key: der,
            active: true,
        };
        let ring = mk_ring(&[key]);
        let settings = TokenSettings::default();
        let (token, _) = ring
            .issue(&settings, "acme", "alice", 0, at(NOW))
            .expect("issue");
        assert!(ring.verify(&settings, &token, at(NOW)).is_ok());
    }

    #[test]
    fn debug_shows_no_key_material() {
        for algorithm in BOTH {
            let key = mk_key(algorithm, "k1");
            let ring = mk_ring(std::slice::from_ref(&key));
            let shown = format!("{ring:?} {key:?} {ring:#?} {key:#?}");
            assert!(shown.contains("k1"), "{shown}");
            let private = &key.private_key;
            let tail = &private[private.len() - 16..];
            let forms = [
                format!("{:?}", &tail[..4])
                    .trim_matches(['[', ']'])
                    .to_owned(),
                tail.iter().map(|b| format!("{b:02x}")).collect(),
                URL_SAFE_NO_PAD.encode(tail)[..12].to_owned(),
                base64::engine::general_purpose::STANDARD.encode(tail)[..12].to_owned(),
            ];
            for form in forms {
                assert!(!shown.contains(&form), "{form} in {shown}");
            }
        }
    }

    #[test]
    fn error_reasons_are_distinct_snake_case() {
        let all = [
            TokenError::Malformed,
            TokenError::UnknownKey,
            TokenError::WrongAlgorithm,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongIssuer {
                expected: String::new(),
            },
            TokenError::WrongAudience {
                expected: String::new(),
            },
            TokenError::MissingSubject,
            TokenError::NoSigningKey,
            TokenError::Random,
            TokenError::Signing(String::new()),
        ];
        let reasons: std::collections::BTreeSet<&str> = all.iter().map(|e| e.as_str()).collect();
        assert_eq!(reasons.len(), all.len());
        for r in reasons {
            assert!(
                r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}"
            );
        }
    }

    #[test]
    fn new_kids_name_the_utc_time_and_sort_by_it() {
        let kid = new_kid(at(NOW));
        assert_eq!(kid.len(), 21, "{kid}");
        assert!(kid.starts_with("k20261126T145501Z"), "{kid}");
        assert!(kid[17..].bytes().all(|b| b.is_ascii_hexdigit()), "{kid}");
        assert!(new_kid(at(NOW)) < new_kid(at(NOW + 1)));
        assert!(new_kid(UNIX_EPOCH).starts_with("k19700101T000000Z"));
        assert!(new_kid(at(951_782_400)).starts_with("k20000229T000000Z"));
        assert!(new_kid(at(1_735_689_599)).starts_with("k20241231T235959Z"));
        assert!(new_kid(at(4_107_542_400)).starts_with("k21000301T000000Z"));
        let key = generate_signing_key(SigningAlgorithm::EdDSA, kid.clone()).expect("rng");
        assert_eq!(key.kid, kid);
        assert!(key.active);
    }

    #[test]
    fn pkcs8_documents_tell_their_algorithm() {
        for algorithm in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
            let made = generate_signing_key(algorithm, "k1").expect("generated");
            let read = signing_key_from_pkcs8("k1", made.private_key.clone(), false)
                .expect("a PKCS#8 key");
            assert_eq!(read.algorithm, algorithm);
            assert!(!read.active);
            assert_eq!(read.private_key, made.private_key);
        }
        let err = signing_key_from_pkcs8("k2", vec![1, 2, 3], true).expect_err("garbage");
        assert!(err.to_string().contains("k2"), "{err}");
        assert!(signing_key_from_pkcs8("", vec![], true).is_err());
    }
}
