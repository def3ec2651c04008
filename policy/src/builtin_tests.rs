use super::*;
use crate::credentials::hash_password;
use crate::model::{
    Actions, Channel, Grant, GrantSubject, Group, Member, Qos, Resources, Tenant, TenantLimits,
};
use crate::pattern::SubtopicPattern;
use crate::topic::{TopicLimits, parse_filter, parse_topic_name};

const KEY: &str = "key-of-sensor";

fn mk_tenant(name: &str) -> Tenant {
    Tenant {
        provisioning: Default::default(),
        device_ca: Default::default(),
        engine: Default::default(),
        uid: String::new(),
        name: name.into(),
        suspended: false,
        limits: TenantLimits::default(),
        web: Default::default(),
    }
}

fn mk_thing(tenant: &str, name: &str, key: &str) -> Thing {
    Thing {
        x509: Default::default(),
        credential_mode: Default::default(),
        attributes: Default::default(),
        tenant: tenant.into(),
        name: name.into(),
        key_digests: vec![KeyDigest::of(key.as_bytes())],
        disabled: false,
        mountpoint: None,
        max_connections: None,
    }
}

fn mk_user(tenant: &str, name: &str, role: Role) -> User {
    User {
        tenant: tenant.into(),
        name: name.into(),
        role,
        password_hash: None,
        token_epoch: 1,
        disabled: false,
    }
}

fn mk_channel(tenant: &str, name: &str) -> Channel {
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

fn pats(list: &[&str]) -> Vec<SubtopicPattern> {
    list.iter()
        .map(|p| SubtopicPattern::parse(p).expect("valid pattern"))
        .collect()
}

fn mk_grant(
    tenant: &str,
    name: &str,
    subject: GrantSubject,
    channel: &str,
    actions: Actions,
    allow: &[&str],
    deny: &[&str],
) -> Grant {
    Grant {
        tenant: tenant.into(),
        name: name.into(),
        subject,
        channel: channel.into(),
        actions,
        allow: pats(allow),
        deny: pats(deny),
    }
}

/// Two tenants that reuse the same thing, user and channel names.
fn fixture() -> Snapshot {
    let mut r = Resources::default();
    for t in ["acme", "globex"] {
        r.tenants.push(mk_tenant(t));
        r.things.push(mk_thing(t, "sensor", &format!("{KEY}-{t}")));
        r.things.push(mk_thing(t, "gateway", &format!("gw-{t}")));
        r.channels.push(mk_channel(t, "telemetry"));
        r.channels.push(mk_channel(t, "commands"));
        r.users.push(mk_user(t, "alice", Role::Member));
        r.users.push(mk_user(t, "root", Role::Admin));
        r.users.push(mk_user(t, "watcher", Role::Viewer));
    }
    r.grants.push(mk_grant(
        "acme",
        "sensor-telemetry",
        GrantSubject::Thing("sensor".into()),
        "telemetry",
        Actions::PUBLISH,
        &[],
        &[],
    ));
    r.groups.push(Group {
        tenant: "acme".into(),
        name: "ops".into(),
        members: vec![
            Member {
                kind: SubjectKind::User,
                name: "alice".into(),
            },
            Member {
                kind: SubjectKind::Thing,
                name: "gateway".into(),
            },
        ],
    });
    r.grants.push(mk_grant(
        "acme",
        "ops-commands",
        GrantSubject::Group("ops".into()),
        "commands",
        Actions::BOTH,
        &["rooms/#"],
        &["rooms/vault/#"],
    ));
    Snapshot::from_resources(7, r).expect("unique names")
}

fn publish(s: &Snapshot, subject: &Subject, topic: &str) -> Decision {
    let t = parse_topic_name(topic, &TopicLimits::default()).expect("valid topic");
    s.authorize(subject, Action::Publish, &t)
}

fn subscribe(s: &Snapshot, subject: &Subject, filter: &str) -> Decision {
    let f = parse_filter(filter, &TopicLimits::default()).expect("valid filter");
    s.authorize(subject, Action::Subscribe, &f)
}

fn withholds(s: &Snapshot, subject: &Subject, filter: &str) -> bool {
    let f = parse_filter(filter, &TopicLimits::default()).expect("valid filter");
    s.withholds(subject, &f)
}

const GRANT: Decision = Decision::Allow(AllowReason::Grant);
const ROLE: Decision = Decision::Allow(AllowReason::Role);

fn deny(r: DenyReason) -> Decision {
    Decision::Deny(r)
}

#[test]
fn things_authenticate_with_their_key() {
    let s = fixture();
    let key = format!("{KEY}-acme");
    let cred = Credential::Thing {
        tenant: "acme",
        thing: "sensor",
        key: key.as_bytes(),
    };
    assert_eq!(s.authenticate(&cred), Ok(Subject::thing("acme", "sensor")));
    let by_key = Credential::ThingKey {
        key: key.as_bytes(),
    };
    assert_eq!(
        s.authenticate(&by_key),
        Ok(Subject::thing("acme", "sensor"))
    );
}

#[test]
fn thing_authentication_refusals() {
    let mut s = fixture();
    let acme_key = format!("{KEY}-acme");
    let refuse = |s: &Snapshot, tenant: &str, thing: &str, key: &str| {
        s.authenticate(&Credential::Thing {
            tenant,
            thing,
            key: key.as_bytes(),
        })
        .map_err(|r| r.reason)
    };
    // The other tenant's thing of the same name does not take this key.
    assert_eq!(
        refuse(&s, "globex", "sensor", &acme_key),
        Err(DenyReason::BadCredential)
    );
    // Without the right key, nothing else is told: unknown tenant, unknown thing, disabled
    // thing and suspended tenant all look like a wrong key.
    assert_eq!(
        refuse(&s, "nope", "sensor", &acme_key),
        Err(DenyReason::BadCredential)
    );
    assert_eq!(
        refuse(&s, "acme", "nope", &acme_key),
        Err(DenyReason::BadCredential)
    );
    let mut t = s.thing("acme", "sensor").expect("exists").clone();
    t.disabled = true;
    s.upsert_thing(t);
    assert_eq!(
        refuse(&s, "acme", "sensor", "wrong"),
        Err(DenyReason::BadCredential)
    );
    // With it, the holder learns why.
    assert_eq!(
        refuse(&s, "acme", "sensor", &acme_key),
        Err(DenyReason::SubjectDisabled)
    );
    assert_eq!(
        s.authenticate(&Credential::ThingKey {
            key: acme_key.as_bytes()
        })
        .map_err(|r| r.reason),
        Err(DenyReason::SubjectDisabled)
    );
    let mut tenant = s.tenant("acme").expect("exists").clone();
    tenant.suspended = true;
    s.upsert_tenant(tenant);
    assert_eq!(
        refuse(&s, "acme", "gateway", "wrong"),
        Err(DenyReason::BadCredential)
    );
    assert_eq!(
        refuse(&s, "acme", "gateway", "gw-acme"),
        Err(DenyReason::TenantSuspended)
    );
    assert_eq!(
        s.authenticate(&Credential::ThingKey { key: b"unknown" }),
        Err(Refusal::from(DenyReason::BadCredential))
    );
}

#[test]
fn rotation_accepts_both_keys_and_a_shared_key_names_no_one() {
    let mut s = fixture();
    let mut t = s.thing("acme", "gateway").expect("exists").clone();
    t.key_digests.push(KeyDigest::of(b"gw-new"));
    s.upsert_thing(t);
    for key in [&b"gw-acme"[..], b"gw-new"] {
        let cred = Credential::Thing {
            tenant: "acme",
            thing: "gateway",
            key,
        };
        assert!(s.authenticate(&cred).is_ok());
    }
    // The same key on two things: bare-key sign-in cannot tell which, so it is refused.
    let mut other = s.thing("globex", "gateway").expect("exists").clone();
    other.key_digests.push(KeyDigest::of(b"gw-new"));
    s.upsert_thing(other);
    assert_eq!(
        s.authenticate(&Credential::ThingKey { key: b"gw-new" }),
        Err(Refusal::from(DenyReason::BadCredential))
    );
}

#[test]
fn users_sign_in_with_password_and_tokens() {
    let mut s = fixture();
    let mut alice = s.user("acme", "alice").expect("exists").clone();
    alice.password_hash = Some(hash_password(b"s3cret").expect("hash"));
    s.upsert_user(alice.clone());
    let pw = |password: &'static [u8]| Credential::Password {
        tenant: "acme",
        user: "alice",
        password,
    };
    assert_eq!(
        s.authenticate(&pw(b"s3cret")),
        Ok(Subject::user("acme", "alice"))
    );
    assert_eq!(
        s.authenticate(&pw(b"wrong")),
        Err(Refusal::from(DenyReason::BadCredential))
    );
    let no_hash = Credential::Password {
        tenant: "globex",
        user: "alice",
        password: b"s3cret",
    };
    assert_eq!(
        s.authenticate(&no_hash),
        Err(Refusal::from(DenyReason::BadCredential))
    );
    // A disabled user is told so only with the right password.
    let mut disabled = alice.clone();
    disabled.disabled = true;
    s.upsert_user(disabled);
    assert_eq!(
        s.authenticate(&pw(b"wrong")),
        Err(Refusal::from(DenyReason::BadCredential))
    );
    assert_eq!(
        s.authenticate(&pw(b"s3cret")),
        Err(Refusal::from(DenyReason::SubjectDisabled))
    );
    s.upsert_user(alice.clone());
    let token = Credential::Token {
        tenant: "acme",
        user: "alice",
        token_epoch: 1,
    };
    let subject = s.authenticate(&token).expect("current epoch");
    assert_eq!(subject.token_epoch, Some(1));
    // Bumping the epoch revokes the token everywhere: sign-in, session check, decisions.
    alice.token_epoch = 2;
    s.upsert_user(alice);
    assert_eq!(
        s.authenticate(&token),
        Err(Refusal::from(DenyReason::TokenRevoked))
    );
    assert_eq!(
        s.check_subject(&subject),
        Err(Refusal::from(DenyReason::TokenRevoked))
    );
    assert_eq!(
        subscribe(&s, &subject, "m/acme/c/commands/rooms/1"),
        deny(DenyReason::TokenRevoked)
    );
}

#[test]
fn direct_grant_allows_its_action_only() {
    let s = fixture();
    let sensor = Subject::thing("acme", "sensor");
    assert_eq!(publish(&s, &sensor, "m/acme/c/telemetry/temp"), GRANT);
    assert_eq!(publish(&s, &sensor, "m/acme/c/telemetry"), GRANT);
    assert_eq!(
        subscribe(&s, &sensor, "m/acme/c/telemetry/#"),
        deny(DenyReason::NoGrant)
    );
    assert_eq!(
        publish(&s, &sensor, "m/acme/c/commands/x"),
        deny(DenyReason::NoGrant)
    );
    assert_eq!(
        publish(&s, &sensor, "m/acme/c/nope/x"),
        deny(DenyReason::UnknownChannel)
    );
}

#[test]
fn same_names_in_another_tenant_get_nothing() {
    let s = fixture();
    let acme_sensor = Subject::thing("acme", "sensor");
    let globex_sensor = Subject::thing("globex", "sensor");
    assert_eq!(
        publish(&s, &acme_sensor, "m/globex/c/telemetry/temp"),
        deny(DenyReason::CrossTenant)
    );
    assert_eq!(
        publish(&s, &globex_sensor, "m/globex/c/telemetry/temp"),
        deny(DenyReason::NoGrant)
    );
    // Even an admin stays in its tenant.
    assert_eq!(
        subscribe(&s, &Subject::user("globex", "root"), "m/acme/c/telemetry/#"),
        deny(DenyReason::CrossTenant)
    );
}

#[test]
fn group_grants_reach_things_and_users() {
    let s = fixture();
    for member in [
        Subject::thing("acme", "gateway"),
        Subject::user("acme", "alice"),
    ] {
        assert_eq!(publish(&s, &member, "m/acme/c/commands/rooms/1"), GRANT);
        assert_eq!(subscribe(&s, &member, "m/acme/c/commands/rooms/1/+"), GRANT);
        // `rooms/+` matches `rooms/vault`, which `rooms/vault/#` denies: granted, and that
        // topic is withheld per delivery.
        assert_eq!(subscribe(&s, &member, "m/acme/c/commands/rooms/+"), GRANT);
        assert!(withholds(&s, &member, "m/acme/c/commands/rooms/+"));
        assert!(!withholds(&s, &member, "m/acme/c/commands/rooms/1/+"));
        assert_eq!(
            publish(&s, &member, "m/acme/c/commands/other"),
            deny(DenyReason::SubtopicNotAllowed)
        );
        assert_eq!(
            publish(&s, &member, "m/acme/c/commands/rooms/vault/door"),
            deny(DenyReason::SubtopicDenied)
        );
        // `rooms/#` can match `rooms/vault/…`: granted, with those topics withheld.
        assert_eq!(subscribe(&s, &member, "m/acme/c/commands/rooms/#"), GRANT);
        assert!(withholds(&s, &member, "m/acme/c/commands/rooms/#"));
        // Only a filter wholly inside the deny is refused.
        for inside in ["rooms/vault", "rooms/vault/#", "rooms/vault/+/x"] {
            assert_eq!(
                subscribe(&s, &member, &format!("m/acme/c/commands/{inside}")),
                deny(DenyReason::SubtopicDenied),
                "{inside}"
            );
        }
        assert_eq!(
            subscribe(&s, &member, "m/acme/c/commands/rooms/vault/door"),
            deny(DenyReason::SubtopicDenied)
        );
        // `#` also matches `hall`, which is neither allowed nor denied.
        assert_eq!(
            subscribe(&s, &member, "m/acme/c/commands/#"),
            deny(DenyReason::SubtopicNotAllowed)
        );
    }
    let outsider = Subject::thing("acme", "sensor");
    assert_eq!(
        publish(&s, &outsider, "m/acme/c/commands/rooms/1"),
        deny(DenyReason::NoGrant)
    );
}

#[test]
fn allow_patterns_must_cover_the_whole_filter() {
    let mut s = fixture();
    s.upsert_grant(mk_grant(
        "acme",
        "sensor-sub",
        GrantSubject::Thing("sensor".into()),
        "telemetry",
        Actions::SUBSCRIBE,
        &["a/+", "b"],
        &[],
    ));
    let sensor = Subject::thing("acme", "sensor");
    assert_eq!(subscribe(&s, &sensor, "m/acme/c/telemetry/a/+"), GRANT);
    assert_eq!(subscribe(&s, &sensor, "m/acme/c/telemetry/b"), GRANT);
    assert_eq!(
        subscribe(&s, &sensor, "m/acme/c/telemetry/a/#"),
        deny(DenyReason::SubtopicNotAllowed)
    );
    assert_eq!(
        subscribe(&s, &sensor, "m/acme/c/telemetry/+"),
        deny(DenyReason::SubtopicNotAllowed)
    );
    // A second grant adds `a` and `a/+/#`: together they cover `a/#`.
    s.upsert_grant(mk_grant(
        "acme",
        "sensor-sub-2",
        GrantSubject::Thing("sensor".into()),
        "telemetry",
        Actions::SUBSCRIBE,
        &["a", "a/+/#"],
        &[],
    ));
    assert_eq!(subscribe(&s, &sensor, "m/acme/c/telemetry/a/#"), GRANT);
}

#[test]
fn roles_give_channels_of_their_tenant() {
    let mut s = fixture();
    let root = Subject::user("acme", "root");
    let watcher = Subject::user("acme", "watcher");
    let member = Subject::user("globex", "alice");
    assert_eq!(publish(&s, &root, "m/acme/c/telemetry/x"), ROLE);
    assert_eq!(subscribe(&s, &root, "m/acme/c/commands/#"), ROLE);
    assert_eq!(subscribe(&s, &watcher, "m/acme/c/telemetry/#"), ROLE);
    assert_eq!(
        publish(&s, &watcher, "m/acme/c/telemetry/x"),
        deny(DenyReason::ReadOnlyRole)
    );
    // A viewer never publishes, even where a Connection grants it.
    s.upsert_grant(mk_grant(
        "acme",
        "watcher-pub",
        GrantSubject::User("watcher".into()),
        "telemetry",
        Actions::PUBLISH,
        &[],
        &[],
    ));
    assert_eq!(
        publish(&s, &watcher, "m/acme/c/telemetry/x"),
        deny(DenyReason::ReadOnlyRole)
    );
    assert_eq!(
        subscribe(&s, &member, "m/globex/c/telemetry/#"),
        deny(DenyReason::NoGrant)
    );
    assert_eq!(
        subscribe(&s, &root, "m/acme/c/nope/#"),
        deny(DenyReason::UnknownChannel)
    );
}

#[test]
fn only_a_tenants_admins_read_its_audit_channel_and_nobody_publishes_there() {
    let mut s = fixture();
    let root = Subject::user("acme", "root");
    assert_eq!(subscribe(&s, &root, "m/acme/c/$audit"), ROLE);
    assert_eq!(subscribe(&s, &root, "m/acme/c/$audit/#"), ROLE);
    let audit = deny(DenyReason::AuditChannel);
    assert_eq!(publish(&s, &root, "m/acme/c/$audit"), audit);
    for other in [
        Subject::user("acme", "watcher"),
        Subject::user("acme", "alice"),
        Subject::thing("acme", "sensor"),
        Subject::thing("acme", "gateway"),
    ] {
        assert_eq!(subscribe(&s, &other, "m/acme/c/$audit"), audit, "{other:?}");
        assert_eq!(publish(&s, &other, "m/acme/c/$audit"), audit, "{other:?}");
    }
    // Another tenant's admin, and a grant naming the channel, change nothing.
    assert_eq!(
        subscribe(&s, &Subject::user("globex", "root"), "m/acme/c/$audit"),
        deny(DenyReason::CrossTenant)
    );
    s.upsert_grant(mk_grant(
        "acme",
        "sensor-audit",
        GrantSubject::Thing("sensor".into()),
        AUDIT_CHANNEL,
        Actions::BOTH,
        &[],
        &[],
    ));
    let sensor = Subject::thing("acme", "sensor");
    assert_eq!(subscribe(&s, &sensor, "m/acme/c/$audit"), audit);
    // The channel is the tenant's, not a resource: never listed, gone with the tenant.
    assert!(s.channels().all(|c| c.name != AUDIT_CHANNEL));
    let before = s
        .channel("acme", AUDIT_CHANNEL)
        .expect("with its tenant")
        .clone();
    assert_eq!(before.max_qos, Qos::AtMostOnce);
    assert!(!before.retained_allowed);
    s.remove_tenant("acme");
    assert!(s.channel("acme", AUDIT_CHANNEL).is_none());
    let mut again = mk_tenant("acme");
    again.uid = "a-new-uid".into();
    s.upsert_tenant(again);
    let after = s
        .channel("acme", AUDIT_CHANNEL)
        .expect("with the new tenant");
    assert_ne!(
        after.uid, before.uid,
        "a re-created tenant's audit channel is another one"
    );
}

#[test]
fn deny_wins_over_roles_and_other_grants() {
    let mut s = fixture();
    s.upsert_grant(mk_grant(
        "acme",
        "root-no-secrets",
        GrantSubject::User("root".into()),
        "telemetry",
        Actions::BOTH,
        &[],
        &["secret/#"],
    ));
    let root = Subject::user("acme", "root");
    assert_eq!(publish(&s, &root, "m/acme/c/telemetry/open"), ROLE);
    assert_eq!(
        publish(&s, &root, "m/acme/c/telemetry/secret/x"),
        deny(DenyReason::SubtopicDenied)
    );
    // An overlapping filter is granted (`secret/x` withheld); one inside the deny is not.
    assert_eq!(subscribe(&s, &root, "m/acme/c/telemetry/+/x"), ROLE);
    assert!(withholds(&s, &root, "m/acme/c/telemetry/+/x"));
    assert_eq!(
        subscribe(&s, &root, "m/acme/c/telemetry/secret/+"),
        deny(DenyReason::SubtopicDenied)
    );
    assert_eq!(
        subscribe(&s, &root, "m/acme/c/telemetry/secret/x"),
        deny(DenyReason::SubtopicDenied)
    );
    assert_eq!(subscribe(&s, &root, "m/acme/c/telemetry/open/#"), ROLE);
    assert!(!withholds(&s, &root, "m/acme/c/telemetry/open/#"));
    // A role alone denies nothing.
    assert!(!withholds(&s, &root, "m/acme/c/commands/#"));
}

#[test]
fn a_subtopic_deny_withholds_topics_and_refuses_only_filters_inside_it() {
    let mut s = fixture();
    s.upsert_grant(mk_grant(
        "acme",
        "sensor-sub",
        GrantSubject::Thing("sensor".into()),
        "telemetry",
        Actions::SUBSCRIBE,
        &[],
        &["test/nosubscribe"],
    ));
    let sensor = Subject::thing("acme", "sensor");
    for granted in ["#", "+/+", "test/+", "test/#", "+/nosubscribe"] {
        let f = format!("m/acme/c/telemetry/{granted}");
        assert_eq!(subscribe(&s, &sensor, &f), GRANT, "{granted}");
        assert!(withholds(&s, &sensor, &f), "{granted}");
    }
    for clear in ["other/#", "test/+/+", "+", "test"] {
        let f = format!("m/acme/c/telemetry/{clear}");
        assert_eq!(subscribe(&s, &sensor, &f), GRANT, "{clear}");
        assert!(!withholds(&s, &sensor, &f), "{clear}");
    }
    // The topic itself: refused as a filter, and withheld as a delivery.
    assert_eq!(
        subscribe(&s, &sensor, "m/acme/c/telemetry/test/nosubscribe"),
        deny(DenyReason::SubtopicDenied)
    );
    assert_eq!(
        subscribe(&s, &sensor, "m/acme/c/telemetry/test/allowed"),
        GRANT
    );

    // Topics a deny withholds count towards covering a filter: with `a/+/#` allowed and `a`
    // denied, `a/#` delivers everything but `a`.
    s.upsert_grant(mk_grant(
        "acme",
        "sensor-sub",
        GrantSubject::Thing("sensor".into()),
        "telemetry",
        Actions::SUBSCRIBE,
        &["a/+/#"],
        &["a"],
    ));
    assert_eq!(subscribe(&s, &sensor, "m/acme/c/telemetry/a/#"), GRANT);
    assert!(withholds(&s, &sensor, "m/acme/c/telemetry/a/#"));
    assert_eq!(
        subscribe(&s, &sensor, "m/acme/c/telemetry/a"),
        deny(DenyReason::SubtopicDenied)
    );
    assert_eq!(
        subscribe(&s, &sensor, "m/acme/c/telemetry/#"),
        deny(DenyReason::SubtopicNotAllowed)
    );
}

#[test]
fn wildcards_are_never_published_to() {
    let s = fixture();
    let sensor = Subject::thing("acme", "sensor");
    let f = parse_filter("m/acme/c/telemetry/+", &TopicLimits::default()).expect("valid");
    assert_eq!(
        s.authorize(&sensor, Action::Publish, &f),
        deny(DenyReason::WildcardPublish)
    );
}

#[test]
fn disabled_subjects_and_suspended_tenants_get_nothing() {
    let mut s = fixture();
    let sensor = Subject::thing("acme", "sensor");
    let mut t = s.thing("acme", "sensor").expect("exists").clone();
    t.disabled = true;
    s.upsert_thing(t);
    assert_eq!(
        publish(&s, &sensor, "m/acme/c/telemetry/x"),
        deny(DenyReason::SubjectDisabled)
    );
    assert_eq!(
        s.check_subject(&sensor),
        Err(Refusal::from(DenyReason::SubjectDisabled))
    );
    let root = Subject::user("acme", "root");
    let mut tenant = s.tenant("acme").expect("exists").clone();
    tenant.suspended = true;
    s.upsert_tenant(tenant);
    assert_eq!(
        publish(&s, &root, "m/acme/c/telemetry/x"),
        deny(DenyReason::TenantSuspended)
    );
    s.remove_user("acme", "root");
    s.remove_tenant("acme");
    assert_eq!(
        publish(&s, &root, "m/acme/c/telemetry/x"),
        deny(DenyReason::UnknownTenant)
    );
    s.upsert_tenant(mk_tenant("acme"));
    assert_eq!(
        publish(&s, &root, "m/acme/c/telemetry/x"),
        deny(DenyReason::UnknownSubject)
    );
}

#[test]
fn removing_a_group_or_membership_revokes_its_grants() {
    let mut s = fixture();
    let gateway = Subject::thing("acme", "gateway");
    assert_eq!(publish(&s, &gateway, "m/acme/c/commands/rooms/1"), GRANT);
    let mut ops = s.group("acme", "ops").expect("exists").clone();
    ops.members.retain(|m| m.kind != SubjectKind::Thing);
    s.upsert_group(ops);
    assert_eq!(
        publish(&s, &gateway, "m/acme/c/commands/rooms/1"),
        deny(DenyReason::NoGrant)
    );
    let alice = Subject::user("acme", "alice");
    assert_eq!(publish(&s, &alice, "m/acme/c/commands/rooms/1"), GRANT);
    s.remove_group("acme", "ops");
    assert_eq!(
        publish(&s, &alice, "m/acme/c/commands/rooms/1"),
        deny(DenyReason::NoGrant)
    );
}

#[test]
fn reason_labels_are_distinct() {
    let mut labels: std::collections::HashSet<&str> =
        DenyReason::ALL.iter().map(|r| r.as_str()).collect();
    labels.insert(AllowReason::Grant.as_str());
    labels.insert(AllowReason::Role.as_str());
    assert_eq!(labels.len(), DenyReason::ALL.len() + 2);
}

fn explain(s: &Snapshot, subject: &Subject, action: Action, topic: &str) -> crate::Explanation {
    let t = match action {
        Action::Publish => parse_topic_name(topic, &TopicLimits::default()),
        Action::Subscribe => parse_filter(topic, &TopicLimits::default()),
    }
    .expect("valid topic");
    s.explain(subject, action, &t)
}

#[test]
fn explanations_name_the_connection_group_and_pattern_behind_a_decision() {
    let s = fixture();
    let sensor = Subject::thing("acme", "sensor");
    let e = explain(&s, &sensor, Action::Publish, "m/acme/c/telemetry/a/b");
    assert_eq!(e.decision, GRANT);
    assert_eq!(e.grants.len(), 1);
    assert_eq!(e.grants[0].connection, "sensor-telemetry");
    assert_eq!(e.grants[0].via_group, None);
    assert_eq!(e.grants[0].pattern, None, "the grant allows every subtopic");

    let alice = Subject::user("acme", "alice");
    let e = explain(&s, &alice, Action::Subscribe, "m/acme/c/commands/rooms/1/#");
    assert_eq!(e.decision, GRANT);
    assert_eq!(e.role, Some(Role::Member));
    assert_eq!(e.grants[0].connection, "ops-commands");
    assert_eq!(e.grants[0].via_group.as_deref(), Some("ops"));
    assert_eq!(e.grants[0].pattern.as_deref(), Some("rooms/#"));
    assert_eq!(
        e.grants[0].to_string(),
        "Connection ops-commands (through Group ops), pattern rooms/#"
    );

    // The deny pattern that refuses it is named.
    let e = explain(
        &s,
        &alice,
        Action::Publish,
        "m/acme/c/commands/rooms/vault/door",
    );
    assert_eq!(e.decision, deny(DenyReason::SubtopicDenied));
    assert_eq!(e.grants[0].pattern.as_deref(), Some("rooms/vault/#"));

    // Uncovered subtopics list the allow patterns that exist.
    let e = explain(&s, &alice, Action::Publish, "m/acme/c/commands/hall");
    assert_eq!(e.decision, deny(DenyReason::SubtopicNotAllowed));
    assert_eq!(e.grants[0].pattern.as_deref(), Some("rooms/#"));

    // No grant: nothing to name; the same names in the other tenant give nothing.
    let e = explain(&s, &sensor, Action::Subscribe, "m/acme/c/telemetry/#");
    assert_eq!(e.decision, deny(DenyReason::NoGrant));
    assert!(e.grants.is_empty());
    let other = Subject::thing("globex", "sensor");
    let e = explain(&s, &other, Action::Publish, "m/acme/c/telemetry/a");
    assert_eq!(e.decision, deny(DenyReason::CrossTenant));

    // A role needs no grant.
    let root = Subject::user("acme", "root");
    let e = explain(&s, &root, Action::Publish, "m/acme/c/telemetry/x");
    assert_eq!(e.decision, ROLE);
    assert_eq!(e.role, Some(Role::Admin));
    for reason in DenyReason::ALL {
        assert!(!crate::deny_text(reason).is_empty());
    }
}
