//! Ways in for the fuzz targets in `dataplane/fuzz`: the functions the server runs on bytes
//! from the network, unchanged, behind types the fuzz crate can name. Not an API: hidden from
//! the docs, and it changes with the front-end.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::BytesMut;
use fleetward_policy::{
    Actions, Channel, Grant, GrantSubject, KeyDigest, Qos, Resources, Snapshot, Subject,
    SubtopicPattern, Tenant, TenantLimits, Thing,
};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

pub use rumqttd::protocol::Packet;

use crate::ingress::{Ingress, MqttConfig};
use crate::metrics::Metrics;
use crate::mqtt::{self, Broker};
use crate::router::{Message, Publisher, Router, RouterError, RouterLink, SessionKey, SessionMode};

/// An MQTT protocol version, as a connection's CONNECT chooses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.
    V5,
}

impl From<mqtt::Version> for Version {
    fn from(v: mqtt::Version) -> Self {
        match v {
            mqtt::Version::V4 => Version::V4,
            mqtt::Version::V5 => Version::V5,
        }
    }
}

fn codec(version: Version) -> mqtt::Codec {
    mqtt::Codec::new(match version {
        Version::V4 => mqtt::Version::V4,
        Version::V5 => mqtt::Version::V5,
    })
}

/// A decoded packet, with the QoS, packet id and DUP flag the codec peeks from a PUBLISH.
#[derive(Debug)]
pub struct Frame {
    pub packet: Packet,
    pub qos: u8,
    pub pkid: u16,
    pub dup: bool,
}

/// The largest CONNECT the handshake reads.
pub const MAX_CONNECT: usize = mqtt::MAX_CONNECT;

/// The default `--max-packet-size`.
pub fn default_max_packet_size() -> usize {
    MqttConfig::default().max_packet_size
}

/// The version a connection's first bytes choose (`codec::peek_version`); errors as text.
pub fn peek_version(buf: &[u8], max: usize) -> Result<Option<Version>, String> {
    mqtt::peek_version(buf, max)
        .map(|v| v.map(Version::from))
        .map_err(|e| e.to_string())
}

/// The next packet from the front of `buf`, as a session of `version` reads it with
/// `--max-packet-size` `max` (`Codec::read`); errors as text.
pub fn read_frame(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, String> {
    let frame = codec(version).read(buf, max).map_err(|e| e.to_string())?;
    Ok(frame.map(|f: mqtt::Frame| Frame {
        packet: f.packet,
        qos: f.qos,
        pkid: f.pkid,
        dup: f.dup,
    }))
}

/// Encodes `packet` as a session of `version` writes it (`Codec::write`).
pub fn write_packet(version: Version, packet: Packet, out: &mut BytesMut) -> Result<(), String> {
    codec(version).write(packet, out).map_err(|e| e.to_string())
}

/// A connection's first packet, as the handshake read it.
#[derive(Debug)]
pub struct Connected {
    pub version: Version,
    pub packet: Packet,
    /// What came after the CONNECT: the rest of the read buffer, then the unread bytes.
    pub rest: BytesMut,
}

/// The handshake's read of the CONNECT (`connect::read_connect`) from `wire`, arriving at most
/// `chunk` bytes per read; `None` when the wire ends before the CONNECT is complete.
pub fn read_connect(wire: &[u8], chunk: usize) -> Result<Option<Connected>, String> {
    let mut stream = Chunked {
        wire,
        chunk: chunk.max(1),
    };
    // As the handshake starts it.
    let mut rbuf = BytesMut::with_capacity(256);
    // The stream is always ready, so the read never waits.
    let Some(read) = mqtt::read_connect(&mut stream, &mut rbuf).now_or_never() else {
        return Err("the CONNECT read waited on a stream that is always ready".into());
    };
    let Some((codec, packet)) = read.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    rbuf.extend_from_slice(stream.wire);
    Ok(Some(Connected {
        version: codec.version().into(),
        packet,
        rest: rbuf,
    }))
}

/// Bytes that arrive `chunk` at a time, then the end of the stream.
struct Chunked<'a> {
    wire: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.wire.len()).min(buf.remaining());
        let (now, later) = self.wire.split_at(n);
        buf.put_slice(now);
        self.wire = later;
        Poll::Ready(Ok(()))
    }
}

/// The tenant whose thing `sensor` opens the WebSocket streams of [`WsStreams`].
pub const WS_TENANT: &str = "acme";
/// The one channel `sensor` may publish on.
pub const WS_CHANNEL: &str = "telemetry";
/// Subtopics of [`WS_CHANNEL`] under this level are denied to `sensor`.
pub const WS_DENIED_LEVEL: &str = "secret";
/// The largest message on [`WS_CHANNEL`].
pub const WS_MAX_MESSAGE: u32 = 4096;

/// WebSocket streams of thing `acme/sensor` over a fixed policy, with a router that drops
/// every message: client text frames are answered by the stream's own code
/// (`ws::session`'s `on_text`).
///
/// The policy: tenants `acme` and `globex`, each with channels `telemetry` (QoS ≤ 2, no
/// retained messages, at most [`WS_MAX_MESSAGE`] bytes), `commands` and `status`; `sensor`
/// may publish on `telemetry` except under `secret/`, and nothing else.
pub struct WsStreams {
    shared: Arc<Ingress<NullRouter>>,
    link: NullLink,
    /// Kept so the policy channel stays open.
    _policy: watch::Sender<Arc<Snapshot>>,
}

impl Default for WsStreams {
    fn default() -> Self {
        Self::new()
    }
}

impl WsStreams {
    pub fn new() -> Self {
        let (policy, rx) = watch::channel(policy());
        let shared = Ingress::new(
            MqttConfig::default(),
            NullRouter,
            rx,
            Arc::new(Metrics::default()),
        );
        Self {
            shared: Arc::new(shared),
            link: NullLink,
            _policy: policy,
        }
    }

    /// The answer to text frame `text` on the stream at `path` (a topic or filter of
    /// [`WS_CHANNEL`], as the URL gives it), as the stream's session gives it.
    pub fn on_text(&mut self, path: &str, text: &str) -> String {
        let subject = Subject::thing(WS_TENANT, "sensor");
        let stream = crate::ws::Stream {
            publisher: Publisher::of(&subject),
            who: format!("{WS_TENANT}/sensor"),
            subject,
            key_digest: None,
            token_ends: None,
            // As `ws::accept` sets it: a path without wildcards is where frames publish.
            publish_topic: (!path.contains(['+', '#'])).then(|| path.to_owned()),
            filter: path.to_owned(),
            tenant: WS_TENANT.to_owned(),
            channel: WS_CHANNEL.to_owned(),
            tenant_uid: String::new(),
            channel_uid: String::new(),
            client: None,
        };
        crate::ws::answer_text(self.shared.clone(), stream, text, &mut self.link)
    }
}

/// The fixed policy of both targets, built once.
fn policy() -> Arc<Snapshot> {
    static POLICY: OnceLock<Arc<Snapshot>> = OnceLock::new();
    POLICY.get_or_init(|| Arc::new(build_policy())).clone()
}

fn build_policy() -> Snapshot {
    let mut r = Resources::default();
    for tenant in ["acme", "globex"] {
        add_tenant(&mut r, tenant);
        add_grants(&mut r, tenant);
    }
    // A fixed policy that is known to build (the tests say so); an empty one otherwise.
    Snapshot::from_resources(1, r).unwrap_or_else(|_| Snapshot::new(1))
}

/// A tenant of the fixed policy, with its things and channels.
fn add_tenant(r: &mut Resources, tenant: &str) {
    r.tenants.push(Tenant {
        provisioning: Default::default(),
        device_ca: Default::default(),
        engine: Default::default(),
        uid: String::new(),
        name: tenant.into(),
        suspended: false,
        limits: TenantLimits::default(),
        web: Default::default(),
    });
    for (name, mountpoint) in [
        ("sensor", None),
        ("device", None),
        ("mounted", Some(WS_CHANNEL)),
    ] {
        r.things.push(Thing {
            x509: Default::default(),
            credential_mode: Default::default(),
            attributes: Default::default(),
            tenant: tenant.into(),
            name: name.into(),
            key_digests: vec![KeyDigest::of(MQTT_KEY.as_bytes())],
            disabled: false,
            mountpoint: mountpoint.map(str::to_owned),
            max_connections: None,
        });
    }
    for (name, max_qos, retained_allowed) in [
        (WS_CHANNEL, Qos::ExactlyOnce, false),
        ("commands", Qos::AtLeastOnce, false),
        ("status", Qos::AtLeastOnce, true),
    ] {
        r.channels.push(Channel {
            history_retention_secs: Default::default(),
            uid: String::new(),
            tenant: tenant.into(),
            name: name.into(),
            max_qos,
            retained_allowed,
            max_message_size: Some(WS_MAX_MESSAGE),
            delivery_metadata: false,
        });
    }
}

/// The grants of a tenant of the fixed policy: a subtopic deny on the stream channel.
fn add_grants(r: &mut Resources, tenant: &str) {
    let grant =
        |tenant: &str, thing: &str, channel: &str, actions, deny: Vec<SubtopicPattern>| Grant {
            tenant: tenant.into(),
            name: format!("{thing}-{channel}"),
            subject: GrantSubject::Thing(thing.into()),
            channel: channel.into(),
            actions,
            allow: Vec::new(),
            deny,
        };
    let denied: Vec<SubtopicPattern> = SubtopicPattern::parse(&format!("{WS_DENIED_LEVEL}/#"))
        .into_iter()
        .collect();
    r.grants.push(grant(
        tenant,
        "sensor",
        WS_CHANNEL,
        Actions::PUBLISH,
        denied.clone(),
    ));
    r.grants.push(grant(
        tenant,
        "device",
        WS_CHANNEL,
        Actions::BOTH,
        denied.clone(),
    ));
    r.grants
        .push(grant(tenant, "device", "status", Actions::BOTH, Vec::new()));
    r.grants.push(grant(
        tenant,
        "device",
        "commands",
        Actions::SUBSCRIBE,
        Vec::new(),
    ));
    r.grants
        .push(grant(tenant, "mounted", WS_CHANNEL, Actions::BOTH, denied));
}

/// The key of every thing of the fixed policy.
pub const MQTT_KEY: &str = "key";

/// Serves one MQTT connection whose client sends `wire`, arriving at most `chunk` bytes per
/// read, then goes away: the front-end's handshake and session (`mqtt::serve_stream`), with
/// `--max-packet-size` `max`, over the fixed policy (things `acme/device` and `acme/mounted`,
/// key [`MQTT_KEY`]: `device` publishes and subscribes on `telemetry` but not under `secret/`,
/// and on `status` with retained messages, and subscribes to `commands`) and a router that
/// drops messages. Returns what the server wrote.
pub fn serve_mqtt(wire: &[u8], chunk: usize, max: usize) -> Result<Vec<u8>, String> {
    // A runtime and a front-end of its own: nothing of one connection outlives it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime: {e}"))?;
    let (_policy, rx) = watch::channel(policy());
    let config = MqttConfig {
        max_packet_size: max,
        ..MqttConfig::default()
    };
    let shared = Arc::new(Ingress::new(
        config,
        NullRouter,
        rx,
        Arc::new(Metrics::default()),
    ));
    let mut stream = Client {
        read: Chunked {
            wire,
            chunk: chunk.max(1),
        },
        written: Vec::new(),
    };
    let broker = Arc::new(Broker::new(shared));
    runtime.block_on(mqtt::serve_stream(broker, &mut stream, None));
    Ok(stream.written)
}

/// A client that sends its bytes and reads everything the server writes.
struct Client<'a> {
    read: Chunked<'a>,
    written: Vec<u8>,
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A router that takes every message and delivers none.
struct NullRouter;

struct NullLink;

impl Router for NullRouter {
    type Link = NullLink;

    async fn attach(
        &self,
        _: &SessionKey,
        _: SessionMode,
    ) -> Result<(NullLink, bool), RouterError> {
        Ok((NullLink, false))
    }

    fn publish(&self, _: Message) -> Result<(), RouterError> {
        Ok(())
    }

    fn is_alive(&self) -> bool {
        true
    }
}

impl RouterLink for NullLink {
    fn subscribe(&mut self, _: &str) -> Result<(), RouterError> {
        Ok(())
    }

    fn unsubscribe(&mut self, _: &str) -> Result<(), RouterError> {
        Ok(())
    }

    fn publish(&mut self, _: Message) -> Result<(), RouterError> {
        Ok(())
    }

    async fn receive(&mut self) -> Result<Message, RouterError> {
        std::future::pending().await
    }

    fn detach(self) {}
}

#[cfg(test)]
mod seeds;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_on_the_granted_channel_is_published_and_one_under_the_denied_level_is_not() {
        let mut ws = WsStreams::new();
        let ok = ws.on_text("m/acme/c/telemetry/room", r#"{"payload":"hi","id":1}"#);
        let ok: serde_json::Value = serde_json::from_str(&ok).expect("json");
        assert_eq!(
            (ok["type"].as_str(), ok["id"].as_i64()),
            (Some("published"), Some(1))
        );
        let denied = ws.on_text(
            "m/acme/c/telemetry/#",
            r#"{"payload":"hi","topic":"m/acme/c/telemetry/secret/x"}"#,
        );
        let denied: serde_json::Value = serde_json::from_str(&denied).expect("json");
        assert_eq!(denied["type"], "error", "{denied}");
    }

    #[test]
    fn a_frame_id_is_echoed_as_sent() {
        // Found by `ws_frames`: a number the default parser rounded one unit off came back
        // as another number.
        let mut ws = WsStreams::new();
        let frame = r#"{"id":[2222222222222222222222222222222211,0.1],"payload":"x"}"#;
        let sent: serde_json::Value = serde_json::from_str(frame).expect("json");
        let answer = ws.on_text("m/acme/c/telemetry/room", frame);
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("json");
        assert_eq!(answer["type"], "published", "{answer}");
        assert_eq!(answer["id"], sent["id"]);
        // Rust's own parser rounds correctly.
        let exact = "2222222222222222222222222222222211".parse::<f64>().ok();
        assert_eq!(answer["id"][0].as_f64(), exact);
    }

    #[test]
    fn a_served_connection_is_answered_as_a_client_would_be() {
        let mut wire = BytesMut::new();
        let login = rumqttd::protocol::Login {
            username: "acme/device".into(),
            password: MQTT_KEY.into(),
        };
        let connect = rumqttd::protocol::Connect {
            keep_alive: 30,
            client_id: "c".into(),
            clean_session: true,
        };
        let publish =
            crate::mqtt::publish_with_id(b"m/acme/c/telemetry/a", b"x", 1, 9, false, false);
        for p in [
            Packet::Connect(connect, None, None, None, Some(login)),
            Packet::Publish(publish, None),
        ] {
            write_packet(Version::V4, p, &mut wire).expect("encodes");
        }
        let out = serve_mqtt(&wire, 7, 1024).expect("served");
        // CONNACK accepted, then PUBACK 9.
        assert_eq!(out, [0x20, 2, 0, 0, 0x40, 2, 0, 9]);
    }

    #[test]
    fn answers_to_packets_sent_with_the_connect_go_out_when_one_of_them_ends_the_connection() {
        // Found by `mqtt_packets`: a QoS 1 publish sent in the same write as the CONNECT, then
        // a publish refused (another tenant's topic, which ends a v3 connection): the PUBACK
        // was never written when the whole write arrived in one read.
        let mut wire = BytesMut::new();
        let login = rumqttd::protocol::Login {
            username: "acme/device".into(),
            password: MQTT_KEY.into(),
        };
        let connect = rumqttd::protocol::Connect {
            keep_alive: 30,
            client_id: "c".into(),
            clean_session: true,
        };
        let publish = |topic: &[u8], pkid| {
            Packet::Publish(
                crate::mqtt::publish_with_id(topic, b"x", 1, pkid, false, false),
                None,
            )
        };
        for p in [
            Packet::Connect(connect, None, None, None, Some(login)),
            publish(b"m/acme/c/telemetry/a", 1),
            publish(b"m/globex/c/telemetry/a", 2),
        ] {
            write_packet(Version::V4, p, &mut wire).expect("encodes");
        }
        for chunk in [1, usize::MAX] {
            let out = serve_mqtt(&wire, chunk, 1024).expect("served");
            assert_eq!(
                out,
                [0x20, 2, 0, 0, 0x40, 2, 0, 1],
                "reads of {chunk} bytes"
            );
        }
    }

    #[test]
    fn the_connect_read_gives_the_packet_and_what_follows_whatever_the_reads() {
        let mut wire = BytesMut::new();
        write_packet(
            Version::V5,
            Packet::Connect(
                rumqttd::protocol::Connect {
                    keep_alive: 30,
                    client_id: "c".into(),
                    clean_session: true,
                },
                None,
                None,
                None,
                None,
            ),
            &mut wire,
        )
        .expect("encodes");
        wire.extend_from_slice(&[0xc0, 0]);
        for chunk in [1, 3, 1024] {
            let c = read_connect(&wire, chunk)
                .expect("valid")
                .expect("complete");
            assert_eq!(c.version, Version::V5);
            assert!(matches!(c.packet, Packet::Connect(..)));
            assert_eq!(&c.rest[..], &[0xc0, 0]);
        }
        assert!(read_connect(&wire[..5], 2).expect("valid so far").is_none());
    }
}
