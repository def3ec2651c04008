//! The writer's maintenance: which channels keep history (Channels and Tenants, watched with
//! kube reflectors), the sweep of what none keeps or is past its retention, and each
//! Channel's `status.history`, on the one replica that holds the PostgreSQL lease.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleetward_crds::{Channel, ChannelHistoryStatus, Tenant};
use fleetward_history::lease::Lease;
use fleetward_history::{ChannelStats, Kept, PostgresStore, Store as _};
use futures_util::StreamExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource as _};

/// The field manager of `status.history`.
pub const FIELD_MANAGER: &str = "fleetward-writer";

/// Watches the cluster and, while this replica holds the lease, sweeps and reports every
/// `every`. Never returns.
pub async fn maintain(client: Client, store: PostgresStore, every: Duration) {
    let channels = reflect::<Channel>(client.clone());
    let tenants = reflect::<Tenant>(client.clone());
    let mut reported: HashMap<(String, String), ChannelHistoryStatus> = HashMap::new();
    loop {
        match Lease::try_take(&store).await {
            Ok(Some(mut lease)) => {
                tracing::info!(
                    "this writer holds the maintenance lease: sweeping and writing Channel status"
                );
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if !lease.held().await {
                        tracing::warn!(
                            "lost the maintenance lease's PostgreSQL session; another writer may take it"
                        );
                        break;
                    }
                    // An empty cache before the first list would sweep every row as orphaned.
                    if channels.wait_until_ready().await.is_err()
                        || tenants.wait_until_ready().await.is_err()
                    {
                        continue;
                    }
                    let kept = kept(&channels.state(), &tenants.state());
                    match store.sweep(&kept, fleetward_history::now_ns()).await {
                        Ok(swept) if swept != fleetward_history::Swept::default() => {
                            tracing::info!(?swept, "history: swept");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "history: the sweep failed; retrying next time")
                        }
                    }
                    match store.stats().await {
                        Ok(stats) => {
                            report(&client, &channels.state(), &kept, &stats, &mut reported).await
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "history: could not count what channels hold")
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot ask for the maintenance lease yet"),
        }
        tokio::time::sleep(every.min(Duration::from_secs(15))).await;
    }
}

fn reflect<K>(client: Client) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(stream.for_each(|_| std::future::ready(())));
    reader
}

/// The channels that keep history now, with their tenant's limit.
pub fn kept(channels: &[std::sync::Arc<Channel>], tenants: &[std::sync::Arc<Tenant>]) -> Vec<Kept> {
    let by_namespace: BTreeMap<&str, &Tenant> = tenants
        .iter()
        .map(|t| (t.namespace(), t.as_ref()))
        .collect();
    channels
        .iter()
        .filter_map(|c| {
            let history = c.spec.history.as_ref()?;
            let tenant = by_namespace.get(c.metadata.namespace.as_deref()?)?;
            Some(Kept {
                tenant: tenant.metadata.name.clone()?,
                channel: c.metadata.name.clone()?,
                channel_uid: c.metadata.uid.clone()?,
                retention: Duration::from_secs(history.retention_secs()?),
                max_tenant_bytes: tenant
                    .spec
                    .limits
                    .as_ref()
                    .and_then(|l| l.max_history_bytes)
                    .unwrap_or(fleetward_history::DEFAULT_MAX_HISTORY_BYTES),
            })
        })
        .collect()
}

/// Writes `status.history` of each kept channel whose figures changed.
async fn report(
    client: &Client,
    channels: &[std::sync::Arc<Channel>],
    kept: &[Kept],
    stats: &[ChannelStats],
    reported: &mut HashMap<(String, String), ChannelHistoryStatus>,
) {
    let held: HashMap<&str, &ChannelStats> =
        stats.iter().map(|s| (s.channel_uid.as_str(), s)).collect();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for k in kept {
        let Some(channel) = channels
            .iter()
            .find(|c| c.metadata.uid.as_deref() == Some(k.channel_uid.as_str()))
        else {
            continue;
        };
        let Some(namespace) = channel.metadata.namespace.clone() else {
            continue;
        };
        let status =
            held.get(k.channel_uid.as_str())
                .map_or_else(ChannelHistoryStatus::default, |s| ChannelHistoryStatus {
                    messages: s.messages,
                    bytes: s.bytes,
                    oldest: s.oldest_ns.map(rfc3339),
                });
        let key = (namespace.clone(), k.channel.clone());
        if reported.get(&key) == Some(&status) {
            continue;
        }
        let body = serde_json::json!({
            "apiVersion": Channel::api_version(&()),
            "kind": Channel::kind(&()),
            "status": { "history": status },
        });
        let api: Api<Channel> = Api::namespaced(client.clone(), &namespace);
        match api
            .patch_status(&k.channel, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                reported.insert(key, status);
            }
            Err(e) => {
                tracing::warn!(namespace, channel = k.channel, error = %e, "could not write the Channel's status.history; retrying next time (does the writer's role allow patch on channels/status?)")
            }
        }
    }
}

/// ns since the Unix epoch as RFC 3339 (UTC, seconds).
fn rfc3339(ns: u64) -> String {
    let secs = i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn channel(ns: &str, name: &str, uid: &str, retention: Option<&str>) -> Arc<Channel> {
        let mut c = Channel::new(
            name,
            serde_json::from_value(serde_json::json!({})).expect("an empty spec"),
        );
        c.metadata.namespace = Some(ns.into());
        c.metadata.uid = Some(uid.into());
        c.spec.history = retention.map(|r| fleetward_crds::ChannelHistory {
            retention: r.into(),
        });
        Arc::new(c)
    }

    fn tenant(name: &str, ns: Option<&str>, max: Option<u64>) -> Arc<Tenant> {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "fleetward.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {"namespace": ns, "limits": {"maxHistoryBytes": max}},
        }))
        .expect("a tenant");
        t.metadata.name = Some(name.into());
        Arc::new(t)
    }

    #[test]
    fn only_channels_with_history_in_a_tenants_namespace_are_kept() {
        let channels = [
            channel("acme-ns", "temp", "u1", Some("7d")),
            channel("acme-ns", "plain", "u2", None),
            channel("nobody", "orphan", "u3", Some("1h")),
            channel("globex", "log", "u4", Some("90m")),
        ];
        let tenants = [
            tenant("acme", Some("acme-ns"), Some(1000)),
            tenant("globex", None, None),
        ];
        let kept = kept(&channels, &tenants);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].tenant, "acme");
        assert_eq!(kept[0].channel_uid, "u1");
        assert_eq!(kept[0].retention, Duration::from_secs(7 * 86_400));
        assert_eq!(kept[0].max_tenant_bytes, 1000);
        assert_eq!(kept[1].tenant, "globex");
        assert_eq!(kept[1].retention, Duration::from_secs(90 * 60));
        assert_eq!(
            kept[1].max_tenant_bytes,
            fleetward_history::DEFAULT_MAX_HISTORY_BYTES
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(1_764_950_400_123_000_000), "2025-12-05T16:00:00Z");
    }
}
