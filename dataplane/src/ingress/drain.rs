//! The pod's drain, as every adapter's connections see it: serving, then quiet (nothing more
//! is read, so nothing more is accepted or acknowledged), then closing (each connection says
//! goodbye in its protocol's words and ends).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// Where a pod's drain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Not draining.
    Serving,
    /// Connections stop reading: what they already accepted is routed and delivered, and
    /// nothing more comes in.
    Quiet,
    /// Connections end: v5 MQTT clients are sent DISCONNECT 0x8B (or 0x9C), WebSocket streams
    /// close 1001.
    Closing,
}

/// The drain's phase, shared by every connection of the pod.
pub(crate) struct Drain {
    phase: watch::Sender<Phase>,
    /// Where v5 clients are told to go instead (DISCONNECT 0x9C, Server Reference), if set.
    server_reference: Option<String>,
    /// MQTT sessions the drain ended, for `/metrics`.
    sessions_ended: AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Serving),
            server_reference: None,
            sessions_ended: AtomicU64::new(0),
        }
    }
}

impl Drain {
    /// A drain that sends v5 clients to `server_reference` (`host:port`), if given.
    pub(crate) fn new(server_reference: Option<String>) -> Self {
        Self {
            server_reference,
            ..Self::default()
        }
    }

    /// Moves the drain on to `phase` (never back).
    pub(crate) fn enter(&self, phase: Phase) {
        self.phase.send_if_modified(|now| {
            let later = phase > *now;
            if later {
                *now = phase;
            }
            later
        });
    }

    /// The phase now.
    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Whether connections still read what their clients send.
    pub(crate) fn reading(&self) -> bool {
        self.phase() == Phase::Serving
    }

    /// Counts MQTT sessions the drain ended.
    pub(crate) fn ended(&self, sessions: u64) {
        self.sessions_ended.fetch_add(sessions, Ordering::Relaxed);
    }

    /// MQTT sessions the drain ended so far.
    pub(crate) fn sessions_ended(&self) -> u64 {
        self.sessions_ended.load(Ordering::Relaxed)
    }

    /// The server reference v5 clients are given, if any.
    pub(crate) fn server_reference(&self) -> Option<&str> {
        self.server_reference.as_deref()
    }

    /// A connection's view of the drain.
    pub(crate) fn watch(&self) -> DrainWatch {
        let mut rx = self.phase.subscribe();
        if *rx.borrow() != Phase::Serving {
            rx.mark_changed();
        }
        DrainWatch { rx }
    }
}

/// One connection's view of the drain: it wakes when the phase moves on.
pub(crate) struct DrainWatch {
    rx: watch::Receiver<Phase>,
}

impl DrainWatch {
    /// The next phase past the last one seen (a connection made while draining sees the phase
    /// it was made in at once).
    pub(crate) async fn next(&mut self) -> Phase {
        if self.rx.changed().await.is_err() {
            // The pod is going away without a drain: nothing to wait for.
            return std::future::pending().await;
        }
        *self.rx.borrow_and_update()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn the_phase_only_moves_on_and_each_watch_sees_it_once() {
        let drain = Drain::default();
        let mut watch = drain.watch();
        assert!(drain.reading());
        assert!(watch.next().now_or_never().is_none());
        drain.enter(Phase::Quiet);
        assert!(!drain.reading());
        assert_eq!(watch.next().await, Phase::Quiet);
        assert!(watch.next().now_or_never().is_none());
        drain.enter(Phase::Serving);
        assert_eq!(drain.phase(), Phase::Quiet, "a drain is never undone");
        drain.enter(Phase::Closing);
        assert_eq!(watch.next().await, Phase::Closing);
    }

    #[tokio::test]
    async fn a_connection_made_while_draining_sees_the_phase_at_once() {
        let drain = Drain::new(Some("other:1883".into()));
        drain.enter(Phase::Closing);
        let mut watch = drain.watch();
        assert_eq!(watch.next().now_or_never(), Some(Phase::Closing));
        assert_eq!(drain.server_reference(), Some("other:1883"));
    }
}
