//! Status of every kind: the Kubernetes condition list plus a few observed facts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the operator has accepted the resource and its references resolve.
pub const READY: &str = "Ready";

/// Condition type: every connected dataplane that serves clients has acknowledged a policy
/// snapshot that contains the resource, so what it declares is being enforced. A dataplane
/// still loading its first snapshot is not ready, serves no one, and is not waited for.
pub const ENFORCED: &str = "Enforced";

/// `Ready=False` reason: no Tenant owns the resource's namespace, so it is not served.
pub const REASON_NO_TENANT: &str = "NoTenant";

/// Status of a Tenant, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Latest observations of the tenant's state. `Ready` says whether the tenant's namespace is
    /// claimed and served; `Enforced` whether every dataplane has applied it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the Tenant that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The namespace this tenant owns, once the operator has claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Number of Things in the tenant's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub things: Option<u32>,
    /// Number of Channels in the tenant's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    /// Things each provisioning claim has made so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub provisioning: Vec<ClaimStatus>,
}

/// What one provisioning claim has made.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimStatus {
    /// The claim's name, as in `spec.provisioning.claims`.
    pub name: String,
    /// Things that carry its label.
    pub provisioned: u32,
    /// Whether devices may use it now (its claim certificates and signing CA are in place,
    /// and it has room), and if not, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Status of a Thing, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct ThingStatus {
    /// Latest observations of the thing's state. `Ready` says whether its credentials are in
    /// place; `Enforced` whether every dataplane has applied it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the Thing that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Name of the Secret holding the thing's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// First 12 hex characters of the SHA-256 digest of the newest key: compare it with the key
    /// a device holds without revealing the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// Number of keys that currently authenticate this thing (two while a rotation is under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u32>,
    /// The client certificate in the thing's TLS Secret, when it has one (issued by
    /// cert-manager, or brought): what a device should hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<ThingCertificate>,
    /// Serials (hex, `:` separators allowed) of this thing's certificates that no longer
    /// authenticate it, for whoever revokes without owning the spec (an incident tool, a
    /// device management system: `kubectl patch thing NAME --subresource=status --type=merge
    /// -p '{"status":{"revokedSerials":["1f2e"]}}'`). The operator never writes it; it counts
    /// as `spec.credentials.x509.revokedSerials` does and ends the sessions that used one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::thing::revoked_serials")]
    pub revoked_serials: Vec<String>,
}

/// What the operator read of a thing's certificate. Never the key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingCertificate {
    /// The Secret holding it.
    pub secret_name: String,
    /// Its serial number, lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// When it expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// First 12 hex digits of the SHA-256 of its DER encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// Status of a Channel, Connection, User or Group, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// Latest observations of the resource's state. `Ready` says whether the operator accepted it
    /// and its references resolve (reason `NoTenant` when no Tenant owns the namespace);
    /// `Enforced` whether every dataplane has applied it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the resource that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Status of a Channel: the operator writes the conditions, `fleetward writer` (or
/// `fleetward start`) writes `history`, each under its own field manager.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// Latest observations of the channel's state. `Ready` says whether the operator accepted
    /// it (reason `NoTenant` when no Tenant owns the namespace); `Enforced` whether every
    /// dataplane has applied it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the Channel that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the channel's history holds, when it keeps history; written at most once a minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<ChannelHistoryStatus>,
}

impl From<ChannelStatus> for ResourceStatus {
    /// The operator's part: everything but `history`.
    fn from(s: ChannelStatus) -> Self {
        ResourceStatus {
            conditions: s.conditions,
            observed_generation: s.observed_generation,
        }
    }
}

/// What a channel's history holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct ChannelHistoryStatus {
    /// Stored messages.
    pub messages: u64,
    /// Stored bytes: payloads, topics, properties and publishers, and 64 bytes a message, as the tenant's
    /// `maxHistoryBytes` counts them.
    pub bytes: u64,
    /// When the oldest stored message was accepted (RFC 3339); unset when none is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<String>,
}
/// Status of a Connection.
pub type ConnectionStatus = ResourceStatus;
/// Status of a User.
pub type UserStatus = ResourceStatus;
/// Status of a Group.
pub type GroupStatus = ResourceStatus;

/// Status of a Policy, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Latest observations of the policy's state. `Ready` says whether its text is valid and
    /// its tenant uses the cedar engine (reason `InvalidPolicy` with the errors below, or
    /// `EngineNotCedar`); `Enforced` whether every dataplane has applied this generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the Policy that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What is wrong with `spec.cedar`, each error with its line and column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub errors: Vec<PolicyTextError>,
    /// The version of the text being enforced: this generation's when it is valid, otherwise
    /// the last valid one's, which stays enforced (across operator restarts too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<EnforcedPolicy>,
}

/// One error in a Policy's text.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct PolicyTextError {
    /// 1-based line in `spec.cedar`; 0 when Cedar gives no place.
    pub line: u32,
    /// 1-based column; 0 when Cedar gives no place.
    pub column: u32,
    /// What is wrong.
    pub message: String,
}

/// The policy text being enforced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct EnforcedPolicy {
    /// The `metadata.generation` whose text it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The Cedar policy text enforced.
    pub cedar: String,
}
