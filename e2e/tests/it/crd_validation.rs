//! Scenario 1: the CRDs on a real API server refuse invalid manifests (and `fleetward start`
//! refuses the same ones with the same message), accept the examples, and show their docs,
//! printer columns and category through kubectl.

use anyhow::{Context, Result, ensure};
use fleetward_crds::testdata::{
    example_documents, invalid_updates, invalid_variants, valid_updates,
};
use fleetward_e2e::{ControlPlane, Kubectl, LogDir, run_test, wait_until, workspace};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A control plane with the Fleetward CRDs applied.
fn cluster(logs: &LogDir) -> Result<(ControlPlane, Kubectl)> {
    let plane = ControlPlane::start(logs)?;
    plane.apply_crds()?;
    let kubectl = plane.kubectl();
    Ok((plane, kubectl))
}

/// Every CRD as JSON, to read names, columns and docs the way the API server sees them.
fn crds() -> Result<Vec<Value>> {
    fleetward_crds::all()
        .iter()
        .map(|crd| serde_json::to_value(crd).context("serialize a CRD"))
        .collect()
}

fn is_fleetward(doc: &Value) -> bool {
    doc["apiVersion"] == "fleetward.io/v1alpha1"
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Result<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .with_context(|| format!("no string at {pointer} in {v}"))
}

/// Whether `got` holds everything in `want` (the API server may add defaults).
fn is_subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| is_subset(v, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(w, g)| is_subset(w, g))
        }
        _ => want == got,
    }
}

/// Text with every run of whitespace made one space (kubectl wraps long lines).
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The namespaces the examples live in, without any Fleetward object.
fn create_example_namespaces(kubectl: &Kubectl) -> Result<()> {
    for doc in example_documents()
        .iter()
        .filter(|d| d["kind"] == "Namespace")
    {
        kubectl.apply(&doc.to_string())?;
    }
    Ok(())
}

/// `Ok(())` when `out` is a refusal mentioning `expected`, else what went wrong.
fn refused_with(
    out: &fleetward_e2e::KubectlOutput,
    expected: &str,
) -> std::result::Result<(), String> {
    if out.success {
        Err(format!(
            "accepted, expected a refusal with \"{expected}\"\n    {}",
            out.stdout.trim()
        ))
    } else if !out.stderr.contains(expected) {
        Err(format!(
            "refused, but without \"{expected}\":\n    {}",
            out.stderr.trim()
        ))
    } else {
        Ok(())
    }
}

/// What `fleetward start`'s loader says of each file of `dir`, by file name: `fleetward status`
/// with no server running reads the directory with the loader `start` uses (src/local.rs,
/// operator/src/directory.rs) and prints each refused file's message as `error: <file>: <message>`.
fn start_refusals(dir: &Path, state: &Path) -> Result<Vec<(String, String)>> {
    let out = Command::new(workspace::fleetward_binary()?)
        .arg("status")
        .arg("--manifests")
        .arg(dir)
        .arg("--state-dir")
        .arg(state)
        .output()
        .context("running fleetward status")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "fleetward status failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("error: {}/", dir.display());
    Ok(stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split_once(": "))
        .map(|(file, message)| (file.to_owned(), message.to_owned()))
        .collect())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn every_invalid_manifest_is_refused_by_the_api_server_and_by_start_with_its_message() {
    run_test("crd-invalid-manifests", |logs| {
        let (_plane, kubectl) = cluster(logs)?;
        create_example_namespaces(&kubectl)?;
        let variants = invalid_variants();
        ensure!(!variants.is_empty(), "the invalid-variant table is empty");
        let manifests = logs.path().join("manifests");
        std::fs::create_dir_all(&manifests).context("creating the manifest directory")?;
        let mut failures = Vec::new();
        for v in &variants {
            // Dry run: a variant wrongly accepted changes nothing for the next one.
            let out = kubectl.call(
                &["create", "--dry-run=server", "-f", "-"],
                Some(&v.manifest.to_string()),
            )?;
            if let Err(why) = refused_with(&out, v.expected_message) {
                failures.push(format!("{}: the API server: {why}", v.name));
            }
            let yaml = serde_yaml::to_string(&v.manifest).context("a variant as YAML")?;
            std::fs::write(manifests.join(format!("{}.yaml", v.name)), yaml)
                .context("writing a variant")?;
        }
        // The same manifests, each in a file of its own, read by start's loader.
        let refused = start_refusals(&manifests, &logs.path().join("state"))?;
        for v in &variants {
            let file = format!("{}.yaml", v.name);
            match refused.iter().find(|(f, _)| *f == file) {
                None => failures.push(format!(
                    "{}: fleetward start: admitted, expected \"{}\"",
                    v.name, v.expected_message
                )),
                Some((_, message)) if !message.contains(v.expected_message) => {
                    failures.push(format!(
                        "{}: fleetward start: refused, but without \"{}\":\n    {message}",
                        v.name, v.expected_message
                    ));
                }
                Some(_) => {}
            }
        }
        // And the examples, which the API server accepts (the_examples_are_accepted), pass.
        let examples = start_refusals(&workspace::examples_dir(), &logs.path().join("state-2"))?;
        if !examples.is_empty() {
            failures.push(format!(
                "fleetward start refuses the examples: {examples:?}"
            ));
        }
        ensure!(
            failures.is_empty(),
            "{} refusals of {} invalid manifests were not as expected:\n{}",
            failures.len(),
            variants.len(),
            failures.join("\n")
        );
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn invalid_updates_are_refused_and_valid_ones_accepted() {
    run_test("crd-updates", |logs| {
        let (_plane, kubectl) = cluster(logs)?;
        create_example_namespaces(&kubectl)?;
        let mut failures = Vec::new();
        let invalid = invalid_updates();
        ensure!(!invalid.is_empty(), "the invalid-update table is empty");
        for u in &invalid {
            kubectl.run_with_stdin(&["create", "-f", "-"], Some(&u.old.to_string()))?;
            let out = kubectl.call(
                &["replace", "--dry-run=server", "-f", "-"],
                Some(&u.new.to_string()),
            )?;
            if let Err(why) = refused_with(&out, u.expected_message) {
                failures.push(format!("{}: {why}", u.name));
            }
            kubectl.run_with_stdin(&["delete", "--wait", "-f", "-"], Some(&u.old.to_string()))?;
        }
        let valid = valid_updates();
        ensure!(!valid.is_empty(), "the valid-update table is empty");
        for (name, old, new) in &valid {
            kubectl.run_with_stdin(&["create", "-f", "-"], Some(&old.to_string()))?;
            let out = kubectl.call(&["replace", "-f", "-"], Some(&new.to_string()))?;
            if !out.success {
                failures.push(format!("{name}: refused: {}", out.stderr.trim()));
            }
            kubectl.run_with_stdin(&["delete", "--wait", "-f", "-"], Some(&new.to_string()))?;
        }
        ensure!(
            failures.is_empty(),
            "updates not judged as expected:\n{}",
            failures.join("\n")
        );
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_examples_are_accepted() {
    run_test("crd-examples", |logs| {
        let (_plane, kubectl) = cluster(logs)?;
        let dir = workspace::examples_dir();
        let dir = dir.to_str().context("the examples path is not UTF-8")?;
        kubectl.run(&["apply", "--server-side", "-f", dir])?;
        let docs: Vec<Value> = example_documents()
            .into_iter()
            .filter(is_fleetward)
            .collect();
        ensure!(!docs.is_empty(), "examples/ holds no Fleetward resource");
        for doc in &docs {
            let kind = str_at(doc, "/kind")?;
            let name = str_at(doc, "/metadata/name")?;
            let mut args = vec![kind, name];
            if let Some(ns) = doc["metadata"]["namespace"].as_str() {
                args.extend(["-n", ns]);
            }
            let stored = kubectl.get_json(&args)?;
            ensure!(
                is_subset(&doc["spec"], &stored["spec"]),
                "{kind} {name} was stored with another spec: applied {}, stored {}",
                doc["spec"],
                stored["spec"]
            );
        }
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn explain_shows_the_doc_comments() {
    run_test("crd-explain", |logs| {
        let (_plane, kubectl) = cluster(logs)?;
        let crds = crds()?;
        // `kubectl explain` reads the OpenAPI v3 document, which the API server
        // publishes for a new CRD some time after discovery serves the kind.
        wait_until(
            "every Fleetward kind in the published OpenAPI",
            Duration::from_secs(60),
            || {
                for crd in &crds {
                    let singular = str_at(crd, "/spec/names/singular")?;
                    if !kubectl.call(&["explain", singular], None)?.success {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        for crd in crds {
            let plural = str_at(&crd, "/spec/names/plural")?;
            let singular = str_at(&crd, "/spec/names/singular")?;
            let root = crd
                .pointer("/spec/versions/0/schema/openAPIV3Schema")
                .with_context(|| format!("{plural} has no schema"))?;
            // `kubectl explain thing` shows the kind's doc comment.
            let kind_doc = squash(str_at(root, "/description")?);
            ensure!(!kind_doc.is_empty(), "{plural} has an empty description");
            let shown = squash(&kubectl.run(&["explain", singular])?);
            ensure!(
                shown.contains(&kind_doc),
                "kubectl explain {singular} does not show \"{kind_doc}\":\n{shown}"
            );
            let schema = root
                .pointer("/properties/spec")
                .with_context(|| format!("{plural} has no spec schema"))?;
            let doc = squash(str_at(schema, "/description")?);
            ensure!(!doc.is_empty(), "{plural}.spec has an empty description");
            let shown = squash(&kubectl.run(&["explain", &format!("{singular}.spec")])?);
            ensure!(
                shown.contains(&doc),
                "kubectl explain {singular}.spec does not show \"{doc}\":\n{shown}"
            );
            // Every documented field is listed with its own doc.
            if let Some(fields) = schema["properties"].as_object() {
                for (field, field_schema) in fields {
                    let Some(field_doc) = field_schema["description"].as_str() else {
                        continue;
                    };
                    let first_line = squash(field_doc.lines().next().unwrap_or_default());
                    ensure!(
                        shown.contains(field) && shown.contains(&first_line),
                        "kubectl explain {singular}.spec does not show {field}: \"{first_line}\""
                    );
                }
            }
        }
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn get_shows_printer_columns_and_the_fleetward_category_lists_every_kind() {
    run_test("crd-printing", |logs| {
        let (_plane, kubectl) = cluster(logs)?;
        let dir = workspace::examples_dir();
        let dir = dir.to_str().context("the examples path is not UTF-8")?;
        kubectl.run(&["apply", "--server-side", "-f", dir])?;
        let docs: Vec<Value> = example_documents()
            .into_iter()
            .filter(is_fleetward)
            .collect();

        for crd in crds()? {
            let plural = str_at(&crd, "/spec/names/plural")?;
            let kind = str_at(&crd, "/spec/names/kind")?;
            let namespaced = crd["spec"]["scope"] == "Namespaced";
            let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
                .as_array()
                .with_context(|| format!("{plural} has no printer columns"))?;
            let mut expected: Vec<String> = Vec::new();
            let mut expected_wide: Vec<String> = Vec::new();
            if namespaced {
                expected.push("NAMESPACE".into());
                expected_wide.push("NAMESPACE".into());
            }
            expected.push("NAME".into());
            expected_wide.push("NAME".into());
            for column in columns {
                let name = str_at(column, "/name")?.to_uppercase();
                if column["priority"].as_i64().unwrap_or(0) == 0 {
                    expected.push(name.clone());
                }
                expected_wide.push(name);
            }
            for (args, want) in [
                (vec!["get", plural, "-A"], &expected),
                (vec!["get", plural, "-A", "-o", "wide"], &expected_wide),
            ] {
                let table = kubectl.run(&args)?;
                let header = table.lines().next().unwrap_or_default();
                let got: Vec<&str> = header.split_whitespace().collect();
                let want_words: Vec<&str> =
                    want.iter().flat_map(|c| c.split_whitespace()).collect();
                ensure!(
                    got == want_words,
                    "kubectl {}: header {got:?}, expected {want_words:?}",
                    args.join(" ")
                );
                for doc in docs.iter().filter(|d| d["kind"] == kind) {
                    let name = str_at(doc, "/metadata/name")?;
                    let column = usize::from(namespaced);
                    ensure!(
                        table
                            .lines()
                            .skip(1)
                            .any(|row| row.split_whitespace().nth(column) == Some(name)),
                        "kubectl {} has no row for {kind} {name}:\n{table}",
                        args.join(" ")
                    );
                }
            }
            if let Some(short_names) = crd["spec"]["names"]["shortNames"].as_array() {
                for short in short_names.iter().filter_map(Value::as_str) {
                    kubectl.run(&["get", short, "-A"])?;
                }
            }
        }

        // Mixed kinds get kubectl's NAMESPACE column, Tenants too: no printer column repeats it.
        let table = kubectl.run(&["get", "fleetward", "-A"])?;
        for header in table.lines().filter(|l| l.starts_with("NAMESPACE")) {
            ensure!(
                header.matches("NAMESPACE").count() == 1,
                "kubectl get fleetward -A shows NAMESPACE twice: {header}"
            );
        }
        let listed = kubectl.run(&["get", "fleetward", "-A", "-o", "name"])?;
        for doc in &docs {
            let kind = str_at(doc, "/kind")?.to_lowercase();
            let name = str_at(doc, "/metadata/name")?;
            let entry = format!("{kind}.fleetward.io/{name}");
            ensure!(
                listed.lines().any(|l| l == entry),
                "kubectl get fleetward -A does not list {entry}:\n{listed}"
            );
        }
        let kinds_listed: std::collections::BTreeSet<&str> =
            listed.lines().filter_map(|l| l.split('/').next()).collect();
        ensure!(
            kinds_listed.len() == fleetward_crds::all().len(),
            "kubectl get fleetward -A lists the kinds {kinds_listed:?}, expected all {}",
            fleetward_crds::all().len()
        );
        Ok(())
    });
}
