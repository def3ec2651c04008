//! `POST /provisioning/{tenant}/{claim}`: a device holding a claim certificate asks for a Thing
//! of its own and a certificate for its key (fleet provisioning, docs/certificates.md).
//!
//! Checked here, in this order: the claim certificate (over HTTPS, one of exactly the claim's,
//! within its validity), the claim (enabled, its tenant not suspended), the name (a DNS label
//! the claim's pattern matches, not taken), the claim's room. Then the [`Provisioner`] makes
//! the Thing and signs, and the answer waits (a bounded time) until this pod serves the Thing,
//! so the device can connect at once. Every refusal and every success is audited.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, body::Bytes};
use fleetward_policy::certificates::CertificateNames;
use fleetward_policy::{ProvisioningClaim, SubjectKind};
use serde::Deserialize;

use crate::audit;
use crate::ingress::{ApiError, Ingress};
use crate::provisioning::{ProvisionError, ProvisionRequest};
use crate::router::Router;

/// The route.
pub const PROVISION_PATH: &str = "/provisioning/{tenant}/{claim}";

/// The largest request body: a name and a PKCS#10 request (a few hundred bytes for P-256).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// How long the answer waits for this pod to serve the new Thing.
const SERVED_WITHIN: Duration = Duration::from_secs(10);

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    /// The thing name asked for.
    thing: String,
    /// The device's PKCS#10 certificate signing request, PEM.
    csr: String,
}

/// What the audit event and the refusal name.
struct Seen<'a> {
    tenant: &'a str,
    claim: &'a str,
    thing: Option<String>,
}

/// `POST /provisioning/{tenant}/{claim}`.
pub(crate) async fn provision<R: Router>(
    State(shared): State<Arc<Ingress<R>>>,
    Path((tenant, claim)): Path<(String, String)>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Response {
    let client = peer.map(|Extension(ConnectInfo(a))| a);
    let mut seen = Seen {
        tenant: &tenant,
        claim: &claim,
        thing: None,
    };
    match handle(&shared, &mut seen, &body).await {
        Ok((thing, provisioned)) => {
            shared.audit.provisioned(&tenant, &thing, &claim, client);
            shared.metrics.provisioned();
            let answer = serde_json::json!({
                "tenant": tenant,
                "thing": thing,
                "certificate": provisioned.certificate_pem,
                "ca": provisioned.ca_pem,
            });
            (StatusCode::CREATED, Json(answer)).into_response()
        }
        Err(e) => {
            shared.metrics.refused("provisioning", e.error);
            shared.audit.refused(audit::Refusal {
                tenant: seen.tenant,
                kind: Some(SubjectKind::Thing),
                subject: seen.thing.as_deref().unwrap_or(""),
                action: audit::Action::Provision,
                topic: Some(seen.claim),
                reason: e.error,
                protocol: audit::Protocol::Http,
                client,
            });
            e.into_response()
        }
    }
}

async fn handle<R: Router>(
    shared: &Ingress<R>,
    seen: &mut Seen<'_>,
    body: &[u8],
) -> Result<(String, crate::provisioning::Provisioned), ApiError> {
    let claim = claim_of(shared, seen.tenant, seen.claim)?;
    if body.len() > MAX_REQUEST_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a provisioning request is at most {MAX_REQUEST_BYTES} bytes"),
        ));
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON {{\"thing\": \"<name>\", \"csr\": \"<PEM PKCS#10>\"}}: {e}"
        ))
    })?;
    seen.thing = Some(body.thing.clone());
    check_name(&claim, &body.thing)?;
    let snapshot = shared.snapshot();
    if snapshot.thing(seen.tenant, &body.thing).is_some() {
        return Err(refusal(&ProvisionError::Exists(body.thing)));
    }
    if !claim.has_room() {
        return Err(refusal(&ProvisionError::LimitReached(format!(
            "the claim has made the {} things it may; ask the tenant's admin for room",
            claim.max_things
        ))));
    }
    let Some(provisioner) = shared.provisioner.clone() else {
        return Err(refusal(&ProvisionError::Unavailable(
            "this dataplane has no provisioner".into(),
        )));
    };
    let request = ProvisionRequest {
        tenant: seen.tenant.to_owned(),
        claim: seen.claim.to_owned(),
        thing: body.thing.clone(),
        csr_pem: body.csr,
    };
    let provisioned = provisioner
        .provision(request)
        .await
        .map_err(|e| refusal(&e))?;
    served(shared, seen.tenant, &body.thing).await;
    Ok((body.thing, provisioned))
}

/// The claim, once the caller proved it holds one of its certificates; the same 401 for an
/// unknown tenant or claim and a wrong certificate, so neither leaks.
fn claim_of<R: Router>(
    shared: &Ingress<R>,
    tenant: &str,
    claim: &str,
) -> Result<ProvisioningClaim, ApiError> {
    let refused = || {
        ApiError::unauthorized(
            "present the claim's certificate over HTTPS (curl --cert claim.crt --key \
             claim.key): it must be one of the claim's certificateSecretName, within its \
             validity",
        )
    };
    let chain = crate::tls::request_chain().ok_or_else(refused)?;
    let leaf = chain.0.first().ok_or_else(refused)?;
    let names = CertificateNames::read(leaf).ok_or_else(refused)?;
    let snapshot = shared.snapshot();
    let t = snapshot.tenant(tenant).ok_or_else(refused)?;
    let c = t
        .provisioning
        .iter()
        .find(|c| c.name == claim && c.accepts(&names.fingerprint))
        .ok_or_else(refused)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if names.not_after <= now || names.not_before > now {
        return Err(refused());
    }
    if c.disabled || t.suspended {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "claim_disabled",
            "the claim (or its tenant) is disabled; ask the tenant's admin",
        ));
    }
    Ok(c.clone())
}

/// A DNS label that the claim's pattern matches as a whole.
fn check_name(claim: &ProvisioningClaim, name: &str) -> Result<(), ApiError> {
    let label = fleetward_policy::is_dns_label(name);
    let matches = fleetward_policy::provisioning::name_allowed(&claim.name_pattern, name);
    if label && matches {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "name_not_allowed",
        format!(
            "{name:?} is not a name this claim gives: it must be a DNS label (lower-case \
             letters, digits, '-') matching {:?}",
            claim.name_pattern
        ),
    ))
}

/// The HTTP answer to a provisioner's refusal.
fn refusal(e: &ProvisionError) -> ApiError {
    let (status, error) = match e {
        ProvisionError::Exists(_) => (StatusCode::CONFLICT, "exists"),
        ProvisionError::LimitReached(_) => (StatusCode::FORBIDDEN, "claim_exhausted"),
        ProvisionError::Claim(_) => (StatusCode::FORBIDDEN, "claim_unusable"),
        ProvisionError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_csr"),
        ProvisionError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let mut answer = ApiError::new(status, error, e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        answer.retry_after = Some(5);
    }
    answer
}

/// Waits until this pod's policy has the new Thing, or [`SERVED_WITHIN`] passed (the device
/// then retries its first CONNECT, as after any refusal).
async fn served<R: Router>(shared: &Ingress<R>, tenant: &str, thing: &str) {
    let mut policy = shared.policy.clone();
    let _ = tokio::time::timeout(SERVED_WITHIN, async {
        loop {
            if policy.borrow_and_update().thing(tenant, thing).is_some() {
                return;
            }
            if policy.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}
