//! Persistent sessions: what a session leaves behind, its expiry, clearing it in the router,
//! and dropping what a deleted subject or channel left.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetward_policy::{Snapshot, Subject, SubjectKind};
use parking_lot::Mutex;

use super::subscriptions::Subs;
use super::{OutMsg, Outbound};
use crate::mqtt::state::Shared;
use crate::router::{Router, RouterLink, SessionKey, SessionMode};

/// The front-end's half of a persistent session while its client is away (the router keeps
/// the other half: its subscriptions and its place in each filter's log).
pub(crate) struct SavedSession {
    pub(super) subs: Subs,
    pub(super) inflight: HashMap<u16, (Outbound, OutMsg)>,
    pub(super) qos2_in: HashSet<u16>,
    pub(super) next_pkid: u16,
    generation: u64,
}

impl SavedSession {
    pub(super) fn new(
        subs: Subs,
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

    /// Takes out of a saved session the subscriptions whose channel is gone; their router
    /// filters. `None` if the session is no longer the one saved with `generation`.
    fn drop_channels_gone(
        &self,
        id: &str,
        generation: u64,
        snapshot: &Snapshot,
    ) -> Option<Vec<String>> {
        let mut saved = self.saved.lock();
        let session = saved.get_mut(id).filter(|s| s.generation == generation)?;
        Some(session.subs.remove_where(|matcher| {
            let c = crate::router::channel_key(matcher);
            let mut levels = c.split('/');
            let (Some("m"), Some(tenant), Some("c"), Some(channel)) =
                (levels.next(), levels.next(), levels.next(), levels.next())
            else {
                return true;
            };
            snapshot.channel(tenant, channel).is_none()
        }))
    }

    fn is_saved(&self, id: &str, generation: u64) -> bool {
        self.saved
            .lock()
            .get(id)
            .is_some_and(|s| s.generation == generation)
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

/// Whether the subject still exists (disabled or not): deleting a thing or user, or its
/// tenant, drops its saved sessions.
fn subject_exists(snapshot: &Snapshot, subject: &Subject) -> bool {
    snapshot.tenant(&subject.tenant).is_some()
        && match subject.kind {
            SubjectKind::Thing => snapshot.thing(&subject.tenant, &subject.name).is_some(),
            SubjectKind::User => snapshot.user(&subject.tenant, &subject.name).is_some(),
        }
}

/// Keeps a saved session until it expires after `after` or a client resumes it. Meanwhile, on
/// every policy snapshot: a deleted subject drops it; a deleted channel drops its subscriptions
/// there, with what the router queued for them, so a channel created again starts empty.
pub(super) fn expire_later<R: Router>(
    shared: Arc<Shared<R>>,
    key: SessionKey,
    subject: Subject,
    generation: u64,
    after: Duration,
) {
    tokio::spawn(async move {
        let id = key.router_id();
        let expiry = tokio::time::sleep(after);
        tokio::pin!(expiry);
        let mut policy = shared.policy.clone();
        // The snapshot at save time counts too: the subject may be why the session ended.
        policy.mark_changed();
        loop {
            tokio::select! {
                () = &mut expiry => break,
                changed = policy.changed() => {
                    if changed.is_err() {
                        // No more snapshots: only the expiry is left to wait for.
                        (&mut expiry).await;
                        break;
                    }
                    let snapshot = policy.borrow_and_update().clone();
                    if !subject_exists(&snapshot, &subject) {
                        if drop_saved(&shared, &key, generation).await {
                            shared.metrics.refused("session", "subject_deleted");
                        }
                        return;
                    }
                    match shared.sessions.drop_channels_gone(&id, generation, &snapshot) {
                        None => return,
                        Some(gone) if gone.is_empty() => {}
                        Some(gone) => {
                            unsubscribe_saved(&shared, &key, generation, &gone).await;
                            shared.metrics.refused("session", "channel_deleted");
                        }
                    }
                }
            }
        }
        drop_saved(&shared, &key, generation).await;
    });
}

/// Drops a saved session, front-end and router halves, unless a live session holds its id or
/// it was saved again since. Whether it was dropped.
async fn drop_saved<R: Router>(shared: &Arc<Shared<R>>, key: &SessionKey, generation: u64) -> bool {
    let id = key.router_id();
    let Some(mut registration) = idle_registration(shared, &id, generation).await else {
        return false;
    };
    if !registration
        .predecessor_gone(shared.config.takeover_wait)
        .await
    {
        return false;
    }
    let dropped = shared.sessions.remove_if(&id, generation);
    if dropped {
        clear_in_router(&shared.router, key).await;
    }
    drop(registration);
    dropped
}

/// The id's registration once no live session holds it, while the session saved with
/// `generation` is still saved; `None` once a client resumed it (or it was saved again). The
/// session that saved it may still be ending: then this waits.
async fn idle_registration<R: Router>(
    shared: &Arc<Shared<R>>,
    id: &str,
    generation: u64,
) -> Option<crate::mqtt::state::Registration> {
    loop {
        if !shared.sessions.is_saved(id, generation) {
            return None;
        }
        if let Some(r) = shared.registry.register_if_idle(id.to_owned()) {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes router filters from a saved session in the router: its queue for them goes.
async fn unsubscribe_saved<R: Router>(
    shared: &Arc<Shared<R>>,
    key: &SessionKey,
    generation: u64,
    filters: &[String],
) {
    let Some(mut registration) = idle_registration(shared, &key.router_id(), generation).await
    else {
        return;
    };
    if !registration
        .predecessor_gone(shared.config.takeover_wait)
        .await
    {
        return;
    }
    match shared.router.attach(key, SessionMode::Persistent).await {
        Ok((mut link, _)) => {
            for f in filters {
                let _ = link.unsubscribe(f);
            }
            link.detach();
        }
        Err(e) => tracing::warn!(error = %e, "could not drop a deleted channel's queue"),
    }
    drop(registration);
}
