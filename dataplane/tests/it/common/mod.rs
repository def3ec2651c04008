//! Test fixtures: two tenants with the same thing and channel names, a dataplane in-process,
//! and rumqttc clients whose events arrive on a channel.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetward_dataplane::{Dataplane, MqttConfig, RunningDataplane};
use fleetward_policy::{
    Actions, Channel, Delta, Grant, GrantSubject, KeyDigest, Qos, Resources, Snapshot, Tenant,
    TenantLimits, Thing,
};
use tokio::sync::{mpsc, watch};

pub const TENANTS: [&str; 2] = ["acme", "globex"];

/// The key of a thing: distinct per tenant, so a key of one tenant never works in the other.
pub fn key(tenant: &str, thing: &str) -> String {
    format!("key-{tenant}-{thing}-0123456789")
}

fn thing(tenant: &str, name: &str, mountpoint: Option<&str>) -> Thing {
    Thing {
        x509: Default::default(),
        credential_mode: Default::default(),
        attributes: Default::default(),
        tenant: tenant.into(),
        name: name.into(),
        key_digests: vec![KeyDigest::of(key(tenant, name).as_bytes())],
        disabled: false,
        mountpoint: mountpoint.map(str::to_owned),
        max_connections: None,
    }
}

fn channel(tenant: &str, name: &str, max_qos: Qos, retained: bool, metadata: bool) -> Channel {
    Channel {
        history_retention_secs: Default::default(),
        uid: String::new(),
        tenant: tenant.into(),
        name: name.into(),
        max_qos,
        retained_allowed: retained,
        delivery_metadata: metadata,
        max_message_size: None,
    }
}

pub fn grant(tenant: &str, name: &str, thing: &str, channel: &str, actions: Actions) -> Grant {
    Grant {
        tenant: tenant.into(),
        name: name.into(),
        subject: GrantSubject::Thing(thing.into()),
        channel: channel.into(),
        actions,
        allow: Vec::new(),
        deny: Vec::new(),
    }
}

/// Per tenant: things `sensor`, `reader`, `mounted` (mountpoint `telemetry`), `stranger`
/// (no grants); channels `telemetry` (QoS ≤ 2, retained, delivery metadata), `commands` (QoS ≤
/// 1, no retained, no delivery metadata); `sensor` publishes on both, `reader` subscribes to both, `mounted` does both on
/// `telemetry`.
pub fn resources() -> Resources {
    let mut r = Resources::default();
    for t in TENANTS {
        r.tenants.push(Tenant {
            provisioning: Default::default(),
            device_ca: Default::default(),
            engine: Default::default(),
            uid: String::new(),
            name: t.into(),
            suspended: false,
            limits: TenantLimits::default(),
            web: Default::default(),
        });
        for name in ["sensor", "reader", "stranger"] {
            r.things.push(thing(t, name, None));
        }
        r.things.push(thing(t, "mounted", Some("telemetry")));
        r.channels
            .push(channel(t, "telemetry", Qos::ExactlyOnce, true, true));
        r.channels
            .push(channel(t, "commands", Qos::AtLeastOnce, false, false));
        r.grants.push(grant(
            t,
            "sensor-telemetry",
            "sensor",
            "telemetry",
            Actions::PUBLISH,
        ));
        r.grants.push(grant(
            t,
            "sensor-commands",
            "sensor",
            "commands",
            Actions::PUBLISH,
        ));
        r.grants.push(grant(
            t,
            "reader-telemetry",
            "reader",
            "telemetry",
            Actions::SUBSCRIBE,
        ));
        r.grants.push(grant(
            t,
            "reader-commands",
            "reader",
            "commands",
            Actions::SUBSCRIBE,
        ));
        r.grants.push(grant(
            t,
            "mounted-telemetry",
            "mounted",
            "telemetry",
            Actions::BOTH,
        ));
    }
    r
}

pub fn snapshot(version: u64, resources: Resources) -> Arc<Snapshot> {
    Arc::new(Snapshot::from_resources(version, resources).expect("valid fixture"))
}

pub struct Fixture {
    pub policy: watch::Sender<Arc<Snapshot>>,
    pub dataplane: RunningDataplane,
    pub addr: SocketAddr,
    version: u64,
}

impl Fixture {
    pub async fn start() -> Self {
        Self::start_with(MqttConfig::default()).await
    }

    pub async fn start_with(config: MqttConfig) -> Self {
        let (policy, rx) = watch::channel(snapshot(1, resources()));
        let dataplane = Dataplane::new(rx)
            .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .admin_listen(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .mqtt_config(config)
            .start()
            .await
            .expect("dataplane starts");
        let addr = dataplane.mqtt_addr;
        Self {
            policy,
            dataplane,
            addr,
            version: 1,
        }
    }

    /// Applies a new snapshot built from `resources`.
    pub fn apply(&mut self, resources: Resources) {
        self.version += 1;
        self.policy.send_replace(snapshot(self.version, resources));
    }

    /// Applies a delta to the current snapshot, as the PolicySync client does.
    pub fn apply_delta(&mut self, change: impl FnOnce(&mut Delta)) {
        let mut delta = Delta {
            from_version: self.version,
            to_version: self.version + 1,
            ..Delta::default()
        };
        change(&mut delta);
        let mut next = Snapshot::clone(&self.policy.borrow());
        next.apply(&delta)
            .expect("the delta starts at the current version");
        self.version += 1;
        self.policy.send_replace(Arc::new(next));
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

pub mod v4 {
    use super::*;
    pub use rumqttc::{
        AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS,
        SubscribeReasonCode,
    };

    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Packet, String>>,
        pub session_present: bool,
    }

    pub fn options(addr: SocketAddr, tenant: &str, thing: &str, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_credentials(format!("{tenant}/{thing}"), key(tenant, thing));
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Connects; `Err` carries the CONNACK code or the error text.
    pub async fn connect_with(options: MqttOptions) -> Result<Client, String> {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(match e {
                            ConnectionError::ConnectionRefused(code) => format!("{code:?}"),
                            e => e.to_string(),
                        }));
                        break;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Ok(Packet::ConnAck(ack)))) => Ok(Client {
                client,
                events,
                session_present: ack.session_present,
            }),
            Ok(Some(Ok(other))) => Err(format!("expected CONNACK, got {other:?}")),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err("closed".into()),
            Err(_) => Err("timeout".into()),
        }
    }

    pub async fn connect(addr: SocketAddr, tenant: &str, thing: &str, id: &str) -> Client {
        connect_with(options(addr, tenant, thing, id))
            .await
            .unwrap_or_else(|e| panic!("{tenant}/{thing} connects: {e}"))
    }

    impl Client {
        /// Publishes a retained message at QoS 1 (queued; its PUBACK comes as an event).
        pub async fn retain(&self, topic: &str, payload: &str) {
            self.client
                .publish(topic, QoS::AtLeastOnce, true, payload.to_owned())
                .await
                .expect("queued");
        }

        /// The next packet (or error) within `wait`.
        pub async fn next(&mut self, wait: Duration) -> Option<Result<Packet, String>> {
            tokio::time::timeout(wait, self.events.recv())
                .await
                .ok()
                .flatten()
        }

        /// The next PUBLISH within `wait`, skipping acks.
        pub async fn next_publish(&mut self, wait: Duration) -> Option<rumqttc::Publish> {
            let until = tokio::time::Instant::now() + wait;
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                match self.next(left).await? {
                    Ok(Packet::Publish(p)) => return Some(p),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        }

        /// Subscribes and returns the SUBACK codes.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
            self.client
                .subscribe(filter, qos)
                .await
                .expect("request queued");
            loop {
                match self.next(Duration::from_secs(5)).await {
                    Some(Ok(Packet::SubAck(a))) => return a.return_codes,
                    Some(Ok(_)) => {}
                    other => panic!("no SUBACK for {filter}: {other:?}"),
                }
            }
        }

        /// Whether the connection ends within `wait` (an error from the event loop).
        pub async fn closed_within(&mut self, wait: Duration) -> Option<String> {
            let until = tokio::time::Instant::now() + wait;
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                match self.next(left).await {
                    Some(Err(e)) => return Some(e),
                    Some(Ok(_)) => {}
                    None => return None,
                }
            }
        }
    }
}

pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode, DisconnectReasonCode, Packet, PubAckReason, Publish, SubscribeReasonCode,
    };
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Packet, String>>,
        pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
        /// The event loop; aborting it drops the socket without DISCONNECT.
        pub task: tokio::task::JoinHandle<()>,
    }

    pub fn options(addr: SocketAddr, tenant: &str, thing: &str, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_credentials(format!("{tenant}/{thing}"), key(tenant, thing));
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn connect_with(options: MqttOptions) -> Result<Client, String> {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(match e {
                            ConnectionError::ConnectionRefused(code) => format!("{code:?}"),
                            ConnectionError::MqttState(StateError::ServerDisconnect {
                                reason_code,
                                ..
                            }) => format!("disconnect {reason_code:?}"),
                            e => e.to_string(),
                        }));
                        break;
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(Ok(Packet::ConnAck(connack)))) => Ok(Client {
                client,
                events,
                connack,
                task,
            }),
            Ok(Some(Ok(other))) => Err(format!("expected CONNACK, got {other:?}")),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err("closed".into()),
            Err(_) => Err("timeout".into()),
        }
    }

    pub async fn connect(addr: SocketAddr, tenant: &str, thing: &str, id: &str) -> Client {
        connect_with(options(addr, tenant, thing, id))
            .await
            .unwrap_or_else(|e| panic!("{tenant}/{thing} connects: {e}"))
    }

    impl Client {
        pub async fn next(&mut self, wait: Duration) -> Option<Result<Packet, String>> {
            tokio::time::timeout(wait, self.events.recv())
                .await
                .ok()
                .flatten()
        }

        pub async fn next_publish(&mut self, wait: Duration) -> Option<Publish> {
            let until = tokio::time::Instant::now() + wait;
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                match self.next(left).await? {
                    Ok(Packet::Publish(p)) => return Some(p),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
            self.client
                .subscribe(filter, qos)
                .await
                .expect("request queued");
            loop {
                match self.next(Duration::from_secs(5)).await {
                    Some(Ok(Packet::SubAck(a))) => return a.return_codes,
                    Some(Ok(_)) => {}
                    other => panic!("no SUBACK for {filter}: {other:?}"),
                }
            }
        }

        /// The error that ends the connection within `wait`, if it ends.
        pub async fn closed_within(&mut self, wait: Duration) -> Option<String> {
            let until = tokio::time::Instant::now() + wait;
            loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                match self.next(left).await {
                    Some(Err(e)) => return Some(e),
                    Some(Ok(_)) => {}
                    None => return None,
                }
            }
        }
    }
}

pub mod raw {
    //! Hand-built packets for what client libraries will not send.
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    /// An MQTT string (or binary data): its length, then its bytes.
    pub fn mqtt_str(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// A packet: its first byte, its variable-length remaining length, then `body`.
    pub fn with_header(first: u8, body: Vec<u8>) -> Vec<u8> {
        let mut out = vec![first];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(&body);
        out
    }

    /// A v3.1.1 CONNECT with credentials and an optional QoS 1 will (topic, payload).
    pub fn connect(
        client_id: &str,
        clean: bool,
        keep_alive: u16,
        user: &str,
        pass: &str,
        will: Option<(&str, &str)>,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        mqtt_str(&mut body, b"MQTT");
        body.push(4);
        let mut flags = 0b1100_0000u8;
        if clean {
            flags |= 0b10;
        }
        if will.is_some() {
            flags |= 0b0000_1100;
        }
        body.push(flags);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        mqtt_str(&mut body, client_id.as_bytes());
        if let Some((t, p)) = will {
            mqtt_str(&mut body, t.as_bytes());
            mqtt_str(&mut body, p.as_bytes());
        }
        mqtt_str(&mut body, user.as_bytes());
        mqtt_str(&mut body, pass.as_bytes());
        with_header(0x10, body)
    }

    /// A raw socket with a clean v3.1.1 session (no keep-alive) as `tenant/thing`, its
    /// CONNACK read and checked to be an acceptance.
    pub async fn connected(
        addr: std::net::SocketAddr,
        client_id: &str,
        tenant: &str,
        thing: &str,
    ) -> TcpStream {
        use tokio::io::AsyncWriteExt;
        let mut s = TcpStream::connect(addr).await.expect("connects");
        let user = format!("{tenant}/{thing}");
        s.write_all(&connect(
            client_id,
            true,
            0,
            &user,
            &super::key(tenant, thing),
            None,
        ))
        .await
        .expect("writes");
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await.expect("CONNACK");
        assert_eq!(ack, [0x20, 2, 0, 0], "{user} accepted");
        s
    }

    /// A v3.1.1 SUBSCRIBE of one filter.
    pub fn subscribe(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        mqtt_str(&mut body, filter.as_bytes());
        body.push(qos);
        with_header(0x82, body)
    }

    /// A v3.1.1 PUBLISH (a packet id only for QoS 1 and 2).
    pub fn publish(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        mqtt_str(&mut body, topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        with_header(0x30 | (qos << 1), body)
    }

    /// Reads until EOF (or `wait`); returns what was read and whether the server closed.
    pub async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (all, true),
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
                Err(_) => return (all, false),
            }
        }
    }

    /// Reads one whole packet: (first byte, body).
    pub async fn read_packet(s: &mut TcpStream, wait: Duration) -> Option<(u8, Vec<u8>)> {
        tokio::time::timeout(wait, async {
            let first = s.read_u8().await.ok()?;
            let mut len = 0usize;
            for i in 0..4 {
                let b = s.read_u8().await.ok()?;
                len |= usize::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0; len];
            s.read_exact(&mut body).await.ok()?;
            Some((first, body))
        })
        .await
        .ok()
        .flatten()
    }
}
