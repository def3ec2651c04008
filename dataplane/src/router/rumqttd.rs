//! The rumqttd 0.20 adapter behind [`super::Router`]: an in-process router thread and local links.
//!
//! Everything enters the router as QoS 0 without retain: the front-end ends inbound QoS 1/2,
//! keeps retained messages and wills itself, and runs outbound QoS itself, so the router never
//! needs acks (no in-order ack FIFO, no 100-message in-flight cap, none of the router-killing
//! paths in dataplane/ROUTER.md §5.2). The publish QoS and the rest of what the router would lose
//! travel in an envelope in front of the payload (`super::envelope`).
//!
//! The router is never given a client's filter, only a bounded set of routes per channel that
//! are recycled when no link holds them (`super::routes`, ROUTER.md §7): rumqttd frees nothing
//! it was given.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, PingReq, Publish, PublishProperties, QoS,
    RetainForwardRule, Subscribe, SubscribeProperties, Unsubscribe,
};
use rumqttd::{Notification, RouterConfig};

use super::offline::OfflineQueues;
use super::props::{message_props, publish_props};

use super::routes::{Buckets, Change, LinkRoutes, Routes, State};
use super::{
    Message, Publisher, Router, RouterError, RouterLink, SessionKey, SessionMode, envelope,
};

/// Router sizing.
#[derive(Clone, Debug)]
pub struct RumqttdConfig {
    /// The most sessions attached at once (the router allocates tables of this size up front).
    pub max_links: usize,
    /// Bytes per segment of each filter's in-memory log.
    pub segment_size: usize,
    /// Full segments kept per filter beside the active one.
    pub segment_count: usize,
    /// Messages read from one filter's log per pass (the router's only batching knob). A
    /// link is paused once 200 deliveries wait in its buffer (rumqttd's constant), so one that
    /// does not keep up holds at most this many plus 199. Every pause costs a round trip
    /// between the router thread and the session (`Unschedule`, then `Ready`): at 200 a
    /// saturated subscriber paid it after every pass (BENCHMARKS.md, "QoS 0 1:1 throughput").
    pub max_outgoing_packet_count: u64,
    /// Buckets per channel (`super::routes`): more means less traffic a link with single-topic
    /// filters receives and drops, and up to that many router filters per channel.
    pub buckets_per_channel: u16,
}

impl Default for RumqttdConfig {
    fn default() -> Self {
        Self {
            max_links: 10_000,
            segment_size: 256 * 1024,
            segment_count: 4,
            max_outgoing_packet_count: 1000,
            buckets_per_channel: super::routes::DEFAULT_BUCKETS,
        }
    }
}

type Connect =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), RouterError> + Send + Sync;

/// rumqttd's router, started in-process without its network servers.
pub struct RumqttdRouter {
    connect: Arc<Connect>,
    system: Arc<SystemLink>,
    alive: Arc<AtomicBool>,
    routes: Arc<Routes>,
    /// Messages queued for persistent sessions before a restart (`queue_offline`).
    pub(super) offline: Arc<OfflineQueues>,
}

/// The router's own link: publishes of sessions without a link go through it, and so do the
/// pings that tell when the router has caught up.
struct SystemLink {
    tx: Mutex<LinkTx>,
    pings: Arc<Pings>,
}

impl SystemLink {
    /// Resolves once the router has taken in everything pushed on any link before the call,
    /// or after `bound` ([`Router::caught_up`]).
    async fn caught_up(&self, bound: std::time::Duration) {
        let ticket = {
            let mut tx = self.tx.lock();
            if push(&mut tx, Packet::PingReq(PingReq)).is_err() {
                return;
            }
            self.pings.sent.fetch_add(1, Ordering::SeqCst) + 1
        };
        let _ = tokio::time::timeout(bound, self.pings.answered(ticket)).await;
    }
}

/// PINGREQs pushed on the system link and the PINGRESPs the router answered them with. The
/// router handles its links' events in the order they were pushed and takes a link's whole
/// buffer at each, so an answered ping means everything pushed before it was taken in: the
/// wake-up of a publisher waiting for the router to catch up ([`Router::caught_up`]).
#[derive(Default)]
struct Pings {
    /// Pushed so far; counted under the system link's lock, in the order pushed.
    sent: AtomicU64,
    answered: AtomicU64,
    notify: tokio::sync::Notify,
}

impl Pings {
    /// Waits until ping number `ticket` is answered. Cancel-safe.
    async fn answered(&self, ticket: u64) {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the count is read, so an answer in between is not missed.
            notified.as_mut().enable();
            if self.answered.load(Ordering::SeqCst) >= ticket {
                return;
            }
            notified.await;
        }
    }
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
        let pings = Arc::new(Pings::default());
        let answered = pings.clone();
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
                        Ok(Some(n)) => {
                            if let Some(Packet::PingResp(_)) = Option::<Packet>::from(n) {
                                answered.answered.fetch_add(1, Ordering::SeqCst);
                                answered.notify.notify_waiters();
                            }
                        }
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
                flag.store(false, Ordering::SeqCst);
                tracing::error!("the rumqttd router thread stopped");
            })
            .map_err(|_| RouterError::RouterDown)?;
        Ok(Self {
            connect,
            system: Arc::new(SystemLink {
                tx: Mutex::new(system_tx),
                pings,
            }),
            alive,
            routes: Arc::new(Routes::new(config.buckets_per_channel)),
            offline: Arc::default(),
        })
    }

    /// Gives a persistent session what was queued for it before a restart: its next
    /// persistent attach delivers them first, in order; a clean attach drops them.
    pub(crate) fn queue_offline(&self, key: &SessionKey, messages: VecDeque<Message>) {
        self.offline.put(&key.router_id(), messages);
    }
}

fn link_error(e: LinkError) -> RouterError {
    match e {
        LinkError::Send(_) | LinkError::TrySend(_) => RouterError::RouterDown,
        _ => RouterError::SessionClosed,
    }
}

/// The packet the router is given for a message: QoS 0 without retain on its route, the
/// envelope in front of the payload, and only the client's own v5 properties. `None` when no
/// link on this pod holds a route the message reaches: the router would drop it anyway.
fn to_packet(routes: &State, buckets: &Buckets, message: Message) -> Option<Packet> {
    let route = routes.route(&message.topic, buckets)?;
    let (topic, payload) = envelope::wrap(&message, route)?;
    let props = message.props.map(|p| publish_props(*p, Vec::new()));
    Some(Packet::Publish(Publish::new(topic, payload, false), props))
}

/// The message of a packet the router forwarded, and the subscription identifiers of the
/// route it came through; `None` for one without an envelope.
fn from_forward(
    publish: Publish,
    props: Option<PublishProperties>,
    last: &mut Option<Publisher>,
) -> Option<(Message, Vec<usize>)> {
    let envelope = envelope::unwrap(publish.payload, last)?;
    let (props, ids) = match props {
        Some(mut p) => {
            let ids = std::mem::take(&mut p.subscription_identifiers);
            (message_props(p), ids)
        }
        None => (None, Vec::new()),
    };
    let message = Message {
        stored: envelope.stored,
        topic: envelope.topic,
        payload: envelope.payload,
        qos: envelope.qos,
        props,
        retain: envelope.retain,
        origin: envelope.origin,
        publisher: last.clone(),
        protocol: envelope.protocol,
        created_ns: envelope.created_ns,
        id: envelope.id,
    };
    Some((message, ids))
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
        // Whatever the id held before is replaced: a clean attach drops it, a persistent one
        // resumes it below if the router still has it.
        let saved = self.routes.take_saved(&id);
        let offline = self.offline.take(&id);
        let task_id = id.clone();
        // `build` blocks on the router's channel and on its answer.
        let built = tokio::task::spawn_blocking(move || connect(&task_id, clean))
            .await
            .map_err(|_| RouterError::RouterDown);
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                if let Some(saved) = saved {
                    self.routes.save(id.clone(), saved);
                }
                self.offline.put(&id, offline);
                return Err(e);
            }
        };
        match built {
            Ok((tx, rx, connack)) => {
                let present = matches!(
                    Option::<Packet>::from(connack),
                    Some(Packet::ConnAck(ack, _)) if ack.session_present
                );
                let routes = match saved {
                    Some(saved) if present => saved,
                    Some(saved) => {
                        self.routes.release(saved);
                        LinkRoutes::default()
                    }
                    None => LinkRoutes::default(),
                };
                Ok((
                    RumqttdLink {
                        tx,
                        rx,
                        wake_pending: false,
                        last_publisher: None,
                        system: self.system.clone(),
                        held: Held {
                            table: self.routes.clone(),
                            routes: Some(routes),
                            id,
                            persistent: !clean,
                            // A clean attach starts empty: what was queued goes.
                            offline: if clean { VecDeque::new() } else { offline },
                            offline_table: self.offline.clone(),
                        },
                    },
                    present,
                ))
            }
            // The router drops a link it has no room for without an answer.
            Err(e) => {
                if let Some(saved) = saved {
                    self.routes.save(id.clone(), saved);
                }
                self.offline.put(&id, offline);
                match e {
                    RouterError::SessionClosed if self.is_alive() => Err(RouterError::Refused),
                    e => Err(e),
                }
            }
        }
    }

    fn publish(&self, message: Message) -> Result<(), RouterError> {
        // Made before the system link's lock, which every link-less publisher shares.
        let packet = to_packet(&self.routes.read(), self.routes.buckets(), message);
        match packet {
            Some(p) => push(&mut self.system.tx.lock(), p).map(drop),
            None => Ok(()),
        }
    }

    fn publish_batch(&self, messages: &mut Vec<Message>) -> Result<usize, RouterError> {
        let packets = to_packets(&self.routes, messages);
        push_batch(&mut self.system.tx.lock(), packets)
    }

    fn filters(&self) -> usize {
        self.routes.held()
    }

    fn backlog(&self) -> usize {
        self.system.tx.lock().buffer().len()
    }

    async fn caught_up(&self, bound: std::time::Duration) {
        self.system.caught_up(bound).await;
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// A link's routes, given back when the link goes (kept for a persistent one): also when it is
/// dropped without a detach.
struct Held {
    table: Arc<Routes>,
    routes: Option<LinkRoutes>,
    id: String,
    persistent: bool,
    /// What was queued for the session before a restart, delivered before the router's own.
    offline: VecDeque<Message>,
    offline_table: Arc<OfflineQueues>,
}

impl Held {
    fn routes(&mut self) -> &mut LinkRoutes {
        self.routes.get_or_insert_with(LinkRoutes::default)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.persistent {
            // Not delivered yet: kept for the next attach, as the router keeps its queue.
            self.offline_table
                .put(&self.id, std::mem::take(&mut self.offline));
        }
        if let Some(routes) = self.routes.take() {
            if self.persistent {
                self.table.save(std::mem::take(&mut self.id), routes);
            } else {
                self.table.release(routes);
            }
        }
    }
}

/// A session's local link.
pub struct RumqttdLink {
    tx: LinkTx,
    rx: LinkRx,
    /// A `Ready` still owed to the router after an `Unschedule` (kept across cancellation).
    wake_pending: bool,
    /// The publisher of the last delivery, whose name the next one from it shares.
    last_publisher: Option<Publisher>,
    held: Held,
    /// Tells when the router has taken in what this link handed over.
    system: Arc<SystemLink>,
}

impl RumqttdLink {
    /// Tells the router what changed, in order and in one hand-over. rumqttd drops a link from
    /// every shared group on any unsubscribe, so the link's shared routes are renewed after one.
    fn apply(&mut self, mut changes: Vec<Change>) -> Result<(), RouterError> {
        if changes.iter().any(|c| matches!(c, Change::Unsubscribe(_))) {
            changes.extend(self.held.routes().shared_routes());
        }
        let Some(last) = changes.pop() else {
            return Ok(());
        };
        let packets: Vec<Packet> = changes.into_iter().map(change_packet).collect();
        self.tx.buffer().extend(packets);
        push(&mut self.tx, change_packet(last)).map(drop)
    }
}

/// The packet of a route change; routes are subscribed at QoS 0 (ROUTER.md §6).
fn change_packet(change: Change) -> Packet {
    match change {
        Change::Subscribe(path, id) => Packet::Subscribe(
            Subscribe {
                pkid: 0,
                filters: vec![Filter {
                    path,
                    qos: QoS::AtMostOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::Never,
                }],
            },
            id.map(|id| SubscribeProperties {
                id: Some(id),
                user_properties: Vec::new(),
            }),
        ),
        Change::Unsubscribe(path) => Packet::Unsubscribe(
            Unsubscribe {
                pkid: 0,
                filters: vec![path],
            },
            None,
        ),
    }
}

impl RouterLink for RumqttdLink {
    fn subscribe(&mut self, filter: &str) -> Result<(), RouterError> {
        let table = self.held.table.clone();
        let changes = table
            .subscribe(self.held.routes(), filter)
            .map_err(|_| RouterError::Refused)?;
        self.apply(changes)
    }

    fn unsubscribe(&mut self, filter: &str) -> Result<(), RouterError> {
        let table = self.held.table.clone();
        let changes = table.unsubscribe(self.held.routes(), filter);
        self.apply(changes)
    }

    fn publish(&mut self, message: Message) -> Result<(), RouterError> {
        let table = &self.held.table;
        match to_packet(&table.read(), table.buckets(), message) {
            Some(p) => push(&mut self.tx, p).map(drop),
            None => Ok(()),
        }
    }

    fn publish_batch(&mut self, messages: &mut Vec<Message>) -> Result<usize, RouterError> {
        let packets = to_packets(&self.held.table, messages);
        push_batch(&mut self.tx, packets)
    }

    fn backlog(&self) -> usize {
        self.tx.buffer().len()
    }

    /// Woken by the router's answer to a ping pushed after what this link handed over,
    /// rather than polling the link's buffer.
    fn taken_in(&mut self) -> impl Future<Output = ()> + Send {
        let system = (self.backlog() > 0).then(|| self.system.clone());
        async move {
            if let Some(system) = system {
                system.caught_up(std::time::Duration::from_secs(1)).await;
            }
        }
    }

    async fn receive(&mut self) -> Result<Message, RouterError> {
        if let Some(message) = self.held.offline.pop_front() {
            return Ok(message);
        }
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
                    match from_forward(f.publish, f.properties, &mut self.last_publisher) {
                        // The route carries its whole channel or bucket: the link's own
                        // filters decide.
                        Some((message, ids)) => {
                            if self.held.routes().accepts(&message.topic, &ids) {
                                return Ok(message);
                            }
                        }
                        None => tracing::error!("a message without an envelope left the router"),
                    }
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

    fn abandon(mut self) {
        // Released, not saved: the id's saved routes are the successor's now.
        self.held.persistent = false;
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

/// The packets of a batch of messages, routed under one read of the table; the messages
/// no link on this pod would receive are left out. Sized up front: a packet is large, and
/// growing the vector would copy every one of them again (`filter_map` gives `collect` no
/// exact size).
fn to_packets(routes: &Routes, messages: &mut Vec<Message>) -> Vec<Packet> {
    let mut packets = Vec::with_capacity(messages.len());
    let table = routes.read();
    packets.extend(
        messages
            .drain(..)
            .filter_map(|m| to_packet(&table, routes.buckets(), m)),
    );
    packets
}

/// Queues several packets on a link under one lock and notifies the router once, as rumqttd's
/// own network links do for what one socket read brought in: the router then takes them all in
/// one pass instead of waking once per message. The packets are made before (`to_packets`):
/// the router takes the link's lock to swap its buffer out, and the system link's lock is
/// shared by every session that publishes without a link of its own.
/// Returns the link's backlog.
fn push_batch(tx: &mut LinkTx, mut packets: Vec<Packet>) -> Result<usize, RouterError> {
    let Some(last) = packets.pop() else {
        return Ok(tx.buffer().len());
    };
    tx.buffer().extend(packets);
    push(tx, last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{MessageProps, Protocol, PublisherKind};

    fn message(props: Option<MessageProps>) -> Message {
        Message {
            stored: false,
            id: crate::router::MessageId::floor(1_700_000_000_000_000_000),
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
    fn the_envelope_survives_the_router_and_client_properties_pass_untouched() {
        // Properties that looked like the envelope's before it moved out of them.
        let props = MessageProps {
            user_properties: vec![
                ("$fleetward-origin".into(), "1".into()),
                ("$fleetward-qos".into(), "0".into()),
                ("k".into(), "v".into()),
            ],
            content_type: Some("text/plain".into()),
            ..MessageProps::default()
        };
        let routes = Routes::new(4);
        let mut link = LinkRoutes::default();
        routes.subscribe(&mut link, "m/t/c/ch/#").expect("routable");
        let table = routes.read();
        let Some(Packet::Publish(publish, forwarded)) =
            to_packet(&table, routes.buckets(), message(Some(props.clone())))
        else {
            panic!("a publish");
        };
        assert!(!publish.retain, "the router is never asked to retain");
        assert!(publish.topic.starts_with(b"0/"), "on its route");
        let (back, ids) = from_forward(publish, forwarded, &mut None).expect("an envelope");
        assert_eq!(back, message(Some(props)));
        assert!(ids.is_empty());
        // Nothing but the envelope to carry: no properties on the router's side at all.
        assert!(matches!(
            to_packet(&table, routes.buckets(), message(None)),
            Some(Packet::Publish(_, None))
        ));
        // No one holds a route in that channel: the router is not given the message.
        let elsewhere = Message {
            topic: bytes::Bytes::from_static(b"m/t/c/other/x"),
            ..message(None)
        };
        assert!(to_packet(&table, routes.buckets(), elsewhere).is_none());
    }

    #[test]
    fn a_forward_without_an_envelope_is_not_a_message() {
        let publish = Publish::new("m/t/c/ch", "not enveloped", false);
        assert!(from_forward(publish, None, &mut None).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publisher_waiting_for_the_router_is_woken_by_its_answer() {
        let router = RumqttdRouter::start(&RumqttdConfig::default()).expect("the router starts");
        {
            // A backlog on the system link, as a burst of link-less publishers leaves it.
            let mut system = router.system.tx.lock();
            let packets = (0..5000)
                .map(|_| Packet::Publish(Publish::new("nowhere/x", "p", false), None))
                .collect();
            push_batch(&mut system, packets).expect("handed over");
        }
        for n in 1..=3 {
            // A bound no healthy router comes near: returning before it means woken.
            router.caught_up(std::time::Duration::from_secs(60)).await;
            assert_eq!(router.backlog(), 0, "all taken in before the answer");
            assert_eq!(router.system.pings.answered.load(Ordering::SeqCst), n);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_is_taken_in_once_the_router_answers() {
        let router = RumqttdRouter::start(&RumqttdConfig::default()).expect("the router starts");
        let key = SessionKey {
            tenant: "t".into(),
            kind: PublisherKind::Thing,
            subject: "x".into(),
            client_id: "c".into(),
        };
        let (mut link, _) = router
            .attach(&key, SessionMode::Clean)
            .await
            .expect("attached");
        let answered = || router.system.pings.answered.load(Ordering::SeqCst);
        // Nothing handed over: taken in already, without asking the router.
        link.taken_in().await;
        assert_eq!(answered(), 0);
        {
            // The router kept busy with a burst on the system link first, so the
            // subscriptions below are still waiting when the link asks.
            let mut system = router.system.tx.lock();
            let packets = (0..50_000)
                .map(|_| Packet::Publish(Publish::new("nowhere/x", "p", false), None))
                .collect();
            push_batch(&mut system, packets).expect("handed over");
        }
        for n in 0..50 {
            link.subscribe(&format!("m/t/c/ch{n}/#"))
                .expect("handed over");
        }
        let waiting = link.backlog() > 0;
        link.taken_in().await;
        assert_eq!(link.backlog(), 0, "the subscriptions were taken in");
        if waiting {
            assert_eq!(answered(), 1, "woken by the router's answer");
        }
    }
}
