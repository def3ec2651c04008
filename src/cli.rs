//! Command-line interface: parses arguments and dispatches to each mode.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Fleetward: multi-tenant IoT messaging for Kubernetes.
///
/// Tenants, things, channels, connections, users and groups are Kubernetes
/// resources; the operator turns them into credentials and authorization
/// tables, and dataplane pods enforce them on every MQTT, HTTP and WebSocket
/// message.
#[derive(Debug, Parser)]
#[command(name = "fleetward", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator and one dataplane in one process, from a directory of YAML (no cluster needed).
    Start(Box<crate::start::StartArgs>),
    /// Print a thing's key (alone on the last line), from the state directory or the cluster.
    Credentials(crate::inspect::CredentialsArgs),
    /// Explain whether a thing or user may publish or subscribe on a topic (asking the
    /// `fleetward start` running on the state directory, else reading the files).
    #[command(name = "can-i")]
    CanI(crate::inspect::CanIArgs),
    /// Show the Ready condition of every object `fleetward start` serves.
    Status(crate::inspect::StatusArgs),
    /// Development certificates for `fleetward start`: a thing's client certificate from its
    /// tenant's local CA (`issue acme/meter-1`), and where that CA is (`ca acme`).
    Certs(crate::certs::CertsArgs),
    /// Run the Kubernetes operator: reconcile resources and serve PolicySync to dataplanes.
    ///
    /// The cluster: found as kubectl finds it, from `KUBECONFIG` (or `~/.kube/config`), else
    /// in-cluster from the pod's service account. The CRDs must be installed
    /// (`fleetward crds | kubectl apply --server-side -f -`).
    ///
    /// The token: dataplanes present it on PolicySync; put it in a file and pass
    /// `--token-file PATH` here and to every dataplane (or set `FLEETWARD_SYNC_TOKEN`).
    ///
    /// The URL: dataplanes connect with `--operator http://HOST:50051` (the port of
    /// `--grpc-listen`; `https://` when `--tls-cert` is given). Health and metrics are on
    /// `--admin-listen`, 127.0.0.1:8082 by default.
    Operator(Box<fleetward_operator::runtime::OperatorArgs>),
    /// Run a dataplane pod: MQTT, enforcing the policy pushed by the operator.
    ///
    /// The dataplane reads no kubeconfig: everything comes from the operator over PolicySync.
    ///
    /// The URL: `--operator http://HOST:50051[,http://HOST2:50051…]`, every operator replica,
    /// comma-separated (`https://` with `--operator-ca` when the operator serves TLS).
    ///
    /// The token: `--token-file PATH`, the same file the operator was given (or set
    /// `FLEETWARD_SYNC_TOKEN`).
    ///
    /// Health and metrics are on `--admin-listen`, 127.0.0.1:8081 by default; the snapshot is
    /// kept in `--state-dir`.
    Dataplane(Box<fleetward_dataplane::DataplaneArgs>),
    /// Run a history writer: store the records of channels with `history` from the NATS
    /// JetStream stream into PostgreSQL (cluster mode; `fleetward start` writes in-process).
    ///
    /// `--nats` is the dataplanes' NATS; `--postgres-url` (or `FLEETWARD_HISTORY_POSTGRES_URL`)
    /// the database, migrated at start. Replicas share the work. One replica at a time sweeps
    /// and writes Channel `status.history`, reading Channels and Tenants from the cluster as
    /// kubectl finds it (`--no-maintenance` outside Kubernetes). Metrics on `--metrics-listen`.
    Writer(Box<crate::writer::WriterArgs>),
    /// Print the CustomResourceDefinitions of every Fleetward kind as one YAML stream.
    Crds(CrdsArgs),
    /// Wait SECONDS and exit 0: the chart's preStop hook (the image has no shell or `sleep`),
    /// so that Services drop the pod before its drain begins.
    Sleep(SleepArgs),
}

#[derive(Debug, Args)]
struct SleepArgs {
    /// How long to wait.
    #[arg(value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    seconds: u64,
}

#[derive(Debug, Args)]
struct CrdsArgs {
    /// Write one file per kind into this directory instead of printing the stream.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

impl Cli {
    /// Runs the chosen subcommand and turns its outcome into the process exit code.
    pub fn run(self) -> ExitCode {
        let outcome = match self.command {
            Command::Start(args) => serve(crate::start::run(*args)),
            Command::Credentials(args) => once(crate::inspect::credentials(&args)),
            Command::CanI(args) => match once(crate::inspect::can_i(&args)) {
                Ok(true) => Ok(()),
                // Like `kubectl auth can-i`: "no" exits 1, an error exits 1 with a message.
                Ok(false) => return ExitCode::FAILURE,
                Err(e) => Err(e),
            },
            Command::Status(args) => crate::inspect::status(&args),
            Command::Certs(args) => crate::certs::run(&args),
            Command::Operator(args) => {
                crate::free_pages_at_once();
                serve(fleetward_operator::runtime::run(*args))
            }
            Command::Dataplane(args) => serve(fleetward_dataplane::run(*args)),
            Command::Writer(args) => serve(crate::writer::run(*args)),
            Command::Crds(args) => crds(&args),
            Command::Sleep(args) => {
                std::thread::sleep(std::time::Duration::from_secs(args.seconds));
                Ok(())
            }
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs a one-shot command on a small runtime, logging warnings only.
fn once<T>(command: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(command)
}

/// Runs a long-lived mode on a multi-threaded runtime, logging as `RUST_LOG` says (default
/// `info`, with rumqttd at `warn`).
fn serve(mode: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rumqttd logs every router link at info; its warnings are what matter here.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log collected from a pipe keeps its lines (the audit
        // trail's JSON ones among them, docs/audit.md) free of escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(mode)
}

fn crds(args: &CrdsArgs) -> anyhow::Result<()> {
    match &args.out_dir {
        None => {
            print!("{}", fleetward_crds::yaml_stream()?);
            Ok(())
        }
        Some(dir) => write_crd_files(dir),
    }
}

fn write_crd_files(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, yaml) in fleetward_crds::files()? {
        let path = dir.join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    fn long_help(subcommand: &str) -> String {
        let mut cli = Cli::command();
        let Some(sub) = cli.find_subcommand_mut(subcommand) else {
            panic!("no subcommand {subcommand}");
        };
        sub.render_long_help().to_string()
    }

    #[test]
    fn operator_and_dataplane_help_say_how_the_cluster_the_token_and_the_url_are_given() {
        let operator = long_help("operator");
        for needle in [
            "KUBECONFIG",
            "service account",
            "--token-file",
            "--operator http://",
        ] {
            assert!(
                operator.contains(needle),
                "operator --help lacks {needle}:\n{operator}"
            );
        }
        let dataplane = long_help("dataplane");
        for needle in [
            "no kubeconfig",
            "--token-file",
            "--operator http://HOST:50051[,",
        ] {
            assert!(
                dataplane.contains(needle),
                "dataplane --help lacks {needle}:\n{dataplane}"
            );
        }
        assert!(operator.contains("127.0.0.1:8082") && dataplane.contains("127.0.0.1:8081"));
    }
}
