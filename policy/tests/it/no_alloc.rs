//! A cache hit does not allocate: counted by a global allocator on this test's thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use fleetward_policy::{
    Action, Actions, CachedEvaluator, Channel, Grant, GrantSubject, KeyDigest, PolicyEvaluator,
    Qos, Resources, Snapshot, Subject, SubtopicPattern, Tenant, Thing, TopicLimits, parse_filter,
    parse_topic_name,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

fn snapshot() -> Snapshot {
    let mut r = Resources::default();
    r.tenants.push(Tenant::named("acme"));
    r.channels.push(Channel {
        history_retention_secs: Default::default(),
        uid: String::new(),
        tenant: "acme".into(),
        name: "telemetry".into(),
        max_qos: Qos::AtLeastOnce,
        retained_allowed: true,
        delivery_metadata: false,
        max_message_size: None,
    });
    r.things.push(Thing {
        x509: Default::default(),
        credential_mode: Default::default(),
        attributes: Default::default(),
        tenant: "acme".into(),
        name: "sensor".into(),
        key_digests: vec![KeyDigest::of(b"k")],
        disabled: false,
        mountpoint: None,
        max_connections: None,
    });
    r.grants.push(Grant {
        tenant: "acme".into(),
        name: "g".into(),
        subject: GrantSubject::Thing("sensor".into()),
        channel: "telemetry".into(),
        actions: Actions::BOTH,
        allow: vec![SubtopicPattern::parse("rooms/#").expect("valid")],
        deny: vec![SubtopicPattern::parse("rooms/vault").expect("valid")],
    });
    Snapshot::from_resources(1, r).expect("unique")
}

#[test]
fn cache_hits_do_not_allocate() {
    let cached = CachedEvaluator::new(snapshot(), 10_000);
    let subject = Subject::thing("acme", "sensor");
    let limits = TopicLimits::default();
    let publish = parse_topic_name("m/acme/c/telemetry/rooms/1/temp", &limits).expect("valid");
    let subscribe = parse_filter("m/acme/c/telemetry/rooms/+/temp", &limits).expect("valid");
    let denied = parse_topic_name("m/acme/c/telemetry/rooms/vault", &limits).expect("valid");
    let requests = [
        (Action::Publish, publish),
        (Action::Subscribe, subscribe),
        (Action::Publish, denied),
    ];
    // Warm up: the first answer of each is a miss and is inserted.
    let expected: Vec<_> = requests
        .iter()
        .map(|(a, t)| cached.authorize(&subject, *a, t))
        .collect();
    assert!(expected[0].is_allowed() && expected[1].is_allowed() && !expected[2].is_allowed());
    cached.cache().run_pending_tasks();
    let misses_before = cached.cache().stats().misses;

    let (answers, allocations) = counted(|| {
        let mut agree = 0u32;
        for i in 0..30_000 {
            let (a, t) = &requests[i % requests.len()];
            if cached.authorize(&subject, *a, t) == expected[i % requests.len()] {
                agree += 1;
            }
        }
        agree
    });
    assert_eq!(answers, 30_000);
    assert_eq!(
        cached.cache().stats().misses,
        misses_before,
        "every answer was a hit"
    );
    assert_eq!(allocations, 0, "cache hits allocated {allocations} times");

    // Parsing is allocation-free too.
    let (_, parse_allocations) = counted(|| {
        for _ in 0..1000 {
            let t = parse_topic_name(b"m/acme/c/telemetry/rooms/1", &limits);
            assert!(t.is_ok());
        }
    });
    assert_eq!(parse_allocations, 0);

    // The counter itself works: a miss inserts and so allocates.
    let other = parse_topic_name("m/acme/c/telemetry/rooms/2", &limits).expect("valid");
    let (_, miss_allocations) = counted(|| cached.authorize(&subject, Action::Publish, &other));
    assert!(miss_allocations > 0);
}
