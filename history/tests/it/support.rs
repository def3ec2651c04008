//! A store per test: a SQLite file in a temporary directory, or a PostgreSQL database of its
//! own (CREATE DATABASE with a unique name), so tests run in parallel.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fleetward_history::{MessageId, PostgresOptions, PostgresStore, Record, SqliteStore, Store};
use sqlx::Connection as _;

/// A migrated SQLite store; the directory lives as long as the store is used.
pub async fn sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(&dir.path().join("history.db"))
        .await
        .expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    (store, dir)
}

/// The URL of a new, empty database named after `test`; `None` (with the reason printed) when
/// no PostgreSQL is configured outside CI. In CI a missing URL fails the test.
pub async fn postgres_url(test: &str) -> Option<String> {
    let Ok(admin) = std::env::var("FLEETWARD_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "FLEETWARD_POSTGRES_URL is not set in CI: scripts/test.sh exports it from scripts/postgres.sh"
        );
        eprintln!(
            "skipped {test}: FLEETWARD_POSTGRES_URL is not set (export FLEETWARD_POSTGRES_URL=$(scripts/postgres.sh | tail -n1))"
        );
        return None;
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "fw_{}_{}_{}",
        test.chars().take(30).collect::<String>(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to FLEETWARD_POSTGRES_URL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut conn)
        .await
        .expect("drop a stale test database");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    Some(with_database(&admin, &name))
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{authority}/{name}{query}")
}

/// A migrated PostgreSQL store in a database of its own.
pub async fn postgres(test: &str) -> Option<PostgresStore> {
    let url = postgres_url(test).await?;
    let mut options = PostgresOptions::new(url);
    options.pool_size = 4;
    let store = PostgresStore::connect(&options).expect("valid options");
    store.migrate().await.expect("migrate PostgreSQL");
    Some(store)
}

/// A message of `tenant/channel` (uid `uid`) at `created_ns`.
pub fn rec(tenant: &str, channel: &str, uid: &str, subtopic: &str, created_ns: u64) -> Record {
    Record {
        id: MessageId::new(created_ns),
        tenant: tenant.into(),
        channel: channel.into(),
        channel_uid: uid.into(),
        subtopic: subtopic.into(),
        payload: Bytes::from(format!("payload at {created_ns}")),
        qos: 1,
        content_type: Some("text/plain".into()),
        publisher: Some("thing-1".into()),
        publisher_kind: Some("thing".into()),
        protocol: "mqtt".into(),
        created_ns,
        user_properties: vec![("unit".into(), "C".into())],
    }
}

/// `n` seconds, ns.
pub const SEC: u64 = 1_000_000_000;
/// A day, as a Duration.
pub const DAY: Duration = Duration::from_secs(86_400);
