//! Fault tests' harness (e2e/tests/fault.rs): a fleet of 106 MQTT v5 clients with persistent
//! sessions under a steady QoS 1 load on three dataplanes ([`cluster`], [`load`]), an account of
//! every message ([`ledger`]), and the checks of issue 25's table.
//!
//! The load rate is `FLEETWARD_FAULT_RATE` messages a second per device and per sensor
//! (default 2: about 100 commands and 100 telemetry messages a second, 400 deliveries).

pub mod cluster;
pub mod ledger;
pub mod load;
pub mod mqtt;

use std::time::Duration;

use anyhow::{Result, bail};

pub use cluster::FaultCluster;
pub use ledger::Report;
pub use load::Load;

/// Messages a second per device and per sensor, from `FLEETWARD_FAULT_RATE` (default 2).
pub fn rate() -> Result<f64> {
    match std::env::var("FLEETWARD_FAULT_RATE") {
        Err(_) => Ok(2.0),
        Ok(text) => match text.parse::<f64>() {
            Ok(r) if r > 0.0 && r <= 100.0 => Ok(r),
            _ => bail!("FLEETWARD_FAULT_RATE={text:?}: give messages a second, above 0, up to 100"),
        },
    }
}

/// Starts the load on `cluster` and waits until it flows.
pub fn start_load(cluster: &FaultCluster) -> Result<Load> {
    let load = Load::start(
        cluster.pods(),
        cluster::client_names(),
        cluster.roles(rate()?)?,
    )?;
    load.publish(true);
    load.wait_flowing(200, Duration::from_secs(60))?;
    Ok(load)
}

/// What the table asks of a phase with persistent sessions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Must {
    /// Every reconnect resumes its session (`session present = 1`).
    pub sessions_resume: bool,
    /// No client is disconnected more than once, and only by DISCONNECT 0x8B (a graceful drain).
    pub graceful: bool,
    /// No client is disconnected at all.
    pub no_disconnects: bool,
}

/// Prints one line per phase (`FAULT <test> <phase>: …`), then fails with every broken must:
/// nothing accepted lost, no delivery to a client it was not for, no extra copy without DUP, and
/// `must` of each fault phase.
pub fn check(test: &str, reports: &[Report], must: Must) -> Result<()> {
    let mut broken = Vec::new();
    for r in reports {
        // A line of its own: the test harness leaves "test <name> ... " unterminated.
        println!("\nFAULT {test} {r}");
        let p = &r.phase;
        if r.accepted == 0 {
            broken.push(format!("{p}: no message was accepted"));
        }
        if r.lost > 0 {
            broken.push(format!(
                "{p}: {} accepted messages lost (e.g. {})",
                r.lost,
                r.lost_examples.join(", ")
            ));
        }
        if r.strays > 0 {
            broken.push(format!(
                "{p}: {} deliveries to a client they were not for",
                r.strays
            ));
        }
        if r.duplicated_without_dup > 0 {
            broken.push(format!(
                "{p}: {} extra copies without DUP (e.g. {})",
                r.duplicated_without_dup,
                r.duplicate_examples.join(", ")
            ));
        }
        if p == "before" {
            continue;
        }
        if must.sessions_resume && r.session_present < r.reconnects {
            broken.push(format!(
                "{p}: {} of {} reconnects without session present",
                r.reconnects - r.session_present,
                r.reconnects
            ));
        }
        if must.graceful
            && (r.most_disconnects_per_client > 1 || r.disconnects_0x8b < r.disconnects)
        {
            broken.push(format!(
                "{p}: {} disconnects not by DISCONNECT 0x8B, at most {} for one client",
                r.disconnects - r.disconnects_0x8b,
                r.most_disconnects_per_client
            ));
        }
        if must.no_disconnects && r.disconnects > 0 {
            broken.push(format!("{p}: {} clients disconnected", r.disconnects));
        }
        if matches!(r.recovered_in, Some(None)) {
            broken.push(format!(
                "{p}: a subscriber never received a message after the fault"
            ));
        }
    }
    if !broken.is_empty() {
        bail!("{test}: {}", broken.join("; "));
    }
    Ok(())
}
