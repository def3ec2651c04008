//! A CONNECT's will, checked as its publish would be: the will topic's grant, the tenant's and
//! the channel's `maxMessageSize` (payload and properties), the user-property cap, and its
//! delay capped by `--max-will-delay-secs`; and the wills waiting out their delay, counted per
//! tenant.

use std::time::Duration;

use bytes::Bytes;
use fleetward_policy::{
    Action, DenyReason, Mountpoint, Snapshot, Subject, TopicLimits, parse_topic_name,
};
use rumqttd::protocol::{ConnectReturnCode, LastWill, LastWillProperties};

use super::broker::Broker;
use super::codec::Version;
use super::pending_wills::Will;
use super::reason;
use super::response_topic::{mount_response_topic, response_topic_is_protocol_error};
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

/// The will's topic (mounted for a mounted thing) with its tenant and channel, if the subject
/// may publish there.
fn authorized_topic<R: Router>(
    shared: &Broker<R>,
    snapshot: &Snapshot,
    subject: &Subject,
    mount: Option<&Mountpoint>,
    will: &LastWill,
) -> Option<(String, String, String)> {
    let limits = TopicLimits::default();
    let full = match mount {
        Some(m) => m.mount_topic_name(&will.topic, &limits).ok(),
        None => std::str::from_utf8(&will.topic).ok().map(str::to_owned),
    }?;
    let topic = parse_topic_name(&full, &limits).ok()?;
    if !shared
        .cache
        .authorize(snapshot, subject, Action::Publish, &topic)
        .is_allowed()
    {
        return None;
    }
    let (tenant, channel) = (topic.tenant().to_owned(), topic.channel().to_owned());
    Some((full, tenant, channel))
}

/// The lower of the tenant's and the channel's `maxMessageSize`, if either has one.
fn max_message_size(snapshot: &Snapshot, tenant: &str, channel: &str) -> Option<u32> {
    [
        snapshot
            .tenant(tenant)
            .and_then(|t| t.limits.max_message_size),
        snapshot
            .channel(tenant, channel)
            .and_then(|c| c.max_message_size),
    ]
    .into_iter()
    .flatten()
    .min()
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
    let Some((topic, tenant, channel)) = authorized_topic(shared, snapshot, subject, mount, &will)
    else {
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
    let max = max_message_size(snapshot, &tenant, &channel);
    if max.is_some_and(|max| message_len(&will.message, Some(&message_props)) > max as usize) {
        return Err((too_large(version), "will_message_size"));
    }
    let delay = Duration::from_secs(u64::from(p.delay_interval.unwrap_or(0)))
        .min(shared.config.max_will_delay);
    Ok(Box::new(Will {
        message: Message {
            stored: false,
            topic: Bytes::from(topic),
            payload: will.message,
            qos: will.qos as u8,
            props: (!message_props.is_empty()).then(|| Box::new(message_props)),
            retain: will.retain,
            origin: None,
            publisher: None,
            protocol: Protocol::Mqtt,
            created_ns: 0,
            // Given again when the will is published (through the publish path).
            id: crate::router::MessageId::floor(0),
        },
        retain: will.retain,
        delay,
    }))
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
