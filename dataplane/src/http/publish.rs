//! `POST /m/{tenant}/c/{channel}[/{subtopic…}]`: an HTTP request becomes one publish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::audit;
use crate::ingress::{self as auth, ApiError, CONTENT_TYPES, Seen, body_timed_out, topic_of};
use crate::ingress::{Ingress, PublishRequest};
use crate::router::{MessageProps, Protocol, Publisher, Router};

/// `?qos=0|1|2&retain=true|false`.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct PublishQuery {
    qos: Option<String>,
    retain: Option<String>,
}

fn flag(v: Option<&str>, name: &str) -> Result<bool, ApiError> {
    match v {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name}={other:?}: use {name}=true or {name}=false"
        ))),
    }
}

fn qos(v: Option<&str>) -> Result<u8, ApiError> {
    match v {
        None | Some("0") => Ok(0),
        Some("1") => Ok(1),
        Some("2") => Ok(2),
        Some(other) => Err(ApiError::bad_request(format!(
            "qos={other:?}: use qos=0, 1 or 2"
        ))),
    }
}

/// The request's content type if it is one of [`CONTENT_TYPES`] (parameters such as
/// `charset` are kept).
fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if auth::media_type_in(given, &CONTENT_TYPES) {
        return Ok(given.to_owned());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_content_type",
        format!(
            "Content-Type {:?} is not accepted; send one of {}",
            given,
            CONTENT_TYPES.join(", ")
        ),
    ))
}

pub(crate) async fn publish<R: Router>(
    State(shared): State<Arc<Ingress<R>>>,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<PublishQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut seen = Seen::default();
    match handle(&shared, &params, &query, &headers, body, &mut seen).await {
        Ok(r) => r,
        Err(e) => {
            let label = match e.status {
                StatusCode::UNAUTHORIZED => "unauthorized",
                _ => e.error,
            };
            shared.metrics.refused("http", label);
            let topic = topic_of(&params).ok();
            shared.audit.refused(audit::Refusal {
                tenant: &seen.tenant,
                kind: seen.kind,
                subject: &seen.subject,
                action: audit::Action::Publish,
                topic: topic.as_deref(),
                reason: seen.reason.unwrap_or(label),
                protocol: audit::Protocol::Http,
                client: peer.map(|Extension(ConnectInfo(a))| a),
            });
            e.into_response()
        }
    }
}

async fn handle<R: Router>(
    shared: &Ingress<R>,
    params: &HashMap<String, String>,
    query: &PublishQuery,
    headers: &HeaderMap,
    body: Body,
    seen: &mut Seen,
) -> Result<Response, ApiError> {
    let presented = auth::from_authorization(headers)?;
    seen.claimed(&presented);
    let snapshot = shared.snapshot();
    let subject = auth::authenticate(&snapshot, &shared.users, &presented)?.subject;
    seen.proved(&subject);
    let topic = topic_of(params)?;
    let content_type = content_type(headers)?;
    let qos = qos(query.qos.as_deref())?;
    let retain = flag(query.retain.as_deref(), "retain")?;
    let max = shared.config.max_packet_size;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is over this dataplane's limit of {max} bytes; send less"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let payload: Bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|e| body_timed_out(&e).unwrap_or_else(too_large))?;
    if payload.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the body is empty; send the message as the request body",
        ));
    }
    let who = format!("{}/{}", subject.tenant, subject.name);
    let request = PublishRequest {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload,
        qos,
        retain,
        props: Some(Box::new(MessageProps {
            content_type: Some(content_type),
            ..MessageProps::default()
        })),
        origin: None,
        protocol: Protocol::Http,
        created_ns: crate::router::now_ns(),
    };
    let publisher = Publisher::of(&subject);
    let published = shared.publish(&snapshot, &subject, &publisher, request, None);
    if let Ok(p) = &published
        && p.stored
    {
        stored(shared, seen).await?;
    }
    match published {
        Ok(published) => Ok((
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({
                "topic": topic,
                "qos": published.qos,
                "retained": published.retained,
                "message_id": published.id.to_string(),
            })
            .to_string(),
        )
            .into_response()),
        Err(refusal) => {
            let (what, label) = refusal.labels();
            shared.metrics.refused(what, label);
            seen.reason = Some(label);
            Err(ApiError::from_publish(&refusal, &who, &topic))
        }
    }
}

/// Like a PUBACK, the 202 of a QoS 1/2 message waits until it is stored for persistent
/// sessions on any pod (BUS.md, "QoS 1 across pods"); 503 `not_stored` if it is not in time.
async fn stored<R: Router>(shared: &Ingress<R>, seen: &mut Seen) -> Result<(), ApiError> {
    let Some(mark) = shared.router.durable_mark() else {
        return Ok(());
    };
    if shared
        .router
        .durably_stored(mark, crate::bus::durable::STORE_WAIT)
        .await
    {
        return Ok(());
    }
    shared.metrics.refused("publish", "bus_behind");
    seen.reason = Some("bus_behind");
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_stored",
        "the message reached this pod's subscribers but NATS JetStream did not store it in time \
         for persistent sessions elsewhere; send it again",
    );
    e.retry_after = Some(1);
    Err(e)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn content_types_are_matched_without_parameters_and_case() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Text/Plain; charset=utf-8"),
        );
        assert_eq!(
            content_type(&h).expect("allowed"),
            "Text/Plain; charset=utf-8"
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(
            content_type(&h).expect_err("refused").status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert!(content_type(&HeaderMap::new()).is_err());
    }

    #[test]
    fn topics_come_from_the_path_and_levels_stay_single() {
        let p = |t: &str, c: &str, s: Option<&str>| {
            let mut m = HashMap::new();
            m.insert("tenant".to_owned(), t.to_owned());
            m.insert("channel".to_owned(), c.to_owned());
            if let Some(s) = s {
                m.insert("subtopic".to_owned(), s.to_owned());
            }
            topic_of(&m)
        };
        assert_eq!(p("acme", "t", None).expect("ok"), "m/acme/c/t");
        assert_eq!(p("acme", "t", Some("a/b")).expect("ok"), "m/acme/c/t/a/b");
        assert!(p("acme/c/x", "t", None).is_err());
        assert!(p("acme", "+", None).is_err());
    }

    #[test]
    fn qos_and_retain_parameters() {
        assert_eq!(qos(Some("2")).expect("ok"), 2);
        assert!(qos(Some("3")).is_err());
        assert!(flag(Some("true"), "retain").expect("ok"));
        assert!(!flag(None, "retain").expect("ok"));
        assert!(flag(Some("yes"), "retain").is_err());
    }
}
