//! cert-manager, read side: whether its CRDs are installed, its Issuers and ClusterIssuers
//! (which of them are CA issuers, and their CA Secret), and the CA Secrets of the
//! ClusterIssuers Tenants use, in cert-manager's cluster resource namespace.
//!
//! cert-manager is optional: without its CRDs nothing here is watched (no failing watch, no
//! log per retry), the index is told so (Things asking for a certificate say
//! `CertManagerMissing`), and the API is looked for again every minute.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::task::{AbortHandle, JoinSet};

use super::observed::Observed;
use crate::index::{IssuerCa, IssuerKey, SecretData};
use crate::shared::SharedIndex;

/// cert-manager's API group and version.
pub const GROUP: &str = "cert-manager.io";
/// The version of cert-manager's API the operator writes and reads.
pub const API_VERSION: &str = "cert-manager.io/v1";

/// What readiness waits for until the issuers are listed (or cert-manager is found missing),
/// so the first snapshot never drops a tenant's issuer CA for a moment.
pub const HOLD: &str = "cert-manager issuers";

/// The longest readiness waits for the issuers: a watch that cannot list them (RBAC) must not
/// keep the operator from serving everything else.
const HOLD_AT_MOST: Duration = Duration::from_secs(30);

/// How often the operator looks for cert-manager's API.
const DISCOVERY_EVERY: Duration = Duration::from_secs(60);

/// The API resource of a cert-manager kind.
pub fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.to_owned(),
        version: "v1".to_owned(),
        api_version: API_VERSION.to_owned(),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// Whether the API server serves cert-manager's Certificates, Issuers and ClusterIssuers;
/// `None` when it could not be asked.
pub async fn installed(client: &Client) -> Option<bool> {
    match client.list_api_group_resources(API_VERSION).await {
        Ok(list) => {
            let served: BTreeSet<&str> = list.resources.iter().map(|r| r.name.as_str()).collect();
            Some(
                ["certificates", "issuers", "clusterissuers"]
                    .iter()
                    .all(|r| served.contains(r)),
            )
        }
        // A group the server does not serve answers a plain-text 404, not a Status.
        Err(kube::Error::Api(status)) if status.code == 404 => Some(false),
        Err(e) => {
            tracing::debug!(error = %e, "cannot ask the API server for cert-manager's API");
            None
        }
    }
}

/// What an issuer's spec says of its CA.
pub fn issuer_ca(object: &DynamicObject) -> IssuerCa {
    let spec = object.data.get("spec");
    if let Some(secret_name) = spec
        .and_then(|s| s.get("ca"))
        .and_then(|ca| ca.get("secretName"))
        .and_then(|n| n.as_str())
    {
        return IssuerCa::Ca {
            secret_name: secret_name.to_owned(),
        };
    }
    let issuer_type = spec
        .and_then(|s| s.as_object())
        .and_then(|s| s.keys().next().cloned())
        .unwrap_or_else(|| "unknown".to_owned());
    IssuerCa::NotCa { issuer_type }
}

fn issuer_key(object: &DynamicObject, cluster: bool) -> Option<IssuerKey> {
    let name = object.metadata.name.clone()?;
    Some(if cluster {
        IssuerKey::ClusterIssuer { name }
    } else {
        IssuerKey::Issuer {
            namespace: object.namespace()?,
            name,
        }
    })
}

/// Keeps the index told about cert-manager: whether it is installed, its issuers, and the
/// CA Secrets of the ClusterIssuers in use (in `namespace`). Runs until the task is dropped.
pub async fn run(
    client: Client,
    index: Arc<SharedIndex>,
    observed: Arc<Observed>,
    namespace: String,
) -> &'static str {
    let mut watches: Option<JoinSet<()>> = None;
    observed.hold(HOLD);
    tokio::spawn({
        let observed = observed.clone();
        async move {
            tokio::time::sleep(HOLD_AT_MOST).await;
            if observed.release(HOLD) {
                tracing::warn!(
                    "cert-manager's issuers could not be listed in {}s; serving without them \
                     (check the operator's RBAC on cert-manager.io issuers and clusterissuers)",
                    HOLD_AT_MOST.as_secs()
                );
            }
        }
    });
    loop {
        match installed(&client).await {
            Some(true) if watches.is_none() => {
                tracing::info!("cert-manager's API is installed: watching its issuers");
                index.update(|idx| idx.set_cert_manager_installed(true));
                let mut set = JoinSet::new();
                let listed = Arc::new(std::sync::atomic::AtomicU8::new(0));
                for cluster in [false, true] {
                    set.spawn(watch_issuers(
                        client.clone(),
                        index.clone(),
                        cluster,
                        Listed {
                            observed: observed.clone(),
                            count: listed.clone(),
                        },
                    ));
                }
                set.spawn(watch_cluster_secrets(
                    client.clone(),
                    index.clone(),
                    namespace.clone(),
                ));
                watches = Some(set);
            }
            Some(false) => {
                if let Some(mut set) = watches.take() {
                    tracing::warn!("cert-manager's API is gone: no longer watching its issuers");
                    set.shutdown().await;
                }
                index.update(|idx| {
                    idx.set_cert_manager_installed(false);
                    idx.reset_issuers(false, Vec::new());
                    idx.reset_issuers(true, Vec::new());
                });
                observed.release(HOLD);
            }
            // The API server could not be asked: try again rather than wait a minute.
            None if watches.is_none() => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            _ => {}
        }
        tokio::time::sleep(DISCOVERY_EVERY).await;
    }
}

/// Releases readiness once both issuer kinds are listed.
struct Listed {
    observed: Arc<Observed>,
    count: Arc<std::sync::atomic::AtomicU8>,
}

impl Listed {
    fn one(&self) {
        if self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= 2 {
            self.observed.release(HOLD);
        }
    }
}

/// Watches Issuers (cluster-wide) or ClusterIssuers.
async fn watch_issuers(client: Client, index: Arc<SharedIndex>, cluster: bool, listed: Listed) {
    let mut first = true;
    let (kind, plural) = if cluster {
        ("ClusterIssuer", "clusterissuers")
    } else {
        ("Issuer", "issuers")
    };
    let api: Api<DynamicObject> = Api::all_with(client, &resource(kind, plural));
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut init = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => init.clear(),
            Ok(Event::InitApply(o)) => {
                init.extend(issuer_key(&o, cluster).map(|k| (k, issuer_ca(&o))));
            }
            Ok(Event::InitDone) => {
                let issuers = std::mem::take(&mut init);
                tracing::info!(kind, count = issuers.len(), "listed");
                index.update(|idx| idx.reset_issuers(cluster, issuers));
                if std::mem::take(&mut first) {
                    listed.one();
                }
            }
            Ok(Event::Apply(o)) => {
                if let Some(key) = issuer_key(&o, cluster) {
                    let ca = issuer_ca(&o);
                    index.update(|idx| idx.set_issuer(key, Some(ca)));
                }
            }
            Ok(Event::Delete(o)) => {
                if let Some(key) = issuer_key(&o, cluster) {
                    index.update(|idx| idx.set_issuer(key, None));
                }
            }
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying with backoff"),
        }
    }
}

/// Keeps one watch per CA Secret of a ClusterIssuer in use, each limited to that Secret by
/// name: the operator reads nothing else in cert-manager's namespace.
async fn watch_cluster_secrets(client: Client, index: Arc<SharedIndex>, namespace: String) {
    let mut commits = index.subscribe();
    let mut running: HashMap<String, AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let wanted = index.read().cluster_issuer_secrets();
        running.retain(|name, task| {
            if wanted.contains(name) {
                return true;
            }
            task.abort();
            index.update(|idx| idx.set_issuer_secret(name, None));
            false
        });
        for name in wanted {
            if running.contains_key(&name) {
                continue;
            }
            tracing::info!(namespace = %namespace, secret = %name, "watching a ClusterIssuer's CA Secret");
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let stream = watcher::watcher(api, config).default_backoff();
            let task = tasks.spawn(run_cluster_secret(stream, name.clone(), index.clone()));
            running.insert(name, task);
        }
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

async fn run_cluster_secret(
    stream: impl futures::Stream<Item = Result<Event<Secret>, watcher::Error>>,
    name: String,
    index: Arc<SharedIndex>,
) {
    futures::pin_mut!(stream);
    let mut found: Option<SecretData> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => found = None,
            Ok(Event::InitApply(s)) => found = crate::resource::secret_data(&s),
            Ok(Event::InitDone) => {
                let secret = found.take();
                if secret.is_none() {
                    tracing::warn!(secret = %name, "a ClusterIssuer's CA Secret does not exist in cert-manager's namespace (see --cert-manager-namespace)");
                }
                index.update(|idx| idx.set_issuer_secret(&name, secret));
            }
            Ok(Event::Apply(s)) => {
                let secret = crate::resource::secret_data(&s);
                index.update(|idx| idx.set_issuer_secret(&name, secret));
            }
            Ok(Event::Delete(_)) => index.update(|idx| idx.set_issuer_secret(&name, None)),
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "watch of a ClusterIssuer's CA Secret failed; retrying with backoff");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "Issuer",
            "metadata": {"name": "devices", "namespace": "acme"},
            "spec": spec,
        }))
        .expect("an issuer")
    }

    #[test]
    fn a_ca_issuer_names_its_secret_and_others_their_type() {
        assert_eq!(
            issuer_ca(&issuer(
                serde_json::json!({"ca": {"secretName": "devices-ca"}})
            )),
            IssuerCa::Ca {
                secret_name: "devices-ca".into()
            }
        );
        assert_eq!(
            issuer_ca(&issuer(
                serde_json::json!({"acme": {"server": "https://acme.example"}})
            )),
            IssuerCa::NotCa {
                issuer_type: "acme".into()
            }
        );
        assert_eq!(
            issuer_key(&issuer(serde_json::json!({})), false),
            Some(IssuerKey::Issuer {
                namespace: "acme".into(),
                name: "devices".into()
            })
        );
        assert_eq!(
            issuer_key(&issuer(serde_json::json!({})), true),
            Some(IssuerKey::ClusterIssuer {
                name: "devices".into()
            })
        );
    }
}
