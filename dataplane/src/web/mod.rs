//! The HTTP listener: every HTTP-facing adapter's routes on one axum router (HTTP publish and
//! the audit trail from `http/`, streams from `ws/`, sign-in from `users/`, MQTT over WebSocket
//! from `mqtt/`), with CORS in front.

mod cors;

use std::sync::Arc;

use axum::response::IntoResponse as _;
use axum::routing::{get, post};

use crate::http::{self, audit, history};
use crate::ingress::ApiError;
use crate::listener::{GatedListener, HttpLimits};
use crate::mqtt::{self, Broker};
use crate::router::Router;
use crate::{users, ws};

/// A channel: `POST` publishes on the channel's own topic, `GET` upgrades to a stream of it.
pub const CHANNEL_PATH: &str = "/m/{tenant}/c/{channel}";
/// A subtopic (`POST`, levels joined by `/`) or a subtopic filter (`GET`, `+` and `%23`).
pub const SUBTOPIC_PATH: &str = "/m/{tenant}/c/{channel}/{*subtopic}";
/// MQTT over WebSocket, subprotocol `mqtt`.
pub const MQTT_PATH: &str = "/mqtt";

/// Every route of the listener as (method, path); `dataplane/openapi.yaml` documents exactly
/// these (a test compares them).
pub const ROUTES: [(&str, &str); 10] = [
    ("POST", CHANNEL_PATH),
    ("GET", CHANNEL_PATH),
    ("POST", SUBTOPIC_PATH),
    ("GET", SUBTOPIC_PATH),
    ("GET", MQTT_PATH),
    ("POST", users::TOKENS_PATH),
    ("POST", users::REFRESH_PATH),
    ("GET", users::JWKS_PATH),
    ("GET", audit::AUDIT_PATH),
    ("GET", history::HISTORY_PATH),
];

/// The routes of [`ROUTES`] on one axum router.
pub(crate) fn app<R: Router>(broker: Arc<Broker<R>>) -> axum::Router {
    let shared = broker.ingress.clone();
    // MQTT over WebSocket takes the MQTT front-end's state; every other route the ingress.
    let mqtt_over_ws = axum::Router::new()
        .route(MQTT_PATH, get(mqtt::websocket::<R>))
        .with_state(broker);
    axum::Router::new()
        .route(CHANNEL_PATH, post(http::publish::<R>).get(ws::stream::<R>))
        .route(SUBTOPIC_PATH, post(http::publish::<R>).get(ws::stream::<R>))
        .route(users::TOKENS_PATH, post(users::login::<R>))
        .route(users::REFRESH_PATH, post(users::refresh::<R>))
        .route(users::JWKS_PATH, get(users::jwks::<R>))
        .route(audit::AUDIT_PATH, get(audit::audit::<R>))
        .route(
            history::HISTORY_PATH,
            get(history::messages::<R>).post(history::publish::<R>),
        )
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
        .merge(mqtt_over_ws)
}

/// Serves the HTTP listener until the task is dropped; pages of `cors_allowed_origins` (and
/// of each Tenant's `spec.web.allowedOrigins`) may call it across origins.
pub(crate) async fn serve<R: Router>(
    listener: GatedListener,
    broker: Arc<Broker<R>>,
    limits: HttpLimits,
    cors_allowed_origins: Vec<String>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let origins = Arc::new(cors::Origins::new(
        cors_allowed_origins,
        broker.policy.clone(),
    ));
    let app = app(broker)
        .layer(cors::layer(origins))
        .layer(axum::middleware::from_fn(cors::refuse_unlisted_preflight));
    // Each request carries its peer's address: sign-in attempts are limited per address.
    let busy = || ApiError::busy().into_response();
    crate::listener::serve_http(listener, app, limits, busy, tls).await;
}
