//! Refusals of the HTTP and WebSocket adapters: a status, a stable label and a sentence.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetward_policy::DenyReason;

use super::publish_path::PublishRefusal;
use super::retained::QuotaExceeded;

/// What the `WWW-Authenticate` header of a 401 offers.
pub(crate) const CHALLENGE: &str = "Thing realm=\"fleetward\", Basic realm=\"fleetward\", charset=\"UTF-8\", Bearer realm=\"fleetward\"";

/// A refusal: answered as a JSON body `{"error": <label>, "message": <sentence>}` over HTTP,
/// and as an `error` frame on a WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable label.
    pub error: &'static str,
    /// What happened and what to do, for a person.
    pub message: String,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// The same answer for every "no": a channel that does not exist is not told apart from one
    /// the subject may not use, so existence does not leak.
    pub(crate) fn forbidden(who: &str, action: &str, topic: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{who} may not {action} on {topic}: no grant allows it (or the channel does not \
                 exist); ask the tenant's admin for a grant on the channel"
            ),
        )
    }

    /// [`ApiError::forbidden`], naming Cedar's reason when a tenant's Cedar policies refused:
    /// Cedar is asked only once the channel is known to exist in the subject's own tenant, so
    /// the reason tells nothing of another tenant.
    pub(crate) fn denied(reason: DenyReason, who: &str, action: &str, topic: &str) -> Self {
        match reason {
            DenyReason::CedarForbid | DenyReason::CedarNoPermit => Self::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{who} may not {action} on {topic}: {} ({}); ask the tenant's admin, or see \
                     `fleetward can-i`",
                    reason.as_str(),
                    fleetward_policy::deny_text(reason)
                ),
            ),
            _ => Self::forbidden(who, action, topic),
        }
    }

    /// 503 when the listener serves `--http-max-requests` already.
    pub(crate) fn busy() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the server is serving as many requests as it takes at once; retry after a second",
        );
        e.retry_after = Some(1);
        e
    }

    /// 426 for a plain request to a WebSocket endpoint.
    pub(crate) fn upgrade_required() -> Self {
        Self::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this is a WebSocket endpoint: open it with an `Upgrade: websocket` handshake",
        )
    }

    pub(crate) fn policy_unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this dataplane has no policy yet; try again shortly",
        );
        e.retry_after = Some(1);
        e
    }

    /// The answer to a refusal of the shared publish path.
    pub(crate) fn from_publish(refusal: &PublishRefusal, who: &str, topic: &str) -> Self {
        match refusal {
            PublishRefusal::Topic(e) => Self::new(
                StatusCode::BAD_REQUEST,
                "bad_topic",
                format!("{topic:?} is not a topic name one can publish to: {e}"),
            ),
            PublishRefusal::Denied(DenyReason::PolicyUnavailable) => Self::policy_unavailable(),
            PublishRefusal::Denied(reason) => Self::denied(*reason, who, "publish", topic),
            PublishRefusal::TooLarge { max } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the message (payload and properties) is over the limit of {max} bytes of \
                     this channel or tenant; send less"
                ),
            ),
            PublishRefusal::Quota(q) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                match q {
                    QuotaExceeded::Messages(max) => format!(
                        "the tenant keeps its maximum of {max} retained messages \
                         (spec.limits.maxRetainedMessages); clear some (publish an empty \
                         retained message) or raise the limit"
                    ),
                    QuotaExceeded::Bytes(max) => format!(
                        "the tenant's retained messages would exceed {max} bytes \
                         (spec.limits.maxRetainedBytes); clear some or raise the limit"
                    ),
                },
            ),
            PublishRefusal::TooManyUserProperties { max } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_user_properties",
                format!("a message may carry at most {max} user properties; send fewer"),
            ),
            PublishRefusal::Rate { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut e = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "the tenant is over its publish rate; retry after {secs} s (Retry-After)"
                    ),
                );
                e.retry_after = Some(secs);
                e
            }
            PublishRefusal::HistoryBehind => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "history_behind",
                    "the channel keeps history and its writer is behind; the message was not \
                     accepted: retry after 1 s (Retry-After)",
                );
                e.retry_after = Some(1);
                e
            }
            PublishRefusal::Router(e) => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the message could not be handed to the router ({e}); try again"),
                );
                e.retry_after = Some(1);
                e
            }
        }
    }

    /// The JSON body (also the payload of a WebSocket `error` frame, with `type` added there).
    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.status.as_u16(),
            "error": self.error,
            "message": self.message,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// 408 when reading a body failed because it did not arrive within `--http-body-timeout-secs`.
pub(crate) fn body_timed_out(e: &axum::Error) -> Option<ApiError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return Some(ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time (--http-body-timeout-secs); send it \
                 whole, or a smaller one",
            ));
        }
        cause = c.source();
    }
    None
}
