//! Fuzzes the text frames a browser client sends on a plain WebSocket stream: the JSON
//! publish, its payload and content type, the topic and the policy behind it, as the stream's
//! session answers them (thing `acme/sensor`, which may publish on channel `telemetry` but not
//! under `secret/`; see `fleetward_dataplane::fuzzing::WsStreams`).
//!
//! Every input is one text frame, sent on a stream with a topic path and on one with a
//! wildcard.
#![no_main]

use std::cell::RefCell;

use fleetward_dataplane::fuzzing::{
    WS_CHANNEL, WS_DENIED_LEVEL, WS_MAX_MESSAGE, WS_TENANT, WsStreams,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

thread_local! {
    static STREAMS: RefCell<WsStreams> = RefCell::new(WsStreams::new());
}

fn check(path: &str, frame: Option<&Value>, answer: &str) {
    let answer: Value = serde_json::from_str(answer).expect("the answer is JSON");
    match answer["type"].as_str() {
        Some("error") => {
            assert!(
                answer["error"].is_string() && answer["message"].is_string(),
                "{answer}"
            );
        }
        Some("published") => {
            let frame = frame.expect("only a JSON frame is published");
            // An `"id": null` is no id.
            let id = |v: &Value| v.get("id").filter(|id| !id.is_null()).cloned();
            assert_eq!(id(&answer), id(frame), "the answer echoes the frame's id");
            let topic = answer["topic"]
                .as_str()
                .expect("a published answer has its topic");
            let expected = frame["topic"].as_str().unwrap_or(path);
            assert_eq!(topic, expected, "published elsewhere than asked");
            // The authorization held: only the granted channel, never the denied level.
            let channel = format!("m/{WS_TENANT}/c/{WS_CHANNEL}");
            let sub = topic
                .strip_prefix(&channel)
                .expect("published outside the granted channel");
            assert!(
                sub.is_empty() || sub.starts_with('/'),
                "published outside the granted channel: {topic}"
            );
            let first = sub
                .strip_prefix('/')
                .unwrap_or(sub)
                .split('/')
                .next()
                .unwrap_or("");
            assert!(
                sub.is_empty() || first != WS_DENIED_LEVEL,
                "published under the denied level: {topic}"
            );
            assert!(
                !topic.contains(['+', '#', '\0']),
                "published to a filter: {topic}"
            );
            assert!(answer["qos"].as_u64().is_some_and(|q| q <= 2), "{answer}");
            if frame["base64"] != Value::Bool(true) {
                let payload = frame["payload"]
                    .as_str()
                    .expect("a published frame has a payload");
                assert!(!payload.is_empty() && payload.len() <= WS_MAX_MESSAGE as usize);
            }
        }
        _ => panic!("an answer that is neither published nor an error: {answer}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // A text frame is UTF-8; the WebSocket layer refuses anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame: Option<Value> = serde_json::from_str(text).ok();
    STREAMS.with(|streams| {
        let mut streams = streams.borrow_mut();
        for path in ["m/acme/c/telemetry/room", "m/acme/c/telemetry/#"] {
            let answer = streams.on_text(path, text);
            check(path, frame.as_ref(), &answer);
        }
    });
});
