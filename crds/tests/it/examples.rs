//! Every manifest in examples/ parses into the Rust types, round-trips, and passes the CRD schema.

use fleetward_crds::validate;

use std::path::{Path, PathBuf};

use fleetward_crds::{Channel, Connection, Group, Policy, Tenant, Thing, User};
use kube::CustomResourceExt;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// (file name, document) for every YAML document under examples/.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ is readable")
        .map(|entry| entry.expect("examples/ entry is readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "examples/ holds no YAML file");
    let mut docs = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).expect("example is readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"));
            docs.push((name.clone(), value));
        }
    }
    docs
}

fn label(file: &str, doc: &Value) -> String {
    format!(
        "{file}: {} {}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["namespace"].as_str().unwrap_or(""),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Parses `doc` as `K`, checks the YAML and JSON round trips, and that the typed value
/// serializes to the document with the schema's defaults filled in.
fn round_trip<K>(what: &str, doc: &Value)
where
    K: CustomResourceExt + Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse into the Rust type: {e}"));

    let yaml = serde_yaml::to_string(&typed).expect("a resource serializes to YAML");
    let again: K = serde_yaml::from_str(&yaml)
        .unwrap_or_else(|e| panic!("{what}: serialized YAML does not parse back: {e}\n{yaml}"));
    assert_eq!(typed, again, "{what}: YAML round trip changed the value");

    let json = serde_json::to_value(&typed).expect("a resource serializes to JSON");
    let again: K = serde_json::from_value(json.clone()).expect("serialized JSON parses back");
    assert_eq!(typed, again, "{what}: JSON round trip changed the value");

    let schema = validate::schema_of(&K::crd());
    let defaulted = kube::core::cel::apply_defaults(&schema, doc);
    assert_eq!(
        json, defaulted,
        "{what}: the Rust type and the CRD schema disagree (a default or a field name)"
    );
}

#[test]
fn every_example_parses_and_round_trips() {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for (file, doc) in documents() {
        let what = label(&file, &doc);
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Tenant" => round_trip::<Tenant>(&what, &doc),
            "Thing" => round_trip::<Thing>(&what, &doc),
            "Channel" => round_trip::<Channel>(&what, &doc),
            "Connection" => round_trip::<Connection>(&what, &doc),
            "User" => round_trip::<User>(&what, &doc),
            "Group" => round_trip::<Group>(&what, &doc),
            "Policy" => round_trip::<Policy>(&what, &doc),
            "Namespace" | "Secret" => {}
            other => panic!("{what}: unexpected kind {other:?} in examples/"),
        }
        *seen.entry(kind).or_default() += 1;
    }
    // Two tenants, each with two things, a channel, at least two connections, a user, a group.
    for (kind, at_least) in [
        ("Namespace", 2),
        ("Tenant", 2),
        ("Thing", 4),
        ("Channel", 2),
        ("Connection", 4),
        ("User", 2),
        ("Group", 2),
        ("Policy", 1),
        ("Secret", 3),
    ] {
        let n = seen.get(kind).copied().unwrap_or_default();
        assert!(
            n >= at_least,
            "examples/ has {n} {kind}, expected at least {at_least}"
        );
    }
}

#[test]
fn every_example_passes_the_crd_schema_and_its_rules() {
    let crds = fleetward_crds::all();
    let mut checked = 0;
    for (file, doc) in documents() {
        let Some(crd) = crds
            .iter()
            .find(|c| doc["kind"] == c.spec.names.kind.as_str())
        else {
            continue;
        };
        let refusals = validate::refusals(crd, &doc, None);
        assert!(
            refusals.is_empty(),
            "{} would be refused:\n{}",
            label(&file, &doc),
            refusals.join("\n")
        );
        checked += 1;
    }
    assert!(
        checked >= 16,
        "only {checked} Fleetward resources found in examples/"
    );
}

#[test]
fn the_examples_declare_what_the_readme_promises() {
    let docs: Vec<Value> = documents().into_iter().map(|(_, d)| d).collect();
    let find = |kind: &str, ns: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"] == name
                    && d["metadata"]["namespace"].as_str().unwrap_or("") == ns
            })
            .unwrap_or_else(|| panic!("examples/ has no {kind} {ns}/{name}"))
    };
    for tenant in ["acme", "globex"] {
        find("Namespace", "", tenant);
        let t: Tenant = serde_json::from_value(find("Tenant", "", tenant).clone()).expect("Tenant");
        assert_eq!(t.spec.namespace.as_deref().unwrap_or(tenant), tenant);
        for thing in ["sensor-1", "dashboard"] {
            find("Thing", tenant, thing);
        }
        find("Channel", tenant, "telemetry");
        find("Group", tenant, "operators");
        let alice: User =
            serde_json::from_value(find("User", tenant, "alice").clone()).expect("User");
        let secret = alice
            .spec
            .password_secret_ref
            .expect("alice has a password Secret");
        let password = find("Secret", tenant, &secret.name);
        assert!(
            password["stringData"][&secret.key].is_string(),
            "{tenant}/alice's password is missing"
        );

        let grants: Vec<Connection> = docs
            .iter()
            .filter(|d| d["kind"] == "Connection" && d["metadata"]["namespace"] == tenant)
            .map(|d| serde_json::from_value(d.clone()).expect("Connection"))
            .collect();
        let grants_to = |thing: &str, action: fleetward_crds::Action| {
            grants.iter().any(|c| {
                c.spec.subject.kind == fleetward_crds::SubjectKind::Thing
                    && c.spec.subject.name == thing
                    && c.spec.channel == "telemetry"
                    && c.spec.actions.contains(&action)
            })
        };
        assert!(
            grants_to("sensor-1", fleetward_crds::Action::Publish),
            "{tenant}: sensor-1 cannot publish"
        );
        assert!(
            grants_to("dashboard", fleetward_crds::Action::Subscribe),
            "{tenant}: dashboard cannot subscribe"
        );
    }

    // acme/sensor-1 brings its own 256-bit base64url key.
    let thing: Thing =
        serde_json::from_value(find("Thing", "acme", "sensor-1").clone()).expect("Thing");
    let secret = find("Secret", "acme", &thing.secret_name());
    assert_eq!(thing.secret_name(), "sensor-1-credentials");
    let key = secret["stringData"]["key"]
        .as_str()
        .expect("the key is under stringData.key");
    assert_eq!(key.len(), 43, "a 256-bit key is 43 base64url characters");
    assert!(
        key.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "the key is not base64url: {key}"
    );
}
