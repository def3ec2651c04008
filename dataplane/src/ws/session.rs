//! One plain WebSocket stream: deliveries as JSON frames, client frames as publishes, and the
//! re-check on each policy change that concerns it, which closes the socket once the stream is no
//! longer allowed.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use axum::http::StatusCode;
use bytes::Bytes;
use fleetward_policy::{
    Action, Decision, DeliveryGate, KeyDigest, PolicyEvaluator, Snapshot, Subject, TopicLimits,
    filter_matches, parse_filter,
};
use serde_json::json;

use super::close;
use super::frames::{ClientPublish, answer, message_frame};
use crate::audit;
use crate::ingress::{ApiError, CONTENT_TYPES, Ingress, PublishRequest, Uids};
use crate::router::{
    MessageProps, Protocol, Publisher, Router, RouterLink, SessionKey, SessionMode,
};

/// What an accepted stream is about.
pub(crate) struct Stream {
    pub subject: Subject,
    pub publisher: Publisher,
    /// `<tenant>/<name>`, for messages.
    pub who: String,
    /// A thing's key digest (`None` for a user's token).
    pub key_digest: Option<KeyDigest>,
    /// When a user's access token expires: the stream ends then.
    pub token_ends: Option<tokio::time::Instant>,
    /// The full filter streamed.
    pub filter: String,
    /// Where client frames publish by default: the path's topic, when it has no wildcard.
    pub publish_topic: Option<String>,
    pub tenant: String,
    pub channel: String,
    /// The tenant's and the channel's uids when the stream was opened: a stream to a channel
    /// deleted and created again under its name ends, as one to a deleted channel does.
    pub tenant_uid: String,
    pub channel_uid: String,
    /// The client's address, for the audit trail.
    pub client: Option<std::net::SocketAddr>,
}

impl Stream {
    fn uids(&self) -> Uids<'_> {
        Uids {
            tenant: &self.tenant_uid,
            channel: &self.channel_uid,
        }
    }
}

/// Why the server ends a stream: a close code and a reason (at most 123 bytes).
struct Close(u16, String);

/// A router link that detaches when dropped (also when the upgrade never completes).
pub(crate) struct Link<L: RouterLink>(Option<L>);

impl<L: RouterLink> Drop for Link<L> {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            link.detach();
        }
    }
}

/// Attaches a router session for the stream and subscribes its filter.
pub(crate) async fn subscribe<R: Router>(
    shared: &Ingress<R>,
    stream: &Stream,
) -> Result<Link<R::Link>, ApiError> {
    // A random client id, so it never meets an MQTT session's router state.
    let key = SessionKey::of(
        &stream.subject,
        format!("ws-{}", crate::ingress::random_client_id()),
    );
    let unavailable = |e: crate::router::RouterError| {
        tracing::error!(error = %e, "could not attach a WebSocket stream to the router");
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the router could not take the stream ({e}); try again"),
        );
        e.retry_after = Some(1);
        e
    };
    let (link, _) = shared
        .router
        .attach(&key, SessionMode::Clean)
        .await
        .map_err(unavailable)?;
    let mut link = Link(Some(link));
    if let Some(l) = &mut link.0 {
        l.subscribe(&stream.filter).map_err(unavailable)?;
        // The handshake is answered once the router has the subscription
        // (`RouterLink::taken_in`).
        l.taken_in().await;
    }
    Ok(link)
}

pub(crate) async fn run<R: Router>(
    shared: Arc<Ingress<R>>,
    socket: WebSocket,
    stream: Stream,
    mut link: Link<R::Link>,
) {
    let mut conn = Conn {
        shared,
        socket,
        stream,
        withholds: true,
        gate: DeliveryGate::default(),
    };
    let end = match &mut link.0 {
        Some(l) => conn.pump(l).await,
        None => None,
    };
    drop(link);
    if let Some(Close(code, reason)) = end {
        if code != close::GOING_AWAY {
            conn.shared.metrics.refused("ws", "closed_by_server");
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = conn.send(WsMessage::Close(Some(frame))).await;
    }
}

/// A stream's connection; `W` is the socket (none where client frames are answered without
/// one, as the fuzz target does).
struct Conn<R: Router, W = WebSocket> {
    shared: Arc<Ingress<R>>,
    socket: W,
    stream: Stream,
    /// Whether a subtopic deny of the subject overlaps the stream's filter: then each message's
    /// topic is checked, and the denied ones are withheld (DESIGN §4). Until the first check
    /// of the policy, it is.
    withholds: bool,
    /// The memo of those checks.
    gate: DeliveryGate,
}

/// The answer to a client's text frame on `stream`, as a running stream gives it, without a
/// socket: the way in for the fuzz target ([`crate::fuzzing`]).
pub(crate) fn answer_text<R: Router>(
    shared: Arc<Ingress<R>>,
    stream: Stream,
    text: &str,
    link: &mut R::Link,
) -> String {
    let conn = Conn {
        shared,
        socket: (),
        stream,
        withholds: true,
        gate: DeliveryGate::default(),
    };
    conn.on_text(text, link).0
}

impl<R: Router> Conn<R> {
    async fn send(&mut self, m: WsMessage) -> bool {
        let write = self.socket.send(m);
        matches!(
            tokio::time::timeout(self.shared.config.write_timeout, write).await,
            Ok(Ok(()))
        )
    }

    /// Sends the retained messages of the stream's filter; `false` when the client is gone.
    async fn send_retained(&mut self) -> bool {
        let s = &self.stream;
        let retained = self
            .shared
            .retained
            .matching(&s.tenant, &s.channel, &s.filter, s.uids());
        for m in retained {
            if self.may_receive(&m.topic)
                && !self.send(WsMessage::Text(message_frame(&m).into())).await
            {
                return false;
            }
        }
        true
    }

    /// Sends the answer to a client frame. `Some` when the stream ends: `Some(None)` the
    /// client is gone, `Some(Some(close))` the answer closes it.
    async fn reply(&mut self, (reply, close): (String, Option<Close>)) -> Option<Option<Close>> {
        if !self.send(WsMessage::Text(reply.into())).await {
            return Some(None);
        }
        close.map(Some)
    }

    /// Runs until the client leaves (`None`) or the server closes (`Some`).
    async fn pump(&mut self, link: &mut R::Link) -> Option<Close> {
        // Registered before anything is checked: a change from here on that concerns the
        // stream wakes it; one since the stream was authorized is re-checked at once.
        let interest = self.shared.rechecks.register(&self.stream.subject);
        interest.watch_channel(&self.stream.tenant, &self.stream.channel);
        let mut policy = self.shared.policy.clone();
        if policy.has_changed().unwrap_or(false) {
            interest.recheck_now();
        }
        self.withholds = self.withholds_now(&self.shared.snapshot());
        if !self.send_retained().await {
            return None;
        }
        let mut token_expiry = crate::ingress::TokenExpiry::new(self.stream.token_ends);
        let mut drain = self.shared.drain.watch();
        loop {
            // Draining: client frames (publishes) are no longer read, nor acknowledged.
            let reading = self.shared.drain.reading();
            tokio::select! {
                phase = drain.next() => if phase == crate::ingress::Phase::Closing {
                    return Some(Close(
                        close::GOING_AWAY,
                        "the server is shutting down; reconnect".to_owned(),
                    ));
                },
                () = token_expiry.expired(), if token_expiry.is_set() => {
                    return Some(Close(
                        close::CREDENTIALS_REVOKED,
                        "token expired: reconnect with a fresh access token".to_owned(),
                    ));
                },
                frame = self.socket.recv(), if reading => match frame {
                    None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return None,
                    Some(Ok(WsMessage::Text(text))) => {
                        let answer = self.on_text(text.as_str(), link);
                        if let Some(end) = self.reply(answer).await {
                            return end;
                        }
                    }
                    Some(Ok(WsMessage::Binary(payload))) => {
                        let answer = self.on_binary(payload, link);
                        if let Some(end) = self.reply(answer).await {
                            return end;
                        }
                    }
                    // Pings are answered by the WebSocket layer.
                    Some(Ok(_)) => {}
                },
                message = link.receive() => match message {
                    Ok(m) => {
                        let topic = std::str::from_utf8(&m.topic).unwrap_or_default();
                        if filter_matches(&self.stream.filter, topic)
                            && self.may_receive(&m.topic)
                            && !self.send(WsMessage::Text(message_frame(&m).into())).await
                        {
                            return None;
                        }
                    }
                    Err(e) => {
                        return Some(Close(
                            close::UNAVAILABLE,
                            format!("the router is unavailable ({}); reconnect", e.as_str()),
                        ));
                    }
                },
                // Only changes that concern this stream (`ingress::rechecks`).
                () = interest.changed() => {
                    let snapshot = policy.borrow_and_update().clone();
                    if let Err(close) = self.revalidate(&snapshot) {
                        return Some(close);
                    }
                    self.withholds = self.withholds_now(&snapshot);
                    self.shared.cache.count_hits(self.gate.take_hits());
                }
            }
        }
    }

    /// Whether a subtopic deny of the subject overlaps the stream's filter under `snapshot`.
    fn withholds_now(&self, snapshot: &Snapshot) -> bool {
        parse_filter(&self.stream.filter, &TopicLimits::default())
            .map_or(true, |f| snapshot.withholds(&self.stream.subject, &f))
    }

    /// Whether the subject may receive a message on `topic`: asked of the policy (through the
    /// memo and the decision cache) only when a deny overlaps the stream's filter.
    fn may_receive(&mut self, topic: &[u8]) -> bool {
        if !self.withholds {
            return true;
        }
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        self.shared
            .may_deliver(&mut self.gate, &self.stream.subject, topic)
    }

    /// Whether the stream may go on under a new snapshot.
    fn revalidate(&self, snapshot: &Snapshot) -> Result<(), Close> {
        let s = &self.stream;
        if let Err(refusal) = snapshot.check_subject(&s.subject) {
            return Err(Close(
                close::CREDENTIALS_REVOKED,
                format!("revoked: {}", refusal.reason.as_str()),
            ));
        }
        let key_kept = |digest: &KeyDigest| {
            snapshot
                .thing(&s.subject.tenant, &s.subject.name)
                .is_some_and(|t| t.key_digests.iter().any(|d| d.ct_eq(digest)))
        };
        if s.key_digest.as_ref().is_some_and(|d| !key_kept(d)) {
            return Err(Close(
                close::CREDENTIALS_REVOKED,
                "revoked: key_removed".to_owned(),
            ));
        }
        let decision = parse_filter(&s.filter, &TopicLimits::default())
            .map(|t| {
                self.shared
                    .cache
                    .authorize(snapshot, &s.subject, Action::Subscribe, &t)
            })
            .unwrap_or(Decision::Deny(fleetward_policy::DenyReason::NoGrant));
        if let Decision::Deny(why) = decision {
            return Err(Close(
                close::SUBSCRIPTION_REVOKED,
                format!("revoked: {}", why.as_str()),
            ));
        }
        if s.uids()
            .other_than(Uids::of(snapshot, &s.tenant, &s.channel))
        {
            return Err(Close(
                close::SUBSCRIPTION_REVOKED,
                "revoked: channel_recreated".to_owned(),
            ));
        }
        Ok(())
    }
}

impl<R: Router, W> Conn<R, W> {
    /// The answer frame to a client frame, and the close that follows it when the publish was
    /// over a size limit or a quota.
    fn on_text(&self, text: &str, link: &mut R::Link) -> (String, Option<Close>) {
        let p: ClientPublish = match serde_json::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                let e = ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_frame",
                    format!(
                        "a text frame must be a JSON publish {{\"payload\": …, \"topic\"?, \
                         \"base64\"?, \"content_type\"?, \"qos\"?, \"retain\"?, \"id\"?}}: {e}"
                    ),
                );
                return (answer(None, e.body(), false), None);
            }
        };
        let id = p.id.clone();
        let result = self.publish_frame(p, link);
        match result {
            Ok(body) => (answer(id.as_ref(), body, true), None),
            Err(e) => (answer(id.as_ref(), e.body(), false), closing(&e)),
        }
    }

    fn on_binary(&self, payload: Bytes, link: &mut R::Link) -> (String, Option<Close>) {
        let p = PublishFrame {
            topic: None,
            payload,
            content_type: "application/octet-stream".to_owned(),
            qos: 0,
            retain: false,
        };
        match self.publish(p, link) {
            Ok(body) => (answer(None, body, true), None),
            Err(e) => (answer(None, e.body(), false), closing(&e)),
        }
    }

    fn publish_frame(
        &self,
        p: ClientPublish,
        link: &mut R::Link,
    ) -> Result<serde_json::Value, ApiError> {
        let payload = p.payload().map_err(ApiError::bad_request)?;
        let content_type = p.content_type.clone().unwrap_or_else(|| {
            if p.base64 {
                "application/octet-stream".to_owned()
            } else {
                "text/plain".to_owned()
            }
        });
        if !crate::ingress::media_type_in(&content_type, &CONTENT_TYPES) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                format!(
                    "content_type {content_type:?} is not accepted; use one of {}",
                    CONTENT_TYPES.join(", ")
                ),
            ));
        }
        if p.qos > 2 {
            return Err(ApiError::bad_request("qos must be 0, 1 or 2"));
        }
        self.publish(
            PublishFrame {
                topic: p.topic,
                payload,
                content_type,
                qos: p.qos,
                retain: p.retain,
            },
            link,
        )
    }

    fn publish(&self, p: PublishFrame, link: &mut R::Link) -> Result<serde_json::Value, ApiError> {
        let Some(topic) = p.topic.or_else(|| self.stream.publish_topic.clone()) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_topic",
                "this stream's path has a wildcard: give the frame a \"topic\" to publish to",
            ));
        };
        if p.payload.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "empty_body",
                "the payload is empty",
            ));
        }
        let snapshot = self.shared.snapshot();
        let request = PublishRequest {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            props: Some(Box::new(MessageProps {
                content_type: Some(p.content_type),
                ..MessageProps::default()
            })),
            origin: None,
            protocol: Protocol::WebSocket,
            created_ns: crate::router::now_ns(),
        };
        let s = &self.stream;
        match self
            .shared
            .publish(&snapshot, &s.subject, &s.publisher, request, Some(link))
        {
            Ok(published) => Ok(json!({
                "status": 202,
                "topic": topic,
                "qos": published.qos,
                "retained": published.retained,
                "message_id": published.id.to_string(),
            })),
            Err(refusal) => {
                let (what, label) = refusal.labels();
                self.shared.metrics.refused(what, label);
                self.shared.audit.refused(audit::Refusal {
                    tenant: &s.subject.tenant,
                    kind: Some(s.subject.kind),
                    subject: &s.subject.name,
                    action: audit::Action::Publish,
                    topic: Some(&topic),
                    reason: label,
                    protocol: audit::Protocol::Ws,
                    client: s.client,
                });
                Err(ApiError::from_publish(&refusal, &s.who, &topic))
            }
        }
    }
}

/// The close that follows a refused publish over a limit: 1009 (message too big) for a size,
/// 1008 (policy violation) for a quota. Other refusals only answer the frame.
fn closing(e: &ApiError) -> Option<Close> {
    let code = match e.error {
        "too_large" | "too_many_user_properties" => axum::extract::ws::close_code::SIZE,
        "quota_exceeded" => axum::extract::ws::close_code::POLICY,
        _ => return None,
    };
    // A close reason is at most 123 bytes.
    let mut reason = e.message.clone();
    while reason.len() > 123 {
        reason.pop();
    }
    Some(Close(code, reason))
}

struct PublishFrame {
    topic: Option<String>,
    payload: Bytes,
    content_type: String,
    qos: u8,
    retain: bool,
}
