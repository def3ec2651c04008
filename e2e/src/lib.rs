//! End-to-end harness: a real control plane, kubectl, NATS and the Fleetward processes, torn down with their test.
//!
//! A test runs inside [`run_test`], which gives it a log directory and prints and
//! keeps the logs when it fails. Everything it starts is a guard that stops its
//! process group when dropped, also while a panic unwinds.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod argocd;
pub mod chart;
pub mod controlplane;
pub mod fault;
pub mod fleetward;
pub mod kubectl;
pub mod logs;
pub mod nats;
pub mod policysync;
pub mod ports;
pub mod process;
pub mod workspace;

pub use controlplane::ControlPlane;
pub use kubectl::{Kubectl, KubectlOutput, wait_every, wait_until};
pub use logs::{LogDir, run_test};
pub use nats::Nats;
pub use process::Process;
