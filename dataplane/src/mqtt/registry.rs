//! Live MQTT sessions by router-side id: a new connection with the same id takes the old one
//! over, waiting a bounded time for it to end.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why a live session is told to end by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kick {
    /// A new connection with the same thing and client id arrived.
    TakenOver,
}

/// A registered session's two signals: it is told to end, and it is gone. One small
/// allocation per connection (channels for the two took about 900 bytes).
#[derive(Default)]
struct Signals {
    /// A new connection with the same id took the session over.
    taken_over: AtomicBool,
    /// The registration was dropped: the session is fully gone.
    gone: AtomicBool,
    /// The successor stopped waiting for this session: it must leave the router, the saved
    /// session and the will alone, since they are the successor's now.
    abandoned: AtomicBool,
    /// Wakes whoever waits for either.
    changed: Notify,
}

impl Signals {
    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until `flag` (one of this struct's) is raised. Cancel-safe.
    async fn wait(&self, flag: &AtomicBool) {
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the flag is read, so a raise in between is not missed.
            notified.as_mut().enable();
            if flag.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

struct RegEntry {
    conn: u64,
    /// When it registered (ns since the epoch): an announcement of an earlier CONNECT on
    /// another pod does not end it.
    since_ns: u64,
    signals: Arc<Signals>,
}

/// Live sessions by router-side id, so a new connection ends the old one before it attaches
/// (the router must never do the takeover itself, dataplane/ROUTER.md §2.6).
#[derive(Default)]
pub(crate) struct Registry {
    entries: Mutex<HashMap<String, RegEntry>>,
    next: AtomicU64,
}

/// A session's place in the registry; dropping it ends the registration.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    id: String,
    conn: u64,
    /// This session's signals, shared with its registry entry. `gone` is raised on drop; a
    /// successor waits for that.
    signals: Arc<Signals>,
    /// The signals of the session this one replaced, until it is gone.
    previous: Option<Arc<Signals>>,
}

impl Registry {
    /// Registers `id`, telling any live session with that id to end.
    pub(crate) fn register(self: &Arc<Self>, id: String) -> Registration {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let signals = Arc::new(Signals::default());
        let old = self.entries.lock().insert(
            id.clone(),
            RegEntry {
                conn,
                since_ns: crate::router::now_ns(),
                signals: signals.clone(),
            },
        );
        let previous = old.map(|old| {
            old.signals.raise(&old.signals.taken_over);
            old.signals
        });
        Registration {
            registry: self.clone(),
            id,
            conn,
            signals,
            previous,
        }
    }

    /// Registers `id` only if no session holds it (for housekeeping such as expiry).
    pub(crate) fn register_if_idle(self: &Arc<Self>, id: String) -> Option<Registration> {
        if self.entries.lock().contains_key(&id) {
            return None;
        }
        Some(self.register(id))
    }

    /// Tells the live session with `id`, if any, to end: a CONNECT on another pod at
    /// `at_ns` (ns since the epoch) took it. A session that registered after that CONNECT is
    /// the newer one, and stays.
    pub(crate) fn kick(&self, id: &str, at_ns: u64) -> bool {
        let entries = self.entries.lock();
        let Some(entry) = entries.get(id).filter(|e| e.since_ns < at_ns) else {
            return false;
        };
        entry.signals.raise(&entry.signals.taken_over);
        true
    }

    /// Sessions registered now (a drain waits for none).
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

impl Registration {
    /// A number unique to this connection within the pod.
    pub(crate) fn conn(&self) -> u64 {
        self.conn
    }

    /// Completes when someone tells this session to end. Cancel-safe: a kick that came while
    /// no one waited is seen by the next wait.
    pub(crate) async fn kicked(&self) -> Kick {
        self.signals.wait(&self.signals.taken_over).await;
        Kick::TakenOver
    }

    /// Whether someone told this session to end (without waiting).
    pub(crate) fn was_kicked(&self) -> bool {
        self.signals.taken_over.load(Ordering::SeqCst)
    }

    /// Whether the successor stopped waiting for this session: what it would leave behind
    /// (router link, saved session, will) belongs to the successor now.
    pub(crate) fn abandoned(&self) -> bool {
        self.signals.abandoned.load(Ordering::SeqCst)
    }

    /// Waits until the session this one replaced (and its own predecessor) is gone, for at
    /// most `bound`. Returns `false` if it was abandoned instead: a session stuck on a
    /// client that does not read, or on its tenant's publish rate, cannot hold its successor.
    pub(crate) async fn predecessor_gone(&mut self, bound: Duration) -> bool {
        let mut gone = true;
        if let Some(prev) = &self.previous
            && tokio::time::timeout(bound, prev.wait(&prev.gone))
                .await
                .is_err()
        {
            prev.abandoned.store(true, Ordering::SeqCst);
            gone = false;
        }
        self.previous = None;
        gone
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut entries = self.registry.entries.lock();
            if entries.get(&self.id).is_some_and(|e| e.conn == self.conn) {
                entries.remove(&self.id);
            }
        }
        self.signals.raise(&self.signals.gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_registration_kicks_the_old_one_and_waits_for_it() {
        let reg = Arc::new(Registry::default());
        let first = reg.register("a".into());
        let mut second = reg.register("a".into());
        assert_eq!(first.kicked().await, Kick::TakenOver);
        let waiting = tokio::spawn(async move {
            second.predecessor_gone(Duration::from_secs(60)).await;
            second
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.expect("joins");
        assert_eq!(reg.len(), 1);
        drop(second);
        assert_eq!(reg.len(), 0);
    }

    #[tokio::test]
    async fn takeover_waits_a_bounded_time_then_abandons_the_old_session() {
        let reg = Arc::new(Registry::default());
        let first = reg.register("a".into());
        let mut second = reg.register("a".into());
        assert!(first.was_kicked());
        let started = std::time::Instant::now();
        assert!(!second.predecessor_gone(Duration::from_millis(100)).await);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(first.abandoned());
        // The old session ending late does not take the id from its successor.
        drop(first);
        assert_eq!(reg.len(), 1);
        let mut third = reg.register("a".into());
        drop(second);
        assert!(third.predecessor_gone(Duration::from_millis(100)).await);
    }
}
