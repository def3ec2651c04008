//! Tenant versions and what a delta touched: the decision cache keeps answers for tenants a
//! delta did not touch, never serves an older policy's answer for a tenant it did, and a delta
//! names whom it reaches.

use fleetward_policy::{
    Action, Actions, AllowReason, Channel, Decision, DecisionCache, Delta, DenyReason, Engine,
    Grant, GrantSubject, Group, Member, Qos, ResourceName, Resources, Since, Snapshot, Subject,
    SubjectKind, SubjectName, Tenant, TenantPolicy, Thing, TopicLimits, Touched, parse_topic_name,
};

fn tenant(name: &str) -> Tenant {
    Tenant::named(name)
}

fn thing(tenant: &str, name: &str) -> Thing {
    Thing {
        x509: Default::default(),
        credential_mode: Default::default(),
        attributes: Default::default(),
        tenant: tenant.into(),
        name: name.into(),
        key_digests: vec![],
        disabled: false,
        mountpoint: None,
        max_connections: None,
    }
}

fn channel(tenant: &str, name: &str) -> Channel {
    Channel {
        history_retention_secs: Default::default(),
        uid: String::new(),
        tenant: tenant.into(),
        name: name.into(),
        max_qos: Qos::AtLeastOnce,
        retained_allowed: true,
        delivery_metadata: false,
        max_message_size: None,
    }
}

fn grant(tenant: &str, name: &str, subject: GrantSubject) -> Grant {
    Grant {
        tenant: tenant.into(),
        name: name.into(),
        subject,
        channel: "ch".into(),
        actions: Actions::BOTH,
        allow: vec![],
        deny: vec![],
    }
}

fn group(tenant: &str, name: &str, members: &[&str]) -> Group {
    Group {
        tenant: tenant.into(),
        name: name.into(),
        members: members
            .iter()
            .map(|m| Member {
                kind: SubjectKind::Thing,
                name: (*m).into(),
            })
            .collect(),
    }
}

/// Tenants `a` and `b`, each with thing `t` granted channel `ch`, and things `u` and `v`.
fn resources() -> Resources {
    let mut r = Resources::default();
    for t in ["a", "b"] {
        r.tenants.push(tenant(t));
        r.things.extend(["t", "u", "v"].map(|n| thing(t, n)));
        r.channels.push(channel(t, "ch"));
        r.grants
            .push(grant(t, "t-ch", GrantSubject::Thing("t".into())));
    }
    r
}

fn base() -> Snapshot {
    Snapshot::from_resources(1, resources()).expect("unique")
}

fn next(s: &Snapshot, change: impl FnOnce(&mut Delta)) -> Snapshot {
    let mut delta = Delta {
        from_version: s.version(),
        to_version: s.version() + 1,
        ..Delta::default()
    };
    change(&mut delta);
    let mut n = s.clone();
    n.apply(&delta).expect("same base version");
    n
}

fn publish(cache: &DecisionCache, s: &Snapshot, tenant: &str) -> Decision {
    let topic = format!("m/{tenant}/c/ch/x");
    let topic = parse_topic_name(&topic, &TopicLimits::default()).expect("valid");
    cache.authorize(s, &Subject::thing(tenant, "t"), Action::Publish, &topic)
}

const ALLOWED: Decision = Decision::Allow(AllowReason::Grant);

#[test]
fn a_delta_to_one_tenant_keeps_the_other_tenants_answers() {
    let cache = DecisionCache::new(100);
    let s1 = base();
    assert_eq!(publish(&cache, &s1, "a"), ALLOWED);
    assert_eq!(publish(&cache, &s1, "b"), ALLOWED);
    let s2 = next(&s1, |d| {
        d.grants.removals.push(ResourceName::new("a", "t-ch"))
    });
    assert!(s2.tenant_version("a") > s1.tenant_version("a"));
    assert_eq!(s2.tenant_version("b"), s1.tenant_version("b"));
    let misses = cache.stats().misses;
    assert_eq!(publish(&cache, &s2, "b"), ALLOWED);
    assert_eq!(
        cache.stats().misses,
        misses,
        "b's answer is served from the cache"
    );
    // a's answer of before is unreachable: asked again, and refused now.
    assert_eq!(
        publish(&cache, &s2, "a"),
        Decision::Deny(DenyReason::NoGrant)
    );
    assert_eq!(cache.stats().misses, misses + 1);
}

#[test]
fn a_tenant_removed_and_created_again_never_gets_old_answers() {
    let cache = DecisionCache::new(100);
    let s1 = base();
    assert_eq!(publish(&cache, &s1, "a"), ALLOWED);
    let s2 = next(&s1, |d| {
        d.tenants.removals.push("a".into());
        d.grants.removals.push(ResourceName::new("a", "t-ch"));
    });
    assert_eq!(
        publish(&cache, &s2, "a"),
        Decision::Deny(DenyReason::UnknownTenant)
    );
    let s3 = next(&s2, |d| d.tenants.upserts.push(tenant("a")));
    assert_eq!(
        publish(&cache, &s3, "a"),
        Decision::Deny(DenyReason::NoGrant)
    );
    let versions = [&s1, &s2, &s3].map(|s| s.tenant_version("a"));
    assert!(
        versions.is_sorted() && versions[0] < versions[2],
        "{versions:?}"
    );
}

#[test]
fn a_full_snapshot_gives_every_tenant_a_new_version() {
    let cache = DecisionCache::new(100);
    let s1 = base();
    assert_eq!(publish(&cache, &s1, "b"), ALLOWED);
    // The same names, another policy: b's grant is gone.
    let mut r = resources();
    r.grants.retain(|g| g.tenant != "b");
    let full = Snapshot::from_resources(7, r).expect("unique");
    for t in ["a", "b", "never-seen"] {
        assert!(full.tenant_version(t) > s1.tenant_version(t), "{t}");
    }
    assert_eq!(
        publish(&cache, &full, "b"),
        Decision::Deny(DenyReason::NoGrant)
    );
    // And a copy renumbered to another version keeps them: it holds the same records.
    let mut renumbered = full.clone();
    renumbered.set_version(8);
    assert_eq!(renumbered.tenant_version("a"), full.tenant_version("a"));
}

#[test]
fn a_change_by_hand_moves_its_tenant_only() {
    let s1 = base();
    let mut s2 = s1.clone();
    s2.upsert_thing(thing("a", "w"));
    assert!(s2.tenant_version("a") > s1.tenant_version("a"));
    assert_eq!(s2.tenant_version("b"), s1.tenant_version("b"));
    // Its reach is not noted: a consumer must assume anything changed.
    assert!(matches!(s2.changes_since(s1.stamp()), Since::Everything));
}

fn touched_by(s: &Snapshot, change: impl FnOnce(&mut Delta)) -> Touched {
    let n = next(s, change);
    match n.changes_since(s.stamp()) {
        Since::Deltas(d) if d.len() == 1 => d[0].clone(),
        other => panic!("one delta expected, got {other:?}"),
    }
}

fn subjects(names: &[(&str, &str)]) -> std::collections::BTreeSet<SubjectName> {
    names
        .iter()
        .map(|(t, n)| SubjectName::new(*t, SubjectKind::Thing, *n))
        .collect()
}

#[test]
fn a_delta_names_the_subjects_its_grants_and_groups_reach() {
    let s = next(&base(), |d| {
        d.groups.upserts.push(group("a", "ops", &["u"]));
        d.grants
            .upserts
            .push(grant("a", "ops-ch", GrantSubject::Group("ops".into())));
    });
    // A grant of one thing: that thing.
    let t = touched_by(&s, |d| {
        d.grants.removals.push(ResourceName::new("b", "t-ch"))
    });
    assert_eq!(t.subjects, subjects(&[("b", "t")]));
    assert!(t.tenants.is_empty() && t.channels.is_empty());
    // A group's grant: its members.
    let t = touched_by(&s, |d| {
        d.grants.removals.push(ResourceName::new("a", "ops-ch"));
    });
    assert_eq!(t.subjects, subjects(&[("a", "u")]));
    // A group's members change: who was in it and who is.
    let t = touched_by(&s, |d| d.groups.upserts.push(group("a", "ops", &["v"])));
    assert_eq!(t.subjects, subjects(&[("a", "u"), ("a", "v")]));
    // A grant moved from a thing to the group: both.
    let t = touched_by(&s, |d| {
        d.grants
            .upserts
            .push(grant("a", "t-ch", GrantSubject::Group("ops".into())));
    });
    assert_eq!(t.subjects, subjects(&[("a", "t"), ("a", "u")]));
}

#[test]
fn a_delta_names_channels_and_whole_tenants() {
    let s = base();
    let t = touched_by(&s, |d| {
        d.channels.removals.push(ResourceName::new("a", "ch"))
    });
    assert_eq!(t.channels, [ResourceName::new("a", "ch")].into());
    assert!(t.subjects.is_empty() && t.tenants.is_empty());
    let mut suspended = tenant("b");
    suspended.suspended = true;
    let t = touched_by(&s, |d| d.tenants.upserts.push(suspended));
    assert_eq!(t.tenants, ["b".to_owned()].into());
    let t = touched_by(&s, |d| {
        d.policies.upserts.push(TenantPolicy {
            tenant: "a".into(),
            name: "p".into(),
            text: String::new(),
        });
    });
    assert_eq!(t.tenants, ["a".to_owned()].into());
    // Signing keys reach nobody.
    let t = touched_by(&s, |d| d.signing_keys = Some(Vec::new()));
    assert!(t.is_empty());
}

#[test]
fn any_change_to_a_tenant_on_an_external_engine_reaches_all_of_it() {
    let mut cedar = tenant("a");
    cedar.engine = Engine::Cedar;
    let s = next(&base(), |d| d.tenants.upserts.push(cedar));
    let t = touched_by(&s, |d| d.things.upserts.push(thing("a", "w")));
    assert_eq!(t.tenants, ["a".to_owned()].into());
    let t = touched_by(&s, |d| d.things.upserts.push(thing("b", "w")));
    assert!(t.tenants.is_empty());
}

#[test]
fn deltas_pile_up_until_the_log_forgets_them() {
    let s1 = base();
    let s2 = next(&s1, |d| d.things.upserts.push(thing("a", "w")));
    let s3 = next(&s2, |d| d.things.upserts.push(thing("b", "w")));
    match s3.changes_since(s1.stamp()) {
        Since::Deltas(d) => assert_eq!(d.len(), 2),
        Since::Everything => panic!("both deltas are known"),
    }
    assert!(matches!(s3.changes_since(s3.stamp()), Since::Deltas(d) if d.is_empty()));
    // Before the full snapshot s1 was built: unknown.
    assert!(matches!(
        s3.changes_since(s1.stamp() - 1),
        Since::Everything
    ));
}
