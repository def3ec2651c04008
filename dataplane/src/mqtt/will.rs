//! A CONNECT's will, checked as its publish would be: the will topic's grant, the tenant's and
//! the channel's `maxMessageSize` (payload and properties), the user-property cap, and its
//! delay capped by `--max-will-delay-secs`; and the wills waiting out their delay, counted per
//! tenant.

use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use bytes::Bytes;
use fleetward_policy::{
    Action, DenyReason, Mountpoint, Snapshot, Subject, TopicLimits, parse_topic_name,
};
use rumqttd::protocol::{ConnectReturnCode, LastWill, LastWillProperties};

use super::broker::Broker;
use super::codec::Version;
use super::reason;
use super::session::{Will, mount_response_topic, response_topic_is_protocol_error};
use crate::router::message_len;
use crate::router::{Message, MessageProps, Protocol, Router};

/// Why a will refuses its CONNECT: the CONNACK code and the metric label.
pub(crate) type WillRefusal = (ConnectReturnCode, &'static str);

/// The CONNACK code of a will over a size or count limit: v5 0x95 (packet too large); v3 has
/// no such code and gets 0x05 (not authorized), as for a will on a topic without a grant.
fn too_large(version: Version) -> ConnectReturnCode {
    match version {
        Version::V4 => ConnectReturnCode::NotAuthorized,
        Version::V5 => ConnectReturnCode::PacketTooLarge,
    }
}

/// The will to keep for the session, or why the CONNECT is refused.
pub(crate) fn accept<R: Router>(
    shared: &Broker<R>,
    snapshot: &Snapshot,
    subject: &Subject,
    mount: Option<&Mountpoint>,
    version: Version,
    will: LastWill,
    props: Option<LastWillProperties>,
) -> Result<Box<Will>, WillRefusal> {
    let limits = TopicLimits::default();
    let full = match mount {
        Some(m) => m.mount_topic_name(&will.topic, &limits).ok(),
        None => std::str::from_utf8(&will.topic).ok().map(str::to_owned),
    };
    let parsed = full
        .as_deref()
        .and_then(|t| parse_topic_name(t, &limits).ok())
        .filter(|topic| {
            shared
                .cache
                .authorize(snapshot, subject, Action::Publish, topic)
                .is_allowed()
        })
        .map(|topic| (topic.tenant().to_owned(), topic.channel().to_owned()));
    let (Some(topic), Some((tenant, channel))) = (full, parsed) else {
        // An unauthorized will refuses the CONNECT (issue 5).
        return Err((
            reason::connack_for(version, DenyReason::NoGrant),
            "will_not_allowed",
        ));
    };
    let p = props.unwrap_or(LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    });
    if p.user_properties.len() > shared.config.max_user_properties {
        return Err((too_large(version), "will_user_properties"));
    }
    // Checked and mounted as a PUBLISH's response topic is.
    let response_topic = match p.response_topic {
        None => None,
        Some(rt) => match mount_response_topic(mount, &rt) {
            Ok(mounted) => Some(mounted.unwrap_or(rt)),
            Err(e) => {
                let code = if response_topic_is_protocol_error(e) {
                    ConnectReturnCode::ProtocolError
                } else {
                    ConnectReturnCode::ImplementationSpecificError
                };
                return Err((code, "will_response_topic_invalid"));
            }
        },
    };
    let message_props = MessageProps {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    };
    let max = [
        snapshot
            .tenant(&tenant)
            .and_then(|t| t.limits.max_message_size),
        snapshot
            .channel(&tenant, &channel)
            .and_then(|c| c.max_message_size),
    ]
    .into_iter()
    .flatten()
    .min();
    if max.is_some_and(|max| message_len(&will.message, Some(&message_props)) > max as usize) {
        return Err((too_large(version), "will_message_size"));
    }
    let delay = Duration::from_secs(u64::from(p.delay_interval.unwrap_or(0)))
        .min(shared.config.max_will_delay);
    Ok(Box::new(Will {
        message: Message {
            topic: Bytes::from(topic),
            payload: will.message,
            qos: will.qos as u8,
            props: (!message_props.is_empty()).then(|| Box::new(message_props)),
            retain: will.retain,
            origin: None,
            publisher: None,
            protocol: Protocol::Mqtt,
            created_ns: 0,
        },
        retain: will.retain,
        delay,
    }))
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
    per_tenant: HashMap<String, usize>,
}

impl PendingInner {
    fn forget(&mut self, id: &str) -> Option<AbortHandle> {
        let (tenant, handle, _) = self.by_id.remove(id)?;
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
    pub(crate) fn insert(&self, id: String, tenant: &str, task: AbortHandle, now: Arc<Notify>) {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.forget(&id) {
            old.abort();
        }
        inner.by_id.insert(id, (tenant.to_owned(), task, now));
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

impl<R: Router> Broker<R> {
    /// The `fleetward_mqtt_pending_wills` and `fleetward_mqtt_saved_sessions` gauges: what
    /// the pod holds for clients that are gone.
    pub(crate) fn encode_held(
        &self,
        e: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        crate::metrics::gauge(
            e,
            "fleetward_mqtt_pending_wills",
            "Wills waiting out their delay after their connection ended.",
            self.pending_wills.len(),
        )?;
        crate::metrics::gauge(
            e,
            "fleetward_mqtt_saved_sessions",
            "Persistent sessions kept while their clients are away.",
            self.sessions.len(),
        )
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
        for n in 1..=2 {
            assert!(wills.reserve("a", 2));
            wills.insert(format!("a:thing:x:{n}"), "a", task(), now());
        }
        assert!(!wills.reserve("a", 2), "a is full");
        assert!(!wills.reserve("c", 0), "a cap of 0 holds none");
        // The same id again replaces its will (aborting the old task), in one place.
        let old = task();
        assert!(wills.reserve("b", 2));
        wills.insert("b:thing:y:1".into(), "b", old.clone(), now());
        assert!(wills.reserve("b", 2));
        wills.insert("b:thing:y:1".into(), "b", task(), now());
        tokio::task::yield_now().await;
        assert!(old.is_finished());
        assert_eq!(wills.len(), 3);
        assert!(wills.reserve("b", 2), "b holds one");
        assert!(wills.remove("a:thing:x:1").is_some());
        assert!(wills.reserve("a", 2), "a's place came back");
        assert!(wills.remove("a:thing:x:1").is_none());
        assert!(!wills.inner.lock().per_tenant.contains_key("c"));
    }
}
