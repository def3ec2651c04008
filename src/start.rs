//! `fleetward start`: the index and one dataplane in one process, fed from a directory of YAML
//! that is watched and applied live.

use std::sync::RwLock;

use crate::provisioning::{LocalProvisioner, Namespaces};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use fleetward_dataplane::Dataplane;
use fleetward_dataplane::LimitArgs;
use fleetward_dataplane::sync::engines::attach;
use fleetward_operator::directory::{FileError, ScanReport};
use fleetward_operator::index::{Kind, ObjectKey};
use fleetward_policy::Snapshot;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};

use crate::local::{DEFAULT_MANIFESTS, DEFAULT_STATE_DIR, Local};

/// Persistent sessions kept across a restart, under the state directory (dataplane/MQTT.md).
const SESSIONS_FILE: &str = "sessions.json";
/// How long file events are gathered into one rescan (an editor's save is several events).
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A full rescan runs this often even without file events (network file systems, missed events).
const RESCAN: Duration = Duration::from_secs(2);

/// `fleetward start` flags.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The directory of manifests (every Fleetward kind, and Secrets for brought-your-own
    /// keys), read recursively and watched for changes.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_MANIFESTS, env = "FLEETWARD_MANIFESTS")]
    pub manifests: PathBuf,
    /// Where generated keys (mode 0600) and the status report are kept.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, env = "FLEETWARD_STATE_DIR")]
    pub state_dir: PathBuf,
    /// MQTT listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// MQTT over TLS listener (off unless given). Things may sign in with a client
    /// certificate from their tenant's CA (`fleetward certs issue <tenant>/<thing>`).
    #[arg(long, value_name = "ADDR")]
    pub mqtts_listen: Option<SocketAddr>,
    /// HTTPS listener (off unless given): what --http-listen serves, over TLS; things may
    /// present a client certificate instead of their key (`curl --cert --key`).
    #[arg(long, value_name = "ADDR")]
    pub https_listen: Option<SocketAddr>,
    /// PEM server certificate chain of the TLS listeners. Without --tls-cert and --tls-key, a
    /// development certificate for localhost is made at every start, signed by
    /// `<state-dir>/tls/ca.crt`: what clients pass as `--cafile`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// HTTP and WebSocket listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Health and Prometheus metrics listener (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    /// Keep no message history: channels with `spec.history` are served without it (by
    /// default their messages are kept in `<state-dir>/history.db`).
    #[arg(long)]
    pub no_history: bool,
    /// How often expired messages, and those of deleted channels, leave the history store,
    /// and what each channel holds is counted for the status report.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_sweep_secs: u64,
    /// Connection, message, session and HTTP limits, as `fleetward dataplane` takes them.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: StartArgs) -> anyhow::Result<()> {
    let open_files = fleetward_dataplane::raise_open_files_limit();
    tracing::info!(
        open_files_limit = open_files.unwrap_or_default(),
        "raised the open-files limit to the hard limit"
    );
    let (mut local, report) = Local::load(&args.manifests, &args.state_dir)?;
    let mut errors = Errors::default();
    let _ = errors.log(&report);
    log_generated(&report);
    log_all(&local);
    let status = local.report(&errors.current);
    let mut status_file = StatusFile::new(args.state_dir.clone());
    status_file.write(&status);

    let (policy_tx, policy_rx) = watch::channel(Arc::new(attach(local.index.snapshot().clone())));
    let namespaces: Namespaces = Arc::new(RwLock::new(local.tenant_namespaces()));
    let control = crate::control::Control::new(policy_rx.clone())?;
    let mut history = open_history(&args, policy_rx.clone(), &mut local).await?;
    let mut dataplane = start_dataplane(&args, policy_rx, &control, history.as_ref(), &namespaces)
        .await
        .context("starting the dataplane")?;
    dataplane.log_listeners();
    let sessions = dataplane.session_saver();
    let admin = dataplane
        .admin_addr
        .context("the admin listener did not start")?;
    // `fleetward can-i` finds the admin API (and its `/can-i`) through this record.
    let _record = control.record(admin, &args.state_dir, &args.manifests)?;
    tracing::info!(manifests = %args.manifests.display(), "{}", status.summary());

    // The watcher stops when dropped: it lives as long as this function.
    let (_watcher, mut events_rx) = watch_manifests(&args.manifests)?;

    let mut rescan = tokio::time::interval(RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = fleetward_dataplane::shutdown_signal();
    tokio::pin!(shutdown);
    // Boxed rather than pinned in place, so that it can be dropped (ending its borrow) before
    // the drain and before the sessions are written.
    let mut serving = Box::pin(dataplane.wait());
    let mut figures = history.as_ref().map(|h| h.changed.clone());
    let outcome = loop {
        tokio::select! {
            signal = &mut shutdown => {
                tracing::info!(signal, "shutting down: draining");
                break Ok(());
            }
            r = &mut serving => break r,
            Some(Ok(())) = async { Some(figures.as_mut()?.changed().await) } => {
                // What channels keep changed: the report shows it.
                status_file.write(&local.report(&errors.current));
                continue;
            }
            Some(()) = events_rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while events_rx.try_recv().is_ok() {}
            }
            _ = rescan.tick() => {
                // A report that could not be written is tried again on every rescan.
                status_file.retry(&local, &errors.current);
            }
        }
        rescan_manifests(
            &mut local,
            &mut errors,
            &mut status_file,
            &policy_tx,
            &args.state_dir,
        );
        if let Ok(mut table) = namespaces.write() {
            *table = local.tenant_namespaces();
        }
    };
    drop(serving);
    // Clients are told goodbye, and what they had sent reaches its subscribers, before the
    // history is closed; the drain ends live sessions, so persistent ones are saved.
    dataplane.drain().await;
    // The sessions that were saved (and what the router queued for them) are written for the
    // next start.
    if let Some(saver) = sessions
        && let Err(e) = saver.save().await
    {
        tracing::error!(
            error = format!("{e:#}"),
            "could not write the persistent sessions; they start empty next time"
        );
    }
    // Everything accepted for history is written before the process ends.
    if let Some(h) = history.take() {
        h.finish().await;
    }
    outcome
}

/// The dataplane of `fleetward start`: its listeners, history, admin routes, and fleet
/// provisioning into the manifests directory.
async fn start_dataplane(
    args: &StartArgs,
    policy: watch::Receiver<Arc<Snapshot>>,
    control: &crate::control::Control,
    history: Option<&crate::history::Running>,
    namespaces: &Namespaces,
) -> anyhow::Result<fleetward_dataplane::RunningDataplane> {
    let provisioner = LocalProvisioner::new(
        &args.manifests,
        &args.state_dir,
        namespaces.clone(),
        policy.clone(),
    );
    with_tls(Dataplane::new(policy), args)?
        .history(history.map(|h| h.history.clone()).unwrap_or_default())
        .mqtt_listen(args.mqtt_listen)
        .http_listen(Some(args.http_listen))
        .admin_listen(Some(args.admin_listen))
        .admin_routes(control.routes.clone())
        .provisioner(provisioner)
        .sessions_file(Some(args.state_dir.join(SESSIONS_FILE)))
        .limits(&args.limits)
        .start()
        .await
}

/// The TLS listeners asked for, with their certificate.
fn with_tls(mut dataplane: Dataplane, args: &StartArgs) -> anyhow::Result<Dataplane> {
    let listeners = [args.mqtts_listen, args.https_listen];
    let Some(first) = listeners.into_iter().flatten().next() else {
        return Ok(dataplane);
    };
    let (cert, key) = server_certificate(args, first, args.https_listen)?;
    if let Some(addr) = args.mqtts_listen {
        dataplane = dataplane.mqtts_listen(addr, cert.clone(), key.clone());
    }
    if let Some(addr) = args.https_listen {
        dataplane = dataplane.https_listen(addr, cert, key);
    }
    Ok(dataplane)
}

/// The TLS listeners' certificate and key: the ones given, else a development certificate for
/// localhost (and the listener's own address) from the state directory's server CA.
fn server_certificate(
    args: &StartArgs,
    addr: SocketAddr,
    other: Option<SocketAddr>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok((cert.clone(), key.clone()));
    }
    let ips: Vec<String> = [Some(addr), other]
        .into_iter()
        .flatten()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .map(|ip| ip.to_string())
        .collect();
    let mut hosts = vec!["localhost", "127.0.0.1", "::1"];
    for ip in &ips {
        if !hosts.contains(&ip.as_str()) {
            hosts.push(ip);
        }
    }
    let (ca, cert, key) = crate::certs::development_server_certificate(&args.state_dir, &hosts)?;
    tracing::info!(
        ca = %ca.display(),
        "made a development server certificate for {}; clients trust it with --cafile {}",
        hosts.join(", "),
        ca.display()
    );
    Ok((cert, key))
}

/// The history store and its writer, unless `--no-history`; the report shows what channels
/// hold.
async fn open_history(
    args: &StartArgs,
    policy: watch::Receiver<Arc<Snapshot>>,
    local: &mut Local,
) -> anyhow::Result<Option<crate::history::Running>> {
    if args.no_history {
        return Ok(None);
    }
    let every = Duration::from_secs(args.history_sweep_secs);
    let running = crate::history::start(&args.state_dir, policy, every).await?;
    local.history = running.figures.clone();
    Ok(Some(running))
}

/// Logs every object's condition at start.
fn log_all(local: &Local) {
    let mut keys: Vec<&ObjectKey> = local.index.objects().collect();
    keys.sort();
    for key in keys {
        log_status(local, key, true);
    }
}

/// A watcher of the manifest directory, waking the returned receiver on any change.
fn watch_manifests(
    manifests: &Path,
) -> anyhow::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let (events_tx, events_rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel already holds a wake-up; dropping this one loses nothing.
            let _ = events_tx.try_send(());
        }
    })
    .context("starting the file watcher")?;
    watcher
        .watch(manifests, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", manifests.display()))?;
    Ok((watcher, events_rx))
}

/// Reads the manifests and signing keys again; a change is committed, logged, published to
/// the dataplane and written to the status report.
fn rescan_manifests(
    local: &mut Local,
    errors: &mut Errors,
    status_file: &mut StatusFile,
    policy_tx: &watch::Sender<Arc<Snapshot>>,
    state_dir: &Path,
) {
    let report = local.scan();
    if let Err(e) = local.read_signing_keys(state_dir) {
        tracing::warn!(error = %e, "the token signing keys could not be read; the last ones stay");
    }
    let errors_changed = errors.log(&report);
    log_generated(&report);
    let Some(commit) = local.index.commit() else {
        // A broken file is read again on every scan; the report changes only when the
        // set of errors does.
        if errors_changed {
            status_file.write(&local.report(&errors.current));
        }
        return;
    };
    for key in &commit.statuses {
        log_status(local, key, false);
    }
    let snapshot: Arc<Snapshot> = Arc::new(attach(local.index.snapshot().clone()));
    let _ = policy_tx.send(snapshot);
    let status = local.report(&errors.current);
    status_file.write(&status);
    tracing::info!("{}", status.summary());
}

/// The status report on disk. A write that fails (a full disk, no file descriptors left) is
/// logged once, retried on the next rescan, and never ends the process.
struct StatusFile {
    state_dir: PathBuf,
    /// The last write failed: the file is stale until a write works.
    failing: bool,
}

impl StatusFile {
    fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            failing: false,
        }
    }

    fn write(&mut self, status: &crate::local::StatusReport) {
        match status.write(&self.state_dir) {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("the status report is written again");
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not write the status report; `fleetward status` shows an older one \
                     until a retry works (every rescan)"
                );
            }
            Err(_) => {}
        }
    }

    fn retry(&mut self, local: &Local, errors: &[FileError]) {
        if self.failing {
            self.write(&local.report(errors));
        }
    }
}

/// The errors of the latest scan, each logged once while it lasts.
#[derive(Default)]
struct Errors {
    current: Vec<FileError>,
    logged: BTreeSet<(PathBuf, String)>,
}

impl Errors {
    /// Logs the errors not logged yet; `true` when the set of errors changed.
    fn log(&mut self, report: &ScanReport) -> bool {
        let mut now = BTreeSet::new();
        for e in &report.errors {
            let id = (e.file.clone(), e.message.clone());
            if !self.logged.contains(&id) {
                tracing::error!(file = %e.file.display(), "{}", e.message);
            }
            now.insert(id);
        }
        let broken: BTreeSet<&PathBuf> = now.iter().map(|(file, _)| file).collect();
        let was_broken: BTreeSet<&PathBuf> = self.logged.iter().map(|(file, _)| file).collect();
        for file in was_broken.difference(&broken) {
            tracing::info!(file = %file.display(), "the file is valid again and applied");
        }
        let changed = self.logged != now;
        self.logged = now;
        self.current = report.errors.clone();
        changed
    }
}

fn log_generated(report: &ScanReport) {
    for key in &report.generated_keys {
        tracing::info!(
            secret = %format!("{}/{}", key.namespace, key.name),
            "generated a key; print it with `fleetward credentials <tenant>/<thing>`"
        );
    }
}

/// Logs an object's condition: a change at info, a Ready object at start at debug only (the
/// summary line counts them), anything not Ready as a warning.
fn log_status(local: &Local, key: &ObjectKey, at_start: bool) {
    if key.kind == Kind::Secret {
        return;
    }
    let what = if key.namespace.is_empty() {
        format!("{} {}", key.kind.as_str(), key.name)
    } else {
        format!("{} {}/{}", key.kind.as_str(), key.namespace, key.name)
    };
    match local.index.status(key) {
        None => tracing::info!("{what}: removed"),
        Some(st) if st.readiness.ready && at_start => tracing::debug!("{what}: Ready"),
        Some(st) if st.readiness.ready => tracing::info!("{what}: Ready"),
        Some(st) => tracing::warn!(
            reason = st.readiness.reason.as_str(),
            "{what}: not Ready: {}",
            st.readiness.message
        ),
    }
}
