//! A tenant's own policies: a forbid wins over every permit, a forbid under a wildcard filter
//! is withheld per delivery, the tenant boundary holds, and refusals carry Cedar's reasons.

use std::sync::Arc;

use fleetward_cedar::{BuildError, CedarEvaluator, UserPolicy};
use fleetward_policy::{
    Action, Actions, AllowReason, Credential, Decision, DecisionCache, DeliveryGate, DenyReason,
    GrantSubject, PolicyEvaluator, Resources, Role, Snapshot, Subject,
};

use crate::fixtures::*;

fn resources() -> Resources {
    Resources {
        tenants: vec![mk_tenant("acme"), mk_tenant("other")],
        things: vec![mk_thing("acme", "probe"), mk_thing("other", "probe")],
        users: vec![mk_user("acme", "root", Role::Admin)],
        channels: vec![
            mk_channel("acme", "readings"),
            mk_channel("other", "readings"),
        ],
        grants: vec![mk_grant(
            "acme",
            "probe-readings",
            GrantSubject::Thing("probe".into()),
            "readings",
            Actions::BOTH,
            &[],
            &[],
        )],
        ..Resources::default()
    }
}

fn evaluator(policies: &[(&str, &str)]) -> CedarEvaluator {
    let snapshot = Snapshot::from_resources(1, resources()).expect("a valid snapshot");
    let policies: Vec<UserPolicy> = policies
        .iter()
        .map(|(name, text)| UserPolicy {
            tenant: "acme".into(),
            name: (*name).into(),
            text: (*text).into(),
        })
        .collect();
    CedarEvaluator::new(Arc::new(snapshot), &policies).expect("valid policies")
}

const LAB_FORBID: &str = r#"
@id("no-lab")
forbid (principal, action == Action::"subscribe", resource in Channel::"readings")
when { resource.hasTag("0") && resource.getTag("0") == "lab" };
"#;

#[test]
fn a_forbid_wins_over_the_translated_permit_and_over_a_role() {
    let plain = evaluator(&[]);
    let probe = Subject::thing("acme", "probe");
    let lab = topic("m/acme/c/readings/lab/t1");
    assert_eq!(
        plain.authorize(&probe, Action::Subscribe, &lab),
        Decision::Allow(AllowReason::Grant)
    );

    let e = evaluator(&[("lab", LAB_FORBID)]);
    assert_eq!(
        e.authorize(&probe, Action::Subscribe, &lab),
        Decision::Deny(DenyReason::CedarForbid)
    );
    let explained = e.explain(&probe, Action::Subscribe, &lab);
    assert_eq!(explained.policies, ["Policy/lab/no-lab"]);
    // The admin's role permit loses too; publishing is not concerned.
    let root = Subject::user("acme", "root");
    assert_eq!(
        e.authorize(&root, Action::Subscribe, &lab),
        Decision::Deny(DenyReason::CedarForbid)
    );
    assert!(e.authorize(&probe, Action::Publish, &lab).is_allowed());
    let hall = topic("m/acme/c/readings/hall/t1");
    let explained = e.explain(&probe, Action::Subscribe, &hall);
    assert_eq!(explained.decision, Decision::Allow(AllowReason::Grant));
    assert_eq!(explained.policies, ["Connection/probe-readings/permit"]);
}

#[test]
fn a_forbid_under_a_wildcard_filter_is_withheld_per_delivery_never_delivered() {
    let e = evaluator(&[("lab", LAB_FORBID)]);
    let probe = Subject::thing("acme", "probe");
    // The filter wholly inside the forbid is refused; the wider ones are taken, but withheld.
    assert_eq!(
        e.authorize(&probe, Action::Subscribe, &topic("m/acme/c/readings/lab/#")),
        Decision::Deny(DenyReason::CedarForbid)
    );
    for filter in [
        "m/acme/c/readings/#",
        "m/acme/c/readings/+/t1",
        "m/acme/c/readings/+/#",
    ] {
        let f = topic(filter);
        assert!(
            e.authorize(&probe, Action::Subscribe, &f).is_allowed(),
            "{filter}"
        );
        assert!(
            e.withholds(&probe, &f),
            "{filter} must be checked per delivery"
        );
    }
    // The dataplane's gate decides each delivery on its concrete topic.
    let cache = DecisionCache::new(1000);
    let mut gate = DeliveryGate::default();
    for _ in 0..3 {
        assert!(!gate.allows(&cache, &e, &probe, "m/acme/c/readings/lab/t1"));
        assert!(!gate.allows(&cache, &e, &probe, "m/acme/c/readings/lab"));
        assert!(gate.allows(&cache, &e, &probe, "m/acme/c/readings/hall/t1"));
        assert!(gate.allows(&cache, &e, &probe, "m/acme/c/readings/labs"));
    }
}

#[test]
fn without_own_policies_only_overlapping_denies_withhold() {
    let mut r = resources();
    r.grants[0].deny = pats(&["lab/#"]);
    let e = CedarEvaluator::new(
        Arc::new(Snapshot::from_resources(1, r).expect("valid")),
        &[],
    )
    .expect("translated");
    let probe = Subject::thing("acme", "probe");
    assert!(e.withholds(&probe, &topic("m/acme/c/readings/#")));
    assert!(!e.withholds(&probe, &topic("m/acme/c/readings/hall/#")));
    assert_eq!(
        e.authorize(&probe, Action::Publish, &topic("m/acme/c/readings/lab/x")),
        Decision::Deny(DenyReason::CedarForbid)
    );
}

#[test]
fn a_policy_cannot_reach_across_the_tenant_boundary() {
    let everything = "permit (principal, action, resource);";
    let e = evaluator(&[("all", everything)]);
    let probe = Subject::thing("acme", "probe");
    for text in ["m/other/c/readings/x", "m/other/c/readings/#"] {
        assert_eq!(
            e.authorize(&probe, Action::Subscribe, &topic(text)),
            Decision::Deny(DenyReason::CrossTenant)
        );
    }
    // The other tenant's own subject gains nothing from acme's policy.
    let theirs = Subject::thing("other", "probe");
    assert_eq!(
        e.authorize(&theirs, Action::Publish, &topic("m/other/c/readings/x")),
        Decision::Deny(DenyReason::CedarNoPermit)
    );
    // Unknown subjects and channels are refused before Cedar, with the built-in reasons.
    assert_eq!(
        e.authorize(
            &Subject::thing("acme", "ghost"),
            Action::Publish,
            &topic("m/acme/c/readings/x")
        ),
        Decision::Deny(DenyReason::UnknownSubject)
    );
    assert_eq!(
        e.authorize(&probe, Action::Publish, &topic("m/acme/c/nowhere/x")),
        Decision::Deny(DenyReason::UnknownChannel)
    );
    assert_eq!(
        e.authorize(&probe, Action::Publish, &topic("m/acme/c/readings/+")),
        Decision::Deny(DenyReason::WildcardPublish)
    );
}

#[test]
fn no_permit_is_refused_with_cedar_no_permit() {
    let mut r = resources();
    r.grants.clear();
    let e = CedarEvaluator::new(
        Arc::new(Snapshot::from_resources(1, r).expect("valid")),
        &[],
    )
    .expect("translated");
    let probe = Subject::thing("acme", "probe");
    assert_eq!(
        e.authorize(&probe, Action::Subscribe, &topic("m/acme/c/readings/#")),
        Decision::Deny(DenyReason::CedarNoPermit)
    );
    assert_eq!(DenyReason::CedarNoPermit.as_str(), "cedar_no_permit");
    assert_eq!(DenyReason::CedarForbid.as_str(), "cedar_forbid");
}

#[test]
fn a_forbid_on_connect_refuses_the_right_credential_and_live_sessions() {
    let forbid = r#"forbid (principal == Thing::"probe", action == Action::"connect", resource);"#;
    let key = "key-of-probe";
    let credential = Credential::Thing {
        tenant: "acme",
        thing: "probe",
        key: key.as_bytes(),
    };
    let open = evaluator(&[]);
    let probe = open
        .authenticate(&credential)
        .expect("the right key connects");
    assert!(open.check_subject(&probe).is_ok());

    let closed = evaluator(&[("no-probe", forbid)]);
    assert_eq!(
        closed.authenticate(&credential).map_err(|r| r.reason),
        Err(DenyReason::CedarForbid)
    );
    assert_eq!(
        closed.check_subject(&probe).map_err(|r| r.reason),
        Err(DenyReason::CedarForbid)
    );
    // A wrong key is still a wrong key.
    let wrong = Credential::Thing {
        tenant: "acme",
        thing: "probe",
        key: b"nope",
    };
    assert_eq!(
        closed.authenticate(&wrong).map_err(|r| r.reason),
        Err(DenyReason::BadCredential)
    );
}

#[test]
fn an_invalid_policy_is_refused_with_its_name_line_and_column() {
    let snapshot = Arc::new(Snapshot::from_resources(1, resources()).expect("valid"));
    let bad = UserPolicy {
        tenant: "acme".into(),
        name: "broken".into(),
        text: "permit (principal, action, resource);\npermit (principal is Thing, action, resource) when { principal.nope };".into(),
    };
    let err = CedarEvaluator::new(snapshot, &[bad]).expect_err("invalid");
    let BuildError::InvalidPolicy {
        tenant,
        name,
        errors,
    } = &err
    else {
        panic!("an invalid policy, not {err}");
    };
    assert_eq!((tenant.as_str(), name.as_str()), ("acme", "broken"));
    assert_eq!(errors[0].line, 2, "{errors:?}");
    assert!(errors[0].column > 40, "{errors:?}");
    assert!(
        err.to_string()
            .contains("Policy acme/broken is invalid: line 2"),
        "{err}"
    );
}
