//! The dataplane's integration tests, one binary so that they compile and link once: one module
//! per area (each was a test file of its own) beside the support modules they share.

// Shared support, used by several test modules.
mod adapters;
mod bus_support;
mod common;

// One module per area (each was its own test binary).
mod audit;
mod batching;
mod bus;
mod client_certs;
mod delivery_and_isolation;
mod durable_sessions;
mod history;
mod http_openapi;
mod http_publish;
mod inflight;
mod limits;
mod mosquitto_and_paho;
mod mqtt5_session;
mod packet_limits;
mod persistent_lifecycle;
mod persistent_sessions;
mod quotas;
mod refusals_and_revocation;
mod router_filters;
mod semantics;
mod shared_subscriptions;
mod tls_and_admin;
mod users;
mod v5_features;
mod ws_mqtt;
mod ws_streams;
