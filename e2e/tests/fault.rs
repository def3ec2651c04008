//! Fault tests (issue 25): three dataplanes on NATS with JetStream, the operator on the real API
//! server, and a steady QoS 1 load of 50 persistent-session devices receiving commands and 50
//! sensors publishing telemetry to three persistent-session collectors, every client moving to
//! another pod when its connection ends. Each test does one fault, prints one `FAULT` line per
//! phase (accepted, delivered, lost, duplicated, recovery) and fails on what issue 25's table
//! forbids. `fault_kill9_one_dataplane` is the CI smoke (scripts/test.sh); the others are run by
//! scripts/bench-suite.sh. See e2e/README.md.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleetward_e2e::fault::cluster::{self, PROBE, PROBE_GRANT, SETTLE, TENANT};
use fleetward_e2e::fault::{FaultCluster, Load, Must, check, start_load};
use fleetward_e2e::fleetward::http_get;
use fleetward_e2e::{Kubectl, run_test, wait_every, wait_until};

/// The load runs this long before the first fault (the "before" phase).
const BEFORE: Duration = Duration::from_secs(10);
/// … and this long after the last, for the clients to settle.
const AFTER: Duration = Duration::from_secs(15);

/// Stops the load once every accepted message had its chance, and checks it.
fn finish(test: &str, load: Load, must: Must) -> Result<()> {
    let reports = load.finish(Duration::from_secs(10), Duration::from_secs(60));
    check(test, &reports, must)
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh (the CI smoke of the fault tests)"]
fn fault_kill9_one_dataplane() {
    run_test("fault-kill9", |logs| {
        let mut fleet = FaultCluster::start(logs)?;
        let load = start_load(&fleet)?;
        std::thread::sleep(BEFORE);
        load.fault("kill -9 dataplane-0");
        fleet.kill_dataplane(0)?;
        std::thread::sleep(AFTER);
        let must = Must {
            sessions_resume: true,
            ..Must::default()
        };
        finish("kill9", load, must)
    });
}
