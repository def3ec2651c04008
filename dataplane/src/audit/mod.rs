//! The audit trail: one structured event for every refusal on every protocol (docs/audit.md).
//!
//! Adapters report a refusal through [`Audit::refused`] only. Events are limited per subject
//! (a GCRA per subject in a bounded cache), and what is held back is counted into the next
//! event of that subject, or into a summary event when the subject goes quiet. Each event is
//! written as one JSON line under the tracing target [`TARGET`], and kept in a bounded ring per
//! tenant that the tenant's admins read with `GET /audit` (`http/audit.rs`).

mod event;
mod ring;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fleetward_policy::{Snapshot, SubjectKind};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::metrics::Metrics;

pub(crate) use event::{Action, Event, Protocol, Refusal};
pub(crate) use ring::{DEFAULT_PAGE, Filter, Page};

/// The tracing target audit events are written under, one JSON object per line.
pub const TARGET: &str = "fleetward::audit";

/// How many events one subject may emit at once before the rest are held back.
pub const BURST_PER_SUBJECT: u32 = 10;
/// How many events per minute one subject emits after its burst.
pub const EVENTS_PER_SUBJECT_PER_MINUTE: u32 = 10;
/// Subjects whose limits are tracked at once; the least recently refused is forgotten first.
pub const MAX_SUBJECTS: u64 = 100_000;
/// How often held-back counts of quiet subjects are written as summary events.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// How often a refused CONNECT is logged for people (at info), per subject.
const CONNECT_LOG_EVERY: Duration = Duration::from_secs(60);
/// Events waiting to be published on their tenant's audit channel; past it they are dropped
/// from the channel (never from the log or the ring) and counted.
pub const CHANNEL_BACKLOG: usize = 1024;

/// An event on its way to `m/<tenant>/c/$audit`: the tenant and the JSON line.
pub(crate) type ChannelEvent = (String, bytes::Bytes);

/// One subject's limit and what it held back.
struct SubjectWindow {
    limiter: DefaultDirectRateLimiter,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Refusals held back since the subject's last event.
    count: u64,
    /// The last refusal held back, for a summary if the subject goes quiet.
    last: Option<Event>,
    /// When a refused CONNECT of this subject was last logged for people.
    connect_logged: Option<Instant>,
}

/// The pod's audit trail.
pub(crate) struct Audit {
    pod: Arc<str>,
    next_id: AtomicU64,
    /// Bounded: a flood of made-up subject names evicts the least recently seen windows
    /// instead of growing the pod (`governor`'s keyed limiter has no bound of its own).
    subjects: moka::sync::Cache<String, Arc<SubjectWindow>>,
    quota: Quota,
    rings: ring::Rings,
    policy: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    /// Where kept events go to be published on their tenant's audit channel, once the
    /// dataplane runs [`publish_on_channels`].
    channel: std::sync::OnceLock<tokio::sync::mpsc::Sender<ChannelEvent>>,
}

impl Audit {
    /// An audit trail of the pod named `pod`; events are kept for the tenants `policy` has.
    pub(crate) fn new(
        pod: &str,
        policy: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let burst = NonZeroU32::new(BURST_PER_SUBJECT).unwrap_or(NonZeroU32::MIN);
        let rate = NonZeroU32::new(EVENTS_PER_SUBJECT_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        Self {
            pod: pod.into(),
            next_id: AtomicU64::new(1),
            subjects: moka::sync::Cache::builder()
                .max_capacity(MAX_SUBJECTS)
                .build(),
            quota: Quota::per_minute(rate).allow_burst(burst),
            rings: ring::Rings::default(),
            policy,
            metrics,
            channel: std::sync::OnceLock::new(),
        }
    }

    /// Reports a refusal: one event, unless the subject is over its limit (then counted into
    /// its next one). Also logs it for people: a CONNECT at info once per subject per minute,
    /// anything else at debug.
    pub(crate) fn refused(&self, r: Refusal<'_>) {
        let kind = r.kind.map(SubjectKind::as_str).unwrap_or("");
        let key = format!("{}\0{kind}\0{}", r.tenant, r.subject);
        let window = self.subjects.get_with_by_ref(&key, || {
            Arc::new(SubjectWindow {
                limiter: RateLimiter::direct(self.quota),
                held: Mutex::default(),
            })
        });
        self.log_for_people(&r, &window);
        if window.limiter.check().is_err() {
            let mut held = window.held.lock();
            held.count += 1;
            held.last = Some(self.event(&r, 0));
            drop(held);
            self.metrics.audit_suppressed();
            return;
        }
        let suppressed = {
            let mut held = window.held.lock();
            held.last = None;
            std::mem::take(&mut held.count)
        };
        self.emit(self.event(&r, suppressed));
    }

    /// Records a Thing made through a provisioning claim: one event (reason `provisioned`),
    /// never held back (the claim's count bounds them).
    pub(crate) fn provisioned(
        &self,
        tenant: &str,
        thing: &str,
        claim: &str,
        client: Option<std::net::SocketAddr>,
    ) {
        let r = Refusal {
            tenant,
            kind: Some(SubjectKind::Thing),
            subject: thing,
            action: Action::Provision,
            topic: Some(claim),
            reason: "provisioned",
            protocol: Protocol::Http,
            client,
        };
        tracing::info!(subject = %format_args!("{tenant}/{thing}"), claim, "provisioned a thing");
        self.emit(self.event(&r, 0));
    }

    /// Writes a summary event for every subject that held refusals back and has not emitted
    /// since: a device that floods then stops still shows how many it sent.
    pub(crate) fn summarize(&self) {
        for (_, window) in self.subjects.iter() {
            let mut held = window.held.lock();
            if held.count == 0 {
                continue;
            }
            let count = std::mem::take(&mut held.count);
            let Some(mut event) = held.last.take() else {
                continue;
            };
            drop(held);
            event.id = self.next_id.fetch_add(1, Ordering::Relaxed);
            event.suppressed = count;
            event.summary = true;
            self.emit(event);
        }
    }

    /// The events of `tenant` kept on this pod that match `filter`, newest first.
    pub(crate) fn query(&self, tenant: &str, filter: &Filter) -> Page {
        self.rings.query(tenant, filter)
    }

    fn event(&self, r: &Refusal<'_>, suppressed: u64) -> Event {
        let at = SystemTime::now();
        Event {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            time: chrono::DateTime::<chrono::Utc>::from(at)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            at,
            tenant: r.tenant.to_owned(),
            subject_kind: r.kind.map(SubjectKind::as_str),
            subject: r.subject.to_owned(),
            action: r.action,
            topic: r.topic.map(str::to_owned),
            reason: r.reason.to_owned(),
            protocol: r.protocol,
            client: r.client.map(|a| a.to_string()),
            pod: self.pod.to_string(),
            suppressed,
            summary: false,
        }
    }

    /// Writes one event to the log and keeps it for its tenant, if the tenant exists (events
    /// of made-up tenants are logged only, so they cannot take a real tenant's room).
    fn emit(&self, event: Event) {
        let line = match serde_json::to_string(&event) {
            // The message is the JSON object alone: one event, one line, whatever the client
            // sent (serde_json escapes control characters).
            Ok(line) => {
                tracing::info!(target: TARGET, "{line}");
                Some(line)
            }
            Err(e) => {
                tracing::warn!(error = %e, "an audit event could not be written as JSON");
                None
            }
        };
        self.metrics.audit_emitted();
        let known = self.policy.borrow().tenant(&event.tenant).is_some();
        if !known {
            return;
        }
        // The log line is the channel's payload too: serialized once.
        if let (Some(tx), Some(line)) = (self.channel.get(), line) {
            let full = tx.try_send((event.tenant.clone(), line.into())).is_err();
            if full {
                self.metrics.audit_channel_dropped();
            }
        }
        self.rings.push(event);
    }

    fn log_for_people(&self, r: &Refusal<'_>, window: &SubjectWindow) {
        let who = format_args!("{}/{}", r.tenant, r.subject);
        if r.action != Action::Connect {
            tracing::debug!(
                subject = %who,
                action = r.action.as_str(),
                topic = r.topic.unwrap_or(""),
                reason = r.reason,
                "refused"
            );
            return;
        }
        let now = Instant::now();
        {
            let mut held = window.held.lock();
            if held
                .connect_logged
                .is_some_and(|at| now.duration_since(at) < CONNECT_LOG_EVERY)
            {
                return;
            }
            held.connect_logged = Some(now);
        }
        let client = r.client.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            subject = %who,
            %client,
            reason = %r.reason,
            "refused a connection (logged once a minute per subject; the audit trail has each one)"
        );
    }
}

/// Publishes every kept event on its tenant's audit channel, `m/<tenant>/c/$audit`
/// ([`fleetward_policy::AUDIT_CHANNEL`]), through the router, so the tenant's admins
/// subscribed on any pod receive it: QoS 0, not retained, published by no subject. Runs as
/// long as the dataplane.
pub(crate) async fn publish_on_channels(
    audit: Arc<Audit>,
    publish: impl Fn(crate::router::Message) -> Result<(), crate::router::RouterError>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(CHANNEL_BACKLOG);
    if audit.channel.set(tx).is_err() {
        // Another task publishes already.
        return std::future::pending().await;
    }
    while let Some((tenant, payload)) = rx.recv().await {
        let topic = format!("m/{tenant}/c/{}", fleetward_policy::AUDIT_CHANNEL);
        let created_ns = crate::router::now_ns();
        let message = crate::router::Message {
            stored: false,
            topic: topic.into(),
            payload,
            qos: 0,
            props: None,
            retain: false,
            origin: None,
            publisher: None,
            protocol: crate::router::Protocol::Unspecified,
            created_ns,
            id: crate::router::MessageId::new(created_ns),
        };
        if let Err(e) = publish(message) {
            // The router refuses only while the dataplane stops; the event is logged and kept.
            tracing::debug!(error = %e, "an audit event was not published on its audit channel");
        }
    }
}

/// Writes the summaries of quiet subjects every [`SUMMARY_EVERY`], until dropped.
pub(crate) async fn summarize_every(audit: Arc<Audit>) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        audit.summarize();
    }
}

/// The pod's name: `--node-id` / `POD_NAME` when given, else the host's name.
pub(crate) fn pod_name(node_id: Option<&str>) -> String {
    if let Some(id) = node_id.filter(|id| !id.is_empty()) {
        return id.to_owned();
    }
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.is_empty()
    {
        return name;
    }
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "dataplane".to_owned())
}

#[cfg(test)]
mod tests;
