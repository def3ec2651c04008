//! The `fleetward` command line as a user runs it.

use assert_cmd::Command;

fn fleetward() -> Command {
    Command::cargo_bin("fleetward").expect("the fleetward binary is built by cargo test")
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "start",
        "credentials",
        "can-i",
        "status",
        "operator",
        "dataplane",
        "crds",
        "sleep",
    ] {
        let out = fleetward().args([sub, "--help"]).output().expect("runs");
        assert!(out.status.success(), "`fleetward {sub} --help` failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Usage: fleetward"),
            "`{sub} --help` printed: {text}"
        );
    }
}

#[test]
fn start_without_a_manifest_directory_says_how_to_give_one() {
    let dir = std::env::temp_dir().join(format!("fleetward-cli-{}", std::process::id()));
    let out = fleetward()
        .current_dir(std::env::temp_dir())
        .args(["start", "--manifests"])
        .arg(dir.join("missing"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .expect("runs");
    assert!(
        !out.status.success(),
        "`fleetward start` must exit non-zero"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist") && err.contains("--manifests"),
        "`fleetward start` said: {err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn crds_prints_the_seven_kinds_as_committed() {
    let out = fleetward().arg("crds").output().expect("runs");
    assert!(out.status.success());
    let stream = String::from_utf8(out.stdout).expect("UTF-8 YAML");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&stream)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("each document is YAML"))
        .collect();
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| d["spec"]["names"]["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        [
            "Tenant",
            "Thing",
            "Channel",
            "Connection",
            "User",
            "Group",
            "Policy"
        ]
    );
    for doc in &docs {
        assert_eq!(doc["kind"].as_str(), Some("CustomResourceDefinition"));
        assert_eq!(doc["spec"]["group"].as_str(), Some("fleetward.io"));
    }
    let committed: String = fleetward_crds::files()
        .expect("CRDs serialize")
        .into_iter()
        .map(|(name, _)| {
            let path = format!("{}/crds/{name}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
        })
        .collect::<Vec<_>>()
        .join("---\n");
    assert_eq!(
        docs,
        serde_yaml::Deserializer::from_str(&committed)
            .map(|doc| serde::Deserialize::deserialize(doc).expect("committed YAML parses"))
            .collect::<Vec<serde_yaml::Value>>(),
        "`fleetward crds` differs from the committed crds/*.yaml"
    );
}

#[test]
fn crds_out_dir_writes_one_file_per_kind() {
    let dir = std::env::temp_dir().join(format!("fleetward-crds-{}", std::process::id()));
    let out = fleetward()
        .args(["crds", "--out-dir"])
        .arg(&dir)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("out dir exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 7, "files: {names:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_dataplane_without_an_operator_says_how_to_give_one() {
    let out = fleetward()
        .args(["dataplane", "--state-dir"])
        .arg(std::env::temp_dir())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--operator"), "{err}");
}

#[test]
fn sleep_waits_and_exits_0_and_refuses_what_is_not_seconds() {
    // The chart's preStop hook on an image without a shell.
    let started = std::time::Instant::now();
    fleetward().args(["sleep", "1"]).assert().success();
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    let out = fleetward().args(["sleep", "soon"]).output().expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SECONDS"));
}
