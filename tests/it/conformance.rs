//! MQTT 5 conformance: `tests/conformance/suite.py` (a raw MQTT 5 client of our own) runs one
//! check per normative statement of MQTT 5 chapters 3 and 4 against `fleetward start` over a
//! manifest directory of its own, and every check must pass. The conformance table at the
//! end of `dataplane/MQTT.md` must name exactly the statements the suite checks.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Start, tempdir};

const ALPHA_KEY: &str = "Qm9vdHN0cmFwLWNvbmZvcm1hbmNlLWFscGhhLWtleTA";
const BETA_KEY: &str = "Qm9vdHN0cmFwLWNvbmZvcm1hbmNlLWJldGEta2V5MDE";

/// Statements Fleetward does not meet yet: each is a row marked "fails" in MQTT.md's table
/// and a bug to fix. The test fails when one of them starts passing, so the list (and the
/// table) cannot go stale.
const KNOWN_FAILURES: &[&str] = &[];

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/suite.py")
}

/// The suite's JSON lines, as objects.
fn run_suite(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(suite())
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "suite.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The statement ids of the table in MQTT.md's "Conformance" section, and the ones marked
/// as failing.
fn table_ids() -> (BTreeSet<String>, BTreeSet<String>) {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dataplane/MQTT.md"))
            .expect("dataplane/MQTT.md");
    let section = doc
        .split("\n## Conformance\n")
        .nth(1)
        .expect("MQTT.md has a Conformance section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let (mut ids, mut failing) = (BTreeSet::new(), BTreeSet::new());
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let id = row.split('`').nth(1).unwrap_or_default().to_owned();
        if row.contains("**fails**") {
            failing.insert(id.clone());
        }
        ids.insert(id);
    }
    (ids, failing)
}

#[test]
fn the_table_names_exactly_the_statements_the_suite_checks() {
    let listed: BTreeSet<String> = run_suite(&["--list"])
        .iter()
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect();
    let (table, failing) = table_ids();
    let missing: Vec<_> = listed.difference(&table).collect();
    let extra: Vec<_> = table.difference(&listed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "MQTT.md's conformance table lacks {missing:?} and has {extra:?} the suite does not check"
    );
    let known: BTreeSet<String> = KNOWN_FAILURES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(failing, known, "rows marked **fails** vs KNOWN_FAILURES");
}

#[test]
fn fleetward_meets_the_mqtt5_statements_it_checks() {
    let root = tempdir("conformance");
    let manifests = root.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifest dir");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/manifest.yaml"),
        manifests.join("conformance.yaml"),
    )
    .expect("manifest");
    let mut start = Start::run(&manifests, &root.join("state"));
    let port = start.mqtt.port().to_string();
    let results = run_suite(&[
        "127.0.0.1",
        &port,
        "conf",
        "lab",
        "conf/alpha",
        ALPHA_KEY,
        "conf/beta",
        BETA_KEY,
    ]);
    let outcome: BTreeMap<String, (bool, String)> = results
        .iter()
        .filter_map(|v| {
            let id = v["id"].as_str()?.to_owned();
            let ok = v["ok"].as_bool()?;
            Some((
                id,
                (ok, v["detail"].as_str().unwrap_or_default().to_owned()),
            ))
        })
        .collect();
    assert!(outcome.len() > 80, "the suite ran only {}", outcome.len());
    let failed: Vec<String> = outcome
        .iter()
        .filter(|(id, (ok, _))| !ok && !KNOWN_FAILURES.contains(&id.as_str()))
        .map(|(id, (_, detail))| format!("{id}: {detail}"))
        .collect();
    let fixed: Vec<&String> = outcome
        .iter()
        .filter(|(id, (ok, _))| *ok && KNOWN_FAILURES.contains(&id.as_str()))
        .map(|(id, _)| id)
        .collect();
    assert!(
        failed.is_empty(),
        "statements not met:\n{}",
        failed.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "{fixed:?} pass now: take them out of KNOWN_FAILURES and MQTT.md's table"
    );
    assert!(start.alive(), "fleetward start survived the suite");
    let _ = std::fs::remove_dir_all(&root);
}
