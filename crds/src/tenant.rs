//! The Tenant kind: one organization, the namespace it owns, its limits and its kill switch.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::TenantStatus;

/// Message printed when an update would move a Tenant to another namespace.
pub const NAMESPACE_IMMUTABLE_MESSAGE: &str = "spec.namespace is immutable: a Tenant keeps the \
     namespace it was created with (its name when unset); create a new Tenant to use another namespace";

/// What a Tenant declares: the namespace it owns, its display name, the kill switch and its
/// limits. Resources in a namespace that no Tenant owns are not served.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "Tenant",
    doc = "A Tenant is one organization on the platform. It owns exactly one namespace (spec.namespace, \
           default its own name); every Fleetward resource in that namespace belongs to it.",
    status = "TenantStatus",
    derive = "PartialEq",
    shortname = "tnt",
    category = "fleetward",
    // Not "Namespace": `kubectl get -A` adds a NAMESPACE column of its own to every kind.
    printcolumn(name = "Owns", type_ = "string", json_path = ".status.namespace", description = "Namespace the tenant owns"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspended", description = "Whether all traffic of the tenant is refused"),
    printcolumn(name = "Things", type_ = "integer", json_path = ".status.things", description = "Things in the tenant's namespace"),
    printcolumn(name = "Channels", type_ = "integer", json_path = ".status.channels", description = "Channels in the tenant's namespace"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Enforced", type_ = "string", json_path = ".status.conditions[?(@.type==\"Enforced\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new(crate::schema::NAME_RULE).message(crate::schema::NAME_MESSAGE),
    validation = kube::core::Rule::new(
        "(has(self.spec.__namespace__) ? self.spec.__namespace__ : self.metadata.name) == \
         (has(oldSelf.spec.__namespace__) ? oldSelf.spec.__namespace__ : oldSelf.metadata.name)"
    ).message(NAMESPACE_IMMUTABLE_MESSAGE),
)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// The namespace this tenant owns. Defaults to the Tenant's own name. It cannot be changed
    /// after creation: to move a tenant, create a new Tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub namespace: Option<String>,
    /// A human-readable name for the organization, shown in dashboards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The kill switch: when true, every connection of the tenant's things and users is refused
    /// and live sessions are disconnected. Nothing is deleted; set it back to false to resume.
    #[serde(default)]
    pub suspended: bool,
    /// Quotas for the tenant. An unset limit means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<TenantLimits>,
    /// What the tenant allows browser pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<TenantWeb>,
    /// How the tenant's requests are authorized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<TenantAuthorization>,
    /// The certificate authority whose client certificates authenticate the tenant's things.
    /// Each tenant trusts only its own: a certificate from another tenant's CA never
    /// authenticates here, whatever it names.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "deviceCA")]
    pub device_ca: Option<DeviceCA>,
    /// Fleet provisioning: devices that hold a shared claim certificate may ask, over HTTPS,
    /// for a Thing of their own and its certificate (`POST /provisioning/{tenant}/{claim}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<Provisioning>,
}

/// The most claims one Tenant may declare.
pub const PROVISIONING_CLAIMS_MAX: usize = 32;

/// A tenant's fleet provisioning.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Provisioning {
    /// The claims devices may present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub claims: Vec<ProvisioningClaim>,
}

/// One provisioning claim: who may ask (holders of its claim certificate), for which names,
/// how many, and what they get.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningClaim {
    /// The claim's name, in the request's path.
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub name: String,
    /// A Secret in the tenant's namespace whose `tls.crt` holds the claim certificates
    /// (PEM): a device presenting one of exactly these, within its validity, may ask.
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub certificate_secret_name: String,
    /// A Secret in the tenant's namespace with `tls.crt` and `tls.key` of the CA that signs
    /// provisioned devices' certificates: the tenant's `deviceCA` (for a cert-manager CA
    /// issuer, the Secret its `spec.ca.secretName` names).
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub signing_secret_name: String,
    /// A regular expression the whole requested thing name must match, for example
    /// `sensor-[0-9]{6}`.
    #[schemars(length(min = 1, max = 256))]
    pub name_pattern: String,
    /// The most Things this claim may create; further requests are refused.
    #[schemars(range(min = 1))]
    pub max_things: u32,
    /// Days a provisioned device's certificate is valid. Default 365.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub certificate_days: Option<u32>,
    /// Attributes every provisioned Thing gets.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// When true, requests are refused; Things already made stay.
    #[serde(default)]
    pub disabled: bool,
}

/// The label a provisioned Thing carries: the claim that made it.
pub const PROVISIONING_CLAIM_LABEL: &str = "fleetward.io/provisioning-claim";

/// Message of the rule asking a `deviceCA` for its source.
pub const DEVICE_CA_MESSAGE: &str = "deviceCA needs secretName (a Secret in the tenant's \
     namespace with ca.crt) or issuerRef (a cert-manager CA Issuer or ClusterIssuer), or both";

/// Where a tenant's device CA comes from, and what it revoked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.secretName) || has(self.issuerRef)",
    "message": DEVICE_CA_MESSAGE,
}]))]
pub struct DeviceCA {
    /// A Secret in the tenant's namespace whose `ca.crt` holds the CA certificates (PEM, one
    /// or several during a rotation). With `issuerRef` as well, it is the trust, and the
    /// issuer only issues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub secret_name: Option<String>,
    /// A cert-manager CA issuer: things with `x509.issue` get their certificates from it, and,
    /// without `secretName`, its CA (the `tls.crt` and `ca.crt` of the Secret named by its
    /// `spec.ca.secretName`) is the trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// A Secret in the tenant's namespace whose `ca.crl` holds certificate revocation lists
    /// (PEM or DER) of the CA: the serials they list never authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub crl_secret_name: Option<String>,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the tenant's namespace, the default) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
}

/// The kind of a cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IssuerKind {
    /// A namespaced `Issuer` in the tenant's namespace.
    #[default]
    Issuer,
    /// A cluster-wide `ClusterIssuer`.
    ClusterIssuer,
}

impl IssuerKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        }
    }
}

/// How a tenant's requests are authorized.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantAuthorization {
    /// The engine: `builtin` (the default) decides from Connections, Groups and roles; `cedar`
    /// translates the Connections into Cedar permit policies and adds the namespace's Policy
    /// objects on top (a forbid always wins). Every dataplane must be of a release that knows
    /// the engine; one that does not refuses the tenant's requests.
    #[serde(default)]
    pub engine: AuthorizationEngine,
}

/// An authorization engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AuthorizationEngine {
    /// Connections, Groups and roles.
    #[default]
    Builtin,
    /// Cedar: the Connections as permit policies, and the tenant's Policy objects.
    Cedar,
}

/// The most origins one Tenant may list.
pub const ALLOWED_ORIGINS_MAX: usize = 64;

/// Message of the rule refusing an origin a browser would never send.
pub const ORIGIN_MESSAGE: &str = "an origin is scheme://host[:port] as a browser sends it: http or \
     https, lower case, no path, no trailing '/', no wildcard (for example \
     'https://dash.example.com')";

/// What a tenant allows browser pages.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantWeb {
    /// Origins whose pages may call the tenant's HTTP API across origins (CORS): sign in,
    /// refresh, publish. Each is exact, as a browser sends it in `Origin`, for example
    /// `https://dash.example.com`. The dataplane's `--cors-allowed-origins` adds origins for
    /// every tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "allowed_origins")]
    pub allowed_origins: Vec<String>,
}

fn allowed_origins(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": ALLOWED_ORIGINS_MAX,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": 253,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^https?://[^/?#*@\\\\sA-Z]+$')",
                "message": ORIGIN_MESSAGE,
            }],
        },
    })
}

/// Quotas for one tenant. Every limit is optional and, when set, at least 1.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantLimits {
    /// The most Things the tenant may have; Things beyond it are not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_things: Option<u32>,
    /// The most Channels the tenant may have; Channels beyond it are not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_channels: Option<u32>,
    /// The most simultaneous client connections (MQTT, WebSocket) of the tenant on each
    /// dataplane pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// The largest message accepted from the tenant, in bytes: the payload plus its MQTT v5
    /// properties (user properties, correlation data, response topic, content type), wills
    /// included. A Channel may set a smaller limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_message_size: Option<u32>,
    /// Sustained publish rate of the whole tenant, in messages per second on each dataplane
    /// pod: all its things and users together, over MQTT, HTTP and WebSocket. Past it MQTT
    /// publishers are throttled and HTTP publishes refused with 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub publish_rate: Option<u32>,
    /// Messages the tenant may publish in a burst above `publishRate`, on each dataplane pod,
    /// before it is throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub publish_burst: Option<u32>,
    /// The most retained messages the tenant keeps, over all its Channels, on each dataplane
    /// pod. Unset: 10000. A retained publish beyond it is refused (MQTT v5 0x97, HTTP 429);
    /// replacing or clearing a retained message is always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_retained_messages: Option<u32>,
    /// The most bytes of retained messages (topic, payload and properties) the tenant keeps
    /// on each dataplane pod. Unset: 67108864 (64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_retained_bytes: Option<u64>,
    /// The most bytes of message history (payload, topic, properties and
    /// publisher, and 64 bytes a message) the tenant
    /// keeps across its channels with `history`; past it the oldest messages go first.
    /// Unset: 1073741824 (1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_history_bytes: Option<u64>,
}

impl Tenant {
    /// The namespace this tenant owns: `spec.namespace`, or the Tenant's name when unset.
    pub fn namespace(&self) -> &str {
        self.spec
            .namespace
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(namespace: Option<&str>) -> Tenant {
        Tenant::new(
            "acme",
            TenantSpec {
                authorization: Default::default(),
                namespace: namespace.map(str::to_owned),
                display_name: None,
                suspended: false,
                limits: None,
                web: None,
                device_ca: None,
                provisioning: None,
            },
        )
    }

    #[test]
    fn the_namespace_defaults_to_the_tenant_name() {
        assert_eq!(tenant(None).namespace(), "acme");
        assert_eq!(tenant(Some("acme-prod")).namespace(), "acme-prod");
    }
}
