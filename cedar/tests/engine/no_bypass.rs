//! The no-bypass invariant, as a property: whatever filter a subject subscribes with, a message
//! on a topic a tenant's own `forbid` covers is never delivered to it. Deliveries are decided as
//! the dataplane decides them: the filter is granted or refused at SUBSCRIBE, and a granted
//! filter the engine withholds is checked per delivery through the gate and the cache.

use std::sync::Arc;

use fleetward_cedar::CedarEngine;
use fleetward_policy::{
    Action, Actions, DecisionCache, DeliveryGate, Engine, GrantSubject, PolicyEvaluator, Resources,
    Snapshot, Subject, TenantPolicy, TopicLimits, filter_matches, parse_filter,
};
use proptest::prelude::*;

use crate::fixtures::*;

const LEVELS: [&str; 3] = ["a", "b", "lab"];

fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&LEVELS[..])
}

/// A forbid of subscribing to topics whose level `at` is `value` (and, optionally, whose
/// depth is at least `min_depth`).
#[derive(Clone, Debug)]
struct Forbid {
    at: usize,
    value: &'static str,
    min_depth: usize,
}

impl Forbid {
    fn text(&self) -> String {
        format!(
            "forbid (principal, action == Action::\"subscribe\", resource in Channel::\"readings\") \
             when {{ resource.depth >= {} && resource.hasTag(\"{}\") && resource.getTag(\"{}\") == \"{}\" }};",
            self.min_depth, self.at, self.at, self.value
        )
    }

    /// Whether the forbid covers the concrete subtopic `levels`.
    fn covers(&self, levels: &[&str]) -> bool {
        levels.len() >= self.min_depth && levels.get(self.at) == Some(&self.value)
    }
}

fn forbid() -> impl Strategy<Value = Forbid> {
    (0usize..3, level(), 0usize..4).prop_map(|(at, value, min_depth)| Forbid {
        at,
        value,
        min_depth,
    })
}

/// A subscription filter under the channel: levels, `+` and a trailing `#`.
fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop_oneof![level().prop_map(str::to_owned), Just("+".to_owned())],
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#".into());
            }
            levels.join("/")
        })
}

fn topic_levels() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(level(), 1..5)
}

fn engine_snapshot(forbids: &[Forbid]) -> Snapshot {
    let mut tenant = mk_tenant("acme");
    tenant.engine = Engine::Cedar;
    let text: Vec<String> = forbids.iter().map(Forbid::text).collect();
    let resources = Resources {
        tenants: vec![tenant],
        things: vec![mk_thing("acme", "viewer")],
        channels: vec![mk_channel("acme", "readings")],
        grants: vec![mk_grant(
            "acme",
            "viewer-reads",
            GrantSubject::Thing("viewer".into()),
            "readings",
            Actions::SUBSCRIBE,
            &[],
            &[],
        )],
        policies: vec![TenantPolicy {
            tenant: "acme".into(),
            name: "forbids".into(),
            text: text.join("\n"),
        }],
        ..Resources::default()
    };
    let mut snapshot = Snapshot::from_resources(1, resources).expect("valid");
    let (engine, errors) = CedarEngine::build(&snapshot);
    assert!(errors.is_empty(), "{errors:?}");
    snapshot.attach_engine(Arc::new(engine));
    snapshot
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_forbidden_topic_is_never_delivered_whatever_the_filter(
        forbids in prop::collection::vec(forbid(), 1..3),
        filters in prop::collection::vec(filter(), 1..4),
        topics in prop::collection::vec(topic_levels(), 1..8),
    ) {
        let snapshot = engine_snapshot(&forbids);
        let viewer = Subject::thing("acme", "viewer");
        let limits = TopicLimits::default();
        let cache = DecisionCache::new(1000);
        for f in &filters {
            let full = format!("m/acme/c/readings/{f}");
            let parsed = parse_filter(&full, &limits).expect("a filter");
            if !snapshot.authorize(&viewer, Action::Subscribe, &parsed).is_allowed() {
                continue;
            }
            let withheld = snapshot.withholds(&viewer, &parsed);
            let mut gate = DeliveryGate::default();
            for levels in &topics {
                let topic = format!("m/acme/c/readings/{}", levels.join("/"));
                if !filter_matches(&full, &topic) {
                    continue;
                }
                let delivered = !withheld || gate.allows(&cache, &snapshot, &viewer, &topic);
                let forbidden = forbids.iter().any(|x| x.covers(levels));
                prop_assert!(
                    !(forbidden && delivered),
                    "{topic} delivered through {full} despite {forbids:?}"
                );
                // And nothing is withheld that no forbid covers.
                prop_assert!(forbidden || delivered, "{topic} withheld from {full}");
            }
        }
    }
}
