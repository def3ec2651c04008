//! Reading Fleetward objects from a cluster for `fleetward can-i` and `fleetward credentials`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use fleetward_crds::{Channel, Connection, Group, Policy, Tenant, Thing, User};
use fleetward_operator::index::{SecretData, is_key_entry};
use fleetward_operator::resource::{Resource, secret_data};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

/// Connects with the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the in-cluster account.
pub async fn client() -> anyhow::Result<Client> {
    Client::try_default().await.context(
        "connecting to the cluster: set KUBECONFIG (or ~/.kube/config), or drop --cluster to \
         read a manifest directory",
    )
}

async fn list_all<K>(client: &Client) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    Ok(api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {}s", K::kind(&K::DynamicType::default())))?
        .items)
}

/// Every Fleetward object of the cluster and the Secrets of the tenants' namespaces, with notes
/// on what could not be read.
pub async fn objects(client: &Client) -> anyhow::Result<(Vec<Resource>, Vec<String>)> {
    let mut notes = Vec::new();
    let tenants = Api::<Tenant>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing Tenants (are the Fleetward CRDs installed?)")?
        .items;
    let things: Vec<Thing> = list_all(client).await?;
    let mut objects: Vec<Resource> = Vec::new();
    let namespaces: BTreeSet<String> = tenants.iter().map(|t| t.namespace().to_owned()).collect();
    for ns in &namespaces {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        match api.list(&ListParams::default()).await {
            Ok(list) => objects.extend(
                list.items
                    .iter()
                    .filter_map(secret_data)
                    .map(Resource::Secret),
            ),
            Err(e) => {
                // Without read access to Secrets, assume every Thing's key is in place: the
                // answer is then about grants alone, and says so.
                notes.push(format!(
                    "could not read Secrets in namespace {ns} ({e}); assuming every Thing \
                     there has its key"
                ));
                let names: BTreeSet<String> = things
                    .iter()
                    .filter(|t| t.metadata.namespace.as_deref() == Some(ns.as_str()))
                    .map(Thing::secret_name)
                    .collect();
                objects.extend(names.into_iter().map(|name| {
                    Resource::Secret(SecretData {
                        namespace: ns.clone(),
                        name,
                        entries: BTreeMap::from([("key".to_owned(), vec![0; 32])]),
                    })
                }));
            }
        }
    }
    objects.extend(tenants.into_iter().map(Resource::Tenant));
    objects.extend(things.into_iter().map(Resource::Thing));
    objects.extend(
        list_all::<Channel>(client)
            .await?
            .into_iter()
            .map(Resource::Channel),
    );
    objects.extend(
        list_all::<Connection>(client)
            .await?
            .into_iter()
            .map(Resource::Connection),
    );
    objects.extend(
        list_all::<User>(client)
            .await?
            .into_iter()
            .map(Resource::User),
    );
    objects.extend(
        list_all::<Group>(client)
            .await?
            .into_iter()
            .map(Resource::Group),
    );
    objects.extend(
        list_all::<Policy>(client)
            .await?
            .into_iter()
            .map(Resource::Policy),
    );
    Ok((objects, notes))
}

/// The key entries of a thing's Secret in the cluster, by entry name.
pub async fn thing_keys(
    client: &Client,
    tenant: &str,
    thing: &str,
) -> anyhow::Result<(String, String, BTreeMap<String, Vec<u8>>)> {
    let t = Api::<Tenant>::all(client.clone())
        .get_opt(tenant)
        .await
        .context("reading the Tenant")?
        .with_context(|| format!("there is no Tenant {tenant} in the cluster"))?;
    let ns = t.namespace().to_owned();
    let th = Api::<Thing>::namespaced(client.clone(), &ns)
        .get_opt(thing)
        .await
        .context("reading the Thing")?
        .with_context(|| format!("there is no Thing {thing} in namespace {ns}"))?;
    let secret_name = th.secret_name();
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(&secret_name)
        .await
        .with_context(|| format!("reading Secret {ns}/{secret_name}"))?
        .with_context(|| {
            format!(
                "Secret {ns}/{secret_name} does not exist yet; is the operator running? \
                 See `kubectl describe thing -n {ns} {thing}`"
            )
        })?;
    let data = secret_data(&secret).context("the Secret has no name")?;
    let keys = data
        .entries
        .into_iter()
        .filter(|(k, _)| is_key_entry(k))
        .collect();
    Ok((ns, secret_name, keys))
}
