//! Our own small interface to the message router (DESIGN §6), so the router can be replaced.
//!
//! Nothing above this module sees rumqttd types, packet ids or the router's QoS rules: the
//! front-end authorizes, then attaches sessions, subscribes, publishes and receives here.

mod envelope;
mod offline;
mod props;
mod routes;
mod rumqttd;

use std::future::Future;

use bytes::Bytes;
pub use fleetward_history::MessageId;

pub(crate) use self::props::{message_len, message_props, publish_props};
pub use self::routes::DEFAULT_BUCKETS;
pub(crate) use self::routes::channel_key;
pub use self::rumqttd::{RumqttdConfig, RumqttdRouter};

/// Who a router session belongs to: the router-side client id is derived from every part, so
/// a client can only ever meet sessions of its own subject (thing or user) in its own tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The subject's tenant.
    pub tenant: String,
    /// Thing or user: a user and a thing of the same name never share a session.
    pub kind: PublisherKind,
    /// The thing (or user) name.
    pub subject: String,
    /// The MQTT client id the client chose (or was assigned).
    pub client_id: String,
}

impl SessionKey {
    /// The key of `subject`'s session with `client_id`.
    pub fn of(subject: &fleetward_policy::Subject, client_id: String) -> Self {
        Self {
            tenant: subject.tenant.clone(),
            kind: Publisher::kind_of(subject),
            subject: subject.name.clone(),
            client_id,
        }
    }

    /// A reversible id free of `/ + # $` (which rumqttd refuses in client ids):
    /// `<tenant>:<thing|user>:<name>:<client-id>`, each free part percent-encoded for
    /// `/ + # $ % :`.
    pub fn router_id(&self) -> String {
        let kind = self.kind.as_str();
        let mut out = String::with_capacity(
            self.tenant.len() + kind.len() + self.subject.len() + self.client_id.len() + 3,
        );
        push_encoded(&mut out, &self.tenant);
        out.push(':');
        out.push_str(kind);
        out.push(':');
        push_encoded(&mut out, &self.subject);
        out.push(':');
        push_encoded(&mut out, &self.client_id);
        out
    }
}

fn push_encoded(out: &mut String, part: &str) {
    for c in part.chars() {
        match c {
            '/' | '+' | '#' | '$' | '%' | ':' => {
                out.push_str(&format!("%{:02X}", c as u32));
            }
            c => out.push(c),
        }
    }
}

/// MQTT v5 message properties that travel with a message through the router.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageProps {
    /// Payload format indicator.
    pub payload_format_indicator: Option<u8>,
    /// Message expiry interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Correlation data.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
}

impl MessageProps {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == MessageProps::default()
    }
}

/// The adapter a message came in through (`fleetward.message.v1.Protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Not known (a message from a peer that did not say).
    #[default]
    Unspecified,
    /// MQTT over TCP, TLS or WebSocket.
    Mqtt,
    /// HTTP publish.
    Http,
    /// A plain WebSocket stream.
    WebSocket,
}

impl Protocol {
    /// The name subscribers see (`fleetward-protocol`, the WebSocket envelope).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Unspecified => "unspecified",
            Protocol::Mqtt => "mqtt",
            Protocol::Http => "http",
            Protocol::WebSocket => "websocket",
        }
    }

    /// The inverse of [`Protocol::as_str`]; unknown names are `Unspecified`.
    pub fn parse(s: &str) -> Self {
        match s {
            "mqtt" => Protocol::Mqtt,
            "http" => Protocol::Http,
            "websocket" => Protocol::WebSocket,
            _ => Protocol::Unspecified,
        }
    }
}

/// The kind of subject that published (`fleetward.message.v1.PublisherKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PublisherKind {
    /// A thing (device or service).
    Thing,
    /// A user.
    User,
}

impl PublisherKind {
    /// The name subscribers see.
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherKind::Thing => "thing",
            PublisherKind::User => "user",
        }
    }
}

/// The authenticated subject that published, in the message's tenant
/// (`fleetward.message.v1.Publisher`). The name is shared, so cloning it per message is cheap.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Publisher {
    /// Thing or user.
    pub kind: PublisherKind,
    /// The subject's name in its tenant.
    pub name: std::sync::Arc<str>,
}

impl Publisher {
    /// The publisher of an authenticated subject.
    pub fn of(subject: &fleetward_policy::Subject) -> Self {
        Self {
            kind: Self::kind_of(subject),
            name: subject.name.as_str().into(),
        }
    }

    /// The kind of an authenticated subject.
    pub fn kind_of(subject: &fleetward_policy::Subject) -> PublisherKind {
        match subject.kind {
            fleetward_policy::SubjectKind::Thing => PublisherKind::Thing,
            fleetward_policy::SubjectKind::User => PublisherKind::User,
        }
    }
}

/// Now, in nanoseconds since the Unix epoch (a `created_ns`).
pub fn now_ns() -> u64 {
    fleetward_process::unix_nanos()
}

/// A message on its way into or out of the router, always on a full `m/<tenant>/c/…` topic.
///
/// The content type travels in `props` (the MQTT v5 property); `publisher`, `protocol` and
/// `created_ns` are set by the one publish function every adapter goes through
/// (`Shared::publish`) and reach subscribers as v5 user properties and in the WebSocket
/// envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The full topic name.
    pub topic: Bytes,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was published with (after the channel's cap); deliveries use
    /// min(this, the subscription's granted QoS).
    pub qos: u8,
    /// v5 properties, if any.
    pub props: Option<Box<MessageProps>>,
    /// The publish's retain flag (for v5 retain-as-published; the router itself is never
    /// asked to retain).
    pub retain: bool,
    /// The publishing session, when some subscriber may ask for v5 no-local.
    pub origin: Option<u64>,
    /// Who published; `None` only for messages from a source that did not say.
    pub publisher: Option<Publisher>,
    /// The adapter it came in through.
    pub protocol: Protocol,
    /// When the dataplane accepted it, nanoseconds since the Unix epoch; 0 when unknown.
    pub created_ns: u64,
    /// Its id, given once where it was accepted (UUIDv7: unique and time-ordered), carried
    /// through the router and the bus, stored with its history, shown to subscribers.
    pub id: MessageId,
    /// Stored in its tenant's JetStream stream for persistent sessions (BUS.md): a session
    /// whose QoS 1/2 deliveries come from its queue takes it from there, not from the router.
    pub stored: bool,
}

/// The v5 user property naming the publisher, `<kind>:<name>` (`thing:sensor-1`).
pub const PUBLISHER_PROPERTY: &str = "fleetward-publisher";
/// The v5 user property naming the protocol it came in through (`mqtt`, `http`, `websocket`).
pub const PROTOCOL_PROPERTY: &str = "fleetward-protocol";
/// The v5 user property with when the dataplane accepted it, RFC 3339 UTC with nanoseconds.
pub const CREATED_PROPERTY: &str = "fleetward-created";
/// The v5 user property with the message id (a UUIDv7, as the history reader returns it).
pub const ID_PROPERTY: &str = "fleetward-id";
/// The v5 SUBSCRIBE user property (value `true`) asking for the three above on that
/// packet's subscriptions, on a channel whose `deliveryMetadata` is off.
pub const METADATA_SUBSCRIPTION_PROPERTY: &str = "fleetward-metadata";

/// A `created_ns` as RFC 3339 UTC with nanoseconds (`2026-11-26T09:13:29.123456789Z`).
pub fn rfc3339(created_ns: u64) -> String {
    let secs = i64::try_from(created_ns / 1_000_000_000).unwrap_or(i64::MAX);
    let nanos = (created_ns % 1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl Message {
    /// What a v5 subscriber is told about the message's origin, as user properties appended
    /// after the publisher's own.
    pub fn metadata_properties(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(4);
        if let Some(p) = &self.publisher {
            out.push((
                PUBLISHER_PROPERTY.to_owned(),
                format!("{}:{}", p.kind.as_str(), p.name),
            ));
        }
        if self.protocol != Protocol::Unspecified {
            out.push((
                PROTOCOL_PROPERTY.to_owned(),
                self.protocol.as_str().to_owned(),
            ));
        }
        if self.created_ns != 0 {
            out.push((CREATED_PROPERTY.to_owned(), rfc3339(self.created_ns)));
        }
        out.push((ID_PROPERTY.to_owned(), self.id.to_string()));
        out
    }
}

/// Why the router could not do something. Each variant has a metric label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// The router has no room for another session (its link cap is reached).
    #[error(
        "the router refused the session: its session limit is reached; raise --max-connections"
    )]
    Refused,
    /// The session was closed on the router side.
    #[error("the router closed the session")]
    SessionClosed,
    /// The router thread is gone; the process must restart.
    #[error("the message router stopped; restart the dataplane")]
    RouterDown,
    /// QoS 1/2 messages cannot be stored in JetStream as fast as they come (or NATS is away
    /// long): refused rather than acknowledged and lost.
    #[error("the bus cannot store more QoS 1/2 messages now; NATS JetStream is behind or away")]
    BusBehind,
}

impl RouterError {
    /// A stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouterError::Refused => "refused",
            RouterError::SessionClosed => "session_closed",
            RouterError::RouterDown => "router_down",
            RouterError::BusBehind => "bus_behind",
        }
    }
}

/// Whether the router keeps a session's subscriptions and queue after it detaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionMode {
    /// Start empty, forget everything on detach.
    Clean,
    /// Resume what a previous persistent session with the same key left, keep it on detach.
    Persistent,
}

/// A message router: attaches sessions and accepts publishes from sessions without a link.
pub trait Router: Send + Sync + 'static {
    /// A session attached to the router.
    type Link: RouterLink;

    /// Attaches a session; the flag says whether the router resumed a saved one. The
    /// front-end guarantees that no other live session has the same key (it detaches the old
    /// one first).
    fn attach(
        &self,
        key: &SessionKey,
        mode: SessionMode,
    ) -> impl Future<Output = Result<(Self::Link, bool), RouterError>> + Send;

    /// Publishes for a session that has no link of its own (publish-only clients, wills).
    fn publish(&self, message: Message) -> Result<(), RouterError>;

    /// Publishes several messages in order, as one hand-over where the router allows it (the
    /// MQTT front-end passes everything one socket read brought in). Empties `messages`.
    /// Returns how many messages wait for the router on the way they took (see `backlog`).
    fn publish_batch(&self, messages: &mut Vec<Message>) -> Result<usize, RouterError> {
        messages.drain(..).try_for_each(|m| self.publish(m))?;
        Ok(self.backlog())
    }

    /// Messages handed over by [`Router::publish`] that the router has not taken in yet. A
    /// publisher that outruns the router waits for this to shrink instead of queueing more.
    fn backlog(&self) -> usize {
        0
    }

    /// Resolves once the router has taken in everything handed over to it before the call,
    /// through any link, or after `bound`: a publisher that outran the router is woken by it
    /// rather than polling [`Router::backlog`]. A router without a backlog is caught up.
    fn caught_up(&self, bound: std::time::Duration) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        let _ = bound;
        std::future::ready(())
    }

    /// Whether the router still runs.
    fn is_alive(&self) -> bool;

    /// Filters the router holds for sessions now (`fleetward_router_filters`): it returns to
    /// where it was when the sessions that subscribed are gone.
    fn filters(&self) -> usize {
        0
    }

    /// Stores the QoS 1/2 messages among `messages` that persistent sessions may need (the
    /// bus, BUS.md) before they are routed, marking them `stored`; publishing them afterwards
    /// does not store them again. Whether any was stored: its publisher's acknowledgement
    /// then waits for [`Router::durably_stored`].
    fn store_durably(&self, messages: &mut [Message]) -> Result<bool, RouterError> {
        let _ = messages;
        Ok(false)
    }

    /// Where QoS 1/2 messages are stored durably (the bus, BUS.md): the number of the last
    /// copy queued, to wait for with [`Router::durably_stored`] before acknowledging. `None`
    /// where nothing is stored (a single pod, NATS without JetStream).
    fn durable_mark(&self) -> Option<u64> {
        None
    }

    /// Whether every durable copy up to `mark` is stored now.
    fn durably_stored_now(&self, mark: u64) -> bool {
        let _ = mark;
        true
    }

    /// Resolves `true` once every durable copy up to `mark` is stored, `false` after `bound`.
    fn durably_stored(
        &self,
        mark: u64,
        bound: std::time::Duration,
    ) -> impl Future<Output = bool> + Send
    where
        Self: Sized,
    {
        let _ = (mark, bound);
        std::future::ready(true)
    }
}

/// One session's attachment to the router.
pub trait RouterLink: Send + 'static {
    /// Adds a subscription on a full filter (already authorized and validated).
    fn subscribe(&mut self, filter: &str) -> Result<(), RouterError>;
    /// Removes a subscription.
    fn unsubscribe(&mut self, filter: &str) -> Result<(), RouterError>;
    /// Publishes through this session.
    fn publish(&mut self, message: Message) -> Result<(), RouterError>;
    /// Publishes several messages in order through this session, as one hand-over where the
    /// router allows it. Empties `messages`.
    /// Returns the link's backlog after the hand-over.
    fn publish_batch(&mut self, messages: &mut Vec<Message>) -> Result<usize, RouterError> {
        messages.drain(..).try_for_each(|m| self.publish(m))?;
        Ok(self.backlog())
    }
    /// Packets handed over through this link (publishes, subscription changes) that the router
    /// has not taken in yet.
    fn backlog(&self) -> usize {
        0
    }
    /// Resolves once the router has taken in what this link handed over (its subscriptions
    /// among it), so that what is published after it is routed after them; a router that
    /// takes nothing in for a second is not waited for longer. Without it a publish could be
    /// lost to a new subscription: the router takes the shared publishing link's whole queue
    /// at an earlier publisher's event, so a publish queued there later can be routed before a
    /// SUBSCRIBE queued earlier on this link. A taken queue is handled in one go, so an empty
    /// one means handled.
    fn taken_in(&mut self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            for spin in 0u32.. {
                if self.backlog() == 0 || std::time::Instant::now() >= deadline {
                    return;
                }
                // The router thread usually takes it within microseconds: yield before
                // sleeping.
                if spin < 16 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }
    }
    /// The next message for this session. Cancel-safe.
    fn receive(&mut self) -> impl Future<Output = Result<Message, RouterError>> + Send;
    /// The next message if one is already waiting, without waiting for one: the front-end
    /// takes what the router has ready before it writes to the socket.
    fn try_receive(&mut self) -> Option<Result<Message, RouterError>> {
        use futures_util::FutureExt;
        self.receive().now_or_never()
    }
    /// Ends the session on the router side (a persistent one is kept for a later attach).
    fn detach(self);
    /// Lets go of a session whose successor stopped waiting for it and owns its id now: no
    /// word to the router, and nothing kept under the id (what it held is released, never
    /// saved over the successor's).
    fn abandon(self)
    where
        Self: Sized,
    {
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, s: &str, c: &str) -> SessionKey {
        SessionKey {
            tenant: t.into(),
            kind: PublisherKind::Thing,
            subject: s.into(),
            client_id: c.into(),
        }
    }

    #[test]
    fn router_ids_have_no_forbidden_characters_and_do_not_collide() {
        let id = key("acme", "sensor-1", "a/b+#$%:c").router_id();
        assert!(!id.contains(['/', '+', '#', '$']), "{id}");
        assert_eq!(id, "acme:thing:sensor-1:a%2Fb%2B%23%24%25%3Ac");
        // A client id that looks like another thing's key stays distinct.
        assert_ne!(
            key("a", "b:c", "d").router_id(),
            key("a", "b", "c:d").router_id()
        );
        assert_ne!(
            key("a", "b", "c/d").router_id(),
            key("a", "b/c", "d").router_id()
        );
    }

    #[test]
    fn a_user_and_a_thing_of_the_same_name_have_different_router_ids() {
        let thing = key("acme", "ops", "c1");
        let user = SessionKey {
            kind: PublisherKind::User,
            ..thing.clone()
        };
        assert_ne!(thing, user);
        assert_ne!(thing.router_id(), user.router_id());
        assert_eq!(user.router_id(), "acme:user:ops:c1");
        // A name cannot pose as a kind: `:` in a name is encoded.
        let posing = key("acme", "user:ops", "c1");
        assert_ne!(posing.router_id(), user.router_id());
    }
}
