//! The CRD compatibility test: the CRDs generated from crds/src against the newest release
//! baseline in `compat/<version>/crds/` (compat/README.md), and the rules' own tests.

mod rules;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

#[path = "../../../../compat/baseline.rs"]
mod baseline;
use baseline::{newest_baseline, parse_version};

/// A CRD YAML document as JSON, keyed by its metadata.name.
fn by_name(yaml: &str, origin: &str) -> (String, Value) {
    let crd: Value = serde_yaml::from_str(yaml)
        .unwrap_or_else(|e| panic!("{origin} is not a CRD document: {e}"));
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{origin} has no metadata.name"))
        .to_owned();
    (name, crd)
}

#[test]
fn the_crds_are_compatible_with_the_newest_baseline() {
    let compat = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compat");
    let Some((version, dir)) = newest_baseline(&compat, "crds") else {
        panic!(
            "no baseline in {}: record one with `scripts/release.sh --record-only VERSION`",
            compat.display()
        );
    };
    let mut baseline = BTreeMap::new();
    for entry in std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let yaml = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let (name, crd) = by_name(&yaml, &path.display().to_string());
            baseline.insert(name, crd);
        }
    }
    assert!(!baseline.is_empty(), "{} holds no CRD", dir.display());
    let current: BTreeMap<String, Value> = fleetward_crds::files()
        .expect("the CRDs serialize to YAML")
        .iter()
        .map(|(file, yaml)| by_name(yaml, file))
        .collect();

    let mut breaks = Vec::new();
    for (name, old) in &baseline {
        match current.get(name) {
            Some(new) => breaks.extend(rules::breaks(old, new)),
            None => breaks.push(rules::Break {
                path: name.clone(),
                what: "CRD removed; a kind is never removed while a supported release serves it"
                    .to_owned(),
            }),
        }
    }
    assert!(
        breaks.is_empty(),
        "the CRDs break compatibility with release {version} (compat/{version}/crds/):\n{}{}",
        rules::report(&breaks),
        rules::INSTEAD
    );
}

/// A CRD `things.t.io` with the given versions: (name, served, storage, openAPIV3Schema).
fn crd(versions: &[(&str, bool, bool, Value)]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|(name, served, storage, schema)| {
            json!({
                "name": name, "served": served, "storage": storage,
                "schema": { "openAPIV3Schema": schema },
            })
        })
        .collect();
    json!({
        "metadata": { "name": "things.t.io" },
        "spec": {
            "group": "t.io", "scope": "Namespaced",
            "names": { "kind": "Thing", "plural": "things" },
            "versions": versions,
        },
    })
}

/// A small spec: a required name, an optional enum with a default, a list of objects.
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": { "type": "string" },
                    "qos": { "type": "integer", "format": "uint8", "default": 1 },
                    "mode": { "type": "string", "enum": ["open", "closed"], "nullable": true },
                    "grants": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": { "topic": { "type": "string" } },
                        },
                    },
                },
            },
        },
    })
}

fn v1(schema: Value) -> Value {
    crd(&[("v1alpha1", true, true, schema)])
}

/// The report of a change to the schema, which must hold exactly one break.
fn only_break(changed: Value) -> String {
    let breaks = rules::breaks(&v1(schema()), &v1(changed));
    assert_eq!(
        breaks.len(),
        1,
        "expected one break, got:\n{}",
        rules::report(&breaks)
    );
    rules::report(&breaks)
}

#[test]
fn additions_are_compatible() {
    let mut grown = schema();
    let spec = &mut grown["properties"]["spec"];
    spec["properties"]["web"] = json!({ "type": "object", "properties": {
        "enabled": { "type": "boolean", "default": false } } });
    spec["properties"]["deliveryMetadata"] = json!({ "type": "boolean", "nullable": true });
    spec["properties"]["mode"]["enum"] = json!(["open", "closed", "draining"]);
    spec["properties"]["grants"]["items"]["properties"]["qos"] = json!({ "type": "integer" });
    let breaks = rules::breaks(&v1(schema()), &v1(grown));
    assert!(
        breaks.is_empty(),
        "additions were refused:\n{}",
        rules::report(&breaks)
    );

    // A required field that becomes optional loosens the schema: old objects still pass.
    let mut loosened = schema();
    loosened["properties"]["spec"]["required"] = json!([]);
    assert!(rules::breaks(&v1(schema()), &v1(loosened)).is_empty());
}

#[test]
fn a_removed_field_is_refused() {
    let mut removed = schema();
    let grants = &mut removed["properties"]["spec"]["properties"]["grants"];
    grants["items"]["properties"] = json!({});
    let report = only_break(removed);
    assert!(
        report.contains("things.t.io v1alpha1 .spec.grants[].topic: field removed"),
        "{report}"
    );
}

#[test]
fn a_retyped_field_is_refused() {
    let mut retyped = schema();
    retyped["properties"]["spec"]["properties"]["qos"]["format"] = json!("int32");
    let report = only_break(retyped);
    assert!(
        report.contains("things.t.io v1alpha1 .spec.qos: format changed from uint8 to int32"),
        "{report}"
    );

    let mut retyped = schema();
    retyped["properties"]["spec"]["properties"]["name"]["type"] = json!("integer");
    let report = only_break(retyped);
    assert!(
        report.contains(".spec.name: type changed from string to integer"),
        "{report}"
    );
}

#[test]
fn a_field_made_required_is_refused() {
    let mut required = schema();
    required["properties"]["spec"]["required"] = json!(["name", "qos"]);
    let report = only_break(required);
    assert!(
        report.contains("things.t.io v1alpha1 .spec: field `qos` made required"),
        "{report}"
    );

    // A new field that is required at once breaks every object stored without it.
    let mut new_required = schema();
    let spec = &mut new_required["properties"]["spec"];
    spec["properties"]["zone"] = json!({ "type": "string" });
    spec["required"] = json!(["name", "zone"]);
    let report = only_break(new_required);
    assert!(report.contains("field `zone` made required"), "{report}");
}

#[test]
fn a_removed_enum_value_or_a_changed_default_is_refused() {
    let mut narrowed = schema();
    narrowed["properties"]["spec"]["properties"]["mode"]["enum"] = json!(["open"]);
    let report = only_break(narrowed);
    assert!(
        report.contains(".spec.mode: enum value closed removed"),
        "{report}"
    );

    let mut restricted = schema();
    restricted["properties"]["spec"]["properties"]["name"]["enum"] = json!(["a"]);
    let report = only_break(restricted);
    assert!(
        report.contains(".spec.name: now restricted to the enum"),
        "{report}"
    );

    let mut defaulted = schema();
    defaulted["properties"]["spec"]["properties"]["qos"]["default"] = json!(0);
    let report = only_break(defaulted);
    assert!(
        report.contains(".spec.qos: default changed from 1 to 0"),
        "{report}"
    );

    let mut new_default = schema();
    new_default["properties"]["spec"]["properties"]["name"]["default"] = json!("x");
    let report = only_break(new_default);
    assert!(
        report.contains(".spec.name: default changed from none to x"),
        "{report}"
    );

    let mut not_nullable = schema();
    let mode = &mut not_nullable["properties"]["spec"]["properties"]["mode"];
    mode.as_object_mut().map(|m| m.remove("nullable"));
    let report = only_break(not_nullable);
    assert!(
        report.contains(".spec.mode: nullable was true and no longer is"),
        "{report}"
    );
}

#[test]
fn versions_follow_the_serve_then_store_then_drop_order() {
    let mut changed = schema();
    changed["properties"]["spec"]["properties"]["qos"]["type"] = json!("string");
    let old = v1(schema());

    // Release N+1: the breaking change goes into a new served version; storage stays.
    let next = crd(&[
        ("v1alpha1", true, true, schema()),
        ("v1alpha2", true, false, changed.clone()),
    ]);
    assert!(rules::breaks(&old, &next).is_empty());

    // Switching storage in the same release that adds the version is refused.
    let rushed = crd(&[
        ("v1alpha1", true, false, schema()),
        ("v1alpha2", true, true, changed.clone()),
    ]);
    let report = rules::report(&rules::breaks(&old, &rushed));
    assert!(
        report.contains("storage version switched from v1alpha1 to v1alpha2, which the baseline release did not serve"),
        "{report}"
    );

    // Release N+2: storage switches to the version N+1 served.
    let switched = crd(&[
        ("v1alpha1", true, false, schema()),
        ("v1alpha2", true, true, changed.clone()),
    ]);
    assert!(rules::breaks(&next, &switched).is_empty());

    // Dropping v1alpha1 while the baseline still stores it is refused; after the switch it is not.
    let dropped = crd(&[("v1alpha2", true, true, changed.clone())]);
    let report = rules::report(&rules::breaks(&next, &dropped));
    assert!(
        report
            .contains("things.t.io v1alpha1: no longer served, but the baseline release stores it"),
        "{report}"
    );
    assert!(rules::breaks(&switched, &dropped).is_empty());

    // Breaking a served version in place is refused even beside a new one.
    let in_place = crd(&[
        ("v1alpha1", true, true, changed.clone()),
        ("v1alpha2", true, false, changed),
    ]);
    let report = rules::report(&rules::breaks(&old, &in_place));
    assert!(
        report.contains("v1alpha1 .spec.qos: type changed"),
        "{report}"
    );
}

#[test]
fn identity_changes_are_refused() {
    let old = v1(schema());
    let mut moved = old.clone();
    moved["spec"]["scope"] = json!("Cluster");
    let report = rules::report(&rules::breaks(&old, &moved));
    assert!(
        report.contains("things.t.io /spec/scope: changed from Namespaced to Cluster"),
        "{report}"
    );
}

#[test]
fn the_newest_baseline_is_chosen_by_version_not_by_name() {
    assert!(parse_version("0.10.0") > parse_version("0.9.3"));
    assert_eq!(parse_version("README.md"), None);
    assert_eq!(parse_version("1.2.3.4"), None);
}
