//! The users adapter: `POST /users/tokens` (sign-in), `POST /users/tokens/refresh` and
//! `GET /.well-known/jwks.json`. Sign-in and tokens themselves are the ingress's.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use fleetward_policy::SubjectKind;

use crate::audit;
use crate::ingress::{ApiError, Ingress, LoginRefusal, TokenPair};
use crate::router::Router;

pub use crate::ingress::UsersConfig;

/// Sign-in.
pub const TOKENS_PATH: &str = "/users/tokens";
/// Refresh.
pub const REFRESH_PATH: &str = "/users/tokens/refresh";
/// The public keys tokens are verified with.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The body of a sign-in.
#[derive(serde::Deserialize)]
pub(crate) struct LoginRequest {
    tenant: String,
    username: String,
    password: String,
}

/// The body of a refresh.
#[derive(serde::Deserialize)]
pub(crate) struct RefreshRequest {
    refresh_token: String,
}

fn body_error(e: &JsonRejection, shape: &str) -> ApiError {
    ApiError::bad_request(format!("the body must be JSON {shape}: {}", e.body_text()))
}

fn refused(r: LoginRefusal) -> ApiError {
    match r {
        LoginRefusal::BadCredentials => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "unknown user, wrong password, or a user who may not sign in",
        ),
        LoginRefusal::RateLimited(secs) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many sign-in attempts; retry in {secs} s"),
            );
            e.retry_after = Some(secs);
            e
        }
        LoginRefusal::BadRefreshToken => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "the refresh token is unknown or expired, or its user was disabled, deleted or had \
             their tokens revoked; sign in again",
        ),
        LoginRefusal::Replayed => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "the refresh token was already used, so every token of this sign-in is revoked; \
             sign in again",
        ),
        LoginRefusal::Unavailable(why) => {
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
            e.retry_after = Some(1);
            e
        }
    }
}

fn issued(pair: TokenPair) -> Response {
    let mut r = (StatusCode::OK, Json(pair)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /users/tokens` with `{"tenant", "username", "password"}`.
pub(crate) async fn login<R: Router>(
    State(shared): State<Arc<Ingress<R>>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return body_error(&e, r#"{"tenant": …, "username": …, "password": …}"#)
                .into_response();
        }
    };
    let client = peer.map(|Extension(ConnectInfo(a))| a);
    let who = (req.tenant.clone(), req.username.clone());
    let outcome = shared
        .users
        .login(
            shared.snapshot(),
            req.tenant,
            req.username,
            req.password.into_bytes(),
            client.map(|a| a.ip()),
        )
        .await;
    match outcome {
        Ok(pair) => {
            shared.metrics.user_login("ok");
            issued(pair)
        }
        Err(r) => {
            shared.metrics.user_login(match &r {
                LoginRefusal::RateLimited(_) => "rate_limited",
                LoginRefusal::Unavailable(_) => "unavailable",
                _ => "refused",
            });
            shared.audit.refused(audit::Refusal {
                tenant: &who.0,
                kind: Some(SubjectKind::User),
                subject: &who.1,
                action: audit::Action::SignIn,
                topic: None,
                reason: r.label(),
                protocol: audit::Protocol::Http,
                client,
            });
            refused(r).into_response()
        }
    }
}

/// `POST /users/tokens/refresh` with `{"refresh_token"}`.
pub(crate) async fn refresh<R: Router>(
    State(shared): State<Arc<Ingress<R>>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<RefreshRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return body_error(&e, r#"{"refresh_token": …}"#).into_response(),
    };
    match shared
        .users
        .refresh(shared.snapshot(), &req.refresh_token)
        .await
    {
        Ok(pair) => {
            shared.metrics.user_refresh("ok");
            issued(pair)
        }
        Err(r) => {
            shared.metrics.user_refresh(match &r {
                LoginRefusal::Replayed => "replayed",
                LoginRefusal::Unavailable(_) => "unavailable",
                _ => "refused",
            });
            // A refused refresh token names no subject one may believe: logged, not kept for
            // any tenant.
            shared.audit.refused(audit::Refusal {
                tenant: "",
                kind: Some(SubjectKind::User),
                subject: "",
                action: audit::Action::Refresh,
                topic: None,
                reason: r.label(),
                protocol: audit::Protocol::Http,
                client: peer.map(|Extension(ConnectInfo(a))| a),
            });
            refused(r).into_response()
        }
    }
}

/// `GET /.well-known/jwks.json`: every key that verifies, the active one among them.
pub(crate) async fn jwks<R: Router>(State(shared): State<Arc<Ingress<R>>>) -> Response {
    let ring = shared.users.keyring(&shared.snapshot());
    let mut r = Json(ring.jwks()).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    r
}
