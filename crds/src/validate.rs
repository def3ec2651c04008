//! A stand-in for the kube-apiserver's checks of a custom resource: the OpenAPI constraints of
//! the CRD schema, then its CEL rules, with the API server's error texts.
//!
//! It follows the apiextensions-apiserver order: defaults are applied, the OpenAPI schema is
//! checked, list-type `set`/`map` uniqueness is checked, and the CEL rules run only when no
//! "blocking" error (type, required, enum, too long, too many) was found. Messages have the API
//! server's shape, `<path>: <detail>`, so the same expected texts hold against a real server.
//!
//! `fleetward start` checks its manifests with it, and this crate's tests check the generated
//! CRDs against the examples and the invalid-variant table with it.

use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{Validator, apply_defaults};
use serde_json::{Map, Value};

/// What the API server prints when it skips CEL rules because of a blocking error.
pub const CEL_SKIPPED: &str = "some validation rules were not checked because the object was \
     invalid; correct the existing errors to complete validation";

/// One refusal, as the API server would word it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub message: String,
    /// Whether the API server would stop before the CEL rules because of it.
    pub blocking: bool,
}

/// The OpenAPI v3 schema of the CRD's only version, as JSON; `Null` when it has none (which
/// then admits nothing but an empty object, as no CRD of this crate lacks one).
pub fn schema_of(crd: &CustomResourceDefinition) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

/// The CRD of this crate that serves `apiVersion` and `kind`, if any (generated once).
pub fn crd_for(api_version: &str, kind: &str) -> Option<&'static CustomResourceDefinition> {
    static ALL: std::sync::OnceLock<Vec<CustomResourceDefinition>> = std::sync::OnceLock::new();
    ALL.get_or_init(crate::all).iter().find(|crd| {
        crd.spec.names.kind == kind
            && crd
                .spec
                .versions
                .iter()
                .any(|v| format!("{}/{}", crd.spec.group, v.name) == api_version)
    })
}

/// Every refusal the API server would give `object` (on create, or on update from `old`).
/// Empty when the object would be admitted.
pub fn refusals(
    crd: &CustomResourceDefinition,
    object: &Value,
    old: Option<&Value>,
) -> Vec<String> {
    admit(crd, object, old).err().unwrap_or_default()
}

/// `object` as the API server would store it (its schema's defaults applied), or every refusal
/// it would give (on create, or on update from `old`).
pub fn admit(
    crd: &CustomResourceDefinition,
    object: &Value,
    old: Option<&Value>,
) -> Result<Value, Vec<String>> {
    let schema = schema_of(crd);
    let mut found = Vec::new();

    let version = crd.spec.versions.first().map_or("", |v| v.name.as_str());
    let api_version = format!("{}/{version}", crd.spec.group);
    if object["apiVersion"] != api_version.as_str()
        || object["kind"] != crd.spec.names.kind.as_str()
    {
        found.push(Refusal {
            message: format!(
                "apiVersion/kind: expected {api_version} {}, got {} {}",
                crd.spec.names.kind, object["apiVersion"], object["kind"]
            ),
            blocking: true,
        });
    }
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        found.push(Refusal {
            message: "metadata.name: Required value: name or generateName is required".into(),
            blocking: true,
        });
    }

    let defaulted = apply_defaults(&schema, object);
    check(&schema, &defaulted, "", true, &mut found);

    let mut messages: Vec<String> = found.iter().map(|r| r.message.clone()).collect();
    if found.iter().any(|r| r.blocking) {
        messages.push(CEL_SKIPPED.to_owned());
        return Err(messages);
    }
    // The API server runs the CEL rules on the defaulted object (and the stored, defaulted old).
    let old = old.map(|o| apply_defaults(&schema, o));
    if let Err(errors) = Validator::new().validate(&schema, &defaulted, old.as_ref()) {
        for e in errors.iter() {
            let path = if e.field_path.is_empty() {
                "<nil>"
            } else {
                &e.field_path
            };
            messages.push(format!("{path}: Invalid value: {}", e.message));
        }
    }
    if messages.is_empty() {
        Ok(defaulted)
    } else {
        Err(messages)
    }
}

/// Checks `value` at `path` against the OpenAPI constraints of `schema`.
fn check(schema: &Value, value: &Value, path: &str, root: bool, out: &mut Vec<Refusal>) {
    let refuse = |out: &mut Vec<Refusal>, blocking: bool, message: String| {
        out.push(Refusal { message, blocking })
    };

    if value.is_null() {
        if schema["nullable"] != true && !root {
            refuse(
                out,
                true,
                format!(
                    "{path}: Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            );
        }
        return;
    }

    let ty = schema["type"].as_str().unwrap_or_default();
    let actual = json_type(value);
    let type_ok = match ty {
        "" => true,
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        other => other == actual,
    };
    if !type_ok {
        refuse(
            out,
            true,
            format!(
                "{path}: Invalid value: \"{actual}\": {path} in body must be of type {ty}: \"{actual}\""
            ),
        );
        return;
    }

    check_enum(schema, value, path, out);
    match value {
        Value::String(s) => check_string(schema, s, path, out),
        Value::Number(n) => check_number(schema, n, path, out),
        Value::Array(items) => check_array(schema, items, path, out),
        Value::Object(fields) => check_object(schema, fields, path, root, out),
        Value::Bool(_) | Value::Null => {}
    }
}

/// A value outside the schema's `enum`, when it has one.
fn check_enum(schema: &Value, value: &Value, path: &str, out: &mut Vec<Refusal>) {
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed
            .iter()
            .map(|v| match v {
                Value::String(s) => format!("{s:?}"),
                other => format!("{:?}", other.to_string()),
            })
            .collect();
        out.push(Refusal {
            message: format!(
                "{path}: Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
            blocking: true,
        });
    }
}

/// A number below the schema's `minimum` or above its `maximum`.
fn check_number(schema: &Value, n: &serde_json::Number, path: &str, out: &mut Vec<Refusal>) {
    if let (Some(min), Some(v)) = (schema["minimum"].as_f64(), n.as_f64())
        && v < min
    {
        out.push(Refusal {
            message: format!(
                "{path}: Invalid value: {n}: {path} in body should be greater than or equal to {}",
                number(min)
            ),
            blocking: false,
        });
    }
    if let (Some(max), Some(v)) = (schema["maximum"].as_f64(), n.as_f64())
        && v > max
    {
        out.push(Refusal {
            message: format!(
                "{path}: Invalid value: {n}: {path} in body should be less than or equal to {}",
                number(max)
            ),
            blocking: false,
        });
    }
}

fn check_string(schema: &Value, s: &str, path: &str, out: &mut Vec<Refusal>) {
    // The API server counts characters for minLength/maxLength.
    let len = s.chars().count() as u64;
    if let Some(min) = schema["minLength"].as_u64()
        && len < min
    {
        out.push(Refusal {
            message: format!(
                "{path}: Invalid value: {s:?}: {path} in body should be at least {min} chars long"
            ),
            blocking: false,
        });
    }
    if let Some(max) = schema["maxLength"].as_u64()
        && len > max
    {
        out.push(Refusal {
            message: format!("{path}: Too long: may not be more than {max} bytes"),
            blocking: true,
        });
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        // A pattern the regex crate cannot compile admits nothing: a refusal names it rather
        // than letting the value through unchecked.
        let matched = regex::Regex::new(pattern).map(|re| re.is_match(s));
        if let Err(e) = &matched {
            out.push(Refusal {
                message: format!("{path}: the schema's pattern {pattern:?} does not compile: {e}"),
                blocking: true,
            });
        } else if matched != Ok(true) {
            out.push(Refusal {
                message: format!(
                    "{path}: Invalid value: {s:?}: {path} in body should match '{pattern}'"
                ),
                blocking: false,
            });
        }
    }
}

fn check_array(schema: &Value, items: &[Value], path: &str, out: &mut Vec<Refusal>) {
    if let Some(min) = schema["minItems"].as_u64()
        && (items.len() as u64) < min
    {
        out.push(Refusal {
            message: format!(
                "{path}: Invalid value: {}: {path} in body should have at least {min} items",
                items.len()
            ),
            blocking: false,
        });
    }
    if let Some(max) = schema["maxItems"].as_u64()
        && (items.len() as u64) > max
    {
        out.push(Refusal {
            message: format!(
                "{path}: Too many: {}: must have at most {max} items",
                items.len()
            ),
            blocking: true,
        });
    }
    let item_schema = &schema["items"];
    for (i, item) in items.iter().enumerate() {
        check(item_schema, item, &format!("{path}[{i}]"), false, out);
    }
    // Uniqueness of `set` items and of `map` keys.
    let keys: Option<Vec<&str>> = match schema["x-kubernetes-list-type"].as_str() {
        Some("set") => Some(Vec::new()),
        Some("map") => Some(
            schema["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default(),
        ),
        _ => None,
    };
    if let Some(keys) = keys {
        let identity = |item: &Value| -> Value {
            if keys.is_empty() {
                item.clone()
            } else {
                Value::Object(
                    keys.iter()
                        .map(|k| ((*k).to_owned(), item[*k].clone()))
                        .collect(),
                )
            }
        };
        for (i, item) in items.iter().enumerate() {
            let id = identity(item);
            if items[..i].iter().any(|earlier| identity(earlier) == id) {
                out.push(Refusal {
                    message: format!("{path}[{i}]: Duplicate value: {id}"),
                    blocking: false,
                });
            }
        }
    }
}

fn check_object(
    schema: &Value,
    fields: &Map<String, Value>,
    path: &str,
    root: bool,
    out: &mut Vec<Refusal>,
) {
    let properties = schema["properties"].as_object();
    let join = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    for required in schema["required"].as_array().into_iter().flatten() {
        let name = required.as_str().unwrap_or_default();
        if !fields.contains_key(name) {
            out.push(Refusal {
                message: format!("{}: Required value", join(name)),
                blocking: true,
            });
        }
    }
    for (name, value) in fields {
        // The API server checks apiVersion, kind and metadata itself.
        if root && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let field_schema = properties
            .and_then(|p| p.get(name))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
        match field_schema {
            Some(field_schema) => check(field_schema, value, &join(name), false, out),
            // kubectl's strict field validation refuses what the schema would prune.
            None => out.push(Refusal {
                message: format!("strict decoding error: unknown field \"{}\"", join(name)),
                blocking: true,
            }),
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Formats a bound the way Go's `%v` prints a float64: `2`, not `2.0`.
fn number(n: f64) -> String {
    let mut s = String::new();
    if n.fract() == 0.0 {
        let _ = write!(s, "{}", n as i64);
    } else {
        let _ = write!(s, "{n}");
    }
    s
}
