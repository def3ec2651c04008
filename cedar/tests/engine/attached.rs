//! The engine as the dataplane runs it: attached to a snapshot, deciding only the tenants whose
//! engine is `cedar`, reading things' attributes, and never answering for another version.

use std::sync::Arc;

use fleetward_cedar::CedarEngine;
use fleetward_policy::{
    Action, Actions, AllowReason, Credential, Decision, DenyReason, Engine, GrantSubject,
    PolicyEvaluator, Resources, Snapshot, Subject, TenantPolicy,
};

use crate::fixtures::*;

/// A thing may publish only under its own site: the first level of the subtopic.
const SITE_MATCH: &str = r#"
@id("site-match")
permit (principal is Thing, action == Action::"publish", resource in Channel::"readings")
when {
  principal.hasTag("site") && resource.hasTag("0") && resource.getTag("0") == principal.getTag("site")
};
"#;

fn resources(engine: Engine) -> Resources {
    let mut acme = mk_tenant("acme");
    acme.engine = engine;
    let mut probe = mk_thing("acme", "probe");
    probe.attributes.insert("site".into(), "lab".into());
    Resources {
        tenants: vec![acme, mk_tenant("plain")],
        things: vec![probe, mk_thing("acme", "nomad"), mk_thing("plain", "probe")],
        channels: vec![
            mk_channel("acme", "readings"),
            mk_channel("plain", "readings"),
        ],
        grants: vec![mk_grant(
            "plain",
            "probe-readings",
            GrantSubject::Thing("probe".into()),
            "readings",
            Actions::BOTH,
            &[],
            &[],
        )],
        policies: vec![TenantPolicy {
            tenant: "acme".into(),
            name: "sites".into(),
            text: SITE_MATCH.into(),
        }],
        ..Resources::default()
    }
}

fn attached(engine: Engine) -> Snapshot {
    let mut snapshot = Snapshot::from_resources(7, resources(engine)).expect("valid");
    let (cedar, errors) = CedarEngine::build(&snapshot);
    assert!(errors.is_empty(), "{errors:?}");
    snapshot.attach_engine(Arc::new(cedar));
    snapshot
}

#[test]
fn an_attribute_policy_decides_a_cedar_tenant() {
    let s = attached(Engine::Cedar);
    let probe = Subject::thing("acme", "probe");
    assert_eq!(
        s.authorize(&probe, Action::Publish, &topic("m/acme/c/readings/lab/t1")),
        Decision::Allow(AllowReason::Grant)
    );
    assert_eq!(
        s.authorize(&probe, Action::Publish, &topic("m/acme/c/readings/hall/t1")),
        Decision::Deny(DenyReason::CedarNoPermit)
    );
    // A thing without the attribute is permitted nothing, and no Connection names it.
    let nomad = Subject::thing("acme", "nomad");
    assert_eq!(
        s.authorize(&nomad, Action::Publish, &topic("m/acme/c/readings/lab/t1")),
        Decision::Deny(DenyReason::CedarNoPermit)
    );
    let explained = s.explain(&probe, Action::Publish, &topic("m/acme/c/readings/lab/t1"));
    assert_eq!(explained.policies, ["Policy/sites/site-match"]);
    // The tenant's things still connect (the role policy permits connecting).
    let key = "key-of-probe";
    let who = s
        .authenticate(&Credential::Thing {
            tenant: "acme",
            thing: "probe",
            key: key.as_bytes(),
        })
        .expect("connects");
    assert_eq!(who, probe);
}

#[test]
fn a_builtin_tenant_beside_it_is_decided_as_before() {
    let s = attached(Engine::Cedar);
    let probe = Subject::thing("plain", "probe");
    let t = topic("m/plain/c/readings/anything");
    assert_eq!(
        s.authorize(&probe, Action::Publish, &t),
        s.builtin().authorize(&probe, Action::Publish, &t)
    );
    assert!(s.explain(&probe, Action::Publish, &t).policies.is_empty());
    // And the Policy of a builtin tenant decides nothing: acme as builtin has no grant.
    let b = attached(Engine::Builtin);
    assert_eq!(
        b.authorize(
            &Subject::thing("acme", "probe"),
            Action::Publish,
            &topic("m/acme/c/readings/lab/t1")
        ),
        Decision::Deny(DenyReason::NoGrant)
    );
}

#[test]
fn without_an_engine_of_its_version_a_cedar_tenant_is_refused() {
    let probe = Subject::thing("acme", "probe");
    let t = topic("m/acme/c/readings/lab/t1");
    let bare = Snapshot::from_resources(7, resources(Engine::Cedar)).expect("valid");
    assert!(bare.needs_engine());
    assert_eq!(
        bare.authorize(&probe, Action::Publish, &t),
        Decision::Deny(DenyReason::PolicyUnavailable)
    );
    let refused = bare
        .authenticate(&Credential::Thing {
            tenant: "acme",
            thing: "probe",
            key: b"key-of-probe",
        })
        .expect_err("no engine");
    assert_eq!(refused.reason, DenyReason::PolicyUnavailable);
    // A wrong key is still a wrong key: nothing is learnt before the credential is right.
    let wrong = bare
        .authenticate(&Credential::Thing {
            tenant: "acme",
            thing: "probe",
            key: b"not-the-key",
        })
        .expect_err("bad key");
    assert_eq!(wrong.reason, DenyReason::BadCredential);

    // An engine built for another version is never asked.
    let mut moved = attached(Engine::Cedar);
    moved.set_version(8);
    assert_eq!(
        moved.authorize(&probe, Action::Publish, &t),
        Decision::Deny(DenyReason::PolicyUnavailable)
    );
}

#[test]
fn an_invalid_text_leaves_its_tenant_out_and_says_where() {
    let mut r = resources(Engine::Cedar);
    r.policies[0].text = "permit (principal, action, resource) when { principal.nope };".into();
    let snapshot = Snapshot::from_resources(3, r).expect("valid");
    let (engine, errors) = CedarEngine::build(&snapshot);
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(text.contains("Policy acme/sites is invalid"), "{text}");
    assert!(text.contains("line 1"), "{text}");
    assert_eq!(engine.policy_count("acme"), 0);
}
