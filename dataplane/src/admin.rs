//! The admin listener: `/healthz`, `/readyz` and `/metrics`, and whatever routes the process
//! adds (`fleetward start`'s `/can-i`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::listener::{GatedListener, HttpLimits};

/// What the admin endpoints read.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// Ready to serve: a snapshot is applied and the router runs.
    pub ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// The Prometheus text (format 0.0.4).
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

/// Serves the admin endpoints and `extra` until the task is dropped.
pub(crate) async fn serve(listener: GatedListener, state: AdminState, extra: axum::Router) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(extra);
    let busy = || {
        use axum::response::IntoResponse as _;
        crate::ingress::ApiError::busy().into_response()
    };
    crate::listener::serve_http(listener, app, HttpLimits::default(), busy, None).await;
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match (state.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        (state.metrics)(),
    )
}
