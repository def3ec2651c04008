//! The `fleetward` binary: one entry point for every mode of the platform.

mod cli;
mod cluster;
mod inspect;
mod local;
mod start;

use std::process::ExitCode;

use clap::Parser;

/// Every mode runs on jemalloc (see the dependency's note in Cargo.toml).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    cli::Cli::parse().run()
}
