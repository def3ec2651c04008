//! `fleetward dataplane`: the policy sync client feeding the front-end, until SIGTERM.

use anyhow::Context as _;
use tokio::sync::watch;

pub use fleetward_process::shutdown_signal;

use crate::Dataplane;
use crate::args::DataplaneArgs;
use crate::sync::{ClientTls, SyncClient, SyncConfig};

/// Runs a dataplane pod: syncs policy from the operator and serves MQTT with it. Returns on
/// SIGTERM or SIGINT after a drain (`RunningDataplane::drain`) and after the sync client has
/// saved its last snapshot.
pub async fn run(args: DataplaneArgs) -> anyhow::Result<()> {
    if args.operator.is_empty() {
        anyhow::bail!(
            "no operator to sync policy from: give --operator URL[,URL…] (for example \
             http://fleetward-operator:50051); to run without a cluster use `fleetward start`"
        );
    }
    let open_files = crate::raise_open_files_limit();
    tracing::info!(
        open_files_limit = open_files.unwrap_or_default(),
        "raised the open-files limit to the hard limit"
    );
    let client = SyncClient::new(sync_config(&args)?).context("starting the policy sync client")?;
    let status = client.status();
    if status.is_ready() {
        tracing::info!(
            version = status.version(),
            "serving the persisted policy snapshot until the operator answers"
        );
    }
    let mut dataplane = Dataplane::from_args(&args, client.snapshot())
        .provisioner(client.provisioner())
        .history(history_of(&args)?)
        .sync_status(status.clone())
        .start()
        .await
        .context("starting the dataplane")?;
    dataplane.log_listeners();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let sync = tokio::spawn(client.run(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    }));
    let outcome = tokio::select! {
        r = dataplane.wait() => r,
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down: draining");
            Ok(())
        }
    };
    // Policy keeps arriving while the pod drains: a revocation still ends what it revokes.
    dataplane.drain().await;
    let _ = stop_tx.send(true);
    sync.await.context("the policy sync client panicked")?;
    outcome
}

/// The history reader's store, if `--history-postgres-url` names one (connected lazily: a
/// database that is down fails reads with 503, not the start).
fn history_of(args: &DataplaneArgs) -> anyhow::Result<crate::History> {
    let Some(url) = &args.history_postgres_url else {
        return Ok(crate::History::default());
    };
    let mut options = fleetward_history::PostgresOptions::new(url.clone());
    options.pool_size = args.history_postgres_pool_size;
    options.ca_file = args.history_postgres_ca.clone();
    let store = fleetward_history::PostgresStore::connect(&options)
        .context("--history-postgres-url is not a PostgreSQL URL")?;
    Ok(crate::History {
        sink: crate::HistorySink::Off,
        reader: Some(fleetward_history::HistoryStore::Postgres(store)),
    })
}

fn sync_config(args: &DataplaneArgs) -> anyhow::Result<SyncConfig> {
    let node_id = match &args.node_id {
        Some(id) => id.clone(),
        None => fleetward_process::hostname()
            .context("no --node-id, POD_NAME or hostname to name this dataplane")?,
    };
    let mut config = SyncConfig::new(args.operator.clone(), node_id);
    config.state_dir = Some(args.state_dir());
    config.token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(file)) => Some(
            fleetward_process::read_token_file(file)
                .with_context(|| format!("reading the PolicySync token from {}", file.display()))?,
        ),
        (None, None) => None,
    };
    if let Some(ca) = &args.operator_ca {
        let identity = args
            .operator_cert
            .as_deref()
            .zip(args.operator_key.as_deref());
        config.tls = Some(
            ClientTls::from_files(ca, identity, None).context("reading the operator TLS files")?,
        );
    }
    Ok(config)
}
