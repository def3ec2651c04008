//! Fleetward's dataplane: it enforces the policy the operator pushes on every message that
//! comes in by MQTT, HTTP or WebSocket, and routes what it allows.
//!
//! The modules, from the bottom up (no module imports one above it, and siblings do not import
//! each other in a circle: `layout_tests.rs` checks it):
//!
//! - [`router`]: the message router (rumqttd) behind the [`router::Router`] trait, and
//!   [`bus`]: the same router across pods over NATS. [`metrics`], [`limits`] and `listener`
//!   (sockets counted from accept, pending ones evicted first) are leaves beside them.
//! - [`audit`]: one structured event for every refusal on every protocol.
//! - `ingress`: the core the adapters share as peers: the pod's state (`Ingress`), subject
//!   authentication (thing keys, user sign-in and tokens), the one publish path and its limits,
//!   the retained store, connection slots, and the HTTP error type.
//! - The adapters, each on `ingress` only: [`mqtt`] (the MQTT front-end over TCP, TLS and
//!   WebSocket), [`http`] (HTTP publish and the audit trail), [`ws`] (JSON streams of a
//!   channel), [`users`] (sign-in endpoints).
//! - [`web`]: the HTTP listener that mounts the HTTP-facing adapters; `admin` (probes and
//!   `/metrics`); [`sync`]: the PolicySync client that feeds the policy.
//! - [`Dataplane`] (`dataplane.rs`) wires them together; [`run`] is the `fleetward dataplane`
//!   command.
// Functions a reader can hold in their head: `clippy.toml` sets the bound (80 lines).
#![warn(clippy::too_many_lines)]

mod admin;
mod args;
pub mod audit;
pub mod bus;
mod dataplane;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod ingress;
#[cfg(test)]
mod layout_tests;
pub mod limits;
mod listener;
pub mod metrics;
pub mod mqtt;
pub mod provisioning;
pub mod router;
mod run;
mod shutdown;
pub mod sync;
mod tls;
pub mod users;
pub mod web;
pub mod ws;

pub use args::{DataplaneArgs, LimitArgs};
pub use dataplane::{DEFAULT_MAX_PENDING, Dataplane, RunningDataplane, SessionSaver};
pub use ingress::{History, HistorySink, MqttConfig};
pub use listener::{HttpLimits, RESERVED_FILES, raise_open_files_limit};
pub use mqtt::SessionCounts;
pub use run::{run, shutdown_signal};
pub use shutdown::DrainReport;
