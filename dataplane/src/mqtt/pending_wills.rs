//! A will, and the wills of ended sessions waiting out their v5 delay (bounded per tenant).

use std::sync::Arc;
use std::time::Duration;

use fleetward_policy::Subject;
use foldhash::HashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::ingress::{Ingress, PublishRequest};
use crate::router::{Message, Protocol, Publisher, Router};

/// A will, published by the front-end when the session ends uncleanly.
pub(crate) struct Will {
    pub message: Message,
    pub retain: bool,
    pub delay: Duration,
}

/// A waiting will as the session file keeps it across a restart: its message, and when it is
/// due (whose it is, its id says).
#[derive(Clone)]
pub(crate) struct KeptWill {
    pub message: Message,
    pub retain: bool,
    pub due: std::time::Instant,
}

impl KeptWill {
    /// What of `will` is kept while it waits.
    pub(crate) fn of(will: &Will) -> Self {
        let now = std::time::Instant::now();
        Self {
            message: will.message.clone(),
            retain: will.retain,
            due: now.checked_add(will.delay).unwrap_or(now),
        }
    }
}

/// Wills waiting out their v5 delay after their connection ended, by router-side id, and how
/// many each tenant has: each holds its message with no connection, so a tenant holds at most
/// `--max-pending-wills-per-tenant` of them (MQTT.md, Wills).
#[derive(Default)]
pub(crate) struct PendingWills {
    inner: Mutex<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    /// By id: the tenant, the task, and what tells the task to send the will now.
    by_id: HashMap<String, (String, AbortHandle, Arc<Notify>)>,
    /// By id: the will itself, for the session file.
    kept: HashMap<String, KeptWill>,
    per_tenant: HashMap<String, usize>,
}

impl PendingInner {
    fn forget(&mut self, id: &str) -> Option<AbortHandle> {
        let (tenant, handle, _) = self.by_id.remove(id)?;
        self.kept.remove(id);
        if let Some(n) = self.per_tenant.get_mut(&tenant) {
            *n -= 1;
            if *n == 0 {
                self.per_tenant.remove(&tenant);
            }
        }
        Some(handle)
    }
}

impl PendingWills {
    /// Takes a place for a will of `tenant` that waits, to be filled by [`PendingWills::insert`];
    /// `false` when the tenant already has `max` (then the will goes out at once instead).
    /// Taken under the same lock as the count, so wills ending together cannot pass `max`.
    pub(crate) fn reserve(&self, tenant: &str, max: usize) -> bool {
        let mut inner = self.inner.lock();
        let n = inner.per_tenant.entry(tenant.to_owned()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                inner.per_tenant.remove(tenant);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Keeps the task of a waiting will in the place [`PendingWills::reserve`] took (a will
    /// the id had before is aborted, and its place given back); `now` tells the task to stop
    /// waiting.
    pub(crate) fn insert(
        &self,
        id: String,
        tenant: &str,
        task: AbortHandle,
        now: Arc<Notify>,
        will: KeptWill,
    ) {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.forget(&id) {
            old.abort();
        }
        inner.kept.insert(id.clone(), will);
        inner.by_id.insert(id, (tenant.to_owned(), task, now));
    }

    /// The wills waiting now, by id (the session file writes them at shutdown).
    pub(crate) fn kept(&self) -> Vec<(String, KeptWill)> {
        let inner = self.inner.lock();
        inner
            .kept
            .iter()
            .map(|(id, w)| (id.clone(), w.clone()))
            .collect()
    }

    /// Sends the will of `id` now, if one waits: its session ended before its delay did (MQTT 5,
    /// 3.1.3.2.2), dropped for its tenant's `--max-saved-sessions-per-tenant` or its subject.
    pub(crate) fn send_now(&self, id: &str) {
        if let Some((_, _, now)) = self.inner.lock().by_id.get(id) {
            // A permit if the task is not waiting yet: it then does not wait at all.
            now.notify_one();
        }
    }

    /// Forgets the will of `id` (it went out); its task, to abort when it is cancelled.
    pub(crate) fn remove(&self, id: &str) -> Option<AbortHandle> {
        self.inner.lock().forget(id)
    }

    /// Wills waiting on this pod.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().by_id.len()
    }
}

/// Publishes a will now, if the subject may still publish there (authorized as any publish).
pub(crate) fn send_will<R: Router>(
    shared: &Ingress<R>,
    subject: &Subject,
    message: Message,
    retain: bool,
) {
    let snapshot = shared.snapshot();
    let request = PublishRequest {
        topic: message.topic,
        payload: message.payload,
        qos: message.qos,
        retain,
        props: message.props,
        origin: None,
        protocol: Protocol::Mqtt,
        created_ns: crate::router::now_ns(),
    };
    let publisher = Publisher::of(subject);
    if let Err(refusal) = shared.publish(&snapshot, subject, &publisher, request, None) {
        let (_, label) = refusal.labels();
        shared.metrics.refused("will", label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_wills_are_counted_per_tenant() {
        let wills = PendingWills::default();
        let task = || tokio::spawn(std::future::pending::<()>()).abort_handle();
        let now = Arc::<Notify>::default;
        let kept = || {
            let will = Will {
                message: crate::router::Message {
                    stored: false,
                    topic: "m/a/c/c/will".into(),
                    payload: "gone".into(),
                    qos: 1,
                    props: None,
                    retain: false,
                    origin: None,
                    publisher: None,
                    protocol: crate::router::Protocol::Mqtt,
                    created_ns: 0,
                    id: crate::router::MessageId::floor(0),
                },
                retain: false,
                delay: Duration::from_secs(5),
            };
            KeptWill::of(&will)
        };
        for n in 1..=2 {
            assert!(wills.reserve("a", 2));
            wills.insert(format!("a:thing:x:{n}"), "a", task(), now(), kept());
        }
        assert!(!wills.reserve("a", 2), "a is full");
        assert!(!wills.reserve("c", 0), "a cap of 0 holds none");
        // The same id again replaces its will (aborting the old task), in one place.
        let old = task();
        assert!(wills.reserve("b", 2));
        wills.insert("b:thing:y:1".into(), "b", old.clone(), now(), kept());
        assert!(wills.reserve("b", 2));
        wills.insert("b:thing:y:1".into(), "b", task(), now(), kept());
        tokio::task::yield_now().await;
        assert!(old.is_finished());
        assert_eq!(wills.len(), 3);
        assert_eq!(wills.kept().len(), 3, "one kept per waiting will");
        assert!(wills.reserve("b", 2), "b holds one");
        assert!(wills.remove("a:thing:x:1").is_some());
        assert!(wills.reserve("a", 2), "a's place came back");
        assert!(wills.remove("a:thing:x:1").is_none());
        assert!(!wills.inner.lock().per_tenant.contains_key("c"));
    }
}
