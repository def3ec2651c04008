//! The accounting of a fault test: every message the load sent, which were accepted (PUBACKed)
//! and for whom, every delivery, every connection and disconnection, and the faults, sliced into
//! one report per phase (before the first fault, then one per fault).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::mqtt::Ended;

/// A message of the load: a number unique in the run, the whole payload is `fw:<id>`.
pub type MsgId = u64;
/// A client of the load, by its index in [`Ledger::names`].
pub type ClientIdx = usize;

/// The payload of message `id`.
pub fn payload(id: MsgId) -> String {
    format!("fw:{id}")
}

/// The message id of a payload of the load, if it is one.
pub fn parse_payload(payload: &[u8]) -> Option<MsgId> {
    std::str::from_utf8(payload)
        .ok()?
        .strip_prefix("fw:")?
        .parse()
        .ok()
}

#[derive(Debug, Clone)]
struct Delivery {
    client: ClientIdx,
    msg: MsgId,
    dup: bool,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
enum SessionEvent {
    Connected { session_present: bool, first: bool },
    Ended(Ended),
}

/// A fault: when it began, and when the test undid it (a process started again), if it did.
#[derive(Debug, Clone)]
struct Mark {
    name: String,
    at: Instant,
    restored: Option<Instant>,
}

/// What happened, as the clients saw it.
#[derive(Debug)]
pub struct Ledger {
    names: Vec<String>,
    subscribers: Vec<ClientIdx>,
    sent: HashMap<MsgId, Instant>,
    accepted: HashMap<MsgId, (Instant, Arc<[ClientIdx]>)>,
    refused: HashMap<MsgId, (Instant, u8)>,
    deliveries: Vec<Delivery>,
    sessions: Vec<(ClientIdx, Instant, SessionEvent)>,
    marks: Vec<Mark>,
    finished: Option<Instant>,
}

impl Ledger {
    /// A ledger for clients `names`, of which `subscribers` receive messages.
    pub fn new(names: Vec<String>, subscribers: Vec<ClientIdx>, started: Instant) -> Self {
        Self {
            names,
            subscribers,
            sent: HashMap::new(),
            accepted: HashMap::new(),
            refused: HashMap::new(),
            deliveries: Vec::new(),
            sessions: Vec::new(),
            marks: vec![Mark {
                name: "before".to_owned(),
                at: started,
                restored: None,
            }],
            finished: None,
        }
    }

    /// A publisher sent `msg` for the first time.
    pub fn sent(&mut self, msg: MsgId) {
        self.sent.insert(msg, Instant::now());
    }

    /// The broker PUBACKed `msg` with success: it owes it to `recipients`.
    pub fn accepted(&mut self, msg: MsgId, recipients: Arc<[ClientIdx]>) {
        self.accepted.insert(msg, (Instant::now(), recipients));
    }

    /// The broker PUBACKed `msg` with an error `reason`.
    pub fn refused(&mut self, msg: MsgId, reason: u8) {
        self.refused.insert(msg, (Instant::now(), reason));
    }

    /// `client` received `msg`.
    pub fn delivered(&mut self, client: ClientIdx, msg: MsgId, dup: bool) {
        self.deliveries.push(Delivery {
            client,
            msg,
            dup,
            at: Instant::now(),
        });
    }

    /// `client` got a CONNACK.
    pub fn connected(&mut self, client: ClientIdx, session_present: bool, first: bool) {
        let event = SessionEvent::Connected {
            session_present,
            first,
        };
        self.sessions.push((client, Instant::now(), event));
    }

    /// `client`'s connection ended.
    pub fn ended(&mut self, client: ClientIdx, how: Ended) {
        self.sessions
            .push((client, Instant::now(), SessionEvent::Ended(how)));
    }

    /// A fault begins now.
    pub fn fault(&mut self, name: &str) {
        self.marks.push(Mark {
            name: name.to_owned(),
            at: Instant::now(),
            restored: None,
        });
    }

    /// The latest fault is undone now (what was stopped runs again).
    pub fn restored(&mut self) {
        if let Some(mark) = self.marks.last_mut() {
            mark.restored = Some(Instant::now());
        }
    }

    /// The load stopped publishing.
    pub fn finish(&mut self) {
        self.finished.get_or_insert_with(Instant::now);
    }

    /// How many (message, recipient) pairs are still owed.
    pub fn owed(&self) -> usize {
        let got = self.delivered_pairs();
        self.accepted
            .iter()
            .flat_map(|(msg, (_, to))| to.iter().map(move |c| (*c, *msg)))
            .filter(|pair| !got.contains_key(pair))
            .count()
    }

    /// Deliveries so far.
    pub fn deliveries(&self) -> usize {
        self.deliveries.len()
    }

    /// (copies, copies with DUP) of every (client, message) delivered.
    fn delivered_pairs(&self) -> HashMap<(ClientIdx, MsgId), (u32, u32)> {
        let mut got: HashMap<(ClientIdx, MsgId), (u32, u32)> = HashMap::new();
        for d in &self.deliveries {
            let e = got.entry((d.client, d.msg)).or_default();
            e.0 += 1;
            e.1 += u32::from(d.dup);
        }
        got
    }

    /// One report per phase: before the first fault, then one per fault.
    pub fn reports(&self) -> Vec<Report> {
        let end = self.finished.unwrap_or_else(Instant::now);
        let got = self.delivered_pairs();
        (0..self.marks.len())
            .map(|i| {
                let from = self.marks[i].at;
                let to = self.marks.get(i + 1).map_or(end, |m| m.at);
                self.report(&self.marks[i], from, to, &got)
            })
            .collect()
    }

    fn report(
        &self,
        mark: &Mark,
        from: Instant,
        to: Instant,
        got: &HashMap<(ClientIdx, MsgId), (u32, u32)>,
    ) -> Report {
        let inside = |at: &Instant| *at >= from && *at < to;
        let mut r = Report {
            phase: mark.name.clone(),
            ..Report::default()
        };
        for (msg, (at, to)) in &self.accepted {
            if !inside(at) {
                continue;
            }
            r.accepted += 1;
            for client in to.iter() {
                match got.get(&(*client, *msg)) {
                    None => {
                        r.lost += 1;
                        let name = &self.names[*client];
                        if r.lost_examples.len() < 5 {
                            r.lost_examples.push(format!("fw:{msg} to {name}"));
                        }
                    }
                    Some((copies, dups)) => {
                        r.delivered += 1;
                        r.duplicated += u64::from(copies - 1);
                        // Extra copies beyond those the broker flagged as resent.
                        let without_dup = (copies - 1).saturating_sub(*dups);
                        r.duplicated_without_dup += u64::from(without_dup);
                        if without_dup > 0 && r.duplicate_examples.len() < 5 {
                            let name = &self.names[*client];
                            r.duplicate_examples
                                .push(format!("fw:{msg} to {name} ({copies} copies, {dups} DUP)"));
                        }
                    }
                }
            }
        }
        r.strays = self
            .deliveries
            .iter()
            .filter(|d| {
                self.accepted
                    .get(&d.msg)
                    .is_some_and(|(at, to)| inside(at) && !to.contains(&d.client))
            })
            .count() as u64;
        r.unconfirmed = self
            .sent
            .iter()
            .filter(|(_, at)| inside(at))
            .filter(|(msg, _)| !self.accepted.contains_key(msg) && !self.refused.contains_key(msg))
            .count() as u64;
        r.refused = self.refused.values().filter(|(at, _)| inside(at)).count() as u64;
        self.sessions_in(&mut r, mark, from, to);
        r
    }

    /// Disconnects, reconnects and the time to recover within `[from, to)`.
    fn sessions_in(&self, r: &mut Report, mark: &Mark, from: Instant, to: Instant) {
        let mut per_client: HashMap<ClientIdx, u32> = HashMap::new();
        // When each client that lost its connection in the phase had one again.
        let mut back: HashMap<ClientIdx, Option<Instant>> = HashMap::new();
        for (client, at, event) in &self.sessions {
            if *at < from || *at >= to {
                continue;
            }
            match event {
                SessionEvent::Ended(how) => {
                    r.disconnects += 1;
                    *per_client.entry(*client).or_default() += 1;
                    match how {
                        Ended::Disconnect(0x8B) => r.disconnects_0x8b += 1,
                        Ended::Disconnect(_) => r.disconnects_other += 1,
                        Ended::Eof => r.disconnects_eof += 1,
                    }
                    back.insert(*client, None);
                }
                SessionEvent::Connected {
                    session_present,
                    first: false,
                } => {
                    r.reconnects += 1;
                    if *session_present {
                        r.session_present += 1;
                    }
                    back.insert(*client, Some(*at));
                }
                SessionEvent::Connected { first: true, .. } => {}
            }
        }
        r.most_disconnects_per_client = per_client.values().copied().max().unwrap_or(0);
        if mark.name == "before" {
            return;
        }
        let reconnected = back.values().copied().collect::<Option<Vec<_>>>();
        let Some(reconnected) = reconnected else {
            r.reconnected_in = Some(None);
            r.recovered_in = Some(None);
            return;
        };
        if let Some(last) = reconnected.iter().max() {
            r.reconnected_in = Some(Some(*last - mark.at));
        }
        // Every subscriber has received a message accepted after the fault was undone and
        // after its own reconnect.
        let restored = mark.restored.unwrap_or(mark.at);
        let mut latest = restored;
        for s in &self.subscribers {
            let since = back
                .get(s)
                .copied()
                .flatten()
                .map_or(restored, |t| t.max(restored));
            let first = self
                .deliveries
                .iter()
                .filter(|d| d.client == *s && d.at < to)
                .filter(|d| {
                    self.accepted
                        .get(&d.msg)
                        .is_some_and(|(at, _)| *at >= since)
                })
                .map(|d| d.at)
                .min();
            match first {
                Some(t) => latest = latest.max(t),
                None => {
                    r.recovered_in = Some(None);
                    return;
                }
            }
        }
        r.recovered_in = Some(Some(latest - mark.at));
    }
}

/// What one phase of a fault test saw. Messages count in the phase in which they were accepted.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// "before", or the fault's name.
    pub phase: String,
    /// Messages PUBACKed with success.
    pub accepted: u64,
    /// (message, recipient) pairs delivered at least once.
    pub delivered: u64,
    /// (message, recipient) pairs accepted and never delivered.
    pub lost: u64,
    /// Up to five of them, for the failure message.
    pub lost_examples: Vec<String>,
    /// A few messages delivered again without DUP, and to whom.
    pub duplicate_examples: Vec<String>,
    /// Extra copies delivered, all of them.
    pub duplicated: u64,
    /// Extra copies delivered without the DUP flag.
    pub duplicated_without_dup: u64,
    /// Deliveries to a client the message was not for.
    pub strays: u64,
    /// Messages sent and never answered (their connection ended first).
    pub unconfirmed: u64,
    /// Messages PUBACKed with an error.
    pub refused: u64,
    /// Connections that ended.
    pub disconnects: u64,
    /// … by a server DISCONNECT 0x8B (server shutting down).
    pub disconnects_0x8b: u64,
    /// … by a server DISCONNECT with another reason.
    pub disconnects_other: u64,
    /// … by a bare close.
    pub disconnects_eof: u64,
    /// The most disconnects one client saw.
    pub most_disconnects_per_client: u32,
    /// Reconnects (CONNACKs after the first).
    pub reconnects: u64,
    /// … with `session present`.
    pub session_present: u64,
    /// Fault → the last disconnected client connected again (`Some(None)`: one never did;
    /// `None`: nobody was disconnected, or the phase is "before").
    pub reconnected_in: Option<Option<Duration>>,
    /// Fault → every subscriber has received a message accepted after the fault was undone and
    /// after its reconnect (`Some(None)`: one never did).
    pub recovered_in: Option<Option<Duration>>,
}

fn secs(d: Option<Option<Duration>>) -> String {
    match d {
        None => "-".to_owned(),
        Some(None) => "never".to_owned(),
        Some(Some(d)) => format!("{:.2}s", d.as_secs_f64()),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: accepted={} delivered={} lost={} duplicated={} (without DUP {}) strays={} \
             unconfirmed={} refused={} disconnects={} (0x8B {}, other {}, EOF {}; most per \
             client {}) reconnects={} session_present={}/{} reconnected_in={} recovered_in={}",
            self.phase,
            self.accepted,
            self.delivered,
            self.lost,
            self.duplicated,
            self.duplicated_without_dup,
            self.strays,
            self.unconfirmed,
            self.refused,
            self.disconnects,
            self.disconnects_0x8b,
            self.disconnects_other,
            self.disconnects_eof,
            self.most_disconnects_per_client,
            self.reconnects,
            self.session_present,
            self.reconnects,
            secs(self.reconnected_in),
            secs(self.recovered_in),
        )
    }
}
