//! A message's v5 properties as MQTT carries them (rumqttd's `PublishProperties`), and its size
//! as limits count it.

use rumqttd::protocol::PublishProperties;

use super::MessageProps;

/// What of a publish's v5 properties travels with its message (the topic alias and the
/// subscription identifiers belong to one connection); `None` when nothing is set.
pub(crate) fn message_props(p: PublishProperties) -> Option<Box<MessageProps>> {
    let props = MessageProps {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    };
    (!props.is_empty()).then(|| Box::new(props))
}

/// The bytes of a message's properties that a size limit counts: user properties (keys and
/// values), correlation data, response topic and content type. The fixed-size ones (payload
/// format, expiry) are left out, as MQTT's own framing bytes are.
pub(crate) fn props_len(props: Option<&MessageProps>) -> usize {
    let Some(p) = props else { return 0 };
    let user: usize = p
        .user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    user + p.correlation_data.as_ref().map_or(0, |d| d.len())
        + p.response_topic.as_ref().map_or(0, String::len)
        + p.content_type.as_ref().map_or(0, String::len)
}

/// A message's size as the tenant's and the channel's `maxMessageSize` count it: the payload
/// and [`props_len`].
pub(crate) fn message_len(payload: &[u8], props: Option<&MessageProps>) -> usize {
    payload.len() + props_len(props)
}

/// The v5 properties of a publish of a message with `props`, and `subscription_identifiers`.
pub(crate) fn publish_props(
    props: MessageProps,
    subscription_identifiers: Vec<usize>,
) -> PublishProperties {
    PublishProperties {
        payload_format_indicator: props.payload_format_indicator,
        message_expiry_interval: props.message_expiry_interval,
        topic_alias: None,
        response_topic: props.response_topic,
        correlation_data: props.correlation_data,
        user_properties: props.user_properties,
        subscription_identifiers,
        content_type: props.content_type,
    }
}
