//! Each rule refuses what it should, and lets through what it should.

use super::*;

const FIRST: &str = "-- release: 0.2.0\nCREATE TABLE messages (id BLOB PRIMARY KEY, tenant TEXT NOT NULL);\nCREATE INDEX by_tenant ON messages (tenant);";

fn set(later: &[&str]) -> Vec<Migration> {
    std::iter::once(FIRST)
        .chain(later.iter().copied())
        .enumerate()
        .map(|(i, sql)| Migration {
            version: i as i64 + 1,
            file: format!("{:04}_m.sql", i + 1),
            sql: sql.to_owned(),
        })
        .collect()
}

fn problems(dialect: Dialect, later: &[&str]) -> Vec<String> {
    check(dialect, &set(later))
        .into_iter()
        .map(|v| v.to_string())
        .collect()
}

#[track_caller]
fn refused(dialect: Dialect, later: &[&str], expect: &str) {
    let p = problems(dialect, later);
    assert!(
        p.iter().any(|p| p.contains(expect)),
        "expected a violation with {expect:?}, got {p:?}"
    );
}

#[track_caller]
fn allowed(dialect: Dialect, later: &[&str]) {
    assert_eq!(problems(dialect, later), Vec::<String>::new());
}

#[test]
fn the_first_migration_may_do_anything_and_additions_pass() {
    allowed(Dialect::Sqlite, &[]);
    allowed(
        Dialect::Sqlite,
        &[
            "-- release: 0.3.0\nCREATE TABLE IF NOT EXISTS other (x INTEGER);\nCREATE INDEX by_x ON other (x);",
            "-- release: 0.3.0\nALTER TABLE messages ADD COLUMN note TEXT;\nALTER TABLE messages ADD COLUMN n INTEGER NOT NULL DEFAULT 0;",
        ],
    );
    allowed(
        Dialect::Postgres,
        &[
            "-- no-transaction\n-- release: 0.3.0\nCREATE INDEX CONCURRENTLY IF NOT EXISTS by_x ON messages (tenant, id);",
            "-- release: 0.3.0\nCREATE INDEX IF NOT EXISTS by_y ON ONLY messages (tenant);\nALTER TABLE messages ADD COLUMN a text, ADD COLUMN b int DEFAULT 1;",
        ],
    );
}

#[test]
fn every_migration_names_its_release_and_releases_only_go_forward() {
    refused(
        Dialect::Sqlite,
        &["CREATE TABLE t (x INTEGER);"],
        "no `-- release: X.Y.Z` header",
    );
    refused(
        Dialect::Sqlite,
        &["-- release: 0.2\nCREATE TABLE t (x INTEGER);"],
        "is not X.Y.Z",
    );
    refused(
        Dialect::Sqlite,
        &["-- release: 0.1.9\nCREATE TABLE t (x INTEGER);"],
        "releases only go forward",
    );
}

#[test]
fn removals_and_changes_outside_a_contract_are_refused() {
    for statement in [
        "ALTER TABLE messages DROP COLUMN tenant;",
        "ALTER TABLE messages RENAME COLUMN tenant TO owner;",
        "ALTER TABLE messages RENAME TO msgs;",
        "ALTER TABLE messages ALTER COLUMN tenant TYPE bytea;",
        "ALTER TABLE messages ALTER COLUMN tenant SET NOT NULL;",
        "DROP TABLE messages;",
        "DROP INDEX IF EXISTS by_tenant;",
        "ALTER INDEX by_tenant RENAME TO by_owner;",
    ] {
        refused(
            Dialect::Postgres,
            &[&format!("-- release: 0.3.0\n{statement}")],
            "only a contract migration",
        );
    }
}

#[test]
fn what_is_not_an_addition_is_refused() {
    for (statement, why) in [
        (
            "ALTER TABLE messages ADD COLUMN n INTEGER NOT NULL;",
            "needs a DEFAULT",
        ),
        (
            "ALTER TABLE messages ADD CONSTRAINT c CHECK (tenant <> '');",
            "new constraint",
        ),
        (
            "UPDATE messages SET tenant = 'x';",
            "not an additive statement",
        ),
        (
            "CREATE OR REPLACE VIEW v AS SELECT 1;",
            "not an additive statement",
        ),
        (
            "ALTER TABLE messages ADD COLUMN a TEXT, DROP COLUMN tenant;",
            "only a contract migration",
        ),
    ] {
        refused(
            Dialect::Sqlite,
            &[&format!("-- release: 0.3.0\n{statement}")],
            why,
        );
    }
}

#[test]
fn postgres_indexes_are_built_concurrently_outside_a_transaction() {
    refused(
        Dialect::Postgres,
        &["-- release: 0.3.0\nCREATE INDEX by_x ON messages (tenant);"],
        "CONCURRENTLY",
    );
    refused(
        Dialect::Postgres,
        &["-- release: 0.3.0\nCREATE INDEX CONCURRENTLY by_x ON messages (tenant);"],
        "needs `-- no-transaction`",
    );
    refused(
        Dialect::Postgres,
        &[
            "-- no-transaction\n-- release: 0.3.0\nCREATE INDEX CONCURRENTLY a ON messages (tenant);\nCREATE INDEX CONCURRENTLY b ON messages (id);",
        ],
        "holds one statement",
    );
    // SQLite has no CONCURRENTLY: a plain index is the additive form.
    allowed(
        Dialect::Sqlite,
        &["-- release: 0.3.0\nCREATE UNIQUE INDEX by_x ON messages (tenant, id);"],
    );
}

#[test]
fn a_contract_removes_only_what_was_deprecated_two_releases_before() {
    let deprecate = "-- release: 0.3.0\n-- deprecates: messages.tenant, by_tenant\nALTER TABLE messages ADD COLUMN owner TEXT;";
    allowed(
        Dialect::Postgres,
        &[
            deprecate,
            "-- release: 0.5.0\n-- contract: deprecated-by 2\nALTER TABLE messages DROP COLUMN tenant;\nDROP INDEX IF EXISTS by_tenant;",
        ],
    );
    // A new major is far enough.
    allowed(
        Dialect::Postgres,
        &[
            deprecate,
            "-- release: 1.0.0\n-- contract: deprecated-by 2\nALTER TABLE messages DROP COLUMN tenant;",
        ],
    );
    refused(
        Dialect::Postgres,
        &[
            deprecate,
            "-- release: 0.4.0\n-- contract: deprecated-by 2\nALTER TABLE messages DROP COLUMN tenant;",
        ],
        "at least two releases later",
    );
    refused(
        Dialect::Postgres,
        &[
            deprecate,
            "-- release: 0.5.0\n-- contract: deprecated-by 2\nALTER TABLE messages DROP COLUMN id;",
        ],
        "does not list",
    );
    refused(
        Dialect::Postgres,
        &[
            deprecate,
            "-- release: 0.5.0\n-- contract: deprecated-by 9\nALTER TABLE messages DROP COLUMN tenant;",
        ],
        "not an earlier migration",
    );
    refused(
        Dialect::Postgres,
        &[
            "-- release: 0.3.0\nALTER TABLE messages ADD COLUMN owner TEXT;",
            "-- release: 0.5.0\n-- contract: deprecated-by 2\nALTER TABLE messages DROP COLUMN tenant;",
        ],
        "deprecates nothing",
    );
    refused(
        Dialect::Postgres,
        &[
            deprecate,
            "-- release: 0.5.0\n-- contract: 2\nALTER TABLE messages DROP COLUMN tenant;",
        ],
        "deprecated-by <version>",
    );
}

#[test]
fn statements_ignore_comments_and_quoted_separators() {
    let s = statements(
        "-- a; b\nCREATE TABLE t (x TEXT DEFAULT 'a;--b'); -- c\n\nCREATE INDEX i ON t (x);\n",
    );
    assert_eq!(
        s,
        vec![
            "CREATE TABLE t (x TEXT DEFAULT 'a;--b')",
            "CREATE INDEX i ON t (x)"
        ]
    );
}
