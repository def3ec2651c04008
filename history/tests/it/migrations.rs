//! The migration rules hold for the real directories; every release's queries run against the
//! newest schema; and every earlier schema version migrates to the newest with rows present.

use std::path::{Path, PathBuf};

use fleetward_history::migrations::{Dialect, check, header, read_dir};
use fleetward_history::{
    MessageId, Order, PostgresOptions, PostgresStore, Scan, SqliteStore, Store,
};
use sqlx::Connection as _;
use sqlx::migrate::{Migrate as _, Migrator};

/// `migrations/<store>` at the top of the repository.
pub fn dir(store: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(store)
}

#[test]
fn the_migration_directories_keep_the_additive_only_rules() {
    for (store, dialect) in [("sqlite", Dialect::Sqlite), ("postgres", Dialect::Postgres)] {
        let migrations = read_dir(&dir(store)).expect("the migrations");
        assert!(!migrations.is_empty(), "{store} has migrations");
        let violations = check(dialect, &migrations);
        assert!(
            violations.is_empty(),
            "migrations/{store} breaks the rules of migrations/README.md:\n{}",
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// One query of a release's fixture.
struct FixtureQuery {
    name: String,
    rows: Option<u64>,
    sql: String,
}

fn fixture(release: &str, store: &str) -> Vec<FixtureQuery> {
    let path = dir("fixtures").join(release).join(format!("{store}.sql"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out: Vec<FixtureQuery> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("-- query:") {
            out.push(FixtureQuery {
                name: name.trim().into(),
                rows: None,
                sql: String::new(),
            });
        } else if let (Some(rows), Some(q)) = (line.strip_prefix("-- rows:"), out.last_mut()) {
            q.rows = Some(rows.trim().parse().expect("`-- rows: N`"));
        } else if let (false, Some(q)) = (line.starts_with("--"), out.last_mut()) {
            q.sql.push_str(line);
            q.sql.push('\n');
        }
    }
    for q in &mut out {
        q.sql = q.sql.trim().trim_end_matches(';').to_owned();
    }
    assert!(!out.is_empty(), "{} holds no `-- query:`", path.display());
    out
}

/// The releases that have fixtures, oldest first.
fn releases() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir("fixtures"))
        .expect("migrations/fixtures")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| fleetward_history::migrations::Release::parse(n).is_some())
        .collect();
    out.sort_by_key(|n| fleetward_history::migrations::Release::parse(n));
    assert!(
        !out.is_empty(),
        "migrations/fixtures has a directory per release"
    );
    out
}

/// Runs a fixture's queries in order on one connection, checking the rows of each.
macro_rules! run_fixture {
    ($conn:expr, $queries:expr, $what:expr) => {
        for q in $queries {
            let n = if q.sql.starts_with("SELECT") {
                sqlx::query(&q.sql)
                    .fetch_all(&mut *$conn)
                    .await
                    .map(|r| r.len() as u64)
            } else {
                sqlx::query(&q.sql)
                    .execute(&mut *$conn)
                    .await
                    .map(|r| r.rows_affected())
            }
            .unwrap_or_else(|e| {
                panic!(
                    "{}: query `{}` fails on the newest schema: {e}",
                    $what, q.name
                )
            });
            if let Some(rows) = q.rows {
                assert_eq!(n, rows, "{}: query `{}`", $what, q.name);
            }
        }
    };
}

#[tokio::test]
async fn every_releases_sqlite_queries_run_against_the_newest_schema() {
    for release in releases() {
        let (store, _dir) = crate::support::sqlite().await;
        let mut conn = store.pool().acquire().await.expect("a connection");
        run_fixture!(
            conn,
            fixture(&release, "sqlite"),
            format!("{release} sqlite")
        );
    }
}

#[tokio::test]
async fn every_releases_postgres_queries_run_against_the_newest_schema() {
    for release in releases() {
        let Some(url) = crate::support::postgres_url("fixtures").await else {
            return;
        };
        let store = PostgresStore::connect(&PostgresOptions::new(url.clone())).expect("options");
        store.migrate().await.expect("migrate");
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        run_fixture!(
            &mut conn,
            fixture(&release, "postgres"),
            format!("{release} postgres")
        );
    }
}

/// The newest fixture release at or before `release`: the queries a pod of that schema ran.
fn fixture_release_for(release: &str) -> String {
    let r = fleetward_history::migrations::Release::parse(release).expect("a release");
    releases()
        .into_iter()
        .rfind(|f| fleetward_history::migrations::Release::parse(f).is_some_and(|f| f <= r))
        .unwrap_or_else(|| panic!("no fixtures for release {release} or older"))
}

/// A copy of `migrations/<store>` with one more, additive migration (the synthetic one shows
/// the step-by-step upgrade with a real second version even while the real history has one).
fn with_synthetic(store: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    for m in read_dir(&dir(store)).expect("migrations") {
        std::fs::write(tmp.path().join(&m.file), &m.sql).expect("copy");
    }
    for (file, sql) in extra {
        std::fs::write(tmp.path().join(file), sql).expect("write");
    }
    tmp
}

const SYNTHETIC_SQLITE: &[(&str, &str)] = &[(
    "9001_note.sql",
    "-- release: 99.0.0\nALTER TABLE messages ADD COLUMN note TEXT DEFAULT 'none';\nCREATE INDEX messages_by_note ON messages (note);\n",
)];
const SYNTHETIC_POSTGRES: &[(&str, &str)] = &[
    (
        "9001_note.sql",
        "-- release: 99.0.0\nALTER TABLE messages ADD COLUMN note TEXT DEFAULT 'none';\n",
    ),
    (
        "9002_note_index.sql",
        "-- release: 99.0.0\nCREATE INDEX IF NOT EXISTS messages_by_note ON ONLY messages (note);\n",
    ),
];

/// The fixture's two messages, as the newest store reads them.
async fn fixture_rows<S: Store>(store: &S) -> Vec<MessageId> {
    let scan = Scan {
        tenant: "acme".into(),
        channel: "sensors".into(),
        channel_uid: "uid-1".into(),
        prefix: String::new(),
        exact: false,
        after: None,
        min: None,
        max: None,
        order: Order::Asc,
        limit: 100,
    };
    store
        .scan(&scan)
        .await
        .expect("the newest store reads the rows")
        .iter()
        .map(|r| r.id)
        .collect()
}

fn fixture_ids() -> Vec<MessageId> {
    [
        "019b76da-a800-7000-8000-000000000001",
        "019b76da-abe8-7000-8000-000000000002",
    ]
    .iter()
    .map(|s| s.parse().expect("an id"))
    .collect()
}

/// For each version k of the migrations in `path`: a database at k, the rows of k's release
/// inserted by k's queries, then the rest applied; the rows must read back.
macro_rules! upgrade_each_version {
    ($path:expr, $store:literal, $fresh:expr, $pool:ident) => {{
        let migrator = Migrator::new(AsRef::<Path>::as_ref($path))
            .await
            .expect("the migrations");
        let migrations = read_dir(AsRef::<Path>::as_ref($path)).expect("the migrations");
        for k in 1..=migrations.len() {
            let (store, _guard) = $fresh;
            let $pool = store.pool();
            let mut conn = $pool.acquire().await.expect("a connection");
            conn.ensure_migrations_table()
                .await
                .expect("_sqlx_migrations");
            for m in migrator.iter().take(k) {
                conn.apply(m)
                    .await
                    .unwrap_or_else(|e| panic!("migration {}: {e}", m.version));
            }
            let release = header(&migrations[k - 1].sql)
                .expect("a header")
                .release
                .expect("a release");
            let queries = fixture(&fixture_release_for(&release.to_string()), $store);
            let insert = queries.into_iter().filter(|q| q.name == "insert");
            run_fixture!(
                conn,
                insert,
                format!("{} at version {}", $store, migrations[k - 1].version)
            );
            drop(conn);
            migrator
                .run($pool)
                .await
                .expect("the rest of the migrations");
            assert_eq!(
                fixture_rows(&store).await,
                fixture_ids(),
                "{} from version {}",
                $store,
                migrations[k - 1].version
            );
            store
                .insert(&[crate::support::rec(
                    "acme",
                    "sensors",
                    "uid-1",
                    "/new",
                    fleetward_history::now_ns(),
                )])
                .await
                .expect("the newest store writes after the upgrade");
        }
        migrations.len()
    }};
}

async fn fresh_sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(&dir.path().join("history.db"))
        .await
        .expect("open");
    (store, dir)
}

async fn fresh_postgres(url: &str) -> (PostgresStore, ()) {
    (
        PostgresStore::connect(&PostgresOptions::new(url)).expect("options"),
        (),
    )
}

#[tokio::test]
async fn every_sqlite_schema_version_migrates_to_the_newest_with_rows_present() {
    let real = dir("sqlite");
    upgrade_each_version!(&real, "sqlite", fresh_sqlite().await, pool);
    let synthetic = with_synthetic("sqlite", SYNTHETIC_SQLITE);
    let files = read_dir(synthetic.path()).expect("migrations");
    assert!(
        check(Dialect::Sqlite, &files).is_empty(),
        "the synthetic migration is additive"
    );
    let n = upgrade_each_version!(synthetic.path(), "sqlite", fresh_sqlite().await, pool);
    assert!(n >= 2, "the mechanism runs over at least two versions");
}

#[tokio::test]
async fn every_postgres_schema_version_migrates_to_the_newest_with_rows_present() {
    let Some(_) = crate::support::postgres_url("upgrade_probe").await else {
        return;
    };
    let real = dir("postgres");
    let url = || async {
        crate::support::postgres_url("upgrade")
            .await
            .expect("configured")
    };
    upgrade_each_version!(&real, "postgres", fresh_postgres(&url().await).await, pool);
    let synthetic = with_synthetic("postgres", SYNTHETIC_POSTGRES);
    let files = read_dir(synthetic.path()).expect("migrations");
    assert!(
        check(Dialect::Postgres, &files).is_empty(),
        "the synthetic migrations are additive"
    );
    let n = upgrade_each_version!(
        synthetic.path(),
        "postgres",
        fresh_postgres(&url().await).await,
        pool
    );
    assert!(n >= 3, "the mechanism runs over at least three versions");
}
