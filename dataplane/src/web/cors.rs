//! CORS for browser pages on other origins: which origins may call the API (a Tenant's
//! `spec.web.allowedOrigins` and the pod's `--cors-allowed-origins`), answered by tower-http's
//! `CorsLayer`, and a 403 for a preflight from an origin nobody allowed.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleetward_policy::Snapshot;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::ingress::ApiError;

/// How long a browser may reuse a preflight's answer. Short, so a page keeps asking after its
/// origin was removed; every actual answer is still checked against the current policy.
pub const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Who may call the API from a page of another origin.
pub(crate) struct Origins {
    /// `--cors-allowed-origins`: every tenant.
    pod: Vec<String>,
    policy: watch::Receiver<Arc<Snapshot>>,
    /// Every tenant's origins together, for paths that name no tenant, kept for the snapshot
    /// they were gathered from (a sign-in scan is not paid per request).
    any_tenant: Mutex<(Weak<Snapshot>, Arc<Vec<String>>)>,
}

impl Origins {
    pub(crate) fn new(pod: Vec<String>, policy: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self {
            pod,
            policy,
            any_tenant: Mutex::new((Weak::new(), Arc::new(Vec::new()))),
        }
    }

    /// Whether a page of `origin` may call `path`. A path under `/m/{tenant}/` takes that
    /// tenant's origins; a path naming no tenant (sign-in, refresh, JWKS) those of any tenant,
    /// since which tenant a sign-in is for is in its body, which a preflight does not carry.
    pub(crate) fn allows(&self, origin: &str, path: &str) -> bool {
        if self.pod.iter().any(|o| o == origin) {
            return true;
        }
        let snapshot = self.policy.borrow().clone();
        match tenant_of(path) {
            // A suspended tenant's pages keep CORS, so they can read the 403 saying why.
            Some(tenant) => snapshot
                .tenant(tenant)
                .is_some_and(|t| t.web.allows(origin)),
            None => self.of_any_tenant(&snapshot).iter().any(|o| o == origin),
        }
    }

    fn of_any_tenant(&self, snapshot: &Arc<Snapshot>) -> Arc<Vec<String>> {
        let mut cached = self
            .any_tenant
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !Weak::ptr_eq(&cached.0, &Arc::downgrade(snapshot)) {
            let mut all: Vec<String> = snapshot
                .tenants()
                .flat_map(|t| t.web.allowed_origins.iter().cloned())
                .collect();
            all.sort_unstable();
            all.dedup();
            *cached = (Arc::downgrade(snapshot), Arc::new(all));
        }
        cached.1.clone()
    }
}

/// The tenant a path names: `/m/{tenant}/…`.
fn tenant_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/m/")?;
    let tenant = rest.split('/').next()?;
    (!tenant.is_empty()).then_some(tenant)
}

/// The CORS answer of every route: the request's origin echoed when allowed (never `*`), no
/// credentials mode (the API takes credentials in `Authorization`, never from cookies).
pub(crate) fn layer(origins: Arc<Origins>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            origin
                .to_str()
                .is_ok_and(|o| origins.allows(o, parts.uri.path()))
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// Turns the layer's empty 200 to a preflight nobody allowed into a 403 that says why, so the
/// refusal is visible in a browser's network panel and to curl.
pub(crate) async fn refuse_unlisted_preflight(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let origin = request.headers().get(header::ORIGIN).cloned();
    let response = next.run(request).await;
    let Some(origin) = origin.filter(|_| preflight) else {
        return response;
    };
    if response
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        return response;
    }
    let shown = origin.to_str().unwrap_or("(not text)");
    let mut refused = ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!(
            "pages of {shown} may not call this API: add the origin to the Tenant's \
             spec.web.allowedOrigins, or to the dataplane's --cors-allowed-origins"
        ),
    )
    .into_response();
    if let Some(vary) = response.headers().get(header::VARY) {
        refused.headers_mut().insert(header::VARY, vary.clone());
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_policy::{Resources, Tenant, TenantWeb};

    fn snapshot(globex_origins: &[&str]) -> Arc<Snapshot> {
        let tenant = |name: &str, origins: &[&str]| Tenant {
            provisioning: Default::default(),
            device_ca: Default::default(),
            engine: Default::default(),
            name: name.into(),
            uid: String::new(),
            suspended: false,
            limits: Default::default(),
            web: TenantWeb {
                allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            },
        };
        let resources = Resources {
            tenants: vec![
                tenant("acme", &["https://dash.acme.example"]),
                tenant("globex", globex_origins),
            ],
            ..Resources::default()
        };
        Arc::new(Snapshot::from_resources(1, resources).expect("a snapshot"))
    }

    #[test]
    fn a_tenants_path_takes_its_own_origins_and_the_pods() {
        let (_tx, rx) = watch::channel(snapshot(&["https://dash.globex.example"]));
        let o = Origins::new(vec!["http://localhost:3000".into()], rx);
        assert!(o.allows("https://dash.acme.example", "/m/acme/c/telemetry"));
        assert!(!o.allows("https://dash.globex.example", "/m/acme/c/telemetry"));
        assert!(o.allows("http://localhost:3000", "/m/acme/c/telemetry"));
        assert!(!o.allows("https://dash.acme.example", "/m/nobody/c/telemetry"));
        assert!(!o.allows("https://evil.example", "/m/acme/c/telemetry"));
    }

    #[test]
    fn paths_naming_no_tenant_take_any_tenants_origins_as_the_policy_changes() {
        let (tx, rx) = watch::channel(snapshot(&["https://dash.globex.example"]));
        let o = Origins::new(Vec::new(), rx);
        assert!(o.allows("https://dash.acme.example", "/users/tokens"));
        assert!(o.allows("https://dash.globex.example", "/users/tokens/refresh"));
        assert!(!o.allows("https://evil.example", "/users/tokens"));
        // An origin removed from its tenant goes with the next snapshot.
        tx.send_replace(snapshot(&[]));
        assert!(!o.allows("https://dash.globex.example", "/users/tokens"));
        assert!(!o.allows("https://dash.globex.example", "/m/globex/c/telemetry"));
        assert!(o.allows("https://dash.acme.example", "/users/tokens"));
    }
}
