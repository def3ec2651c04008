//! What the index is fed: Fleetward resources and Secrets, and the keys that name them.

use std::collections::BTreeMap;
use std::fmt;

use fleetward_crds::{Channel, Connection, Group, Policy, Tenant, Thing, User};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

/// The kinds the index knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `Tenant` (cluster-scoped).
    Tenant,
    /// `Thing`.
    Thing,
    /// `Channel`.
    Channel,
    /// `Connection`.
    Connection,
    /// `User`.
    User,
    /// `Group`.
    Group,
    /// `Policy`.
    Policy,
    /// A core `Secret` holding thing keys or user passwords.
    Secret,
}

impl Kind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tenant => "Tenant",
            Kind::Thing => "Thing",
            Kind::Channel => "Channel",
            Kind::Connection => "Connection",
            Kind::User => "User",
            Kind::Group => "Group",
            Kind::Policy => "Policy",
            Kind::Secret => "Secret",
        }
    }
}

/// Names one object: its kind, namespace (empty for a Tenant) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a namespaced object.
    pub fn namespaced(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Tenant.
    pub fn tenant(name: impl Into<String>) -> Self {
        Self::namespaced(Kind::Tenant, "", name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// The entries of a Secret, decoded (`data` and `stringData` merged, `stringData` winning as the
/// API server does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretData {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// Entry name → value.
    pub entries: BTreeMap<String, Vec<u8>>,
}

impl SecretData {
    /// The entries of a Kubernetes Secret; `None` when it has no namespace or name.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let namespace = secret.metadata.namespace.clone()?;
        let name = secret.metadata.name.clone()?;
        let mut entries: BTreeMap<String, Vec<u8>> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in secret.string_data.iter().flatten() {
            entries.insert(k.clone(), v.clone().into_bytes());
        }
        Some(Self {
            namespace,
            name,
            entries,
        })
    }
}

/// One object to apply to the index.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Tenant.
    Tenant(Tenant),
    /// A Thing.
    Thing(Thing),
    /// A Channel.
    Channel(Channel),
    /// A Connection.
    Connection(Connection),
    /// A User.
    User(User),
    /// A Group.
    Group(Group),
    /// A Policy.
    Policy(Policy),
    /// A Secret's entries.
    Secret(SecretData),
}

impl Object {
    /// The object's key; `None` when it lacks a name (or a namespace, for a namespaced kind).
    pub fn key(&self) -> Option<ObjectKey> {
        let (kind, meta) = match self {
            Object::Tenant(o) => return o.metadata.name.clone().map(ObjectKey::tenant),
            Object::Secret(s) => {
                return Some(ObjectKey::namespaced(
                    Kind::Secret,
                    s.namespace.clone(),
                    s.name.clone(),
                ));
            }
            Object::Thing(o) => (Kind::Thing, &o.metadata),
            Object::Channel(o) => (Kind::Channel, &o.metadata),
            Object::Connection(o) => (Kind::Connection, &o.metadata),
            Object::User(o) => (Kind::User, &o.metadata),
            Object::Group(o) => (Kind::Group, &o.metadata),
            Object::Policy(o) => (Kind::Policy, &o.metadata),
        };
        Some(ObjectKey::namespaced(
            kind,
            meta.namespace.clone()?,
            meta.name.clone()?,
        ))
    }
}

/// The order in which objects count against a limit: oldest first, then by name, so the
/// objects already served keep being served when a new one goes over the limit.
pub(crate) fn age_order(meta: &ObjectMeta) -> (bool, Option<&Time>, &str) {
    let created = meta.creation_timestamp.as_ref();
    (
        created.is_none(),
        created,
        meta.name.as_deref().unwrap_or_default(),
    )
}
