//! The incremental index against its oracle: random sequences of apply, delete and reset
//! across namespaces that use the same names, each step committed by an index that resolves
//! one object at a time and by one that resolves every changed namespace whole. After every
//! step the commits, snapshots, statuses and inclusion versions must be equal.

use proptest::prelude::*;

use super::*;

const NAMESPACES: [&str; 2] = ["a", "b"];
const THINGS: [&str; 4] = ["t0", "t1", "t2", "t3"];
const CHANNELS: [&str; 3] = ["c0", "c1", "c2"];
const USERS: [&str; 2] = ["u0", "u1"];
const GROUPS: [&str; 2] = ["g0", "g1"];
const CONNECTIONS: [&str; 4] = ["k0", "k1", "k2", "k3"];
const SECRETS: [&str; 5] = [
    "t0-credentials",
    "t1-credentials",
    "t2-credentials",
    "passwords",
    "claim-cert",
];
const VALID_POLICY: &str =
    r#"forbid (principal, action == Action::"subscribe", resource in Channel::"c0");"#;

/// One change, as a watcher or a directory reader would make it.
#[derive(Clone, Debug)]
enum Op {
    Tenant {
        name: usize,
        namespace: usize,
        max_things: Option<u32>,
        max_channels: Option<u32>,
        cedar: bool,
        claim: bool,
        created: i64,
    },
    Thing {
        ns: usize,
        name: usize,
        mountpoint: Option<usize>,
        created: i64,
        claim: bool,
        disabled: bool,
    },
    Channel {
        ns: usize,
        name: usize,
        created: i64,
        max_qos: u8,
        uid: u8,
    },
    Connection {
        ns: usize,
        name: usize,
        subject: (u8, usize),
        channel: usize,
        actions: bool,
    },
    User {
        ns: usize,
        name: usize,
        password: bool,
    },
    Group {
        ns: usize,
        name: usize,
        members: Vec<(bool, usize)>,
    },
    Secret {
        ns: usize,
        name: usize,
        good: bool,
    },
    Policy {
        ns: usize,
        valid: bool,
    },
    Delete {
        kind: Kind,
        ns: usize,
        name: usize,
    },
    /// A relist of one kind that keeps the objects whose bit is set.
    Reset {
        kind: Kind,
        keep: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let ns = 0..NAMESPACES.len();
    let created = 0i64..4;
    prop_oneof![
        (
            0..3usize,
            0..2usize,
            proptest::option::of(0u32..3),
            proptest::option::of(0u32..3)
        )
            .prop_flat_map(|(name, namespace, max_things, max_channels)| {
                (any::<bool>(), any::<bool>(), 0i64..3).prop_map(move |(cedar, claim, created)| {
                    Op::Tenant {
                        name,
                        namespace,
                        max_things,
                        max_channels,
                        cedar,
                        claim,
                        created,
                    }
                })
            }),
        (
            ns.clone(),
            0..THINGS.len(),
            proptest::option::of(0..CHANNELS.len())
        )
            .prop_flat_map(move |(ns, name, mountpoint)| {
                (0i64..4, any::<bool>(), any::<bool>()).prop_map(
                    move |(created, claim, disabled)| Op::Thing {
                        ns,
                        name,
                        mountpoint,
                        created,
                        claim,
                        disabled,
                    },
                )
            }),
        (ns.clone(), 0..CHANNELS.len(), created, 1u8..4, 0u8..2).prop_map(
            |(ns, name, created, max_qos, uid)| Op::Channel {
                ns,
                name,
                created,
                max_qos,
                uid
            }
        ),
        (
            ns.clone(),
            0..CONNECTIONS.len(),
            (0u8..3, 0..THINGS.len()),
            0..CHANNELS.len(),
            prop::bool::weighted(0.9)
        )
            .prop_map(|(ns, name, subject, channel, actions)| Op::Connection {
                ns,
                name,
                subject,
                channel,
                actions
            }),
        (ns.clone(), 0..USERS.len(), any::<bool>()).prop_map(|(ns, name, password)| Op::User {
            ns,
            name,
            password
        }),
        (
            ns.clone(),
            0..GROUPS.len(),
            prop::collection::vec((any::<bool>(), 0..THINGS.len()), 0..3)
        )
            .prop_map(|(ns, name, members)| Op::Group { ns, name, members }),
        (ns.clone(), 0..SECRETS.len(), prop::bool::weighted(0.8))
            .prop_map(|(ns, name, good)| Op::Secret { ns, name, good }),
        (ns.clone(), any::<bool>()).prop_map(|(ns, valid)| Op::Policy { ns, valid }),
        (kind(), ns.clone(), 0..4usize).prop_map(|(kind, ns, name)| Op::Delete { kind, ns, name }),
        (kind(), any::<u8>()).prop_map(|(kind, keep)| Op::Reset { kind, keep }),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(vec![
        Kind::Tenant,
        Kind::Thing,
        Kind::Channel,
        Kind::Connection,
        Kind::User,
        Kind::Group,
        Kind::Policy,
        Kind::Secret,
    ])
}

fn name_of(kind: Kind, i: usize) -> String {
    let names: &[&str] = match kind {
        Kind::Tenant => &["ta", "tb", "tc"],
        Kind::Thing => &THINGS,
        Kind::Channel => &CHANNELS,
        Kind::Connection => &CONNECTIONS,
        Kind::User => &USERS,
        Kind::Group => &GROUPS,
        Kind::Policy => &["p0"],
        Kind::Secret => &SECRETS,
    };
    names[i % names.len()].to_owned()
}

fn claim_spec() -> crds::Provisioning {
    crds::Provisioning {
        claims: vec![crds::ProvisioningClaim {
            name: "fleet".into(),
            certificate_secret_name: "claim-cert".into(),
            signing_secret_name: "claim-signing".into(),
            name_pattern: "dev-*".into(),
            max_things: 2,
            certificate_days: None,
            attributes: BTreeMap::new(),
            disabled: false,
        }],
    }
}

fn tenant_object(name: usize, namespace: usize, limits: (Option<u32>, Option<u32>)) -> Resource {
    let spec = crds::TenantSpec {
        namespace: Some(NAMESPACES[namespace].into()),
        limits: Some(crds::TenantLimits {
            max_things: limits.0,
            max_channels: limits.1,
            ..crds::TenantLimits::default()
        }),
        ..tenant_spec()
    };
    mk_tenant(&name_of(Kind::Tenant, name), spec)
}

/// The object an op applies, or `None` for deletes and resets.
fn object(op: &Op) -> Option<Resource> {
    Some(match op {
        &Op::Tenant {
            name,
            namespace,
            max_things,
            max_channels,
            cedar,
            claim,
            created: secs,
        } => {
            let Resource::Tenant(mut t) =
                tenant_object(name, namespace, (max_things, max_channels))
            else {
                unreachable!()
            };
            if cedar {
                t.spec.authorization = cedar_spec().authorization;
            }
            t.spec.provisioning = claim.then(claim_spec);
            t.metadata = created(meta("", &name_of(Kind::Tenant, name)), secs);
            Resource::Tenant(t)
        }
        Op::Thing {
            ns,
            name,
            mountpoint,
            created: secs,
            claim,
            disabled,
        } => {
            let name = name_of(Kind::Thing, *name);
            let mut t = mk_thing(NAMESPACES[*ns], &name);
            t.metadata = created(t.metadata, *secs);
            t.spec.mountpoint = mountpoint.map(|c| name_of(Kind::Channel, c));
            t.spec.disabled = *disabled;
            if *claim {
                t.metadata.labels = Some(
                    [(
                        crds::PROVISIONING_CLAIM_LABEL.to_owned(),
                        "fleet".to_owned(),
                    )]
                    .into(),
                );
            }
            Resource::Thing(t)
        }
        _ => return channel_or_connection(op).or_else(|| subject_or_secret(op)),
    })
}

fn channel_or_connection(op: &Op) -> Option<Resource> {
    Some(match op {
        Op::Channel {
            ns,
            name,
            created: secs,
            max_qos,
            uid,
        } => {
            let Resource::Channel(mut c) =
                mk_channel(NAMESPACES[*ns], &name_of(Kind::Channel, *name))
            else {
                unreachable!()
            };
            c.metadata = created(c.metadata, *secs);
            c.metadata.uid = Some(format!("uid-{uid}"));
            c.spec.max_qos = *max_qos;
            Resource::Channel(c)
        }
        Op::Connection {
            ns,
            name,
            subject: (kind, subject),
            channel,
            actions,
        } => {
            let Resource::Connection(mut c) = mk_connection(
                NAMESPACES[*ns],
                &name_of(Kind::Connection, *name),
                "",
                &name_of(Kind::Channel, *channel),
            ) else {
                unreachable!()
            };
            let (kind, subject) = match kind {
                0 => (crds::SubjectKind::Thing, name_of(Kind::Thing, *subject)),
                1 => (crds::SubjectKind::User, name_of(Kind::User, *subject)),
                _ => (crds::SubjectKind::Group, name_of(Kind::Group, *subject)),
            };
            c.spec.subject = crds::Subject {
                kind,
                name: subject,
            };
            if !actions {
                c.spec.actions.clear();
            }
            Resource::Connection(c)
        }
        _ => return None,
    })
}

fn subject_or_secret(op: &Op) -> Option<Resource> {
    Some(match op {
        Op::User { ns, name, password } => {
            let name = name_of(Kind::User, *name);
            let spec = crds::UserSpec {
                role: crds::Role::Member,
                disabled: false,
                token_epoch: 0,
                password_secret_ref: password.then(|| crds::SecretKeyRef {
                    name: "passwords".into(),
                    key: name.clone(),
                }),
                display_name: None,
            };
            let mut u = crds::User::new(&name, spec);
            u.metadata = meta(NAMESPACES[*ns], &name);
            Resource::User(u)
        }
        Op::Group { ns, name, members } => {
            let name = name_of(Kind::Group, *name);
            let mut members: Vec<crds::Member> = members
                .iter()
                .map(|&(user, i)| crds::Member {
                    kind: if user {
                        crds::MemberKind::User
                    } else {
                        crds::MemberKind::Thing
                    },
                    name: if user {
                        name_of(Kind::User, i)
                    } else {
                        name_of(Kind::Thing, i)
                    },
                })
                .collect();
            members.dedup();
            let mut g = crds::Group::new(
                &name,
                crds::GroupSpec {
                    members,
                    description: None,
                },
            );
            g.metadata = meta(NAMESPACES[*ns], &name);
            Resource::Group(g)
        }
        Op::Secret { ns, name, good } => {
            let key = if *good { KEY_A } else { "short" };
            let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
            let entries: &[(&str, &str)] = match *name {
                3 if *good => &[("u0", hash), ("u1", hash)],
                3 => &[("u0", hash)],
                4 => &[("tls.crt", "not a certificate")],
                _ => &[("key", key)],
            };
            mk_secret(NAMESPACES[*ns], &name_of(Kind::Secret, *name), entries)
        }
        Op::Policy { ns, valid } => {
            let text = if *valid {
                VALID_POLICY
            } else {
                "permit (principal,"
            };
            Resource::Policy(mk_policy(NAMESPACES[*ns], "p0", text, 1))
        }
        _ => return None,
    })
}

fn key_of(kind: Kind, ns: usize, name: usize) -> ObjectKey {
    match kind {
        Kind::Tenant => ObjectKey::tenant(name_of(kind, name)),
        _ => ObjectKey::namespaced(kind, NAMESPACES[ns], name_of(kind, name)),
    }
}

/// The objects of `kind` an index holds, for a relist that keeps those `keep` selects.
fn relist(index: &Index, kind: Kind, keep: u8) -> Vec<Object> {
    let mut out = Vec::new();
    let mut keys = index.keys_of(kind);
    keys.sort();
    for (i, key) in keys.iter().enumerate() {
        if keep & (1 << (i % 8)) == 0 {
            continue;
        }
        let object = if kind == Kind::Tenant {
            index.tenants.get(&key.name).cloned().map(Object::Tenant)
        } else {
            let ns = &index.namespaces[&key.namespace];
            match kind {
                Kind::Thing => ns.things.get(&key.name).cloned().map(Object::Thing),
                Kind::Channel => ns.channels.get(&key.name).cloned().map(Object::Channel),
                Kind::Connection => {
                    (ns.connections.get(&key.name).cloned()).map(Object::Connection)
                }
                Kind::User => ns.users.get(&key.name).cloned().map(Object::User),
                Kind::Group => ns.groups.get(&key.name).cloned().map(Object::Group),
                Kind::Policy => ns.policies.get(&key.name).cloned().map(Object::Policy),
                Kind::Secret => ns.secrets.get(&key.name).cloned().map(Object::Secret),
                Kind::Tenant => unreachable!(),
            }
        };
        out.extend(object);
    }
    out
}

fn step(index: &mut Index, op: &Op) {
    match op {
        Op::Delete { kind, ns, name } => index.delete(&key_of(*kind, *ns, *name)),
        Op::Reset { kind, keep } => {
            let objects = relist(index, *kind, *keep);
            index.reset(*kind, objects);
        }
        _ => index.apply(object(op).expect("an object")),
    }
}

fn oracle() -> Index {
    Index {
        whole: true,
        ..Index::new()
    }
}

/// Asserts that two indexes hold the same outcome.
fn same(incremental: &Index, whole: &Index) -> Result<(), TestCaseError> {
    prop_assert_eq!(incremental.snapshot(), whole.snapshot());
    prop_assert_eq!(&incremental.statuses, &whole.statuses);
    prop_assert_eq!(&incremental.included, &whole.included);
    let recomputed = ViewDigest::of(incremental.included().map(|(k, g, _)| (k, g)));
    prop_assert_eq!(incremental.view_digest(), recomputed);
    prop_assert_eq!(incremental.view_digest(), whole.view_digest());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_incremental_index_equals_whole_resolution(
        steps in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..24)
    ) {
        let mut incremental = Index::new();
        let mut whole = oracle();
        for (i, ops) in steps.iter().enumerate() {
            for op in ops {
                step(&mut incremental, op);
                step(&mut whole, op);
            }
            let a = incremental.commit();
            let b = whole.commit();
            let sorted = |c: Option<Commit>| c.map(|mut c| {
                c.statuses.sort();
                c.included.sort();
                c
            });
            prop_assert_eq!(sorted(a), sorted(b), "commit of step {}: {:?}", i, ops);
            same(&incremental, &whole)?;
        }
    }
}
