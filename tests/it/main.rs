//! The `fleetward` package's integration tests, one binary so that they compile and link once: the
//! real `fleetward` binary run as a user runs it (one module per area, each was a test file of its
//! own), and the operator's PolicySync server against the dataplane's sync client (`sync`), which
//! lives here because only this package depends on both.

// Shared support, used by several test modules.
mod support;

// One module per area (each was its own test binary).
mod can_i;
mod cedar;
mod cli;
mod conformance;
mod dataplane_processes;
mod device_certs;
mod drain;
mod history;
mod history_faults;
mod hostile;
mod provisioning;
mod session_restart;
mod start;
mod sync;
