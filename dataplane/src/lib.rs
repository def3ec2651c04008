//! The dataplane: the policy sync client, the MQTT front-end, the HTTP and WebSocket adapters, the
//! audit trail and the bus between pods.

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
pub mod router;
mod run;
pub mod sync;
pub mod users;
pub mod web;
pub mod ws;

pub use args::{DataplaneArgs, LimitArgs};
pub use dataplane::{DEFAULT_MAX_PENDING, Dataplane, RunningDataplane};
pub use ingress::MqttConfig;
pub use listener::{HttpLimits, RESERVED_FILES, raise_open_files_limit};
pub use run::{run, shutdown_signal};
