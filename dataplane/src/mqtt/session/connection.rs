//! The session of one connected client: its state, and the small types its concerns share.
//! What it does is cut by concern into the sibling files (`serve`, `inbound`, `deliver`,
//! `subscriptions`, `ending`, `persist`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use fleetward_policy::{Snapshot, TopicLimits};
use foldhash::{HashMap, HashSet};
use tokio::io::{AsyncRead, AsyncWrite};

use super::accepted::{Accepted, Connected};
use crate::ingress::{Interest, PublishMemo};
use crate::mqtt::broker::Broker;
use crate::mqtt::codec::Codec;
use crate::mqtt::saved::{OutMsg, Outbound};
use crate::mqtt::subs::Subs;
use crate::router::{Message, Router};

/// How a session ends, which decides the will and the last packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The client sent DISCONNECT: no will.
    Clean,
    /// The client sent DISCONNECT 0x04: publish the will.
    CleanWithWill,
    /// EOF, error, keep-alive, takeover: publish the will.
    Unclean,
    /// Refused by policy or a limit: the will would be refused too.
    Closed,
}

pub(crate) struct Session<R: Router, S> {
    pub(super) shared: Arc<Broker<R>>,
    pub(super) stream: S,
    pub(super) codec: Codec,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    pub(super) acc: Accepted,
    /// Boxed: most sessions never have one (publish-only clients route through the router's
    /// shared link), and it is large.
    pub(super) link: Option<Box<R::Link>>,
    pub(super) subs: Subs,
    pub(super) inflight: HashMap<u16, (Outbound, OutMsg)>,
    pub(super) next_pkid: u16,
    pub(super) pending: VecDeque<Message>,
    pub(super) qos2_in: HashSet<u16>,
    pub(super) aliases: HashMap<u16, Bytes>,
    /// Topic aliases given to the client, by client-side topic.
    pub(super) out_aliases: HashMap<Bytes, u16>,
    pub(super) policy: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    /// Wakes the session when a policy change concerns it.
    pub(super) interest: Interest,
    pub(super) last_rx: Instant,
    /// Publishes accepted from what the socket read brought in, handed to the router together
    /// when the read is processed (or before any other packet is handled).
    pub(super) outbox: Vec<Message>,
    /// Where in `wbuf` the acks of the outbox's publishes begin: taken back if the router
    /// refuses the batch, so nothing is acknowledged that was not routed.
    pub(super) outbox_mark: usize,
    /// Deliveries written since the metrics were last told.
    pub(super) delivered: u64,
    /// Messages waiting for the router on this session's way in, after the last hand-over.
    pub(super) router_backlog: usize,
    /// What publishing needs between packets; boxed, and made at the first publish, so that a
    /// session that only subscribes or idles does not carry it.
    pub(super) publishing: Option<Box<Publishing>>,
    /// A resumed persistent session's bound on what was queued while its client was away;
    /// boxed, as only resumed sessions have one.
    pub(super) offline: Option<Box<OfflineBound>>,
    /// v5: whether the last channel delivered on carries delivery metadata; boxed, made at the
    /// first v5 delivery.
    pub(super) metadata_memo: Option<Box<MetadataMemo>>,
    /// A persistent session's durable half, where sessions live in JetStream.
    pub(super) durable: Option<Box<crate::mqtt::durable::DurableLink>>,
    /// QoS 1/2 publishes of the read being handled wait to be stored before their acks go.
    pub(super) stores_pending: bool,
}

/// How many more messages queued before a resume a resumed session is sent.
pub(crate) struct OfflineBound {
    /// When the session resumed (`Message::created_ns` before it: queued while away).
    pub(super) since_ns: u64,
    pub(super) left: usize,
}

/// A publishing session's state across its publishes.
#[derive(Default)]
pub(crate) struct Publishing {
    /// The last topic published on and what the policy said of it.
    pub(super) memo: PublishMemo,
    /// The policy the publishes of the socket read being handled are decided on; `None` between
    /// reads, so an idle session keeps no old snapshot alive.
    pub(super) policy: Option<Arc<Snapshot>>,
    /// The created time of the publishes of the socket read being handled (one clock reading
    /// per read); 0 until its first publish.
    pub(super) read_ns: u64,
    /// Answers of reads whose QoS 1/2 messages JetStream has not stored yet (BUS.md).
    pub(super) held: Option<Box<super::held::Held>>,
}

/// A publisher waits when this many messages wait for the router on its way in, until half
/// of them are taken in.
pub(super) const ROUTER_BACKLOG_HIGH: usize = 2048;

/// The most deliveries the router has ready that go into one socket write.
pub(super) const DELIVERY_BATCH: usize = 256;
/// A socket write is not grown past this by taking more deliveries.
pub(super) const DELIVERY_BATCH_BYTES: usize = 64 * 1024;

pub(super) enum Flow {
    Continue,
    End(End),
}

/// What handling a packet leaves to do. Handling is synchronous; the two cases that wait
/// (subscribing, which may attach a router link, and a v3 publish throttled by its tenant's
/// rate) are boxed, so that their state does not size every session.
pub(super) enum Step<'a> {
    Done(Flow),
    Wait(Pin<Box<dyn Future<Output = Flow> + Send + 'a>>),
}

pub(super) fn limits() -> TopicLimits {
    TopicLimits::default()
}

/// The last channel a v5 delivery went out on, whether it carries delivery metadata, and the
/// policy version that said so.
pub(crate) struct MetadataMemo {
    pub(super) version: u64,
    pub(super) channel: Box<str>,
    pub(super) on: bool,
}

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
    /// The session of an accepted CONNECT, not yet running.
    pub(crate) fn new(
        shared: Arc<Broker<R>>,
        stream: S,
        codec: Codec,
        rbuf: BytesMut,
        connected: Connected<R::Link>,
    ) -> Self {
        // Registered before anything is checked: a change from here on that concerns the
        // session wakes it. Not marked seen: a snapshot applied between CONNECT and here is
        // re-checked at once.
        let interest = shared.rechecks.register(&connected.acc.subject);
        let policy = shared.policy.clone();
        if policy.has_changed().unwrap_or(false) {
            interest.recheck_now();
        }
        let mut s = Session {
            shared,
            stream,
            codec,
            rbuf,
            wbuf: BytesMut::new(),
            acc: connected.acc,
            link: connected.link.map(Box::new),
            subs: Subs::default(),
            inflight: HashMap::default(),
            next_pkid: 0,
            pending: VecDeque::new(),
            qos2_in: HashSet::default(),
            aliases: HashMap::default(),
            out_aliases: HashMap::default(),
            policy,
            interest,
            last_rx: Instant::now(),
            outbox: Vec::new(),
            outbox_mark: 0,
            delivered: 0,
            router_backlog: 0,
            publishing: None,
            offline: None,
            metadata_memo: None,
            durable: connected.durable,
            stores_pending: false,
        };
        if s.durable.as_ref().is_some_and(|d| d.resumed) {
            s.offline = Some(Box::new(OfflineBound {
                since_ns: crate::router::now_ns(),
                left: s.shared.config.max_offline_messages,
            }));
        }
        if let Some(saved) = connected.saved {
            s.offline = Some(Box::new(OfflineBound {
                since_ns: crate::router::now_ns(),
                left: s.shared.config.max_offline_messages,
            }));
            s.subs = saved.subs;
            s.inflight = saved.inflight;
            s.qos2_in = saved.qos2_in;
            s.next_pkid = saved.next_pkid;
        }
        s
    }
}
