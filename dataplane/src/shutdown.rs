//! A pod's graceful drain on SIGTERM: it stops accepting, stops reading (so nothing more is
//! acknowledged), lets what it accepted reach the router, the bus and the history stream, says
//! goodbye to every client, and returns within a bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::NatsBus;
use crate::ingress::Phase;
use crate::mqtt::Broker;
use crate::router::Router;

/// How long connections are given, once quiet, for what the router already took in to reach
/// their clients before they are closed.
const SETTLE: Duration = Duration::from_millis(300);

/// How long the drain waits for each step; the whole drain is bounded by `timeout`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DrainConfig {
    /// The bound of the whole drain (`--drain-timeout-secs`).
    pub(crate) timeout: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
        }
    }
}

/// What a drain did, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// MQTT sessions live when the drain began.
    pub sessions: usize,
    /// Those still live when it gave up (0 unless the bound was reached).
    pub sessions_left: usize,
    /// Whether the bus (and the history stream) took everything before the bound.
    pub flushed: bool,
}

/// Drains `shared` once the listeners are stopped: quiet, settle, close, wait, flush.
pub(crate) async fn drain<R: Router>(
    shared: &Arc<Broker<R>>,
    bus: Option<&NatsBus>,
    config: DrainConfig,
) -> DrainReport {
    let deadline = Instant::now() + config.timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let sessions = shared.registry.len();
    tracing::info!(sessions, timeout = ?config.timeout, "draining: no more reads or acks");
    shared.drain.enter(Phase::Quiet);
    // Twice: the first answer says the router took in what sessions handed it, the second
    // that it also ran the deliveries that followed.
    shared.router.caught_up(left()).await;
    shared.router.caught_up(left()).await;
    tokio::time::sleep(SETTLE.min(left())).await;
    shared.drain.enter(Phase::Closing);
    while shared.registry.len() > 0 && !left().is_zero() {
        tokio::time::sleep(Duration::from_millis(20).min(left())).await;
    }
    let sessions_left = shared.registry.len();
    shared
        .drain
        .ended(sessions.saturating_sub(sessions_left) as u64);
    // What sessions handed the router on their way out (wills) reaches it before the flush.
    shared.router.caught_up(left()).await;
    let bus_flushed = match bus {
        Some(bus) => bus.flush(left()).await,
        None => true,
    };
    let history_flushed = shared.history.flush(left()).await;
    let report = DrainReport {
        sessions,
        sessions_left,
        flushed: bus_flushed && history_flushed,
    };
    if sessions_left > 0 || !report.flushed {
        tracing::warn!(
            sessions,
            sessions_left,
            bus_flushed,
            history_flushed,
            "the drain reached --drain-timeout-secs; what was left is dropped"
        );
    } else {
        tracing::info!(
            sessions,
            "drained: every session ended and the bus is flushed"
        );
    }
    report
}
