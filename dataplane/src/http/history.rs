//! `GET /m/{tenant}/c/{channel}/messages`: a channel's kept messages, in pages (`HTTP.md`,
//! "Message history").
//!
//! Authorized as a subscription to the filter: a thing's key or a user's token with the
//! subscribe grant. Each message is then checked as a delivery would be, so a subtopic deny is
//! never read around with a wider filter.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleetward_history::{Cursor, DEFAULT_LIMIT, MAX_LIMIT, Order, Record, SubtopicFilter};
use fleetward_policy::{Action, Decision, DenyReason, Snapshot, Subject, TopicLimits};
use serde_json::{Value, json};

use super::senml::{self, SENML_JSON};
use crate::audit;
use crate::ingress::{self, ApiError, Ingress, Seen};
use crate::listener::AuthHandle;
use crate::router::{Message, MessageProps, Protocol, Publisher, PublisherKind, Router};

/// The reader's path. A WebSocket upgrade of it is a stream of the subtopic `messages`.
pub const HISTORY_PATH: &str = "/m/{tenant}/c/{channel}/messages";

/// The header that carries the next page's cursor in a SenML answer (its body is the pack).
const NEXT_CURSOR: &str = "fleetward-next-cursor";

/// `?filter=&from=&to=&limit=&cursor=&order=`.
#[derive(Debug, Default, serde::Deserialize)]
struct HistoryQuery {
    filter: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    order: Option<String>,
}

/// `GET /m/{tenant}/c/{channel}/messages`.
pub(crate) async fn messages<R: Router>(
    State(shared): State<Arc<Ingress<R>>>,
    Path(mut params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
    socket: Option<Extension<AuthHandle>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if upgrade.is_ok() {
        params.insert("subtopic".into(), "messages".into());
        let query = Query::try_from_uri(&uri).map(|Query(q)| q).map_err(drop);
        return crate::ws::open_stream(shared, params, headers, query, socket, peer, upgrade).await;
    }
    let client = peer.map(|Extension(ConnectInfo(a))| a);
    let mut seen = Seen::default();
    match read(&shared, &params, &headers, &uri, &mut seen).await {
        Ok(response) => response,
        Err(e) => {
            let labels = ("history", e.error);
            crate::ws::refused_as(
                &shared,
                &params,
                &seen,
                labels,
                audit::Protocol::Http,
                client,
            );
            e.into_response()
        }
    }
}

/// `POST /m/{tenant}/c/{channel}/messages` publishes on the subtopic `messages`, as it would
/// without the reader's path.
pub(crate) async fn publish<R: Router>(
    state: State<Arc<Ingress<R>>>,
    Path(mut params): Path<HashMap<String, String>>,
    query: Query<super::publish::PublishQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    params.insert("subtopic".into(), "messages".into());
    super::publish(state, Path(params), query, peer, headers, body).await
}

/// Authenticates, authorizes the filter, and reads one page.
async fn read<R: Router>(
    shared: &Ingress<R>,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    uri: &Uri,
    seen: &mut Seen,
) -> Result<Response, ApiError> {
    let presented = ingress::from_authorization(headers)?;
    seen.claimed(&presented);
    let snapshot = shared.snapshot();
    let subject = ingress::authenticate(&snapshot, &shared.users, &presented)?.subject;
    seen.proved(&subject);
    let Query(q) = Query::<HistoryQuery>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("the query does not read: {e}")))?;
    let channel_topic = ingress::topic_of(params)?;
    let relative = q.filter.as_deref().unwrap_or("#");
    let filter = SubtopicFilter::parse(relative).map_err(|e| bad_filter(relative, &e))?;
    let full = format!("{channel_topic}/{relative}");
    authorize(shared, &snapshot, &subject, &full, seen)?;
    let (tenant, channel) = (&params["tenant"], &params["channel"]);
    let Some(ch) = snapshot.channel(tenant, channel) else {
        return Err(ApiError::denied(
            DenyReason::UnknownChannel,
            &format!("{}/{}", subject.tenant, subject.name),
            "subscribe",
            &full,
        ));
    };
    let Some(retention) = ch.history_retention_secs else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_history",
            format!(
                "channel {tenant}/{channel} keeps no history; set spec.history.retention on the \
                 Channel to keep its messages from then on"
            ),
        ));
    };
    let Some(store) = shared.history.history.reader.clone() else {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_history_store",
            "this dataplane has no history store to read; give it --history-postgres-url",
        );
        e.retry_after = Some(5);
        return Err(e);
    };
    take_rate(shared, &snapshot, tenant)?;
    let query = query_of(&q, tenant, channel, &ch.uid, filter)?;
    let oldest =
        fleetward_history::now_ns().saturating_sub(retention.saturating_mul(1_000_000_000));
    let keep = |r: &Record| r.created_ns >= oldest && may_read(shared, &snapshot, &subject, r);
    let page = fleetward_history::read(&store, &query, keep)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "history: a read failed");
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the history store did not answer; try again",
            );
            e.retry_after = Some(1);
            e
        })?;
    Ok(answer(&page, headers))
}

/// The page as JSON frames, or as one resolved SenML pack when the client asks for SenML.
fn answer(page: &fleetward_history::Page, headers: &HeaderMap) -> Response {
    let next = page.next.map(|c| c.encode());
    if wants_senml(headers) {
        let mut response = (
            [(header::CONTENT_TYPE, SENML_JSON)],
            Value::from(senml::resolve(&page.records)).to_string(),
        )
            .into_response();
        if let Some(next) = next.and_then(|n| n.parse().ok()) {
            response.headers_mut().insert(NEXT_CURSOR, next);
        }
        return response;
    }
    let messages: Vec<Value> = page
        .records
        .iter()
        .map(|r| crate::ws::message_value(&message_of(r)))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"messages": messages, "next_cursor": next}).to_string(),
    )
        .into_response()
}

/// The filter must be one the subject may subscribe to, as for a stream.
fn authorize<R: Router>(
    shared: &Ingress<R>,
    snapshot: &Snapshot,
    subject: &Subject,
    full: &str,
    seen: &mut Seen,
) -> Result<(), ApiError> {
    let parsed = fleetward_policy::parse_filter(full, &TopicLimits::default())
        .map_err(|e| bad_filter(full, &e))?;
    match shared
        .cache
        .authorize(snapshot, subject, Action::Subscribe, &parsed)
    {
        Decision::Allow(_) => Ok(()),
        Decision::Deny(DenyReason::PolicyUnavailable) => Err(ApiError::policy_unavailable()),
        Decision::Deny(why) => {
            seen.reason = Some(why.as_str());
            let who = format!("{}/{}", subject.tenant, subject.name);
            Err(ApiError::denied(why, &who, "subscribe", full))
        }
    }
}

/// Whether the subject may receive the stored message: its topic is checked as a delivery of
/// the subscription would be (a subtopic deny withholds it).
fn may_read<R: Router>(
    shared: &Ingress<R>,
    snapshot: &Snapshot,
    subject: &Subject,
    r: &Record,
) -> bool {
    let topic = r.topic();
    fleetward_policy::parse_topic_name(&topic, &TopicLimits::default()).is_ok_and(|t| {
        matches!(
            shared
                .cache
                .authorize(snapshot, subject, Action::Subscribe, &t),
            Decision::Allow(_)
        )
    })
}

/// A read takes one token of the tenant's `publishRate`, when it has one.
fn take_rate<R: Router>(
    shared: &Ingress<R>,
    snapshot: &Snapshot,
    tenant: &str,
) -> Result<(), ApiError> {
    let Some(limits) = snapshot.tenant(tenant).map(|t| &t.limits) else {
        return Ok(());
    };
    let Some(rate) = limits.publish_rate else {
        return Ok(());
    };
    let limiter = shared.rates.of(tenant, rate, limits.publish_burst);
    limiter.take().map_err(|wait| {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("the tenant is over its request rate; retry after {secs} s (Retry-After)"),
        );
        e.retry_after = Some(secs);
        e
    })
}

fn bad_filter(filter: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_topic",
        format!("{filter:?} is not a filter below the channel: {e}"),
    )
}

/// The store's query of the request's parameters.
fn query_of(
    q: &HistoryQuery,
    tenant: &str,
    channel: &str,
    channel_uid: &str,
    filter: SubtopicFilter,
) -> Result<fleetward_history::Query, ApiError> {
    let order = match q.order.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order={other:?}: use order=desc (newest first, the default) or order=asc"
            )));
        }
    };
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit={l:?}: use a number from 1 to {MAX_LIMIT}"))
            })?,
    };
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(Cursor::decode(c, order).ok_or_else(|| {
            ApiError::bad_request(
                "the cursor is not one this reader gave for this order; pass `next` from the \
                 previous page unchanged, with the same order",
            )
        })?),
    };
    Ok(fleetward_history::Query {
        tenant: tenant.to_owned(),
        channel: channel.to_owned(),
        channel_uid: channel_uid.to_owned(),
        filter,
        from_ns: time(q.from.as_deref(), "from")?,
        to_ns: time(q.to.as_deref(), "to")?,
        limit,
        order,
        cursor,
    })
}

/// An RFC 3339 time as ns since the Unix epoch.
fn time(v: Option<&str>, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .and_then(|ns| u64::try_from(ns).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name}={v:?}: use an RFC 3339 time, 2026-12-05T09:00:00Z"
            ))
        })
}

fn wants_senml(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| ingress::media_type_in(v, &[SENML_JSON]))
}

/// The stored message as the router's, for the WebSocket frame's shape.
fn message_of(r: &Record) -> Message {
    let props = MessageProps {
        content_type: r.content_type.clone(),
        user_properties: r.user_properties.clone(),
        ..MessageProps::default()
    };
    Message {
        stored: false,
        topic: Bytes::from(r.topic()),
        payload: r.payload.clone(),
        qos: r.qos,
        props: (!props.is_empty()).then(|| Box::new(props)),
        retain: false,
        origin: None,
        publisher: r.publisher.as_ref().map(|name| Publisher {
            kind: match r.publisher_kind.as_deref() {
                Some("user") => PublisherKind::User,
                _ => PublisherKind::Thing,
            },
            name: name.as_str().into(),
        }),
        protocol: Protocol::parse(&r.protocol),
        created_ns: r.created_ns,
        id: r.id,
    }
}
