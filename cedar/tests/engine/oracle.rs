//! The oracle: for tenants whose only Cedar policies are the translation of their grants and
//! roles, the Cedar evaluator decides exactly as the built-in one.

use std::sync::Arc;

use fleetward_cedar::CedarEvaluator;
use fleetward_policy::{
    Action, Actions, Grant, GrantSubject, PolicyEvaluator, Resources, Role, Snapshot, Subject,
    SubjectKind,
};
use proptest::prelude::*;

use crate::fixtures::*;

const THINGS: [&str; 2] = ["t0", "t1"];
const USERS: [&str; 3] = ["u0", "u1", "u2"];
const CHANNELS: [&str; 2] = ["a", "b"];

fn level() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just("x"), 3 => Just("y"), 1 => Just("z"), 1 => Just("")]
}

/// A subtopic pattern: up to three levels of `x`, `y`, `""` or `+`, maybe a trailing `#`.
fn pattern() -> impl Strategy<Value = String> {
    let lvl = prop_oneof![4 => level(), 2 => Just("+")];
    (prop::collection::vec(lvl, 0..=3), any::<bool>()).prop_map(|(mut levels, hash)| {
        if hash {
            levels.push("#");
        }
        levels.join("/")
    })
}

fn subject() -> impl Strategy<Value = GrantSubject> {
    prop_oneof![
        (0..THINGS.len()).prop_map(|i| GrantSubject::Thing(THINGS[i].into())),
        (0..USERS.len()).prop_map(|i| GrantSubject::User(USERS[i].into())),
        (0..2usize).prop_map(|i| GrantSubject::Group(format!("g{i}"))),
    ]
}

fn grant() -> impl Strategy<Value = (GrantSubject, usize, (bool, bool), Vec<String>, Vec<String>)> {
    (
        subject(),
        0..CHANNELS.len(),
        (any::<bool>(), any::<bool>()),
        prop::collection::vec(pattern(), 0..=3),
        prop_oneof![2 => Just(Vec::new()), 3 => prop::collection::vec(pattern(), 1..=2)],
    )
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Admin),
        Just(Role::Member),
        Just(Role::Member),
        Just(Role::Viewer)
    ]
}

#[derive(Clone, Debug)]
struct Tenant {
    roles: Vec<Role>,
    /// For each group, which of t0, t1, u0, u1, u2 are members.
    members: Vec<Vec<bool>>,
    grants: Vec<Grant>,
}

fn tenant() -> impl Strategy<Value = Tenant> {
    (
        prop::collection::vec(role(), USERS.len()),
        prop::collection::vec(prop::collection::vec(any::<bool>(), 5), 2),
        prop::collection::vec(grant(), 0..=6),
    )
        .prop_map(|(roles, members, grants)| {
            let grants = grants
                .into_iter()
                .enumerate()
                .map(
                    |(i, (subject, channel, (publish, subscribe), allow, deny))| Grant {
                        tenant: "acme".into(),
                        name: format!("grant-{i}"),
                        subject,
                        channel: CHANNELS[channel].into(),
                        actions: Actions { publish, subscribe },
                        allow: allow
                            .iter()
                            .map(|p| p.parse().expect("generated pattern"))
                            .collect(),
                        deny: deny
                            .iter()
                            .map(|p| p.parse().expect("generated pattern"))
                            .collect(),
                    },
                )
                .collect();
            Tenant {
                roles,
                members,
                grants,
            }
        })
}

fn snapshot(t: &Tenant) -> Snapshot {
    let subjects: Vec<(SubjectKind, &str)> = THINGS
        .iter()
        .map(|n| (SubjectKind::Thing, *n))
        .chain(USERS.iter().map(|n| (SubjectKind::User, *n)))
        .collect();
    let mut resources = Resources {
        tenants: vec![mk_tenant("acme"), mk_tenant("other")],
        things: THINGS.iter().map(|n| mk_thing("acme", n)).collect(),
        users: USERS
            .iter()
            .zip(&t.roles)
            .map(|(n, r)| mk_user("acme", n, *r))
            .collect(),
        channels: CHANNELS.iter().map(|c| mk_channel("acme", c)).collect(),
        grants: t.grants.clone(),
        ..Resources::default()
    };
    resources.channels.push(mk_channel("other", "a"));
    for (i, members) in t.members.iter().enumerate() {
        let of: Vec<(SubjectKind, &str)> = subjects
            .iter()
            .zip(members)
            .filter(|(_, m)| **m)
            .map(|(s, _)| *s)
            .collect();
        resources
            .groups
            .push(mk_group("acme", &format!("g{i}"), &of));
    }
    Snapshot::from_resources(1, resources).expect("a valid snapshot")
}

#[derive(Clone, Debug)]
struct Request {
    subject: Subject,
    action: Action,
    topic: String,
}

fn request() -> impl Strategy<Value = Request> {
    let subject = prop_oneof![
        (0..THINGS.len()).prop_map(|i| Subject::thing("acme", THINGS[i])),
        (0..USERS.len()).prop_map(|i| Subject::user("acme", USERS[i])),
        Just(Subject::thing("acme", "nobody")),
    ];
    let channel = prop_oneof![
        8 => Just("m/acme/c/a"),
        6 => Just("m/acme/c/b"),
        1 => Just("m/acme/c/$audit"),
        1 => Just("m/acme/c/missing"),
        1 => Just("m/other/c/a"),
    ];
    let lvl = prop_oneof![6 => level(), 2 => Just("+")];
    let sub = prop_oneof![
        1 => Just(None),
        6 => (prop::collection::vec(lvl, 1..=4), any::<bool>()).prop_map(|(mut l, hash)| {
            if hash {
                l.push("#");
            }
            Some(l.join("/"))
        }),
        1 => Just(Some("#".to_owned())),
    ];
    let action = prop_oneof![Just(Action::Publish), Just(Action::Subscribe)];
    (subject, action, channel, sub).prop_map(|(subject, action, channel, sub)| Request {
        subject,
        action,
        topic: match sub {
            Some(s) => format!("{channel}/{s}"),
            None => channel.to_owned(),
        },
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn cedar_decides_as_the_builtin_evaluator(
        t in tenant(),
        requests in prop::collection::vec(request(), 24),
    ) {
        let builtin = snapshot(&t);
        let cedar = CedarEvaluator::new(Arc::new(builtin.clone()), &[]).expect("translated");
        for r in &requests {
            let topic = topic(&r.topic);
            let expected = builtin.authorize(&r.subject, r.action, &topic);
            let got = cedar.authorize(&r.subject, r.action, &topic);
            prop_assert_eq!(
                got.is_allowed(), expected.is_allowed(),
                "{:?} {:?} {}: builtin {:?}, cedar {:?}; grants {:#?}",
                r.subject, r.action, r.topic, expected, got, t.grants
            );
            if r.action == Action::Subscribe && expected.is_allowed() {
                prop_assert_eq!(
                    cedar.withholds(&r.subject, &topic),
                    builtin.withholds(&r.subject, &topic),
                    "withholds {:?} {}; grants {:#?}", r.subject, r.topic, t.grants
                );
            }
        }
    }
}

#[test]
fn the_oracle_covers_roles_groups_denies_and_filters() {
    // A fixed case of each kind the property draws, so a generator change cannot hide one.
    let t = Tenant {
        roles: vec![Role::Admin, Role::Viewer, Role::Member],
        members: vec![vec![true, false, false, false, true], vec![false; 5]],
        grants: vec![
            mk_grant(
                "acme",
                "g0-a",
                GrantSubject::Group("g0".into()),
                "a",
                Actions::BOTH,
                &["x/#", "y"],
                &["x/y/#"],
            ),
            mk_grant(
                "acme",
                "t1-b",
                GrantSubject::Thing("t1".into()),
                "b",
                Actions::SUBSCRIBE,
                &[],
                &["+/x"],
            ),
        ],
    };
    let builtin = snapshot(&t);
    let cedar = CedarEvaluator::new(Arc::new(builtin.clone()), &[]).expect("translated");
    let cases: &[(Subject, Action, &str, bool)] = &[
        (
            Subject::thing("acme", "t0"),
            Action::Publish,
            "m/acme/c/a/x/z",
            true,
        ),
        (
            Subject::thing("acme", "t0"),
            Action::Publish,
            "m/acme/c/a/x/y/z",
            false,
        ),
        (
            Subject::thing("acme", "t0"),
            Action::Subscribe,
            "m/acme/c/a/x/#",
            true,
        ),
        (
            Subject::thing("acme", "t0"),
            Action::Subscribe,
            "m/acme/c/a/x/y/#",
            false,
        ),
        (
            Subject::thing("acme", "t0"),
            Action::Subscribe,
            "m/acme/c/a/#",
            false,
        ),
        (
            Subject::user("acme", "u2"),
            Action::Subscribe,
            "m/acme/c/a/y",
            true,
        ),
        (
            Subject::user("acme", "u0"),
            Action::Publish,
            "m/acme/c/b/q",
            true,
        ),
        (
            Subject::user("acme", "u0"),
            Action::Subscribe,
            "m/acme/c/$audit",
            true,
        ),
        (
            Subject::user("acme", "u1"),
            Action::Subscribe,
            "m/acme/c/$audit",
            false,
        ),
        (
            Subject::user("acme", "u1"),
            Action::Publish,
            "m/acme/c/b/q",
            false,
        ),
        (
            Subject::user("acme", "u1"),
            Action::Subscribe,
            "m/acme/c/b/#",
            true,
        ),
        (
            Subject::thing("acme", "t1"),
            Action::Subscribe,
            "m/acme/c/b/#",
            true,
        ),
        (
            Subject::thing("acme", "t1"),
            Action::Subscribe,
            "m/acme/c/b/y/x",
            false,
        ),
        (
            Subject::thing("acme", "t1"),
            Action::Subscribe,
            "m/other/c/a/x",
            false,
        ),
    ];
    for (subject, action, text, allowed) in cases {
        let topic = topic(text);
        assert_eq!(
            builtin.authorize(subject, *action, &topic).is_allowed(),
            *allowed,
            "builtin {subject:?} {action:?} {text}"
        );
        assert_eq!(
            cedar.authorize(subject, *action, &topic).is_allowed(),
            *allowed,
            "cedar {subject:?} {action:?} {text}"
        );
    }
    let t1 = Subject::thing("acme", "t1");
    assert!(cedar.withholds(&t1, &topic("m/acme/c/b/#")));
    assert!(!cedar.withholds(&t1, &topic("m/acme/c/b/x/y")));
}
