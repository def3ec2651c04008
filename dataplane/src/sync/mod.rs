//! The PolicySync client: keeps the dataplane's policy snapshot in step with an operator.
//!
//! [`SyncClient::new`] loads the last-known-good snapshot from the state directory, so a
//! dataplane restarted without an operator keeps enforcing it (fail static). [`SyncClient::run`]
//! connects to the operators in turn, reconnecting with backoff, applies every update, ACKs or
//! NACKs it, persists what it applied and publishes it on [`SyncClient::snapshot`].

mod client_config;
pub mod engines;
mod provision;
mod status;
pub mod store;
mod stream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetward_policy::Snapshot;
use tokio::sync::watch;
use tonic::transport::Endpoint;

pub use client_config::{
    ClientTls, DEFAULT_BACKOFF_MAX, DEFAULT_MAX_MESSAGE_SIZE, SyncConfig, SyncError,
    parse_endpoints,
};
pub use status::SyncStatus;
pub use store::{StoreError, Stored};

/// The policy sync client. See the module documentation.
pub struct SyncClient {
    config: SyncConfig,
    endpoints: Vec<(String, Endpoint)>,
    status: Arc<SyncStatus>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    stored: watch::Sender<Option<Stored>>,
}

impl SyncClient {
    /// Checks the configuration and loads the persisted snapshot, if any. A snapshot that
    /// cannot be read is logged and ignored: the dataplane then waits for an operator.
    pub fn new(config: SyncConfig) -> Result<Self, SyncError> {
        if config.endpoints.is_empty() {
            return Err(SyncError::NoEndpoint);
        }
        if config.node_id.is_empty() {
            return Err(SyncError::NoNodeId);
        }
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| Ok((url.clone(), endpoint(url, &config)?)))
            .collect::<Result<Vec<_>, SyncError>>()?;
        let status = Arc::new(SyncStatus::default());
        let loaded = match &config.state_dir {
            Some(dir) => match store::load(dir) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot load the persisted policy snapshot");
                    status.set_error(e.to_string());
                    None
                }
            },
            None => None,
        };
        let initial = match &loaded {
            Some(s) => {
                tracing::info!(
                    version = s.snapshot.version(),
                    resources = s.snapshot.resource_count(),
                    "loaded the last-known-good policy snapshot"
                );
                status.loaded(s);
                engines::attach_shared(s.snapshot.clone())
            }
            None => Arc::new(Snapshot::new(0)),
        };
        Ok(Self {
            config,
            endpoints,
            status,
            snapshot: watch::channel(initial).0,
            stored: watch::channel(loaded).0,
        })
    }

    /// The current snapshot, for the evaluator; it changes on every applied update.
    pub fn snapshot(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// What sends fleet provisioning requests to the operator replicas (PolicySync's
    /// `Provision`), with this client's endpoints and token.
    pub fn provisioner(&self) -> Arc<dyn crate::provisioning::Provisioner> {
        let auth = self
            .config
            .token
            .as_deref()
            .and_then(|t| format!("Bearer {t}").parse().ok());
        Arc::new(provision::GrpcProvisioner {
            endpoints: self.endpoints.clone(),
            auth,
        })
    }

    /// Readiness and staleness, for probes and metrics.
    pub fn status(&self) -> Arc<SyncStatus> {
        self.status.clone()
    }

    /// Syncs until `shutdown` resolves, then writes the last applied snapshot and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let persister = self.config.state_dir.clone().map(|dir| {
            let rx = self.stored.subscribe();
            tokio::spawn(persist(dir, rx, pause_after))
        });
        tokio::select! {
            () = shutdown => tracing::info!("policy sync stopping"),
            () = self.connect_loop() => {}
        }
        self.status.disconnected();
        drop(self.stored);
        if let Some(p) = persister
            && let Err(e) = p.await
        {
            tracing::error!(error = %e, "the policy snapshot writer failed");
        }
    }

    async fn connect_loop(&self) {
        let n = self.endpoints.len();
        let mut waits = retry_waits(&self.config);
        let mut failures = 0usize;
        for attempt in 0usize.. {
            let (url, endpoint) = &self.endpoints[attempt % n];
            let got_updates = stream::Session {
                config: &self.config,
                url,
                status: &self.status,
                snapshot: &self.snapshot,
                stored: &self.stored,
            }
            .run(endpoint.clone())
            .await;
            if got_updates {
                failures = 0;
                waits = retry_waits(&self.config);
                let pause = retry_waits(&self.config).next();
                tokio::time::sleep(pause.unwrap_or(self.config.backoff_min)).await;
                continue;
            }
            failures += 1;
            if failures.is_multiple_of(n) {
                let wait = waits.next().unwrap_or(self.config.backoff_max);
                tracing::debug!(?wait, "every operator endpoint failed; waiting");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The waits after each round in which every endpoint failed: doubling from `backoff_min` up
/// to `backoff_max`, each between half of its step and the whole, so that dataplanes do not
/// reconnect in step (backon's jitter adds up to the step again, so it is given half steps).
fn retry_waits(config: &SyncConfig) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(config.backoff_min / 2)
        .with_max_delay(config.backoff_max / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

fn endpoint(url: &str, config: &SyncConfig) -> Result<Endpoint, SyncError> {
    let err = |source| SyncError::Endpoint {
        url: url.to_owned(),
        source,
    };
    let mut e = Endpoint::from_shared(url.to_owned())
        .map_err(err)?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(config.keepalive_interval))
        .tcp_nodelay(true);
    if let Some(tls) = &config.tls {
        let identity = tls.identity.as_ref().map(|(c, k)| (&c[..], &k[..]));
        let t = fleetward_proto::client_tls(&tls.ca_pem, identity, tls.domain.as_deref());
        e = e.tls_config(t).map_err(err)?;
    }
    Ok(e)
}

/// At most this share of the persister's time goes to writing: after a write that took `d`,
/// the next waits `(WRITE_SHARE - 1) × d`.
const WRITE_SHARE: u32 = 10;
/// The longest wait between two writes, whatever the last one took.
const MAX_WRITE_PAUSE: Duration = Duration::from_secs(10);

/// How long to wait after a write that took `took` before the next one.
fn pause_after(took: Duration) -> Duration {
    (took * (WRITE_SHARE - 1)).min(MAX_WRITE_PAUSE)
}

/// Writes every new snapshot, newest first: a burst of updates costs one write. Encoding and
/// writing the whole snapshot costs in proportion to it, so writes are spaced to keep them to
/// a tenth of the time, at most 10 s apart: a small snapshot is written at once, a large one
/// every few seconds during a bulk apply instead of continuously (`pause` gives the wait
/// after a write of a given length: [`pause_after`]). When the sync stops, the newest
/// snapshot is written at once. A write that fails is logged once and tried again with a
/// growing delay (or with the next snapshot).
async fn persist(
    dir: PathBuf,
    mut rx: watch::Receiver<Option<Stored>>,
    pause: fn(Duration) -> Duration,
) {
    use backon::BackoffBuilder as _;
    // What `rx` has seen is on disk already (a receiver from `subscribe` has seen what was
    // sent before it): only what comes after is written.
    let mut failing: Option<backon::ExponentialBackoff> = None;
    let mut next_write = tokio::time::Instant::now();
    loop {
        let mut closed = if failing.is_none() {
            rx.changed().await.is_err()
        } else {
            let delay = failing
                .as_mut()
                .and_then(Iterator::next)
                .unwrap_or(Duration::from_secs(30));
            tokio::select! {
                changed = rx.changed() => changed.is_err(),
                () = tokio::time::sleep(delay) => false,
            }
        };
        // Closed with nothing new: the newest snapshot was written.
        if closed {
            return;
        }
        while !closed && tokio::time::Instant::now() < next_write {
            tokio::select! {
                changed = rx.changed() => closed = changed.is_err(),
                () = tokio::time::sleep_until(next_write) => break,
            }
        }
        let Some(stored) = rx.borrow_and_update().clone() else {
            if closed {
                return;
            }
            continue;
        };
        let dir = dir.clone();
        let version = stored.snapshot.version();
        let started = tokio::time::Instant::now();
        match tokio::task::spawn_blocking(move || store::save(&dir, &stored)).await {
            Ok(Ok(())) => {
                if failing.take().is_some() {
                    tracing::info!(version, "the policy snapshot is persisted again");
                }
                let took = started.elapsed();
                next_write = tokio::time::Instant::now() + pause(took);
                tracing::debug!(version, ?took, "persisted the policy snapshot");
            }
            Ok(Err(e)) => {
                if failing.is_none() {
                    tracing::error!(
                        error = %e,
                        "cannot persist the policy snapshot; retrying (a restart without an \
                         operator would start from an older one until it works)"
                    );
                    failing = Some(
                        backon::ExponentialBuilder::default()
                            .with_min_delay(Duration::from_millis(500))
                            .with_max_delay(Duration::from_secs(30))
                            .without_max_times()
                            .build(),
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "the policy snapshot writer panicked"),
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_of_the_snapshot_take_a_tenth_of_the_time_at_most_ten_seconds_apart() {
        assert_eq!(pause_after(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            pause_after(Duration::from_millis(2)),
            Duration::from_millis(18),
            "a small snapshot is written again almost at once"
        );
        assert_eq!(
            pause_after(Duration::from_millis(800)),
            Duration::from_millis(7200)
        );
        assert_eq!(pause_after(Duration::from_secs(3)), MAX_WRITE_PAUSE);
    }

    #[tokio::test]
    async fn a_snapshot_waiting_for_its_write_is_written_at_once_when_the_sync_stops() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tx, rx) = watch::channel(None);
        let persister = tokio::spawn(persist(dir.path().to_owned(), rx, |_| {
            Duration::from_secs(3600)
        }));
        let version_on_disk = || {
            store::load(dir.path())
                .expect("readable")
                .map(|s| s.snapshot.version())
        };
        tx.send_replace(Some(store::tests::stored(3)));
        tokio::time::timeout(Duration::from_secs(10), async {
            while version_on_disk() != Some(3) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the first snapshot is written at once");
        tx.send_replace(Some(store::tests::stored(4)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(version_on_disk(), Some(3), "the next waits for its turn");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), persister)
            .await
            .expect("the persister ends at once")
            .expect("no panic");
        assert_eq!(version_on_disk(), Some(4), "having written the newest");
    }

    #[test]
    fn endpoints_are_split_on_commas_and_blanks_dropped() {
        assert_eq!(
            parse_endpoints(" http://a:1, ,https://b:2,"),
            ["http://a:1", "https://b:2"]
        );
    }

    #[test]
    fn the_config_never_prints_its_token() {
        let config = SyncConfig {
            token: Some("hunter2".into()),
            ..SyncConfig::new(vec!["http://a:1".into()], "dp")
        };
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let config = SyncConfig {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..SyncConfig::new(vec!["http://a:1".into()], "dp")
        };
        let waits: Vec<u128> = retry_waits(&config)
            .take(41)
            .map(|d| d.as_millis())
            .collect();
        for (rounds, full) in [(0, 100), (1, 200), (3, 800), (4, 1000), (40, 1000)] {
            let d = waits[rounds];
            assert!(
                (full / 2..=full).contains(&d),
                "round {rounds}: {d} ms not in [{}, {full}]",
                full / 2
            );
        }
    }

    #[test]
    fn by_default_no_wait_is_longer_than_the_revocation_budget() {
        // Revocations wait for the stream: a pod is back within ~2 s of its operator.
        let config = SyncConfig::new(vec!["http://a:1".into()], "dp");
        assert_eq!(config.backoff_max, Duration::from_millis(1500));
        let longest = retry_waits(&config)
            .take(1_000)
            .max()
            .expect("waits without end");
        assert!(
            longest <= config.backoff_max && longest >= config.backoff_max / 2,
            "{longest:?}"
        );
    }

    #[test]
    fn a_bad_configuration_is_refused_with_what_to_fix() {
        let no_endpoint = SyncClient::new(SyncConfig::new(vec![], "dp")).err();
        assert!(matches!(no_endpoint, Some(SyncError::NoEndpoint)));
        let no_node = SyncClient::new(SyncConfig::new(vec!["http://a:1".into()], "")).err();
        assert!(matches!(no_node, Some(SyncError::NoNodeId)));
        let bad_url = SyncClient::new(SyncConfig::new(vec!["not a url".into()], "dp")).err();
        assert!(
            matches!(&bad_url, Some(SyncError::Endpoint { url, .. }) if url == "not a url"),
            "{bad_url:?}"
        );
    }
}
