//! The same behaviour, asserted the same way, on both stores.

use std::collections::HashSet;
use std::time::Duration;

use fleetward_history::{Kept, Order, Query, Record, Store, SubtopicFilter, Swept, now_ns, read};

use crate::support::{DAY, SEC, rec};

/// Runs each suite function against a SQLite store and a PostgreSQL store.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _dir) = crate::support::sqlite().await;
                super::$name(&store).await;
            })*
        }
        mod postgres_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(store) = crate::support::postgres(stringify!($name)).await else { return };
                super::$name(&store).await;
            })*
        }
    };
}

both!(
    insert_is_idempotent_by_id,
    pages_run_newest_first_or_oldest_first,
    filters_narrow_to_their_topics,
    cursors_page_without_duplicates_or_gaps,
    a_page_of_large_messages_ends_at_its_bytes_and_goes_on_by_cursor,
    from_and_to_bound_the_time,
    sweep_removes_orphans_recreated_channels_expired_rows_and_excess,
    stats_count_what_each_channel_holds,
);

fn query(filter: &str, order: Order, limit: u32) -> Query {
    Query {
        tenant: "acme".into(),
        channel: "sensors".into(),
        channel_uid: "uid-1".into(),
        filter: SubtopicFilter::parse(filter).expect("a valid filter"),
        from_ns: None,
        to_ns: None,
        limit,
        order,
        cursor: None,
    }
}

/// `n` messages of acme/sensors, one a millisecond, starting an hour ago.
fn series(n: u64, subtopic: impl Fn(u64) -> String) -> Vec<Record> {
    let start = now_ns() - 3600 * SEC;
    (0..n)
        .map(|i| {
            rec(
                "acme",
                "sensors",
                "uid-1",
                &subtopic(i),
                start + i * 1_000_000,
            )
        })
        .collect()
}

fn kept(channel: &str, uid: &str, retention: Duration, max: u64) -> Kept {
    Kept {
        tenant: "acme".into(),
        channel: channel.into(),
        channel_uid: uid.into(),
        retention,
        max_tenant_bytes: max,
    }
}

async fn insert_is_idempotent_by_id<S: Store>(store: &S) {
    let batch = series(3, |_| "/t".into());
    assert_eq!(store.insert(&batch).await.expect("insert"), 3);
    assert_eq!(store.insert(&batch).await.expect("re-insert"), 0);
    let mut mixed = series(1, |_| "/t".into());
    mixed.push(batch[0].clone());
    assert_eq!(store.insert(&mixed).await.expect("insert"), 1);
    let page = read(store, &query("#", Order::Asc, 100), |_| true)
        .await
        .expect("read");
    assert_eq!(page.records.len(), 4);
    assert_eq!(
        page.records[0], batch[0],
        "a record reads back as it was written"
    );
}

async fn pages_run_newest_first_or_oldest_first<S: Store>(store: &S) {
    let batch = series(10, |i| format!("/n{i}"));
    store.insert(&batch).await.expect("insert");
    let desc = read(store, &query("#", Order::Desc, 100), |_| true)
        .await
        .expect("read");
    let asc = read(store, &query("#", Order::Asc, 100), |_| true)
        .await
        .expect("read");
    let ids = |p: &[Record]| p.iter().map(|r| r.id).collect::<Vec<_>>();
    let mut expected = ids(&batch);
    assert_eq!(ids(&asc.records), expected);
    expected.reverse();
    assert_eq!(ids(&desc.records), expected);
    assert_eq!(desc.next, None);
}

async fn filters_narrow_to_their_topics<S: Store>(store: &S) {
    let subtopics = ["", "/a", "/a/b", "/a/c", "/b", "/ab", "/a/b/c"];
    let batch = series(subtopics.len() as u64, |i| subtopics[i as usize].into());
    store.insert(&batch).await.expect("insert");
    // Another channel and a re-created one of the same name never show up.
    store
        .insert(&[
            rec("acme", "other", "uid-1", "/a", now_ns()),
            rec("acme", "sensors", "uid-0", "/a", now_ns()),
        ])
        .await
        .expect("insert");
    for (filter, expected) in [
        ("#", &subtopics[..]),
        ("a/#", &["/a", "/a/b", "/a/c", "/a/b/c"][..]),
        ("a/+", &["/a/b", "/a/c"][..]),
        ("a/b", &["/a/b"][..]),
        ("+", &["/a", "/b", "/ab"][..]),
        ("+/b", &["/a/b"][..]),
        ("zzz", &[][..]),
    ] {
        let page = read(store, &query(filter, Order::Asc, 100), |_| true)
            .await
            .expect("read");
        let got: Vec<&str> = page.records.iter().map(|r| r.subtopic.as_str()).collect();
        assert_eq!(got, expected, "filter {filter}");
    }
    // What `keep` refuses is never returned, whatever the filter.
    let page = read(store, &query("#", Order::Asc, 100), |r| {
        !r.subtopic.starts_with("/a/b")
    })
    .await
    .expect("read");
    assert!(page.records.iter().all(|r| !r.subtopic.starts_with("/a/b")));
    assert_eq!(page.records.len(), subtopics.len() - 2);
}

async fn cursors_page_without_duplicates_or_gaps<S: Store>(store: &S) {
    let batch = series(250, |i| if i % 3 == 0 { "/x".into() } else { "/y".into() });
    store.insert(&batch).await.expect("insert");
    for (filter, order) in [
        ("#", Order::Desc),
        ("#", Order::Asc),
        ("x", Order::Desc),
        ("x", Order::Asc),
    ] {
        let mut q = query(filter, order, 30);
        let mut seen = Vec::new();
        loop {
            let page = read(store, &q, |_| true).await.expect("read");
            assert!(page.records.len() <= 30);
            seen.extend(page.records.iter().map(|r| r.id));
            let Some(next) = page.next else { break };
            q.cursor = Some(next);
        }
        let mut expected: Vec<_> = batch
            .iter()
            .filter(|r| filter == "#" || r.subtopic == "/x")
            .map(|r| r.id)
            .collect();
        if order == Order::Desc {
            expected.reverse();
        }
        assert_eq!(
            seen.len(),
            seen.iter().collect::<HashSet<_>>().len(),
            "no duplicates"
        );
        assert_eq!(
            seen, expected,
            "every message once, in order ({filter}, {order:?})"
        );
    }
}

async fn a_page_of_large_messages_ends_at_its_bytes_and_goes_on_by_cursor<S: Store>(store: &S) {
    // Five messages of 3 MiB: a page holds two (6 MiB), as a third would pass 8 MiB.
    let mut batch = series(5, |_| "/big".into());
    for r in &mut batch {
        r.payload = vec![b'x'; 3 << 20].into();
    }
    store.insert(&batch).await.expect("insert");
    let mut q = query("#", Order::Asc, 100);
    let mut pages = Vec::new();
    loop {
        let page = read(store, &q, |_| true).await.expect("read");
        let bytes: u64 = page.records.iter().map(Record::stored_bytes).sum();
        assert!(
            bytes <= fleetward_history::MAX_PAGE_BYTES,
            "{bytes} bytes in a page"
        );
        pages.push(page.records.iter().map(|r| r.id).collect::<Vec<_>>());
        let Some(next) = page.next else { break };
        q.cursor = Some(next);
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let seen: Vec<_> = pages.concat();
    assert_eq!(seen, batch.iter().map(|r| r.id).collect::<Vec<_>>());
}

async fn from_and_to_bound_the_time<S: Store>(store: &S) {
    let start = now_ns() - 3600 * SEC;
    let batch: Vec<Record> = (0..10)
        .map(|i| rec("acme", "sensors", "uid-1", "/t", start + i * SEC))
        .collect();
    store.insert(&batch).await.expect("insert");
    let mut q = query("#", Order::Asc, 100);
    q.from_ns = Some(start + 3 * SEC);
    q.to_ns = Some(start + 7 * SEC);
    let page = read(store, &q, |_| true).await.expect("read");
    let got: Vec<u64> = page
        .records
        .iter()
        .map(|r| (r.created_ns - start) / SEC)
        .collect();
    assert_eq!(got, vec![3, 4, 5, 6], "from is inclusive, to exclusive");
    q.order = Order::Desc;
    let page = read(store, &q, |_| true).await.expect("read");
    assert_eq!(page.records.len(), 4);
}

async fn sweep_removes_orphans_recreated_channels_expired_rows_and_excess<S: Store>(store: &S) {
    let now = now_ns();
    let fresh = rec("acme", "sensors", "uid-1", "/t", now - 60 * SEC);
    let old = rec("acme", "sensors", "uid-1", "/t", now - 10 * 86_400 * SEC);
    let short = rec("acme", "short", "uid-s", "/t", now - 2 * 86_400 * SEC);
    let recreated = rec("acme", "sensors", "uid-0", "/t", now - 120 * SEC);
    let deleted = rec("acme", "gone", "uid-g", "/t", now - 120 * SEC);
    let other_tenant = rec("globex", "sensors", "uid-x", "/t", now - 120 * SEC);
    store
        .insert(&[fresh.clone(), old, short, recreated, deleted, other_tenant])
        .await
        .expect("insert");
    let policy = [
        kept("sensors", "uid-1", 7 * DAY, 1 << 30),
        kept("short", "uid-s", DAY, 1 << 30),
    ];
    let swept = store.sweep(&policy, now).await.expect("sweep");
    assert_eq!(
        swept,
        Swept {
            orphaned: 3,
            expired: 2,
            over_quota: 0
        }
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.len(), 1, "only the fresh message is left: {stats:?}");
    assert_eq!(
        (stats[0].channel.as_str(), stats[0].messages),
        ("sensors", 1)
    );
    assert_eq!(
        store.sweep(&policy, now).await.expect("sweep"),
        Swept::default()
    );

    // Over its quota, a tenant loses its oldest messages first, whatever the channel.
    let batch = series(10, |_| "/q".into());
    store.insert(&batch).await.expect("insert");
    let each = batch[0].stored_bytes();
    let quota = [kept("sensors", "uid-1", 7 * DAY, 4 * each + each / 2)];
    let swept = store.sweep(&quota, now).await.expect("sweep");
    assert_eq!(swept.over_quota, 7);
    let page = read(store, &query("#", Order::Asc, 100), |_| true)
        .await
        .expect("read");
    let ids: Vec<_> = page.records.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![batch[7].id, batch[8].id, batch[9].id, fresh.id]);
}

async fn stats_count_what_each_channel_holds<S: Store>(store: &S) {
    assert_eq!(store.stats().await.expect("stats"), vec![]);
    let batch = series(5, |i| format!("/s{i}"));
    store.insert(&batch).await.expect("insert");
    store
        .insert(&[rec("acme", "b", "uid-b", "", now_ns())])
        .await
        .expect("insert");
    let mut stats = store.stats().await.expect("stats");
    stats.sort_by(|a, b| a.channel.cmp(&b.channel));
    assert_eq!(stats.len(), 2);
    let s = &stats[1];
    assert_eq!(
        (
            s.tenant.as_str(),
            s.channel.as_str(),
            s.channel_uid.as_str()
        ),
        ("acme", "sensors", "uid-1")
    );
    assert_eq!(s.messages, 5);
    assert_eq!(s.bytes, batch.iter().map(Record::stored_bytes).sum::<u64>());
    assert_eq!(s.oldest_ns, Some(batch[0].created_ns));
    assert_eq!(stats[0].messages, 1);
}
