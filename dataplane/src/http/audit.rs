//! `GET /audit`: a tenant's admin reads the tenant's audit events kept on this pod.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetward_policy::{Role, SubjectKind};

use crate::audit::{DEFAULT_PAGE, Filter};
use crate::ingress::{self, ApiError, Ingress};
use crate::router::Router;

/// The audit trail of the caller's tenant.
pub const AUDIT_PATH: &str = "/audit";

/// The query of `GET /audit`.
#[derive(serde::Deserialize)]
pub(crate) struct AuditQuery {
    /// The tenant to read; only the caller's own may be named.
    tenant: Option<String>,
    subject: Option<String>,
    action: Option<String>,
    reason: Option<String>,
    /// RFC 3339.
    since: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /audit?subject=&action=&reason=&since=&limit=&cursor=` with a user's access token.
pub(crate) async fn audit<R: Router>(
    State(shared): State<Arc<Ingress<R>>>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    match read(&shared, &headers, query) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn read<R: Router>(
    shared: &Ingress<R>,
    headers: &HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let presented = ingress::from_authorization(headers)?;
    let snapshot = shared.snapshot();
    let subject = ingress::authenticate(&snapshot, &shared.users, &presented)?.subject;
    let admin = subject.kind == SubjectKind::User
        && snapshot
            .user(&subject.tenant, &subject.name)
            .is_some_and(|u| u.role == Role::Admin);
    if !admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{}/{} may not read the audit trail: only a user with role admin may, signed \
                 in with POST /users/tokens",
                subject.tenant, subject.name
            ),
        ));
    }
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}; use ?subject=<name>|<kind>/<name>&action=&reason=&since=<RFC 3339>\
             &limit=<1-1000>&cursor=<next_cursor>",
            e.body_text()
        ))
    })?;
    if q.tenant.as_ref().is_some_and(|t| *t != subject.tenant) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "an admin of {} reads only that tenant's audit trail",
                subject.tenant
            ),
        ));
    }
    let since = q.since.as_deref().map(parse_since).transpose()?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "cursor={c:?} is not one this API gave; pass a page's next_cursor as is"
                ))
            })
        })
        .transpose()?;
    let filter = Filter {
        subject: q.subject,
        action: q.action,
        reason: q.reason,
        since,
        before,
        limit: q.limit.unwrap_or(DEFAULT_PAGE),
    };
    let page = shared.audit.query(&subject.tenant, &filter);
    let mut r = (StatusCode::OK, Json(page)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn parse_since(s: &str) -> Result<SystemTime, ApiError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(SystemTime::from)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "since={s:?} is not an RFC 3339 time ({e}); e.g. since=2025-01-31T12:00:00Z"
            ))
        })
}
