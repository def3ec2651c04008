//! The User kind: a person or application that signs in with a password and uses tokens.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::UserStatus;

/// What a User declares: role, whether it is enabled, the token epoch and where its password
/// lives.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "User",
    namespaced,
    doc = "A User is a person or application in a tenant. It signs in with a password kept in a \
           Secret and then uses short-lived tokens (JWT) over HTTP, WebSocket or MQTT.",
    status = "UserStatus",
    derive = "PartialEq",
    shortname = "usr",
    category = "fleetward",
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role", description = "Role in the tenant"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled", description = "Whether the user is refused"),
    printcolumn(name = "Token Epoch", type_ = "integer", json_path = ".spec.tokenEpoch", priority = 1, description = "Tokens issued before this epoch are revoked"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Enforced", type_ = "string", json_path = ".status.conditions[?(@.type==\"Enforced\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new(crate::schema::NAME_RULE).message(crate::schema::NAME_MESSAGE),
)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// The user's role in the tenant: `admin`, `member` (default) or `viewer`.
    #[serde(default)]
    pub role: Role,
    /// When true the user cannot sign in and every token already issued stops working.
    #[serde(default)]
    pub disabled: bool,
    /// Raise it to revoke every token issued to the user so far (default 0). Tokens carry the
    /// epoch they were issued under and are refused once it is lower than this.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub token_epoch: u64,
    /// The Secret in this namespace holding the user's password. The operator reads it and only
    /// a hash leaves the namespace. Unset, the user cannot sign in with a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// The user's full name, shown in dashboards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// A user's role in a tenant.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publish and subscribe on every channel of the tenant.
    Admin,
    /// Publish and subscribe where Connections grant it (directly or through a Group).
    #[default]
    Member,
    /// Subscribe on every channel of the tenant; never publish, whatever a Connection grants.
    Viewer,
}

/// An entry of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub name: String,
    /// Key of the entry in the Secret (default `password`).
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_owned()
}
