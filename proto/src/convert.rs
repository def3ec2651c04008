//! The policy model to and from its PolicySync wire form, refusing malformed input with an error.

use fleetward_policy::{
    self as policy, Actions, BuildError, Changes, Delta, GrantSubject, KeyDigest, PatternError,
    Qos, ResourceName, Resources, Role, SigningAlgorithm, Snapshot, SubjectKind, SubtopicPattern,
};

use crate::pb;

/// Why a wire message could not be turned into the policy model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A key digest is not 32 bytes.
    #[error("{resource}: key digest {index} is {len} bytes, a SHA-256 digest is 32")]
    DigestLength {
        /// The resource, such as `thing acme/sensor-1`.
        resource: String,
        /// The digest's position in the list.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// An enum value this release does not know (or the unspecified zero value).
    #[error(
        "{resource}: field {field} has value {value}, which this release does not know; \
         upgrade the dataplane before the operator sends it"
    )]
    UnknownEnum {
        /// The resource.
        resource: String,
        /// The field, such as `role`.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
    /// A required field is absent.
    #[error("{resource}: field {field} is missing")]
    Missing {
        /// The resource.
        resource: String,
        /// The field.
        field: &'static str,
    },
    /// A subtopic pattern does not parse.
    #[error("{resource}: subtopic pattern {pattern:?} is invalid: {error}")]
    Pattern {
        /// The resource.
        resource: String,
        /// The pattern as sent.
        pattern: String,
        /// Why it does not parse.
        error: PatternError,
    },
    /// A tenant's device CA does not parse.
    #[error("{resource}: device CA: {error}")]
    DeviceCa {
        /// The resource.
        resource: String,
        /// Why.
        error: policy::CaError,
    },
    /// Two resources have the same identity.
    #[error("{0}")]
    Build(#[from] BuildError),
}

fn named(kind: &str, tenant: &str, name: &str) -> String {
    format!("{kind} {tenant}/{name}")
}

// ---- policy → wire ----

fn tenant_to(t: &policy::Tenant) -> pb::Tenant {
    let l = &t.limits;
    pb::Tenant {
        name: t.name.clone(),
        suspended: t.suspended,
        limits: Some(pb::TenantLimits {
            max_things: l.max_things,
            max_channels: l.max_channels,
            max_connections: l.max_connections,
            max_message_size: l.max_message_size,
            publish_rate: l.publish_rate,
            publish_burst: l.publish_burst,
            max_retained_messages: l.max_retained_messages,
            max_retained_bytes: l.max_retained_bytes,
            max_history_bytes: l.max_history_bytes,
        }),
        uid: t.uid.clone(),
        // Absent when empty, so a tenant without it encodes as before the field existed.
        web: (!t.web.is_empty()).then(|| pb::TenantWeb {
            allowed_origins: t.web.allowed_origins.clone(),
        }),
        engine: match t.engine {
            policy::Engine::Builtin => pb::Engine::Builtin as i32,
            policy::Engine::Cedar => pb::Engine::Cedar as i32,
            // Only ever decoded from a newer peer; it stays unknown when passed on.
            policy::Engine::Unsupported => -1,
        },
        device_ca: t.device_ca.as_ref().map(|ca| pb::DeviceCa {
            certificates: ca.certificates().map(<[u8]>::to_vec).collect(),
            revoked_serials: ca.revoked().iter().cloned().collect(),
        }),
        provisioning: t
            .provisioning
            .iter()
            .map(|c| pb::ProvisioningClaim {
                name: c.name.clone(),
                certificates: c.certificates.iter().map(|d| d.to_vec()).collect(),
                name_pattern: c.name_pattern.clone(),
                max_things: c.max_things,
                provisioned: c.provisioned,
                disabled: c.disabled,
            })
            .collect(),
    }
}

fn thing_to(t: &policy::Thing) -> pb::Thing {
    pb::Thing {
        tenant: t.tenant.clone(),
        name: t.name.clone(),
        key_digests: t
            .key_digests
            .iter()
            .map(|d| d.as_bytes().to_vec())
            .collect(),
        disabled: t.disabled,
        mountpoint: t.mountpoint.clone(),
        max_connections: t.max_connections,
        attributes: t.attributes.clone(),
        credential_mode: match t.credential_mode {
            policy::CredentialMode::Key => pb::CredentialMode::Key,
            policy::CredentialMode::KeyOrCertificate => pb::CredentialMode::KeyOrCertificate,
            policy::CredentialMode::Certificate => pb::CredentialMode::Certificate,
        } as i32,
        x509: t.x509.as_ref().map(|x| pb::ThingX509 {
            common_name: x.common_name.clone(),
            revoked_serials: x.revoked_serials.clone(),
        }),
    }
}

fn role_to(r: Role) -> pb::Role {
    match r {
        Role::Admin => pb::Role::Admin,
        Role::Member => pb::Role::Member,
        Role::Viewer => pb::Role::Viewer,
    }
}

fn user_to(u: &policy::User) -> pb::User {
    pb::User {
        tenant: u.tenant.clone(),
        name: u.name.clone(),
        role: role_to(u.role).into(),
        password_hash: u.password_hash.clone(),
        token_epoch: u.token_epoch,
        disabled: u.disabled,
    }
}

fn signing_key_to(k: &policy::SigningKey) -> pb::SigningKey {
    pb::SigningKey {
        kid: k.kid.clone(),
        algorithm: match k.algorithm {
            SigningAlgorithm::EdDSA => pb::SigningAlgorithm::Eddsa,
            SigningAlgorithm::ES256 => pb::SigningAlgorithm::Es256,
        }
        .into(),
        private_key: k.private_key.clone(),
        active: k.active,
    }
}

fn kind_to(k: SubjectKind) -> pb::SubjectKind {
    match k {
        SubjectKind::Thing => pb::SubjectKind::Thing,
        SubjectKind::User => pb::SubjectKind::User,
    }
}

fn group_to(g: &policy::Group) -> pb::Group {
    pb::Group {
        tenant: g.tenant.clone(),
        name: g.name.clone(),
        members: g
            .members
            .iter()
            .map(|m| pb::Member {
                kind: kind_to(m.kind).into(),
                name: m.name.clone(),
            })
            .collect(),
    }
}

fn qos_to(q: Qos) -> pb::Qos {
    match q {
        Qos::AtMostOnce => pb::Qos::AtMostOnce,
        Qos::AtLeastOnce => pb::Qos::AtLeastOnce,
        Qos::ExactlyOnce => pb::Qos::ExactlyOnce,
    }
}

fn channel_to(c: &policy::Channel) -> pb::Channel {
    pb::Channel {
        tenant: c.tenant.clone(),
        name: c.name.clone(),
        max_qos: qos_to(c.max_qos).into(),
        retained_allowed: c.retained_allowed,
        max_message_size: c.max_message_size,
        uid: c.uid.clone(),
        delivery_metadata: c.delivery_metadata,
        history_retention_secs: c.history_retention_secs,
    }
}

fn grant_to(g: &policy::Grant) -> pb::Grant {
    use pb::grant_subject::Subject;
    let subject = match &g.subject {
        GrantSubject::Thing(n) => Subject::Thing(n.clone()),
        GrantSubject::User(n) => Subject::User(n.clone()),
        GrantSubject::Group(n) => Subject::Group(n.clone()),
    };
    pb::Grant {
        tenant: g.tenant.clone(),
        name: g.name.clone(),
        subject: Some(pb::GrantSubject {
            subject: Some(subject),
        }),
        channel: g.channel.clone(),
        publish: g.actions.publish,
        subscribe: g.actions.subscribe,
        allow: g.allow.iter().map(|p| p.as_str().to_owned()).collect(),
        deny: g.deny.iter().map(|p| p.as_str().to_owned()).collect(),
    }
}

fn name_to(r: &ResourceName) -> pb::ResourceName {
    pb::ResourceName {
        tenant: r.tenant.clone(),
        name: r.name.clone(),
    }
}

/// The wire form of a snapshot: every resource, sorted by identity.
pub fn snapshot_to_proto(snapshot: &Snapshot) -> pb::FullSnapshot {
    pb::FullSnapshot {
        version: snapshot.version(),
        tenants: sorted(snapshot.tenants(), |t| (t.name.as_str(), ""), tenant_to),
        things: sorted(snapshot.things(), |t| (&t.tenant, &t.name), thing_to),
        users: sorted(snapshot.users(), |u| (&u.tenant, &u.name), user_to),
        groups: sorted(snapshot.groups(), |g| (&g.tenant, &g.name), group_to),
        channels: sorted(snapshot.channels(), |c| (&c.tenant, &c.name), channel_to),
        grants: sorted(snapshot.grants(), |g| (&g.tenant, &g.name), grant_to),
        signing_keys: snapshot.signing_keys().iter().map(signing_key_to).collect(),
        policies: sorted(snapshot.policies(), |p| (&p.tenant, &p.name), policy_to),
    }
}

/// Deterministic output makes equal snapshots encode to equal bytes.
fn sorted<'a, T: 'a, W>(
    items: impl Iterator<Item = &'a T>,
    key: impl Fn(&'a T) -> (&'a str, &'a str),
    to: impl Fn(&T) -> W,
) -> Vec<W> {
    let mut v: Vec<&T> = items.collect();
    v.sort_by(|a, b| key(a).cmp(&key(b)));
    v.into_iter().map(to).collect()
}

/// The wire form of a delta.
pub fn delta_to_proto(delta: &Delta) -> pb::Delta {
    pb::Delta {
        from_version: delta.from_version,
        to_version: delta.to_version,
        tenant_upserts: delta.tenants.upserts.iter().map(tenant_to).collect(),
        tenant_removals: delta.tenants.removals.clone(),
        thing_upserts: delta.things.upserts.iter().map(thing_to).collect(),
        thing_removals: delta.things.removals.iter().map(name_to).collect(),
        user_upserts: delta.users.upserts.iter().map(user_to).collect(),
        user_removals: delta.users.removals.iter().map(name_to).collect(),
        group_upserts: delta.groups.upserts.iter().map(group_to).collect(),
        group_removals: delta.groups.removals.iter().map(name_to).collect(),
        channel_upserts: delta.channels.upserts.iter().map(channel_to).collect(),
        channel_removals: delta.channels.removals.iter().map(name_to).collect(),
        grant_upserts: delta.grants.upserts.iter().map(grant_to).collect(),
        grant_removals: delta.grants.removals.iter().map(name_to).collect(),
        signing_keys: delta.signing_keys.as_ref().map(|keys| pb::SigningKeys {
            keys: keys.iter().map(signing_key_to).collect(),
        }),
        policy_upserts: delta.policies.upserts.iter().map(policy_to).collect(),
        policy_removals: delta.policies.removals.iter().map(name_to).collect(),
    }
}

// ---- wire → policy ----

fn tenant_from(t: pb::Tenant) -> Result<policy::Tenant, ConvertError> {
    let l = t.limits.unwrap_or_default();
    let device_ca = match t.device_ca {
        None => None,
        Some(ca) => Some(
            policy::DeviceCa::new(ca.certificates, ca.revoked_serials).map_err(|error| {
                ConvertError::DeviceCa {
                    resource: format!("tenant {}", t.name),
                    error,
                }
            })?,
        ),
    };
    Ok(policy::Tenant {
        name: t.name,
        uid: t.uid,
        suspended: t.suspended,
        limits: policy::TenantLimits {
            max_things: l.max_things,
            max_channels: l.max_channels,
            max_connections: l.max_connections,
            max_message_size: l.max_message_size,
            publish_rate: l.publish_rate,
            publish_burst: l.publish_burst,
            max_retained_messages: l.max_retained_messages,
            max_retained_bytes: l.max_retained_bytes,
            max_history_bytes: l.max_history_bytes,
        },
        web: policy::TenantWeb {
            allowed_origins: t.web.map(|w| w.allowed_origins).unwrap_or_default(),
        },
        engine: match pb::Engine::try_from(t.engine) {
            Ok(pb::Engine::Builtin) => policy::Engine::Builtin,
            Ok(pb::Engine::Cedar) => policy::Engine::Cedar,
            Err(_) => policy::Engine::Unsupported,
        },
        device_ca,
        provisioning: t
            .provisioning
            .into_iter()
            .map(|c| policy::ProvisioningClaim {
                name: c.name,
                // A digest of another length matches no certificate.
                certificates: c
                    .certificates
                    .iter()
                    .filter_map(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
                    .collect(),
                name_pattern: c.name_pattern,
                max_things: c.max_things,
                provisioned: c.provisioned,
                disabled: c.disabled,
            })
            .collect(),
    })
}

fn policy_from(p: pb::Policy) -> policy::TenantPolicy {
    policy::TenantPolicy {
        tenant: p.tenant,
        name: p.name,
        text: p.text,
    }
}

fn policy_to(p: &policy::TenantPolicy) -> pb::Policy {
    pb::Policy {
        tenant: p.tenant.clone(),
        name: p.name.clone(),
        text: p.text.clone(),
    }
}

fn thing_from(t: pb::Thing) -> Result<policy::Thing, ConvertError> {
    let mut key_digests = Vec::with_capacity(t.key_digests.len());
    for (index, d) in t.key_digests.iter().enumerate() {
        let bytes: [u8; 32] = d
            .as_slice()
            .try_into()
            .map_err(|_| ConvertError::DigestLength {
                resource: named("thing", &t.tenant, &t.name),
                index,
                len: d.len(),
            })?;
        key_digests.push(KeyDigest::from_bytes(bytes));
    }
    Ok(policy::Thing {
        tenant: t.tenant,
        name: t.name,
        key_digests,
        disabled: t.disabled,
        mountpoint: t.mountpoint,
        max_connections: t.max_connections,
        attributes: t.attributes,
        credential_mode: match pb::CredentialMode::try_from(t.credential_mode) {
            Ok(pb::CredentialMode::Key) => policy::CredentialMode::Key,
            Ok(pb::CredentialMode::KeyOrCertificate) => policy::CredentialMode::KeyOrCertificate,
            // Unknown to this release: the strictest reading, so no key is taken that a newer
            // operator meant to refuse.
            Ok(pb::CredentialMode::Certificate) | Err(_) => policy::CredentialMode::Certificate,
        },
        x509: t.x509.map(|x| policy::ThingX509 {
            common_name: x.common_name,
            revoked_serials: x
                .revoked_serials
                .iter()
                .filter_map(|s| policy::normalize_serial(s))
                .collect(),
        }),
    })
}

fn user_from(u: pb::User) -> Result<policy::User, ConvertError> {
    let role = match pb::Role::try_from(u.role) {
        Ok(pb::Role::Admin) => Role::Admin,
        Ok(pb::Role::Member) => Role::Member,
        Ok(pb::Role::Viewer) => Role::Viewer,
        Ok(pb::Role::Unspecified) | Err(_) => {
            return Err(ConvertError::UnknownEnum {
                resource: named("user", &u.tenant, &u.name),
                field: "role",
                value: u.role,
            });
        }
    };
    Ok(policy::User {
        tenant: u.tenant,
        name: u.name,
        role,
        password_hash: u.password_hash,
        token_epoch: u.token_epoch,
        disabled: u.disabled,
    })
}

fn signing_key_from(k: pb::SigningKey) -> Result<policy::SigningKey, ConvertError> {
    let algorithm = match pb::SigningAlgorithm::try_from(k.algorithm) {
        Ok(pb::SigningAlgorithm::Eddsa) => SigningAlgorithm::EdDSA,
        Ok(pb::SigningAlgorithm::Es256) => SigningAlgorithm::ES256,
        Ok(pb::SigningAlgorithm::Unspecified) | Err(_) => {
            return Err(ConvertError::UnknownEnum {
                resource: format!("signing key {}", k.kid),
                field: "algorithm",
                value: k.algorithm,
            });
        }
    };
    Ok(policy::SigningKey {
        kid: k.kid,
        algorithm,
        private_key: k.private_key,
        active: k.active,
    })
}

fn group_from(g: pb::Group) -> Result<policy::Group, ConvertError> {
    let mut members = Vec::with_capacity(g.members.len());
    for m in g.members {
        let kind = match pb::SubjectKind::try_from(m.kind) {
            Ok(pb::SubjectKind::Thing) => SubjectKind::Thing,
            Ok(pb::SubjectKind::User) => SubjectKind::User,
            Ok(pb::SubjectKind::Unspecified) | Err(_) => {
                return Err(ConvertError::UnknownEnum {
                    resource: named("group", &g.tenant, &g.name),
                    field: "members.kind",
                    value: m.kind,
                });
            }
        };
        members.push(policy::Member { kind, name: m.name });
    }
    Ok(policy::Group {
        tenant: g.tenant,
        name: g.name,
        members,
    })
}

fn channel_from(c: pb::Channel) -> Result<policy::Channel, ConvertError> {
    let max_qos = match pb::Qos::try_from(c.max_qos) {
        Ok(pb::Qos::AtMostOnce) => Qos::AtMostOnce,
        Ok(pb::Qos::AtLeastOnce) => Qos::AtLeastOnce,
        Ok(pb::Qos::ExactlyOnce) => Qos::ExactlyOnce,
        Ok(pb::Qos::Unspecified) | Err(_) => {
            return Err(ConvertError::UnknownEnum {
                resource: named("channel", &c.tenant, &c.name),
                field: "max_qos",
                value: c.max_qos,
            });
        }
    };
    Ok(policy::Channel {
        tenant: c.tenant,
        name: c.name,
        uid: c.uid,
        max_qos,
        retained_allowed: c.retained_allowed,
        max_message_size: c.max_message_size,
        delivery_metadata: c.delivery_metadata,
        history_retention_secs: c.history_retention_secs,
    })
}

fn patterns(resource: &str, list: Vec<String>) -> Result<Vec<SubtopicPattern>, ConvertError> {
    list.into_iter()
        .map(|p| {
            SubtopicPattern::parse(&p).map_err(|error| ConvertError::Pattern {
                resource: resource.to_owned(),
                pattern: p,
                error,
            })
        })
        .collect()
}

fn grant_from(g: pb::Grant) -> Result<policy::Grant, ConvertError> {
    use pb::grant_subject::Subject;
    let resource = named("grant", &g.tenant, &g.name);
    let subject = match g.subject.and_then(|s| s.subject) {
        Some(Subject::Thing(n)) => GrantSubject::Thing(n),
        Some(Subject::User(n)) => GrantSubject::User(n),
        Some(Subject::Group(n)) => GrantSubject::Group(n),
        None => {
            return Err(ConvertError::Missing {
                resource,
                field: "subject",
            });
        }
    };
    Ok(policy::Grant {
        allow: patterns(&resource, g.allow)?,
        deny: patterns(&resource, g.deny)?,
        tenant: g.tenant,
        name: g.name,
        subject,
        channel: g.channel,
        actions: Actions {
            publish: g.publish,
            subscribe: g.subscribe,
        },
    })
}

fn name_from(r: pb::ResourceName) -> ResourceName {
    ResourceName::new(r.tenant, r.name)
}

fn all<W, T>(
    list: Vec<W>,
    f: impl FnMut(W) -> Result<T, ConvertError>,
) -> Result<Vec<T>, ConvertError> {
    list.into_iter().map(f).collect()
}

/// The resources of a wire snapshot, checked.
pub fn resources_from_proto(s: pb::FullSnapshot) -> Result<Resources, ConvertError> {
    Ok(Resources {
        tenants: all(s.tenants, tenant_from)?,
        things: all(s.things, thing_from)?,
        users: all(s.users, user_from)?,
        groups: all(s.groups, group_from)?,
        channels: all(s.channels, channel_from)?,
        grants: all(s.grants, grant_from)?,
        signing_keys: all(s.signing_keys, signing_key_from)?,
        policies: s.policies.into_iter().map(policy_from).collect(),
    })
}

/// A snapshot from its wire form; malformed or duplicate resources are an error.
pub fn snapshot_from_proto(s: pb::FullSnapshot) -> Result<Snapshot, ConvertError> {
    let version = s.version;
    Ok(Snapshot::from_resources(version, resources_from_proto(s)?)?)
}

/// A delta from its wire form; malformed resources are an error.
pub fn delta_from_proto(d: pb::Delta) -> Result<Delta, ConvertError> {
    Ok(Delta {
        from_version: d.from_version,
        to_version: d.to_version,
        tenants: Changes {
            upserts: all(d.tenant_upserts, tenant_from)?,
            removals: d.tenant_removals,
        },
        things: Changes {
            upserts: all(d.thing_upserts, thing_from)?,
            removals: d.thing_removals.into_iter().map(name_from).collect(),
        },
        users: Changes {
            upserts: all(d.user_upserts, user_from)?,
            removals: d.user_removals.into_iter().map(name_from).collect(),
        },
        groups: Changes {
            upserts: all(d.group_upserts, group_from)?,
            removals: d.group_removals.into_iter().map(name_from).collect(),
        },
        channels: Changes {
            upserts: all(d.channel_upserts, channel_from)?,
            removals: d.channel_removals.into_iter().map(name_from).collect(),
        },
        grants: Changes {
            upserts: all(d.grant_upserts, grant_from)?,
            removals: d.grant_removals.into_iter().map(name_from).collect(),
        },
        signing_keys: d
            .signing_keys
            .map(|s| all(s.keys, signing_key_from))
            .transpose()?,
        policies: Changes {
            upserts: d.policy_upserts.into_iter().map(policy_from).collect(),
            removals: d.policy_removals.into_iter().map(name_from).collect(),
        },
    })
}

#[cfg(test)]
mod tests;
