//! Schema fragments shared by the kinds: name references, subtopic patterns and conditions.

use schemars::{Schema, SchemaGenerator, json_schema};

/// The longest name a DNS-1123 label may have.
pub const DNS_LABEL_MAX: usize = 63;

/// CEL rule refusing a string that is not a DNS-1123 label.
pub const DNS_LABEL_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";

/// Message of [`DNS_LABEL_RULE`], printed by the API server when a reference is refused.
pub const DNS_LABEL_MESSAGE: &str = "must be a DNS-1123 label: lower-case letters, digits and '-', \
     starting and ending with a letter or digit (for example 'sensor-1')";

/// CEL rule (at the root of an object) refusing a resource name that is not a DNS-1123 label.
pub const NAME_RULE: &str = "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') \
     && size(self.metadata.name) <= 63";

/// Message of [`NAME_RULE`].
pub const NAME_MESSAGE: &str = "metadata.name must be a DNS-1123 label of at most 63 characters \
     (lower-case letters, digits and '-'), because Fleetward uses it in topics and references";

/// The longest subtopic pattern accepted.
pub const SUBTOPIC_PATTERN_MAX: usize = 256;

/// The most patterns one allow or deny list may hold.
pub const SUBTOPIC_PATTERNS_MAX: usize = 64;

/// Message of the rule refusing a NUL character in a subtopic pattern.
pub const SUBTOPIC_NUL_MESSAGE: &str = "a subtopic pattern must not contain the NUL character";

/// Message of the rule refusing a subtopic pattern that starts with '$'.
pub const SUBTOPIC_DOLLAR_MESSAGE: &str =
    "a subtopic pattern must not start with '$': $-topics are reserved for the broker";

/// Message of the rule refusing a wildcard that shares a level with other characters.
pub const SUBTOPIC_WILDCARD_MESSAGE: &str = "a wildcard '+' or '#' must be a whole topic level, \
     as in 'rooms/+/temperature' or 'alerts/#'";

/// Message of the rule refusing a '#' anywhere but in the last level.
pub const SUBTOPIC_HASH_LAST_MESSAGE: &str =
    "'#' matches every remaining level, so it may only be the last level of a subtopic pattern";

/// Schema of a reference to another resource in the same namespace (a DNS-1123 label).
pub fn dns_label(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": DNS_LABEL_MAX,
        "x-kubernetes-validations": [{
            "rule": DNS_LABEL_RULE,
            "message": DNS_LABEL_MESSAGE,
        }],
    })
}

/// Schema of one subtopic pattern: MQTT filter syntax below the channel.
fn subtopic_pattern() -> serde_json::Value {
    serde_json::json!({
        "type": "string",
        "minLength": 1,
        "maxLength": SUBTOPIC_PATTERN_MAX,
        "x-kubernetes-validations": [
            { "rule": "!self.contains('\\u0000')", "message": SUBTOPIC_NUL_MESSAGE },
            { "rule": "!self.startsWith('$')", "message": SUBTOPIC_DOLLAR_MESSAGE },
            { "rule": "!self.matches('[^/][+#]|[+#][^/]')", "message": SUBTOPIC_WILDCARD_MESSAGE },
            { "rule": "!self.matches('#.')", "message": SUBTOPIC_HASH_LAST_MESSAGE },
        ],
    })
}

/// Schema of an allow or deny list of subtopic patterns.
pub fn subtopic_patterns(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": SUBTOPIC_PATTERNS_MAX,
        "x-kubernetes-list-type": "set",
        "items": subtopic_pattern(),
    })
}

/// Rewrites integer formats the API server does not know (`uint8`, `uint32`, ...) into the two
/// it does, `int32` and `int64`, so applying the CRDs prints no "unrecognized format" warning.
/// Unsigned fields keep their `minimum: 0`.
pub fn kubernetes_integer_format(schema: &mut Schema) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    // An optional field is still `["integer", "null"]` here; kube makes it `nullable` later.
    let integer = match object.get("type") {
        Some(serde_json::Value::String(t)) => t == "integer",
        Some(serde_json::Value::Array(types)) => types.iter().any(|t| t == "integer"),
        _ => false,
    };
    if !integer {
        return;
    }
    let known = match object.get("format").and_then(|f| f.as_str()) {
        None | Some("int32" | "int64") => return,
        Some("int8" | "uint8" | "int16" | "uint16") => "int32",
        Some(_) => "int64",
    };
    object.insert("format".to_owned(), known.into());
}
