//! Round trips through the wire form, and refusals of malformed wire input.

use std::collections::BTreeMap;

use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, Group, KeyDigest, Member, Qos, Resources, Role,
    SigningAlgorithm, SigningKey, Snapshot, SubjectKind, SubtopicPattern, Tenant, TenantLimits,
    TenantWeb, Thing, User, diff,
};
use proptest::prelude::*;
use prost::Message;

use super::*;

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "sensor-1", "ünï"]).prop_map(String::from)
}

fn tenant_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["acme", "globex"]).prop_map(String::from)
}

/// An object's uid: mostly set, sometimes unknown (empty).
fn uid() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "8c1f2a3e-0001", "8c1f2a3e-0002"]).prop_map(String::from)
}

fn opt_u32() -> impl Strategy<Value = Option<u32>> {
    prop::option::of(any::<u32>())
}

fn arb_tenant() -> impl Strategy<Value = Tenant> {
    (
        tenant_name(),
        any::<bool>(),
        (
            opt_u32(),
            opt_u32(),
            opt_u32(),
            opt_u32(),
            opt_u32(),
            opt_u32(),
        ),
        (opt_u32(), prop::option::of(any::<u64>())),
        uid(),
        prop::collection::vec("https://[a-z]{1,8}\\.example", 0..3),
    )
        .prop_map(
            |(name, suspended, (a, b, c, d, e, f), (g, h), uid, origins)| Tenant {
                provisioning: Default::default(),
                device_ca: Default::default(),
                engine: Default::default(),
                name,
                uid,
                suspended,
                limits: TenantLimits {
                    max_history_bytes: Default::default(),
                    max_things: a,
                    max_channels: b,
                    max_connections: c,
                    max_message_size: d,
                    publish_rate: e,
                    publish_burst: f,
                    max_retained_messages: g,
                    max_retained_bytes: h,
                },
                web: TenantWeb {
                    allowed_origins: origins,
                },
            },
        )
}

fn arb_thing() -> impl Strategy<Value = Thing> {
    (
        tenant_name(),
        name(),
        prop::collection::vec(any::<[u8; 32]>(), 0..3),
        any::<bool>(),
        prop::option::of(name()),
        prop::option::of(1u32..100_000),
    )
        .prop_map(
            |(tenant, name, keys, disabled, mountpoint, max_connections)| Thing {
                x509: Default::default(),
                credential_mode: Default::default(),
                attributes: Default::default(),
                tenant,
                name,
                key_digests: keys.into_iter().map(KeyDigest::from_bytes).collect(),
                disabled,
                mountpoint,
                max_connections,
            },
        )
}

fn arb_user() -> impl Strategy<Value = User> {
    (
        tenant_name(),
        name(),
        prop::sample::select(vec![Role::Admin, Role::Member, Role::Viewer]),
        prop::option::of("\\$argon2id\\$[a-z0-9$=,]{0,20}"),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(tenant, name, role, password_hash, token_epoch, disabled)| User {
                tenant,
                name,
                role,
                password_hash,
                token_epoch,
                disabled,
            },
        )
}

fn arb_group() -> impl Strategy<Value = Group> {
    let member = (
        prop::sample::select(vec![SubjectKind::Thing, SubjectKind::User]),
        name(),
    )
        .prop_map(|(kind, name)| Member { kind, name });
    (tenant_name(), name(), prop::collection::vec(member, 0..4)).prop_map(
        |(tenant, name, members)| Group {
            tenant,
            name,
            members,
        },
    )
}

fn arb_channel() -> impl Strategy<Value = Channel> {
    (
        tenant_name(),
        name(),
        prop::sample::select(vec![Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce]),
        any::<bool>(),
        opt_u32(),
        uid(),
        any::<bool>(),
    )
        .prop_map(
            |(
                tenant,
                name,
                max_qos,
                retained_allowed,
                max_message_size,
                uid,
                delivery_metadata,
            )| {
                Channel {
                    history_retention_secs: Default::default(),
                    tenant,
                    name,
                    uid,
                    max_qos,
                    retained_allowed,
                    max_message_size,
                    delivery_metadata,
                }
            },
        )
}

fn arb_pattern() -> impl Strategy<Value = SubtopicPattern> {
    prop::sample::select(vec!["", "#", "+", "a/+/b", "x/#", "temp"])
        .prop_map(|p| SubtopicPattern::parse(p).expect("valid pattern"))
}

fn arb_grant() -> impl Strategy<Value = Grant> {
    let subject = prop_oneof![
        name().prop_map(GrantSubject::Thing),
        name().prop_map(GrantSubject::User),
        name().prop_map(GrantSubject::Group),
    ];
    (
        tenant_name(),
        name(),
        subject,
        name(),
        (any::<bool>(), any::<bool>()),
        prop::collection::vec(arb_pattern(), 0..3),
        prop::collection::vec(arb_pattern(), 0..3),
    )
        .prop_map(
            |(tenant, name, subject, channel, (publish, subscribe), allow, deny)| Grant {
                tenant,
                name,
                subject,
                channel,
                actions: Actions { publish, subscribe },
                allow,
                deny,
            },
        )
}

fn arb_signing_key() -> impl Strategy<Value = SigningKey> {
    (
        prop::sample::select(vec!["k1", "k2", "k3"]),
        prop::sample::select(vec![SigningAlgorithm::EdDSA, SigningAlgorithm::ES256]),
        prop::collection::vec(any::<u8>(), 0..48),
        any::<bool>(),
    )
        .prop_map(|(kid, algorithm, private_key, active)| SigningKey {
            kid: kid.into(),
            algorithm,
            private_key,
            active,
        })
}

/// Random resources with unique identities per kind.
fn arb_resources() -> impl Strategy<Value = Resources> {
    fn uniq<T>(v: Vec<T>, key: impl Fn(&T) -> (String, String)) -> Vec<T> {
        let mut m = BTreeMap::new();
        for t in v {
            m.insert(key(&t), t);
        }
        m.into_values().collect()
    }
    (
        prop::collection::vec(arb_tenant(), 0..3),
        prop::collection::vec(arb_thing(), 0..6),
        prop::collection::vec(arb_user(), 0..4),
        prop::collection::vec(arb_group(), 0..4),
        prop::collection::vec(arb_channel(), 0..5),
        prop::collection::vec(arb_grant(), 0..6),
        prop::collection::vec(arb_signing_key(), 0..3),
    )
        .prop_map(
            |(tenants, things, users, groups, channels, grants, keys)| Resources {
                policies: Default::default(),
                tenants: uniq(tenants, |t| (t.name.clone(), String::new())),
                things: uniq(things, |t| (t.tenant.clone(), t.name.clone())),
                users: uniq(users, |t| (t.tenant.clone(), t.name.clone())),
                groups: uniq(groups, |t| (t.tenant.clone(), t.name.clone())),
                channels: uniq(channels, |t| (t.tenant.clone(), t.name.clone())),
                grants: uniq(grants, |t| (t.tenant.clone(), t.name.clone())),
                signing_keys: uniq(keys, |k| (k.kid.clone(), String::new())),
            },
        )
}

/// Encodes and decodes, as the wire does.
fn through_bytes<M: Message + Default>(m: &M) -> M {
    M::decode(m.encode_to_vec().as_slice()).expect("decodes what was encoded")
}

proptest! {
    #[test]
    fn a_snapshot_survives_the_wire(resources in arb_resources(), version in any::<u64>()) {
        let snapshot = Snapshot::from_resources(version, resources).expect("unique identities");
        let wire = through_bytes(&snapshot_to_proto(&snapshot));
        let back = snapshot_from_proto(wire).expect("well-formed");
        prop_assert_eq!(back, snapshot);
    }

    #[test]
    fn a_delta_survives_the_wire(a in arb_resources(), b in arb_resources()) {
        let old = Snapshot::from_resources(4, a).expect("unique identities");
        let new = Snapshot::from_resources(5, b).expect("unique identities");
        let delta = diff(&old, &new);
        let back = delta_from_proto(through_bytes(&delta_to_proto(&delta))).expect("well-formed");
        prop_assert_eq!(&back, &delta);
        let mut applied = old.clone();
        applied.apply(&back).expect("applies to its from-version");
        prop_assert_eq!(applied, new);
    }
}

fn one_thing(digest: Vec<u8>) -> pb::FullSnapshot {
    pb::FullSnapshot {
        version: 1,
        things: vec![pb::Thing {
            tenant: "acme".into(),
            name: "sensor-1".into(),
            key_digests: vec![digest],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn a_digest_of_the_wrong_length_is_refused_naming_the_thing() {
    let err = snapshot_from_proto(one_thing(vec![7; 31])).expect_err("31 bytes is no digest");
    assert_eq!(
        err,
        ConvertError::DigestLength {
            resource: "thing acme/sensor-1".into(),
            index: 0,
            len: 31
        }
    );
    assert!(err.to_string().contains("32"), "{err}");
    assert!(snapshot_from_proto(one_thing(vec![7; 32])).is_ok());
}

#[test]
fn unknown_or_unspecified_enum_values_are_refused() {
    for role in [0, 42] {
        let s = pb::FullSnapshot {
            users: vec![pb::User {
                tenant: "acme".into(),
                name: "ann".into(),
                role,
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = snapshot_from_proto(s).expect_err("no such role");
        assert!(
            matches!(err, ConvertError::UnknownEnum { field: "role", value, .. } if value == role),
            "{err}"
        );
    }
    let s = pb::FullSnapshot {
        channels: vec![pb::Channel {
            tenant: "acme".into(),
            name: "tele".into(),
            max_qos: 9,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(matches!(
        snapshot_from_proto(s),
        Err(ConvertError::UnknownEnum {
            field: "max_qos",
            ..
        })
    ));
    let d = pb::Delta {
        group_upserts: vec![pb::Group {
            tenant: "acme".into(),
            name: "ops".into(),
            members: vec![pb::Member {
                kind: 0,
                name: "ann".into(),
            }],
        }],
        ..Default::default()
    };
    assert!(matches!(
        delta_from_proto(d),
        Err(ConvertError::UnknownEnum {
            field: "members.kind",
            ..
        })
    ));
}

#[test]
fn bad_patterns_missing_subjects_and_duplicates_are_refused() {
    let grant = |allow: &str, subject| pb::Grant {
        tenant: "acme".into(),
        name: "g".into(),
        subject,
        channel: "tele".into(),
        publish: true,
        allow: vec![allow.into()],
        ..Default::default()
    };
    let thing = Some(pb::GrantSubject {
        subject: Some(pb::grant_subject::Subject::Thing("t".into())),
    });
    let d = pb::Delta {
        grant_upserts: vec![grant("a/#/b", thing.clone())],
        ..Default::default()
    };
    let err = delta_from_proto(d).expect_err("# not last");
    assert!(
        matches!(&err, ConvertError::Pattern { pattern, .. } if pattern == "a/#/b"),
        "{err}"
    );
    let d = pb::Delta {
        grant_upserts: vec![grant("a", None)],
        ..Default::default()
    };
    assert!(matches!(
        delta_from_proto(d),
        Err(ConvertError::Missing {
            field: "subject",
            ..
        })
    ));
    let s = pb::FullSnapshot {
        grants: vec![grant("a", thing.clone()), grant("b", thing)],
        ..Default::default()
    };
    let err = snapshot_from_proto(s).expect_err("the same grant twice");
    assert!(err.to_string().contains("acme/g"), "{err}");
}

#[test]
fn a_stored_snapshot_reads_back() {
    let snapshot = Snapshot::from_resources(
        3,
        Resources {
            tenants: vec![Tenant {
                provisioning: Default::default(),
                device_ca: Default::default(),
                engine: Default::default(),
                name: "acme".into(),
                uid: String::new(),
                suspended: false,
                limits: TenantLimits::default(),
                web: Default::default(),
            }],
            ..Resources::default()
        },
    )
    .expect("valid");
    let stored = pb::StoredSnapshot {
        snapshot: Some(snapshot_to_proto(&snapshot)),
        lineage: "l1".into(),
        updated_unix_ms: 17,
    };
    let back = through_bytes(&stored);
    assert_eq!(back.lineage, "l1");
    let s = snapshot_from_proto(back.snapshot.expect("present")).expect("valid");
    assert_eq!(s, snapshot);
}

/// A Channel and a Tenant deleted and created again under their names differ only in their
/// uids: the delta carries both, so a dataplane can drop what the old ones held.
#[test]
fn a_re_created_channel_and_tenant_reach_the_dataplane_with_their_new_uids() {
    let resources = |uid: &str| Resources {
        tenants: vec![Tenant {
            provisioning: Default::default(),
            device_ca: Default::default(),
            engine: Default::default(),
            name: "acme".into(),
            uid: format!("tenant-{uid}"),
            suspended: false,
            limits: TenantLimits::default(),
            web: Default::default(),
        }],
        channels: vec![Channel {
            history_retention_secs: Default::default(),
            tenant: "acme".into(),
            name: "tele".into(),
            uid: format!("channel-{uid}"),
            max_qos: Qos::AtLeastOnce,
            retained_allowed: true,
            delivery_metadata: false,
            max_message_size: None,
        }],
        ..Resources::default()
    };
    let old = Snapshot::from_resources(1, resources("1")).expect("valid");
    let new = Snapshot::from_resources(2, resources("2")).expect("valid");
    let wire = through_bytes(&delta_to_proto(&diff(&old, &new)));
    assert_eq!(wire.tenant_upserts[0].uid, "tenant-2");
    assert_eq!(wire.channel_upserts[0].uid, "channel-2");
    let mut applied = old.clone();
    applied
        .apply(&delta_from_proto(wire).expect("well-formed"))
        .expect("applies");
    assert_eq!(
        applied.tenant("acme").map(|t| t.uid.as_str()),
        Some("tenant-2")
    );
    let channel = applied.channel("acme", "tele").map(|c| c.uid.as_str());
    assert_eq!(channel, Some("channel-2"));
    let full = snapshot_from_proto(through_bytes(&snapshot_to_proto(&new))).expect("valid");
    assert_eq!(
        full.channel("acme", "tele").map(|c| c.uid.as_str()),
        Some("channel-2")
    );
}
