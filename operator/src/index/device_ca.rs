//! Device certificates in the index: a Tenant's CA (from its Secret or its cert-manager
//! issuer's), the serials its CRLs revoke, and what a Thing's TLS Secret holds.
//!
//! A CA that cannot be used is never half-used: the tenant is served without a device CA
//! (keys keep working) and its `DeviceCA` condition says what to fix.

use std::collections::{BTreeMap, BTreeSet};

use fleetward_policy::{self as policy, DeviceCa};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::input::{self, DeviceCaSource, IssuerKind, IssuerRef};
use super::object::SecretData;
use super::readiness::{CertificateFacts, CertificateRequest, Readiness, Reason};

/// The entry of a CA Secret holding the CA certificates.
pub const CA_ENTRY: &str = "ca.crt";
/// The entry of a CRL Secret holding the revocation lists.
pub const CRL_ENTRY: &str = "ca.crl";
/// The entry of a TLS Secret (cert-manager's, or brought) holding the certificate.
pub const TLS_ENTRY: &str = "tls.crt";

/// A cert-manager issuer, as a Tenant's `deviceCA.issuerRef` names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IssuerKey {
    /// An `Issuer` in a namespace.
    Issuer {
        /// Its namespace (the tenant's).
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A `ClusterIssuer`.
    ClusterIssuer {
        /// Its name.
        name: String,
    },
}

impl IssuerKey {
    /// The issuer a tenant owning `namespace` names.
    pub fn of(namespace: &str, r: &IssuerRef) -> Self {
        match r.kind {
            IssuerKind::Issuer => IssuerKey::Issuer {
                namespace: namespace.to_owned(),
                name: r.name.clone(),
            },
            IssuerKind::ClusterIssuer => IssuerKey::ClusterIssuer {
                name: r.name.clone(),
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            IssuerKey::Issuer { namespace, name } => format!("Issuer {namespace}/{name}"),
            IssuerKey::ClusterIssuer { name } => format!("ClusterIssuer {name}"),
        }
    }
}

/// What the operator read of a cert-manager issuer's spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerCa {
    /// A CA issuer: the Secret (`spec.ca.secretName`) holding its CA in `tls.crt`. For an
    /// Issuer it is in the issuer's namespace; for a ClusterIssuer in cert-manager's cluster
    /// resource namespace.
    Ca {
        /// The Secret's name.
        secret_name: String,
    },
    /// Another kind of issuer (ACME, Vault, self-signed…): its CA is not known here.
    NotCa {
        /// The issuer type its spec names (`acme`, `vault`…), for the message.
        issuer_type: String,
    },
}

/// The cert-manager side the index knows: issuers, and the Secrets of ClusterIssuers.
#[derive(Debug, Default)]
pub(crate) struct Issuers {
    pub issuers: BTreeMap<IssuerKey, IssuerCa>,
    /// Secrets in cert-manager's cluster resource namespace, by name.
    pub cluster_secrets: BTreeMap<String, SecretData>,
}

/// A Tenant's device CA, when one is usable, and its `DeviceCA` condition; `None` when the
/// Tenant declares no `deviceCA`.
pub(crate) fn tenant_device_ca(
    namespace: &str,
    spec: Option<&DeviceCaSource>,
    secrets: &BTreeMap<String, SecretData>,
    issuers: &Issuers,
) -> Option<(Option<DeviceCa>, Readiness)> {
    let spec = spec?;
    Some(match load(namespace, spec, secrets, issuers) {
        Ok((ca, message)) => (Some(ca), Readiness::ready(Reason::CaLoaded, message)),
        Err(refusal) => (None, refusal),
    })
}

fn load(
    namespace: &str,
    spec: &DeviceCaSource,
    secrets: &BTreeMap<String, SecretData>,
    issuers: &Issuers,
) -> Result<(DeviceCa, String), Readiness> {
    let revoked = match &spec.crl_secret_name {
        None => BTreeSet::new(),
        Some(name) => crl_serials(namespace, name, secrets)?,
    };
    let (pem, source) = ca_pem(namespace, spec, secrets, issuers)?;
    let ders = policy::certificates::pem_certificates(&pem)
        .map(dedup)
        .map_err(|e| invalid_ca(&source, &e.to_string()))?;
    let count = ders.len();
    let ca = DeviceCa::new(ders, revoked.iter().cloned())
        .map_err(|e| invalid_ca(&source, &e.to_string()))?;
    let message = format!(
        "{count} CA certificate(s) from {source} authenticate the tenant's things; {} serial(s) \
         revoked by CRL",
        revoked.len()
    );
    Ok((ca, message))
}

/// The same certificate twice (cert-manager's `ca.crt` beside a self-signed `tls.crt`) is
/// one anchor.
fn dedup(ders: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut seen = BTreeSet::new();
    ders.into_iter()
        .filter(|d| seen.insert(d.clone()))
        .collect()
}

fn invalid_ca(source: &str, why: &str) -> Readiness {
    Readiness::not_ready(
        Reason::InvalidCa,
        format!(
            "{source} {why}; put the CA certificate(s) there as PEM (-----BEGIN CERTIFICATE-----, \
             basicConstraints CA:TRUE). Certificates are not accepted until then; keys still are"
        ),
    )
}

/// The PEM CA bundle and a description of where it came from.
fn ca_pem(
    namespace: &str,
    spec: &DeviceCaSource,
    secrets: &BTreeMap<String, SecretData>,
    issuers: &Issuers,
) -> Result<(Vec<u8>, String), Readiness> {
    if let Some(name) = &spec.secret_name {
        let secret = secrets.get(name).ok_or_else(|| {
            Readiness::not_ready(
                Reason::SecretNotFound,
                format!(
                    "spec.deviceCA.secretName names Secret {namespace}/{name}, which does not \
                     exist; create it with the CA certificate(s) under `{CA_ENTRY}` \
                     (kubectl create secret generic {name} -n {namespace} \
                     --from-file={CA_ENTRY}=ca.pem)"
                ),
            )
        })?;
        let source = format!("Secret {namespace}/{name} entry `{CA_ENTRY}`");
        let pem = secret
            .entries
            .get(CA_ENTRY)
            .ok_or_else(|| invalid_ca(&source, "does not exist"))?;
        return Ok((pem.clone(), source));
    }
    let Some(issuer_ref) = &spec.issuer else {
        // The CRD refuses a deviceCA with neither; a manifest directory has no schema.
        return Err(Readiness::not_ready(
            Reason::InvalidSpec,
            "deviceCA needs secretName (a Secret in the tenant's namespace with ca.crt) or \
             issuerRef (a cert-manager CA Issuer or ClusterIssuer), or both",
        ));
    };
    let key = IssuerKey::of(namespace, issuer_ref);
    let issuer = key.describe();
    match issuers.issuers.get(&key) {
        None => Err(Readiness::not_ready(
            Reason::IssuerNotFound,
            format!(
                "spec.deviceCA.issuerRef names cert-manager {issuer}, which does not exist (or \
                 cert-manager is not installed); create it, or name a Secret with the CA under \
                 `{CA_ENTRY}` in spec.deviceCA.secretName"
            ),
        )),
        Some(IssuerCa::NotCa { issuer_type }) => Err(Readiness::not_ready(
            Reason::NotACaIssuer,
            format!(
                "{issuer} is a {issuer_type} issuer, not a CA issuer, so the CA its certificates \
                 chain to is not known here; name a Secret holding that CA under `{CA_ENTRY}` \
                 in spec.deviceCA.secretName"
            ),
        )),
        Some(IssuerCa::Ca { secret_name }) => {
            let (secret, where_) = match &key {
                IssuerKey::Issuer { namespace, .. } => (
                    secrets.get(secret_name),
                    format!("{namespace}/{secret_name}"),
                ),
                IssuerKey::ClusterIssuer { .. } => (
                    issuers.cluster_secrets.get(secret_name),
                    format!("{secret_name} in cert-manager's namespace"),
                ),
            };
            let source = format!("the CA Secret {where_} of {issuer}");
            let secret = secret.ok_or_else(|| {
                Readiness::not_ready(
                    Reason::SecretNotFound,
                    format!(
                        "{issuer} names CA Secret {where_}, which does not exist or cannot be \
                         read; create it (cert-manager needs it too), or name a Secret with the \
                         CA under `{CA_ENTRY}` in spec.deviceCA.secretName"
                    ),
                )
            })?;
            let mut pem = secret
                .entries
                .get(TLS_ENTRY)
                .cloned()
                .ok_or_else(|| invalid_ca(&source, "has no `tls.crt` entry"))?;
            if let Some(ca) = secret.entries.get(CA_ENTRY) {
                pem.push(b'\n');
                pem.extend_from_slice(ca);
            }
            Ok((pem, source))
        }
    }
}

/// The serials revoked by the CRLs in Secret `name`'s `ca.crl`, normalized.
fn crl_serials(
    namespace: &str,
    name: &str,
    secrets: &BTreeMap<String, SecretData>,
) -> Result<BTreeSet<String>, Readiness> {
    let invalid = |why: String| {
        Readiness::not_ready(
            Reason::InvalidCrl,
            format!(
                "Secret {namespace}/{name} entry `{CRL_ENTRY}` {why}; put the CA's revocation \
                 list(s) there, PEM (-----BEGIN X509 CRL-----) or DER. Certificates are not \
                 accepted until then, so none that was revoked gets in"
            ),
        )
    };
    let secret = secrets.get(name).ok_or_else(|| {
        Readiness::not_ready(
            Reason::SecretNotFound,
            format!(
                "spec.deviceCA.crlSecretName names Secret {namespace}/{name}, which does not \
                 exist; create it with the CRL under `{CRL_ENTRY}`, or remove crlSecretName. \
                 Certificates are not accepted until then"
            ),
        )
    })?;
    let bytes = secret
        .entries
        .get(CRL_ENTRY)
        .ok_or_else(|| invalid("does not exist".to_owned()))?;
    parse_crls(bytes).map_err(invalid)
}

/// The revoked serials of one or more CRLs, PEM or DER.
pub(crate) fn parse_crls(bytes: &[u8]) -> Result<BTreeSet<String>, String> {
    let ders: Vec<Vec<u8>> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let mut ders = Vec::new();
        for (i, item) in x509_parser::pem::Pem::iter_from_buffer(bytes).enumerate() {
            let item = item.map_err(|e| format!("PEM section {} does not parse: {e}", i + 1))?;
            if item.label == "X509 CRL" {
                ders.push(item.contents);
            }
        }
        if ders.is_empty() {
            return Err("holds no PEM revocation list (-----BEGIN X509 CRL-----)".to_owned());
        }
        ders
    } else {
        vec![bytes.to_vec()]
    };
    let mut serials = BTreeSet::new();
    for (i, der) in ders.iter().enumerate() {
        let (_, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| format!("revocation list {} does not parse: {e}", i + 1))?;
        serials.extend(
            crl.iter_revoked_certificates().filter_map(|r| {
                policy::normalize_serial(&policy::certificates::hex(r.raw_serial()))
            }),
        );
    }
    Ok(serials)
}

/// What a thing's TLS Secret holds: the first certificate of its `tls.crt`; `None` when the
/// Secret, the entry or a readable certificate is missing.
pub(crate) fn thing_certificate(secret: Option<&SecretData>) -> Option<CertificateFacts> {
    let secret = secret?;
    let pem = secret.entries.get(TLS_ENTRY)?;
    let der = policy::certificates::pem_certificates(pem)
        .ok()?
        .into_iter()
        .next()?;
    let names = policy::CertificateNames::read(&der)?;
    let not_after = i64::try_from(names.not_after)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string());
    Some(CertificateFacts {
        secret_name: secret.name.clone(),
        serial: names.serial,
        not_after,
        fingerprint: policy::certificates::hex(&names.fingerprint[..6]),
    })
}

/// A thing's certificate rules with its revoked serials normalized; a serial that is not hex
/// is refused (the CRD's pattern checks this in a cluster; a manifest directory has none).
/// The serials listed in `status.revokedSerials` count as the spec's.
pub(crate) fn thing_x509(
    x509: Option<&input::ThingX509>,
    status_serials: &[String],
) -> Result<Option<policy::ThingX509>, Readiness> {
    let Some(x509) = x509 else {
        return Ok(None);
    };
    let mut revoked_serials = Vec::with_capacity(x509.revoked_serials.len());
    let listed = x509
        .revoked_serials
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("spec.credentials.x509.revokedSerials[{i}]"), s))
        .chain(
            status_serials
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("status.revokedSerials[{i}]"), s)),
        );
    for (field, serial) in listed {
        let normalized = policy::normalize_serial(serial).ok_or_else(|| {
            Readiness::not_ready(
                Reason::InvalidSpec,
                format!(
                    "{field}: {serial:?} is not a serial number; write it in hex, `:` \
                     separators allowed (as `openssl x509 -serial` prints it)"
                ),
            )
        })?;
        revoked_serials.push(normalized);
    }
    revoked_serials.sort();
    revoked_serials.dedup();
    Ok(Some(policy::ThingX509 {
        common_name: x509.common_name.clone(),
        revoked_serials,
    }))
}

/// The cert-manager `Certificate` a thing asks for with `x509.issue`, when its tenant names an
/// issuer.
pub(crate) fn certificate_request(
    tenant: &str,
    thing: &input::Thing,
    issuer: Option<&IssuerRef>,
) -> Option<CertificateRequest> {
    let x509 = thing.x509.as_ref()?;
    let issuer = issuer.filter(|_| x509.issue)?;
    Some(CertificateRequest {
        tenant: tenant.to_owned(),
        common_name: (x509.common_name.clone()).unwrap_or_else(|| thing.meta.name.clone()),
        secret_name: thing.tls_secret_name.clone(),
        issuer_name: issuer.name.clone(),
        issuer_kind: issuer.kind.as_str(),
    })
}

/// A thing that only accepts certificates, in a tenant without a usable CA.
pub(crate) fn no_device_ca(tenant: &str) -> Readiness {
    Readiness::not_ready(
        Reason::NoDeviceCa,
        format!(
            "spec.credentials.mode is certificate, but Tenant {tenant} has no usable device CA \
             (see its DeviceCA condition); set or fix spec.deviceCA on the Tenant, or accept the \
             thing's key meanwhile with mode keyOrCertificate"
        ),
    )
}

/// The `Ready=True` message of a served thing.
pub(crate) fn accepted(
    mode: policy::CredentialMode,
    tenant: &str,
    ca: bool,
    disabled: bool,
) -> Readiness {
    let message = if disabled {
        "the thing is served but disabled: its connections are refused".to_owned()
    } else {
        match mode {
            policy::CredentialMode::Key => "the thing's credentials are in place".to_owned(),
            policy::CredentialMode::Certificate => {
                "the thing authenticates with a client certificate from the tenant's CA only"
                    .to_owned()
            }
            policy::CredentialMode::KeyOrCertificate if ca => {
                "the thing's key is in place, and client certificates from the tenant's CA \
                 authenticate it too"
                    .to_owned()
            }
            policy::CredentialMode::KeyOrCertificate => format!(
                "the thing's key is in place; certificates are not accepted yet: Tenant \
                 {tenant} has no usable device CA (see its DeviceCA condition)"
            ),
        }
    };
    Readiness::ready(Reason::Accepted, message)
}

/// The `Certificate` condition of a thing that asks for a certificate (`request`): whether
/// cert-manager can issue it and whether it is in the TLS Secret.
pub(crate) fn certificate_condition(
    namespace: &str,
    thing: &str,
    request: Option<&CertificateRequest>,
    certificate: Option<&CertificateFacts>,
    cert_manager: bool,
) -> Option<Readiness> {
    let request = request?;
    let secret = format!("{namespace}/{}", request.secret_name);
    Some(if !cert_manager {
        Readiness::not_ready(
            Reason::CertManagerMissing,
            format!(
                "x509.issue asks cert-manager for a certificate, but cert-manager's CRDs are not \
                 installed; install cert-manager (https://cert-manager.io/docs/installation/), or \
                 bring your own: set issue to false and put a certificate signed by the tenant's \
                 CA in Secret {secret}"
            ),
        )
    } else if let Some(c) = certificate {
        Readiness::ready(
            Reason::Issued,
            format!(
                "certificate serial {} from {} {} is in Secret {secret}",
                c.serial, request.issuer_kind, request.issuer_name
            ),
        )
    } else {
        Readiness::not_ready(
            Reason::CertificatePending,
            format!(
                "waiting for cert-manager to issue the certificate into Secret {secret} (see \
                 kubectl describe certificate {thing} -n {namespace}, and {} {})",
                request.issuer_kind, request.issuer_name
            ),
        )
    })
}
