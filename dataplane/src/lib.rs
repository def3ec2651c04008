//! The dataplane: policy sync client, MQTT front-end, HTTP and WebSocket adapters, the bus. Filled by the dataplane issues.

mod admin;
mod args;
pub mod bus;
mod dataplane;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod mqtt;
pub mod router;
mod run;
pub mod sync;
pub mod users;
pub mod ws;

pub use args::DataplaneArgs;
pub use dataplane::{Dataplane, RunningDataplane};
pub use mqtt::MqttConfig;
pub use run::{run, shutdown_signal};
