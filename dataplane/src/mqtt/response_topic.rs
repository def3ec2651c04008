//! A v5 response topic (of a PUBLISH or a will): checked as a topic name, and mounted as the
//! thing's topics are.

use fleetward_policy::{Mountpoint, TopicError, TopicLimits, parse_topic_name};

/// Checks a v5 response topic (of a PUBLISH or a will) as a topic name, and mounts it for a
/// mounted thing as its topic is. `Ok(None)`: it stays as it is.
pub(crate) fn mount_response_topic(
    mount: Option<&Mountpoint>,
    topic: &str,
) -> Result<Option<String>, TopicError> {
    match mount {
        Some(m) => m
            .mount_topic_name(topic.as_bytes(), &TopicLimits::default())
            .map(Some),
        None => parse_topic_name(topic, &TopicLimits::default()).map(|_| None),
    }
}

/// Whether a refused response topic breaks MQTT itself (wildcards, empty, NUL: MQTT 5
/// 3.3.2.3.5), rather than Fleetward's topic grammar.
pub(crate) fn response_topic_is_protocol_error(e: TopicError) -> bool {
    matches!(
        e,
        TopicError::Empty
            | TopicError::InvalidUtf8
            | TopicError::ContainsNul
            | TopicError::WildcardInTopicName
            | TopicError::HashNotLast
            | TopicError::PartialWildcard
    )
}
