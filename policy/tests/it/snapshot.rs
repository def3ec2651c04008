//! Snapshot building, serde round trips, deltas and their sizes.

use fleetward_policy::{
    Actions, ApplyError, BuildError, Channel, Grant, GrantSubject, Group, KeyDigest, Member, Qos,
    ResourceName, Resources, Role, Snapshot, SubjectKind, SubtopicPattern, Tenant, Thing, User,
    diff,
};

fn mk_resources(tenants: usize, things: usize) -> Resources {
    let mut r = Resources::default();
    for t in 0..tenants {
        let tenant = format!("t{t}");
        r.tenants.push(Tenant {
            provisioning: Default::default(),
            device_ca: Default::default(),
            engine: Default::default(),
            uid: String::new(),
            name: tenant.clone(),
            suspended: false,
            limits: Default::default(),
            web: Default::default(),
        });
        r.channels.push(Channel {
            history_retention_secs: Default::default(),
            uid: String::new(),
            tenant: tenant.clone(),
            name: "telemetry".into(),
            max_qos: Qos::ExactlyOnce,
            retained_allowed: false,
            delivery_metadata: false,
            max_message_size: Some(4096),
        });
        r.users.push(User {
            tenant: tenant.clone(),
            name: "alice".into(),
            role: Role::Viewer,
            password_hash: None,
            token_epoch: 3,
            disabled: false,
        });
        r.groups.push(Group {
            tenant: tenant.clone(),
            name: "all".into(),
            members: (0..things)
                .map(|i| Member {
                    kind: SubjectKind::Thing,
                    name: format!("thing-{i}"),
                })
                .collect(),
        });
        for i in 0..things {
            r.things.push(Thing {
                x509: Default::default(),
                credential_mode: Default::default(),
                attributes: Default::default(),
                tenant: tenant.clone(),
                name: format!("thing-{i}"),
                key_digests: vec![KeyDigest::of(format!("{tenant}-{i}").as_bytes())],
                disabled: false,
                mountpoint: (i % 2 == 0).then(|| "telemetry".to_owned()),
                max_connections: None,
            });
            r.grants.push(Grant {
                tenant: tenant.clone(),
                name: format!("grant-{i}"),
                subject: GrantSubject::Thing(format!("thing-{i}")),
                channel: "telemetry".into(),
                actions: Actions::BOTH,
                allow: vec![SubtopicPattern::parse(&format!("dev/{i}/#")).expect("valid")],
                deny: vec![],
            });
        }
    }
    r
}

#[test]
fn builds_and_finds_resources_per_tenant() {
    let s = Snapshot::from_resources(1, mk_resources(3, 5)).expect("unique");
    assert_eq!(s.version(), 1);
    assert_eq!(s.things().count(), 15);
    assert_eq!(
        s.thing("t1", "thing-2").map(|t| t.tenant.as_str()),
        Some("t1")
    );
    assert!(s.thing("t9", "thing-2").is_none());
    assert_eq!(s.mountpoint_of("t0", "thing-0"), Some("telemetry"));
    assert_eq!(s.mountpoint_of("t0", "thing-1"), None);
    assert_eq!(
        s.things_with_key(&KeyDigest::of(b"t2-4")),
        &[ResourceName::new("t2", "thing-4")]
    );
    assert_eq!(
        s.groups_of("t1", SubjectKind::Thing, "thing-3"),
        &["all".to_owned()]
    );
    assert_eq!(
        s.grants_for("t1", &GrantSubject::Thing("thing-3".into()), "telemetry")
            .len(),
        1
    );
    assert!(
        s.grants_for("t1", &GrantSubject::Thing("thing-3".into()), "other")
            .is_empty()
    );
}

#[test]
fn refuses_duplicate_identities() {
    let mut r = mk_resources(1, 2);
    r.things.push(r.things[0].clone());
    assert_eq!(
        Snapshot::from_resources(1, r).err(),
        Some(BuildError::Duplicate {
            kind: "thing",
            name: "t0/thing-0".into()
        })
    );
    let mut r = mk_resources(1, 1);
    r.tenants.push(r.tenants[0].clone());
    assert!(matches!(
        Snapshot::from_resources(1, r),
        Err(BuildError::Duplicate { kind: "tenant", .. })
    ));
    // Every kind, with the duplicate last (after the rest of its kind went in).
    type AddDuplicate = fn(&mut Resources);
    let cases: [(&str, &str, AddDuplicate); 4] = [
        ("user", "t0/alice", |r| r.users.push(r.users[0].clone())),
        ("group", "t0/all", |r| r.groups.push(r.groups[0].clone())),
        ("channel", "t0/telemetry", |r| {
            r.channels.push(r.channels[0].clone())
        }),
        ("grant", "t0/grant-0", |r| {
            r.grants.push(r.grants[0].clone())
        }),
    ];
    for (kind, name, add) in cases {
        let mut r = mk_resources(1, 2);
        add(&mut r);
        assert_eq!(
            Snapshot::from_resources(1, r).err(),
            Some(BuildError::Duplicate {
                kind,
                name: name.into()
            }),
            "{kind}"
        );
    }
}

#[test]
fn grants_that_share_a_subject_and_channel_are_found_in_name_order() {
    let mut r = mk_resources(1, 1);
    for name in ["grant-c", "grant-a", "grant-b"] {
        let mut g = r.grants[0].clone();
        g.name = name.into();
        r.grants.push(g);
    }
    let built = Snapshot::from_resources(1, r.clone()).expect("unique");
    let names = |s: &Snapshot| -> Vec<String> {
        s.grants_for("t0", &GrantSubject::Thing("thing-0".into()), "telemetry")
            .iter()
            .map(|g| g.name.clone())
            .collect()
    };
    assert_eq!(names(&built), ["grant-0", "grant-a", "grant-b", "grant-c"]);
    // The same grants upserted one by one, in the reverse order, and one removed and put back.
    let mut upserted = Snapshot::from_resources(
        1,
        Resources {
            grants: vec![],
            ..r.clone()
        },
    )
    .expect("unique");
    for g in r.grants.iter().rev() {
        upserted.upsert_grant(g.clone());
    }
    assert_eq!(names(&upserted), names(&built));
    assert!(upserted.remove_grant("t0", "grant-a").is_some());
    assert_eq!(names(&upserted), ["grant-0", "grant-b", "grant-c"]);
    upserted.upsert_grant(r.grants[2].clone());
    assert_eq!(names(&upserted), names(&built));
    assert_eq!(upserted.to_resources(), built.to_resources());
}

#[test]
fn serde_round_trip_rebuilds_indexes() {
    let s = Snapshot::from_resources(42, mk_resources(2, 4)).expect("unique");
    let json = serde_json::to_string(&s).expect("serialize");
    let back: Snapshot = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, s);
    assert_eq!(back.to_resources(), s.to_resources());
    // Stable output: serializing twice gives the same bytes.
    assert_eq!(serde_json::to_string(&back).expect("serialize"), json);
    // A bad pattern or digest on disk is refused with the reason.
    let bad = json.replacen("dev/0/#", "dev/#/0", 1);
    let err = serde_json::from_str::<Snapshot>(&bad).expect_err("invalid pattern");
    assert!(err.to_string().contains("last level"), "{err}");
}

#[test]
fn apply_of_diff_gives_the_target_and_checks_the_version() {
    let a = Snapshot::from_resources(1, mk_resources(2, 6)).expect("unique");
    let mut b = a.clone();
    b.set_version(2);
    b.remove_thing("t0", "thing-1");
    b.remove_group("t1", "all");
    let mut u = b.user("t1", "alice").expect("exists").clone();
    u.token_epoch += 1;
    b.upsert_user(u);
    b.remove_tenant("t0");
    let d = diff(&a, &b);
    assert_eq!(d.len(), 4);
    assert_eq!((d.from_version, d.to_version), (1, 2));
    let mut c = a.clone();
    c.apply(&d).expect("same base version");
    assert_eq!(c, b);
    // Applying it again is refused and changes nothing.
    assert_eq!(
        c.apply(&d),
        Err(ApplyError::VersionMismatch {
            expected: 1,
            actual: 2
        })
    );
    assert_eq!(c, b);
    // A delta survives serialization.
    let json = serde_json::to_string(&d).expect("serialize");
    assert_eq!(
        serde_json::from_str::<fleetward_policy::Delta>(&json).expect("deserialize"),
        d
    );
}

#[test]
fn one_resource_change_gives_a_one_resource_delta_at_any_size() {
    let mut sizes = Vec::new();
    for things in [10, 1000, 20_000] {
        let a = Snapshot::from_resources(1, mk_resources(2, things)).expect("unique");
        let mut b = a.clone();
        b.set_version(2);
        let mut g = b.grant("t1", "grant-3").expect("exists").clone();
        g.deny
            .push(SubtopicPattern::parse("dev/3/secret").expect("valid"));
        b.upsert_grant(g.clone());
        let d = diff(&a, &b);
        assert_eq!(d.len(), 1, "with {things} things per tenant");
        assert_eq!(d.grants.upserts, vec![g]);
        sizes.push(serde_json::to_vec(&d).expect("serialize").len());
        let mut c = a.clone();
        c.apply(&d).expect("same base version");
        assert_eq!(c, b);
    }
    assert!(
        sizes.windows(2).all(|w| w[0] == w[1]),
        "delta bytes: {sizes:?}"
    );
}
