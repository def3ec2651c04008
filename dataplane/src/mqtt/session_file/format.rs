//! The session file's records (JSON; byte strings in base64) and their conversion from and to
//! what the front-end and the router hold.

use bytes::Bytes;
use rumqttd::protocol::PublishProperties;
use serde::{Deserialize, Serialize};

use crate::mqtt::saved::{OutMsg, Outbound};
use crate::mqtt::subs::{Incarnation, Subscription};
use crate::router::{Message, MessageId, MessageProps, Protocol, Publisher, PublisherKind};

/// What `fleetward start` writes at shutdown; a file of another version is moved aside.
pub(super) const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
pub(super) struct SessionFile {
    pub version: u32,
    /// When it was written, milliseconds since the Unix epoch.
    pub saved_at_ms: u64,
    pub sessions: Vec<FileSession>,
    #[serde(default)]
    pub wills: Vec<FileWill>,
}

/// Who a session or will belongs to: its session key.
#[derive(Serialize, Deserialize, Clone)]
pub(super) struct FileKey {
    pub tenant: String,
    pub kind: Kind,
    pub name: String,
    pub client_id: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub(super) enum Kind {
    Thing,
    User,
}

impl From<PublisherKind> for Kind {
    fn from(k: PublisherKind) -> Self {
        match k {
            PublisherKind::Thing => Kind::Thing,
            PublisherKind::User => Kind::User,
        }
    }
}

impl From<Kind> for PublisherKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Thing => PublisherKind::Thing,
            Kind::User => PublisherKind::User,
        }
    }
}

/// A persistent session whose client was away at shutdown.
#[derive(Serialize, Deserialize)]
pub(super) struct FileSession {
    pub key: FileKey,
    /// How long it had left when the file was written; the time since counts against it.
    pub expires_in_ms: u64,
    pub subscriptions: Vec<FileSub>,
    pub inflight: Vec<FileInflight>,
    pub qos2_in: Vec<u16>,
    pub next_pkid: u16,
    /// What the router had queued for it, oldest first, up to `--max-offline-messages`.
    pub queued: Vec<FileMessage>,
}

/// A will waiting out its delay at shutdown.
#[derive(Serialize, Deserialize)]
pub(super) struct FileWill {
    pub key: FileKey,
    /// How long it had left to wait when the file was written.
    pub due_in_ms: u64,
    pub retain: bool,
    pub message: FileMessage,
}

#[derive(Serialize, Deserialize)]
pub(super) struct FileSub {
    pub client: String,
    pub full: String,
    pub matcher: String,
    pub router: String,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub qos: u8,
    pub id: Option<usize>,
    pub metadata: bool,
    /// Hashes of the tenant's and the channel's uid it was made under (0: unknown).
    pub tenant_uid: u64,
    pub channel_uid: u64,
}

impl FileSub {
    pub(super) fn of(s: &Subscription) -> Self {
        let (tenant_uid, channel_uid) = s.made_under.hashes();
        Self {
            client: s.client.clone(),
            full: s.full.clone(),
            matcher: s.matcher.clone(),
            router: s.router.clone(),
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            qos: s.qos,
            id: s.id,
            metadata: s.metadata,
            tenant_uid,
            channel_uid,
        }
    }

    pub(super) fn into_subscription(self) -> Subscription {
        Subscription {
            client: self.client,
            full: self.full,
            matcher: self.matcher,
            router: self.router,
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            qos: self.qos.min(2),
            id: self.id,
            metadata: self.metadata,
            made_under: Incarnation::from_hashes(self.tenant_uid, self.channel_uid),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum State {
    Qos1Sent,
    Qos2Sent,
    Released,
}

/// A QoS 1/2 delivery the client had not acknowledged.
#[derive(Serialize, Deserialize)]
pub(super) struct FileInflight {
    pub pkid: u16,
    pub state: State,
    #[serde(with = "b64")]
    pub topic: Bytes,
    #[serde(with = "b64")]
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Option<FileProps>,
}

impl FileInflight {
    pub(super) fn of(pkid: u16, state: Outbound, m: &OutMsg) -> Self {
        Self {
            pkid,
            state: match state {
                Outbound::Qos1Sent => State::Qos1Sent,
                Outbound::Qos2Sent => State::Qos2Sent,
                Outbound::Released => State::Released,
            },
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            props: m.props.as_ref().map(|p| FileProps {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers: p.subscription_identifiers.clone(),
            }),
        }
    }

    pub(super) fn into_out(self) -> (u16, (Outbound, OutMsg)) {
        let state = match self.state {
            State::Qos1Sent => Outbound::Qos1Sent,
            State::Qos2Sent => Outbound::Qos2Sent,
            State::Released => Outbound::Released,
        };
        let props = self.props.map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            // Aliases do not outlive a connection.
            topic_alias: None,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            subscription_identifiers: p.subscription_identifiers,
            content_type: p.content_type,
        });
        let out = OutMsg {
            topic: self.topic,
            payload: self.payload,
            qos: self.qos.clamp(1, 2),
            retain: self.retain,
            props,
        };
        (self.pkid, (state, out))
    }
}

/// v5 properties of a message or delivery.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct FileProps {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    #[serde(with = "b64_opt", default)]
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    #[serde(default)]
    pub subscription_identifiers: Vec<usize>,
}

/// A message queued for a session, or a will's.
#[derive(Serialize, Deserialize)]
pub(super) struct FileMessage {
    #[serde(with = "b64")]
    pub topic: Bytes,
    #[serde(with = "b64")]
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Option<FileProps>,
    /// Who published it.
    pub publisher: Option<(Kind, String)>,
    pub protocol: String,
    pub created_ns: u64,
    /// Its message id (a UUIDv7).
    pub id: String,
}

impl FileMessage {
    pub(super) fn of(m: &Message) -> Self {
        Self {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            props: m.props.as_deref().map(|p| FileProps {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers: Vec::new(),
            }),
            publisher: m
                .publisher
                .as_ref()
                .map(|p| (p.kind.into(), p.name.to_string())),
            protocol: m.protocol.as_str().to_owned(),
            created_ns: m.created_ns,
            id: m.id.to_string(),
        }
    }

    /// The message; `None` when its id cannot be read.
    pub(super) fn into_message(self) -> Option<Message> {
        let id: MessageId = self.id.parse().ok()?;
        let props = self.props.map(|p| MessageProps {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
        });
        Some(Message {
            stored: false,
            topic: self.topic,
            payload: self.payload,
            qos: self.qos.min(2),
            props: props.filter(|p| !p.is_empty()).map(Box::new),
            retain: self.retain,
            // The publishing connection is gone: no-local has nothing to compare.
            origin: None,
            publisher: self.publisher.map(|(kind, name)| Publisher {
                kind: kind.into(),
                name: name.into(),
            }),
            protocol: Protocol::parse(&self.protocol),
            created_ns: self.created_ns,
            id,
        })
    }
}

/// Bytes as base64.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::Deserialize as _;

    pub(super) fn serialize<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// Optional bytes as base64.
mod b64_opt {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::Deserialize as _;

    pub(super) fn serialize<S: serde::Serializer>(
        b: &Option<Bytes>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Bytes>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| STANDARD.decode(t).map(Bytes::from))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}
