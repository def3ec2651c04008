//! One MQTT v5 connection, packet by packet: rumqttc's codec under a loop of our own.
//!
//! The fault tests need what a client library hides: the packet id each PUBACK answers (to know
//! which message was accepted), `session present`, the DUP flag of each delivery and the reason
//! code of a server's DISCONNECT; and they move a session to another pod by hand.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Filter, Login, Packet, PubAck, Publish,
    Subscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest packet a test client accepts.
const MAX_PACKET: u32 = 1 << 20;
/// How long a CONNECT may wait for its CONNACK.
const CONNACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Who connects, and how.
#[derive(Debug, Clone)]
pub struct Login5 {
    /// The MQTT client id (the thing's name: one session per thing).
    pub client_id: String,
    /// `<tenant>/<thing>`.
    pub username: String,
    /// The thing's key.
    pub password: String,
    /// Session expiry in seconds: above 0 makes the session persistent.
    pub session_expiry: u32,
    /// Clean start: a probe's throwaway session, not one of the load's.
    pub clean_start: bool,
}

/// An open connection past its CONNACK.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    out: BytesMut,
}

/// What ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The server sent DISCONNECT with this reason code.
    Disconnect(u8),
    /// The socket closed or failed without a DISCONNECT.
    Eof,
}

impl Conn {
    /// Connects, and returns the connection and its CONNACK (refusals too:
    /// the caller reads `code`).
    pub async fn connect(addr: SocketAddr, login: &Login5) -> Result<(Self, ConnAck)> {
        let stream = tokio::time::timeout(CONNACK_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect to {addr}: timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true).context("set TCP_NODELAY")?;
        let mut conn = Self {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::with_capacity(16 * 1024),
        };
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = Some(login.session_expiry);
        props.receive_maximum = Some(1000);
        let connect = Connect {
            keep_alive: 30,
            client_id: login.client_id.clone(),
            clean_start: login.clean_start,
            properties: Some(props),
        };
        let login = Login::new(login.username.clone(), login.password.clone());
        conn.send(&Packet::Connect(connect, None, Some(login)))
            .await?;
        let packet = tokio::time::timeout(CONNACK_TIMEOUT, conn.read())
            .await
            .with_context(|| format!("no CONNACK from {addr} within {CONNACK_TIMEOUT:?}"))??;
        match packet {
            Some(Packet::ConnAck(ack)) => Ok((conn, ack)),
            Some(other) => bail!("{addr} answered CONNECT with {other:?}"),
            None => bail!("{addr} closed the connection before its CONNACK"),
        }
    }

    /// Writes one packet and flushes it.
    pub async fn send(&mut self, packet: &Packet) -> Result<()> {
        self.out.clear();
        packet
            .write(&mut self.out, None)
            .with_context(|| format!("encode {packet:?}"))?;
        self.stream
            .write_all(&self.out)
            .await
            .context("write to the broker")
    }

    /// `SUBSCRIBE filter` at QoS 1 with packet id `pkid`.
    pub async fn subscribe(&mut self, pkid: u16, filter: &str) -> Result<()> {
        let mut sub = Subscribe::new(Filter::new(filter, QoS::AtLeastOnce), None);
        sub.pkid = pkid;
        self.send(&Packet::Subscribe(sub)).await
    }

    /// A QoS 1 PUBLISH.
    pub async fn publish(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: &str,
        dup: bool,
    ) -> Result<()> {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_owned(), None);
        publish.pkid = pkid;
        publish.dup = dup;
        self.send(&Packet::Publish(publish)).await
    }

    /// PUBACK of a delivery.
    pub async fn puback(&mut self, pkid: u16) -> Result<()> {
        self.send(&Packet::PubAck(PubAck::new(pkid, None))).await
    }

    /// The next packet; `None` when the server closed the connection. Cancel-safe: what was read
    /// stays in the buffer.
    pub async fn read(&mut self) -> Result<Option<Packet>> {
        loop {
            match Packet::read(&mut self.buf, Some(MAX_PACKET)) {
                Ok(packet) => return Ok(Some(packet)),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(err) => bail!("a malformed packet from the broker: {err:?}"),
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .context("read from the broker")?;
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// Whether a CONNACK accepted the connection.
pub fn accepted(ack: &ConnAck) -> bool {
    ack.code == ConnectReturnCode::Success
}

/// Connects as `login` with a clean session, publishes one QoS 1 message to `topic` and returns
/// the PUBACK's reason code (0 accepted, 0x87 not authorized, …), or the CONNACK's code when the
/// connection is refused.
pub async fn publish_once(addr: SocketAddr, login: &Login5, topic: &str) -> Result<u8> {
    let (mut conn, ack) = Conn::connect(addr, login).await?;
    if !accepted(&ack) {
        // The reason codes a probe can meet; any other refusal reads as unspecified.
        return Ok(match ack.code {
            ConnectReturnCode::BadUserNamePassword => 0x86,
            ConnectReturnCode::NotAuthorized => 0x87,
            ConnectReturnCode::QuotaExceeded => 0x97,
            _ => 0x80,
        });
    }
    conn.publish(1, topic, "probe", false).await?;
    loop {
        match tokio::time::timeout(CONNACK_TIMEOUT, conn.read()).await {
            Err(_) => bail!("no PUBACK from {addr} within {CONNACK_TIMEOUT:?}"),
            Ok(Ok(Some(Packet::PubAck(ack)))) => return Ok(super::load::puback_code(ack.reason)),
            Ok(Ok(Some(Packet::Disconnect(d)))) => return Ok(d.reason_code as u8),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("{addr} closed the connection instead of a PUBACK"),
            Ok(Err(err)) => return Err(err),
        }
    }
}
