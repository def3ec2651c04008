//! The wiring of `fleetward operator`: arguments, then one `run()` that starts the watches, the batcher, the election, the leader's writers, PolicySync and the endpoints, and stops them on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use kube::runtime::events::Reporter;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::dataplanes::Dataplanes;
use crate::grpc;
use crate::index::Index;
use crate::k8s::certificates::CertificateReconciler;
use crate::k8s::events::Events;
use crate::k8s::lease::{Leadership, LeaseConfig};
use crate::k8s::observed::Observed;
use crate::k8s::replica_leases::ReportConfig;
use crate::k8s::secrets::SecretReconciler;
use crate::k8s::writer::StatusWriter;
use crate::k8s::{self, watch::Feed};
use crate::metrics::{Admin, Metrics, admin_router};
use crate::replicas::Replicas;
use crate::shared::SharedIndex;

/// Where a pod's service account token tells its namespace.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Arguments of `fleetward operator`. The cluster is found as kubectl finds it: `KUBECONFIG`
/// (or `~/.kube/config`), else the pod's service account.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct OperatorArgs {
    /// Address of the PolicySync gRPC server that dataplanes connect to.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:50051",
        alias = "sync-listen"
    )]
    pub grpc_listen: SocketAddr,
    /// Address of `/healthz`, `/readyz` and `/metrics`: loopback unless told, since `/metrics`
    /// names tenants (the chart passes `0.0.0.0` for probes and scraping). Not the
    /// dataplane's 8081, so both run on one machine as they are.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8082")]
    pub admin_listen: SocketAddr,
    /// File holding the token dataplanes must present on PolicySync (mounted from a Secret;
    /// give the dataplanes the same file).
    #[arg(long, value_name = "PATH", env = "FLEETWARD_SYNC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The PolicySync token itself; prefer --token-file, which keeps it out of the environment.
    #[arg(
        long,
        env = "FLEETWARD_SYNC_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// PEM certificate of the PolicySync server (TLS when given, with --tls-key).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the PolicySync server.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle that dataplane client certificates must chain to (mTLS).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Namespace of the leader-election Lease (default: the pod's namespace, else `default`).
    #[arg(long, value_name = "NAMESPACE", env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "fleetward-operator")]
    pub lease_name: String,
    /// Seconds the Lease stays valid after its last renewal: how long a killed leader's
    /// replicas wait before taking over.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// Seconds before expiry at which the leader renews the Lease (less than the duration).
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub lease_grace_secs: u64,
    /// This replica's identity in the Lease (default: the host name).
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    pub identity: Option<String>,
    /// The Secret (in the Lease's namespace) holding the keys user tokens are signed with;
    /// created with a fresh Ed25519 key when missing.
    #[arg(long, value_name = "NAME", default_value = "fleetward-signing-keys")]
    pub signing_secret: String,
    /// cert-manager's cluster resource namespace, where the CA Secrets of ClusterIssuers live
    /// (cert-manager's `--cluster-resource-namespace`).
    #[arg(long, value_name = "NAMESPACE", default_value = "cert-manager")]
    pub cert_manager_namespace: String,
    /// Milliseconds changes are gathered before they become one snapshot version.
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub batch_window_ms: u64,
    /// A directory where the operator saves what it watched, so that a restart resumes its
    /// watches from there instead of listing every object again (see docs/operations.md). The
    /// chart mounts an emptyDir here, which a container restart keeps.
    #[arg(long, value_name = "DIR", env = "FLEETWARD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The PolicySync URL of a running replica (the chart gives the operator's Service, which
    /// routes to ready replicas only): a start whose --state-dir holds no saved state fetches
    /// that replica's and resumes from it instead of listing every object. Authenticated
    /// with this replica's token and, for `https://`, its --tls-cert and --tls-key, checking
    /// the peer against --client-ca. Empty: list.
    #[arg(
        long,
        value_name = "URL",
        env = "FLEETWARD_SEED_FROM",
        requires = "state_dir"
    )]
    pub seed_from: Option<String>,
}

impl OperatorArgs {
    fn lease(&self) -> anyhow::Result<LeaseConfig> {
        let namespace = match &self.lease_namespace {
            Some(ns) => ns.clone(),
            None => std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "default".to_owned()),
        };
        let identity = match &self.identity {
            Some(id) => id.clone(),
            None => fleetward_process::hostname().context(
                "cannot tell this replica's identity: set --identity or POD_NAME (the chart \
                 sets it to the pod name)",
            )?,
        };
        let config = LeaseConfig {
            namespace,
            name: self.lease_name.clone(),
            identity,
            duration_secs: self.lease_duration_secs,
            grace_secs: self.lease_grace_secs,
        };
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

impl OperatorArgs {
    /// The PolicySync server's settings: the token (from --token-file, else --token) and TLS.
    fn server_config(&self) -> anyhow::Result<grpc::ServerConfig> {
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => {
                Some(fleetward_process::read_token_file(path).with_context(|| {
                    format!(
                        "cannot read the PolicySync token from --token-file {}",
                        path.display()
                    )
                })?)
            }
            (None, token) => token.as_ref().map(|t| t.trim().to_owned()),
        };
        if token.as_deref() == Some("") {
            anyhow::bail!(
                "the PolicySync token is empty: put the token in --token-file (or leave both \
                 --token-file and FLEETWARD_SYNC_TOKEN unset to rely on mTLS alone)"
            );
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                grpc::ServerTls::from_files(cert, key, self.client_ca.as_deref())
                    .context("cannot load the PolicySync TLS files")?,
            ),
            _ => None,
        };
        Ok(grpc::ServerConfig {
            token,
            tls,
            saved_state: self.state_dir.as_deref().map(k8s::resume::file),
            ..grpc::ServerConfig::default()
        })
    }

    /// The replica to start from (`--seed-from`), authenticated as `config` authenticates
    /// dataplanes.
    fn seed_peer(&self, config: &grpc::ServerConfig) -> anyhow::Result<Option<k8s::seed::Peer>> {
        let Some(url) = self.seed_from.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let tls = if url.starts_with("https://") {
            let ca = self.client_ca.as_deref().with_context(|| {
                format!(
                    "--seed-from {url} is https: give --client-ca, the CA the replicas' \
                     certificates chain to"
                )
            })?;
            let identity = config
                .tls
                .as_ref()
                .map(|tls| (tls.cert_pem.clone(), tls.key_pem.clone()));
            Some(k8s::seed::PeerTls {
                ca_pem: fleetward_process::read_file(ca)?,
                identity,
            })
        } else {
            None
        };
        Ok(Some(k8s::seed::Peer {
            url: url.to_owned(),
            token: config.token.clone(),
            tls,
        }))
    }
}

/// The first snapshot version of this process: milliseconds since the epoch, so a restarted
/// operator's versions keep moving forward (it commits far less than once a millisecond).
fn first_version() -> u64 {
    fleetward_process::unix_millis()
}

/// What the tasks of this replica share: the index and what is known about dataplanes,
/// replicas and watches, and the metrics.
#[derive(Clone)]
struct ReplicaState {
    index: Arc<SharedIndex>,
    dataplanes: Arc<Dataplanes>,
    observed: Arc<Observed>,
    replicas: Arc<Replicas>,
    metrics: Arc<Metrics>,
}

impl ReplicaState {
    fn new() -> Self {
        Self {
            index: Arc::new(SharedIndex::new(Index::starting_at(first_version()))),
            dataplanes: Arc::new(Dataplanes::new()),
            observed: Arc::new(Observed::new()),
            replicas: Arc::new(Replicas::new()),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// What the watches feed.
    fn feed(&self) -> Feed {
        Feed {
            index: self.index.clone(),
            observed: self.observed.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The state saved in `dir`, when there is one, restored into `feed` (see `k8s::resume`);
/// where each restored kind's watch resumes. When there is none, `peer`'s first (see
/// `k8s::seed`).
async fn restore(
    dir: Option<&PathBuf>,
    peer: Option<k8s::seed::Peer>,
    feed: &Feed,
) -> anyhow::Result<k8s::resume::Resume> {
    let Some(dir) = dir else {
        return Ok(k8s::resume::Resume::new());
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create --state-dir {}", dir.display()))?;
    if let Some(peer) = peer {
        k8s::seed::seed_logged(dir, &peer).await;
    }
    let (dir, feed) = (dir.clone(), feed.clone());
    Ok(tokio::task::spawn_blocking(move || k8s::resume::restore(&dir, &feed)).await?)
}

/// Where this replica publishes its dataplane reports, next to the election `lease`.
fn report_config(lease: &LeaseConfig) -> ReportConfig {
    ReportConfig {
        namespace: lease.namespace.clone(),
        election: lease.name.clone(),
        identity: lease.identity.clone(),
        // Reports are renewed every third of this: twice the election's, to write less often.
        duration: Duration::from_secs(lease.duration_secs.saturating_mul(2)),
    }
}

/// Runs the operator until SIGTERM or SIGINT: then it stops writing, releases the Lease,
/// drains and returns `Ok`. Expects tracing to be set up by the caller.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let lease = args.lease()?;
    let reports = report_config(&lease);
    let client = Client::try_default().await.context(
        "cannot reach the Kubernetes API: set KUBECONFIG to a kubeconfig, or run in a pod with \
         a service account",
    )?;
    let state = ReplicaState::new();
    let reporter = Reporter {
        controller: k8s::CONTROLLER.to_owned(),
        instance: Some(lease.identity.clone()),
    };
    tracing::info!(identity = %lease.identity, namespace = %lease.namespace, lease = %lease.name, "starting the operator");

    let mut config = args.server_config()?;
    let resume = restore(
        args.state_dir.as_ref(),
        args.seed_peer(&config)?,
        &state.feed(),
    )
    .await?;
    let leadership = Leadership::start(client.clone(), lease, state.metrics.clone());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let mut tasks = spawn_tasks(
        &args,
        &client,
        &reports,
        &state,
        &leadership,
        reporter,
        &resume,
    );
    let admin_server = spawn_admin(args.admin_listen, &state, shutdown.clone()).await?;

    // PolicySync: every replica serves its own index, once its watches have synced.
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on --grpc-listen {}", args.grpc_listen))?;
    config.provisioner = Some(crate::provisioning::KubeProvisioner::new(client.clone()));
    let mut grpc = tokio::spawn(serve_policy_sync(
        grpc_listener,
        config,
        state.index.clone(),
        state.dataplanes.clone(),
        state.observed.clone(),
        shutdown.clone(),
    ));

    let outcome = tokio::select! {
        signal = fleetward_process::shutdown_signal() => {
            tracing::info!(signal, "shutting down: stepping down, then draining");
            Ok(())
        }
        Some(ended) = tasks.join_next() => Err(match ended {
            Ok(name) => anyhow::anyhow!("the {name} stopped unexpectedly; restarting the operator is safe"),
            Err(e) => anyhow::anyhow!("an operator task failed: {e}"),
        }),
        ended = &mut grpc => Err(match ended {
            Ok(Ok(())) => anyhow::anyhow!("the PolicySync server stopped unexpectedly"),
            Ok(Err(e)) => anyhow::Error::new(e),
            Err(e) => anyhow::anyhow!("the PolicySync server task failed: {e}"),
        }),
    };

    // Stop writing first, so the next leader starts from a released Lease.
    leadership.step_down().await;
    let _ = shutdown_tx.send(true);
    if !grpc.is_finished() {
        match grpc.await {
            Ok(Ok(())) => tracing::info!("PolicySync drained"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the PolicySync server failed while draining"),
            Err(e) => tracing::warn!(error = %e, "the PolicySync server task failed"),
        }
    }
    // The streams are gone: the leader must stop counting this replica's dataplanes now.
    tasks.shutdown().await;
    // The watches have stopped: what they fed is saved whole for the next start.
    if let Some(dir) = &args.state_dir {
        k8s::resume::save_in_background(dir, &state.feed()).await;
    }
    k8s::replica_leases::withdraw(&client, &reports).await;
    match admin_server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the admin server failed"),
        Err(e) => tracing::warn!(error = %e, "the admin server task failed"),
    }
    outcome
}

/// Starts the batcher, the watches, the replica reports and the leader's writers; each task
/// returns its name if it ever ends.
fn spawn_tasks(
    args: &OperatorArgs,
    client: &Client,
    reports: &ReportConfig,
    state: &ReplicaState,
    leadership: &Leadership,
    reporter: Reporter,
    resume: &k8s::resume::Resume,
) -> JoinSet<&'static str> {
    let mut tasks: JoinSet<&'static str> = JoinSet::new();
    tasks.spawn({
        let index = state.index.clone();
        let window = Duration::from_millis(args.batch_window_ms);
        async move {
            index.run_batcher(window).await;
            "index batcher"
        }
    });
    let feed = state.feed();
    k8s::watch::spawn_all(&mut tasks, client, &feed, resume);
    if let Some(dir) = &args.state_dir {
        tasks.spawn(k8s::resume::keep_saved(dir.clone(), feed));
    }
    tasks.spawn(k8s::certmanager::run(
        client.clone(),
        state.index.clone(),
        state.observed.clone(),
        args.cert_manager_namespace.clone(),
    ));
    tasks.spawn(k8s::replica_leases::publish(
        client.clone(),
        reports.clone(),
        state.index.clone(),
        state.dataplanes.clone(),
    ));
    tasks.spawn(k8s::replica_leases::watch_peers(
        client.clone(),
        reports.clone(),
        state.replicas.clone(),
    ));
    spawn_writers(
        &mut tasks, args, client, reports, state, leadership, reporter,
    );
    tasks
}

/// The leader's writers: status and Events, the Things' Secrets and cert-manager
/// Certificates, the token signing key.
fn spawn_writers(
    tasks: &mut JoinSet<&'static str>,
    args: &OperatorArgs,
    client: &Client,
    reports: &ReportConfig,
    state: &ReplicaState,
    leadership: &Leadership,
    reporter: Reporter,
) {
    tasks.spawn(
        StatusWriter {
            client: client.clone(),
            index: state.index.clone(),
            dataplanes: state.dataplanes.clone(),
            replicas: state.replicas.clone(),
            observed: state.observed.clone(),
            metrics: state.metrics.clone(),
            leader: leadership.subscribe(),
            events: Events::new(client.clone(), reporter.clone()),
        }
        .run(),
    );
    tasks.spawn(
        SecretReconciler {
            client: client.clone(),
            index: state.index.clone(),
            observed: state.observed.clone(),
            metrics: state.metrics.clone(),
            leader: leadership.subscribe(),
            events: Events::new(client.clone(), reporter),
        }
        .run(),
    );
    tasks.spawn(
        CertificateReconciler {
            client: client.clone(),
            index: state.index.clone(),
            observed: state.observed.clone(),
            leader: leadership.subscribe(),
        }
        .run(),
    );
    tasks.spawn(k8s::signing::run(
        client.clone(),
        reports.namespace.clone(),
        args.signing_secret.clone(),
        state.index.clone(),
        leadership.subscribe(),
    ));
}

/// Serves /healthz, /readyz and /metrics on `listen` until `shutdown` turns true.
async fn spawn_admin(
    listen: SocketAddr,
    state: &ReplicaState,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let admin = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on --admin-listen {listen}"))?;
    tracing::info!(addr = %listen, "serving /healthz, /readyz and /metrics");
    let router = admin_router(Admin {
        metrics: state.metrics.clone(),
        index: state.index.clone(),
        dataplanes: state.dataplanes.clone(),
        replicas: state.replicas.clone(),
        observed: state.observed.clone(),
    });
    Ok(tokio::spawn(async move {
        axum::serve(admin, router)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await
    }))
}

/// Serves PolicySync once every watch has synced, until `shutdown` turns true.
async fn serve_policy_sync(
    listener: tokio::net::TcpListener,
    config: grpc::ServerConfig,
    index: Arc<SharedIndex>,
    dataplanes: Arc<Dataplanes>,
    observed: Arc<Observed>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), grpc::ServeError> {
    // A dataplane that connected to a half-listed index would get a partial snapshot.
    let mut changes = observed.subscribe();
    while observed.ready().is_err() {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        }
    }
    // What the watches listed may still wait for the batcher: commit it, so the first
    // snapshot served holds everything the initial lists held.
    index.commit();
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    grpc::serve(listener, config, index, dataplanes, stop).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: OperatorArgs,
    }

    #[test]
    fn defaults_match_the_chart() {
        let cli =
            Cli::try_parse_from(["operator", "--identity", "op-0", "--lease-namespace", "fw"])
                .expect("parses");
        let a = cli.args;
        assert_eq!(a.grpc_listen.to_string(), "0.0.0.0:50051");
        // Loopback by default; the chart passes --admin-listen=0.0.0.0:<port>.
        assert_eq!(a.admin_listen.to_string(), "127.0.0.1:8082");
        assert_eq!(a.lease_name, "fleetward-operator");
        assert_eq!(a.batch_window_ms, 20);
        assert_eq!(a.cert_manager_namespace, "cert-manager");
        let lease = a.lease().expect("valid");
        assert_eq!(
            (lease.namespace.as_str(), lease.identity.as_str()),
            ("fw", "op-0")
        );
    }

    #[test]
    fn sync_listen_is_an_alias_and_tls_needs_both_halves() {
        let cli =
            Cli::try_parse_from(["operator", "--sync-listen", "127.0.0.1:7000"]).expect("parses");
        assert_eq!(cli.args.grpc_listen.to_string(), "127.0.0.1:7000");
        assert!(Cli::try_parse_from(["operator", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Cli::try_parse_from(["operator", "--lease-duration-secs", "5", "--identity", "x"])
                .expect("parses")
                .args
                .lease()
                .is_err(),
            "a grace of 5s is not less than a 5s lease"
        );
    }

    #[test]
    fn the_token_comes_from_the_file_without_its_newline() {
        let dir = std::env::temp_dir().join(format!("fleetward-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").expect("write the token");
        let path = file.to_string_lossy().into_owned();
        let cli = Cli::try_parse_from(["operator", "--token-file", &path]).expect("parses");
        let config = cli.args.server_config().expect("valid");
        assert_eq!(config.token.as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").expect("write the token");
        assert!(
            cli.args.server_config().is_err(),
            "an empty token is refused"
        );
        let missing = Cli::try_parse_from(["operator", "--token-file", "/nonexistent/token"])
            .expect("parses");
        assert!(missing.args.server_config().is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_peer_to_seed_from_needs_a_state_directory_and_for_https_a_ca() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["operator", "--token", "t"], args].concat()).map(|c| c.args)
        };
        assert!(
            parse(&["--seed-from", "http://peer:50051"]).is_err(),
            "without --state-dir there is no file to seed"
        );
        let none = parse(&["--state-dir", "/tmp/s", "--seed-from", ""]).expect("parses");
        let config = none.server_config().expect("valid");
        assert!(
            none.seed_peer(&config).expect("valid").is_none(),
            "empty: list"
        );
        assert_eq!(
            config.saved_state.as_deref(),
            Some(std::path::Path::new("/tmp/s/operator-state.jsonl")),
            "a state directory's file is what SavedState sends"
        );

        let plain =
            parse(&["--state-dir", "/tmp/s", "--seed-from", "http://peer:50051"]).expect("parses");
        let peer = plain
            .seed_peer(&plain.server_config().expect("valid"))
            .expect("valid")
            .expect("a peer");
        assert_eq!(
            (peer.url.as_str(), peer.token.as_deref(), peer.tls.is_none()),
            ("http://peer:50051", Some("t"), true),
            "the replica's own token"
        );

        let https =
            parse(&["--state-dir", "/tmp/s", "--seed-from", "https://peer:50051"]).expect("parses");
        let error = https
            .seed_peer(&https.server_config().expect("valid"))
            .expect_err("no CA to check the peer against");
        assert!(error.to_string().contains("--client-ca"), "{error}");
    }

    #[test]
    fn versions_start_above_any_earlier_run() {
        let first = first_version();
        assert!(first > 1_700_000_000_000, "milliseconds since the epoch");
        assert!(first_version() >= first);
    }
}
