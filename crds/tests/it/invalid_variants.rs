//! Each invalid variant of a valid example is refused by the CRD schema with the expected message.

use fleetward_crds::validate;

use std::collections::BTreeSet;

use fleetward_crds::testdata::{invalid_updates, invalid_variants, valid_updates};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn crd_for(manifest: &Value) -> &'static CustomResourceDefinition {
    let text = |field: &str| manifest[field].as_str().unwrap_or_default();
    validate::crd_for(text("apiVersion"), text("kind"))
        .unwrap_or_else(|| panic!("no CRD for {} {}", manifest["apiVersion"], manifest["kind"]))
}

#[test]
fn every_invalid_variant_is_refused_with_its_message() {
    let variants = invalid_variants();
    let mut failures = Vec::new();
    for v in &variants {
        let refusals = validate::refusals(crd_for(&v.manifest), &v.manifest, None);
        if refusals.is_empty() {
            failures.push(format!(
                "{}: admitted, expected \"{}\"",
                v.name, v.expected_message
            ));
        } else if !refusals.iter().any(|r| r.contains(v.expected_message)) {
            failures.push(format!(
                "{}: refused, but without \"{}\":\n    {}",
                v.name,
                v.expected_message,
                refusals.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_invalid_variant_differs_from_its_example_in_one_place() {
    let examples = fleetward_crds::testdata::example_documents();
    for v in invalid_variants() {
        let base = examples
            .iter()
            .filter(|e| e["kind"] == v.manifest["kind"])
            .map(|e| differences(e, &v.manifest, ""))
            .min_by_key(Vec::len)
            .unwrap_or_else(|| panic!("{}: no example of its kind", v.name));
        assert_eq!(
            base.len(),
            1,
            "{}: differs from every example in {base:?}",
            v.name
        );
    }
}

#[test]
fn the_table_covers_what_the_api_must_refuse() {
    let variants = invalid_variants();
    let names: BTreeSet<&str> = variants.iter().map(|v| v.name).collect();
    assert_eq!(names.len(), variants.len(), "variant names are not unique");
    for name in &names {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name} is not usable as a test name"
        );
    }
    for required in [
        "thing-secret-name-not-a-dns-label",
        "thing-mountpoint-not-a-dns-label",
        "connection-subject-name-not-a-dns-label",
        "connection-channel-not-a-dns-label",
        "user-password-secret-not-a-dns-label",
        "group-member-name-not-a-dns-label",
        "tenant-namespace-not-a-dns-label",
        "connection-actions-empty",
        "connection-action-unknown",
        "connection-action-duplicate",
        "connection-subject-kind-unknown",
        "subtopic-plus-inside-a-level",
        "subtopic-hash-inside-a-level",
        "subtopic-hash-not-last",
        "subtopic-starts-with-dollar",
        "subtopic-contains-nul",
        "channel-max-qos-3",
        "channel-max-qos-negative",
        "tenant-max-things-zero",
        "user-role-unknown",
        "user-token-epoch-negative",
        "group-member-kind-group",
    ] {
        assert!(names.contains(required), "the table lacks {required}");
    }
}

#[test]
fn every_invalid_update_is_refused_and_valid_updates_are_not() {
    for u in invalid_updates() {
        let crd = crd_for(&u.new);
        let created = validate::refusals(crd, &u.old, None);
        assert!(
            created.is_empty(),
            "{}: the old object is refused: {created:?}",
            u.name
        );
        let fresh = validate::refusals(crd, &u.new, None);
        assert!(
            fresh.is_empty(),
            "{}: the new object is refused even on create: {fresh:?}",
            u.name
        );
        let refusals = validate::refusals(crd, &u.new, Some(&u.old));
        assert!(
            refusals.iter().any(|r| r.contains(u.expected_message)),
            "{}: expected \"{}\", got {refusals:?}",
            u.name,
            u.expected_message
        );
    }
    for (name, old, new) in valid_updates() {
        let refusals = validate::refusals(crd_for(&new), &new, Some(&old));
        assert!(refusals.is_empty(), "{name}: refused: {refusals:?}");
    }
}

/// JSON pointers at which `a` and `b` differ (a whole subtree counts once).
fn differences(a: &Value, b: &Value, at: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let here = format!("{at}/{k}");
                    match (x.get(k), y.get(k)) {
                        (Some(p), Some(q)) => differences(p, q, &here),
                        _ => vec![here],
                    }
                })
                .collect()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .flat_map(|(i, (p, q))| differences(p, q, &format!("{at}/{i}")))
            .collect(),
        _ if a == b => Vec::new(),
        _ => vec![at.to_owned()],
    }
}

#[test]
#[ignore = "prints every refusal, for reviewing the messages: cargo test -- --ignored --nocapture"]
fn print_refusals() {
    for v in invalid_variants() {
        println!("{}:", v.name);
        for r in validate::refusals(crd_for(&v.manifest), &v.manifest, None) {
            println!("    {r}");
        }
    }
}
