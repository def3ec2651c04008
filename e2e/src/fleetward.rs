//! The Fleetward processes under test: operator replicas and dataplane processes, started
//! from the `fleetward` binary with the args and env the Helm chart renders for their pods.
//!
//! Each spawn renders the chart (`helm template`) and takes the container's command line from
//! it, replacing only what differs between a pod and a local process: listen addresses, the
//! operator URLs, the state directory, the token file's path and the pod's own name and
//! namespace. So the chart and the binaries cannot drift apart unnoticed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::chart::{self, RELEASE};
use crate::ports::{free_ports, loopback};
use crate::process::Process;
use crate::workspace;

/// How long a Fleetward process may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The namespace the operator's Lease lives in, as the chart installs it.
pub const OPERATOR_NAMESPACE: &str = "fleetward-system";

/// Which Fleetward a process runs: its binary, and the chart that renders its pods' command
/// lines. The version-skew test runs the current one beside a release baseline's.
#[derive(Debug, Clone)]
pub struct Release {
    /// What logs and messages call it: `current`, or the baseline's version.
    pub name: String,
    /// The `fleetward` binary.
    pub binary: PathBuf,
    /// The chart's directory (`Chart.yaml` and `templates/`).
    pub chart: PathBuf,
}

impl Release {
    /// The tree under test: `target/debug/fleetward` (or `$FLEETWARD_BIN`) and
    /// `charts/fleetward`.
    pub fn current() -> Result<Self> {
        Ok(Self {
            name: "current".into(),
            binary: workspace::fleetward_binary()?,
            chart: chart::chart_dir(),
        })
    }

    /// The release baseline `scripts/baseline.sh` built, in `$FLEETWARD_BASELINE`.
    pub fn baseline() -> Result<Self> {
        let how = "the directory `scripts/baseline.sh VERSION | tail -n1` prints";
        let Some(dir) = std::env::var_os("FLEETWARD_BASELINE") else {
            bail!("set FLEETWARD_BASELINE to {how}");
        };
        let dir = PathBuf::from(dir);
        let (binary, chart) = (dir.join("fleetward"), dir.join("chart"));
        if !binary.is_file() || !chart.join("Chart.yaml").is_file() {
            bail!(
                "FLEETWARD_BASELINE={} holds no fleetward binary and chart; set it to {how}",
                dir.display()
            );
        }
        // `baseline-<version>-<commit>`, as the script names it.
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("baseline-"))
            .and_then(|n| n.split('-').next())
            .unwrap_or("baseline")
            .to_owned();
        Ok(Self {
            name,
            binary,
            chart,
        })
    }
}

/// One operator replica.
pub struct Operator {
    /// The running process.
    pub process: Process,
    /// Its replica id (the pod name in a cluster; the Lease holder identity).
    pub id: String,
    /// PolicySync (gRPC) listener.
    pub sync_addr: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// Where it saves what it watched (`--state-dir`), for a restart to resume from.
    pub state_dir: PathBuf,
}

impl Operator {
    /// Starts replica `id` against the cluster in `kubeconfig`, with PolicySync
    /// authenticated by `sync_token`, and waits until it is ready (watches synced).
    ///
    /// The command line is the chart's (default values, [`operator_values`]).
    pub fn start(id: &str, kubeconfig: &Path, sync_token: &str, log_dir: &Path) -> Result<Self> {
        Self::start_release(&Release::current()?, id, kubeconfig, sync_token, log_dir)
    }

    /// Like [`Operator::start`], running `release`.
    pub fn start_release(
        release: &Release,
        id: &str,
        kubeconfig: &Path,
        sync_token: &str,
        log_dir: &Path,
    ) -> Result<Self> {
        let [sync_port, admin_port] = free_ports()?;
        let (sync_addr, admin_addr) = (loopback(sync_port), loopback(admin_port));
        let addrs = (sync_addr, admin_addr);
        let state_dir = Self::state_dir_of(log_dir, id);
        let mut op = Self::launch_release(
            release, id, &state_dir, kubeconfig, sync_token, log_dir, addrs,
        )?;
        wait_ready(&mut op.process, admin_addr)?;
        Ok(op)
    }

    /// Like [`Operator::start`] on the given listeners, but returns as soon as the process is
    /// spawned: for a test that times the start-up, or a replacement that takes over the
    /// listeners of a stopped replica so its dataplanes reconnect to it.
    pub fn launch(
        id: &str,
        kubeconfig: &Path,
        sync_token: &str,
        log_dir: &Path,
        sync_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Result<Self> {
        let state_dir = Self::state_dir_of(log_dir, id);
        let release = Release::current()?;
        let addrs = (sync_addr, admin_addr);
        Self::launch_release(
            &release, id, &state_dir, kubeconfig, sync_token, log_dir, addrs,
        )
    }

    /// Replica `id`'s own state directory under `log_dir`.
    fn state_dir_of(log_dir: &Path, id: &str) -> PathBuf {
        log_dir.join("operator-state").join(id)
    }

    /// Like [`Operator::launch`], running `release` and saving its state in `state_dir`: a
    /// restart of a stopped replica, given the replica's [`Operator::state_dir`], resumes from
    /// what it saved. With no state there, it lists: the harness has no Service to seed from.
    pub fn launch_release(
        release: &Release,
        id: &str,
        state_dir: &Path,
        kubeconfig: &Path,
        sync_token: &str,
        log_dir: &Path,
        addrs: (SocketAddr, SocketAddr),
    ) -> Result<Self> {
        let launch = (addrs, "");
        Self::spawn(
            release, id, state_dir, kubeconfig, sync_token, log_dir, launch,
        )
    }

    /// Like [`Operator::launch`], a new replica (its state directory empty) that starts from
    /// the saved state of the running replica at `peer_url`, as the chart's new pods do with
    /// the operator's Service (`--seed-from`).
    pub fn launch_seeded(
        id: &str,
        kubeconfig: &Path,
        sync_token: &str,
        log_dir: &Path,
        addrs: (SocketAddr, SocketAddr),
        peer_url: &str,
    ) -> Result<Self> {
        let (release, state_dir) = (Release::current()?, Self::state_dir_of(log_dir, id));
        let launch = (addrs, peer_url);
        Self::spawn(
            &release, id, &state_dir, kubeconfig, sync_token, log_dir, launch,
        )
    }

    /// Spawns replica `id` on `addrs`, seeding from `seed_from` (empty: none).
    fn spawn(
        release: &Release,
        id: &str,
        state_dir: &Path,
        kubeconfig: &Path,
        sync_token: &str,
        log_dir: &Path,
        ((sync_addr, admin_addr), seed_from): ((SocketAddr, SocketAddr), &str),
    ) -> Result<Self> {
        let rendered =
            chart::template_of(&release.chart, OPERATOR_NAMESPACE, &[], &operator_values())?;
        let container = rendered.container(&format!("{RELEASE}-operator"), "operator")?;
        let token_file = write_token(log_dir, id, sync_token)?;
        let mut flags = BTreeMap::from([
            ("--grpc-listen", sync_addr.to_string()),
            ("--admin-listen", admin_addr.to_string()),
            ("--token-file", path_string(&token_file)?),
        ]);
        // Releases before the operator saved its state do not pass it.
        if container.flag("--state-dir").is_some() {
            flags.insert("--state-dir", path_string(state_dir)?);
        }
        // Nor, before new replicas started from a peer's state, the peer to ask.
        if container.flag("--seed-from").is_some() {
            flags.insert("--seed-from", seed_from.to_owned());
        } else {
            ensure!(
                seed_from.is_empty(),
                "release {} cannot start from a peer's state",
                release.binary.display()
            );
        }
        let fields = BTreeMap::from([
            ("metadata.name", id.to_owned()),
            ("metadata.namespace", OPERATOR_NAMESPACE.to_owned()),
        ]);
        let mut cmd = container.command(&release.binary, &flags, &fields)?;
        // What a pod's mounted service account gives the operator in a cluster.
        cmd.env("KUBECONFIG", kubeconfig);
        let process = Process::spawn(id, cmd, log_dir)?;
        Ok(Self {
            process,
            id: id.to_owned(),
            sync_addr,
            admin_addr,
            state_dir: state_dir.to_owned(),
        })
    }

    /// `http://<sync addr>`, what a dataplane's `--operator` takes.
    pub fn sync_url(&self) -> String {
        format!("http://{}", self.sync_addr)
    }
}

/// The values the harness renders the operator with: the chart's defaults, with debug logs.
pub fn operator_values() -> Value {
    json!({"operator": {"logLevel": LOG_LEVEL}})
}

/// The values the harness renders the dataplane with: the chart's defaults, with debug logs,
/// the bus in `nats_url`, or one pod and no bus without it.
pub fn dataplane_values(nats_url: Option<&str>) -> Value {
    match nats_url {
        Some(url) => json!({"nats": {"url": url}, "dataplane": {"logLevel": LOG_LEVEL}}),
        None => json!({
            "nats": {"url": ""},
            "dataplane": {"logLevel": LOG_LEVEL, "replicas": 1, "autoscaling": {"enabled": false}},
        }),
    }
}

/// RUST_LOG of the processes under test.
const LOG_LEVEL: &str = "info,fleetward=debug";

/// Writes the PolicySync token where the chart would mount it from its Secret.
fn write_token(log_dir: &Path, name: &str, token: &str) -> Result<PathBuf> {
    let path = log_dir.join(format!("{name}.sync-token"));
    std::fs::write(&path, token).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn path_string(path: &Path) -> Result<String> {
    path.to_str().map(str::to_owned).with_context(|| {
        format!(
            "{} is not UTF-8; set TMPDIR or FLEETWARD_E2E_LOGS to a plain path",
            path.display()
        )
    })
}

/// Starts `replicas` operator replicas (`operator-0`, `operator-1`, …): two where a
/// test needs leader election.
pub fn start_operators(
    replicas: usize,
    kubeconfig: &Path,
    sync_token: &str,
    log_dir: &Path,
) -> Result<Vec<Operator>> {
    (0..replicas)
        .map(|i| Operator::start(&format!("operator-{i}"), kubeconfig, sync_token, log_dir))
        .collect()
}

/// One dataplane process.
pub struct Dataplane {
    /// The running process.
    pub process: Process,
    /// Its node id in PolicySync.
    pub node_id: String,
    /// Where it persists its last-known-good snapshot; kept across restarts.
    pub state_dir: PathBuf,
    /// MQTT over TCP.
    pub mqtt_addr: SocketAddr,
    /// HTTP adapter and WebSocket endpoints.
    pub http_addr: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    config: DataplaneConfig,
    release: Release,
}

/// What a dataplane is started with, kept so a restart reuses it.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// PolicySync URLs of the operator replicas.
    pub operators: Vec<String>,
    /// The PolicySync token.
    pub sync_token: String,
    /// `nats://…` when several dataplanes share the bus; `None` for one alone.
    pub nats_url: Option<String>,
}

impl Dataplane {
    /// Starts dataplane `node_id` on free ports, with its state in `state_dir`,
    /// and waits until it is ready (a snapshot applied).
    ///
    /// The command line is the chart's ([`dataplane_values`]).
    pub fn start(
        node_id: &str,
        state_dir: &Path,
        config: DataplaneConfig,
        log_dir: &Path,
    ) -> Result<Self> {
        Self::start_release(&Release::current()?, node_id, state_dir, config, log_dir)
    }

    /// Like [`Dataplane::start`], running `release` (a restart runs it again).
    pub fn start_release(
        release: &Release,
        node_id: &str,
        state_dir: &Path,
        config: DataplaneConfig,
        log_dir: &Path,
    ) -> Result<Self> {
        let mut dp = Self::launch_release(release, node_id, state_dir, config, log_dir)?;
        wait_ready(&mut dp.process, dp.admin_addr)?;
        Ok(dp)
    }

    /// Like [`Dataplane::start`], but returns as soon as the process is spawned, for a test
    /// that times how long it takes to become ready.
    pub fn launch(
        node_id: &str,
        state_dir: &Path,
        config: DataplaneConfig,
        log_dir: &Path,
    ) -> Result<Self> {
        Self::launch_release(&Release::current()?, node_id, state_dir, config, log_dir)
    }

    fn launch_release(
        release: &Release,
        node_id: &str,
        state_dir: &Path,
        config: DataplaneConfig,
        log_dir: &Path,
    ) -> Result<Self> {
        let [mqtt_port, http_port, admin_port] = free_ports()?;
        let (mqtt_addr, http_addr, admin_addr) = (
            loopback(mqtt_port),
            loopback(http_port),
            loopback(admin_port),
        );
        std::fs::create_dir_all(state_dir).with_context(|| {
            format!(
                "create the dataplane state directory {}",
                state_dir.display()
            )
        })?;
        Ok(Self {
            process: Self::spawn(
                release, node_id, state_dir, &config, mqtt_addr, http_addr, admin_addr, log_dir, 1,
            )?,
            node_id: node_id.to_owned(),
            state_dir: state_dir.to_owned(),
            mqtt_addr,
            http_addr,
            admin_addr,
            config,
            release: release.clone(),
        })
    }

    /// Kills the process outright and starts it again on the same ports and state
    /// directory (what a crashed pod's replacement sees), waiting until ready.
    pub fn restart(&mut self, log_dir: &Path, attempt: u32) -> Result<()> {
        self.process.kill()?;
        self.start_again(log_dir, attempt)
    }

    /// Stops the process as Kubernetes stops a pod (SIGTERM, SIGKILL after the harness's grace
    /// period) and returns how it exited.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        self.process.stop()
    }

    /// Starts the process again on the same ports and state directory after it stopped (a
    /// restarted pod), its log `<node id>-<attempt>.log`, waiting until ready.
    pub fn start_again(&mut self, log_dir: &Path, attempt: u32) -> Result<()> {
        self.process = Self::spawn(
            &self.release,
            &self.node_id,
            &self.state_dir,
            &self.config,
            self.mqtt_addr,
            self.http_addr,
            self.admin_addr,
            log_dir,
            attempt,
        )?;
        wait_ready(&mut self.process, self.admin_addr)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        release: &Release,
        node_id: &str,
        state_dir: &Path,
        config: &DataplaneConfig,
        mqtt: SocketAddr,
        http: SocketAddr,
        admin: SocketAddr,
        log_dir: &Path,
        attempt: u32,
    ) -> Result<Process> {
        let listeners = [
            ("--mqtt-listen", mqtt.to_string()),
            ("--http-listen", http.to_string()),
            ("--admin-listen", admin.to_string()),
        ];
        let values = dataplane_values(config.nats_url.as_deref());
        let cmd = dataplane_command(
            release, node_id, state_dir, config, &values, listeners, log_dir,
        )?;
        let name = match attempt {
            1 => node_id.to_owned(),
            n => format!("{node_id}-{n}"),
        };
        Process::spawn(&name, cmd, log_dir)
    }
}

/// The dataplane's command line as the chart renders it with `values`, its PolicySync and
/// state flags and `listeners` (flag, value) replaced with local ones.
fn dataplane_command<const N: usize>(
    release: &Release,
    node_id: &str,
    state_dir: &Path,
    config: &DataplaneConfig,
    values: &Value,
    listeners: [(&str, String); N],
    log_dir: &Path,
) -> Result<Command> {
    let rendered = chart::template_of(&release.chart, OPERATOR_NAMESPACE, &[], values)?;
    let container = rendered.container(&format!("{RELEASE}-dataplane"), "dataplane")?;
    let token_file = write_token(log_dir, node_id, &config.sync_token)?;
    let mut flags = BTreeMap::from([
        ("--operator", config.operators.join(",")),
        ("--state-dir", path_string(state_dir)?),
        ("--token-file", path_string(&token_file)?),
    ]);
    flags.extend(listeners);
    let fields = BTreeMap::from([("metadata.name", node_id.to_owned())]);
    container.command(&release.binary, &flags, &fields)
}

/// A dataplane with the chart's MQTTS and HTTPS listeners (`dataplane.mqtts`,
/// `dataplane.https`), serving the certificate and key in `cert` and `key`.
pub struct TlsDataplane {
    /// The dataplane (its plain listeners, its process).
    pub dataplane: Dataplane,
    /// MQTT over TLS.
    pub mqtts_addr: SocketAddr,
    /// HTTPS.
    pub https_addr: SocketAddr,
}

impl TlsDataplane {
    /// Starts dataplane `node_id` with TLS listeners as the chart renders them, and waits
    /// until it is ready.
    pub fn start(
        node_id: &str,
        state_dir: &Path,
        config: DataplaneConfig,
        (cert, key): (&Path, &Path),
        log_dir: &Path,
    ) -> Result<Self> {
        let release = Release::current()?;
        let [mqtt, http, admin, mqtts, https] = free_ports()?;
        let addr = loopback;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("create {}", state_dir.display()))?;
        let mut values = dataplane_values(config.nats_url.as_deref());
        values["dataplane"]["mqtts"] = json!({"enabled": true, "existingSecret": "e2e-tls"});
        values["dataplane"]["https"] = json!({"enabled": true});
        let listeners = [
            ("--mqtt-listen", addr(mqtt).to_string()),
            ("--http-listen", addr(http).to_string()),
            ("--admin-listen", addr(admin).to_string()),
            ("--mqtts-listen", addr(mqtts).to_string()),
            ("--https-listen", addr(https).to_string()),
            ("--tls-cert", path_string(cert)?),
            ("--tls-key", path_string(key)?),
        ];
        let cmd = dataplane_command(
            &release, node_id, state_dir, &config, &values, listeners, log_dir,
        )?;
        let mut process = Process::spawn(node_id, cmd, log_dir)?;
        wait_ready(&mut process, addr(admin))?;
        Ok(Self {
            dataplane: Dataplane {
                process,
                node_id: node_id.to_owned(),
                state_dir: state_dir.to_owned(),
                mqtt_addr: addr(mqtt),
                http_addr: addr(http),
                admin_addr: addr(admin),
                config,
                release,
            },
            mqtts_addr: addr(mqtts),
            https_addr: addr(https),
        })
    }
}

/// Starts the two dataplanes of the multi-pod scenarios, `dataplane-a` and
/// `dataplane-b`, on distinct ports with their state under `state_root`, both on
/// the bus in `config.nats_url`.
pub fn start_dataplane_pair(
    state_root: &Path,
    config: &DataplaneConfig,
    log_dir: &Path,
) -> Result<(Dataplane, Dataplane)> {
    let a = Dataplane::start(
        "dataplane-a",
        &state_root.join("dataplane-a"),
        config.clone(),
        log_dir,
    )?;
    let b = Dataplane::start(
        "dataplane-b",
        &state_root.join("dataplane-b"),
        config.clone(),
        log_dir,
    )?;
    Ok((a, b))
}

/// Waits until `GET /readyz` on `admin` answers 200, failing at once if the process exits.
fn wait_ready(process: &mut Process, admin: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !process.is_running() {
            bail!(
                "{} exited before it was ready; see {}",
                process.name(),
                process.log_path().display()
            );
        }
        if http_status(admin, "/readyz").is_ok_and(|status| status == 200) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not ready on http://{admin}/readyz within {READY_TIMEOUT:?}; see {}",
                process.name(),
                process.log_path().display()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The status code of a plain HTTP/1.1 `GET path` to `addr`.
pub fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

/// The status code and body of a plain HTTP/1.1 `GET path` to `addr` (the server closes the
/// connection after its answer).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect to {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .context("set a read timeout")?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("send GET {path} to {addr}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .with_context(|| format!("read the answer to GET {path} from {addr}"))?;
    let status = text
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .with_context(|| {
            format!("{addr} answered GET {path} with no HTTP status line: {text:?}")
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .with_context(|| format!("{addr} answered GET {path} with no body"))?;
    Ok((status, body))
}
