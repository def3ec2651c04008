//! The Connection kind: a grant letting a thing, user or group publish or subscribe on a channel.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::ConnectionStatus;

/// What a Connection grants: a subject, a channel, the actions and optionally the subtopics.
/// Subject and channel are names in the Connection's own namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "Connection",
    namespaced,
    doc = "A Connection is a grant: a Thing, User or Group in this namespace may publish and/or \
           subscribe on a Channel in this namespace, optionally only on some subtopics. Nothing reaches \
           a channel without one.",
    status = "ConnectionStatus",
    derive = "PartialEq",
    shortname = "conn",
    category = "fleetward",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.subject.kind", description = "Kind of the subject"),
    printcolumn(name = "Subject", type_ = "string", json_path = ".spec.subject.name", description = "Name of the subject"),
    printcolumn(name = "Channel", type_ = "string", json_path = ".spec.channel", description = "Channel the grant is for"),
    printcolumn(name = "Actions", type_ = "string", json_path = ".spec.actions", description = "Granted actions"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Enforced", type_ = "string", json_path = ".status.conditions[?(@.type==\"Enforced\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new(crate::schema::NAME_RULE).message(crate::schema::NAME_MESSAGE),
)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSpec {
    /// Who is granted: a Thing, User or Group in this namespace.
    pub subject: Subject,
    /// Name of the Channel in this namespace the grant is for.
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub channel: String,
    /// What the subject may do on the channel: `publish`, `subscribe`, or both. Each at most once.
    #[schemars(length(min = 1, max = 2), extend("x-kubernetes-list-type" = "set"))]
    pub actions: Vec<Action>,
    /// Limits the grant to some subtopics of the channel. Unset, the grant covers every subtopic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtopics: Option<Subtopics>,
}

/// The subject of a grant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// Kind of the subject: `Thing`, `User` or `Group`.
    pub kind: SubjectKind,
    /// Name of the subject in this namespace.
    #[schemars(schema_with = "crate::schema::dns_label")]
    pub name: String,
}

/// The kinds that can be granted access.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum SubjectKind {
    /// A Thing: a device or service.
    Thing,
    /// A User: a person or application with tokens.
    User,
    /// A Group: every member shares the grant.
    Group,
}

/// An action on a channel.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Send messages to the channel.
    Publish,
    /// Receive messages from the channel.
    Subscribe,
}

/// Subtopic patterns in MQTT filter syntax, relative to the channel: `rooms/+/temperature`
/// matches one level where `+` stands, `alerts/#` matches everything below `alerts`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subtopics {
    /// Patterns the grant covers. Empty means every subtopic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::subtopic_patterns")]
    pub allow: Vec<String>,
    /// Patterns the grant never covers, even when an `allow` pattern matches: deny wins. A
    /// topic they match is never published to nor delivered. A subscription whose filter
    /// overlaps them (`#`, `+/+`) is granted and those topics are withheld from it, retained
    /// messages included; only a filter they wholly cover is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::subtopic_patterns")]
    pub deny: Vec<String>,
}
