//! The CRD compatibility rules: what a newer CRD may not do to a served version of an older one.
//!
//! During a rolling upgrade an old operator reads objects a new one wrote and the other way
//! round, and the API server keeps what it stored under the older schema. So within a served
//! version a field is never removed, retyped or made required, and no enum value or default
//! changes (DESIGN §9, docs/upgrades.md).

use std::fmt::Write as _;

use serde_json::Value;

/// What to do instead of a breaking change, printed under every report.
pub const INSTEAD: &str = "Within a served version, fields are only added (optional, without a \
default that changes old objects). For a breaking change, add a new served version (e.g. \
v1alpha2) beside the old one, keep the old one served and stored, and switch the storage \
version to the new one in a later release; stop serving the old one only in the release after \
that. See docs/upgrades.md.";

/// One incompatible change: the CRD, version and schema path, and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub path: String,
    pub what: String,
}

/// The breaks as one report, a line each.
pub fn report(breaks: &[Break]) -> String {
    let mut text = String::new();
    for b in breaks {
        let _ = writeln!(text, "  {}: {}", b.path, b.what);
    }
    text
}

fn text(v: Option<&Value>) -> String {
    match v {
        None => "none".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn served_versions(crd: &Value) -> impl Iterator<Item = &Value> {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("served") == Some(&Value::Bool(true)))
}

fn version_name(version: &Value) -> &str {
    version.get("name").and_then(Value::as_str).unwrap_or("")
}

fn storage_version(crd: &Value) -> Option<&str> {
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("storage") == Some(&Value::Bool(true)))
        .map(version_name)
}

/// Every incompatible change from the baseline CRD `old` to the current `new`.
pub fn breaks(old: &Value, new: &Value) -> Vec<Break> {
    let name = text(old.pointer("/metadata/name"));
    let mut out = Vec::new();
    for pointer in [
        "/spec/group",
        "/spec/scope",
        "/spec/names/kind",
        "/spec/names/plural",
    ] {
        let (was, now) = (old.pointer(pointer), new.pointer(pointer));
        if was != now {
            out.push(Break {
                path: format!("{name} {pointer}"),
                what: format!(
                    "changed from {} to {}; it never changes",
                    text(was),
                    text(now)
                ),
            });
        }
    }

    let old_storage = storage_version(old);
    for version in served_versions(old) {
        let v = version_name(version);
        let current = served_versions(new).find(|n| version_name(n) == v);
        match current {
            Some(current) => check_schema(
                &format!("{name} {v} "),
                version.pointer("/schema/openAPIV3Schema"),
                current.pointer("/schema/openAPIV3Schema"),
                &mut out,
            ),
            // The release before already stored another version, so nothing needs this one.
            None if old_storage != Some(v) => {}
            None => out.push(Break {
                path: format!("{name} {v}"),
                what: "no longer served, but the baseline release stores it; switch the \
                       storage version first and stop serving this one in a later release"
                    .to_owned(),
            }),
        }
    }

    let new_storage = storage_version(new);
    if new_storage != old_storage {
        let was_served = served_versions(old).any(|v| Some(version_name(v)) == new_storage);
        if !was_served {
            out.push(Break {
                path: name,
                what: format!(
                    "storage version switched from {} to {}, which the baseline release did not \
                     serve, so its operator cannot read what this one stores; serve {} first \
                     and switch storage in a later release",
                    old_storage.unwrap_or("none"),
                    new_storage.unwrap_or("none"),
                    new_storage.unwrap_or("none")
                ),
            });
        }
    }
    out
}

/// Compares one schema node and everything under it; `path` names the node (the root's ends
/// in a space, so its children read `tenants.fleetward.io v1alpha1 .spec.limits`).
fn check_schema(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<Break>) {
    let Some(old) = old else { return };
    let Some(new) = new else {
        out.push(Break {
            path: path.trim_end().to_owned(),
            what: "schema removed".to_owned(),
        });
        return;
    };
    let mut push = |what: String| {
        out.push(Break {
            path: path.trim_end().to_owned(),
            what,
        })
    };

    for key in [
        "type",
        "format",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
    ] {
        let (was, now) = (old.get(key), new.get(key));
        if was != now {
            push(format!("{key} changed from {} to {}", text(was), text(now)));
        }
    }
    for key in ["nullable", "x-kubernetes-preserve-unknown-fields"] {
        if old.get(key) == Some(&Value::Bool(true)) && new.get(key) != Some(&Value::Bool(true)) {
            push(format!("{key} was true and no longer is"));
        }
    }
    if old.get("default") != new.get("default") {
        push(format!(
            "default changed from {} to {}",
            text(old.get("default")),
            text(new.get("default"))
        ));
    }
    check_enum(old, new, &mut push);

    let required = |s: &Value| -> Vec<String> {
        s.get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let was_required = required(old);
    for field in required(new) {
        if !was_required.contains(&field) {
            push(format!("field `{field}` made required"));
        }
    }

    let properties = |s: &Value| s.get("properties").and_then(Value::as_object).cloned();
    if let Some(old_props) = properties(old) {
        let new_props = properties(new).unwrap_or_default();
        for (key, schema) in &old_props {
            let child = format!("{path}.{key}");
            match new_props.get(key) {
                Some(current) => check_schema(&child, Some(schema), Some(current), out),
                None => out.push(Break {
                    path: child.trim_end().to_owned(),
                    what: "field removed".to_owned(),
                }),
            }
        }
    }
    let items = format!("{path}[]");
    check_schema(&items, old.get("items"), new.get("items"), out);
    let values = format!("{path}{{*}}");
    if old
        .get("additionalProperties")
        .is_some_and(Value::is_object)
    {
        check_schema(
            &values,
            old.get("additionalProperties"),
            new.get("additionalProperties").filter(|v| v.is_object()),
            out,
        );
    }
}

fn check_enum(old: &Value, new: &Value, push: &mut impl FnMut(String)) {
    let Some(now) = new.get("enum").and_then(Value::as_array) else {
        return;
    };
    match old.get("enum").and_then(Value::as_array) {
        Some(was) => {
            for value in was.iter().filter(|v| !now.contains(v)) {
                push(format!("enum value {} removed", text(Some(value))));
            }
        }
        None => push(format!(
            "now restricted to the enum {}, so other values it took are refused",
            Value::Array(now.clone())
        )),
    }
}
