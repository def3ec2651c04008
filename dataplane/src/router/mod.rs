//! Our own small interface to the message router (DESIGN §6), so the router can be replaced.
//!
//! Nothing above this module sees rumqttd types, packet ids or the router's QoS rules: the
//! front-end authorizes, then attaches sessions, subscribes, publishes and receives here.

mod rumqttd;

use std::future::Future;

use bytes::Bytes;

pub use self::rumqttd::{RumqttdConfig, RumqttdRouter};

/// Who a router session belongs to: the router-side client id is derived from all three parts,
/// so a client can only ever meet sessions of its own thing in its own tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The subject's tenant.
    pub tenant: String,
    /// The thing (or user) name.
    pub subject: String,
    /// The MQTT client id the client chose (or was assigned).
    pub client_id: String,
}

impl SessionKey {
    /// A reversible id free of `/ + # $` (which rumqttd refuses in client ids): each part is
    /// percent-encoded for `/ + # $ % :` and the parts are joined with `:`.
    pub fn router_id(&self) -> String {
        let mut out = String::with_capacity(
            self.tenant.len() + self.subject.len() + self.client_id.len() + 2,
        );
        for (i, part) in [&self.tenant, &self.subject, &self.client_id]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                out.push(':');
            }
            for c in part.chars() {
                match c {
                    '/' | '+' | '#' | '$' | '%' | ':' => {
                        out.push_str(&format!("%{:02X}", c as u32));
                    }
                    c => out.push(c),
                }
            }
        }
        out
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

/// A message on its way into or out of the router, always on a full `m/<tenant>/c/…` topic.
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
}

impl RouterError {
    /// A stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouterError::Refused => "refused",
            RouterError::SessionClosed => "session_closed",
            RouterError::RouterDown => "router_down",
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

    /// Whether the router still runs.
    fn is_alive(&self) -> bool;
}

/// One session's attachment to the router.
pub trait RouterLink: Send + 'static {
    /// Adds a subscription on a full filter (already authorized and validated).
    fn subscribe(&mut self, filter: &str) -> Result<(), RouterError>;
    /// Removes a subscription.
    fn unsubscribe(&mut self, filter: &str) -> Result<(), RouterError>;
    /// Publishes through this session.
    fn publish(&mut self, message: Message) -> Result<(), RouterError>;
    /// The next message for this session. Cancel-safe.
    fn receive(&mut self) -> impl Future<Output = Result<Message, RouterError>> + Send;
    /// Ends the session on the router side (a persistent one is kept for a later attach).
    fn detach(self);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, s: &str, c: &str) -> SessionKey {
        SessionKey {
            tenant: t.into(),
            subject: s.into(),
            client_id: c.into(),
        }
    }

    #[test]
    fn router_ids_have_no_forbidden_characters_and_do_not_collide() {
        let id = key("acme", "sensor-1", "a/b+#$%:c").router_id();
        assert!(!id.contains(['/', '+', '#', '$']), "{id}");
        assert_eq!(id, "acme:sensor-1:a%2Fb%2B%23%24%25%3Ac");
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
}
