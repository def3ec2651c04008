//! MQTT over WebSocket (`GET /mqtt`, subprotocol `mqtt`): the WebSocket as a byte stream, so
//! it runs the TCP front-end unchanged.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse as _, Response};
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::broker::Broker;
use crate::ingress::ApiError;
use crate::listener::{self, AuthHandle};
use crate::router::Router;

/// The subprotocol of MQTT over WebSocket.
pub const MQTT_SUBPROTOCOL: &str = "mqtt";

/// `GET /mqtt`: MQTT over WebSocket, through the same front-end as MQTT over TCP.
pub(crate) async fn websocket<R: Router>(
    State(shared): State<Arc<Broker<R>>>,
    socket: Option<Extension<AuthHandle>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return ApiError::upgrade_required().into_response();
    };
    // Room for the fixed header on top of the largest packet.
    let max = shared.config.max_packet_size.saturating_add(8);
    // Over HTTPS, the connection's client certificate can authenticate the CONNECT.
    let chain = crate::tls::request_chain();
    upgrade
        .protocols([MQTT_SUBPROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| async move {
            let serve = super::serve_stream(shared, WsBytes::new(ws), chain);
            // The socket stays pending until the CONNECT over it is accepted.
            match socket {
                Some(Extension(handle)) => listener::scope(handle, serve).await,
                None => serve.await,
            }
        })
}

/// Binary frames in, binary frames out: each write becomes one frame, and a write completes
/// only once the frame is flushed (so the session's write timeout covers the WebSocket too).
pub(crate) struct WsBytes {
    ws: WebSocket,
    /// What is left of the last frame read.
    read: Bytes,
    /// The length of a write already queued, waiting for its flush.
    queued: Option<usize>,
}

impl WsBytes {
    pub(crate) fn new(ws: WebSocket) -> Self {
        Self {
            ws,
            read: Bytes::new(),
            queued: None,
        }
    }
}

fn io_error(e: axum::Error) -> io::Error {
    io::Error::other(e)
}

impl AsyncRead for WsBytes {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                buf.put_slice(&self.read[..n]);
                self.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.read = b,
                // MQTT over WebSocket is binary only (MQTT 5, 6.0): a text frame ends it.
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket needs binary frames",
                    )));
                }
                // Pings are answered by the WebSocket layer.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl AsyncWrite for WsBytes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.queued.is_none() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
                .map_err(io_error)?;
            self.queued = Some(buf.len());
        }
        ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(io_error)?;
        Poll::Ready(Ok(self.queued.take().unwrap_or(0)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_error)
    }
}
