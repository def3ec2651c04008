//! What the front-end is configured with: sizes, timeouts and per-session bounds that every
//! adapter reads (the MQTT ones among them, hence the name).

use std::time::Duration;

/// What the MQTT front-end is configured with.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// The most sockets this pod holds (every listener but admin, from accept); more are closed
    /// at once.
    pub max_connections: usize,
    /// How long a new connection has to send a complete CONNECT.
    pub connect_timeout: Duration,
    /// How long a write to a client may block before the connection is dropped.
    pub write_timeout: Duration,
    /// The largest packet accepted (remaining length, bytes), before any tenant limit.
    pub max_packet_size: usize,
    /// The most QoS 1/2 deliveries awaiting a client's ack (a v5 client's receive maximum
    /// lowers it); the router is not read while the window is full.
    pub max_inflight: u16,
    /// Topic aliases a v5 client may use towards the server.
    pub topic_alias_max: u16,
    /// Entries of the decision cache.
    pub decision_cache_entries: u64,
    /// The longest a persistent session is kept while its client is away (v3 sessions, and
    /// v5 session expiry intervals above it).
    pub max_session_expiry: Duration,
    /// The most user properties one message (publish or will) may carry; more end a v5
    /// connection with DISCONNECT (or refuse its CONNECT with CONNACK) 0x95.
    pub max_user_properties: usize,
    /// The longest a v5 will waits after its connection ends (a session's expiry caps it too).
    pub max_will_delay: Duration,
    /// The most subscriptions one session holds; filters beyond get SUBACK 0x97 (v5) / 0x80.
    pub max_subscriptions_per_session: usize,
    /// How long a new connection waits for the session it takes over to end. After that the
    /// old session is abandoned: it may no longer touch the router, its saved state or its
    /// will, and the new one proceeds.
    pub takeover_wait: Duration,
    /// The most messages queued while its client was away that a resumed persistent session
    /// is sent; the rest are dropped and counted (MQTT.md, Persistent sessions).
    pub max_offline_messages: usize,
    /// The most wills of one tenant waiting out their delay; a will past it goes out at once.
    pub max_pending_wills_per_tenant: usize,
    /// The most persistent sessions of one tenant kept while their clients are away; saving
    /// one more drops the tenant's oldest.
    pub max_saved_sessions_per_tenant: usize,
    /// The longest keep-alive a client may use, in seconds; `None`: the client's own. A v5
    /// client asking more (or 0, none) is given this one in CONNACK (Server Keep Alive); a v3
    /// client asking more or 0 is refused (CONNACK 0x02), as v3 cannot be told.
    pub max_keep_alive: Option<u16>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_packet_size: 1024 * 1024,
            max_inflight: 100,
            topic_alias_max: 64,
            decision_cache_entries: 100_000,
            max_session_expiry: Duration::from_secs(2 * 3600),
            max_user_properties: 32,
            max_will_delay: Duration::from_secs(300),
            max_subscriptions_per_session: 100,
            takeover_wait: Duration::from_secs(5),
            max_offline_messages: 1000,
            max_pending_wills_per_tenant: 1000,
            max_saved_sessions_per_tenant: 10_000,
            max_keep_alive: None,
        }
    }
}
