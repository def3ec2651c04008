//! The HTTP listener: HTTP publish, MQTT over WebSocket at `/mqtt`, plain WebSocket streams.

mod auth;
mod cors;
mod error;
mod publish;

use std::sync::Arc;

use axum::routing::{get, post};

pub(crate) use auth::{Authenticated, authenticate, from_authorization, from_ws_protocols};
pub use auth::{WS_AUTH_PREFIX, WS_BEARER_PREFIX, WS_PROTOCOL};
pub(crate) use error::ApiError;
pub use publish::CONTENT_TYPES;
pub(crate) use publish::{Seen, topic_of};

use crate::audit::http as audit;
use crate::listener::{GatedListener, HttpLimits};
use crate::mqtt::Shared;
use crate::router::Router;
use crate::users::http as users;
use crate::ws;

/// A channel: `POST` publishes on the channel's own topic, `GET` upgrades to a stream of it.
pub const CHANNEL_PATH: &str = "/m/{tenant}/c/{channel}";
/// A subtopic (`POST`, levels joined by `/`) or a subtopic filter (`GET`, `+` and `%23`).
pub const SUBTOPIC_PATH: &str = "/m/{tenant}/c/{channel}/{*subtopic}";
/// MQTT over WebSocket, subprotocol `mqtt`.
pub const MQTT_PATH: &str = "/mqtt";

/// Every route of the listener as (method, path); `dataplane/openapi.yaml` documents exactly
/// these (a test compares them).
pub const ROUTES: [(&str, &str); 9] = [
    ("POST", CHANNEL_PATH),
    ("GET", CHANNEL_PATH),
    ("POST", SUBTOPIC_PATH),
    ("GET", SUBTOPIC_PATH),
    ("GET", MQTT_PATH),
    ("POST", users::TOKENS_PATH),
    ("POST", users::REFRESH_PATH),
    ("GET", users::JWKS_PATH),
    ("GET", audit::AUDIT_PATH),
];

/// The routes of [`ROUTES`] on one axum router.
pub(crate) fn app<R: Router>(shared: Arc<Shared<R>>) -> axum::Router {
    axum::Router::new()
        .route(
            CHANNEL_PATH,
            post(publish::publish::<R>).get(ws::stream::<R>),
        )
        .route(
            SUBTOPIC_PATH,
            post(publish::publish::<R>).get(ws::stream::<R>),
        )
        .route(MQTT_PATH, get(ws::mqtt::<R>))
        .route(users::TOKENS_PATH, post(users::login::<R>))
        .route(users::REFRESH_PATH, post(users::refresh::<R>))
        .route(users::JWKS_PATH, get(users::jwks::<R>))
        .route(audit::AUDIT_PATH, get(audit::audit::<R>))
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route: publish with POST /m/{tenant}/c/{channel}[/{subtopic}], stream \
                 with GET /m/{tenant}/c/{channel}[/{filter}] (WebSocket), MQTT over WebSocket at \
                 /mqtt, sign in with POST /users/tokens, read the audit trail with GET /audit",
            )
        })
        .with_state(shared)
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

/// Serves the HTTP listener until the task is dropped; pages of `cors_allowed_origins` (and
/// of each Tenant's `spec.web.allowedOrigins`) may call it across origins.
pub(crate) async fn serve<R: Router>(
    listener: GatedListener,
    shared: Arc<Shared<R>>,
    limits: HttpLimits,
    cors_allowed_origins: Vec<String>,
) {
    let origins = Arc::new(cors::Origins::new(
        cors_allowed_origins,
        shared.policy.clone(),
    ));
    let app = app(shared)
        .layer(cors::layer(origins))
        .layer(axum::middleware::from_fn(cors::refuse_unlisted_preflight));
    // Each request carries its peer's address: sign-in attempts are limited per address.
    crate::listener::serve_http(listener, app, limits).await;
}
