//! cert-manager Certificates: a Thing with `x509.issue` in a tenant whose `deviceCA` names an
//! issuer gets a `Certificate` (server-side applied, owned by the Thing) that has cert-manager
//! write its client certificate into the Thing's TLS Secret.
//!
//! The operator deletes only Certificates it labelled as its own, when the Thing stops asking;
//! the garbage collector removes them with their Thing. Writes happen only while the replica
//! leads. Without cert-manager's CRDs nothing is written (the Things' status says so).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::time::Instant;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use tokio::sync::watch;

use super::observed::Observed;
use super::secrets::{LABEL_MANAGED_BY, LABEL_THING};
use super::{FIELD_MANAGER, Retries, api_resource, certmanager};
use crate::index::{CertificateRequest, Facts, Kind, ObjectKey, Reason};
use crate::shared::SharedIndex;

/// The key usages of a device's client certificate.
pub const USAGES: [&str; 3] = ["client auth", "digital signature", "key encipherment"];

/// The cert-manager `Certificate` for Thing `thing` (uid `uid`) in `namespace`.
pub fn certificate(
    namespace: &str,
    thing: &str,
    uid: &str,
    request: &CertificateRequest,
) -> serde_json::Value {
    let owner = api_resource(Kind::Thing);
    serde_json::json!({
        "apiVersion": certmanager::API_VERSION,
        "kind": "Certificate",
        "metadata": {
            "name": thing,
            "namespace": namespace,
            "labels": {
                LABEL_MANAGED_BY: FIELD_MANAGER,
                LABEL_THING: thing,
            },
            "ownerReferences": [{
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "name": thing,
                "uid": uid,
                "controller": true,
            }],
        },
        "spec": {
            "secretName": request.secret_name,
            "commonName": request.common_name,
            "uris": [format!("{}{}/{thing}", fleetward_policy::certificates::THING_URI_SCHEME, request.tenant)],
            "issuerRef": {
                "name": request.issuer_name,
                "kind": request.issuer_kind,
                "group": certmanager::GROUP,
            },
            "usages": USAGES,
            "privateKey": {
                "algorithm": "ECDSA",
                "size": 256,
                "rotationPolicy": "Always",
            },
        },
    })
}

/// Applies and deletes Things' Certificates; see the module documentation.
pub struct CertificateReconciler {
    /// The API client.
    pub client: Client,
    /// The index: which Things ask for a certificate, and how.
    pub index: Arc<SharedIndex>,
    /// The Things' uids.
    pub observed: Arc<Observed>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
}

impl CertificateReconciler {
    /// Runs until the index or the leadership go away.
    pub async fn run(mut self) -> &'static str {
        let api = certmanager::resource("Certificate", "certificates");
        let mut commits = self.index.subscribe();
        let mut seen = self.observed.subscribe();
        // What this leader applied, by Thing: `None` for one found at the start of a term.
        let mut applied: Option<HashMap<ObjectKey, Option<serde_json::Value>>> = None;
        let mut retries = Retries::default();
        loop {
            let leading = *self.leader.borrow_and_update();
            if !leading {
                applied = None;
            } else if self.observed.ready().is_ok() && self.index.read().cert_manager_installed() {
                if applied.is_none() {
                    applied = self.existing(&api).await;
                }
                if let Some(applied) = &mut applied {
                    self.reconcile(&api, applied, &mut retries).await;
                }
            }
            let retry = retries.next();
            if super::next_round(&mut commits, &mut seen, &mut self.leader, retry).await {
                return "Certificate reconciler";
            }
        }
    }

    /// The Certificates the operator made before (its label), to delete the unwanted ones.
    async fn existing(
        &self,
        api: &kube::api::ApiResource,
    ) -> Option<HashMap<ObjectKey, Option<serde_json::Value>>> {
        let all: Api<DynamicObject> = Api::all_with(self.client.clone(), api);
        let params = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={FIELD_MANAGER}"));
        match all.list_metadata(&params).await {
            Ok(list) => Some(
                list.items
                    .into_iter()
                    .filter_map(|c| {
                        let key = ObjectKey::namespaced(
                            Kind::Thing,
                            c.metadata.namespace?,
                            c.metadata.name?,
                        );
                        Some((key, None))
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "listing the operator's cert-manager Certificates failed; retrying (check its RBAC on cert-manager.io certificates)");
                None
            }
        }
    }

    /// What the Certificates should be: by Thing, the body to apply.
    fn desired(&self, retries: &Retries) -> BTreeMap<ObjectKey, Option<serde_json::Value>> {
        let now = Instant::now();
        let idx = self.index.read();
        idx.objects()
            .filter(|k| k.kind == Kind::Thing)
            .filter_map(|key| {
                let status = idx.status(key)?;
                let Facts::Thing { x509: Some(x), .. } = &*status.facts else {
                    return None;
                };
                let request = x.issue.as_ref()?;
                if status.readiness.reason == Reason::LimitExceeded {
                    return None;
                }
                // Blocked by a retry or without a uid yet: keep it, do not write it now.
                let uid = self
                    .observed
                    .shown(key)
                    .filter(|s| !s.deleting)
                    .and_then(|s| s.uid)
                    .filter(|_| !retries.blocks(key, now));
                let body = uid.map(|uid| certificate(&key.namespace, &key.name, &uid, request));
                Some((key.clone(), body))
            })
            .collect()
    }

    async fn reconcile(
        &self,
        api: &kube::api::ApiResource,
        applied: &mut HashMap<ObjectKey, Option<serde_json::Value>>,
        retries: &mut Retries,
    ) {
        let desired = self.desired(retries);
        let gone: Vec<ObjectKey> = applied
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let certs: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, api);
            match certs.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(thing = %key, "deleted the Thing's cert-manager Certificate: it no longer asks for one")
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(thing = %key, error = %e, "deleting the Thing's Certificate failed; retrying with backoff");
                    retries.failed(key);
                    continue;
                }
            }
            applied.remove(&key);
        }
        for (key, body) in desired {
            let Some(body) = body else {
                continue;
            };
            if applied.get(&key).and_then(Option::as_ref) == Some(&body) {
                continue;
            }
            let certs: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, api);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match certs.patch(&key.name, &params, &Patch::Apply(&body)).await {
                Ok(_) => {
                    tracing::info!(thing = %key, "applied the Thing's cert-manager Certificate");
                    retries.succeeded(&key);
                    applied.insert(key, Some(body));
                }
                Err(e) => {
                    let failures = retries.failed(key.clone());
                    tracing::warn!(thing = %key, failures, error = %e, "applying the Thing's cert-manager Certificate failed; retrying with backoff");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_owned_by_its_thing_and_names_it() {
        let request = CertificateRequest {
            tenant: "acme".into(),
            common_name: "SN-0042".into(),
            secret_name: "sensor-1-tls".into(),
            issuer_name: "devices".into(),
            issuer_kind: "ClusterIssuer",
        };
        let c = certificate("acme", "sensor-1", "uid-1", &request);
        assert_eq!(c["apiVersion"], "cert-manager.io/v1");
        assert_eq!(c["kind"], "Certificate");
        assert_eq!(c["metadata"]["name"], "sensor-1");
        assert_eq!(c["metadata"]["namespace"], "acme");
        assert_eq!(c["metadata"]["labels"][LABEL_MANAGED_BY], FIELD_MANAGER);
        let owner = &c["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                &owner["kind"],
                &owner["name"],
                &owner["uid"],
                &owner["controller"]
            ),
            (
                &serde_json::json!("Thing"),
                &serde_json::json!("sensor-1"),
                &serde_json::json!("uid-1"),
                &serde_json::json!(true)
            )
        );
        let spec = &c["spec"];
        assert_eq!(spec["secretName"], "sensor-1-tls");
        assert_eq!(spec["commonName"], "SN-0042");
        assert_eq!(
            spec["uris"],
            serde_json::json!(["fleetward://acme/sensor-1"])
        );
        assert_eq!(
            spec["issuerRef"],
            serde_json::json!({"name": "devices", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(
            spec["usages"],
            serde_json::json!(["client auth", "digital signature", "key encipherment"])
        );
        assert_eq!(
            spec["privateKey"],
            serde_json::json!({"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"})
        );
    }
}
