//! Persistent sessions: what a session leaves behind, its expiry, clearing it in the router,
//! and dropping what a deleted (or deleted and re-created) subject or channel left.

use std::sync::Arc;
use std::time::Duration;

use fleetward_policy::{Snapshot, Subject, SubjectKind};
use tokio::sync::Notify;

use crate::mqtt::broker::Broker;
use crate::router::{Router, RouterLink, SessionKey, SessionMode};

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
/// every policy snapshot: a deleted subject drops it; a deleted channel, or one created again
/// (a new uid, also when no snapshot without it was seen), drops its subscriptions there,
/// with what the router queued for them, so a channel created again starts empty.
/// The tenant's oldest saved session is dropped early when it has more than
/// `max_saved_sessions_per_tenant` saved (`evict`). A session dropped early sends its waiting
/// will then; one that expires has sent it already (its delay is capped by the expiry).
pub(crate) fn expire_later<R: Router>(
    shared: Arc<Broker<R>>,
    key: SessionKey,
    subject: Subject,
    (generation, evict): (u64, Arc<Notify>),
    after: Duration,
) {
    if let Some(deadline) = std::time::Instant::now().checked_add(after) {
        let id = key.router_id();
        shared.sessions.set_deadline(&id, generation, deadline);
    }
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
                () = evict.notified() => {
                    if drop_saved(&shared, &key, generation).await {
                        shared.metrics.refused("session", "tenant_saved_sessions_full");
                        // A will never outlives its session (MQTT 5, 3.1.3.2.2).
                        shared.pending_wills.send_now(&id);
                    }
                    return;
                }
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
                            // Due now, and refused then as its subject is gone: it holds no
                            // place among its tenant's waiting wills any longer.
                            shared.pending_wills.send_now(&id);
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
async fn drop_saved<R: Router>(shared: &Arc<Broker<R>>, key: &SessionKey, generation: u64) -> bool {
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
    shared: &Arc<Broker<R>>,
    id: &str,
    generation: u64,
) -> Option<crate::mqtt::registry::Registration> {
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
    shared: &Arc<Broker<R>>,
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
