//! The Policy kind: Cedar policies a tenant adds to its Connections, when its Tenant's
//! `spec.authorization.engine` is `cedar`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::PolicyStatus;

/// The longest policy text one Policy may hold, in bytes.
pub const MAX_POLICY_BYTES: u32 = 65_536;

/// What a Policy declares: Cedar `permit` and `forbid` policies over the tenant's things,
/// users, groups, channels and topics (the schema is `docs/cedar.cedarschema`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "Policy",
    plural = "policies",
    namespaced,
    doc = "A Policy adds Cedar permit and forbid policies to its tenant's authorization, on top of \
           its Connections, when the Tenant's spec.authorization.engine is cedar. A forbid always \
           wins. While a new version is invalid, the last valid one stays enforced.",
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "pol",
    category = "fleetward",
    printcolumn(name = "Description", type_ = "string", json_path = ".spec.description", priority = 1, description = "What the policy is for"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Enforced", type_ = "string", json_path = ".status.conditions[?(@.type==\"Enforced\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new(crate::schema::NAME_RULE).message(crate::schema::NAME_MESSAGE),
)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Cedar policy text: one or more `permit` and `forbid` policies (no templates), validated
    /// against Fleetward's Cedar schema. Principals are `Thing` (its spec.attributes as tags)
    /// and `User` (with `role`), children of their `Group`s; actions are `connect`, `publish`
    /// and `subscribe`; resources are the `Tenant` (connect) and a `Topic` of a `Channel` (with
    /// `subtopic`, `depth` and one tag per level: "0" is the first). Annotate a policy with
    /// `@id("name")` to name it in explanations; otherwise it is `Policy/<name>/<n>`.
    #[schemars(length(min = 1, max = MAX_POLICY_BYTES))]
    pub cedar: String,
    /// What the policy is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}
