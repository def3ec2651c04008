//! The Kubernetes control plane of a test: the `e2e/controlplane` binary (etcd,
//! kube-apiserver, garbage collector, namespace controller) as a child process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::kubectl::{Kubectl, wait_until};
use crate::logs::LogDir;
use crate::process::Process;
use crate::workspace;

/// How long the control plane may take to print `ready` (it takes seconds; CI is slower).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A running control plane. Dropping it stops the process and removes its data.
pub struct ControlPlane {
    // Declared before `data`, so the process stops before its directory goes.
    process: Option<Process>,
    binary: PathBuf,
    data: TempDir,
    log_dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    starts: u32,
}

impl ControlPlane {
    /// Starts the binary named by `$FLEETWARD_CONTROLPLANE` (what
    /// `scripts/controlplane.sh` prints) and waits until it is ready.
    pub fn start(logs: &LogDir) -> Result<Self> {
        let binary = workspace::binary_from_env(
            "FLEETWARD_CONTROLPLANE",
            "the binary that scripts/controlplane.sh builds and prints",
        )?;
        let data = tempfile::Builder::new()
            .prefix("fleetward-e2e-controlplane-")
            .tempdir()
            .context("create a data directory for the control plane")?;
        let mut plane = Self {
            process: None,
            binary,
            data,
            log_dir: logs.path().to_owned(),
            kubeconfig: PathBuf::new(),
            server: String::new(),
            starts: 0,
        };
        plane.launch()?;
        Ok(plane)
    }

    /// The admin kubeconfig (user in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A kubectl for this cluster that logs into the test's log directory.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.kubeconfig, &self.log_dir)
    }

    /// Stops the control plane (SIGTERM, as a rolling restart would) and starts it
    /// again on the same data: same objects, same address, same kubeconfig.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Stops the control plane, keeping its data for [`ControlPlane::restart`].
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            let status = process.stop()?;
            if !status.success() {
                anyhow::bail!(
                    "the control plane exited with {status} on SIGTERM; see {}",
                    process.log_path().display()
                );
            }
        }
        Ok(())
    }

    fn launch(&mut self) -> Result<()> {
        self.starts += 1;
        let name = match self.starts {
            1 => "controlplane".to_owned(),
            n => format!("controlplane-{n}"),
        };
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--data-dir").arg(self.data.path());
        let mut process = Process::spawn(&name, cmd, &self.log_dir)?;
        let mut kubeconfig = None;
        let mut server = None;
        process.wait_for_line(READY_TIMEOUT, |line| {
            if let Some(path) = line.strip_prefix("kubeconfig: ") {
                kubeconfig = Some(PathBuf::from(path));
            } else if let Some(url) = line.strip_prefix("server: ") {
                server = Some(url.to_owned());
            }
            (line == "ready").then_some(())
        })?;
        self.kubeconfig =
            kubeconfig.context("the control plane said ready without printing its kubeconfig")?;
        self.server =
            server.context("the control plane said ready without printing its server URL")?;
        self.process = Some(process);
        Ok(())
    }

    /// Applies the six Fleetward CRDs (generated from the Rust types, as
    /// `fleetward crds` prints them) and waits until the API serves them.
    pub fn apply_crds(&self) -> Result<()> {
        let kubectl = self.kubectl();
        let stream = fleetward_crds::yaml_stream().context("render the Fleetward CRDs")?;
        kubectl.apply(&stream)?;
        let names: Vec<String> = fleetward_crds::all()
            .iter()
            .filter_map(|crd| crd.metadata.name.as_ref().map(|n| format!("crd/{n}")))
            .collect();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        kubectl.run(&args)?;
        // Discovery lags the Established condition by a moment; poll until every kind resolves.
        wait_until(
            "the Fleetward kinds in discovery",
            Duration::from_secs(60),
            || {
                let out = kubectl.call(
                    &["api-resources", "--api-group=fleetward.io", "-o", "name"],
                    None,
                )?;
                Ok(out.success
                    && fleetward_crds::all().iter().all(|crd| {
                        out.stdout
                            .lines()
                            .any(|l| Some(l) == crd.metadata.name.as_deref())
                    }))
            },
        )?;
        Ok(())
    }
}
