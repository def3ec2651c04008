//! The generated CRDs: the committed YAML matches the types, and the CRDs are complete.

use fleetward_crds::validate;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

const REGENERATE: &str = "UPDATE_CRDS=1 cargo test -p fleetward-crds";

/// Where the generated YAML is committed: the crate's copy and the Helm chart's copy.
fn copies() -> [PathBuf; 2] {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [root.to_path_buf(), root.join("../charts/fleetward/crds")]
}

fn yaml_files_in(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

#[test]
fn committed_crds_match_the_types() {
    let files = fleetward_crds::files().expect("the CRDs serialize to YAML");
    let expected: BTreeSet<String> = files.iter().map(|(name, _)| name.clone()).collect();

    if std::env::var_os("UPDATE_CRDS").is_some() {
        for dir in copies() {
            std::fs::create_dir_all(&dir).expect("the CRD directory can be created");
            for stale in yaml_files_in(&dir).difference(&expected) {
                std::fs::remove_file(dir.join(stale)).expect("a stale CRD file can be removed");
            }
            for (name, yaml) in &files {
                std::fs::write(dir.join(name), yaml).expect("a CRD file can be written");
            }
        }
    }

    let mut problems = Vec::new();
    for dir in copies() {
        let shown = dir.display();
        for extra in yaml_files_in(&dir).difference(&expected) {
            problems.push(format!("{shown}/{extra} is not generated from the types"));
        }
        for (name, yaml) in &files {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(committed) if committed == *yaml => {}
                Ok(_) => problems.push(format!("{shown}/{name} differs from the types")),
                Err(_) => problems.push(format!("{shown}/{name} is missing")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the committed CRD YAML drifted from crds/src:\n  {}\nregenerate both copies with `{REGENERATE}` and commit them",
        problems.join("\n  ")
    );
}

#[test]
fn the_stream_holds_the_six_crds_in_order() {
    let stream = fleetward_crds::yaml_stream().expect("the CRDs serialize to YAML");
    let parsed: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&stream)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("each document is a CRD"))
        .collect();
    let names: Vec<String> = parsed
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "tenants.fleetward.io",
            "things.fleetward.io",
            "channels.fleetward.io",
            "connections.fleetward.io",
            "users.fleetward.io",
            "groups.fleetward.io",
            "policies.fleetward.io",
        ]
    );
    assert_eq!(parsed, fleetward_crds::all());
    let files = fleetward_crds::files().expect("the CRDs serialize to YAML");
    for ((file, _), name) in files.iter().zip(&names) {
        assert_eq!(file, &format!("{name}.yaml"));
    }
}

/// Short names of the resources built into Kubernetes, which a CRD must not shadow.
const BUILT_IN_SHORT_NAMES: &[&str] = &[
    "cm", "crd", "crds", "cs", "csr", "cj", "deploy", "ds", "ep", "ev", "hpa", "ing", "limits",
    "netpol", "no", "ns", "pc", "pdb", "po", "psp", "pv", "pvc", "quota", "rc", "rs", "sa", "sc",
    "sts", "svc", "vac",
];

#[test]
fn every_crd_is_namespaced_listed_and_printable_as_designed() {
    let mut short_names = BTreeSet::new();
    for crd in fleetward_crds::all() {
        let names = &crd.spec.names;
        let what = &names.kind;
        assert_eq!(crd.spec.group, fleetward_crds::GROUP);
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, fleetward_crds::VERSION);
        assert!(version.served && version.storage);
        let expected_scope = if what == "Tenant" {
            "Cluster"
        } else {
            "Namespaced"
        };
        assert_eq!(crd.spec.scope, expected_scope, "{what}");
        assert_eq!(
            names.categories.as_deref(),
            Some(&["fleetward".to_owned()][..]),
            "{what}"
        );

        for short in names.short_names.iter().flatten() {
            assert!(
                !BUILT_IN_SHORT_NAMES.contains(&short.as_str()),
                "{what}: {short} is built in"
            );
            assert!(
                short_names.insert(short.clone()),
                "{what}: {short} is used twice"
            );
        }
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{what}: no short name"
        );

        let status = version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref());
        assert!(status.is_some(), "{what}: no status subresource");

        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        for column in ["Ready", "Enforced", "Age"] {
            assert!(
                columns.contains(&column),
                "{what}: no {column} column in {columns:?}"
            );
        }
        assert!(columns.len() >= 4, "{what}: only {columns:?}");

        let schema = validate::schema_of(&crd);
        for field in ["conditions", "observedGeneration"] {
            assert!(
                schema["properties"]["status"]["properties"][field].is_object(),
                "{what}: status has no {field}"
            );
        }
    }
}

/// Calls `visit(path, node)` on every schema node below `node`.
fn walk(node: &Value, path: &str, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(props) = node["properties"].as_object() {
        for (name, child) in props {
            walk(child, &format!("{path}.{name}"), visit);
        }
    }
    if node["items"].is_object() {
        walk(&node["items"], &format!("{path}[]"), visit);
    }
    if node["additionalProperties"].is_object() {
        walk(&node["additionalProperties"], &format!("{path}{{}}"), visit);
    }
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    for crd in fleetward_crds::all() {
        let schema = validate::schema_of(&crd);
        let mut undocumented = Vec::new();
        walk(&schema, &crd.spec.names.kind, &mut |path, node| {
            // List items and map values are documented by their list or map.
            let is_element = path.ends_with("[]") || path.ends_with("{}");
            let documented = node["description"]
                .as_str()
                .is_some_and(|d| d.trim().len() > 10);
            if !is_element && !documented {
                undocumented.push(path.to_owned());
            }
        });
        assert!(undocumented.is_empty(), "no description: {undocumented:?}");
    }
}

#[test]
fn every_cel_rule_compiles_has_a_message_and_a_bounded_cost() {
    let mut rules = 0;
    for crd in fleetward_crds::all() {
        let schema = validate::schema_of(&crd);
        let compiled = kube::core::cel::compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "{}: {:?}",
            crd.spec.names.kind,
            compiled.compilation_errors()
        );
        walk(&schema, &crd.spec.names.kind, &mut |path, node| {
            let Some(list) = node["x-kubernetes-validations"].as_array() else {
                return;
            };
            for rule in list {
                rules += 1;
                assert!(
                    rule["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{path}: rule {} has no message",
                    rule["rule"]
                );
            }
            // The API server refuses a CRD whose rules may cost too much; bounding the size of
            // every string and list a rule looks at keeps the estimate small.
            if node["type"] == "string" {
                assert!(
                    node["maxLength"].is_u64(),
                    "{path}: a rule on a string with no maxLength"
                );
            }
        });
        walk(&schema, &crd.spec.names.kind, &mut |path, node| {
            let item_rules = node["items"]["x-kubernetes-validations"].is_array()
                || node["items"]["properties"]
                    .as_object()
                    .is_some_and(|p| p.values().any(|f| f["x-kubernetes-validations"].is_array()));
            if node["type"] == "array" && item_rules {
                assert!(
                    node["maxItems"].is_u64(),
                    "{path}: rules on items of a list with no maxItems"
                );
            }
        });
    }
    assert!(rules >= 20, "only {rules} CEL rules");
}

#[test]
fn every_format_is_one_the_api_server_knows() {
    // Anything else makes `kubectl apply` print "unrecognized format" warnings.
    for crd in fleetward_crds::all() {
        let schema = validate::schema_of(&crd);
        walk(&schema, &crd.spec.names.kind, &mut |path, node| {
            let Some(format) = node["format"].as_str() else {
                return;
            };
            let known: &[&str] = match node["type"].as_str() {
                Some("integer") => &["int32", "int64"],
                Some("number") => &["float", "double"],
                Some("string") => &["date-time", "date", "duration", "byte", "uri", "uuid"],
                _ => &[],
            };
            assert!(
                known.contains(&format),
                "{path}: format {format:?} is not recognized"
            );
        });
    }
}
