//! Fleetward's resources as the API server and manifests carry them (the `crds` types, with
//! their metadata and status), and their conversion into the index's domain inputs.
//!
//! This is the edge both sources share: the Kubernetes watchers and the single-binary mode's
//! manifest reader read [`Resource`]s, work on them where they must (uids, local device CAs,
//! generated keys), and the index receives `index::Object`s converted here. The index holds
//! only what it resolves: no managed fields, annotations, labels or statuses.

use fleetward_crds as crds;
use fleetward_policy as policy;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::index::input::{self, Meta};
use crate::index::{Kind, Object, ObjectKey, SecretData};

/// One Fleetward resource, or a Secret's entries, as read from the API server or a manifest.
#[derive(Clone, Debug)]
pub enum Resource {
    /// A Tenant.
    Tenant(crds::Tenant),
    /// A Thing.
    Thing(crds::Thing),
    /// A Channel.
    Channel(crds::Channel),
    /// A Connection.
    Connection(crds::Connection),
    /// A User.
    User(crds::User),
    /// A Group.
    Group(crds::Group),
    /// A Policy.
    Policy(crds::Policy),
    /// A Secret's entries.
    Secret(SecretData),
}

impl Resource {
    /// The resource's key; `None` when it lacks a name (or a namespace, for a namespaced kind).
    pub fn key(&self) -> Option<ObjectKey> {
        let (kind, meta) = match self {
            Resource::Tenant(o) => return o.metadata.name.clone().map(ObjectKey::tenant),
            Resource::Secret(s) => {
                return Some(ObjectKey::namespaced(
                    Kind::Secret,
                    s.namespace.clone(),
                    s.name.clone(),
                ));
            }
            Resource::Thing(o) => (Kind::Thing, &o.metadata),
            Resource::Channel(o) => (Kind::Channel, &o.metadata),
            Resource::Connection(o) => (Kind::Connection, &o.metadata),
            Resource::User(o) => (Kind::User, &o.metadata),
            Resource::Group(o) => (Kind::Group, &o.metadata),
            Resource::Policy(o) => (Kind::Policy, &o.metadata),
        };
        Some(ObjectKey::namespaced(
            kind,
            meta.namespace.clone()?,
            meta.name.clone()?,
        ))
    }
}

impl From<Resource> for Object {
    fn from(resource: Resource) -> Self {
        match resource {
            Resource::Tenant(o) => Object::Tenant(tenant(&o)),
            Resource::Thing(o) => Object::Thing(thing(&o)),
            Resource::Channel(o) => Object::Channel(channel(&o)),
            Resource::Connection(o) => Object::Connection(connection(&o)),
            Resource::User(o) => Object::User(user(&o)),
            Resource::Group(o) => Object::Group(group(&o)),
            Resource::Policy(o) => Object::Policy(policy(&o)),
            Resource::Secret(s) => Object::Secret(s),
        }
    }
}

/// The entries of a Kubernetes Secret, decoded (`data` and `stringData` merged, `stringData`
/// winning as the API server does); `None` when it has no namespace or name.
pub fn secret_data(secret: &Secret) -> Option<SecretData> {
    let namespace = secret.metadata.namespace.clone()?;
    let name = secret.metadata.name.clone()?;
    let mut entries: std::collections::BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        entries.insert(k.clone(), v.clone().into_bytes());
    }
    Some(SecretData {
        namespace,
        name,
        entries,
    })
}

/// What the index keeps of an object's metadata; a missing name or namespace is left empty
/// (the index ignores such an object).
fn meta(m: &ObjectMeta) -> Meta {
    Meta {
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        generation: m.generation,
        created: m.creation_timestamp.as_ref().map(|t| t.0),
    }
}

/// A Tenant as the index resolves it.
pub fn tenant(t: &crds::Tenant) -> input::Tenant {
    let spec = &t.spec;
    let engine = match spec.authorization.as_ref().map(|a| a.engine) {
        None | Some(crds::AuthorizationEngine::Builtin) => policy::Engine::Builtin,
        Some(crds::AuthorizationEngine::Cedar) => policy::Engine::Cedar,
    };
    input::Tenant {
        meta: meta(&t.metadata),
        namespace: t.namespace().to_owned(),
        suspended: spec.suspended,
        limits: limits(spec.limits.clone().unwrap_or_default()),
        allowed_origins: (spec.web.as_ref())
            .map(|w| w.allowed_origins.clone())
            .unwrap_or_default(),
        engine,
        device_ca: spec.device_ca.as_ref().map(|d| input::DeviceCaSource {
            secret_name: d.secret_name.clone(),
            issuer: d.issuer_ref.as_ref().map(|r| input::IssuerRef {
                name: r.name.clone(),
                kind: match r.kind {
                    crds::IssuerKind::Issuer => input::IssuerKind::Issuer,
                    crds::IssuerKind::ClusterIssuer => input::IssuerKind::ClusterIssuer,
                },
            }),
            crl_secret_name: d.crl_secret_name.clone(),
        }),
        claims: (spec.provisioning.iter().flat_map(|p| &p.claims))
            .map(|c| input::ProvisioningClaim {
                name: c.name.clone(),
                certificate_secret_name: c.certificate_secret_name.clone(),
                signing_secret_name: c.signing_secret_name.clone(),
                name_pattern: c.name_pattern.clone(),
                max_things: c.max_things,
                disabled: c.disabled,
            })
            .collect(),
    }
}

fn limits(l: crds::TenantLimits) -> policy::TenantLimits {
    policy::TenantLimits {
        max_things: l.max_things,
        max_channels: l.max_channels,
        max_connections: l.max_connections,
        max_message_size: l.max_message_size,
        publish_rate: l.publish_rate,
        publish_burst: l.publish_burst,
        max_retained_messages: l.max_retained_messages,
        max_retained_bytes: l.max_retained_bytes,
        max_history_bytes: l.max_history_bytes,
    }
}

/// A Thing as the index resolves it: its Secrets' names and credential mode with their
/// defaults, its claim label, and the serials its status lists as revoked.
pub fn thing(t: &crds::Thing) -> input::Thing {
    let credentials = t.spec.credentials.clone().unwrap_or_default();
    let mode = match credentials.effective_mode() {
        crds::CredentialMode::Key => policy::CredentialMode::Key,
        crds::CredentialMode::KeyOrCertificate => policy::CredentialMode::KeyOrCertificate,
        crds::CredentialMode::Certificate => policy::CredentialMode::Certificate,
    };
    let claim = (t.metadata.labels.as_ref())
        .and_then(|l| l.get(crds::PROVISIONING_CLAIM_LABEL))
        .cloned();
    input::Thing {
        meta: meta(&t.metadata),
        claim,
        disabled: t.spec.disabled,
        secret_name: t.secret_name(),
        tls_secret_name: t.tls_secret_name(),
        mode,
        x509: credentials.x509.map(|x| input::ThingX509 {
            issue: x.issue,
            common_name: x.subject.and_then(|s| s.common_name),
            revoked_serials: x.revoked_serials,
        }),
        mountpoint: t.spec.mountpoint.clone(),
        max_connections: t.spec.max_connections,
        attributes: t.spec.attributes.clone(),
        status_revoked_serials: (t.status.as_ref())
            .map(|s| s.revoked_serials.clone())
            .unwrap_or_default(),
    }
}

/// A Channel as the index resolves it.
pub fn channel(c: &crds::Channel) -> input::Channel {
    input::Channel {
        meta: meta(&c.metadata),
        max_qos: c.spec.max_qos,
        retained: c.spec.retained,
        max_message_size: c.spec.max_message_size,
        delivery_metadata: c.spec.delivery_metadata,
        history: c.spec.history.as_ref().map(|h| input::Retention {
            text: h.retention.clone(),
            secs: h.retention_secs(),
        }),
    }
}

/// A Connection as the index resolves it.
pub fn connection(c: &crds::Connection) -> input::Connection {
    let spec = &c.spec;
    let name = spec.subject.name.clone();
    let subtopics = spec.subtopics.clone().unwrap_or_default();
    input::Connection {
        meta: meta(&c.metadata),
        subject: match spec.subject.kind {
            crds::SubjectKind::Thing => policy::GrantSubject::Thing(name),
            crds::SubjectKind::User => policy::GrantSubject::User(name),
            crds::SubjectKind::Group => policy::GrantSubject::Group(name),
        },
        channel: spec.channel.clone(),
        actions: policy::Actions {
            publish: spec.actions.contains(&crds::Action::Publish),
            subscribe: spec.actions.contains(&crds::Action::Subscribe),
        },
        allow: subtopics.allow,
        deny: subtopics.deny,
    }
}

/// A User as the index resolves it.
pub fn user(u: &crds::User) -> input::User {
    input::User {
        meta: meta(&u.metadata),
        role: match u.spec.role {
            crds::Role::Admin => policy::Role::Admin,
            crds::Role::Member => policy::Role::Member,
            crds::Role::Viewer => policy::Role::Viewer,
        },
        disabled: u.spec.disabled,
        token_epoch: u.spec.token_epoch,
        password: (u.spec.password_secret_ref.as_ref()).map(|r| input::SecretKeyRef {
            name: r.name.clone(),
            key: r.key.clone(),
        }),
    }
}

/// A Group as the index resolves it.
pub fn group(g: &crds::Group) -> input::Group {
    let members = g.spec.members.iter().map(|m| policy::Member {
        kind: match m.kind {
            crds::MemberKind::Thing => policy::SubjectKind::Thing,
            crds::MemberKind::User => policy::SubjectKind::User,
        },
        name: m.name.clone(),
    });
    input::Group {
        meta: meta(&g.metadata),
        members: members.collect(),
    }
}

/// A Policy as the index resolves it, with the text its status shows as enforced.
pub fn policy(p: &crds::Policy) -> input::Policy {
    let shown = p.status.as_ref().and_then(|s| s.enforced.as_ref());
    input::Policy {
        meta: meta(&p.metadata),
        cedar: p.spec.cedar.clone(),
        shown_enforced: shown.map(|e| input::ShownEnforced {
            generation: e.generation,
            cedar: e.cedar.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn thing_meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("acme".into()),
            uid: Some("7c9e6679".into()),
            generation: Some(3),
            labels: Some(BTreeMap::from([
                (
                    crds::PROVISIONING_CLAIM_LABEL.to_owned(),
                    "line-1".to_owned(),
                ),
                ("team".to_owned(), "plant".to_owned()),
            ])),
            annotations: Some(BTreeMap::from([("note".to_owned(), "x".repeat(4096))])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_thing_becomes_what_the_index_resolves_with_its_defaults_filled_in() {
        let mut t = crds::Thing::new("sensor-1", crds::ThingSpec::default());
        t.metadata = thing_meta("sensor-1");
        t.spec.credentials = Some(crds::ThingCredentials {
            x509: Some(crds::ThingX509 {
                issue: true,
                subject: Some(crds::X509Subject {
                    common_name: Some("SN-0042".into()),
                }),
                revoked_serials: vec!["0a:1b".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        t.status = Some(crds::ThingStatus {
            revoked_serials: vec!["2c".into()],
            ..Default::default()
        });
        let Object::Thing(input) = Object::from(Resource::Thing(t)) else {
            panic!("a Thing stays a Thing");
        };
        assert_eq!(
            (input.meta.name.as_str(), input.meta.namespace.as_str()),
            ("sensor-1", "acme")
        );
        assert_eq!(
            (input.meta.uid.as_str(), input.meta.generation),
            ("7c9e6679", Some(3))
        );
        assert_eq!(input.claim.as_deref(), Some("line-1"));
        assert_eq!(input.secret_name, "sensor-1-credentials");
        assert_eq!(input.tls_secret_name, "sensor-1-tls");
        // With x509 and no mode, a key or a certificate authenticates.
        assert_eq!(input.mode, policy::CredentialMode::KeyOrCertificate);
        let x509 = input.x509.expect("x509 kept");
        assert!(x509.issue);
        assert_eq!(x509.common_name.as_deref(), Some("SN-0042"));
        assert_eq!(x509.revoked_serials, ["0a:1b"]);
        assert_eq!(input.status_revoked_serials, ["2c"]);
    }

    #[test]
    fn a_tenant_names_the_namespace_it_claims_and_its_settings() {
        let mut t = crds::Tenant::new(
            "acme",
            crds::TenantSpec {
                namespace: Some("acme-prod".into()),
                display_name: Some("ACME".into()),
                suspended: true,
                limits: Some(crds::TenantLimits {
                    max_things: Some(10),
                    ..Default::default()
                }),
                web: None,
                authorization: Some(crds::TenantAuthorization {
                    engine: crds::AuthorizationEngine::Cedar,
                }),
                device_ca: Some(crds::DeviceCA {
                    issuer_ref: Some(crds::IssuerRef {
                        name: "fleet-ca".into(),
                        kind: crds::IssuerKind::ClusterIssuer,
                    }),
                    ..Default::default()
                }),
                provisioning: None,
            },
        );
        t.metadata.uid = Some("u-1".into());
        let input = tenant(&t);
        assert_eq!(input.meta.name, "acme");
        assert_eq!(input.namespace, "acme-prod");
        assert!(input.suspended);
        assert_eq!(input.limits.max_things, Some(10));
        assert_eq!(input.engine, policy::Engine::Cedar);
        let issuer = input.device_ca.and_then(|d| d.issuer).expect("an issuer");
        assert_eq!(
            (issuer.name.as_str(), issuer.kind),
            ("fleet-ca", input::IssuerKind::ClusterIssuer)
        );
        t.spec.namespace = None;
        t.spec.authorization = None;
        let input = tenant(&t);
        assert_eq!(input.namespace, "acme", "the Tenant's own name by default");
        assert_eq!(input.engine, policy::Engine::Builtin);
    }

    #[test]
    fn a_connection_and_a_channel_keep_what_resolution_checks_as_written() {
        let mut c = crds::Connection::new(
            "grant",
            crds::ConnectionSpec {
                subject: crds::Subject {
                    kind: crds::SubjectKind::Group,
                    name: "operators".into(),
                },
                channel: "telemetry".into(),
                actions: vec![crds::Action::Subscribe],
                subtopics: Some(crds::Subtopics {
                    allow: vec!["eu/#".into()],
                    deny: vec!["eu/secret".into()],
                }),
            },
        );
        c.metadata.namespace = Some("acme".into());
        let input = connection(&c);
        assert_eq!(
            input.subject,
            policy::GrantSubject::Group("operators".into())
        );
        assert_eq!(
            input.actions,
            policy::Actions {
                publish: false,
                subscribe: true
            }
        );
        assert_eq!(
            (input.allow, input.deny),
            (vec!["eu/#".into()], vec!["eu/secret".into()])
        );

        let mut ch = crds::Channel::new("telemetry", crds::ChannelSpec::default());
        ch.spec.history = Some(crds::ChannelHistory {
            retention: "7d".into(),
        });
        assert_eq!(channel(&ch).history.and_then(|h| h.secs), Some(7 * 86_400));
        ch.spec.history = Some(crds::ChannelHistory {
            retention: "a week".into(),
        });
        let history = channel(&ch)
            .history
            .expect("kept, to be refused with its text");
        assert_eq!((history.text.as_str(), history.secs), ("a week", None));
    }

    #[test]
    fn a_resource_without_a_name_is_no_object_the_index_takes() {
        let unnamed = crds::Channel {
            metadata: ObjectMeta::default(),
            spec: crds::ChannelSpec::default(),
            status: None,
        };
        assert_eq!(Resource::Channel(unnamed.clone()).key(), None);
        assert_eq!(Object::from(Resource::Channel(unnamed)).key(), None);
    }
}
