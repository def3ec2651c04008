//! The status the index wants each object to show: readiness with a reason, and observed facts.

use std::borrow::Cow;
use std::fmt;

/// Why an object is, or is not, `Ready`. The labels are the condition reasons users see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Accepted and served.
    Accepted,
    /// A Tenant that is served but suspended: all its traffic is refused.
    Suspended,
    /// No Tenant owns the object's namespace.
    NoTenant,
    /// Another Tenant already owns the namespace this Tenant claims.
    NamespaceClaimed,
    /// The object is beyond a limit of its tenant.
    LimitExceeded,
    /// A Connection's subject does not exist.
    SubjectNotFound,
    /// A Connection's subject exists but is not served.
    SubjectNotReady,
    /// A Connection's channel does not exist.
    ChannelNotFound,
    /// A Connection's channel exists but is not served.
    ChannelNotReady,
    /// A Thing's mountpoint channel does not exist or is not served.
    MountpointNotFound,
    /// A Thing's Secret does not exist yet.
    CredentialsPending,
    /// A Thing's Secret holds no usable key.
    CredentialsInvalid,
    /// A User's password Secret or entry does not exist.
    PasswordSecretNotFound,
    /// A User's password could not be used.
    PasswordInvalid,
    /// A Group names members that do not exist or are not served.
    MemberNotFound,
    /// The spec is invalid in a way the API server could not check.
    InvalidSpec,
    /// A Policy's text does not parse or does not validate against the Cedar schema.
    InvalidPolicy,
    /// A Policy in a tenant whose engine is not `cedar`: it decides nothing.
    EngineNotCedar,
    /// A Tenant's device CA is loaded (`DeviceCA=True`).
    CaLoaded,
    /// A Secret a Tenant's `deviceCA` names does not exist.
    SecretNotFound,
    /// A Tenant's CA Secret holds no usable CA certificate.
    InvalidCa,
    /// A Tenant's CRL Secret holds no usable revocation list.
    InvalidCrl,
    /// The cert-manager issuer a Tenant's `deviceCA.issuerRef` names does not exist.
    IssuerNotFound,
    /// The cert-manager issuer a Tenant names is not a CA issuer, so its CA is unknown.
    NotACaIssuer,
    /// A Thing that only accepts certificates, in a tenant without a usable device CA.
    NoDeviceCa,
    /// A Thing asks for a certificate but cert-manager's CRDs are not installed.
    CertManagerMissing,
    /// A Thing's requested certificate is in its TLS Secret (`Certificate=True`).
    Issued,
    /// A Thing's requested certificate is not in its TLS Secret yet.
    CertificatePending,
}

impl Reason {
    /// The condition reason, in CamelCase as Kubernetes expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::Suspended => "Suspended",
            Reason::NoTenant => "NoTenant",
            Reason::NamespaceClaimed => "NamespaceClaimed",
            Reason::LimitExceeded => "LimitExceeded",
            Reason::SubjectNotFound => "SubjectNotFound",
            Reason::SubjectNotReady => "SubjectNotReady",
            Reason::ChannelNotFound => "ChannelNotFound",
            Reason::ChannelNotReady => "ChannelNotReady",
            Reason::MountpointNotFound => "MountpointNotFound",
            Reason::CredentialsPending => "CredentialsPending",
            Reason::CredentialsInvalid => "CredentialsInvalid",
            Reason::PasswordSecretNotFound => "PasswordSecretNotFound",
            Reason::PasswordInvalid => "PasswordInvalid",
            Reason::MemberNotFound => "MemberNotFound",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::InvalidPolicy => "InvalidPolicy",
            Reason::EngineNotCedar => "EngineNotCedar",
            Reason::CaLoaded => "CALoaded",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::InvalidCa => "InvalidCA",
            Reason::InvalidCrl => "InvalidCRL",
            Reason::IssuerNotFound => "IssuerNotFound",
            Reason::NotACaIssuer => "NotACAIssuer",
            Reason::NoDeviceCa => "NoDeviceCA",
            Reason::CertManagerMissing => "CertManagerMissing",
            Reason::Issued => "Issued",
            Reason::CertificatePending => "Pending",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `Ready` condition the index wants an object to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// `Ready=True` or `Ready=False`.
    pub ready: bool,
    /// The condition reason.
    pub reason: Reason,
    /// A message for `kubectl describe`: what is wrong and what to do. Most are fixed texts,
    /// borrowed, so the index's 100k statuses do not each hold a copy.
    pub message: Cow<'static, str>,
}

impl Readiness {
    /// `Ready=True` with a reason and message.
    pub fn ready(reason: Reason, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            ready: true,
            reason,
            message: message.into(),
        }
    }

    /// `Ready=False` with a reason and message.
    pub fn not_ready(reason: Reason, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            ready: false,
            reason,
            message: message.into(),
        }
    }
}

/// Observed facts a kind shows in its status beside its conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Facts {
    /// Nothing beyond conditions.
    #[default]
    None,
    /// A Tenant's namespace (when it owns one) and its counts.
    Tenant {
        /// The namespace it owns; `None` when another Tenant owns it.
        namespace: Option<String>,
        /// Things in the namespace.
        things: u32,
        /// Channels in the namespace.
        channels: u32,
        /// What each provisioning claim has made.
        claims: Vec<ClaimFacts>,
        /// The `DeviceCA` condition, when the tenant declares `spec.deviceCA`.
        device_ca: Option<Readiness>,
    },
    /// A Thing's credentials.
    Thing {
        /// The Secret holding its keys.
        secret_name: String,
        /// Fingerprint of its primary key, never the key.
        key_fingerprint: Option<String>,
        /// How many keys authenticate it.
        keys: u32,
        /// Which credentials authenticate it; no key Secret is generated for `Certificate`.
        mode: fleetward_policy::CredentialMode,
        /// Its certificate facts, when it has `x509` (boxed: most things have none).
        x509: Option<Box<X509Facts>>,
    },
    /// A Policy's errors and the text being enforced.
    Policy {
        /// Each error of the current text: line, column, message.
        errors: Vec<(u32, u32, String)>,
        /// The generation and text enforced: the current one when valid, else the last valid.
        enforced: Option<(Option<i64>, String)>,
    },
}

/// What one provisioning claim of a Tenant has made (`Tenant.status.provisioning`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimFacts {
    /// The claim's name.
    pub name: String,
    /// Things that carry its label.
    pub provisioned: u32,
    /// Why devices may not use it now, when they may not.
    pub message: Option<String>,
}

/// What the index knows of a Thing's certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct X509Facts {
    /// What its TLS Secret's certificate says, when the Secret holds one.
    pub certificate: Option<CertificateFacts>,
    /// The cert-manager `Certificate` the operator keeps for it, when it asks for one.
    pub issue: Option<CertificateRequest>,
    /// The `Certificate` condition, when it asks for one: issued, pending, or why not.
    pub condition: Option<Readiness>,
}

/// What a Thing's TLS Secret's certificate says (`Thing.status.certificate`). Never the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The Secret holding it.
    pub secret_name: String,
    /// Its serial, lower-case hex.
    pub serial: String,
    /// When it expires (RFC 3339).
    pub not_after: Option<String>,
    /// First 12 hex digits of the SHA-256 of its DER encoding.
    pub fingerprint: String,
}

/// The cert-manager `Certificate` a Thing with `x509.issue` gets from its tenant's issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRequest {
    /// The tenant, for the `fleetward://<tenant>/<thing>` URI SAN.
    pub tenant: String,
    /// The subject common name: `x509.subject.commonName`, else the thing's name.
    pub common_name: String,
    /// The Secret cert-manager writes (`x509.secretName`, default `<thing>-tls`).
    pub secret_name: String,
    /// The issuer's name.
    pub issuer_name: String,
    /// `Issuer` or `ClusterIssuer`.
    pub issuer_kind: &'static str,
}

/// Everything the index wants one object's status to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredStatus {
    /// The `metadata.generation` this status describes.
    pub generation: Option<i64>,
    /// The `Ready` condition.
    pub readiness: Readiness,
    /// Whether the object is in the policy snapshot (only then can it become `Enforced`).
    pub served: bool,
    /// Kind-specific facts.
    pub facts: BoxedFacts,
}

/// [`Facts`] behind a pointer, and no allocation for [`Facts::None`]: most objects (every
/// Connection) have none, and the index keeps one status per object, so a status holds a
/// pointer instead of the largest variant. Reads and writes go through `Deref`.
#[derive(Clone, Default)]
pub struct BoxedFacts(Option<Box<Facts>>);

/// What [`BoxedFacts`] without facts reads as.
static NO_FACTS: Facts = Facts::None;

impl From<Facts> for BoxedFacts {
    fn from(facts: Facts) -> Self {
        Self(match facts {
            Facts::None => None,
            facts => Some(Box::new(facts)),
        })
    }
}

impl std::ops::Deref for BoxedFacts {
    type Target = Facts;

    fn deref(&self) -> &Facts {
        self.0.as_deref().unwrap_or(&NO_FACTS)
    }
}

impl std::ops::DerefMut for BoxedFacts {
    fn deref_mut(&mut self) -> &mut Facts {
        self.0.get_or_insert_with(|| Box::new(Facts::None))
    }
}

impl PartialEq for BoxedFacts {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for BoxedFacts {}

impl fmt::Debug for BoxedFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}
