//! What only PostgreSQL does: day partitions made ahead, expired days dropped, the DEFAULT
//! partition, and replicas that migrate at once.

use fleetward_history::{Kept, PostgresOptions, PostgresStore, Store, now_ns};
use sqlx::PgPool;

use crate::support::{DAY, SEC, postgres, postgres_url, rec};

const DAY_NS: u64 = 86_400 * SEC;

async fn attached(pool: &PgPool) -> Vec<String> {
    let mut names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'messages'::regclass",
    )
    .fetch_all(pool)
    .await
    .expect("pg_inherits");
    names.sort();
    names
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn partition_of(pool: &PgPool, ns: u64) -> String {
    let name: String = sqlx::query_scalar(
        "SELECT 'messages_p' || to_char(('epoch'::timestamptz + $1 * interval '1 millisecond') \
         AT TIME ZONE 'UTC', 'YYYYMMDD')",
    )
    .bind(i64::try_from(ns / 1_000_000).expect("ms"))
    .fetch_one(pool)
    .await
    .expect("a partition name");
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_made_ahead_and_expired_days_are_dropped() {
    let Some(store) = postgres("partitions_made_ahead").await else {
        return;
    };
    let pool = store.pool();
    let now = now_ns();
    let old = rec("acme", "sensors", "uid-1", "/t", now - 10 * DAY_NS);
    store
        .insert(&[rec("acme", "sensors", "uid-1", "/t", now), old.clone()])
        .await
        .expect("insert");
    let parts = attached(pool).await;
    let old_day = partition_of(pool, old.created_ns).await;
    for ns in [now - 10 * DAY_NS, now, now + DAY_NS, now + 2 * DAY_NS] {
        let name = partition_of(pool, ns).await;
        assert!(parts.contains(&name), "{name} in {parts:?}");
    }
    assert!(parts.contains(&"messages_default".to_owned()));
    assert_eq!(
        count(pool, &old_day).await,
        1,
        "the old message is in its day's partition"
    );

    let kept = [Kept {
        tenant: "acme".into(),
        channel: "sensors".into(),
        channel_uid: "uid-1".into(),
        retention: 7 * DAY,
        max_tenant_bytes: 1 << 30,
    }];
    let swept = store.sweep(&kept, now).await.expect("sweep");
    assert_eq!(swept.expired, 1);
    let parts = attached(pool).await;
    assert!(
        !parts.contains(&old_day),
        "the expired day is dropped: {parts:?}"
    );
    assert!(parts.contains(&partition_of(pool, now).await));
    assert_eq!(count(pool, "messages").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_partition_catches_other_days_and_hands_them_over() {
    let Some(first) = postgres("default_partition").await else {
        return;
    };
    let pool = first.pool().clone();
    let now = now_ns();
    // Older than any partition an insert makes: the DEFAULT partition keeps it, and a sweep
    // deletes it there once it is past retention.
    let ancient = rec("acme", "sensors", "uid-1", "/t", now - 60 * DAY_NS);
    first.insert(&[ancient]).await.expect("insert");
    assert_eq!(count(&pool, "messages_default").await, 1);
    let kept = |days: u32| Kept {
        tenant: "acme".into(),
        channel: "sensors".into(),
        channel_uid: "uid-1".into(),
        retention: days * DAY,
        max_tenant_bytes: 1 << 30,
    };
    assert_eq!(
        first.sweep(&[kept(90)], now).await.expect("sweep").expired,
        0
    );
    assert_eq!(
        first.sweep(&[kept(30)], now).await.expect("sweep").expired,
        1
    );
    assert_eq!(count(&pool, "messages_default").await, 0);

    // A day whose partition went missing under a writer: its rows land in DEFAULT, and the
    // next store to make the partition moves them in.
    let day = now - 5 * DAY_NS;
    let a = rec("acme", "sensors", "uid-1", "/t", day);
    first.insert(&[a]).await.expect("insert");
    let name = partition_of(&pool, day).await;
    sqlx::query(&format!("DROP TABLE {name}"))
        .execute(&pool)
        .await
        .expect("drop");
    let b = rec("acme", "sensors", "uid-1", "/t", day + 1_000_000);
    first
        .insert(std::slice::from_ref(&b))
        .await
        .expect("insert into DEFAULT");
    assert_eq!(count(&pool, "messages_default").await, 1);
    let url = postgres_url_of(&first).await;
    let second = PostgresStore::connect(&PostgresOptions::new(url)).expect("options");
    second
        .insert(&[rec("acme", "sensors", "uid-1", "/t", day + 2_000_000)])
        .await
        .expect("insert");
    assert_eq!(count(&pool, "messages_default").await, 0);
    assert_eq!(count(&pool, &name).await, 2);
    assert_eq!(
        second.insert(&[b]).await.expect("re-insert"),
        0,
        "a moved row is still idempotent"
    );
}

/// The URL of a store's database, as the admin URL with its database replaced.
async fn postgres_url_of(store: &PostgresStore) -> String {
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(store.pool())
        .await
        .expect("current_database");
    let admin = std::env::var("FLEETWARD_POSTGRES_URL").expect("set: the store exists");
    let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{db}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_that_migrate_at_once_migrate_once() {
    let Some(url) = postgres_url("concurrent_migrate").await else {
        return;
    };
    let stores: Vec<PostgresStore> = (0..4)
        .map(|_| PostgresStore::connect(&PostgresOptions::new(url.clone())).expect("options"))
        .collect();
    let tasks: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { s.migrate().await })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("the task ran")
            .expect("every replica's migrate succeeds");
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(stores[0].pool())
            .await
            .expect("_sqlx_migrations");
    let files = fleetward_history::migrations::read_dir(&crate::migrations::dir("postgres"))
        .expect("migrations");
    assert_eq!(
        applied,
        files.iter().map(|m| m.version).collect::<Vec<_>>(),
        "each applied once"
    );
    stores[1]
        .insert(&[rec("acme", "c", "u", "", now_ns())])
        .await
        .expect("insert after migrate");
}
