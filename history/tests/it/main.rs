//! The history crate's integration tests, with real servers (nats-server; PostgreSQL where
//! `FLEETWARD_POSTGRES_URL` is set).

mod nats;
mod stream;
