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
    args: Vec<String>,
    kubeconfig: PathBuf,
    server: String,
    starts: u32,
}

impl ControlPlane {
    /// Starts the binary named by `$FLEETWARD_CONTROLPLANE` (what
    /// `scripts/controlplane.sh` prints) and waits until it is ready.
    pub fn start(logs: &LogDir) -> Result<Self> {
        Self::start_with(logs, false)
    }

    /// Like [`ControlPlane::start`], with the Fleetward CRDs installed before the
    /// controllers start: the garbage collector then knows the Fleetward kinds from
    /// its first sync, and a Thing's Secret goes with the Thing at once (applied
    /// later, the collector needs up to 30 s or more to notice new kinds).
    pub fn start_with_crds(logs: &LogDir) -> Result<Self> {
        Self::start_with(logs, true)
    }

    fn start_with(logs: &LogDir, crds: bool) -> Result<Self> {
        let binary = workspace::binary_from_env(
            "FLEETWARD_CONTROLPLANE",
            "the binary that scripts/controlplane.sh builds and prints",
        )?;
        let data = tempfile::Builder::new()
            .prefix("fleetward-e2e-controlplane-")
            .tempdir()
            .context("create a data directory for the control plane")?;
        let mut args = vec!["--data-dir".to_owned(), path_arg(data.path())?];
        if crds {
            let file = data.path().join("fleetward-crds.yaml");
            let stream = fleetward_crds::yaml_stream().context("render the Fleetward CRDs")?;
            std::fs::write(&file, stream).with_context(|| format!("write {}", file.display()))?;
            args.push("--crds".to_owned());
            args.push(path_arg(&file)?);
        }
        let mut plane = Self {
            process: None,
            binary,
            data,
            log_dir: logs.path().to_owned(),
            args,
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

    /// Where etcd's data, the certificates and the kubeconfig live.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The process id of the running control plane (for CPU and memory figures).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
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

    /// Starts the control plane again after [`ControlPlane::stop`], on the same data and address.
    pub fn start_again(&mut self) -> Result<()> {
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
        cmd.args(&self.args);
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

    /// Waits until the garbage collector knows the Fleetward kinds, and returns how long
    /// that took. It rediscovers API kinds only every 30 s, so until then a Secret owned
    /// by a deleted Thing stays. A probe Channel owning a ConfigMap is deleted, and
    /// the ConfigMap's collection shows the collector has synced all kinds served then.
    /// Call it after [`ControlPlane::apply_crds`], in tests that rely on cascades.
    pub fn wait_for_garbage_collector(&self) -> Result<Duration> {
        const NS: &str = "fleetward-e2e-gc-probe";
        let kubectl = self.kubectl();
        let start = std::time::Instant::now();
        kubectl.run(&["create", "namespace", NS])?;
        kubectl.apply(
            &serde_json::json!({
                "apiVersion": "fleetward.io/v1alpha1",
                "kind": "Channel",
                "metadata": {"name": "probe", "namespace": NS},
                "spec": {},
            })
            .to_string(),
        )?;
        let channel = kubectl.get_json(&["channel", "probe", "-n", NS])?;
        let uid = channel["metadata"]["uid"]
            .as_str()
            .context("the probe Channel has no metadata.uid")?;
        kubectl.apply(
            &serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "probe",
                    "namespace": NS,
                    "ownerReferences": [{
                        "apiVersion": "fleetward.io/v1alpha1",
                        "kind": "Channel",
                        "name": "probe",
                        "uid": uid,
                    }],
                },
            })
            .to_string(),
        )?;
        kubectl.run(&["delete", "channel", "probe", "-n", NS])?;
        wait_until(
            "the garbage collector to collect a dependent of a Fleetward resource",
            Duration::from_secs(120),
            || Ok(!kubectl.exists(&["configmap", "probe", "-n", NS])?),
        )?;
        kubectl.run(&["delete", "namespace", NS, "--wait=false"])?;
        Ok(start.elapsed())
    }
}

fn path_arg(path: &Path) -> Result<String> {
    path.to_str().map(str::to_owned).with_context(|| {
        format!(
            "{} is not UTF-8; set TMPDIR to a plain path",
            path.display()
        )
    })
}
