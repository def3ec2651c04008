//! The WebSocket adapter: MQTT over WebSocket at `/mqtt`, and plain JSON streams of a channel.

pub mod close;
mod frames;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fleetward_policy::{Action, Decision, DenyReason, TopicLimits, parse_filter};

use crate::audit;
use crate::ingress::{self, ApiError, ConnectionSlots, Ingress, Uids};
use crate::listener::AuthHandle;
use crate::router::{Publisher, Router};

pub(crate) use frames::message_value;
pub(crate) use session::{Stream, answer_text};

/// How a refused stream is answered, chosen by `?refusal=` or else by whether the handshake
/// carries `Origin` (every browser's does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Refusal {
    /// A plain HTTP status before the upgrade (401, 403, 400, 503).
    Http,
    /// The upgrade accepted and the stream closed at once with a code and reason a page can
    /// read: a browser sees only close code 1006 for a refused handshake.
    Close,
}

/// The query of a stream's handshake.
#[derive(Default, serde::Deserialize)]
pub(crate) struct StreamQuery {
    refusal: Option<Refusal>,
}

impl Refusal {
    fn of(query: Option<Refusal>, headers: &HeaderMap) -> Self {
        query.unwrap_or(if headers.contains_key(axum::http::header::ORIGIN) {
            Self::Close
        } else {
            Self::Http
        })
    }

    /// Answers a refusal before the stream started: as HTTP, or closing the upgraded socket
    /// with the status's close code and `<error>: <message>` as the reason.
    fn answer(self, upgrade: WebSocketUpgrade, e: ApiError) -> Response {
        match self {
            Self::Http => e.into_response(),
            Self::Close => {
                let reason = format!("{}: {}", e.error, e.message);
                close_at_once(upgrade, close_code_of(e.status), reason)
            }
        }
    }
}

/// The close code of a refusal given as an HTTP status: 4000 + the status for a client's error
/// (4401, 4403, 4400), 1013 (try again later) for 503, 1011 otherwise.
pub(crate) fn close_code_of(status: StatusCode) -> u16 {
    match status.as_u16() {
        s @ 400..=499 => 4000 + s,
        503 => close_code::AGAIN,
        _ => close_code::ERROR,
    }
}

fn upgrade_required() -> Response {
    ApiError::upgrade_required().into_response()
}

/// `GET /m/{tenant}/c/{channel}[/{filter…}]` with an upgrade: a JSON stream of the channel.
pub(crate) async fn stream<R: Router>(
    State(shared): State<Arc<Ingress<R>>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
    socket: Option<Extension<AuthHandle>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query = query.map(|Query(q)| q).map_err(drop);
    open_stream(shared, params, headers, query, socket, peer, upgrade).await
}

/// [`stream`] with its extractors taken: the history reader's path hands a WebSocket upgrade
/// of `/m/{tenant}/c/{channel}/messages` (a stream of the subtopic `messages`) here.
pub(crate) async fn open_stream<R: Router>(
    shared: Arc<Ingress<R>>,
    params: HashMap<String, String>,
    headers: HeaderMap,
    query: Result<StreamQuery, ()>,
    socket: Option<Extension<AuthHandle>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return upgrade_required();
    };
    let Ok(query) = query else {
        return ApiError::bad_request(
            "?refusal= must be `http` (refusals as HTTP statuses) or `close` (the upgrade \
             accepted, then closed with 4401/4403 and the reason)",
        )
        .into_response();
    };
    let refusal = Refusal::of(query.refusal, &headers);
    let client = peer.map(|Extension(ConnectInfo(a))| a);
    let mut seen = ingress::Seen::default();
    let stream = match accept(&shared, &params, &headers, client, &mut seen) {
        Ok(stream) => stream,
        Err(e) => {
            refused(&shared, &params, &seen, e.error, client);
            return refusal.answer(upgrade, e);
        }
    };
    // A stream is a connection of its tenant like any other: counted before it takes a
    // router session.
    let snapshot = shared.snapshot();
    let slot = match ConnectionSlots::acquire(&shared, &snapshot, &stream.subject) {
        Ok(slot) => slot,
        Err(over) => {
            over_slots(&shared, &stream, over.label(), client);
            let reason = over.message(&stream.subject);
            return close_at_once(upgrade, close_code::POLICY, reason);
        }
    };
    if let Some(Extension(handle)) = &socket {
        handle.authenticated();
    }
    // Subscribed before the handshake is answered, so a client that publishes right after
    // it opened the stream sees its own messages.
    let link = match session::subscribe(&shared, &stream).await {
        Ok(link) => link,
        Err(e) => return refusal.answer(upgrade, e),
    };
    let max = shared.config.max_packet_size.saturating_add(64 * 1024);
    upgrade
        .protocols([ingress::WS_PROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| async move {
            let _slot = slot;
            session::run(shared, ws, stream, link).await;
        })
}

/// Counts and audits a stream refused before its upgrade, as far as the request got (`seen`).
fn refused<R: Router>(
    shared: &Ingress<R>,
    params: &HashMap<String, String>,
    seen: &ingress::Seen,
    error: &'static str,
    client: Option<SocketAddr>,
) {
    refused_as(
        shared,
        params,
        seen,
        ("ws", error),
        audit::Protocol::Ws,
        client,
    );
}

/// Counts (as `what`/`error`) and audits a request to read a channel refused as far as it got
/// (`seen`): a connection refusal before its credentials held, a subscribe refusal after.
pub(crate) fn refused_as<R: Router>(
    shared: &Ingress<R>,
    params: &HashMap<String, String>,
    seen: &ingress::Seen,
    (what, error): (&'static str, &'static str),
    protocol: audit::Protocol,
    client: Option<SocketAddr>,
) {
    shared.metrics.refused(what, error);
    let topic = ingress::topic_of(params).ok();
    shared.audit.refused(audit::Refusal {
        tenant: &seen.tenant,
        kind: seen.kind,
        subject: &seen.subject,
        // Credentials that do not hold refuse the connection; after them, the filter.
        action: if seen.proved {
            audit::Action::Subscribe
        } else {
            audit::Action::Connect
        },
        topic: topic.as_deref(),
        reason: seen.reason.unwrap_or(error),
        protocol,
        client,
    });
}

/// Counts and audits a stream over its tenant's or thing's `maxConnections` (`label`).
fn over_slots<R: Router>(
    shared: &Ingress<R>,
    stream: &session::Stream,
    label: &'static str,
    client: Option<SocketAddr>,
) {
    shared.metrics.refused("ws", label);
    shared.audit.refused(audit::Refusal {
        tenant: &stream.subject.tenant,
        kind: Some(stream.subject.kind),
        subject: &stream.subject.name,
        action: audit::Action::Connect,
        topic: Some(&stream.filter),
        reason: label,
        protocol: audit::Protocol::Ws,
        client,
    });
}

/// Completes the upgrade only to close the stream with `code` and `reason` (cut to the 123
/// bytes a close frame holds).
fn close_at_once(upgrade: WebSocketUpgrade, code: u16, mut reason: String) -> Response {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    upgrade
        .protocols([ingress::WS_PROTOCOL])
        .on_upgrade(move |mut ws| async move {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = ws.send(WsMessage::Close(Some(frame))).await;
        })
}

/// Authenticates and checks the subscription before the upgrade, so refusals are plain HTTP.
fn accept<R: Router>(
    shared: &Ingress<R>,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    client: Option<SocketAddr>,
    seen: &mut ingress::Seen,
) -> Result<session::Stream, ApiError> {
    let presented = match ingress::from_ws_protocols(headers) {
        Some(p) => p?,
        None => ingress::from_authorization(headers)?,
    };
    seen.claimed(&presented);
    let snapshot = shared.snapshot();
    let ingress::Authenticated {
        subject,
        key_digest,
        token_ends,
    } = ingress::authenticate(&snapshot, &shared.users, &presented)?;
    seen.proved(&subject);
    let filter = ingress::topic_of(params)?;
    let limits = TopicLimits::default();
    let topic = parse_filter(&filter, &limits).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_topic",
            format!("{filter:?} is not a topic filter one can subscribe to: {e}"),
        )
    })?;
    let who = format!("{}/{}", subject.tenant, subject.name);
    match shared
        .cache
        .authorize(&snapshot, &subject, Action::Subscribe, &topic)
    {
        Decision::Allow(_) => {}
        Decision::Deny(DenyReason::PolicyUnavailable) => {
            return Err(ApiError::policy_unavailable());
        }
        Decision::Deny(why) => {
            shared.metrics.refused("subscribe", why.as_str());
            seen.reason = Some(why.as_str());
            return Err(ApiError::denied(why, &who, "subscribe", &filter));
        }
    }
    let (tenant, channel) = (topic.tenant().to_owned(), topic.channel().to_owned());
    let uids = Uids::of(&snapshot, &tenant, &channel);
    let (tenant_uid, channel_uid) = (uids.tenant.to_owned(), uids.channel.to_owned());
    let wildcard = filter.contains(['+', '#']);
    Ok(session::Stream {
        publisher: Publisher::of(&subject),
        who,
        subject,
        key_digest,
        token_ends,
        publish_topic: (!wildcard).then(|| filter.clone()),
        filter,
        tenant,
        channel,
        tenant_uid,
        channel_uid,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_close_with_4000_plus_their_status() {
        assert_eq!(close_code_of(StatusCode::UNAUTHORIZED), 4401);
        assert_eq!(close_code_of(StatusCode::FORBIDDEN), 4403);
        assert_eq!(close_code_of(StatusCode::BAD_REQUEST), 4400);
        assert_eq!(close_code_of(StatusCode::SERVICE_UNAVAILABLE), 1013);
        assert_eq!(close_code_of(StatusCode::INTERNAL_SERVER_ERROR), 1011);
    }

    #[test]
    fn a_handshake_with_an_origin_is_refused_by_closing_unless_asked_otherwise() {
        let mut browser = HeaderMap::new();
        browser.insert(
            axum::http::header::ORIGIN,
            axum::http::HeaderValue::from_static("https://dash.example.com"),
        );
        let plain = HeaderMap::new();
        assert_eq!(Refusal::of(None, &browser), Refusal::Close);
        assert_eq!(Refusal::of(None, &plain), Refusal::Http);
        assert_eq!(Refusal::of(Some(Refusal::Http), &browser), Refusal::Http);
        assert_eq!(Refusal::of(Some(Refusal::Close), &plain), Refusal::Close);
    }
}
