//! A Cedar decision on a cache miss, with 1,000 policies in the tenant, and a cache hit.
//!
//! 500 things each have a Connection with an allow and a deny pattern (a permit and a forbid
//! each), beside the role policies. The misses are asked of the snapshot with the Cedar engine
//! attached, as the dataplane asks them; the hits go through the dataplane's decision cache,
//! beside the same tenant with the built-in engine. Criterion measures the mean; the
//! percentiles the budget speaks of (p50, p99) are printed first from single timed
//! decisions.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use fleetward_cedar::{CedarEngine, CedarEvaluator};
use fleetward_policy::{
    Action, Actions, Channel, DecisionCache, Engine, Grant, GrantSubject, PolicyEvaluator, Qos,
    Resources, Snapshot, Subject, Tenant, TenantLimits, Thing, TopicLimits, parse_filter,
    parse_topic_name,
};

const THINGS: usize = 500;

fn evaluator() -> CedarEvaluator {
    let tenant = Tenant {
        provisioning: Default::default(),
        device_ca: Default::default(),
        engine: Default::default(),
        name: "acme".into(),
        uid: String::new(),
        suspended: false,
        limits: TenantLimits::default(),
        web: Default::default(),
    };
    let things = (0..THINGS)
        .map(|i| Thing {
            x509: Default::default(),
            credential_mode: Default::default(),
            attributes: Default::default(),
            tenant: "acme".into(),
            name: format!("sensor-{i}"),
            key_digests: Vec::new(),
            disabled: false,
            mountpoint: None,
            max_connections: None,
        })
        .collect();
    let grants = (0..THINGS)
        .map(|i| Grant {
            tenant: "acme".into(),
            name: format!("sensor-{i}-telemetry"),
            subject: GrantSubject::Thing(format!("sensor-{i}")),
            channel: "telemetry".into(),
            actions: Actions::BOTH,
            allow: vec![format!("rooms/{i}/#").parse().expect("a pattern")],
            deny: vec![format!("rooms/{i}/secret/#").parse().expect("a pattern")],
        })
        .collect();
    let channel = Channel {
        history_retention_secs: Default::default(),
        tenant: "acme".into(),
        name: "telemetry".into(),
        uid: String::new(),
        max_qos: Qos::AtLeastOnce,
        retained_allowed: true,
        max_message_size: None,
        delivery_metadata: false,
    };
    let resources = Resources {
        tenants: vec![tenant],
        things,
        channels: vec![channel],
        grants,
        ..Resources::default()
    };
    let snapshot = Snapshot::from_resources(1, resources).expect("a valid snapshot");
    let e = CedarEvaluator::new(Arc::new(snapshot), &[]).expect("translated");
    assert!(e.policy_count("acme") >= 1000);
    e
}

/// The same tenant as the dataplane holds it: engine `cedar`, the engine attached.
fn attached(e: &CedarEvaluator, engine: Engine) -> Snapshot {
    let mut resources = e.snapshot().to_resources();
    resources.tenants[0].engine = engine;
    let mut snapshot = Snapshot::from_resources(1, resources).expect("a valid snapshot");
    let (cedar, errors) = CedarEngine::build(&snapshot);
    assert!(errors.is_empty());
    snapshot.attach_engine(Arc::new(cedar));
    snapshot
}

/// p50 and p99 of `f`, in nanoseconds, over `n` single timed calls.
fn timed(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut times: Vec<u128> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_nanos()
        })
        .collect();
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize] as f64;
    (at(0.50), at(0.99))
}

fn hits(e: &CedarEvaluator) {
    let subject = Subject::thing("acme", "sensor-250");
    let limits = TopicLimits::default();
    let topic = parse_topic_name("m/acme/c/telemetry/rooms/250/temp", &limits).expect("a topic");
    for engine in [Engine::Builtin, Engine::Cedar] {
        let snapshot = attached(e, engine);
        let cache = DecisionCache::new(100_000);
        assert!(
            cache
                .authorize(&snapshot, &subject, Action::Publish, &topic)
                .is_allowed()
        );
        let (p50, p99) = timed(100_000, || {
            black_box(cache.authorize(&snapshot, &subject, Action::Publish, &topic));
        });
        println!(
            "{} engine, publish decision, cache hit: p50 {p50:.0} ns, p99 {p99:.0} ns",
            engine.as_str()
        );
    }
}

fn percentiles(e: &CedarEvaluator) {
    let subject = Subject::thing("acme", "sensor-250");
    let limits = TopicLimits::default();
    let topics = [
        (
            "publish",
            "m/acme/c/telemetry/rooms/250/temp",
            Action::Publish,
        ),
        (
            "subscribe filter",
            "m/acme/c/telemetry/rooms/250/#",
            Action::Subscribe,
        ),
    ];
    for (what, text, action) in topics {
        let topic = match action {
            Action::Publish => parse_topic_name(text, &limits),
            Action::Subscribe => parse_filter(text, &limits),
        }
        .expect("a topic");
        let snapshot = attached(e, Engine::Cedar);
        let (p50, p99) = timed(5_000, || {
            black_box(snapshot.authorize(&subject, action, &topic));
        });
        println!(
            "cedar {what}, cache miss, {} policies: p50 {:.1} µs, p99 {:.1} µs",
            e.policy_count("acme"),
            p50 / 1000.0,
            p99 / 1000.0
        );
    }
}

fn bench(c: &mut Criterion) {
    let e = evaluator();
    percentiles(&e);
    hits(&e);
    let subject = Subject::thing("acme", "sensor-250");
    let limits = TopicLimits::default();
    let topic = parse_topic_name("m/acme/c/telemetry/rooms/250/temp", &limits).expect("a topic");
    assert!(e.authorize(&subject, Action::Publish, &topic).is_allowed());
    c.bench_function("cedar publish decision, cache miss, 1000 policies", |b| {
        b.iter(|| e.authorize(black_box(&subject), Action::Publish, black_box(&topic)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
