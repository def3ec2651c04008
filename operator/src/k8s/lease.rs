//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): only the holder writes Secrets, status and Events.
//!
//! The election runs in its own task and publishes a `bool` that the writers check before each
//! write. Stepping down clears it first, then releases the Lease so another replica takes
//! over at once instead of after the lease duration: the followers watch the Lease and
//! campaign again as soon as it has no holder (the manager alone would sleep until expiry).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// How long to wait before trying again to set up the Lease after an error.
const SETUP_RETRY: Duration = Duration::from_secs(5);
/// How long stepping down may take to release the Lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Lease is and who this replica is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (the holder identity in the Lease).
    pub identity: String,
    /// How long the Lease is valid after its last renewal, in seconds.
    pub duration_secs: u64,
    /// How long before expiry the holder renews it, in seconds (less than the duration).
    pub grace_secs: u64,
}

impl LeaseConfig {
    /// Checks the timings the Lease manager would otherwise panic on.
    pub fn validate(&self) -> Result<(), String> {
        if self.duration_secs == 0 || self.grace_secs == 0 || self.grace_secs >= self.duration_secs
        {
            return Err(format!(
                "the lease grace ({}s) must be at least 1s and less than the lease duration ({}s)",
                self.grace_secs, self.duration_secs
            ));
        }
        Ok(())
    }
}

/// This replica's part in the election.
#[derive(Debug)]
pub struct Leadership {
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Starts campaigning for the Lease in the background.
    pub fn start(client: Client, config: LeaseConfig, metrics: Arc<Metrics>) -> Self {
        let (leader_tx, leader) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(campaign(client, config, leader_tx, stop_rx, metrics));
        Self { leader, stop, task }
    }

    /// `true` while this replica holds the Lease.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops writing at once and releases the Lease.
    pub async fn step_down(self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(RELEASE_TIMEOUT, self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                "releasing the Lease took too long; another replica takes over when it expires"
            );
        }
    }
}

async fn campaign(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let set = |value: bool| {
        leader.send_if_modified(|v| std::mem::replace(v, value) != value);
        metrics.set_leader(value);
    };
    let released = lease_released(client.clone(), &config);
    futures::pin_mut!(released);
    loop {
        let Some(manager) = set_up(&client, &config, &mut stop).await else {
            return;
        };
        let (held, task) = manager.watch().await;
        let ended = hold(&config, held, task, &leader, &set, &mut released, &mut stop).await;
        if ended == Held::Stopped {
            return;
        }
    }
}

/// `true` each time the Lease is seen free (released, deleted or never taken).
fn lease_released(client: Client, config: &LeaseConfig) -> impl futures::Stream<Item = bool> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    watcher::watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={}", config.name)),
    )
    .default_backoff()
    .filter_map(|event| async move {
        match event {
            Ok(Event::Apply(lease) | Event::InitApply(lease)) => Some(is_free(&lease)),
            Ok(Event::Delete(_)) => Some(true),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "watching the Lease failed; retrying");
                None
            }
        }
    })
}

/// A Lease manager, retried until it can be set up; `None` once told to stop.
async fn set_up(
    client: &Client,
    config: &LeaseConfig,
    stop: &mut watch::Receiver<bool>,
) -> Option<LeaseManager> {
    loop {
        let manager = tokio::select! {
            m = build(client, config) => m,
            _ = stop.changed() => return None,
        };
        match manager {
            Ok(m) => return Some(m),
            Err(e) => {
                tracing::warn!(
                    namespace = %config.namespace,
                    lease = %config.name,
                    error = %e,
                    "cannot set up the leader Lease; check that the namespace exists and the \
                     operator may get, create and patch leases.coordination.k8s.io there"
                );
                tokio::select! {
                    () = tokio::time::sleep(SETUP_RETRY) => {}
                    _ = stop.changed() => return None,
                }
            }
        }
    }
}

/// How one Lease manager's watch ended.
#[derive(Debug, PartialEq, Eq)]
enum Held {
    /// The manager stopped, or the Lease was released while another held it: campaign anew.
    Lost,
    /// Told to stop: the Lease is released.
    Stopped,
}

/// Follows one Lease manager: mirrors what it holds into `set`, until it stops, the Lease is
/// seen released while another holds it, or `stop` fires.
async fn hold<S: futures::Stream<Item = bool> + Unpin>(
    config: &LeaseConfig,
    mut held: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    leader: &watch::Sender<bool>,
    set: &impl Fn(bool),
    released: &mut S,
    stop: &mut watch::Receiver<bool>,
) -> Held {
    loop {
        let now = *held.borrow_and_update();
        if now != *leader.borrow() {
            tracing::info!(identity = %config.identity, leader = now, "leadership changed");
        }
        set(now);
        tokio::select! {
            changed = held.changed() => {
                if changed.is_err() {
                    // The manager stopped on its own: nothing is known to be held any more.
                    set(false);
                    match task.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "the Lease manager stopped; starting again"),
                        Err(e) => tracing::warn!(error = %e, "the Lease task failed; starting again"),
                    }
                    return Held::Lost;
                }
            }
            Some(free) = released.next() => {
                if free && !*leader.borrow() {
                    // Start over: a new manager finds the Lease free and takes it now. The
                    // old one is aborted, not dropped: dropping it makes it release the
                    // Lease, and its release (read, then an unconditional patch) can land
                    // after another replica took the Lease and clear that holder, leaving
                    // two replicas that each believe they lead until the next renewal.
                    // Holding nothing, it has nothing to give back; had it just taken the
                    // Lease, the new manager (same identity) finds it its own and renews it.
                    tracing::debug!(identity = %config.identity, "the Lease was released; campaigning");
                    task.abort();
                    if let Err(e) = task.await
                        && !e.is_cancelled()
                    {
                        tracing::warn!(error = %e, "the Lease task failed");
                    }
                    // Only once the task is gone, so that it never sees its receiver close.
                    drop(held);
                    return Held::Lost;
                }
            }
            _ = stop.changed() => {
                set(false);
                // Dropping the receiver makes the manager release the Lease and finish.
                drop(held);
                match task.await {
                    Ok(Ok(_)) => tracing::info!(identity = %config.identity, "released the Lease"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "releasing the Lease failed"),
                    Err(e) => tracing::warn!(error = %e, "the Lease task failed"),
                }
                return Held::Stopped;
            }
        }
    }
}

/// Whether a Lease has no holder (released, or never taken).
fn is_free(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

async fn build(client: &Client, config: &LeaseConfig) -> kube_lease_manager::Result<LeaseManager> {
    LeaseManagerBuilder::new(client.clone(), &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs)
        .with_grace(config.grace_secs)
        .build()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(duration_secs: u64, grace_secs: u64) -> LeaseConfig {
        LeaseConfig {
            namespace: "fleetward-system".into(),
            name: "fleetward-operator".into(),
            identity: "operator-0".into(),
            duration_secs,
            grace_secs,
        }
    }

    #[test]
    fn timings_the_lease_manager_would_panic_on_are_refused() {
        assert!(config(15, 5).validate().is_ok());
        assert!(config(5, 5).validate().is_err());
        assert!(config(15, 0).validate().is_err());
        assert!(config(0, 0).validate().is_err());
    }
}
