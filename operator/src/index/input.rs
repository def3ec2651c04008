//! What the index resolves: Fleetward's resources as plain domain values, holding only what
//! resolution and the index's readers use. The edges (Kubernetes watchers, manifests) convert
//! their resources into these (`crate::resource`); nothing here knows Kubernetes.

use std::collections::BTreeMap;

use fleetward_policy as policy;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What every input carries: its name and the bookkeeping the index compares and orders by.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The name; empty when the resource had none (the index then ignores it).
    pub name: String,
    /// The namespace; empty for a Tenant.
    pub namespace: String,
    /// The uid; empty when absent (a manifest without one).
    pub uid: String,
    /// The generation, which statuses speak of.
    pub generation: Option<i64>,
    /// When it was created: limits count the oldest first.
    pub created: Option<Timestamp>,
}

impl Meta {
    /// Where the object stands in its kind's limit order: oldest first (one without a creation
    /// time last), then by name, so the objects already served keep being served when a new
    /// one goes over the limit.
    pub(crate) fn age_order(&self) -> (bool, Option<Timestamp>, &str) {
        (self.created.is_none(), self.created, &self.name)
    }
}

/// A Tenant: the namespace it claims and the settings its objects resolve against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Name, uid, generation, creation time.
    pub meta: Meta,
    /// The namespace it claims (its own name unless it names another).
    pub namespace: String,
    /// Every connection and message of a suspended tenant is refused.
    pub suspended: bool,
    /// Its limits.
    pub limits: policy::TenantLimits,
    /// The browser origins it allows, as written (checked when resolved).
    pub allowed_origins: Vec<String>,
    /// Its authorization engine.
    pub engine: policy::Engine,
    /// Where its device CA comes from, when it has one.
    pub device_ca: Option<DeviceCaSource>,
    /// Its fleet provisioning claims.
    pub claims: Vec<ProvisioningClaim>,
}

/// Where a Tenant's device CA comes from, and what revokes its certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCaSource {
    /// A Secret of the tenant's namespace holding the CA under `ca.crt`.
    pub secret_name: Option<String>,
    /// A cert-manager issuer: things with `x509.issue` get certificates from it, and without
    /// `secret_name` its CA is the trust.
    pub issuer: Option<IssuerRef>,
    /// A Secret of the tenant's namespace holding CRLs under `ca.crl`.
    pub crl_secret_name: Option<String>,
}

/// A cert-manager issuer a Tenant names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerRef {
    /// Its name.
    pub name: String,
    /// Namespaced or cluster-wide.
    pub kind: IssuerKind,
}

/// The kinds of cert-manager issuers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IssuerKind {
    /// An `Issuer`, in the tenant's namespace.
    Issuer,
    /// A `ClusterIssuer`.
    ClusterIssuer,
}

impl IssuerKind {
    /// The cert-manager kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        }
    }
}

/// One fleet provisioning claim of a Tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningClaim {
    /// Its name, which provisioned Things carry as a label.
    pub name: String,
    /// The Secret holding the claim certificates devices present (`tls.crt`).
    pub certificate_secret_name: String,
    /// The Secret holding the CA that signs devices' certificates (`tls.crt`, `tls.key`).
    pub signing_secret_name: String,
    /// The pattern of the names of the Things it makes.
    pub name_pattern: String,
    /// The most Things it makes.
    pub max_things: u32,
    /// A disabled claim makes nothing.
    pub disabled: bool,
}

/// A Thing: a device or service and how it authenticates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thing {
    /// Name, namespace, uid, generation, creation time.
    pub meta: Meta,
    /// The provisioning claim that made it (its claim label), if one did.
    pub claim: Option<String>,
    /// A disabled thing is served, but its connections are refused.
    pub disabled: bool,
    /// The Secret holding its keys.
    pub secret_name: String,
    /// The Secret holding its certificate (cert-manager's, or brought).
    pub tls_secret_name: String,
    /// Which credentials authenticate it.
    pub mode: policy::CredentialMode,
    /// Its certificate rules, when certificates may authenticate it.
    pub x509: Option<ThingX509>,
    /// The channel whose topics it is mounted at.
    pub mountpoint: Option<String>,
    /// Its most concurrent connections.
    pub max_connections: Option<u32>,
    /// Attributes policies can read.
    pub attributes: BTreeMap<String, String>,
    /// Serials its status lists as revoked (written by revocation), beside the spec's.
    pub status_revoked_serials: Vec<String>,
}

/// How a Thing authenticates with a certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingX509 {
    /// Whether the operator asks the tenant's issuer for its certificate.
    pub issue: bool,
    /// The subject common name that names it, when not its own name.
    pub common_name: Option<String>,
    /// Serials of its certificates that no longer authenticate it, as written.
    pub revoked_serials: Vec<String>,
}

/// A Channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Name, namespace, uid, generation, creation time.
    pub meta: Meta,
    /// The highest QoS, as written (checked when resolved).
    pub max_qos: u8,
    /// Whether retained messages are kept.
    pub retained: bool,
    /// The largest message.
    pub max_message_size: Option<u32>,
    /// Whether deliveries carry who published.
    pub delivery_metadata: bool,
    /// How long its message history is kept, when it keeps one.
    pub history: Option<Retention>,
}

/// A history retention: as written, and in seconds when it is one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The text (`7d`, `12h`).
    pub text: String,
    /// Its seconds; `None` when the text is not a retention.
    pub secs: Option<u64>,
}

/// A Connection: a grant to a thing, user or group on a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// Name, namespace, uid, generation, creation time.
    pub meta: Meta,
    /// Who it grants.
    pub subject: policy::GrantSubject,
    /// The channel.
    pub channel: String,
    /// What it grants.
    pub actions: policy::Actions,
    /// Subtopic patterns allowed, as written (parsed when resolved).
    pub allow: Vec<String>,
    /// Subtopic patterns denied, as written.
    pub deny: Vec<String>,
}

/// A User.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Name, namespace, uid, generation, creation time.
    pub meta: Meta,
    /// What it may do by role alone.
    pub role: policy::Role,
    /// A disabled user cannot sign in.
    pub disabled: bool,
    /// Tokens issued before this epoch are refused.
    pub token_epoch: u64,
    /// Where its password (or argon2 hash) is.
    pub password: Option<SecretKeyRef>,
}

/// An entry of a Secret of the object's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The entry.
    pub key: String,
}

/// A Group of things and users.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Name, namespace, uid, generation, creation time.
    pub meta: Meta,
    /// Its members.
    pub members: Vec<policy::Member>,
}

/// A Policy: Cedar text for a tenant whose engine is Cedar.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Name, namespace, uid, generation, creation time.
    pub meta: Meta,
    /// The Cedar text.
    pub cedar: String,
    /// The text its status shows as enforced, kept enforced after a restart while the current
    /// text is invalid.
    pub shown_enforced: Option<ShownEnforced>,
}

/// The text a Policy's status shows as enforced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownEnforced {
    /// The generation whose text it is.
    pub generation: Option<i64>,
    /// The Cedar text.
    pub cedar: String,
}
