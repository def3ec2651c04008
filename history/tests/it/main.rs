//! The history crate's tests, one binary: the same behaviour suite over SQLite and a real
//! PostgreSQL (`FLEETWARD_POSTGRES_URL`, from scripts/postgres.sh), PostgreSQL's partitions and
//! concurrent migrations, the migration rules, fixtures and upgrades, and the JetStream stream
//! of cluster mode on a real nats-server.

mod behaviour;
mod migrations;
mod nats;
mod postgres;
mod stream;
mod support;
