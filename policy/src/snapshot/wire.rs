//! The snapshot's serialized form: the version and every resource, sorted; indexes are rebuilt
//! on load.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Snapshot, Table};
use crate::model::{
    Channel, Grant, Group, Resources, SigningKey, Tenant, TenantPolicy, Thing, User,
};

/// What a snapshot serializes as.
#[derive(Serialize)]
struct SnapshotView<'a> {
    version: u64,
    tenants: Vec<&'a Tenant>,
    things: Vec<&'a Thing>,
    users: Vec<&'a User>,
    groups: Vec<&'a Group>,
    channels: Vec<&'a Channel>,
    grants: Vec<&'a Grant>,
    #[serde(skip_serializing_if = "<[SigningKey]>::is_empty")]
    signing_keys: &'a [SigningKey],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policies: Vec<&'a TenantPolicy>,
}

#[derive(Deserialize)]
struct SnapshotOwned {
    version: u64,
    #[serde(default)]
    tenants: Vec<Tenant>,
    #[serde(default)]
    things: Vec<Thing>,
    #[serde(default)]
    users: Vec<User>,
    #[serde(default)]
    groups: Vec<Group>,
    #[serde(default)]
    channels: Vec<Channel>,
    #[serde(default)]
    grants: Vec<Grant>,
    #[serde(default)]
    signing_keys: Vec<SigningKey>,
    #[serde(default)]
    policies: Vec<TenantPolicy>,
}

/// A table's records, in their keys' order.
fn sorted_refs<K: Ord + Clone + std::hash::Hash, T>(m: &Table<K, Arc<T>>) -> Vec<&T> {
    m.sorted_values().into_iter().map(|t| &**t).collect()
}

impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SnapshotView {
            version: self.version,
            tenants: sorted_refs(&self.tenants),
            things: sorted_refs(&self.things),
            users: sorted_refs(&self.users),
            groups: sorted_refs(&self.groups),
            channels: sorted_refs(&self.channels),
            grants: sorted_refs(&self.grants),
            signing_keys: &self.signing_keys,
            policies: sorted_refs(&self.policies),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let o = SnapshotOwned::deserialize(deserializer)?;
        let resources = Resources {
            tenants: o.tenants,
            things: o.things,
            users: o.users,
            groups: o.groups,
            channels: o.channels,
            grants: o.grants,
            signing_keys: o.signing_keys,
            policies: o.policies,
        };
        Snapshot::from_resources(o.version, resources).map_err(serde::de::Error::custom)
    }
}
