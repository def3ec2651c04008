//! Message flows: publishers and subscribers over MQTT 3.1.1 sockets (plain TCP, or TLS with
//! [`Broker::tls`]), counted over a window after a warm-up, with optional publish → deliver
//! latency.
//!
//! Point-to-point, fan-out and fan-in are the same engine with other topics: each subscriber
//! subscribes to one filter, each publisher publishes on one topic, as fast as the broker reads
//! (`rate` 0) or at a fixed rate. At QoS 1 a publisher keeps at most `window` PUBLISHes
//! unacknowledged and subscribers acknowledge every delivery.
//!
//! Latency: with `latency` set, every payload carries the time it was written, and the
//! subscriber records arrival minus that. Publisher and subscriber share the process, so one
//! clock measures both ends. Stamping the time a message was *due* instead would charge the
//! broker for tokio's timer, which wakes up to a millisecond late; so the publishers report
//! how far behind their schedule they fell (`send_lag`): a broker that stalls its publishers
//! (coordinated omission) shows there, not hidden.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;

use crate::fixture;
use crate::tls::TlsClient;
use crate::wire::{self, Framer, Publish};

/// The keep-alive every client asks for. rumqttd refuses 0, so it is long instead: no run
/// lasts long enough to need a PINGREQ, and subscribers send one every half of it anyway.
pub const KEEP_ALIVE_SECS: u16 = 600;

/// How long a CONNACK or SUBACK may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How clients log in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    /// No username or password, for brokers that run without authentication.
    None,
    /// The Fleetward bench credentials: username `bench/<thing>`, the thing's key.
    Key,
    /// No username or password, the thing's client certificate in the TLS handshake (needs
    /// [`Broker::tls`]).
    Certificate,
}

/// The broker under test.
#[derive(Clone, Debug)]
pub struct Broker {
    /// Its MQTT (or MQTTS) listener.
    pub addr: SocketAddr,
    /// How clients log in.
    pub login: Login,
    /// Connect over TLS with this client; plain TCP without.
    pub tls: Option<Arc<TlsClient>>,
}

impl Broker {
    /// Connects as `thing` with `client_id` and waits for a successful CONNACK.
    pub async fn open(&self, client_id: &str, thing: &str) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let mut s = match &self.tls {
            None => Conn::Plain(tcp),
            Some(tls) => {
                let cert = (self.login == Login::Certificate).then_some(thing);
                Conn::Tls(Box::new(tls.connect(self.addr.ip(), tcp, cert).await?))
            }
        };
        s.write_all(&self.connect_packet(client_id, thing)).await?;
        let mut ack = [0u8; 4];
        tokio::time::timeout(ACK_TIMEOUT, s.read_exact(&mut ack))
            .await
            .with_context(|| format!("{client_id}: no CONNACK within {ACK_TIMEOUT:?}"))??;
        ensure!(
            ack[0] >> 4 == wire::CONNACK && ack[3] == 0,
            "{client_id}: CONNACK {ack:02x?} (refused)"
        );
        Ok(s)
    }

    /// The CONNECT `open` sends.
    pub fn connect_packet(&self, client_id: &str, thing: &str) -> Vec<u8> {
        let user = fixture::username(thing);
        let pass = fixture::key(thing);
        let login = (self.login == Login::Key).then_some((user.as_str(), pass.as_str()));
        wire::connect(client_id, login, KEEP_ALIVE_SECS)
    }
}

/// A client connection: plain TCP or TLS over it.
pub enum Conn {
    /// MQTT over TCP.
    Plain(TcpStream),
    /// MQTT over TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection's read half.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A connection's write half.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

impl Conn {
    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }

    /// Closes with a reset rather than a FIN, so the generator leaves no socket in TIME_WAIT.
    pub fn set_zero_linger(&self) -> std::io::Result<()> {
        self.tcp().set_zero_linger()
    }

    /// Separate halves for a reading and a writing side.
    pub fn split(self) -> (Reader, Writer) {
        match self {
            Self::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Self::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One client of a flow: the thing it logs in as and the topic it publishes on or the filter
/// it subscribes to.
#[derive(Clone, Debug)]
pub struct Client {
    /// The thing's name.
    pub thing: String,
    /// Topic (publisher) or filter (subscriber).
    pub topic: String,
}

impl Client {
    /// `thing` on `topic`.
    pub fn new(thing: String, topic: String) -> Self {
        Self { thing, topic }
    }
}

/// What a flow runs.
#[derive(Clone, Debug)]
pub struct Flow {
    /// The subscribers.
    pub subscribers: Vec<Client>,
    /// The publishers.
    pub publishers: Vec<Client>,
    /// QoS of publishes and subscriptions: 0 or 1.
    pub qos: u8,
    /// Payload bytes (at least 8 with `latency`).
    pub payload: usize,
    /// Messages per second per publisher; 0 sends as fast as the broker reads.
    pub rate: f64,
    /// PUBLISH packets written per socket write, at most.
    pub batch: usize,
    /// QoS 1 PUBLISHes in flight per publisher, at most.
    pub window: usize,
    /// Stamp payloads and record publish → deliver latency.
    pub latency: bool,
    /// Load before the window opens.
    pub warmup: Duration,
    /// The measured window.
    pub window_len: Duration,
}

/// What a flow measured over its window.
#[derive(Debug)]
pub struct FlowResult {
    /// Messages delivered to subscribers per second.
    pub received_per_s: f64,
    /// Messages publishers wrote per second (QoS 0: not all of them need arrive).
    pub written_per_s: f64,
    /// Publish → deliver latency in nanoseconds, when asked for.
    pub latency: Option<Histogram<u64>>,
    /// Cores this process used over the window (to show it is not the bottleneck).
    pub generator_cores: f64,
    /// With a fixed rate: the furthest a publisher fell behind its schedule in the window.
    pub max_send_lag: Duration,
}

const WARMUP: u8 = 0;
const MEASURING: u8 = 1;
const DONE: u8 = 2;

/// What every client task of one flow shares.
struct FlowCounters {
    epoch: Instant,
    phase: AtomicU8,
    received: AtomicU64,
    written: AtomicU64,
    latency: parking_lot::Mutex<Histogram<u64>>,
    /// Nanoseconds, the largest lag behind schedule seen in the window.
    max_send_lag: AtomicU64,
}

impl FlowCounters {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }
}

/// A latency histogram from 1 ns to 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs `flow` against `broker`.
pub async fn run(broker: Broker, flow: Flow) -> anyhow::Result<FlowResult> {
    ensure!(flow.qos <= 1, "the load generator runs QoS 0 or 1");
    ensure!(
        !flow.latency || flow.payload >= 8,
        "latency needs payloads of at least 8 bytes (the send time)"
    );
    let shared = Arc::new(FlowCounters {
        epoch: Instant::now(),
        phase: AtomicU8::new(WARMUP),
        received: AtomicU64::new(0),
        written: AtomicU64::new(0),
        latency: parking_lot::Mutex::new(histogram()),
        max_send_lag: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, sub) in flow.subscribers.iter().enumerate() {
        let mut s = broker.open(&format!("s{i}"), &sub.thing).await?;
        s.write_all(&wire::subscribe(&sub.topic, flow.qos)).await?;
        let (mut reader, writer) = s.split();
        let mut framer = Framer::default();
        wait_for_suback(&mut reader, &mut framer, &sub.thing).await?;
        tasks.spawn(subscriber(
            reader,
            writer,
            framer,
            flow.clone(),
            shared.clone(),
        ));
    }
    // A SUBACK can come before the broker routes to the new filter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, p) in flow.publishers.iter().enumerate() {
        let s = broker.open(&format!("p{i}"), &p.thing).await?;
        tasks.spawn(publisher(s, p.topic.clone(), flow.clone(), shared.clone()));
    }
    let failed = first_failure(&mut tasks, "a client task");
    let measure = async {
        tokio::time::sleep(flow.warmup).await;
        let before = (
            shared.received.load(Ordering::Relaxed),
            shared.written.load(Ordering::Relaxed),
            cpu_seconds(),
            Instant::now(),
        );
        shared.phase.store(MEASURING, Ordering::Relaxed);
        tokio::time::sleep(flow.window_len).await;
        shared.phase.store(DONE, Ordering::Relaxed);
        let dt = before.3.elapsed().as_secs_f64();
        (
            (shared.received.load(Ordering::Relaxed) - before.0) as f64 / dt,
            (shared.written.load(Ordering::Relaxed) - before.1) as f64 / dt,
            (cpu_seconds() - before.2) / dt,
        )
    };
    let (received_per_s, written_per_s, generator_cores) = tokio::select! {
        m = measure => m,
        e = failed => {
            e?;
            bail!("client tasks ended before the window closed");
        }
    };
    tasks.abort_all();
    let latency = flow
        .latency
        .then(|| std::mem::replace(&mut *shared.latency.lock(), histogram()));
    Ok(FlowResult {
        received_per_s,
        written_per_s,
        latency,
        generator_cores,
        max_send_lag: Duration::from_nanos(shared.max_send_lag.load(Ordering::Relaxed)),
    })
}

/// Waits for the first of `tasks` to end, and returns its error (clients run until stopped,
/// so one that ends early has failed).
pub async fn first_failure<T: 'static>(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<T>>,
    what: &str,
) -> anyhow::Result<()> {
    match tasks.join_next().await {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(anyhow::anyhow!("{what} failed: {e}")),
        _ => Ok(()),
    }
}

async fn wait_for_suback(
    reader: &mut Reader,
    framer: &mut Framer,
    thing: &str,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        if let Some(frame) = framer.next_frame() {
            ensure!(
                frame.kind() == wire::SUBACK,
                "{thing}: expected SUBACK, got packet type {}",
                frame.kind()
            );
            let code = frame.body.get(2).copied();
            ensure!(
                matches!(code, Some(0 | 1)),
                "{thing}: the subscription was refused (SUBACK {code:02x?})"
            );
            return Ok(());
        }
        let n = tokio::time::timeout_at(deadline.into(), reader.read(&mut buf))
            .await
            .with_context(|| format!("{thing}: no SUBACK within {ACK_TIMEOUT:?}"))??;
        ensure!(
            n > 0,
            "{thing}: the broker closed the connection before SUBACK"
        );
        framer.feed(&buf[..n]);
    }
}

async fn subscriber(
    mut reader: Reader,
    mut writer: Writer,
    mut framer: Framer,
    flow: Flow,
    shared: Arc<FlowCounters>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut acks = Vec::new();
    let mut samples = Vec::new();
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 2));
    ping.tick().await;
    loop {
        let n = tokio::select! {
            n = reader.read(&mut buf) => n?,
            _ = ping.tick() => {
                writer.write_all(&wire::PINGREQ).await?;
                continue;
            }
        };
        ensure!(n > 0, "the broker closed a subscriber");
        framer.feed(&buf[..n]);
        let now = shared.epoch.elapsed().as_nanos() as u64;
        let mut delivered = 0;
        while let Some(frame) = framer.next_frame() {
            if frame.kind() != wire::PUBLISH {
                continue;
            }
            delivered += 1;
            let (_, id, payload) = frame.publish().context("a malformed PUBLISH")?;
            if let Some(id) = id {
                acks.extend_from_slice(&wire::puback(id));
            }
            if flow.latency
                && let Some(stamp) = payload.get(..8)
            {
                let sent = u64::from_be_bytes(stamp.try_into().expect("8 bytes"));
                samples.push(now.saturating_sub(sent));
            }
        }
        shared.received.fetch_add(delivered, Ordering::Relaxed);
        if !samples.is_empty() {
            if shared.phase() == MEASURING {
                let mut h = shared.latency.lock();
                for s in &samples {
                    h.saturating_record((*s).max(1));
                }
            }
            samples.clear();
        }
        if !acks.is_empty() {
            writer.write_all(&acks).await?;
            acks.clear();
        }
    }
}

async fn publisher(
    s: Conn,
    topic: String,
    flow: Flow,
    shared: Arc<FlowCounters>,
) -> anyhow::Result<()> {
    let (reader, mut writer) = s.split();
    let window = Arc::new(Semaphore::new(flow.window.max(1)));
    let acks = reopen_window(reader, window.clone());
    let batch = flow.batch.max(1).min(if flow.qos == 1 {
        flow.window.max(1)
    } else {
        usize::MAX
    });
    let send = async move {
        let mut packet = Publish::new(&topic, flow.qos, flow.payload);
        let mut out = Vec::with_capacity(packet.bytes().len() * batch);
        let mut id = 0u16;
        let started = Instant::now();
        let mut count = 0u64;
        let due = |n: u64| started + Duration::from_secs_f64(n as f64 / flow.rate);
        // Unbounded QoS 0 without stamps writes the same bytes every time.
        let fixed = (flow.rate <= 0.0 && flow.qos == 0 && !flow.latency)
            .then(|| packet.bytes().repeat(batch));
        loop {
            if let Some(fixed) = &fixed {
                writer.write_all(fixed).await?;
                shared.written.fetch_add(batch as u64, Ordering::Relaxed);
                continue;
            }
            let mut n = batch;
            if flow.rate > 0.0 {
                tokio::time::sleep_until(due(count).into()).await;
                let now = Instant::now();
                n = (1..batch)
                    .take_while(|k| due(count + *k as u64) <= now)
                    .count()
                    + 1;
                if shared.phase() == MEASURING {
                    let lag = now.saturating_duration_since(due(count)).as_nanos() as u64;
                    shared.max_send_lag.fetch_max(lag, Ordering::Relaxed);
                }
            }
            if flow.qos == 1 {
                window.acquire_many(n as u32).await?.forget();
            }
            out.clear();
            let stamp = shared.epoch.elapsed().as_nanos() as u64;
            for _ in 0..n {
                if flow.qos == 1 {
                    id = id.checked_add(1).unwrap_or(1);
                    packet.set_id(id);
                }
                if flow.latency {
                    packet.set_stamp(stamp);
                }
                out.extend_from_slice(packet.bytes());
            }
            writer.write_all(&out).await?;
            count += n as u64;
            shared.written.fetch_add(n as u64, Ordering::Relaxed);
            if shared.phase() == DONE {
                return anyhow::Ok(());
            }
        }
    };
    tokio::select! {
        r = send => r,
        r = acks => r,
    }
}

/// Reads a publisher's PUBACKs and gives their packet ids back to the send window, until the
/// broker closes the connection.
async fn reopen_window(mut reader: Reader, window: Arc<Semaphore>) -> anyhow::Result<()> {
    let mut framer = Framer::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = reader.read(&mut buf).await?;
        ensure!(n > 0, "the broker closed a publisher");
        framer.feed(&buf[..n]);
        let mut acked = 0;
        while let Some(frame) = framer.next_frame() {
            if frame.kind() == wire::PUBACK {
                acked += 1;
            }
        }
        window.add_permits(acked);
    }
}

/// CPU seconds (user + system) this process has used.
pub fn cpu_seconds() -> f64 {
    // SAFETY: an all-zero `rusage` is a valid value; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a pointer to a live `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
