//! Device certificates: a tenant's CA bundle and revoked serials, a thing's certificate rules,
//! and the check of a client certificate chain (DESIGN §3).
//!
//! The chain is verified against the trust anchors of one tenant only, the one the
//! certificate (or the client) names, so a certificate from one tenant's CA never
//! authenticates in another, whatever it names. Only public material is here: CA
//! certificates, serials and fingerprints.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The URI scheme of a SAN that names a thing: `fleetward://<tenant>/<thing>`.
pub const THING_URI_SCHEME: &str = "fleetward://";

/// The most CA certificates one tenant's bundle may hold; more are a misconfiguration.
pub const MAX_CA_CERTIFICATES: usize = 16;

/// The most certificates a client chain may hold (the leaf and its intermediates).
pub const MAX_CHAIN: usize = 8;

/// Why a CA bundle could not be read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaError {
    /// The bundle holds no certificate.
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    Empty,
    /// A certificate does not parse.
    #[error("certificate {index} does not parse: {reason}")]
    Unparsable {
        /// Its position in the bundle, from 1.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// A certificate is not a CA (no basicConstraints CA:TRUE).
    #[error("certificate {index} ({subject}) is not a CA certificate (basicConstraints CA:TRUE)")]
    NotCa {
        /// Its position in the bundle, from 1.
        index: usize,
        /// Its subject.
        subject: String,
    },
    /// Too many certificates.
    #[error("holds {0} certificates; at most {MAX_CA_CERTIFICATES}")]
    TooMany(usize),
}

/// One tenant's device CA: its certificates (several during a rotation) and the serials it
/// revoked. Equality compares the certificates and serials.
#[derive(Clone)]
pub struct DeviceCa {
    certificates: Vec<Arc<[u8]>>,
    revoked: BTreeSet<String>,
    /// Parsed once: the anchors, and each one's subject (DER) and SHA-256.
    anchors: Arc<Vec<Anchor>>,
}

struct Anchor {
    trust: TrustAnchor<'static>,
    subject: Vec<u8>,
    fingerprint: [u8; 32],
}

impl DeviceCa {
    /// A CA from DER certificates and revoked serials (any hex form; see [`normalize_serial`]).
    pub fn new(
        certificates: Vec<Vec<u8>>,
        revoked: impl IntoIterator<Item = String>,
    ) -> Result<Self, CaError> {
        if certificates.is_empty() {
            return Err(CaError::Empty);
        }
        if certificates.len() > MAX_CA_CERTIFICATES {
            return Err(CaError::TooMany(certificates.len()));
        }
        let mut anchors = Vec::with_capacity(certificates.len());
        for (i, der) in certificates.iter().enumerate() {
            let index = i + 1;
            let (_, parsed) = X509Certificate::from_der(der).map_err(|e| CaError::Unparsable {
                index,
                reason: e.to_string(),
            })?;
            if !parsed.is_ca() {
                return Err(CaError::NotCa {
                    index,
                    subject: parsed.subject().to_string(),
                });
            }
            let trust = webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .map_err(|e| CaError::Unparsable {
                    index,
                    reason: format!("{e:?}"),
                })?
                .to_owned();
            anchors.push(Anchor {
                trust,
                subject: parsed.subject().as_raw().to_vec(),
                fingerprint: Sha256::digest(der).into(),
            });
        }
        Ok(Self {
            certificates: certificates.into_iter().map(Arc::from).collect(),
            revoked: revoked
                .into_iter()
                .filter_map(|s| normalize_serial(&s))
                .collect(),
            anchors: Arc::new(anchors),
        })
    }

    /// A CA from a PEM bundle (`ca.crt`) and revoked serials.
    pub fn from_pem(
        pem: &[u8],
        revoked: impl IntoIterator<Item = String>,
    ) -> Result<Self, CaError> {
        Self::new(pem_certificates(pem)?, revoked)
    }

    /// The CA certificates, DER.
    pub fn certificates(&self) -> impl Iterator<Item = &[u8]> {
        self.certificates.iter().map(|c| &**c)
    }

    /// The revoked serials, normalized.
    pub fn revoked(&self) -> &BTreeSet<String> {
        &self.revoked
    }

    /// The DER subjects of the CA certificates (what a leaf's issuer names).
    pub(crate) fn subjects(&self) -> impl Iterator<Item = &[u8]> {
        self.anchors.iter().map(|a| a.subject.as_slice())
    }

    /// Whether an anchor with this SHA-256 is still trusted.
    pub(crate) fn trusts(&self, fingerprint: &[u8; 32]) -> bool {
        self.anchors.iter().any(|a| &a.fingerprint == fingerprint)
    }

    /// Verifies a chain (leaf first) for client authentication at `now`; the SHA-256 of the
    /// anchor it chains to.
    pub(crate) fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<[u8; 32], webpki::Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(webpki::Error::BadDer)?;
        let leaf = webpki::EndEntityCert::try_from(leaf)?;
        let anchors: Vec<TrustAnchor<'_>> = self.anchors.iter().map(|a| a.trust.clone()).collect();
        let path = leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )?;
        let used = path.anchor();
        self.anchors
            .iter()
            .find(|a| {
                a.trust.subject == used.subject
                    && a.trust.subject_public_key_info == used.subject_public_key_info
            })
            .map(|a| a.fingerprint)
            .ok_or(webpki::Error::UnknownIssuer)
    }
}

impl PartialEq for DeviceCa {
    fn eq(&self, other: &Self) -> bool {
        self.certificates == other.certificates && self.revoked == other.revoked
    }
}

impl Eq for DeviceCa {}

impl fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCa")
            .field("certificates", &self.certificates.len())
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceCaWire {
    certificates: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    revoked_serials: BTreeSet<String>,
}

impl Serialize for DeviceCa {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        DeviceCaWire {
            certificates: self
                .certificates
                .iter()
                .map(|c| STANDARD.encode(c))
                .collect(),
            revoked_serials: self.revoked.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DeviceCa {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = DeviceCaWire::deserialize(deserializer)?;
        let certificates = wire
            .certificates
            .iter()
            .map(|c| STANDARD.decode(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::de::Error::custom)?;
        DeviceCa::new(certificates, wire.revoked_serials).map_err(serde::de::Error::custom)
    }
}

/// Which credentials authenticate a thing (`Thing.spec.credentials.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialMode {
    /// Only its key.
    #[default]
    Key,
    /// Its key or a client certificate.
    KeyOrCertificate,
    /// Only a client certificate.
    Certificate,
}

impl CredentialMode {
    /// Whether a key authenticates.
    pub fn allows_key(self) -> bool {
        self != CredentialMode::Certificate
    }

    /// Whether a certificate authenticates.
    pub fn allows_certificate(self) -> bool {
        self != CredentialMode::Key
    }

    /// Whether this is the default (key only).
    pub fn is_key(&self) -> bool {
        *self == CredentialMode::Key
    }
}

/// A thing's certificate rules (`Thing.spec.credentials.x509`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingX509 {
    /// The subject common name that names the thing, instead of its own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// Serials of the thing's certificates that no longer authenticate it, normalized.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_serials: Vec<String>,
}

/// The certificate a subject authenticated with, kept with its session so that a revocation,
/// a CA removed from the bundle or the end of its validity ends the session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CertificateSeal {
    /// Its serial, normalized.
    pub serial: String,
    /// Its `notAfter`, in seconds since the Unix epoch.
    pub not_after: u64,
    /// The SHA-256 of the CA certificate it chained to.
    pub anchor: [u8; 32],
    /// The SHA-256 of the certificate (DER).
    pub fingerprint: [u8; 32],
}

impl CertificateSeal {
    /// How long until the certificate expires, from `now` (zero once it has).
    pub fn remaining(&self, now: UnixTime) -> std::time::Duration {
        std::time::Duration::from_secs(self.not_after.saturating_sub(now.as_secs()))
    }

    /// The first 12 hex digits of the certificate's SHA-256: enough for logs and status.
    pub fn short_fingerprint(&self) -> String {
        hex(&self.fingerprint[..6])
    }
}

/// A serial number as lower-case hex without separators or leading zeros; `None` when it is
/// not hex.
pub fn normalize_serial(serial: &str) -> Option<String> {
    let digits: String = serial
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The DER certificates of a PEM text, in order; other PEM sections are skipped.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for (i, item) in x509_parser::pem::Pem::iter_from_buffer(pem).enumerate() {
        let item = item.map_err(|e| CaError::Unparsable {
            index: i + 1,
            reason: e.to_string(),
        })?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    if out.is_empty() {
        return Err(CaError::Empty);
    }
    Ok(out)
}

/// What a client certificate says about itself, read before anything is trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateNames {
    /// The subject common name, if any.
    pub common_name: Option<String>,
    /// The `(tenant, thing)` of a `fleetward://<tenant>/<thing>` URI SAN, if any.
    pub uri: Option<(String, String)>,
    /// The issuer's DER name.
    pub issuer: Vec<u8>,
    /// The serial, normalized.
    pub serial: String,
    /// `notBefore`, seconds since the Unix epoch (0 when before it).
    pub not_before: u64,
    /// `notAfter`, seconds since the Unix epoch (0 when before it).
    pub not_after: u64,
    /// The SHA-256 of the DER.
    pub fingerprint: [u8; 32],
}

impl CertificateNames {
    /// Reads a leaf certificate; `None` when it does not parse.
    pub fn read(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let uri = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .into_iter()
            .flat_map(|san| san.value.general_names.iter())
            .find_map(|name| match name {
                GeneralName::URI(uri) => thing_uri(uri),
                _ => None,
            });
        Some(Self {
            common_name,
            uri,
            issuer: cert.issuer().as_raw().to_vec(),
            serial: normalize_serial(&hex(cert.raw_serial())).unwrap_or_default(),
            not_before: u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0),
            not_after: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
            fingerprint: Sha256::digest(der).into(),
        })
    }
}

/// The `(tenant, thing)` of a `fleetward://<tenant>/<thing>` URI.
pub fn thing_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(THING_URI_SCHEME)?;
    let (tenant, thing) = rest.split_once('/')?;
    if tenant.is_empty() || thing.is_empty() || thing.contains('/') {
        return None;
    }
    Some((tenant.to_owned(), thing.to_owned()))
}

impl crate::Snapshot {
    /// The thing a client certificate chain authenticates, and its seal; `BadCredential` for
    /// any chain that does not verify against the named tenant's CA, is revoked, names no
    /// thing that accepts certificates, or names another thing than `claimed`.
    pub(crate) fn certificate_thing(
        &self,
        chain: &[CertificateDer<'_>],
        claimed: Option<(&str, &str)>,
        now: UnixTime,
    ) -> Result<(&crate::Thing, CertificateSeal), crate::DenyReason> {
        use crate::DenyReason::BadCredential;
        if chain.is_empty() || chain.len() > MAX_CHAIN {
            return Err(BadCredential);
        }
        let names = CertificateNames::read(&chain[0]).ok_or(BadCredential)?;
        let tenant = self.certificate_tenant(&names, claimed)?;
        let ca = self
            .tenant(tenant)
            .and_then(|t| t.device_ca.as_ref())
            .ok_or(BadCredential)?;
        // The chain first: nothing below is told to a holder of a certificate the tenant's
        // CA did not sign.
        let anchor = ca.verify(chain, now).map_err(|_| BadCredential)?;
        let thing = self.certificate_names_thing(tenant, &names)?;
        if claimed.is_some_and(|(t, n)| t != tenant || n != thing.name) {
            return Err(BadCredential);
        }
        let seal = CertificateSeal {
            serial: names.serial,
            not_after: names.not_after,
            anchor,
            fingerprint: names.fingerprint,
        };
        if !thing.credential_mode.allows_certificate() || revoked(ca, thing, &seal.serial) {
            return Err(BadCredential);
        }
        Ok((thing, seal))
    }

    /// The tenant whose CA is asked: the one the URI SAN names, else the one the client
    /// named, else the only tenant with a CA of the leaf's issuer name.
    fn certificate_tenant<'a>(
        &'a self,
        names: &'a CertificateNames,
        claimed: Option<(&'a str, &str)>,
    ) -> Result<&'a str, crate::DenyReason> {
        if let Some((tenant, _)) = &names.uri {
            return Ok(tenant);
        }
        if let Some((tenant, _)) = claimed {
            return Ok(tenant);
        }
        match self
            .tenants_by_ca_subject
            .get(&names.issuer)
            .map(Vec::as_slice)
        {
            Some([only]) => Ok(only),
            _ => Err(crate::DenyReason::BadCredential),
        }
    }

    /// The thing a verified certificate names in `tenant`: by its URI SAN, by a thing's
    /// `x509.common_name`, or by its common name being the name of a thing without one.
    fn certificate_names_thing(
        &self,
        tenant: &str,
        names: &CertificateNames,
    ) -> Result<&crate::Thing, crate::DenyReason> {
        use crate::DenyReason::BadCredential;
        if let Some((_, thing)) = &names.uri {
            return self.thing(tenant, thing).ok_or(BadCredential);
        }
        let cn = names.common_name.as_deref().ok_or(BadCredential)?;
        let mapped = self
            .things_by_common_name
            .get(&crate::ResourceName::new(tenant, cn));
        match mapped.map(Vec::as_slice) {
            Some([only]) => self.thing(tenant, only).ok_or(BadCredential),
            Some(_) => Err(BadCredential),
            None => self
                .thing(tenant, cn)
                .filter(|t| t.x509.as_ref().is_none_or(|x| x.common_name.is_none()))
                .ok_or(BadCredential),
        }
    }

    /// Whether the certificate a live session authenticated with still would: its CA still
    /// trusted, not revoked, not expired, and certificates still accepted for the thing.
    pub(crate) fn certificate_still_valid(
        &self,
        subject: &crate::Subject,
        seal: &CertificateSeal,
        now: UnixTime,
    ) -> Result<(), crate::DenyReason> {
        let ca = self
            .tenant(&subject.tenant)
            .and_then(|t| t.device_ca.as_ref());
        let thing = self.thing(&subject.tenant, &subject.name);
        let valid = match (ca, thing) {
            (Some(ca), Some(thing)) => {
                ca.trusts(&seal.anchor)
                    && thing.credential_mode.allows_certificate()
                    && !revoked(ca, thing, &seal.serial)
                    && now.as_secs() < seal.not_after
            }
            _ => false,
        };
        if valid {
            Ok(())
        } else {
            Err(crate::DenyReason::BadCredential)
        }
    }
}

fn revoked(ca: &DeviceCa, thing: &crate::Thing, serial: &str) -> bool {
    ca.revoked.contains(serial)
        || thing
            .x509
            .as_ref()
            .is_some_and(|x| x.revoked_serials.iter().any(|s| s == serial))
}

#[cfg(test)]
#[path = "certificates_tests.rs"]
mod tests;
