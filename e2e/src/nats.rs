//! A `nats-server` on a free loopback port, the bus between dataplane processes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::ports::{free_port, loopback, wait_for_listener};
use crate::process::Process;

/// A running nats-server (from PATH: scripts/install-tools.sh builds it; `$NATS_SERVER` to override).
pub struct Nats {
    process: Process,
    port: u16,
    jetstream: bool,
    log_dir: std::path::PathBuf,
    starts: u32,
}

impl Nats {
    /// Starts nats-server on 127.0.0.1 and waits until it accepts connections.
    pub fn start(log_dir: &Path) -> Result<Self> {
        Self::start_with(log_dir, false)
    }

    /// [`Nats::start`] with JetStream on, its store under `log_dir` (the history stream).
    pub fn start_jetstream(log_dir: &Path) -> Result<Self> {
        Self::start_with(log_dir, true)
    }

    fn start_with(log_dir: &Path, jetstream: bool) -> Result<Self> {
        let port = free_port()?;
        let process = Self::spawn(log_dir, port, jetstream, "nats-server")?;
        Ok(Self {
            process,
            port,
            jetstream,
            log_dir: log_dir.to_owned(),
            starts: 1,
        })
    }

    /// Stops it (SIGTERM) and starts it again on the same port and JetStream store, as a
    /// restarted NATS pod with its volume; its log `nats-server-<n>.log`.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Starts it again after [`Nats::stop`], on the same port and store.
    pub fn start_again(&mut self) -> Result<()> {
        self.starts += 1;
        let name = format!("nats-server-{}", self.starts);
        self.process = Self::spawn(&self.log_dir, self.port, self.jetstream, &name)?;
        Ok(())
    }

    fn spawn(log_dir: &Path, port: u16, jetstream: bool, name: &str) -> Result<Process> {
        let bin = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
        let mut cmd = Command::new(bin);
        cmd.args(["--addr", "127.0.0.1", "--port", &port.to_string()]);
        if jetstream {
            cmd.arg("-js").arg("-sd").arg(log_dir.join("jetstream"));
        }
        let mut process = Process::spawn(name, cmd, log_dir)?;
        if let Err(err) = wait_for_listener(loopback(port), Duration::from_secs(20)) {
            let running = process.is_running();
            anyhow::bail!(
                "nats-server {} ({err:#}); see {} (scripts/install-tools.sh installs it)",
                if running {
                    "is not listening"
                } else {
                    "exited"
                },
                process.log_path().display()
            );
        }
        Ok(process)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it (SIGTERM), for a test of what the dataplanes do without a bus.
    pub fn stop(&mut self) -> Result<()> {
        self.process.stop().map(|_| ())
    }
}
