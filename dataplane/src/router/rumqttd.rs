//! The rumqttd 0.20 adapter behind [`super::Router`]: an in-process router thread and local links.
//!
//! Everything enters the router as QoS 0 without retain: the front-end ends inbound QoS 1/2,
//! keeps retained messages and wills itself, and runs outbound QoS itself, so the router never
//! needs acks (no in-order ack FIFO, no 100-message in-flight cap, none of the router-killing
//! paths in dataplane/ROUTER.md §5.2). The publish QoS travels in an internal user property.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Publish, PublishProperties};
use rumqttd::{Notification, RouterConfig};

use super::{
    Message, MessageProps, Protocol, Publisher, PublisherKind, Router, RouterError, RouterLink,
    SessionKey, SessionMode,
};

/// User properties that carry what the router would lose (publish QoS, retain flag, origin).
/// Every property with this prefix is stripped from what clients send and from deliveries.
const ENVELOPE_PREFIX: &str = "$fleetward-";
const QOS_PROPERTY: &str = "$fleetward-qos";
const RETAIN_PROPERTY: &str = "$fleetward-retain";
const ORIGIN_PROPERTY: &str = "$fleetward-origin";
/// Publisher, protocol and created time in one property: `<kind><protocol><created_ns>:<name>`
/// (kind `t`/`u`/`-`, protocol `m`/`h`/`w`/`-`), so a message costs one more property, not three.
const META_PROPERTY: &str = "$fleetward-meta";

/// Router sizing.
#[derive(Clone, Debug)]
pub struct RumqttdConfig {
    /// The most sessions attached at once (the router allocates tables of this size up front).
    pub max_links: usize,
    /// Bytes per segment of each filter's in-memory log.
    pub segment_size: usize,
    /// Full segments kept per filter beside the active one.
    pub segment_count: usize,
    /// Messages read from one filter's log per pass (the router's only batching knob).
    pub max_outgoing_packet_count: u64,
}

impl Default for RumqttdConfig {
    fn default() -> Self {
        Self {
            max_links: 10_000,
            segment_size: 256 * 1024,
            segment_count: 4,
            max_outgoing_packet_count: 200,
        }
    }
}

type Connect =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), RouterError> + Send + Sync;

/// rumqttd's router, started in-process without its network servers.
pub struct RumqttdRouter {
    connect: Arc<Connect>,
    system: Mutex<LinkTx>,
    alive: Arc<AtomicBool>,
}

impl RumqttdRouter {
    /// Starts the router thread and a system link for publishes of sessions without a link.
    pub fn start(config: &RumqttdConfig) -> Result<Self, RouterError> {
        let router_config = RouterConfig {
            // One extra for the system link.
            max_connections: config.max_links.saturating_add(1),
            max_outgoing_packet_count: config.max_outgoing_packet_count.max(1),
            // rumqttd panics in its thread below these.
            max_segment_size: config.segment_size.max(1024),
            max_segment_count: config.segment_count.max(1),
            ..RouterConfig::default()
        };
        let tx = rumqttd::Router::new(0, router_config).spawn();
        let connect: Arc<Connect> = Arc::new(move |id: &str, clean: bool| {
            LinkBuilder::new(id, tx.clone())
                .clean_session(clean)
                .build()
                .map_err(link_error)
        });
        let (system_tx, mut system_rx, _) =
            connect("fleetward-system", true).map_err(|_| RouterError::RouterDown)?;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        // The system link never subscribes; draining it keeps it scheduled and tells us when
        // the router thread is gone.
        std::thread::Builder::new()
            .name("router-watch".into())
            .spawn(move || {
                loop {
                    match system_rx.recv() {
                        Ok(Some(Notification::Unschedule)) => {
                            if system_rx.ready().is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                flag.store(false, Ordering::SeqCst);
                tracing::error!("the rumqttd router thread stopped");
            })
            .map_err(|_| RouterError::RouterDown)?;
        Ok(Self {
            connect,
            system: Mutex::new(system_tx),
            alive,
        })
    }
}

fn link_error(e: LinkError) -> RouterError {
    match e {
        LinkError::Send(_) | LinkError::TrySend(_) => RouterError::RouterDown,
        _ => RouterError::SessionClosed,
    }
}

fn encode_meta(publisher: Option<&Publisher>, protocol: Protocol, created_ns: u64) -> String {
    let kind = match publisher.map(|p| p.kind) {
        Some(PublisherKind::Thing) => 't',
        Some(PublisherKind::User) => 'u',
        None => '-',
    };
    let protocol = match protocol {
        Protocol::Mqtt => 'm',
        Protocol::Http => 'h',
        Protocol::WebSocket => 'w',
        Protocol::Unspecified => '-',
    };
    let name = publisher.map_or("", |p| &p.name);
    format!("{kind}{protocol}{created_ns}:{name}")
}

fn decode_meta(v: &str, message: &mut Message) {
    let mut chars = v.chars();
    let (Some(kind), Some(protocol)) = (chars.next(), chars.next()) else {
        return;
    };
    let Some((ns, name)) = chars.as_str().split_once(':') else {
        return;
    };
    message.created_ns = ns.parse().unwrap_or(0);
    message.protocol = match protocol {
        'm' => Protocol::Mqtt,
        'h' => Protocol::Http,
        'w' => Protocol::WebSocket,
        _ => Protocol::Unspecified,
    };
    let kind = match kind {
        't' => Some(PublisherKind::Thing),
        'u' => Some(PublisherKind::User),
        _ => None,
    };
    message.publisher = kind.map(|kind| Publisher {
        kind,
        name: name.into(),
    });
}

fn to_packet(message: Message) -> Packet {
    let meta = message.publisher.is_some() || message.protocol != Protocol::Unspecified;
    let envelope = message.qos > 0 || message.retain || message.origin.is_some() || meta;
    let props = if envelope || message.props.is_some() {
        let p = message.props.map(|b| *b).unwrap_or_default();
        let mut user_properties = p.user_properties;
        // Never trust a client's copy of the internal properties.
        user_properties.retain(|(k, _)| !k.starts_with(ENVELOPE_PREFIX));
        if message.qos > 0 {
            user_properties.push((QOS_PROPERTY.to_owned(), message.qos.to_string()));
        }
        if message.retain {
            user_properties.push((RETAIN_PROPERTY.to_owned(), "1".to_owned()));
        }
        if let Some(origin) = message.origin {
            user_properties.push((ORIGIN_PROPERTY.to_owned(), origin.to_string()));
        }
        if meta {
            user_properties.push((
                META_PROPERTY.to_owned(),
                encode_meta(
                    message.publisher.as_ref(),
                    message.protocol,
                    message.created_ns,
                ),
            ));
        }
        Some(PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: None,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties,
            subscription_identifiers: Vec::new(),
            content_type: p.content_type,
        })
    } else {
        None
    };
    Packet::Publish(Publish::new(message.topic, message.payload, false), props)
}

fn from_forward(publish: Publish, props: Option<PublishProperties>) -> Message {
    let (mut qos, mut retain, mut origin, mut meta) = (0, false, None, None);
    let props = props.and_then(|p| {
        let mut user_properties = p.user_properties;
        user_properties.retain_mut(|(k, v)| {
            match k.as_str() {
                QOS_PROPERTY => qos = v.parse().unwrap_or(0).min(2),
                RETAIN_PROPERTY => retain = true,
                ORIGIN_PROPERTY => origin = v.parse().ok(),
                META_PROPERTY => meta = Some(std::mem::take(v)),
                k if k.starts_with(ENVELOPE_PREFIX) => {}
                _ => return true,
            }
            false
        });
        let props = MessageProps {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties,
        };
        (!props.is_empty()).then(|| Box::new(props))
    });
    let mut message = Message {
        topic: publish.topic,
        payload: publish.payload,
        qos,
        props,
        retain,
        origin,
        publisher: None,
        protocol: Protocol::Unspecified,
        created_ns: 0,
    };
    if let Some(meta) = meta {
        decode_meta(&meta, &mut message);
    }
    message
}

impl Router for RumqttdRouter {
    type Link = RumqttdLink;

    async fn attach(
        &self,
        key: &SessionKey,
        mode: SessionMode,
    ) -> Result<(RumqttdLink, bool), RouterError> {
        if !self.is_alive() {
            return Err(RouterError::RouterDown);
        }
        let id = key.router_id();
        let connect = self.connect.clone();
        let clean = mode == SessionMode::Clean;
        // `build` blocks on the router's channel and on its answer.
        let built = tokio::task::spawn_blocking(move || connect(&id, clean))
            .await
            .map_err(|_| RouterError::RouterDown)?;
        match built {
            Ok((tx, rx, connack)) => {
                let present = matches!(
                    Option::<Packet>::from(connack),
                    Some(Packet::ConnAck(ack, _)) if ack.session_present
                );
                Ok((
                    RumqttdLink {
                        tx,
                        rx,
                        wake_pending: false,
                    },
                    present,
                ))
            }
            // The router drops a link it has no room for without an answer.
            Err(RouterError::SessionClosed) if self.is_alive() => Err(RouterError::Refused),
            Err(e) => Err(e),
        }
    }

    fn publish(&self, message: Message) -> Result<(), RouterError> {
        push(&mut self.system.lock(), to_packet(message)).map(drop)
    }

    fn publish_batch(&self, messages: &mut Vec<Message>) -> Result<usize, RouterError> {
        push_batch(&mut self.system.lock(), messages)
    }

    fn backlog(&self) -> usize {
        self.system.lock().buffer().len()
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// A session's local link.
pub struct RumqttdLink {
    tx: LinkTx,
    rx: LinkRx,
    /// A `Ready` still owed to the router after an `Unschedule` (kept across cancellation).
    wake_pending: bool,
}

impl RouterLink for RumqttdLink {
    fn subscribe(&mut self, filter: &str) -> Result<(), RouterError> {
        self.tx.subscribe(filter).map(|_| ()).map_err(link_error)
    }

    fn unsubscribe(&mut self, filter: &str) -> Result<(), RouterError> {
        self.tx.unsubscribe(filter).map(|_| ()).map_err(link_error)
    }

    fn publish(&mut self, message: Message) -> Result<(), RouterError> {
        push(&mut self.tx, to_packet(message)).map(drop)
    }

    fn publish_batch(&mut self, messages: &mut Vec<Message>) -> Result<usize, RouterError> {
        push_batch(&mut self.tx, messages)
    }

    fn backlog(&self) -> usize {
        self.tx.buffer().len()
    }

    async fn receive(&mut self) -> Result<Message, RouterError> {
        loop {
            if self.wake_pending {
                // Boxed: the router's event makes this future large, which would size every
                // session that waits for a delivery; a wake is owed only after the router
                // paused the link at its buffer limit.
                Box::pin(self.rx.wake()).await.map_err(link_error)?;
                self.wake_pending = false;
            }
            match self.rx.next().await {
                Ok(Some(Notification::Forward(f))) => {
                    return Ok(from_forward(f.publish, f.properties));
                }
                // The router paused this link at its buffer limit; the batch is taken now.
                Ok(Some(Notification::Unschedule)) => self.wake_pending = true,
                Ok(Some(Notification::Disconnect(..))) => return Err(RouterError::SessionClosed),
                // Acks of subscribe/unsubscribe and spurious wake-ups.
                Ok(_) => {}
                Err(e) => return Err(link_error(e)),
            }
        }
    }

    fn detach(mut self) {
        let _ = push(
            &mut self.tx,
            Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ),
        );
    }
}

/// Queues a packet on a link and notifies the router (blocking only while the router's event
/// channel is full, which is the backpressure we want).
/// Returns the link's backlog.
fn push(tx: &mut LinkTx, packet: Packet) -> Result<usize, RouterError> {
    // `LinkTx::send` is async in name only; poll it to completion in place.
    let fut = tx.send(packet);
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r.map_err(link_error),
        std::task::Poll::Pending => Err(RouterError::RouterDown),
    }
}

/// Queues several packets on a link under one lock and notifies the router once, as rumqttd's
/// own network links do for what one socket read brought in: the router then takes them all in
/// one pass instead of waking once per message.
/// Returns the link's backlog.
fn push_batch(tx: &mut LinkTx, messages: &mut Vec<Message>) -> Result<usize, RouterError> {
    let Some(last) = messages.pop() else {
        return Ok(tx.buffer().len());
    };
    {
        let mut buffer = tx.buffer();
        buffer.extend(messages.drain(..).map(to_packet));
    }
    push(tx, to_packet(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(props: Option<MessageProps>) -> Message {
        Message {
            topic: bytes::Bytes::from_static(b"m/t/c/ch/x"),
            payload: bytes::Bytes::from_static(b"p"),
            qos: 2,
            props: props.map(Box::new),
            retain: true,
            origin: Some(7),
            publisher: Some(Publisher {
                kind: PublisherKind::User,
                name: "ann:x".into(),
            }),
            protocol: Protocol::WebSocket,
            created_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn the_envelope_survives_the_router_and_client_copies_do_not() {
        let forged = MessageProps {
            user_properties: vec![
                ("$fleetward-origin".into(), "1".into()),
                ("$fleetward-anything".into(), "x".into()),
                ("k".into(), "v".into()),
            ],
            ..MessageProps::default()
        };
        let Packet::Publish(publish, props) = to_packet(message(Some(forged))) else {
            panic!("a publish");
        };
        assert!(!publish.retain, "the router is never asked to retain");
        let back = from_forward(publish, props);
        assert_eq!((back.qos, back.retain, back.origin), (2, true, Some(7)));
        let original = message(None);
        assert_eq!(
            (&back.publisher, back.protocol, back.created_ns),
            (
                &original.publisher,
                Protocol::WebSocket,
                original.created_ns
            )
        );
        let p = back.props.expect("user property kept");
        assert_eq!(p.user_properties, vec![("k".to_owned(), "v".to_owned())]);
        // Nothing to carry: no properties at all on the QoS 0 path.
        let plain = Message {
            qos: 0,
            retain: false,
            origin: None,
            publisher: None,
            protocol: Protocol::Unspecified,
            ..message(None)
        };
        assert!(matches!(to_packet(plain), Packet::Publish(_, None)));
    }
}
