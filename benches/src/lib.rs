//! Fleetward's benchmark suite: a load generator that drives any MQTT broker the same way, and
//! the shared names and policy of the Fleetward target.
//!
//! The binaries:
//! - `fleetward-bench`: the load generator (point-to-point, fan-out, fan-in, fixed-rate
//!   latency, CONNECT storm, idle connections, pending sockets), optionally under a flood of
//!   unauthenticated sockets ([`flood`]); one line of `key=value` results per run.
//! - `bench-fleetward`: the Fleetward dataplane with authorization on and [`fixture::policy`];
//!   with `--tls-dir`, an MQTTS listener too and a device CA for the tenant ([`tls`]).
//! - `bench-rumqttd`: bare rumqttd, the router the dataplane embeds, as a plain broker.
//!
//! `scripts/bench-suite.sh` runs them, with Mosquitto, and writes `BENCHMARKS.md`.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod conns;
pub mod fixture;
pub mod flood;
pub mod load;
pub mod tls;
pub mod wire;
