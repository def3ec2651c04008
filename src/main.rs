//! The `fleetward` binary: one entry point for every mode of the platform.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

mod certs;
mod cli;
mod cluster;
mod control;
mod history;
mod inspect;
mod local;
mod provisioning;
mod start;
mod writer;

use std::process::ExitCode;

use clap::Parser;

/// Every mode runs on jemalloc (see the dependency's note in Cargo.toml).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: its background thread returns freed pages to the
/// system after their decay time even while the process is idle, so what a flood of clients
/// made it hold goes back once they are gone. Without it, pages are only purged on later
/// allocator activity. `_RJEM_MALLOC_CONF` still overrides these at run time.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 23] = b"background_thread:true\0";

fn main() -> ExitCode {
    cli::Cli::parse().run()
}
