//! Criterion benches of the policy core: decisions (cache hit and miss), topic parsing, snapshot
//! build, diff + apply of a one-resource change, and a delta applied to a copy (what a dataplane
//! does per delta). Figures go to BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fleetward_policy::{
    Action, Actions, CachedEvaluator, Channel, Grant, GrantSubject, Group, KeyDigest, Member,
    PolicyEvaluator, Qos, Resources, Snapshot, Subject, SubjectKind, SubtopicPattern, Tenant,
    Thing, TopicLimits, diff, parse_filter, parse_topic_name,
};

const TENANTS: usize = 10;
const CHANNELS_PER_TENANT: usize = 50;
const GROUPS_PER_TENANT: usize = 10;
const GRANTS_PER_THING: usize = 10;

fn pattern(p: &str) -> SubtopicPattern {
    SubtopicPattern::parse(p).expect("bench patterns are valid")
}

/// `things` things spread over 10 tenants that reuse thing and channel names; ten grants per
/// thing (so 10k things give 100k grants); every thing in one of ten groups per tenant.
fn resources(things: usize) -> Resources {
    let per_tenant = things / TENANTS;
    let mut r = Resources::default();
    for t in 0..TENANTS {
        let tenant = format!("tenant-{t}");
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
        for c in 0..CHANNELS_PER_TENANT {
            r.channels.push(Channel {
                history_retention_secs: Default::default(),
                uid: String::new(),
                tenant: tenant.clone(),
                name: format!("channel-{c}"),
                max_qos: Qos::AtLeastOnce,
                retained_allowed: true,
                delivery_metadata: false,
                max_message_size: None,
            });
        }
        for g in 0..GROUPS_PER_TENANT {
            r.groups.push(Group {
                tenant: tenant.clone(),
                name: format!("group-{g}"),
                members: (g..per_tenant)
                    .step_by(GROUPS_PER_TENANT)
                    .map(|i| Member {
                        kind: SubjectKind::Thing,
                        name: format!("thing-{i}"),
                    })
                    .collect(),
            });
        }
        for i in 0..per_tenant {
            let name = format!("thing-{i}");
            r.things.push(Thing {
                x509: Default::default(),
                credential_mode: Default::default(),
                attributes: Default::default(),
                tenant: tenant.clone(),
                name: name.clone(),
                key_digests: vec![KeyDigest::of(format!("{tenant}/{name}").as_bytes())],
                disabled: false,
                mountpoint: None,
                max_connections: None,
            });
            for k in 0..GRANTS_PER_THING {
                r.grants.push(Grant {
                    tenant: tenant.clone(),
                    name: format!("{name}-grant-{k}"),
                    subject: GrantSubject::Thing(name.clone()),
                    channel: format!("channel-{}", (i * 7 + k) % CHANNELS_PER_TENANT),
                    actions: Actions::BOTH,
                    allow: vec![pattern(&format!("dev/{i}/#")), pattern("shared/+")],
                    deny: vec![pattern(&format!("dev/{i}/secret/#"))],
                });
            }
        }
    }
    r
}

fn build(things: usize) -> Snapshot {
    Snapshot::from_resources(1, resources(things)).expect("bench names are unique")
}

fn decisions(c: &mut Criterion) {
    let snapshot = build(10_000);
    assert_eq!(snapshot.grants().count(), 100_000);
    let limits = TopicLimits::default();
    let subject = Subject::thing("tenant-3", "thing-417");
    let channel = (417 * 7 + 2) % CHANNELS_PER_TENANT;
    let topic_text = format!("m/tenant-3/c/channel-{channel}/dev/417/temp");
    let filter_text = format!("m/tenant-3/c/channel-{channel}/dev/417/room/+/temp");
    let topic = parse_topic_name(&topic_text, &limits).expect("valid");
    let filter = parse_filter(&filter_text, &limits).expect("valid");
    assert!(
        snapshot
            .authorize(&subject, Action::Publish, &topic)
            .is_allowed()
    );
    assert!(
        snapshot
            .authorize(&subject, Action::Subscribe, &filter)
            .is_allowed()
    );

    let mut g = c.benchmark_group("authorize");
    g.bench_function("evaluate_publish_uncached", |b| {
        b.iter(|| snapshot.authorize(black_box(&subject), Action::Publish, black_box(&topic)))
    });
    g.bench_function("evaluate_subscribe_uncached", |b| {
        b.iter(|| snapshot.authorize(black_box(&subject), Action::Subscribe, black_box(&filter)))
    });

    let cached = CachedEvaluator::new(&snapshot, 100_000);
    assert!(
        cached
            .authorize(&subject, Action::Publish, &topic)
            .is_allowed()
    );
    g.bench_function("cache_hit_publish", |b| {
        b.iter(|| cached.authorize(black_box(&subject), Action::Publish, black_box(&topic)))
    });

    // Every request is new: evaluation plus insertion (and eviction once full).
    let fresh: Vec<String> = (0..1_000_000)
        .map(|n| format!("m/tenant-3/c/channel-{channel}/dev/417/n{n}"))
        .collect();
    let mut next = 0usize;
    let cold = CachedEvaluator::new(&snapshot, 10_000);
    g.bench_function("cache_miss_publish", |b| {
        b.iter(|| {
            let t = parse_topic_name(&fresh[next % fresh.len()], &limits).expect("valid");
            next += 1;
            cold.authorize(black_box(&subject), Action::Publish, &t)
        })
    });
    g.finish();
    let stats = cold.cache().stats();
    assert!(
        stats.hits * 100 <= stats.misses,
        "miss bench hit the cache: {stats:?}"
    );
}

fn parsing(c: &mut Criterion) {
    let limits = TopicLimits::default();
    let mut g = c.benchmark_group("topic");
    g.bench_function("parse_topic_name", |b| {
        b.iter(|| {
            parse_topic_name(
                black_box("m/tenant-3/c/telemetry/building-7/floor-2/temp"),
                &limits,
            )
        })
    });
    g.bench_function("parse_shared_filter", |b| {
        b.iter(|| {
            parse_filter(
                black_box("$share/workers/m/tenant-3/c/telemetry/+/floor-2/#"),
                &limits,
            )
        })
    });
    g.finish();
}

fn building(c: &mut Criterion) {
    let input = resources(10_000);
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("build_10k_things_100k_grants", |b| {
        b.iter_batched(
            || input.clone(),
            |r| Snapshot::from_resources(1, r).expect("unique"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn deltas(c: &mut Criterion) {
    let mut g = c.benchmark_group("delta");
    for things in [1_000, 10_000] {
        let a = build(things);
        let mut b = a.clone();
        b.set_version(2);
        let mut grant = b
            .grant("tenant-3", "thing-17-grant-4")
            .expect("exists")
            .clone();
        grant.deny.push(pattern("dev/17/locked"));
        b.upsert_grant(grant);
        let d = diff(&a, &b);
        let bytes = serde_json::to_vec(&d).expect("serialize").len();
        println!(
            "delta: {things} things, {} grants: {} resource(s) changed, {bytes} bytes as JSON",
            a.grants().count(),
            d.len()
        );
        g.bench_function(format!("diff_{things}_things"), |bench| {
            bench.iter(|| diff(black_box(&a), black_box(&b)))
        });
        // What a dataplane does per delta: apply it to a copy of the snapshot it serves (the
        // copy shares its tables, so this does not grow with them).
        g.bench_function(format!("copy_and_apply_{things}_things"), |bench| {
            bench.iter(|| {
                let mut next = black_box(&a).clone();
                next.apply(black_box(&d))
                    .expect("at the delta's base version");
                next
            })
        });
        // Apply the change and its reverse on one snapshot: the cost of two one-resource applies.
        let back = diff(&b, &a);
        let mut s = a.clone();
        g.bench_function(format!("apply_and_revert_{things}_things"), |bench| {
            bench.iter(|| {
                s.apply(black_box(&d)).expect("at the delta's base version");
                s.apply(black_box(&back))
                    .expect("at the reverse delta's base version");
            })
        });
        assert_eq!(s, a);
    }
    g.finish();
}

criterion_group!(benches, decisions, parsing, building, deltas);
criterion_main!(benches);
