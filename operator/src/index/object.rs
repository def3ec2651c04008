//! What the index is fed: the domain inputs and Secrets, and the keys that name them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::input::{Channel, Connection, Group, Policy, Tenant, Thing, User};

/// The kinds the index knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretData {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// Entry name → value.
    pub entries: BTreeMap<String, Vec<u8>>,
}

/// One object to apply to the index: a domain input (the edges convert their resources into
/// one, see `crate::resource`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
        let (kind, namespace, name) = self.names()?;
        Some(ObjectKey::namespaced(kind, namespace, name))
    }

    /// The object's kind, namespace (empty for a Tenant) and name, borrowed; `None` as for
    /// [`Self::key`].
    pub(crate) fn names(&self) -> Option<(Kind, &str, &str)> {
        let (kind, namespace, name) = match self {
            Object::Tenant(o) => (Kind::Tenant, "", o.meta.name.as_str()),
            Object::Secret(s) => (Kind::Secret, s.namespace.as_str(), s.name.as_str()),
            Object::Thing(o) => (Kind::Thing, o.meta.namespace.as_str(), o.meta.name.as_str()),
            Object::Channel(o) => (Kind::Channel, &*o.meta.namespace, &*o.meta.name),
            Object::Connection(o) => (Kind::Connection, &*o.meta.namespace, &*o.meta.name),
            Object::User(o) => (Kind::User, &*o.meta.namespace, &*o.meta.name),
            Object::Group(o) => (Kind::Group, &*o.meta.namespace, &*o.meta.name),
            Object::Policy(o) => (Kind::Policy, &*o.meta.namespace, &*o.meta.name),
        };
        let named = !name.is_empty() && (kind == Kind::Tenant || !namespace.is_empty());
        named.then_some((kind, namespace, name))
    }
}
