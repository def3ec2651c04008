//! SenML (RFC 8428) for the history reader: the packs of stored `application/senml+json`
//! messages, resolved (§4.6) into one pack of absolute records.

use fleetward_history::Record;

use crate::ingress::media_type_in;

/// The SenML media type: of the messages resolved, and of the answer a client may ask for with
/// `Accept`.
pub(super) const SENML_JSON: &str = "application/senml+json";
use serde_json::{Map, Value};

/// Times below 2^28 s are relative to "now" (RFC 8428 §4.5.3); for a stored message, now is
/// when it was accepted.
const RELATIVE_BELOW: f64 = 268_435_456.0;

/// The resolved records of every SenML message of `records`, in their order; messages of other
/// content types, and payloads that are not a SenML pack, are left out.
pub(crate) fn resolve(records: &[Record]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in records {
        let senml = r
            .content_type
            .as_deref()
            .is_some_and(|ct| media_type_in(ct, &[SENML_JSON]));
        if !senml {
            continue;
        }
        let Ok(Value::Array(pack)) = serde_json::from_slice::<Value>(&r.payload) else {
            continue;
        };
        let accepted = r.created_ns as f64 / 1e9;
        let mut base = Base::default();
        for record in pack {
            if let Value::Object(record) = record {
                out.push(Value::Object(base.resolve(record, accepted)));
            }
        }
    }
    out
}

/// The base fields in force (they apply to their own record and every later one of the pack).
#[derive(Default)]
struct Base {
    name: String,
    time: f64,
    unit: Option<Value>,
    value: f64,
    sum: f64,
}

impl Base {
    fn resolve(&mut self, mut r: Map<String, Value>, accepted: f64) -> Map<String, Value> {
        if let Some(Value::String(bn)) = r.remove("bn") {
            self.name = bn;
        }
        if let Some(bt) = r.remove("bt").and_then(|v| v.as_f64()) {
            self.time = bt;
        }
        if let Some(bu) = r.remove("bu") {
            self.unit = Some(bu);
        }
        if let Some(bv) = r.remove("bv").and_then(|v| v.as_f64()) {
            self.value = bv;
        }
        if let Some(bs) = r.remove("bs").and_then(|v| v.as_f64()) {
            self.sum = bs;
        }
        r.remove("bver");
        let name = match r.remove("n") {
            Some(Value::String(n)) => format!("{}{n}", self.name),
            _ => self.name.clone(),
        };
        r.insert("n".into(), Value::from(name));
        let mut t = self.time + r.get("t").and_then(Value::as_f64).unwrap_or(0.0);
        if t < RELATIVE_BELOW {
            t += accepted;
        }
        r.insert("t".into(), Value::from(t));
        if !r.contains_key("u")
            && let Some(u) = &self.unit
        {
            r.insert("u".into(), u.clone());
        }
        if let Some(v) = r.get("v").and_then(Value::as_f64) {
            r.insert("v".into(), Value::from(self.value + v));
        }
        if let Some(s) = r.get("s").and_then(Value::as_f64) {
            r.insert("s".into(), Value::from(self.sum + s));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use fleetward_history::MessageId;
    use serde_json::json;

    use super::*;

    fn record(payload: &str, content_type: &str, created_s: u64) -> Record {
        Record {
            id: MessageId::floor(created_s * 1_000_000_000),
            tenant: "acme".into(),
            channel: "telemetry".into(),
            channel_uid: String::new(),
            subtopic: String::new(),
            payload: payload.to_owned().into(),
            qos: 0,
            content_type: Some(content_type.into()),
            publisher: None,
            publisher_kind: None,
            protocol: "http".into(),
            created_ns: created_s * 1_000_000_000,
            user_properties: Vec::new(),
        }
    }

    #[test]
    fn packs_resolve_to_absolute_records_and_other_payloads_are_left_out() {
        let records = [
            record(
                r#"[{"bn":"urn:dev:1:","bt":1.7e9,"bu":"Cel","n":"temp","v":21.5},{"n":"temp","t":10,"v":22}]"#,
                "application/senml+json",
                1_800_000_000,
            ),
            record(r#"{"t":1}"#, "application/json", 1_800_000_001),
            record(
                r#"[{"n":"hum","v":40,"t":-5}]"#,
                "application/senml+json; charset=utf-8",
                1_800_000_002,
            ),
        ];
        assert_eq!(
            Value::from(resolve(&records)),
            json!([
                {"n": "urn:dev:1:temp", "t": 1.7e9, "u": "Cel", "v": 21.5},
                {"n": "urn:dev:1:temp", "t": 1.7e9 + 10.0, "u": "Cel", "v": 22.0},
                {"n": "hum", "t": 1_800_000_002.0 - 5.0, "v": 40.0},
            ])
        );
    }
}
