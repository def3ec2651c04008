//! What a successful CONNECT hands its session: the subject, the negotiated limits, the
//! registration, and what a resumed session left.

use std::time::Duration;

use fleetward_policy::{KeyDigest, Mountpoint, Subject};

use crate::ingress::ConnectionSlots;
use crate::mqtt::pending_wills::Will;
use crate::mqtt::saved::SavedSession;
use crate::router::{Publisher, SessionKey};

/// What a successful CONNECT established: the session's own part, and what it starts with.
pub(crate) struct Connected<L> {
    pub acc: Accepted,
    /// A router link attached at CONNECT (persistent sessions).
    pub link: Option<L>,
    /// What a resumed session left.
    pub saved: Option<SavedSession>,
    /// A persistent session's durable half, where sessions live in JetStream.
    pub durable: Option<Box<crate::mqtt::durable::DurableLink>>,
}

/// What a successful CONNECT established that the session keeps.
pub(crate) struct Accepted {
    pub subject: Subject,
    /// The subject as subscribers see it, built once per connection.
    pub publisher: Publisher,
    pub key_digest: Option<KeyDigest>,
    pub key: SessionKey,
    pub mount: Option<Mountpoint>,
    pub keep_alive: Duration,
    /// Boxed: most clients have none, and this is kept for the whole connection.
    pub will: Option<Box<Will>>,
    pub receive_maximum: u16,
    pub client_max_packet: Option<usize>,
    /// Topic aliases the client accepts from the server (v5), capped by ours.
    pub client_topic_alias_max: u16,
    pub registration: crate::mqtt::registry::Registration,
    /// Counts the connection against its tenant's and thing's `maxConnections` while held.
    pub _tenant_slot: ConnectionSlots,
    /// Whether the link attached at CONNECT is a persistent one (its router state must be
    /// cleared if not kept).
    pub persistent_link: bool,
    /// How long the session is kept after the connection ends; zero for a clean session. A v5
    /// DISCONNECT may change it (MQTT 5, 3.14.2.2.2).
    pub expiry: Duration,
    /// Whether the CONNECT asked for no expiry (v3: always): a v5 DISCONNECT may then not
    /// set one.
    pub expiry_was_zero: bool,
    /// When the access token the user connected with expires: the connection ends then.
    pub token_ends: Option<tokio::time::Instant>,
}
