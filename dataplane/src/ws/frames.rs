//! The JSON frames of plain WebSocket streams: deliveries out, publishes in, answers out.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::router::{Message, rfc3339};

/// Content types whose payloads are always sent base64, even when they happen to be UTF-8.
const BINARY_TYPES: [&str; 2] = ["application/octet-stream", "application/senml+cbor"];

/// A delivery: `{"type":"message","topic",…}`. The payload is UTF-8 text with `"base64":
/// false`, or base64 with `"base64": true` when it is not UTF-8 or its content type is binary.
pub(crate) fn message_frame(m: &Message) -> String {
    message_value(m).to_string()
}

/// [`message_frame`] as a JSON value: the history reader answers with the same shape.
pub(crate) fn message_value(m: &Message) -> Value {
    let content_type = m.props.as_ref().and_then(|p| p.content_type.as_deref());
    let binary_type =
        content_type.is_some_and(|ct| crate::ingress::media_type_in(ct, &BINARY_TYPES));
    let text = if binary_type {
        None
    } else {
        std::str::from_utf8(&m.payload).ok()
    };
    let (payload, base64) = match text {
        Some(t) => (t.to_owned(), false),
        None => (STANDARD.encode(&m.payload), true),
    };
    let mut frame = json!({
        "type": "message",
        "id": m.id.to_string(),
        "topic": String::from_utf8_lossy(&m.topic),
        "payload": payload,
        "base64": base64,
        "content_type": content_type,
        "publisher": m.publisher.as_ref().map(|p| json!({
            "kind": p.kind.as_str(),
            "name": &*p.name,
        })),
        "protocol": m.protocol.as_str(),
        "created": (m.created_ns != 0).then(|| rfc3339(m.created_ns)),
        "qos": m.qos,
        "retain": m.retain,
    });
    if let Some(p) = &m.props
        && !p.user_properties.is_empty()
    {
        frame["user_properties"] = Value::from(
            p.user_properties
                .iter()
                .map(|(k, v)| json!([k, v]))
                .collect::<Vec<_>>(),
        );
    }
    frame
}

/// A publish sent by the client as a text frame.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientPublish {
    /// The full topic; default the stream's own topic (when it has no wildcard).
    pub topic: Option<String>,
    /// The payload: UTF-8 text, or base64 with `base64: true`.
    pub payload: String,
    #[serde(default)]
    pub base64: bool,
    /// One of the HTTP publish content types; default `text/plain` (or
    /// `application/octet-stream` for base64 payloads).
    pub content_type: Option<String>,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    /// Echoed in the answer, so a client can match answers to publishes.
    pub id: Option<Value>,
}

impl ClientPublish {
    /// The payload bytes, or why they cannot be decoded.
    pub(crate) fn payload(&self) -> Result<Bytes, String> {
        if self.base64 {
            STANDARD
                .decode(&self.payload)
                .map(Bytes::from)
                .map_err(|e| format!("payload is not valid base64: {e}"))
        } else {
            Ok(Bytes::copy_from_slice(self.payload.as_bytes()))
        }
    }
}

/// The answer to a client publish: `{"type":"published",…}` or `{"type":"error",…}`.
pub(crate) fn answer(id: Option<&Value>, mut body: Value, ok: bool) -> String {
    body["type"] = Value::from(if ok { "published" } else { "error" });
    if let Some(id) = id {
        body["id"] = id.clone();
    }
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{MessageProps, Protocol, Publisher, PublisherKind};

    fn message(payload: &'static [u8], content_type: &str) -> Message {
        Message {
            stored: false,
            id: crate::router::MessageId::floor(1_700_000_000_000_000_000),
            topic: Bytes::from_static(b"m/acme/c/t/a"),
            payload: Bytes::from_static(payload),
            qos: 1,
            props: Some(Box::new(MessageProps {
                content_type: Some(content_type.into()),
                ..MessageProps::default()
            })),
            retain: false,
            origin: None,
            publisher: Some(Publisher {
                kind: PublisherKind::Thing,
                name: "sensor".into(),
            }),
            protocol: Protocol::Http,
            created_ns: 1_764_148_409_000_000_001,
        }
    }

    #[test]
    fn text_payloads_are_text_and_binary_ones_base64() {
        let v: Value =
            serde_json::from_str(&message_frame(&message(b"hi", "text/plain"))).expect("json");
        assert_eq!(v["payload"], "hi");
        assert_eq!(v["base64"], false);
        assert_eq!(v["publisher"], json!({"kind": "thing", "name": "sensor"}));
        assert_eq!(v["protocol"], "http");
        assert_eq!(v["created"], "2025-11-26T09:13:29.000000001Z");
        let v: Value =
            serde_json::from_str(&message_frame(&message(b"hi", "application/octet-stream")))
                .expect("json");
        assert_eq!(
            (v["payload"].as_str(), v["base64"].as_bool()),
            (Some("aGk="), Some(true))
        );
        let v: Value = serde_json::from_str(&message_frame(&message(b"\xff", "application/json")))
            .expect("json");
        assert_eq!(v["base64"], true);
    }

    #[test]
    fn client_publishes_decode_and_refuse_unknown_fields() {
        let p: ClientPublish =
            serde_json::from_str(r#"{"payload":"aGk=","base64":true,"id":7}"#).expect("parses");
        assert_eq!(p.payload().expect("base64"), Bytes::from_static(b"hi"));
        assert!(serde_json::from_str::<ClientPublish>(r#"{"payload":"x","qoss":1}"#).is_err());
    }
}
