//! A connection's stages: reading the CONNECT (within the connect timeout), answering it
//! (`handshake.rs`), then running the session, each in a box of its own.

use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::broker::Broker;
use super::codec::{Codec, FrameError, peek_version};
use super::handshake::Handshake;
use super::session::Session;
use crate::router::Router;
use crate::tls::PeerChain;

/// The largest CONNECT accepted (it carries the will).
pub(crate) const MAX_CONNECT: usize = 128 * 1024;

/// Serves one client connection from its first byte to its end.
///
/// Not an `async fn`: its arguments would stay in the future beside what they are moved into.
/// Each stage has a box of its own, so the task holds only the stage it is in: reading the
/// CONNECT (a few hundred bytes: what a socket that never authenticates costs), answering it
/// (the CONNECT, its timeout, the checks: large and short-lived), then the session.
pub(crate) fn serve<R, S>(
    shared: Arc<Broker<R>>,
    stream: S,
    chain: Option<PeerChain>,
) -> impl Future<Output = ()> + Send
where
    R: Router,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Two boxes: a socket that has not sent its CONNECT yet (the one a flood holds open by the
    // thousand) holds only the small first one.
    let first = Box::pin(first_packet(shared, stream));
    async move {
        let Some(first) = first.await else {
            return;
        };
        let Some(session) = Box::pin(handshake(first, chain)).await else {
            return;
        };
        Box::pin(run(session)).await;
    }
}

/// Runs an accepted session to its end, in a box of its own: the connection's task stays
/// small while the socket is only pending.
/// Not an `async fn`, for the same reason as [`serve`]: the session would be in the future
/// twice, 2,648 bytes instead of 1,816.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its argument beside the local it is moved into"
)]
pub(super) fn run<R, S>(mut session: Session<R, S>) -> impl Future<Output = ()> + Send
where
    R: Router,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move { session.run().await }
}

/// A connection whose CONNECT was read.
pub(super) struct FirstPacket<R: Router, S> {
    shared: Arc<Broker<R>>,
    stream: S,
    rbuf: BytesMut,
    codec: Codec,
    connect: Packet,
}

/// Reads the CONNECT within the connect timeout; refuses a connection that does not start
/// with one.
pub(super) async fn first_packet<R, S>(
    shared: Arc<Broker<R>>,
    mut stream: S,
) -> Option<FirstPacket<R, S>>
where
    R: Router,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Small until the client sends more: `read_connect` grows it to what the CONNECT needs.
    let mut rbuf = BytesMut::new();
    // In a block of its own, so that nothing it held (a whole packet) stays in this future
    // while the refusal below is written.
    'read: {
        let first = tokio::time::timeout(
            shared.config.connect_timeout,
            read_connect(&mut stream, &mut rbuf),
        )
        .await;
        let (codec, connect) = match first {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return None,
            Ok(Err(FrameError::UnsupportedVersion(level))) => {
                tracing::debug!(level, "CONNECT with an unsupported protocol level");
                shared.metrics.refused("connect", "unsupported_version");
                break 'read;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "closing a connection that did not start with a valid CONNECT");
                shared.metrics.refused("connect", e.as_str());
                return None;
            }
            Err(_) => {
                shared.metrics.refused("connect", "timeout");
                return None;
            }
        };
        return Some(FirstPacket {
            shared,
            stream,
            rbuf,
            codec,
            connect,
        });
    }
    // 0x01 unacceptable protocol version, in the only form every version can read.
    let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
    None
}

/// Answers the CONNECT; the session to run if it was accepted.
async fn handshake<R, S>(
    first: FirstPacket<R, S>,
    chain: Option<PeerChain>,
) -> Option<Session<R, S>>
where
    R: Router,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let FirstPacket {
        shared,
        mut stream,
        rbuf,
        codec,
        connect,
    } = first;
    let Packet::Connect(connect, props, will, will_props, login) = connect else {
        return None;
    };
    let mut hs = Handshake {
        shared: &shared,
        codec: &codec,
        stream: &mut stream,
        username: None,
        kind: None,
        chain,
    };
    let accepted = hs.accept(connect, props, will, will_props, login).await?;
    Some(Session::new(shared, stream, codec, rbuf, accepted))
}

/// Reads until the first packet is complete; `None` when the peer went away.
pub(crate) async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<Option<(Codec, Packet)>, FrameError> {
    loop {
        if let Some(version) = peek_version(rbuf, MAX_CONNECT)? {
            let codec = Codec::new(version);
            return match codec.read(rbuf, MAX_CONNECT)? {
                Some(frame) => Ok(Some((codec, frame.packet))),
                None => Ok(None),
            };
        }
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}
