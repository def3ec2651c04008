//! Answers held until JetStream stored the QoS 1/2 messages they acknowledge (BUS.md, "QoS 1
//! across pods"), for the session's durable step (`durable.rs`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;

use crate::bus::durable::STORE_WAIT;
use crate::mqtt::broker::Broker;
use crate::router::Router;

/// Answers of reads whose QoS 1/2 messages JetStream has not stored yet, in the order read:
/// MQTT wants PUBACKs in the order of their PUBLISHes, so once one read is held, those after
/// it are too. The session reads on meanwhile (up to [`HELD_MAX_BYTES`]), so a publisher's
/// window is not bound by one store round trip per read.
#[derive(Default)]
pub(crate) struct Held {
    /// (the store mark to wait for, when held, the answers).
    pub(super) segments: VecDeque<(u64, Instant, BytesMut)>,
    pub(super) bytes: usize,
    /// Resolves when the first segment's mark is stored or its time is up.
    pub(super) wait: Option<Pin<Box<dyn Future<Output = bool> + Send>>>,
}

/// Past this many bytes of held answers the session stops reading until some are released.
pub(super) const HELD_MAX_BYTES: usize = 256 * 1024;

/// Ready when the first held read's messages are stored (or its time is up); the loop then
/// releases what it can. Never, with nothing held.
pub(super) fn ready<R: Router>(
    held: Option<&mut Box<Held>>,
    shared: &Arc<Broker<R>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let Some(held) = held else {
        return Poll::Pending;
    };
    let Some(&(mark, since, _)) = held.segments.front() else {
        return Poll::Pending;
    };
    let wait = held.wait.get_or_insert_with(|| {
        let shared = shared.clone();
        let left = STORE_WAIT.saturating_sub(since.elapsed());
        Box::pin(async move { shared.router.durably_stored(mark, left).await })
    });
    match wait.as_mut().poll(cx) {
        Poll::Ready(_) => {
            held.wait = None;
            Poll::Ready(())
        }
        Poll::Pending => Poll::Pending,
    }
}
