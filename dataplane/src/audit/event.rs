//! An audit event and what it is made of: the refused action, the protocol, the subject.

use std::net::SocketAddr;
use std::time::SystemTime;

use fleetward_policy::SubjectKind;

use crate::listener::{self, Listener};

/// What was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    /// An MQTT CONNECT, or the handshake of a WebSocket stream (its credentials).
    Connect,
    /// A PUBLISH, an HTTP publish, a message on a WebSocket stream.
    Publish,
    /// A SUBSCRIBE filter, or the filter of a WebSocket stream.
    Subscribe,
    /// `POST /users/tokens`.
    SignIn,
    /// `POST /users/tokens/refresh`.
    Refresh,
    /// `POST /provisioning/{tenant}/{claim}`: the topic field names the claim.
    Provision,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::SignIn => "sign_in",
            Self::Refresh => "refresh",
            Self::Provision => "provision",
        }
    }
}

/// The protocol a refused request came in over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) enum Protocol {
    #[serde(rename = "mqtt")]
    Mqtt,
    #[serde(rename = "mqtts")]
    Mqtts,
    #[serde(rename = "mqtt-ws")]
    MqttWs,
    #[serde(rename = "http")]
    Http,
    #[serde(rename = "ws")]
    Ws,
}

/// A refusal as an adapter reports it: borrowed, so a refusal that is held back costs no copy.
pub(crate) struct Refusal<'a> {
    /// The tenant named (or claimed) by the request; empty when it named none.
    pub tenant: &'a str,
    /// Thing or user, when known.
    pub kind: Option<SubjectKind>,
    /// The subject's name in its tenant (or as claimed); empty when the request named none.
    pub subject: &'a str,
    pub action: Action,
    /// The topic or filter, when there is one.
    pub topic: Option<&'a str>,
    /// The refusal's stable label: the evaluator's reason or the adapter's metric label.
    pub reason: &'a str,
    pub protocol: Protocol,
    pub client: Option<SocketAddr>,
}

impl<'a> Refusal<'a> {
    /// A refusal on the MQTT front-end: the client's address and the protocol (TCP, TLS or
    /// WebSocket) come from the connection's task.
    pub(crate) fn mqtt(
        tenant: &'a str,
        kind: Option<SubjectKind>,
        subject: &'a str,
        action: Action,
        topic: Option<&'a str>,
        reason: &'a str,
    ) -> Self {
        let (client, protocol) = match listener::current_peer() {
            Some((addr, Listener::Mqtts)) => (Some(addr), Protocol::Mqtts),
            Some((addr, Listener::Http)) => (Some(addr), Protocol::MqttWs),
            Some((addr, _)) => (Some(addr), Protocol::Mqtt),
            None => (None, Protocol::Mqtt),
        };
        Self {
            tenant,
            kind,
            subject,
            action,
            topic,
            reason,
            protocol,
            client,
        }
    }
}

/// One audit event, as logged, kept and served (docs/audit.md).
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Event {
    /// Increasing on this pod; `GET /audit` pages with it.
    pub id: u64,
    /// RFC 3339, UTC.
    pub time: String,
    #[serde(skip)]
    pub at: SystemTime,
    pub tenant: String,
    /// `thing` or `user`; absent when the request named no subject one could tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_kind: Option<&'static str>,
    pub subject: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub reason: String,
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub pod: String,
    /// Refusals of this subject held back since its last event (not written, not kept).
    pub suppressed: u64,
    /// A summary of held-back refusals of a subject that went quiet; the fields are those of
    /// the last one held back.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub summary: bool,
}
