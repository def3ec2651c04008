//! The `fleetward` binary: one entry point for every mode of the platform.

mod cli;
mod cluster;
mod inspect;
mod local;
mod start;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::Cli::parse().run()
}
