//! Pure tests of the index: apply or delete objects, then assert the snapshot, delta and status.

use std::collections::BTreeMap;

use fleetward_crds as crds;
use fleetward_policy::{self as policy, PolicyEvaluator};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::*;
use crate::manifest::{self, Document};
use crate::resource::Resource;

const KEY_A: &str = "Zm9vYmFyYmF6cXV4LXRoaXMtaXMtYS10ZXN0LWtleS0x";
const KEY_B: &str = "Zm9vYmFyYmF6cXV4LXRoaXMtaXMtYS10ZXN0LWtleS0y";

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: (!ns.is_empty()).then(|| ns.into()),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

fn created(mut m: ObjectMeta, secs: i64) -> ObjectMeta {
    m.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + secs).expect("valid time"),
    ));
    m
}

fn mk_tenant(name: &str, spec: crds::TenantSpec) -> Resource {
    let mut t = crds::Tenant::new(name, spec);
    t.metadata = meta("", name);
    Resource::Tenant(t)
}

use crate::k8s::fixtures::tenant_spec;

fn mk_thing(ns: &str, name: &str) -> crds::Thing {
    let mut t = crds::Thing::new(name, crds::ThingSpec::default());
    t.metadata = meta(ns, name);
    t
}

fn mk_channel(ns: &str, name: &str) -> Resource {
    let mut c = crds::Channel::new(name, crds::ChannelSpec::default());
    c.metadata = meta(ns, name);
    Resource::Channel(c)
}

fn mk_connection(ns: &str, name: &str, thing: &str, channel: &str) -> Resource {
    let mut c = crds::Connection::new(
        name,
        crds::ConnectionSpec {
            subject: crds::Subject {
                kind: crds::SubjectKind::Thing,
                name: thing.into(),
            },
            channel: channel.into(),
            actions: vec![crds::Action::Publish, crds::Action::Subscribe],
            subtopics: None,
        },
    );
    c.metadata = meta(ns, name);
    Resource::Connection(c)
}

fn mk_secret(ns: &str, name: &str, entries: &[(&str, &str)]) -> Resource {
    Resource::Secret(SecretData {
        namespace: ns.into(),
        name: name.into(),
        entries: entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// A tenant `acme` with thing `sensor-1` (keyed), channel `telemetry` and a grant between them.
fn mk_acme(index: &mut Index) {
    index.apply(mk_tenant("acme", tenant_spec()));
    index.apply(mk_secret("acme", "sensor-1-credentials", &[("key", KEY_A)]));
    index.apply(Resource::Thing(mk_thing("acme", "sensor-1")));
    index.apply(mk_channel("acme", "telemetry"));
    index.apply(mk_connection("acme", "grant", "sensor-1", "telemetry"));
}

fn ready(index: &Index, key: &ObjectKey) -> (bool, Reason) {
    let s = index
        .status(key)
        .unwrap_or_else(|| panic!("no status for {key}"));
    (s.readiness.ready, s.readiness.reason)
}

fn thing_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::namespaced(Kind::Thing, ns, name)
}

fn conn_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::namespaced(Kind::Connection, ns, name)
}

#[test]
fn a_complete_tenant_is_served_and_ready() {
    let mut index = Index::new();
    mk_acme(&mut index);
    let commit = index.commit().expect("something changed");
    assert_eq!(commit.version, 1);
    let s = index.snapshot();
    assert!(s.tenant("acme").is_some());
    assert!(s.thing("acme", "sensor-1").is_some());
    assert!(s.channel("acme", "telemetry").is_some());
    assert!(s.grant("acme", "grant").is_some());
    for key in [
        ObjectKey::tenant("acme"),
        thing_key("acme", "sensor-1"),
        conn_key("acme", "grant"),
    ] {
        assert_eq!(ready(&index, &key), (true, Reason::Accepted), "{key}");
        assert_eq!(index.included_version(&key), Some(1), "{key}");
    }
    let st = index.status(&ObjectKey::tenant("acme")).expect("status");
    assert_eq!(
        *st.facts,
        Facts::Tenant {
            namespace: Some("acme".into()),
            things: 1,
            channels: 1,
            claims: Vec::new(),
            device_ca: None,
        }
    );
    // The key authenticates through the evaluator built from the snapshot.
    let subject = s
        .authenticate(&policy::Credential::Thing {
            tenant: "acme",
            thing: "sensor-1",
            key: KEY_A.as_bytes(),
        })
        .expect("the Secret's key authenticates");
    assert_eq!(subject, policy::Subject::thing("acme", "sensor-1"));
}

#[test]
fn nothing_changed_commits_nothing_and_status_only_updates_are_ignored() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.commit();
    assert_eq!(index.commit(), None);
    let mut thing = mk_thing("acme", "sensor-1");
    thing.status = Some(crds::ThingStatus {
        key_fingerprint: Some("abc".into()),
        ..Default::default()
    });
    thing.metadata.resource_version = Some("42".into());
    index.apply(Resource::Thing(thing));
    assert_eq!(index.commit(), None, "a status-only update must not commit");
}

#[test]
fn one_changed_resource_gives_a_one_resource_delta() {
    let mut index = Index::new();
    mk_acme(&mut index);
    for i in 0..50 {
        index.apply(mk_channel("acme", &format!("ch-{i}")));
    }
    index.commit();
    let mut thing = mk_thing("acme", "sensor-1");
    thing.spec.disabled = true;
    thing.metadata.generation = Some(2);
    index.apply(Resource::Thing(thing));
    let commit = index.commit().expect("changed");
    let delta = commit.delta.expect("policy changed");
    assert_eq!(delta.len(), 1, "{delta:?}");
    assert_eq!(delta.things.upserts.len(), 1);
    assert!(delta.things.upserts[0].disabled);
    assert_eq!((delta.from_version, delta.to_version), (1, 2));
    assert_eq!(
        index.included_version(&thing_key("acme", "sensor-1")),
        Some(2)
    );
    assert_eq!(
        index.included_version(&conn_key("acme", "grant")),
        Some(1),
        "an unchanged grant keeps the version it entered with"
    );
}

#[test]
fn deltas_replayed_on_an_old_snapshot_give_the_current_one() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.commit();
    let old = index.snapshot().clone();
    index.apply(mk_channel("acme", "alerts"));
    index.commit();
    index.delete(&conn_key("acme", "grant"));
    index.commit();
    index.apply(mk_secret(
        "acme",
        "sensor-1-credentials",
        &[("key", KEY_A), ("key-next", KEY_B)],
    ));
    index.commit();
    let deltas = index.deltas_since(old.version()).expect("kept");
    assert_eq!(deltas.len(), 3);
    let mut replayed = old;
    for d in deltas {
        replayed.apply(&d).expect("applies in order");
    }
    assert!(
        replayed == *index.snapshot(),
        "replayed deltas must rebuild the snapshot"
    );
    assert_eq!(index.deltas_since(index.snapshot().version()), Some(vec![]));
    assert_eq!(index.deltas_since(99), None);
}

#[test]
fn deltas_that_would_hold_a_second_copy_of_the_world_are_not_kept() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.commit();
    let small = index.snapshot().version();
    let bulk = HISTORY_RESOURCES + 1;
    for i in 0..bulk {
        index.apply(mk_channel("acme", &format!("bulk-{i}")));
    }
    let commit = index.commit().expect("a bulk commit");
    assert_eq!(
        commit.delta, None,
        "a delta that would not be kept is not built"
    );
    assert_eq!(commit.version, small + 1, "the version moves all the same");
    assert_eq!(
        index.deltas_since(small),
        None,
        "a delta larger than the bound is not kept: a dataplane that far behind gets the \
         snapshot"
    );
    let after_bulk = index.snapshot().version();
    index.delete(&ObjectKey::namespaced(Kind::Channel, "acme", "bulk-0"));
    index.commit().expect("a one-channel commit");
    let deltas = index
        .deltas_since(after_bulk)
        .expect("a small delta is kept");
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0].len(), 1);
    assert_eq!(index.history_resources, 1);
}

#[test]
fn a_connection_to_a_missing_channel_becomes_ready_when_it_appears() {
    let mut index = Index::new();
    index.apply(mk_tenant("acme", tenant_spec()));
    index.apply(mk_secret("acme", "sensor-1-credentials", &[("key", KEY_A)]));
    index.apply(Resource::Thing(mk_thing("acme", "sensor-1")));
    index.apply(mk_connection("acme", "grant", "sensor-1", "telemetry"));
    index.commit();
    assert_eq!(
        ready(&index, &conn_key("acme", "grant")),
        (false, Reason::ChannelNotFound)
    );
    let msg = &index
        .status(&conn_key("acme", "grant"))
        .expect("status")
        .readiness
        .message;
    assert!(msg.contains("acme/telemetry"), "message names it: {msg}");
    assert!(index.snapshot().grant("acme", "grant").is_none());
    assert_eq!(index.included_version(&conn_key("acme", "grant")), None);

    index.apply(mk_channel("acme", "telemetry"));
    let commit = index.commit().expect("changed");
    assert!(commit.statuses.contains(&conn_key("acme", "grant")));
    assert_eq!(
        ready(&index, &conn_key("acme", "grant")),
        (true, Reason::Accepted)
    );
    assert!(index.snapshot().grant("acme", "grant").is_some());
}

#[test]
fn a_connection_to_a_missing_subject_names_it() {
    let mut index = Index::new();
    index.apply(mk_tenant("acme", tenant_spec()));
    index.apply(mk_channel("acme", "telemetry"));
    index.apply(mk_connection("acme", "grant", "ghost", "telemetry"));
    index.commit();
    let st = index.status(&conn_key("acme", "grant")).expect("status");
    assert_eq!(st.readiness.reason, Reason::SubjectNotFound);
    assert!(st.readiness.message.contains("acme/ghost"));
}

#[test]
fn deleting_a_thing_removes_it_and_unserves_its_grants() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.commit();
    index.delete(&thing_key("acme", "sensor-1"));
    let commit = index.commit().expect("changed");
    let delta = commit.delta.expect("policy changed");
    assert_eq!(
        delta.things.removals,
        [ResourceName::new("acme", "sensor-1")]
    );
    assert_eq!(delta.grants.removals, [ResourceName::new("acme", "grant")]);
    assert!(index.status(&thing_key("acme", "sensor-1")).is_none());
    assert!(commit.statuses.contains(&thing_key("acme", "sensor-1")));
    assert_eq!(
        ready(&index, &conn_key("acme", "grant")),
        (false, Reason::SubjectNotFound)
    );
}

#[test]
fn a_namespace_without_tenant_is_not_served() {
    let mut index = Index::new();
    index.apply(mk_secret("acme", "sensor-1-credentials", &[("key", KEY_A)]));
    index.apply(Resource::Thing(mk_thing("acme", "sensor-1")));
    index.apply(mk_channel("acme", "telemetry"));
    index.commit();
    assert_eq!(
        ready(&index, &thing_key("acme", "sensor-1")),
        (false, Reason::NoTenant)
    );
    assert_eq!(index.snapshot().things().count(), 0);

    index.apply(mk_tenant("acme", tenant_spec()));
    index.commit();
    assert_eq!(
        ready(&index, &thing_key("acme", "sensor-1")),
        (true, Reason::Accepted)
    );

    index.delete(&ObjectKey::tenant("acme"));
    let delta = index.commit().and_then(|c| c.delta).expect("changed");
    assert_eq!(delta.tenants.removals, ["acme".to_owned()]);
    assert_eq!(delta.things.removals.len(), 1);
    assert_eq!(
        ready(&index, &thing_key("acme", "sensor-1")),
        (false, Reason::NoTenant)
    );
}

#[test]
fn a_second_tenant_claiming_a_namespace_is_refused_until_the_first_goes() {
    let mut index = Index::new();
    let mut first = crds::Tenant::new("acme", tenant_spec());
    first.metadata = created(meta("", "acme"), 0);
    let mut second = crds::Tenant::new(
        "acme-2",
        crds::TenantSpec {
            namespace: Some("acme".into()),
            ..tenant_spec()
        },
    );
    second.metadata = created(meta("", "acme-2"), 10);
    index.apply(Resource::Tenant(second));
    index.apply(Resource::Tenant(first));
    index.apply(mk_channel("acme", "telemetry"));
    index.commit();
    assert_eq!(
        ready(&index, &ObjectKey::tenant("acme")),
        (true, Reason::Accepted)
    );
    let st = index.status(&ObjectKey::tenant("acme-2")).expect("status");
    assert_eq!(
        (st.readiness.ready, st.readiness.reason),
        (false, Reason::NamespaceClaimed)
    );
    assert!(st.readiness.message.contains("Tenant acme"));
    assert!(index.snapshot().channel("acme", "telemetry").is_some());

    index.delete(&ObjectKey::tenant("acme"));
    index.commit();
    assert_eq!(
        ready(&index, &ObjectKey::tenant("acme-2")),
        (true, Reason::Accepted)
    );
    let s = index.snapshot();
    assert!(s.tenant("acme").is_none());
    assert!(s.channel("acme", "telemetry").is_none());
    assert!(s.channel("acme-2", "telemetry").is_some());
}

#[test]
fn things_beyond_the_limit_are_refused_oldest_first_served() {
    let mut index = Index::new();
    index.apply(mk_tenant(
        "acme",
        crds::TenantSpec {
            limits: Some(crds::TenantLimits {
                max_things: Some(1),
                ..Default::default()
            }),
            ..tenant_spec()
        },
    ));
    for (i, name) in ["zz-old", "aa-new"].into_iter().enumerate() {
        let mut t = mk_thing("acme", name);
        t.metadata = created(meta("acme", name), i as i64);
        index.apply(Resource::Thing(t));
        index.apply(mk_secret(
            "acme",
            &format!("{name}-credentials"),
            &[("key", KEY_A)],
        ));
    }
    index.commit();
    assert_eq!(
        ready(&index, &thing_key("acme", "zz-old")),
        (true, Reason::Accepted)
    );
    assert_eq!(
        ready(&index, &thing_key("acme", "aa-new")),
        (false, Reason::LimitExceeded)
    );
    assert!(index.snapshot().thing("acme", "aa-new").is_none());
}

#[test]
fn retained_quotas_reach_the_snapshot() {
    let mut index = Index::new();
    index.apply(mk_tenant(
        "acme",
        crds::TenantSpec {
            limits: Some(crds::TenantLimits {
                max_retained_messages: Some(5),
                max_retained_bytes: Some(1 << 20),
                ..Default::default()
            }),
            ..tenant_spec()
        },
    ));
    index.commit();
    let limits = &index.snapshot().tenant("acme").expect("served").limits;
    assert_eq!(
        (limits.max_retained_messages, limits.max_retained_bytes),
        (Some(5), Some(1 << 20))
    );
}

#[test]
fn thing_keys_rotate_and_weak_or_missing_keys_are_refused() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.commit();
    let sensor = thing_key("acme", "sensor-1");
    let fp = |index: &Index| match &*index.status(&sensor).expect("status").facts {
        Facts::Thing {
            key_fingerprint,
            keys,
            ..
        } => (key_fingerprint.clone(), *keys),
        other => panic!("unexpected facts {other:?}"),
    };
    let fp_a = policy::KeyDigest::of(KEY_A.as_bytes()).fingerprint();
    assert_eq!(fp(&index), (Some(fp_a.clone()), 1));

    index.apply(mk_secret(
        "acme",
        "sensor-1-credentials",
        &[("key", KEY_A), ("key-next", KEY_B)],
    ));
    index.commit();
    assert_eq!(fp(&index), (Some(fp_a), 2));
    let digests = &index
        .snapshot()
        .thing("acme", "sensor-1")
        .expect("served")
        .key_digests;
    assert_eq!(digests.len(), 2, "both keys work during a rotation");

    index.apply(mk_secret("acme", "sensor-1-credentials", &[("key", KEY_B)]));
    index.commit();
    let s = index.snapshot();
    assert!(
        s.authenticate(&policy::Credential::Thing {
            tenant: "acme",
            thing: "sensor-1",
            key: KEY_A.as_bytes()
        })
        .is_err(),
        "a removed key is revoked"
    );

    index.apply(mk_secret(
        "acme",
        "sensor-1-credentials",
        &[("key", "short")],
    ));
    index.commit();
    assert_eq!(ready(&index, &sensor), (false, Reason::CredentialsInvalid));
    assert!(index.snapshot().thing("acme", "sensor-1").is_none());

    index.delete(&ObjectKey::namespaced(
        Kind::Secret,
        "acme",
        "sensor-1-credentials",
    ));
    index.commit();
    assert_eq!(ready(&index, &sensor), (false, Reason::CredentialsPending));
}

#[test]
fn suspending_a_tenant_reaches_the_snapshot() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.commit();
    index.apply(mk_tenant(
        "acme",
        crds::TenantSpec {
            suspended: true,
            ..tenant_spec()
        },
    ));
    let delta = index.commit().and_then(|c| c.delta).expect("changed");
    assert_eq!(delta.len(), 1);
    assert!(delta.tenants.upserts[0].suspended);
    assert_eq!(
        ready(&index, &ObjectKey::tenant("acme")),
        (true, Reason::Suspended)
    );
}

#[test]
fn a_tenants_allowed_origins_reach_the_snapshot_and_malformed_ones_are_left_out() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.commit();
    index.apply(mk_tenant(
        "acme",
        crds::TenantSpec {
            web: Some(crds::TenantWeb {
                allowed_origins: vec![
                    "https://dash.example.com".into(),
                    "https://Dash.example.com/".into(),
                    "*".into(),
                ],
            }),
            ..tenant_spec()
        },
    ));
    let delta = index.commit().and_then(|c| c.delta).expect("changed");
    assert_eq!(
        delta.tenants.upserts[0].web.allowed_origins,
        ["https://dash.example.com"]
    );
}

/// The objects of the example manifests (two tenants with every kind, Secrets included).
pub(crate) fn example_objects() -> Vec<Object> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut objects = Vec::new();
    for file in ["acme.yaml", "globex.yaml"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).expect("example exists");
        for doc in manifest::read(&text) {
            match doc.unwrap_or_else(|e| panic!("{file}: {e}")) {
                Document::Object(o) => objects.push(Object::from(*o)),
                Document::Skipped { kind } => assert_eq!(kind, "Namespace"),
            }
        }
    }
    objects
}

fn load_examples(index: &mut Index) {
    for object in example_objects() {
        index.apply(object);
    }
}

#[test]
fn the_examples_resolve_with_only_generated_keys_pending() {
    let mut index = Index::new();
    load_examples(&mut index);
    index.commit();
    let pending: Vec<String> = index
        .objects()
        .filter(|k| !index.status(k).expect("status").readiness.ready)
        .map(ToString::to_string)
        .collect();
    // Only things whose keys the operator generates wait, and what depends on them; meter-1
    // also waits for its tenant's device CA, which `fleetward start` supplies from its files.
    for p in &pending {
        assert!(
            p.contains("dashboard")
                || p.contains("globex/sensor-1")
                || p.contains("operators")
                || p.contains("meter-1"),
            "unexpected not-ready object {p}; all pending: {pending:?}"
        );
    }
    assert_eq!(
        ready(&index, &thing_key("acme", "sensor-1")),
        (true, Reason::Accepted)
    );
    let user = index
        .snapshot()
        .user("acme", "alice")
        .expect("alice is served");
    let hash = user.password_hash.as_deref().expect("hashed");
    assert!(hash.starts_with("$argon2"), "only a hash is pushed");
    assert!(
        policy::verify_password(hash, b"acme-alice-example-password"),
        "the hash verifies the example password"
    );
}

#[test]
fn isolation_holds_on_the_examples() {
    let mut index = Index::new();
    load_examples(&mut index);
    for (ns, thing) in [
        ("acme", "dashboard"),
        ("acme", "meter-1"),
        ("globex", "dashboard"),
        ("globex", "sensor-1"),
    ] {
        index.apply(mk_secret(
            ns,
            &format!("{thing}-credentials"),
            &[("key", if ns == "acme" { KEY_A } else { KEY_B })],
        ));
    }
    index.commit();
    let s = index.snapshot();
    let acme_dashboard = policy::Subject::thing("acme", "dashboard");
    let own = policy::parse_filter(b"m/acme/c/telemetry/#", &policy::TopicLimits::default())
        .expect("valid filter");
    let other = policy::parse_filter(b"m/globex/c/telemetry/#", &policy::TopicLimits::default())
        .expect("valid filter");
    assert!(
        s.authorize(&acme_dashboard, policy::Action::Subscribe, &own)
            .is_allowed()
    );
    assert!(
        !s.authorize(&acme_dashboard, policy::Action::Subscribe, &other)
            .is_allowed()
    );
    let pending: Vec<_> = index
        .objects()
        .filter(|k| !index.status(k).expect("status").readiness.ready)
        .collect();
    assert!(pending.is_empty(), "all ready once keys exist: {pending:?}");
}

#[test]
fn a_group_with_a_missing_member_serves_the_others() {
    let mut index = Index::new();
    mk_acme(&mut index);
    let mut g = crds::Group::new(
        "ops",
        crds::GroupSpec {
            members: vec![
                crds::Member {
                    kind: crds::MemberKind::Thing,
                    name: "sensor-1".into(),
                },
                crds::Member {
                    kind: crds::MemberKind::User,
                    name: "bob".into(),
                },
            ],
            description: None,
        },
    );
    g.metadata = meta("acme", "ops");
    index.apply(Resource::Group(g));
    index.commit();
    let key = ObjectKey::namespaced(Kind::Group, "acme", "ops");
    let st = index.status(&key).expect("status");
    assert_eq!(st.readiness.reason, Reason::MemberNotFound);
    assert!(st.readiness.message.contains("User bob"));
    let group = index.snapshot().group("acme", "ops").expect("served");
    assert_eq!(group.members.len(), 1);
}

#[test]
fn reset_drops_objects_missing_from_a_relist() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.apply(mk_channel("acme", "alerts"));
    index.commit();
    index.reset(Kind::Channel, vec![mk_channel("acme", "telemetry")]);
    let delta = index.commit().and_then(|c| c.delta).expect("changed");
    assert_eq!(
        delta.channels.removals,
        [ResourceName::new("acme", "alerts")]
    );
    assert!(index.snapshot().channel("acme", "telemetry").is_some());
}

#[test]
fn a_bad_manifest_document_names_its_field_and_others_still_read() {
    let text = "apiVersion: fleetward.io/v1alpha1\nkind: Channel\nmetadata: {name: a, namespace: acme}\nspec: {maxQos: nine}\n---\napiVersion: fleetward.io/v1alpha1\nkind: Channel\nmetadata: {name: b, namespace: acme}\nspec: {}\n";
    let docs = manifest::read(text);
    assert_eq!(docs.len(), 2);
    let err = docs[0].as_ref().expect_err("bad maxQos");
    assert_eq!(err.document, 1);
    assert!(err.message.contains("spec.maxQos"), "{}", err.message);
    assert!(docs[1].is_ok());
}

#[test]
fn a_yaml_syntax_error_is_reported_once_and_ends_the_stream() {
    let text = "apiVersion: fleetward.io/v1alpha1\nkind: Channel\nmetadata: {name: a, namespace: acme}\nspec: {}\n---\nkind: [unclosed\n---\napiVersion: v1\nkind: Namespace\n";
    let docs = manifest::read(text);
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert!(docs[0].is_ok());
    let err = docs[1].as_ref().expect_err("a syntax error");
    assert_eq!(err.document, 2);
    assert!(err.message.contains("not valid YAML"), "{}", err.message);
}

/// Sets an object's `metadata.uid`.
fn with_uid(mut object: Resource, uid: &str) -> Resource {
    let meta = match &mut object {
        Resource::Tenant(t) => &mut t.metadata,
        Resource::Channel(c) => &mut c.metadata,
        _ => unreachable!("only tenants and channels here"),
    };
    meta.uid = Some(uid.into());
    object
}

#[test]
fn the_uids_of_tenants_and_channels_are_served_and_a_re_created_one_is_a_change() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.apply(with_uid(mk_tenant("acme", tenant_spec()), "t-1"));
    index.apply(with_uid(mk_channel("acme", "telemetry"), "c-1"));
    index.commit();
    let s = index.snapshot();
    assert_eq!(s.tenant("acme").map(|t| t.uid.as_str()), Some("t-1"));
    let uid = |s: &Snapshot| s.channel("acme", "telemetry").map(|c| c.uid.clone());
    assert_eq!(uid(s).as_deref(), Some("c-1"));
    // Deleted and created again while the watch was away: the same name, spec, generation
    // and creation second; only the uid differs, and that is a change the dataplanes get.
    index.apply(with_uid(mk_channel("acme", "telemetry"), "c-2"));
    index.apply(with_uid(mk_tenant("acme", tenant_spec()), "t-2"));
    let delta = index
        .commit()
        .expect("changed")
        .delta
        .expect("policy changed");
    assert_eq!(delta.channels.upserts.len(), 1, "{delta:?}");
    assert_eq!(delta.channels.upserts[0].uid, "c-2");
    assert_eq!(delta.tenants.upserts.len(), 1, "{delta:?}");
    assert_eq!(delta.tenants.upserts[0].uid, "t-2");
    assert_eq!(uid(index.snapshot()).as_deref(), Some("c-2"));
    // Objects without a uid (a manifest) are served with an empty one.
    index.apply(mk_channel("acme", "alerts"));
    index.commit();
    let alerts = index
        .snapshot()
        .channel("acme", "alerts")
        .map(|c| c.uid.clone());
    assert_eq!(alerts.as_deref(), Some(""));
}

const FORBID_LAB: &str = r#"forbid (principal, action == Action::"subscribe", resource in Channel::"telemetry")
when { resource.hasTag("0") && resource.getTag("0") == "lab" };"#;

fn mk_policy(ns: &str, name: &str, cedar: &str, generation: i64) -> crds::Policy {
    let mut p = crds::Policy::new(
        name,
        crds::PolicySpec {
            cedar: cedar.into(),
            description: None,
        },
    );
    p.metadata = meta(ns, name);
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.generation = Some(generation);
    p
}

fn cedar_spec() -> crds::TenantSpec {
    crds::TenantSpec {
        authorization: Some(crds::TenantAuthorization {
            engine: crds::AuthorizationEngine::Cedar,
        }),
        ..tenant_spec()
    }
}

fn policy_key(name: &str) -> ObjectKey {
    ObjectKey::namespaced(Kind::Policy, "acme", name)
}

#[test]
fn a_valid_policy_of_a_cedar_tenant_is_served_and_ready() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.apply(mk_tenant("acme", cedar_spec()));
    index.apply(Resource::Policy(mk_policy("acme", "lab", FORBID_LAB, 1)));
    let commit = index.commit().expect("changed");
    let delta = commit.delta.expect("a delta");
    assert_eq!(delta.policies.upserts.len(), 1);
    let s = index.snapshot();
    assert_eq!(
        s.tenant("acme").map(|t| t.engine),
        Some(policy::Engine::Cedar)
    );
    assert_eq!(
        s.policy("acme", "lab").map(|p| p.text.as_str()),
        Some(FORBID_LAB)
    );
    assert_eq!(ready(&index, &policy_key("lab")), (true, Reason::Accepted));

    // Deleting it removes it from the snapshot.
    index.delete(&policy_key("lab"));
    let delta = index.commit().expect("changed").delta.expect("a delta");
    assert_eq!(delta.policies.removals.len(), 1);
    assert!(index.snapshot().policy("acme", "lab").is_none());
}

#[test]
fn an_invalid_edit_keeps_the_last_valid_text_and_says_where() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.apply(mk_tenant("acme", cedar_spec()));
    index.apply(Resource::Policy(mk_policy("acme", "lab", FORBID_LAB, 1)));
    index.commit();
    let broken = "forbid (principal, action, resource)\nwhen { resource.nope };";
    index.apply(Resource::Policy(mk_policy("acme", "lab", broken, 2)));
    index.commit();
    let st = index.status(&policy_key("lab")).expect("a status");
    assert_eq!(
        (st.readiness.ready, st.readiness.reason),
        (false, Reason::InvalidPolicy)
    );
    assert!(
        st.readiness.message.contains("line 2, column"),
        "{}",
        st.readiness.message
    );
    assert!(
        st.readiness
            .message
            .contains("generation 1) stays enforced"),
        "{}",
        st.readiness.message
    );
    let Facts::Policy { errors, enforced } = &*st.facts else {
        panic!("no policy facts: {:?}", st.facts)
    };
    assert_eq!(errors[0].0, 2);
    assert_eq!(enforced.as_ref().map(|e| e.0), Some(Some(1)));
    assert_eq!(
        index
            .snapshot()
            .policy("acme", "lab")
            .map(|p| p.text.as_str()),
        Some(FORBID_LAB)
    );
}

#[test]
fn a_restarted_index_takes_the_last_valid_text_back_from_the_status() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.apply(mk_tenant("acme", cedar_spec()));
    let mut p = mk_policy("acme", "lab", "permit (principal,", 3);
    p.status = Some(crds::PolicyStatus {
        enforced: Some(crds::EnforcedPolicy {
            generation: Some(2),
            cedar: FORBID_LAB.into(),
        }),
        ..Default::default()
    });
    index.apply(Resource::Policy(p));
    index.commit();
    assert_eq!(
        index
            .snapshot()
            .policy("acme", "lab")
            .map(|p| p.text.as_str()),
        Some(FORBID_LAB)
    );
    // A shown text that does not validate is never served.
    let mut index = Index::new();
    mk_acme(&mut index);
    index.apply(mk_tenant("acme", cedar_spec()));
    let mut p = mk_policy("acme", "lab", "permit (principal,", 3);
    p.status = Some(crds::PolicyStatus {
        enforced: Some(crds::EnforcedPolicy {
            generation: Some(2),
            cedar: "forbid (".into(),
        }),
        ..Default::default()
    });
    index.apply(Resource::Policy(p));
    index.commit();
    assert!(index.snapshot().policy("acme", "lab").is_none());
    let st = index.status(&policy_key("lab")).expect("a status");
    assert!(
        st.readiness
            .message
            .contains("no version of this Policy is enforced")
    );
}

#[test]
fn a_policy_of_a_builtin_tenant_decides_nothing_and_says_so() {
    let mut index = Index::new();
    mk_acme(&mut index);
    index.apply(Resource::Policy(mk_policy("acme", "lab", FORBID_LAB, 1)));
    index.commit();
    assert_eq!(
        ready(&index, &policy_key("lab")),
        (false, Reason::EngineNotCedar)
    );
    assert!(index.snapshot().policy("acme", "lab").is_none());
    // Switching the tenant to cedar serves it.
    index.apply(mk_tenant("acme", cedar_spec()));
    index.commit();
    assert!(index.snapshot().policy("acme", "lab").is_some());
    assert_eq!(ready(&index, &policy_key("lab")), (true, Reason::Accepted));
}

#[test]
fn a_channel_keeps_history_for_its_retention_and_a_bad_retention_is_not_served() {
    let mut index = Index::new();
    mk_acme(&mut index);
    let with = |name: &str, retention: &str| {
        let mut c = crds::Channel::new(
            name,
            crds::ChannelSpec {
                history: Some(crds::ChannelHistory {
                    retention: retention.into(),
                }),
                ..Default::default()
            },
        );
        c.metadata = meta("acme", name);
        Resource::Channel(c)
    };
    index.apply(with("kept", "7d"));
    index.apply(with("broken", "7 weeks"));
    index.commit().expect("something changed");
    let s = index.snapshot();
    let kept = s.channel("acme", "kept").expect("served");
    assert_eq!(kept.history_retention_secs, Some(7 * 86_400));
    let plain = s.channel("acme", "telemetry").expect("served");
    assert_eq!(plain.history_retention_secs, None);
    assert!(s.channel("acme", "broken").is_none());
    let key = ObjectKey::namespaced(Kind::Channel, "acme", "broken");
    assert_eq!(ready(&index, &key), (false, Reason::InvalidSpec));
    let message = &index.status(&key).expect("status").readiness.message;
    assert!(message.contains("spec.history.retention"), "{message}");
}

mod certificates;
pub(crate) mod footprint;
mod oracle;
