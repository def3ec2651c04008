//! Persistent sessions: what a session leaves behind, its expiry, and clearing it in the router.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::{OutMsg, Outbound, Subscription};
use crate::mqtt::state::Shared;
use crate::router::{Router, RouterLink, SessionKey, SessionMode};

/// The front-end's half of a persistent session while its client is away (the router keeps
/// the other half: its subscriptions and its place in each filter's log).
pub(crate) struct SavedSession {
    pub(super) subs: Vec<Subscription>,
    pub(super) inflight: HashMap<u16, (Outbound, OutMsg)>,
    pub(super) qos2_in: HashSet<u16>,
    pub(super) next_pkid: u16,
    generation: u64,
}

impl SavedSession {
    pub(super) fn new(
        subs: Vec<Subscription>,
        inflight: HashMap<u16, (Outbound, OutMsg)>,
        qos2_in: HashSet<u16>,
        next_pkid: u16,
    ) -> Self {
        Self {
            subs,
            inflight,
            qos2_in,
            next_pkid,
            generation: 0,
        }
    }
}

/// Saved sessions by router-side id.
#[derive(Default)]
pub(crate) struct SessionStore {
    saved: Mutex<HashMap<String, SavedSession>>,
    generation: AtomicU64,
}

impl SessionStore {
    /// Takes a saved session out (a session resumes it, or a clean one discards it).
    pub(crate) fn take(&self, id: &str) -> Option<SavedSession> {
        self.saved.lock().remove(id)
    }

    /// Saves a session; returns its generation, which its expiry timer must still find.
    pub(super) fn save(&self, id: String, mut session: SavedSession) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        session.generation = generation;
        self.saved.lock().insert(id, session);
        generation
    }

    fn remove_if(&self, id: &str, generation: u64) -> bool {
        let mut saved = self.saved.lock();
        if saved.get(id).is_some_and(|s| s.generation == generation) {
            saved.remove(id);
            return true;
        }
        false
    }
}

/// Drops a session's state in the router: a clean attach replaces it, and detaches.
pub(crate) async fn clear_in_router<R: Router>(router: &R, key: &SessionKey) {
    match router.attach(key, SessionMode::Clean).await {
        Ok((link, _)) => link.detach(),
        Err(e) => tracing::warn!(error = %e, "could not clear an expired session in the router"),
    }
}

/// Expires a saved session after `after`, unless a client resumed it meanwhile.
pub(super) fn expire_later<R: Router>(
    shared: Arc<Shared<R>>,
    key: SessionKey,
    generation: u64,
    after: Duration,
) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let id = key.router_id();
        // A live session owns the id now; it took (or discarded) the saved state.
        let Some(mut registration) = shared.registry.register_if_idle(id.clone()) else {
            return;
        };
        if !registration
            .predecessor_gone(shared.config.takeover_wait)
            .await
        {
            return;
        }
        if shared.sessions.remove_if(&id, generation) {
            clear_in_router(&shared.router, &key).await;
        }
        drop(registration);
    });
}
