//! The plain input records of a snapshot, one per resource kind, free of Kubernetes types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::certificates::{CredentialMode, DeviceCa, ThingX509};
use crate::credentials::KeyDigest;
use crate::pattern::SubtopicPattern;
use crate::provisioning::ProvisioningClaim;
use crate::web::TenantWeb;

/// The identity of a namespaced resource: its tenant and its name within that tenant.
///
/// Names are only unique per tenant; two tenants may each have a thing called `sensor-1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceName {
    /// The owning tenant.
    pub tenant: String,
    /// The resource's name inside the tenant.
    pub name: String,
}

impl ResourceName {
    /// A resource name from its tenant and name.
    pub fn new(tenant: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            name: name.into(),
        }
    }
}

/// Whether `name` is a DNS-1123 label, as Kubernetes names namespaced objects: 1 to 63
/// lower-case letters, digits or '-', starting and ending with a letter or digit.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl std::fmt::Display for ResourceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

/// Limits a tenant may not exceed; `None` means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimits {
    /// The most things the tenant may declare.
    pub max_things: Option<u32>,
    /// The most channels the tenant may declare.
    pub max_channels: Option<u32>,
    /// The most concurrent client connections of the tenant.
    pub max_connections: Option<u32>,
    /// The largest message, payload and properties, in bytes.
    pub max_message_size: Option<u32>,
    /// Sustained publishes per second over the whole tenant.
    pub publish_rate: Option<u32>,
    /// Publishes allowed in a burst above the sustained rate.
    pub publish_burst: Option<u32>,
    /// The most retained messages kept for the tenant; `None` is the dataplane's default.
    #[serde(default)]
    pub max_retained_messages: Option<u32>,
    /// The most bytes of retained messages kept for the tenant; `None` is the dataplane's
    /// default.
    #[serde(default)]
    pub max_retained_bytes: Option<u64>,
    /// The most bytes of message history kept for the tenant; `None` is the store's default.
    #[serde(default)]
    pub max_history_bytes: Option<u64>,
}

/// One organization. Every other resource belongs to exactly one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    /// The tenant's name; the `<tenant>` level of its topics.
    pub name: String,
    /// The object's identity: the Kubernetes uid, or one the single binary's loader makes;
    /// empty when unknown (then the name alone identifies it). A deleted and re-created
    /// object of the same name has a new one, so what the old one held is not taken for its.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// A suspended tenant can neither connect nor publish nor subscribe.
    #[serde(default)]
    pub suspended: bool,
    /// The tenant's limits.
    #[serde(default)]
    pub limits: TenantLimits,
    /// What the tenant allows browser pages.
    #[serde(default, skip_serializing_if = "TenantWeb::is_empty")]
    pub web: TenantWeb,
    /// Which engine decides what the tenant's subjects may do.
    #[serde(default, skip_serializing_if = "Engine::is_builtin")]
    pub engine: Engine,
    /// The CA whose client certificates authenticate the tenant's things, and what it
    /// revoked; `None`: no thing of the tenant authenticates by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ca: Option<DeviceCa>,
    /// The tenant's fleet provisioning claims.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provisioning: Vec<ProvisioningClaim>,
}

impl Tenant {
    /// A tenant with nothing set but its name: not suspended, default limits, the built-in
    /// engine, no uid, device CA or claims.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            uid: String::new(),
            suspended: false,
            limits: TenantLimits::default(),
            web: TenantWeb::default(),
            engine: Engine::default(),
            device_ca: None,
            provisioning: Vec::new(),
        }
    }
}

/// The authorization engine of a tenant (`Tenant.spec.authorization.engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Engine {
    /// Connections, groups and roles, decided by the snapshot itself.
    #[default]
    Builtin,
    /// Cedar: the tenant's Connections translated into `permit` policies, and its `Policy`
    /// objects on top. Decided by a [`crate::TenantEngine`] attached to the snapshot.
    Cedar,
    /// An engine this build does not know (named by a newer operator): every request of the
    /// tenant is refused with `policy_unavailable`, never decided by another engine.
    Unsupported,
}

impl Engine {
    /// The engine's name as written in a Tenant's spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Builtin => "builtin",
            Engine::Cedar => "cedar",
            Engine::Unsupported => "unsupported",
        }
    }

    /// Whether this is the built-in engine (the default).
    pub fn is_builtin(&self) -> bool {
        *self == Engine::Builtin
    }
}

/// A device or service identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Thing {
    /// The owning tenant.
    pub tenant: String,
    /// The thing's name inside the tenant.
    pub name: String,
    /// SHA-256 digests of the keys that authenticate the thing; several during a rotation.
    #[serde(default)]
    pub key_digests: Vec<KeyDigest>,
    /// A disabled thing can neither connect nor publish nor subscribe.
    #[serde(default)]
    pub disabled: bool,
    /// A channel of the same tenant the thing's topics are taken relative to (DESIGN §5).
    #[serde(default)]
    pub mountpoint: Option<String>,
    /// The most simultaneous connections (MQTT, WebSocket) of this thing on each dataplane
    /// pod, within its tenant's; `None`: only the tenant's limit applies.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Free-form attributes (`Thing.spec.attributes`), which policies of an external engine
    /// may read (Cedar: the principal's tags).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Which credentials authenticate the thing.
    #[serde(default, skip_serializing_if = "CredentialMode::is_key")]
    pub credential_mode: CredentialMode,
    /// How a client certificate names the thing, and which of its serials are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<ThingX509>,
}

/// What a user may do by role alone, beside any grant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Publish and subscribe on every channel of the tenant.
    Admin,
    /// Only what grants (connections) give.
    #[default]
    Member,
    /// Subscribe on every channel of the tenant.
    Viewer,
}

impl Role {
    /// The role's name as written in a User's spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }
}

/// A person or an application that signs in with a password and uses tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The owning tenant.
    pub tenant: String,
    /// The user's name inside the tenant.
    pub name: String,
    /// The user's role.
    #[serde(default)]
    pub role: Role,
    /// An argon2 PHC string (`$argon2id$…`); `None` means password sign-in is refused.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Tokens issued under another epoch are refused; bumping it revokes every token.
    #[serde(default)]
    pub token_epoch: u64,
    /// A disabled user can neither sign in nor use a token.
    #[serde(default)]
    pub disabled: bool,
}

/// The algorithm of a token signing key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// Ed25519 (JWS `EdDSA`); the default.
    #[default]
    EdDSA,
    /// ECDSA on P-256 with SHA-256 (JWS `ES256`).
    ES256,
}

impl SigningAlgorithm {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::EdDSA => "EdDSA",
            SigningAlgorithm::ES256 => "ES256",
        }
    }
}

/// A platform key user tokens are signed with. Several may be present during a rotation:
/// every one verifies, and the active one signs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    /// The key id, the `kid` of the tokens it signs and of its JWK.
    pub kid: String,
    /// The algorithm.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// The private key, PKCS#8 DER.
    pub private_key: Vec<u8>,
    /// Whether new tokens are signed with it. With none or several marked, the greatest `kid`
    /// among them (or among all) signs.
    #[serde(default)]
    pub active: bool,
}

impl std::fmt::Debug for SigningKey {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private_key", &"<redacted>")
            .field("active", &self.active)
            .finish()
    }
}

/// The kind of a group member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SubjectKind {
    /// A device or service.
    Thing,
    /// A person or application.
    User,
}

impl SubjectKind {
    /// A stable lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Thing => "thing",
            SubjectKind::User => "user",
        }
    }
}

/// A member of a group: a thing or a user of the group's tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// Whether the member is a thing or a user.
    pub kind: SubjectKind,
    /// The member's name in the group's tenant.
    pub name: String,
}

/// A set of things and users that share the channels granted to the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    /// The owning tenant.
    pub tenant: String,
    /// The group's name inside the tenant.
    pub name: String,
    /// The members; duplicates are ignored.
    #[serde(default)]
    pub members: Vec<Member>,
}

/// The highest MQTT quality of service a channel accepts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub enum Qos {
    /// QoS 0.
    AtMostOnce,
    /// QoS 1.
    #[default]
    AtLeastOnce,
    /// QoS 2.
    ExactlyOnce,
}

impl TryFrom<u8> for Qos {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            other => Err(format!("QoS must be 0, 1 or 2, not {other}")),
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        q as u8
    }
}

/// A logical message bus of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    /// The owning tenant.
    pub tenant: String,
    /// The channel's name; the `<channel>` level of its topics.
    pub name: String,
    /// The object's identity: the Kubernetes uid, or one the single binary's loader makes;
    /// empty when unknown (then the name alone identifies it). A deleted and re-created
    /// object of the same name has a new one, so what the old one held is not taken for its.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The highest QoS accepted; higher requests are downgraded by the dataplane.
    #[serde(default)]
    pub max_qos: Qos,
    /// Whether retained messages are accepted.
    #[serde(default = "default_true")]
    pub retained_allowed: bool,
    /// The largest message payload, in bytes, if smaller than the tenant's.
    #[serde(default)]
    pub max_message_size: Option<u32>,
    /// Whether MQTT v5 deliveries carry who published, how and when (user properties).
    #[serde(default)]
    pub delivery_metadata: bool,
    /// Set when the channel keeps its messages (`spec.history`): for how long, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_retention_secs: Option<u64>,
}

fn default_true() -> bool {
    true
}

/// The channel level of every tenant's audit channel, `m/<tenant>/c/$audit`: the dataplanes
/// publish the tenant's audit events there (docs/audit.md). It exists with its tenant and is
/// no resource: a Kubernetes name cannot start with `$`, so no Channel can take the name. Only
/// the tenant's admins subscribe to it, and nobody publishes on it.
pub const AUDIT_CHANNEL: &str = "$audit";

impl Channel {
    /// `tenant`'s audit channel: QoS 0, no retained messages. Its uid follows the tenant's, so
    /// a subscription to a deleted and re-created tenant's audit channel is revoked like any
    /// other.
    pub fn audit_of(tenant: &Tenant) -> Self {
        Self {
            // The audit channel keeps no history: its events go to the audit ring.
            history_retention_secs: None,
            tenant: tenant.name.clone(),
            name: AUDIT_CHANNEL.to_owned(),
            uid: format!("audit:{}", tenant.uid),
            max_qos: Qos::AtMostOnce,
            retained_allowed: false,
            max_message_size: None,
            delivery_metadata: false,
        }
    }
}

/// Who a grant is for, named in the grant's own tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GrantSubject {
    /// A thing.
    Thing(String),
    /// A user.
    User(String),
    /// Every member of a group.
    Group(String),
}

/// The grant-subject kind, used in index keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum GrantSubjectKind {
    Thing,
    User,
    Group,
}

impl GrantSubject {
    pub(crate) fn parts(&self) -> (GrantSubjectKind, &str) {
        match self {
            GrantSubject::Thing(n) => (GrantSubjectKind::Thing, n),
            GrantSubject::User(n) => (GrantSubjectKind::User, n),
            GrantSubject::Group(n) => (GrantSubjectKind::Group, n),
        }
    }
}

/// The actions a grant gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actions {
    /// May publish.
    #[serde(default)]
    pub publish: bool,
    /// May subscribe.
    #[serde(default)]
    pub subscribe: bool,
}

impl Actions {
    /// Publish and subscribe.
    pub const BOTH: Actions = Actions {
        publish: true,
        subscribe: true,
    };
    /// Publish only.
    pub const PUBLISH: Actions = Actions {
        publish: true,
        subscribe: false,
    };
    /// Subscribe only.
    pub const SUBSCRIBE: Actions = Actions {
        publish: false,
        subscribe: true,
    };
}

/// A grant (a `Connection` resource): a subject may publish and/or subscribe on a channel.
///
/// `allow` empty means every subtopic of the channel. A subtopic hit by any `deny` pattern of
/// any grant that applies to the subject, channel and action is refused, whatever else allows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The owning tenant.
    pub tenant: String,
    /// The grant's (Connection's) name inside the tenant.
    pub name: String,
    /// Who is granted.
    pub subject: GrantSubject,
    /// The channel granted, in the same tenant.
    pub channel: String,
    /// The actions granted.
    pub actions: Actions,
    /// Subtopic patterns allowed; empty means all.
    #[serde(default)]
    pub allow: Vec<SubtopicPattern>,
    /// Subtopic patterns refused; they win over every allow.
    #[serde(default)]
    pub deny: Vec<SubtopicPattern>,
}

/// Every resource of a snapshot as plain lists: the input to [`crate::Snapshot::from_resources`]
/// and the snapshot's serialized form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Tenants.
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    /// Things.
    #[serde(default)]
    pub things: Vec<Thing>,
    /// Users.
    #[serde(default)]
    pub users: Vec<User>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Channels.
    #[serde(default)]
    pub channels: Vec<Channel>,
    /// Grants (Connections).
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// The keys user tokens are signed and verified with, sorted by `kid`.
    #[serde(default)]
    pub signing_keys: Vec<SigningKey>,
    /// The policy texts of tenants with an external engine (`Policy` objects), as enforced.
    #[serde(default)]
    pub policies: Vec<TenantPolicy>,
}

/// One `Policy` object: policy text in its tenant's engine's language (Cedar), as enforced (the
/// operator serves the last valid version of an object whose newest one is invalid).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantPolicy {
    /// The owning tenant.
    pub tenant: String,
    /// The Policy's name in the tenant.
    pub name: String,
    /// The policy text.
    pub text: String,
}
