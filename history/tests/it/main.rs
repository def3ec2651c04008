//! The history stores' tests, one binary: the same behaviour suite over SQLite and a real
//! PostgreSQL (`FLEETWARD_POSTGRES_URL`, from scripts/postgres.sh), PostgreSQL's partitions and
//! concurrent migrations, and the migration rules, fixtures and upgrades.

mod behaviour;
mod migrations;
mod postgres;
mod support;
