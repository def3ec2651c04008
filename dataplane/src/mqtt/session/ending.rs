//! How a session ends: kept for a resume or cleared in the router, and its will sent (after
//! its delay, if the subject may still publish there).

use std::sync::Arc;
use std::time::Duration;

use fleetward_policy::Subject;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{End, Session};
use super::persist::{self, clear_in_router};
use crate::mqtt::broker::Broker;
use crate::mqtt::pending_wills::{KeptWill, Will};
use crate::mqtt::saved::SavedSession;
use crate::router::{Router, RouterLink};

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
    /// Runs the session until the connection ends, then keeps or clears what it leaves.
    /// By reference: an `async fn` keeps its arguments in its future, and a session moved in
    /// would be there twice.
    pub(crate) async fn run(&mut self) {
        let end = self.serve().await;
        self.count_delivered();
        tracing::debug!(client = %self.acc.key.router_id(), ?end, "session ended");
        let shared = self.shared.clone();
        if self.acc.registration.abandoned() {
            // Its successor stopped waiting and owns the router session, the saved state and
            // the will's place now. The link goes without a word to the router (it already
            // handed its connection to the successor, ROUTER.md §2.6), and what it held is
            // released, not saved over the successor's routes.
            if let Some(link) = self.link.take() {
                link.abandon();
            }
            return;
        }
        if self.durable.is_some() {
            // Kept in JetStream, not on this pod; and so is a will waiting out its delay.
            Box::pin(self.durable_finish(end)).await;
            return;
        }
        if !self.acc.expiry.is_zero() {
            // Persistent: keep our half; the router keeps its half on detach.
            let saved = SavedSession::new(
                std::mem::take(&mut self.subs),
                std::mem::take(&mut self.inflight),
                std::mem::take(&mut self.qos2_in),
                self.next_pkid,
            );
            if let Some(link) = self.link.take() {
                (*link).detach();
            }
            let saved = shared.sessions.save(
                self.acc.key.router_id(),
                &self.acc.subject.tenant,
                saved,
                shared.config.max_saved_sessions_per_tenant,
            );
            persist::expire_later(
                shared.clone(),
                self.acc.key.clone(),
                self.acc.subject.clone(),
                saved,
                self.acc.expiry,
            );
        } else if let Some(link) = self.link.take() {
            (*link).detach();
            if self.acc.persistent_link {
                // A resumed session that is not kept after this connection. Boxed: rare, and
                // the router's attach should not size every session.
                Box::pin(clear_in_router(&shared.router, &self.acc.key)).await;
            }
        }
        if let (End::Unclean | End::CleanWithWill, Some(mut will)) = (end, self.acc.will.take()) {
            // Never after the session's end (MQTT 5, 3.1.3.2.2): no expiry sends it at once.
            // The expiry is the one in force now, which a DISCONNECT may have changed.
            will.delay = will.delay.min(self.acc.expiry);
            publish_will(
                self.shared.clone(),
                self.acc.subject.clone(),
                self.acc.key.router_id(),
                *will,
            );
        }
    }
}

/// Publishes a will after its delay, if the subject may still publish there. A will whose
/// tenant already has `max_pending_wills_per_tenant` waiting goes out at once.
pub(crate) fn publish_will<R: Router>(
    shared: Arc<Broker<R>>,
    subject: Subject,
    id: String,
    mut will: Will,
) {
    if !will.delay.is_zero()
        && !shared
            .pending_wills
            .reserve(&subject.tenant, shared.config.max_pending_wills_per_tenant)
    {
        shared.metrics.refused("will", "tenant_pending_wills_full");
        will.delay = Duration::ZERO;
    }
    let delay = will.delay;
    let kept = (!delay.is_zero()).then(|| KeptWill::of(&will));
    let task_shared = shared.clone();
    let task_id = id.clone();
    let subject_tenant = subject.tenant.clone();
    let now = Arc::new(tokio::sync::Notify::new());
    let told = now.clone();
    let task = tokio::spawn(async move {
        let shared = task_shared;
        if !will.delay.is_zero() {
            // The delay, or less if the session ends first (`PendingWills::send_now`).
            tokio::select! {
                () = tokio::time::sleep(will.delay) => {}
                () = told.notified() => {}
            }
            shared.pending_wills.remove(&task_id);
        }
        crate::mqtt::pending_wills::send_will(&shared, &subject, will.message, will.retain);
    });
    if let Some(kept) = kept {
        shared
            .pending_wills
            .insert(id, &subject_tenant, task.abort_handle(), now, kept);
    }
}
