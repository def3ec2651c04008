//! The load generator: one task per client on a runtime of its own, each connecting with a
//! persistent session, subscribing or publishing QoS 1, and moving to the next pod when its
//! connection ends, as a device behind a load balancer would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PingReq, PubAckReason, SubscribeReasonCode};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::ledger::{ClientIdx, Ledger, MsgId, Report, parse_payload, payload};
use super::mqtt::{Conn, Ended, Login5, accepted};

/// Unanswered publishes a client keeps in flight at most (below the broker's receive maximum).
const WINDOW: usize = 64;
/// Pause between connection attempts.
const RETRY: Duration = Duration::from_millis(100);

/// What one client of the load does.
#[derive(Debug, Clone)]
pub struct Role {
    /// Its index in the ledger's names.
    pub idx: ClientIdx,
    /// How it signs in.
    pub login: Login5,
    /// The filter it subscribes to at QoS 1, if it receives.
    pub subscribe: Option<String>,
    /// What it publishes, if it sends.
    pub publish: Option<Publishing>,
    /// The pod it connects to first (an index into the pods).
    pub first_pod: usize,
}

/// A publisher's topics, taken in turn, each with the clients that must receive it.
#[derive(Debug, Clone)]
pub struct Publishing {
    /// (topic, recipients).
    pub topics: Vec<(String, Arc<[ClientIdx]>)>,
    /// Time between two publishes.
    pub every: Duration,
}

struct Shared {
    ledger: Mutex<Ledger>,
    pods: Vec<SocketAddr>,
    next_msg: AtomicU64,
    publishing: AtomicBool,
    subscribed: AtomicUsize,
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panicking client task must not hide the others' accounting.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running load.
pub struct Load {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts every client against `pods` and waits until every subscriber is subscribed;
    /// nothing is published before [`Load::publish`].
    pub fn start(pods: Vec<SocketAddr>, names: Vec<String>, roles: Vec<Role>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("fault-load")
            .build()
            .context("start the load's runtime")?;
        let subscribers: Vec<ClientIdx> = roles
            .iter()
            .filter(|r| r.subscribe.is_some())
            .map(|r| r.idx)
            .collect();
        let wanted = subscribers.len();
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger::new(names, subscribers, Instant::now())),
            pods,
            next_msg: AtomicU64::new(1),
            publishing: AtomicBool::new(false),
            subscribed: AtomicUsize::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = roles
            .into_iter()
            .map(|role| runtime.spawn(client(role, shared.clone(), stopped.clone())))
            .collect();
        let load = Self {
            runtime,
            shared,
            stop,
            tasks,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while load.shared.subscribed.load(Ordering::SeqCst) < wanted {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {wanted} subscribers got their SUBACK within 60 s; see the \
                     dataplanes' logs",
                    load.shared.subscribed.load(Ordering::SeqCst)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(load)
    }

    /// Starts or stops the publishers.
    pub fn publish(&self, on: bool) {
        self.shared.publishing.store(on, Ordering::SeqCst);
    }

    /// A fault named `name` begins now.
    pub fn fault(&self, name: &str) {
        self.shared.ledger().fault(name);
    }

    /// The latest fault is undone now.
    pub fn restored(&self) {
        self.shared.ledger().restored();
    }

    /// Deliveries so far.
    pub fn deliveries(&self) -> usize {
        self.shared.ledger().deliveries()
    }

    /// Waits until the deliveries grow by `more` (the load flows), within `timeout`.
    pub fn wait_flowing(&self, more: usize, timeout: Duration) -> Result<()> {
        let start = self.deliveries();
        let deadline = Instant::now() + timeout;
        while self.deliveries() < start + more {
            if Instant::now() > deadline {
                bail!(
                    "only {} deliveries in {timeout:?} (wanted {more}); see the dataplanes' logs",
                    self.deliveries() - start
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops publishing, waits until every accepted message reached its recipients (or nothing
    /// arrived for `quiet`, at most `timeout`), stops the clients and reports per phase.
    pub fn finish(self, quiet: Duration, timeout: Duration) -> Vec<Report> {
        self.publish(false);
        self.shared.ledger().finish();
        let deadline = Instant::now() + timeout;
        let (mut seen, mut since) = (self.deliveries(), Instant::now());
        // Late PUBACKs of the last publishes come first.
        std::thread::sleep(Duration::from_millis(500));
        while Instant::now() < deadline && self.shared.ledger().owed() > 0 {
            let now = self.deliveries();
            if now != seen {
                (seen, since) = (now, Instant::now());
            } else if since.elapsed() > quiet {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
        }
        self.runtime.shutdown_timeout(Duration::from_secs(2));
        self.shared.ledger().reports()
    }
}

/// Per-connection state a client keeps across its connections (its MQTT session's side).
#[derive(Default)]
struct ClientState {
    /// Publishes not yet answered: packet id → (message, topic index).
    inflight: BTreeMap<u16, (MsgId, usize)>,
    next_pkid: u16,
    next_topic: usize,
    subscribed: bool,
    /// Its first SUBACK was counted for [`Load::start`].
    counted: bool,
    connected_once: bool,
}

impl ClientState {
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

async fn client(role: Role, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut pod = role.first_pod % shared.pods.len();
    let mut state = ClientState::default();
    while !*stop.borrow() {
        let addr = shared.pods[pod];
        let (mut conn, ack) = match Conn::connect(addr, &role.login).await {
            Ok((conn, ack)) if accepted(&ack) => (conn, ack),
            _ => {
                // Refused or unreachable: the next pod, as a load balancer would pick.
                pod = (pod + 1) % shared.pods.len();
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        shared
            .ledger()
            .connected(role.idx, ack.session_present, !state.connected_once);
        state.connected_once = true;
        let ended = match session(
            &role,
            &shared,
            &mut conn,
            &mut state,
            &mut stop,
            ack.session_present,
        )
        .await
        {
            Ok(Some(how)) => how,
            Ok(None) => return,
            Err(_) => Ended::Eof,
        };
        shared.ledger().ended(role.idx, ended);
        pod = (pod + 1) % shared.pods.len();
    }
}

/// One connection of a client, until it ends (`Some`) or the load stops (`None`).
async fn session(
    role: &Role,
    shared: &Shared,
    conn: &mut Conn,
    state: &mut ClientState,
    stop: &mut watch::Receiver<bool>,
    session_present: bool,
) -> Result<Option<Ended>> {
    if session_present {
        // MQTT: an unanswered publish is sent again, flagged DUP, when the session resumes.
        for (pkid, (msg, topic)) in state.inflight.clone() {
            let topics = &role
                .publish
                .as_ref()
                .context("inflight without publishing")?
                .topics;
            conn.publish(pkid, &topics[topic].0, &payload(msg), true)
                .await?;
        }
    } else {
        // A new session: what was in flight is forgotten by both sides (never accepted).
        state.inflight.clear();
        state.subscribed = false;
    }
    if let (Some(filter), false) = (&role.subscribe, state.subscribed) {
        let pkid = state.pkid();
        conn.subscribe(pkid, filter).await?;
    }
    let every = role
        .publish
        .as_ref()
        .map_or(Duration::from_secs(3600), |p| p.every);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(None),
            packet = conn.read() => match packet {
                Ok(Some(packet)) => {
                    if let Some(how) = incoming(role, shared, conn, state, packet).await? {
                        return Ok(Some(how));
                    }
                }
                Ok(None) | Err(_) => return Ok(Some(Ended::Eof)),
            },
            _ = tick.tick(), if role.publish.is_some() => {
                if let Some(p) = &role.publish {
                    publish_next(p, shared, conn, state).await?;
                }
            }
            _ = ping.tick() => conn.send(&Packet::PingReq(PingReq)).await?,
        }
    }
}

async fn publish_next(
    p: &Publishing,
    shared: &Shared,
    conn: &mut Conn,
    state: &mut ClientState,
) -> Result<()> {
    if !shared.publishing.load(Ordering::SeqCst) || state.inflight.len() >= WINDOW {
        return Ok(());
    }
    let msg = shared.next_msg.fetch_add(1, Ordering::SeqCst);
    let topic = state.next_topic % p.topics.len();
    state.next_topic = state.next_topic.wrapping_add(1);
    let pkid = state.pkid();
    state.inflight.insert(pkid, (msg, topic));
    shared.ledger().sent(msg);
    conn.publish(pkid, &p.topics[topic].0, &payload(msg), false)
        .await
}

/// Handles one packet from the broker; `Some` when it ends the connection.
async fn incoming(
    role: &Role,
    shared: &Shared,
    conn: &mut Conn,
    state: &mut ClientState,
    packet: Packet,
) -> Result<Option<Ended>> {
    match packet {
        Packet::Publish(p) => {
            if let Some(msg) = parse_payload(&p.payload) {
                shared.ledger().delivered(role.idx, msg, p.dup);
            }
            if p.qos == QoS::AtLeastOnce {
                conn.puback(p.pkid).await?;
            }
        }
        Packet::PubAck(ack) => {
            if let Some((msg, topic)) = state.inflight.remove(&ack.pkid) {
                let to = role.publish.as_ref().map(|p| p.topics[topic].1.clone());
                match (ack.reason, to) {
                    (PubAckReason::Success | PubAckReason::NoMatchingSubscribers, Some(to)) => {
                        shared.ledger().accepted(msg, to);
                    }
                    (reason, _) => shared.ledger().refused(msg, puback_code(reason)),
                }
            }
        }
        Packet::SubAck(ack) => {
            let granted = ack
                .return_codes
                .iter()
                .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
            if granted {
                state.subscribed = true;
                if !std::mem::replace(&mut state.counted, true) {
                    shared.subscribed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        Packet::Disconnect(d) => return Ok(Some(Ended::Disconnect(d.reason_code as u8))),
        _ => {}
    }
    Ok(None)
}

/// The wire value of a PUBACK reason (rumqttc's enum carries none).
pub(crate) fn puback_code(reason: PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}
