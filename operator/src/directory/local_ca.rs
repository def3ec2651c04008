//! Development CAs on local disk: a tenant's device CA under `<state-dir>/ca/<tenant>/`, which
//! issues thing certificates where a cluster would ask cert-manager, and the server CA of
//! `fleetward start`'s TLS listeners.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{create_private_dir, private_file};

/// The CA certificate bundle's file name (PEM, one or more certificates during a rotation).
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name (PKCS#8 PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a generated CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a certificate's validity starts, for clocks a little behind this one.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// A day.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Why a local CA could not be read, created or used.
#[derive(Debug, thiserror::Error)]
pub enum LocalCaError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The files are there but do not make a CA that can sign.
    #[error("{}: {reason}", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Signing failed.
    #[error("signing a certificate: {0}")]
    Signing(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalCaError + '_ {
    move |source| LocalCaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The directory of tenant `tenant`'s development device CA.
pub fn tenant_ca_dir(state_dir: &Path, tenant: &str) -> PathBuf {
    state_dir.join("ca").join(tenant)
}

/// A CA whose certificate bundle and key are files: it signs with the key, and the bundle's
/// certificate for that key is the issuer.
pub struct LocalCa {
    dir: PathBuf,
    /// The bundle as read (what verifiers trust).
    bundle: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("dir", &self.dir).finish()
    }
}

impl LocalCa {
    /// Tenant `tenant`'s development device CA, created (ECDSA P-256, ten years) on first use;
    /// `true` when it was created.
    pub fn tenant(state_dir: &Path, tenant: &str) -> Result<(Self, bool), LocalCaError> {
        let name = format!("Fleetward {tenant} device CA (development)");
        Self::open_or_create(&tenant_ca_dir(state_dir, tenant), &name)
    }

    /// The CA in `dir` (`ca.crt`, `ca.key`), created with common name `name` when neither
    /// file exists; `true` when created.
    pub fn open_or_create(dir: &Path, name: &str) -> Result<(Self, bool), LocalCaError> {
        let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        if !cert.exists() && !key.exists() {
            create(dir, name)?;
            return Ok((Self::open(dir)?, true));
        }
        Ok((Self::open(dir)?, false))
    }

    /// Reads the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LocalCaError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let bundle = fs::read(&cert_path).map_err(io(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
        Self::from_pem(dir, bundle, &key_pem)
    }

    /// A CA from its bundle and key, as read from `dir`.
    pub fn from_pem(dir: &Path, bundle: Vec<u8>, key_pem: &str) -> Result<Self, LocalCaError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let key = KeyPair::from_pem(key_pem).map_err(|e| LocalCaError::Unusable {
            path: key_path.clone(),
            reason: format!("not a PEM private key rcgen can sign with ({e}); restore it or remove both ca.crt and ca.key to start a new CA"),
        })?;
        let certs = fleetward_policy::certificates::pem_certificates(&bundle).map_err(|e| {
            LocalCaError::Unusable {
                path: cert_path.clone(),
                reason: e.to_string(),
            }
        })?;
        // During a rotation the bundle holds the old and the new CA: the key says which signs.
        let own = certs.iter().find(|der| {
            X509Certificate::from_der(der)
                .is_ok_and(|(_, c)| c.public_key().subject_public_key.data == key.public_key_raw())
        });
        let Some(own) = own else {
            return Err(LocalCaError::Unusable {
                path: cert_path,
                reason: format!(
                    "no certificate in it is for the key in {}; put the CA certificate of that \
                     key in the bundle",
                    key_path.display()
                ),
            });
        };
        let issuer = Issuer::from_ca_cert_der(&own.clone().into(), key)?;
        Ok(Self {
            dir: dir.to_owned(),
            bundle,
            issuer,
        })
    }

    /// Whether the first certificate of `pem` is signed by a certificate of this CA's bundle
    /// (after a rotation drops the old CA, what it signed no longer is).
    pub fn signed(&self, pem: &[u8]) -> bool {
        let (Ok(leaves), Ok(cas)) = (
            fleetward_policy::certificates::pem_certificates(pem),
            fleetward_policy::certificates::pem_certificates(&self.bundle),
        ) else {
            return false;
        };
        let Some(Ok((_, leaf))) = leaves.first().map(|d| X509Certificate::from_der(d)) else {
            return false;
        };
        cas.iter().any(|der| {
            X509Certificate::from_der(der)
                .is_ok_and(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
        })
    }

    /// The bundle file (`ca.crt`): what clients and verifiers trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// The bundle's bytes, as read.
    pub fn bundle(&self) -> &[u8] {
        &self.bundle
    }

    /// Signs a device's own PKCS#10 request (fleet provisioning in `fleetward start`), as the
    /// operator signs with a claim's signing Secret.
    pub fn sign_device_csr(
        &self,
        csr_pem: &str,
        tenant: &str,
        thing: &str,
        days: u32,
    ) -> Result<String, crate::provisioning::Failure> {
        let csr = crate::provisioning::read_csr(csr_pem, thing)?;
        crate::provisioning::sign_with(csr, &self.issuer, tenant, thing, days)
    }

    /// A client certificate for thing `thing` of tenant `tenant`: common name `common_name`
    /// (the thing's name unless its `x509.subject.commonName` says otherwise), URI SAN
    /// `fleetward://<tenant>/<thing>`, extended key usage clientAuth, valid for `lifetime`.
    pub fn issue_thing(
        &self,
        tenant: &str,
        thing: &str,
        common_name: &str,
        lifetime: Duration,
    ) -> Result<Issued, LocalCaError> {
        let now = SystemTime::now();
        self.thing_certificate(tenant, thing, common_name, now - BACKDATE, now + lifetime)
    }

    /// As [`Self::issue_thing`], valid from `from` to `until` seconds from now (negative:
    /// in the past), for certificates that are expired or near their renewal.
    pub fn issue_thing_between(
        &self,
        tenant: &str,
        thing: &str,
        common_name: &str,
        from: i64,
        until: i64,
    ) -> Result<Issued, LocalCaError> {
        let at = |secs: i64| {
            let now = SystemTime::now();
            let d = Duration::from_secs(secs.unsigned_abs());
            if secs < 0 { now - d } else { now + d }
        };
        self.thing_certificate(tenant, thing, common_name, at(from), at(until))
    }

    fn thing_certificate(
        &self,
        tenant: &str,
        thing: &str,
        common_name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, LocalCaError> {
        let uri = format!(
            "{}{tenant}/{thing}",
            fleetward_policy::certificates::THING_URI_SCHEME
        );
        let uri = rcgen::string::Ia5String::try_from(uri)?;
        self.issue(
            common_name,
            vec![SanType::URI(uri)],
            ExtendedKeyUsagePurpose::ClientAuth,
            (not_before, not_after),
        )
    }

    /// A server certificate for `hosts` (DNS names or IP addresses), valid for `lifetime`.
    pub fn issue_server(&self, hosts: &[&str], lifetime: Duration) -> Result<Issued, LocalCaError> {
        let mut sans = Vec::new();
        for host in hosts {
            sans.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(rcgen::string::Ia5String::try_from(*host)?),
            });
        }
        let name = hosts.first().copied().unwrap_or("fleetward");
        let now = SystemTime::now();
        let validity = (now - BACKDATE, now + lifetime);
        self.issue(name, sans, ExtendedKeyUsagePurpose::ServerAuth, validity)
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        (not_before, not_after): (SystemTime, SystemTime),
    ) -> Result<Issued, LocalCaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer)?;
        let facts = CertFacts::read(cert.der()).ok_or_else(|| LocalCaError::Unusable {
            path: self.cert_path(),
            reason: "the certificate just signed does not parse".into(),
        })?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            facts,
        })
    }
}

/// A certificate and its new key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// What it says.
    pub facts: CertFacts,
}

impl Issued {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` (mode 0600), each atomically; the
    /// directory is created private.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), LocalCaError> {
        create_private_dir(dir).map_err(io(dir))?;
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        // The key first: a certificate on disk always has its key beside it.
        write_atomically(&key, self.key_pem.as_bytes())?;
        write_atomically(&cert, self.cert_pem.as_bytes())?;
        Ok((cert, key))
    }
}

/// What a certificate says that issuing and renewal need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The serial, normalized as `x509.revokedSerials` compares it.
    pub serial: String,
    /// `notBefore`, seconds since the Unix epoch.
    pub not_before: u64,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: u64,
    /// The `(tenant, thing)` of its `fleetward://` URI SAN, if any.
    pub thing: Option<(String, String)>,
    /// Its subject common name, if any.
    pub common_name: Option<String>,
}

impl CertFacts {
    /// Reads a DER certificate; `None` when it does not parse.
    pub fn read(der: &[u8]) -> Option<Self> {
        let names = fleetward_policy::CertificateNames::read(der)?;
        Some(Self {
            serial: names.serial,
            not_before: names.not_before,
            not_after: names.not_after,
            thing: names.uri,
            common_name: names.common_name,
        })
    }

    /// The first certificate of a PEM text.
    pub fn read_pem(pem: &[u8]) -> Option<Self> {
        let certs = fleetward_policy::certificates::pem_certificates(pem).ok()?;
        Self::read(certs.first()?)
    }

    /// When it should be renewed: once two thirds of its lifetime have passed, as
    /// cert-manager renews by default.
    pub fn renew_at(&self) -> u64 {
        let lifetime = self.not_after.saturating_sub(self.not_before);
        self.not_after.saturating_sub(lifetime / 3)
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Makes a new CA in `dir` (mode 0700): its key (0600) first, then its certificate.
fn create(dir: &Path, name: &str) -> Result<(), LocalCaError> {
    create_private_dir(dir).map_err(io(dir))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    // It signs only leaves: no intermediate can be made under it.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_LIFETIME).into();
    let cert = params.self_signed(&key)?;
    write_atomically(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes())?;
    write_atomically(&dir.join(CA_CERT_FILE), cert.pem().as_bytes())
}

/// A random positive 128-bit serial, as RFC 5280 asks (unique per CA, at most 20 bytes).
fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Without the OS RNG: the time, unique enough for a development CA.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = nanos.to_be_bytes();
    }
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// Writes `path` (mode 0600) through a temporary file and a rename, so a reader never sees
/// half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LocalCaError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = private_file(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_ca_is_made_private_once_and_signs_thing_certificates_with_their_uri() {
        let root = tempfile::tempdir().expect("temp dir");
        let (ca, created) = LocalCa::tenant(root.path(), "acme").expect("a CA");
        assert!(created);
        let dir = tenant_ca_dir(root.path(), "acme");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        }
        let (again, created) = LocalCa::tenant(root.path(), "acme").expect("the same CA");
        assert!(!created);
        assert_eq!(again.bundle(), ca.bundle());
        let issued = ca
            .issue_thing("acme", "sensor-1", "sensor-1", 90 * DAY)
            .expect("a leaf");
        assert_eq!(
            issued.facts.thing,
            Some(("acme".to_owned(), "sensor-1".to_owned()))
        );
        let lifetime = issued.facts.not_after - issued.facts.not_before;
        assert!(lifetime >= 90 * 24 * 3600, "{lifetime}");
        // The tenant's trust verifies it.
        let trust = fleetward_policy::DeviceCa::from_pem(ca.bundle(), Vec::<String>::new())
            .expect("the trust");
        assert_eq!(trust.certificates().count(), 1);
    }

    #[test]
    fn a_bundle_without_the_keys_certificate_is_refused_with_what_to_do() {
        let root = tempfile::tempdir().expect("temp dir");
        let (a, _) = LocalCa::open_or_create(&root.path().join("a"), "a").expect("a");
        let (_, _) = LocalCa::open_or_create(&root.path().join("b"), "b").expect("b");
        let key = fs::read_to_string(root.path().join("b").join(CA_KEY_FILE)).expect("key");
        let err = LocalCa::from_pem(&root.path().join("b"), a.bundle().to_vec(), &key)
            .expect_err("a's bundle with b's key");
        assert!(
            err.to_string()
                .contains("no certificate in it is for the key"),
            "{err}"
        );
        // A rotation bundle (old and new) signs with whichever its key is.
        let mut both = a.bundle().to_vec();
        both.extend(fs::read(root.path().join("b").join(CA_CERT_FILE)).expect("b's cert"));
        LocalCa::from_pem(&root.path().join("b"), both, &key).expect("the rotation bundle");
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_the_lifetime() {
        let facts = CertFacts {
            serial: "1".into(),
            not_before: 0,
            not_after: 90,
            thing: None,
            common_name: None,
        };
        assert_eq!(facts.renew_at(), 60);
    }
}
