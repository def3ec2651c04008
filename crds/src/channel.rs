//! The Channel kind: a logical message bus inside a tenant.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::ChannelStatus;

/// The highest MQTT quality of service.
pub const MAX_QOS: u8 = 2;

/// What a Channel declares: the highest QoS, whether retained messages are allowed and the
/// largest message. Its topics are `m/<tenant>/c/<channel>[/<subtopic>...]`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "Channel",
    namespaced,
    doc = "A Channel is a logical message bus in a tenant. Its MQTT topics are \
           m/<tenant>/c/<channel>[/<subtopic>...]; Connections say who may publish or subscribe on it.",
    status = "ChannelStatus",
    derive = "PartialEq",
    shortname = "chn",
    category = "fleetward",
    printcolumn(name = "Max QoS", type_ = "integer", json_path = ".spec.maxQos", description = "Highest QoS delivered on the channel"),
    printcolumn(name = "Retained", type_ = "boolean", json_path = ".spec.retained", description = "Whether retained messages are allowed"),
    printcolumn(name = "Max Size", type_ = "integer", json_path = ".spec.maxMessageSize", priority = 1, description = "Largest payload in bytes"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Enforced", type_ = "string", json_path = ".status.conditions[?(@.type==\"Enforced\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new(crate::schema::NAME_RULE).message(crate::schema::NAME_MESSAGE),
)]
#[schemars(transform = schemars::transform::RecursiveTransform(crate::schema::kubernetes_integer_format))]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    /// What the channel carries, for the people who use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The highest MQTT quality of service on this channel: 0, 1 or 2 (default 2). Publishes and
    /// subscriptions asking for more are downgraded to it.
    #[serde(default = "default_max_qos")]
    #[schemars(range(min = 0, max = 2))]
    pub max_qos: u8,
    /// Whether retained messages are allowed (default true). When false, the retain flag of a
    /// publish is refused and nothing is stored.
    #[serde(default = "default_retained")]
    pub retained: bool,
    /// The largest message accepted on this channel, in bytes: the payload plus its MQTT v5
    /// properties (user properties, correlation data, response topic, content type). The
    /// tenant's `maxMessageSize` still applies when it is smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_message_size: Option<u32>,
    /// Whether MQTT v5 subscribers get who published each message, how and when, as the user
    /// properties `fleetward-publisher`, `fleetward-protocol` and `fleetward-created` after the
    /// publisher's own (default false: a delivery carries the publisher's properties only, as
    /// MQTT 5 says). A subscription may ask for them on a channel without this
    /// (`dataplane/MQTT.md`, "Delivery metadata").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delivery_metadata: bool,
    /// Keep the channel's messages, readable at `GET /m/<tenant>/c/<channel>/messages` (off
    /// when unset). Deleting the channel, or turning this off, deletes what it kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<ChannelHistory>,
}

/// A channel's message history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelHistory {
    /// How long messages are kept: a number and a unit, `s`, `m`, `h` or `d` (`7d`, `12h`),
    /// from 1 minute to 3650 days.
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,6}(s|m|h|d)$"))]
    pub retention: String,
}

impl ChannelHistory {
    /// The retention in seconds, if the text is valid (at least a minute, at most ten years).
    pub fn retention_secs(&self) -> Option<u64> {
        parse_retention(&self.retention)
    }
}

/// Seconds of a retention text (`7d`, `12h`, `90m`, `3600s`), if it is one within bounds.
pub fn parse_retention(text: &str) -> Option<u64> {
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = digits.parse::<u64>().ok()?.checked_mul(unit)?;
    (60..=3_650 * 86_400).contains(&secs).then_some(secs)
}

impl Default for ChannelSpec {
    fn default() -> Self {
        Self {
            description: None,
            max_qos: MAX_QOS,
            retained: true,
            max_message_size: None,
            delivery_metadata: false,
            history: None,
        }
    }
}

fn default_max_qos() -> u8 {
    MAX_QOS
}

fn default_retained() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::parse_retention;

    #[test]
    fn retentions_read_in_every_unit_within_bounds() {
        assert_eq!(parse_retention("7d"), Some(7 * 86_400));
        assert_eq!(parse_retention("12h"), Some(12 * 3_600));
        assert_eq!(parse_retention("90m"), Some(5_400));
        assert_eq!(parse_retention("3600s"), Some(3_600));
        assert_eq!(parse_retention("3650d"), Some(3_650 * 86_400));
        for bad in [
            "", "d", "7", "07d", "7w", "-1d", "1.5h", "59s", "3651d", "7 d",
        ] {
            assert_eq!(parse_retention(bad), None, "{bad:?}");
        }
    }
}
