//! Test fixtures of the leader's writers: a fake API server that answers status patches and Secret creations as the real one does and records every call, and small object builders.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use fleetward_crds as crds;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::observed::{Observed, Shown, WATCHED_KINDS};
use crate::index::{ObjectKey, SecretData};
use crate::resource::Resource;

/// A key the index accepts (32 bytes of base64url).
pub(crate) const KEY: &str = "Zm9vYmFyYmF6cXV4LXRoaXMtaXMtYS10ZXN0LWtleS0x";

/// One request the fake API server answered.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) body: Value,
    pub(crate) at: Instant,
}

impl Call {
    /// The name of the object a status patch is for.
    pub(crate) fn status_of(&self) -> Option<&str> {
        let path = self.path.strip_suffix("/status")?;
        (self.method == http::Method::PATCH).then(|| path.rsplit('/').next().unwrap_or_default())
    }
}

/// See the module documentation.
#[derive(Clone, Debug, Default)]
pub(crate) struct FakeApi {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeApi {
    /// A client whose every request this fake answers.
    pub(crate) fn client(&self) -> Client {
        let calls = self.calls.clone();
        let service = tower::service_fn(move |request: http::Request<Body>| {
            let calls = calls.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await?;
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path().to_owned();
                let response = answer(&parts.method, &path, &body);
                lock(&calls).push(Call {
                    method: parts.method,
                    path,
                    body,
                    at: Instant::now(),
                });
                Ok::<_, kube::Error>(response)
            }
        });
        Client::new(service, "default")
    }

    /// Every call so far.
    pub(crate) fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// The status patches so far, as (object name, status written, when).
    pub(crate) fn status_patches(&self) -> Vec<(String, Value, Instant)> {
        self.calls()
            .into_iter()
            .filter_map(|c| {
                let name = c.status_of()?.to_owned();
                Some((name, c.body["status"].clone(), c.at))
            })
            .collect()
    }

    /// Forgets the calls so far.
    pub(crate) fn clear(&self) {
        lock(&self.calls).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A status patch returns the object with the status applied; a created Secret is returned
/// as sent; anything else (Events) is not found.
fn answer(method: &http::Method, path: &str, body: &Value) -> http::Response<Body> {
    let (code, answer) = if *method == http::Method::PATCH && path.ends_with("/status") {
        let name = path.trim_end_matches("/status").rsplit('/').next();
        let object = json!({
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "metadata": {"name": name},
            "status": body["status"],
        });
        (http::StatusCode::OK, object)
    } else if *method == http::Method::POST && path.ends_with("/secrets") {
        (http::StatusCode::CREATED, body.clone())
    } else {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("{path} not found"),
        });
        (http::StatusCode::NOT_FOUND, status)
    };
    let mut response = http::Response::new(Body::from(answer.to_string().into_bytes()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: (!namespace.is_empty()).then(|| namespace.into()),
        uid: Some(format!("uid-{namespace}-{name}")),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

/// A Tenant spec with nothing set: it owns the namespace of its own name.
pub(crate) fn tenant_spec() -> crds::TenantSpec {
    crds::TenantSpec {
        provisioning: Default::default(),
        device_ca: Default::default(),
        authorization: Default::default(),
        namespace: None,
        display_name: None,
        suspended: false,
        limits: None,
        web: None,
    }
}

/// Tenant `name`, owning the namespace of the same name.
pub(crate) fn tenant(name: &str) -> Resource {
    let mut t = crds::Tenant::new(name, tenant_spec());
    t.metadata = meta("", name);
    Resource::Tenant(t)
}

/// Thing `name` in `namespace`.
pub(crate) fn thing(namespace: &str, name: &str) -> Resource {
    let mut t = crds::Thing::new(name, crds::ThingSpec::default());
    t.metadata = meta(namespace, name);
    Resource::Thing(t)
}

/// The Secret holding Thing `thing`'s key, under the name the operator gives it.
pub(crate) fn thing_secret(namespace: &str, thing: &str) -> Resource {
    Resource::Secret(SecretData {
        namespace: namespace.into(),
        name: format!("{thing}-credentials"),
        entries: BTreeMap::from([("key".to_owned(), KEY.as_bytes().to_vec())]),
    })
}

/// Channel `name` in `namespace`.
pub(crate) fn channel(namespace: &str, name: &str) -> Resource {
    let mut c = crds::Channel::new(name, crds::ChannelSpec::default());
    c.metadata = meta(namespace, name);
    Resource::Channel(c)
}

/// Connection `name` granting Thing `thing` publish and subscribe on `channel`.
pub(crate) fn connection(namespace: &str, name: &str, thing: &str, channel: &str) -> Resource {
    let mut c = crds::Connection::new(
        name,
        crds::ConnectionSpec {
            subject: crds::Subject {
                kind: crds::SubjectKind::Thing,
                name: thing.into(),
            },
            channel: channel.into(),
            actions: vec![crds::Action::Publish, crds::Action::Subscribe],
            subtopics: None,
        },
    );
    c.metadata = meta(namespace, name);
    Resource::Connection(c)
}

/// What the API server shows of `object` (no status), as the watches record it.
pub(crate) fn shown(object: &Resource) -> Option<(ObjectKey, Shown)> {
    let meta = match object {
        Resource::Tenant(o) => &o.metadata,
        Resource::Thing(o) => &o.metadata,
        Resource::Channel(o) => &o.metadata,
        Resource::Connection(o) => &o.metadata,
        Resource::User(o) => &o.metadata,
        Resource::Group(o) => &o.metadata,
        Resource::Policy(o) => &o.metadata,
        Resource::Secret(_) => return None,
    };
    let shown = Shown {
        uid: meta.uid.clone(),
        generation: meta.generation,
        deleting: false,
        status: None,
    };
    Some((object.key()?, shown))
}

/// An `Observed` whose watches have all listed, with no namespace claimed.
pub(crate) fn listed() -> Observed {
    let observed = Observed::new();
    for kind in WATCHED_KINDS {
        observed.kind_synced(kind);
    }
    observed
}
