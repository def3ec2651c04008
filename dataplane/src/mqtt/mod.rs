//! The MQTT front-end: listeners, the CONNECT handshake, sessions, framing and reason codes.

mod broker;
mod codec;
mod connect;
mod drain;
mod durable;
pub(crate) use durable::DurableSessions;
mod handshake;
mod pending_wills;
mod reason;
mod registry;
mod response_topic;
mod saved;
mod session;
mod session_file;
mod subs;
mod websocket;
mod will;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub(crate) use broker::Broker;
#[cfg(test)]
pub(crate) use codec::publish_with_id;
pub(crate) use codec::{Codec, Frame, Version, peek_version};
pub(crate) use connect::{MAX_CONNECT, read_connect};
pub use session_file::Counts as SessionCounts;
pub use websocket::MQTT_SUBPROTOCOL;
pub(crate) use websocket::websocket;

use crate::listener::{self, Admitted, GatedListener};
use crate::router::Router;

/// Accepts plain TCP (or, with an acceptor, TLS) connections until the task is dropped. Each
/// socket is counted from accept by the listener's gate, and is pending (evictable, on the
/// `--max-pending-connections` budget) until its CONNECT is accepted.
pub(crate) async fn accept_loop<R: Router>(
    shared: Arc<Broker<R>>,
    listener: GatedListener,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let (socket, peer) = listener.accept().await;
        let handle = socket.ticket().handle();
        let shared = shared.clone();
        match &tls {
            None => {
                tokio::spawn(listener::scope(handle, async move {
                    let _counted = Counted::new(&shared);
                    connect::serve(shared.clone(), socket, None).await;
                }));
            }
            Some(acceptor) => {
                // Boxed: a TLS stream and its handshake take kilobytes that plain TCP
                // connections should not carry in their task.
                let acceptor = acceptor.clone();
                tokio::spawn(listener::scope(handle, async move {
                    let _counted = Counted::new(&shared);
                    Box::pin(serve_tls(shared.clone(), socket, acceptor, peer)).await;
                }));
            }
        }
    }
}

/// Serves one connection over TLS: the TLS handshake (within the connect timeout), then MQTT.
async fn serve_tls<R: Router>(
    shared: Arc<Broker<R>>,
    socket: Admitted<tokio::net::TcpStream>,
    acceptor: TlsAcceptor,
    peer: SocketAddr,
) {
    let handshake =
        tokio::time::timeout(shared.config.connect_timeout, acceptor.accept(socket)).await;
    match handshake {
        Ok(Ok(stream)) => {
            let chain = crate::tls::PeerChain::of(stream.get_ref().1);
            connect::serve(shared, stream, chain).await;
        }
        _ => {
            tracing::debug!(%peer, "TLS handshake failed or timed out");
            shared.metrics.refused("connect", "tls_handshake");
        }
    }
}

/// Serves one MQTT connection over any byte stream (MQTT over WebSocket comes in here), with
/// the same handshake, session and limits as TCP; `chain` is the client certificate of the
/// TLS connection the stream runs in, if any.
pub(crate) async fn serve_stream<R, S>(
    shared: Arc<Broker<R>>,
    stream: S,
    chain: Option<crate::tls::PeerChain>,
) where
    R: Router,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let _counted = Counted::new(&shared);
    connect::serve(shared.clone(), stream, chain).await;
}

/// A connection counted (for `--max-connections` and the metrics) until dropped.
struct Counted<'a, R: Router>(&'a Broker<R>);

impl<'a, R: Router> Counted<'a, R> {
    fn new(shared: &'a Broker<R>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connection_opened();
        Self(shared)
    }
}

impl<R: Router> Drop for Counted<'_, R> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connection_closed();
    }
}

/// Binds a listener, with a message a person can act on.
pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("could not listen for {what} on {addr}: {e}; pick a free address with the matching --*-listen flag")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::RumqttdRouter;

    /// The size of the future that `f` returns, without calling it.
    fn future_size<A, B, F: FnOnce(A, B) -> Fut, Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// [`future_size`] of a function of three arguments.
    fn future_size3<A, B, C, F: FnOnce(A, B, C) -> Fut, Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_socket_that_has_not_connected_holds_little() {
        // What a flood of sockets that never send a CONNECT costs per socket: the task (with
        // `serve`'s future) and this box (MQTT.md, Memory; BENCHMARKS.md, under attack). 304
        // bytes when written: jemalloc's 320-byte class.
        let size = future_size(&connect::first_packet::<RumqttdRouter, tokio::net::TcpStream>);
        assert!(
            size <= 320,
            "reading a CONNECT takes a {size}-byte future per pending socket"
        );
    }

    /// The size of the future that `f` returns, without calling it.
    fn future_size1<A, F: FnOnce(A) -> Fut, Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn an_idle_connection_holds_a_small_future() {
        // The session's box is most of what an idle connection costs (MQTT.md, Memory); rare
        // or short-lived state belongs in a box of its own. It was 5.3 KiB plus a 5.8 KiB task
        // before the session moved out of the handshake. The bound is jemalloc's 2 KiB size
        // class: an idle connection measured 2.65 KiB at 1,848 bytes (`fleetward-bench idle`).
        let size = future_size1(&connect::run::<RumqttdRouter, tokio::net::TcpStream>);
        assert!(
            size <= 2048,
            "a plain-TCP session's future takes {size} bytes, past the allocator class an \
             idle connection fits in"
        );
        // The connection's task holds only the box of the stage it is in.
        let size = future_size3(&connect::serve::<RumqttdRouter, tokio::net::TcpStream>);
        assert!(size <= 64, "the connection's own future takes {size} bytes");
    }
}
