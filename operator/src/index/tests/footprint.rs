//! What the index holds at scale: an ignored test that prints how much resident memory one
//! namespace of 10k Things (with their Secrets) and 100k Connections adds, fed as the watchers
//! feed it (objects as the API server returns them, statuses included). It asserts nothing
//! about the figure, which depends on the allocator; run it alone:
//! `cargo test -p fleetward-operator --lib footprint -- --ignored --nocapture --test-threads 1`

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::*;

const THINGS: usize = 10_000;
const CONNECTIONS: usize = 100_000;
const CHANNELS: usize = 10;

/// This process's resident memory, in KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// Metadata as the API server returns it (without managed fields).
fn api_meta(ns: &str, name: &str, i: usize) -> ObjectMeta {
    let mut m = created(meta(ns, name), i as i64);
    m.uid = Some(format!("{:08x}-7425-40de-944b-{:012x}", i, i * 7));
    m.resource_version = Some(format!("{}", 1_000_000 + i));
    m
}

/// The `Ready` and `Enforced` conditions the operator writes.
fn conditions(i: usize) -> Vec<Condition> {
    let at =
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + i as i64).expect("a time"));
    let condition = |type_: &str, reason: &str, message: &str| Condition {
        last_transition_time: at.clone(),
        message: message.to_owned(),
        observed_generation: Some(1),
        reason: reason.to_owned(),
        status: "True".to_owned(),
        type_: type_.to_owned(),
    };
    vec![
        condition("Ready", "Accepted", "the grant is served"),
        condition(
            "Enforced",
            "Applied",
            "every connected dataplane (2) has applied a snapshot containing this generation",
        ),
    ]
}

fn thing(i: usize) -> crds::Thing {
    let name = format!("sensor-{i}");
    let mut t = crds::Thing::new(&name, crds::ThingSpec::default());
    t.metadata = api_meta("acme", &name, i);
    t.status = Some(crds::ThingStatus {
        conditions: conditions(i),
        observed_generation: Some(1),
        secret_name: Some(format!("{name}-credentials")),
        key_fingerprint: Some("3f2a9c41d07e".to_owned()),
        keys: Some(1),
        ..Default::default()
    });
    t
}

fn connection(i: usize) -> crds::Connection {
    let Resource::Connection(mut c) = mk_connection(
        "acme",
        &format!("grant-{i}"),
        &format!("sensor-{}", i % THINGS),
        &format!("telemetry-{}", i % CHANNELS),
    ) else {
        unreachable!("mk_connection makes a Connection")
    };
    c.metadata = api_meta("acme", &format!("grant-{i}"), i);
    c.status = Some(crds::ResourceStatus {
        conditions: conditions(i),
        observed_generation: Some(1),
    });
    c
}

/// The namespace's objects, as the watchers receive them: a Tenant, its Channels, the Things
/// with their Secrets, then the Connections.
pub(crate) fn namespace_objects() -> impl Iterator<Item = Resource> {
    let tenant = std::iter::once(mk_tenant("acme", tenant_spec()));
    let channels = (0..CHANNELS).map(|i| mk_channel("acme", &format!("telemetry-{i}")));
    let things = (0..THINGS).flat_map(|i| {
        let name = format!("sensor-{i}");
        let secret = mk_secret("acme", &format!("{name}-credentials"), &[("key", KEY_A)]);
        [secret, Resource::Thing(thing(i))]
    });
    let connections = (0..CONNECTIONS).map(|i| Resource::Connection(connection(i)));
    tenant.chain(channels).chain(things).chain(connections)
}

/// An index with the namespace applied as the watchers feed it, not yet committed.
fn applied_namespace() -> Index {
    let mut index = Index::new();
    for object in namespace_objects() {
        index.apply(object);
    }
    index
}

#[test]
#[ignore = "measures this process's memory: run alone with --ignored --nocapture"]
fn footprint_of_a_namespace_of_110k_objects() {
    let start = rss_kib();
    let mut index = applied_namespace();
    let applied = rss_kib();
    index.commit().expect("a first version");
    let committed = rss_kib();
    let s = index.snapshot();
    assert!(s.grant("acme", "grant-0").is_some() && s.thing("acme", "sensor-0").is_some());
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "index footprint, {THINGS} Things (+ Secrets), {CONNECTIONS} Connections: objects \
         applied {:.1} MiB, after the first commit {:.1} MiB (VmRSS growth)",
        mib(applied - start),
        mib(committed - start)
    );
}

/// Heap in use, counted by a wrapper around the system allocator (for this test binary only).
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicIsize, Ordering};

    pub struct Counting;

    static IN_USE: AtomicIsize = AtomicIsize::new(0);

    // SAFETY: every call is forwarded to `System` unchanged; only a counter is kept beside.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            IN_USE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            IN_USE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            IN_USE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    pub fn in_use() -> isize {
        IN_USE.load(Ordering::Relaxed)
    }
}

#[test]
#[ignore = "measures this process's heap: run alone with --ignored --nocapture"]
fn heap_of_a_namespace_of_110k_objects_by_part() {
    let mib = |b: isize| b as f64 / 1024.0 / 1024.0;
    let start = counting::in_use();
    let mut index = applied_namespace();
    let applied = counting::in_use();
    index.commit().expect("a first version");
    let committed = counting::in_use();
    println!(
        "heap: inputs {:.1} MiB, after the first commit {:.1} MiB",
        mib(applied - start),
        mib(committed - start)
    );
    let mut part = |name: &str, take: &mut dyn FnMut(&mut Index)| {
        let before = counting::in_use();
        take(&mut index);
        println!("  {name}: {:.1} MiB", mib(before - counting::in_use()));
    };
    part("history", &mut |i| drop(std::mem::take(&mut i.history)));
    part("snapshot", &mut |i| drop(std::mem::take(&mut i.snapshot)));
    part("statuses", &mut |i| drop(std::mem::take(&mut i.statuses)));
    part("included", &mut |i| drop(std::mem::take(&mut i.included)));
    part("view", &mut |i| i.view = ViewDigest::default());
    part("served", &mut |i| drop(std::mem::take(&mut i.served)));
    part("states", &mut |i| drop(std::mem::take(&mut i.states)));
    let ns = index.namespaces.get_mut("acme").expect("acme");
    part_of("connections", &mut ns.connections);
    part_of("things", &mut ns.things);
    part_of("secrets", &mut ns.secrets);
    part_of("refs", &mut ns.refs);
    part_of("rest", &mut index);
}

fn part_of<T: Default>(name: &str, value: &mut T) {
    let before = counting::in_use();
    drop(std::mem::take(value));
    println!(
        "  inputs, {name}: {:.1} MiB",
        (before - counting::in_use()) as f64 / 1024.0 / 1024.0
    );
}
