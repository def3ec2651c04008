//! The Group kind: things and users that share the channels granted to the group.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::GroupStatus;

/// The most members one Group may list.
pub const MAX_MEMBERS: usize = 1024;

/// What a Group declares: its members, so that one Connection can grant them all.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "Group",
    namespaced,
    doc = "A Group gathers Things and Users of a tenant; a Connection whose subject is the group \
           grants every member.",
    status = "GroupStatus",
    derive = "PartialEq",
    shortname = "grp",
    category = "fleetward",
    printcolumn(name = "Description", type_ = "string", json_path = ".spec.description", priority = 1, description = "What the group is for"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Enforced", type_ = "string", json_path = ".status.conditions[?(@.type==\"Enforced\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new(crate::schema::NAME_RULE).message(crate::schema::NAME_MESSAGE),
)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct GroupSpec {
    /// The things and users in the group, each at most once. A member that does not exist is
    /// ignored until it does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_MEMBERS),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kind", "name"])
    )]
    pub members: Vec<Member>,
    /// What the group is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One member of a Group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Kind of the member: `Thing` or `User`. Groups do not nest.
    pub kind: MemberKind,
    /// Name of the member in this namespace.
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub name: String,
}

/// The kinds that can be members of a Group.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum MemberKind {
    /// A Thing: a device or service.
    Thing,
    /// A User: a person or application with tokens.
    User,
}
