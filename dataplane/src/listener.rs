//! Every socket of every listener, counted from `accept`.
//!
//! A [`Gate`] holds the pod's socket budget: `--max-connections` sockets in all (MQTT, MQTTS,
//! MQTT over WebSocket, WebSocket streams, plain HTTP), of which at most
//! `--max-pending-connections` have not authenticated yet. Past the first the new socket is
//! closed at once; past the second the OLDEST pending socket is closed to make room, so an idle
//! flood cannot lock a legitimate client out. Accept errors (out of file descriptors, buffers)
//! back off and retry; they never end the process.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use backon::BackoffBuilder as _;
use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{AtScrape, gauge};

/// The listeners, for metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listener {
    Mqtt,
    Mqtts,
    Http,
    Https,
    Admin,
}

impl Listener {
    const ALL: [Listener; 5] = [
        Self::Mqtt,
        Self::Mqtts,
        Self::Http,
        Self::Https,
        Self::Admin,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Mqtts => "mqtts",
            Self::Http => "http",
            Self::Https => "https",
            Self::Admin => "admin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of every listener, on `/metrics`.
#[derive(Default)]
pub(crate) struct ListenerMetrics {
    accept_errors: PerListener,
    refused_full: PerListener,
    evicted: PerListener,
}

/// Labels: a listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// A counter family with one child per listener, made up front so that every listener shows
/// (0 until it counts) and counting takes no family lookup.
struct PerListener {
    family: Family<ListenerLabel, Counter>,
    by_listener: [Counter; 5],
}

impl Default for PerListener {
    fn default() -> Self {
        let family = Family::<ListenerLabel, Counter>::default();
        let by_listener = Listener::ALL.map(|l| {
            family.get_or_create_owned(&ListenerLabel {
                listener: l.as_str(),
            })
        });
        Self {
            family,
            by_listener,
        }
    }
}

impl PerListener {
    fn inc(&self, listener: Listener) {
        self.by_listener[listener.index()].inc();
    }

    #[cfg(test)]
    fn get(&self, listener: Listener) -> u64 {
        self.by_listener[listener.index()].get()
    }
}

/// One socket's state as its gate sees it. The socket holds only an `Arc` of it (one word in
/// every connection's task).
struct Slot {
    gate: Arc<Gate>,
    id: u64,
    listener: Listener,
    /// The client's address, for the audit trail.
    peer: SocketAddr,
    /// Not authenticated yet: it counts against the pending budget and may be evicted.
    pending: AtomicBool,
    /// Closed to make room for a newer pending socket.
    evicted: AtomicBool,
    /// Wakes the socket's reader when it is evicted.
    waker: AtomicWaker,
}

/// A socket budget shared by some listeners.
pub(crate) struct Gate {
    max_total: usize,
    max_pending: usize,
    total: AtomicUsize,
    /// Pending sockets by accept order: the first is the oldest.
    pending: Mutex<BTreeMap<u64, Arc<Slot>>>,
    next: AtomicU64,
    metrics: Arc<ListenerMetrics>,
}

impl Gate {
    /// A budget of `max_total` sockets, at most `max_pending` of them unauthenticated.
    pub(crate) fn new(max_total: usize, max_pending: usize, metrics: Arc<ListenerMetrics>) -> Self {
        Self {
            max_total: max_total.max(1),
            max_pending: max_pending.clamp(1, max_total.max(1)),
            total: AtomicUsize::new(0),
            pending: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            metrics,
        }
    }

    /// Sockets open now.
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Sockets open now that have not authenticated.
    pub(crate) fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// Admits a new socket, evicting the oldest pending one when the pending budget is full;
    /// `None` (the socket is to be closed) when the pod holds `max_total` already.
    fn admit(self: &Arc<Self>, listener: Listener, peer: SocketAddr) -> Option<Ticket> {
        let taken = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            });
        if taken.is_err() {
            self.metrics.refused_full.inc(listener);
            return None;
        }
        let slot = Arc::new(Slot {
            gate: self.clone(),
            id: self.next.fetch_add(1, Ordering::Relaxed),
            listener,
            peer,
            pending: AtomicBool::new(true),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let oldest = {
            let mut pending = self.pending.lock();
            let mut oldest = None;
            if pending.len() >= self.max_pending {
                // The swap decides between eviction and a socket authenticating right now
                // (it leaves `pending` before it takes this lock): one that won is skipped.
                while let Some((_, s)) = pending.pop_first() {
                    if s.pending.swap(false, Ordering::AcqRel) {
                        oldest = Some(s);
                        break;
                    }
                }
            }
            pending.insert(slot.id, slot.clone());
            oldest
        };
        if let Some(old) = oldest {
            old.evicted.store(true, Ordering::Release);
            old.waker.wake();
            self.metrics.evicted.inc(old.listener);
        }
        Some(Ticket { slot })
    }
}

impl Slot {
    /// Leaves the pending budget, if still on it.
    fn leave_pending(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.gate.pending.lock().remove(&self.id);
        }
    }
}

/// One admitted socket: counted until dropped.
pub(crate) struct Ticket {
    slot: Arc<Slot>,
}

impl Ticket {
    /// A handle that marks this socket authenticated.
    pub(crate) fn handle(&self) -> AuthHandle {
        AuthHandle {
            slot: self.slot.clone(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Also breaks the gate → pending map → slot → gate cycle.
        self.slot.leave_pending();
        self.slot.gate.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks a socket authenticated: it leaves the pending budget and can no longer be evicted.
#[derive(Clone)]
pub(crate) struct AuthHandle {
    slot: Arc<Slot>,
}

impl AuthHandle {
    /// The socket authenticated.
    pub(crate) fn authenticated(&self) {
        self.slot.leave_pending();
    }

    /// The client's address and the listener it came in on.
    pub(crate) fn peer(&self) -> (SocketAddr, Listener) {
        (self.slot.peer, self.slot.listener)
    }
}

tokio::task_local! {
    /// The socket the current MQTT task serves (TCP, TLS or WebSocket).
    static CURRENT: AuthHandle;
}

/// Runs `f` as the task of the socket `handle` marks.
pub(crate) async fn scope<F: Future>(handle: AuthHandle, f: F) -> F::Output {
    CURRENT.scope(handle, f).await
}

/// Marks the socket of the current task authenticated (a no-op outside [`scope`], as in
/// tests that serve a stream of their own).
pub(crate) fn authenticated() {
    let _ = CURRENT.try_with(AuthHandle::authenticated);
}

/// The client's address and listener of the current task's socket (`None` outside [`scope`]).
pub(crate) fn current_peer() -> Option<(SocketAddr, Listener)> {
    CURRENT.try_with(AuthHandle::peer).ok()
}

/// A socket that fails its reads and writes once its gate evicted it, and leaves the gate's
/// count when dropped (also when it lives on as an upgraded WebSocket).
pub(crate) struct Admitted<S> {
    io: S,
    ticket: Ticket,
}

impl<S> Admitted<S> {
    pub(crate) fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// `Err` once evicted; registers the reader's waker while the socket is pending.
    fn check(&self, cx: &mut Context<'_>) -> io::Result<()> {
        let slot = &self.ticket.slot;
        if slot.pending.load(Ordering::Acquire) {
            slot.waker.register(cx.waker());
        }
        if slot.evicted.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for a newer connection (--max-pending-connections)",
            ));
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A listener that admits sockets through a gate.
pub(crate) struct GatedListener {
    listener: TcpListener,
    gate: Arc<Gate>,
    which: Listener,
}

impl GatedListener {
    pub(crate) fn new(listener: TcpListener, gate: Arc<Gate>, which: Listener) -> Self {
        Self {
            listener,
            gate,
            which,
        }
    }

    /// The next admitted socket. Accept errors (EMFILE, ENFILE, ENOBUFS, …) back off with a
    /// growing delay and are logged once per burst; sockets over the gate's budget are closed
    /// at once.
    pub(crate) async fn accept(&self) -> (Admitted<TcpStream>, SocketAddr) {
        let mut backoff: Option<backon::ExponentialBackoff> = None;
        let mut errors = 0u64;
        loop {
            match self.listener.accept().await {
                Ok((socket, peer)) => {
                    if errors > 0 {
                        tracing::info!(
                            listener = self.which.as_str(),
                            errors,
                            "accepting connections again"
                        );
                        errors = 0;
                        backoff = None;
                    }
                    let Some(ticket) = self.gate.admit(self.which, peer) else {
                        // Over --max-connections: closed before a byte is read.
                        drop(socket);
                        continue;
                    };
                    let _ = socket.set_nodelay(true);
                    return (Admitted { io: socket, ticket }, peer);
                }
                Err(e) => {
                    errors += 1;
                    self.gate.metrics.accept_errors.inc(self.which);
                    if errors == 1 {
                        tracing::warn!(
                            listener = self.which.as_str(),
                            error = %e,
                            "accepting a connection failed; backing off until it works again \
                             (raise the open-files limit or lower --max-connections if this \
                             is EMFILE)"
                        );
                    }
                    let delay = backoff
                        .get_or_insert_with(accept_backoff)
                        .next()
                        .unwrap_or(MAX_ACCEPT_DELAY);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The longest wait between two accepts that fail.
const MAX_ACCEPT_DELAY: Duration = Duration::from_secs(1);

fn accept_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(MAX_ACCEPT_DELAY)
        .without_max_times()
        .build()
}

/// The HTTP listeners' limits.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// How long a client has to send a request's headers; also how long a kept-alive
    /// connection may sit idle between requests (the wait for the next headers).
    pub header_timeout: Duration,
    /// How long a client has to send a request's whole body.
    pub body_timeout: Duration,
    /// Requests served at once on the listener; more are answered 503 at once.
    pub max_requests: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_requests: 1024,
        }
    }
}

/// Serves `app` over HTTP/1.1 on every socket the listener admits, with the limits. Each
/// request carries the peer's `ConnectInfo<SocketAddr>` and the socket's [`AuthHandle`].
/// `busy` answers a request over `limits.max_requests` (the listener knows no answer format).
pub(crate) async fn serve_http(
    listener: GatedListener,
    app: axum::Router,
    limits: HttpLimits,
    busy: fn() -> axum::response::Response,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let requests = Arc::new(tokio::sync::Semaphore::new(limits.max_requests.max(1)));
    loop {
        let (io, peer) = listener.accept().await;
        let conn = HttpConnection {
            peer,
            handle: io.ticket().handle(),
            chain: None,
            app: app.clone(),
            limits,
            requests: requests.clone(),
            busy,
        };
        match &tls {
            None => {
                tokio::spawn(conn.serve(io));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // The handshake within the header timeout: a TLS slowloris holds a
                    // socket no longer than a plain one.
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await;
                    let Ok(Ok(stream)) = handshake else {
                        tracing::debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let chain = crate::tls::PeerChain::of(stream.get_ref().1);
                    HttpConnection { chain, ..conn }.serve(stream).await;
                });
            }
        }
    }
}

/// One HTTP connection and what its requests carry.
struct HttpConnection {
    peer: SocketAddr,
    handle: AuthHandle,
    /// The client certificate chain of a TLS connection, if the client sent one: each
    /// request carries it, as its credential when it has no `Authorization`.
    chain: Option<crate::tls::PeerChain>,
    app: axum::Router,
    limits: HttpLimits,
    requests: Arc<tokio::sync::Semaphore>,
    busy: fn() -> axum::response::Response,
}

impl HttpConnection {
    async fn serve<IO>(self, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use tower::ServiceExt as _;
        let Self {
            peer,
            handle,
            chain,
            app,
            limits,
            requests,
            busy,
        } = self;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (app, handle, requests) = (app.clone(), handle.clone(), requests.clone());
            let chain = chain.clone();
            async move {
                let Ok(_permit) = requests.try_acquire_owned() else {
                    return Ok::<_, std::convert::Infallible>(busy());
                };
                // A success with credentials (a publish, a sign-in) authenticates the
                // socket; a GET (JWKS, a refused upgrade) or a CORS preflight does not.
                let authenticates =
                    !matches!(*req.method(), hyper::Method::GET | hyper::Method::OPTIONS);
                let mut req = req.map(|body| {
                    axum::body::Body::new(tower_http::timeout::DeadlineBody::new(
                        limits.body_timeout,
                        body,
                    ))
                });
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req.extensions_mut().insert(handle.clone());
                let served = crate::tls::with_request_chain(chain, app.oneshot(req));
                let response = match served.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if authenticates && response.status().is_success() {
                    handle.authenticated();
                }
                Ok(response)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let conn = builder
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "HTTP connection ended");
        }
    }
}

impl ListenerMetrics {
    /// Registers these counters, and the gauges of `gates` read at scrape time.
    pub(crate) fn register(&self, registry: &mut Registry, gates: Vec<Arc<Gate>>) {
        registry.register(
            "fleetward_accept_errors",
            "Accept calls that failed (EMFILE, ENFILE, ENOBUFS, …), per listener",
            self.accept_errors.family.clone(),
        );
        registry.register(
            "fleetward_connections_refused_at_accept",
            "Sockets closed at accept because the pod held --max-connections, per listener",
            self.refused_full.family.clone(),
        );
        registry.register(
            "fleetward_pending_connections_evicted",
            "Unauthenticated sockets closed to make room for newer ones \
             (--max-pending-connections), per listener",
            self.evicted.family.clone(),
        );
        registry.register_collector(AtScrape::new(move |e| {
            let (open, pending) = gates
                .iter()
                .fold((0, 0), |(o, p), g| (o + g.open(), p + g.pending()));
            gauge(
                e,
                "fleetward_sockets_open",
                "Sockets open on every listener.",
                open,
            )?;
            gauge(
                e,
                "fleetward_sockets_pending",
                "Sockets not authenticated yet.",
                pending,
            )
        }));
    }
}

/// Raises the soft open-files limit to the hard one; the limit in force afterwards (`None`
/// where it cannot be read).
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
        }
    }
}

/// File descriptors kept free of sockets: the router, the state files, NATS, logs.
pub const RESERVED_FILES: u64 = 128;

/// The sockets a pod may hold under an open-files limit of `limit`: `wanted`, or the limit less
/// [`RESERVED_FILES`] when that is lower.
pub fn sockets_within(wanted: usize, limit: Option<u64>) -> usize {
    match limit {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
            wanted.min(room.max(1))
        }
        None => wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    fn gate(total: usize, pending: usize) -> Arc<Gate> {
        Arc::new(Gate::new(total, pending, Arc::default()))
    }

    #[test]
    fn the_oldest_pending_socket_makes_room() {
        let g = gate(10, 2);
        let a = g.admit(Listener::Mqtt, PEER).expect("room");
        let b = g.admit(Listener::Mqtt, PEER).expect("room");
        let c = g.admit(Listener::Http, PEER).expect("room");
        assert!(a.slot.evicted.load(Ordering::Acquire), "the oldest goes");
        assert!(!b.slot.evicted.load(Ordering::Acquire));
        assert!(!c.slot.evicted.load(Ordering::Acquire));
        assert_eq!(g.pending(), 2);
        assert_eq!(g.open(), 3, "an evicted socket counts until it is closed");
        drop(a);
        assert_eq!(g.open(), 2);
    }

    #[test]
    fn authenticated_sockets_are_never_evicted() {
        let g = gate(10, 1);
        let a = g.admit(Listener::Mqtt, PEER).expect("room");
        a.handle().authenticated();
        let b = g.admit(Listener::Mqtt, PEER).expect("room");
        let _c = g.admit(Listener::Mqtt, PEER).expect("room");
        assert!(!a.slot.evicted.load(Ordering::Acquire));
        assert!(b.slot.evicted.load(Ordering::Acquire));
    }

    #[test]
    fn past_the_total_a_socket_is_refused_and_counted() {
        let g = gate(2, 2);
        let _a = g.admit(Listener::Mqtt, PEER).expect("room");
        let b = g.admit(Listener::Mqtt, PEER).expect("room");
        assert!(g.admit(Listener::Http, PEER).is_none());
        assert_eq!(g.metrics.refused_full.get(Listener::Http), 1);
        drop(b);
        assert!(g.admit(Listener::Http, PEER).is_some());
    }

    #[test]
    fn a_socket_carries_one_word_for_its_gate() {
        // Every connection's task holds an `Admitted` stream: what it adds to an idle
        // connection's memory (MQTT.md, Memory) is this pointer.
        assert_eq!(std::mem::size_of::<Ticket>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<AuthHandle>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn sockets_leave_room_for_files() {
        assert_eq!(sockets_within(10_000, Some(512)), 384);
        assert_eq!(sockets_within(100, Some(512)), 100);
        assert_eq!(sockets_within(100, None), 100);
    }
}
