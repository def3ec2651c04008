//! `fleetward can-i` beside a running `fleetward start`: it answers from what the server serves
//! (a broken file's last good version included) through the `/can-i` of the server's admin API, says
//! so, and answers from the files, saying that too, when no server runs.

use crate::support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{Start, bin, examples, tempdir};

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `can-i` over `manifests` with the state directory `state`.
fn can_i(manifests: &std::path::Path, state: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("can-i")
        .args(args)
        .arg("--manifests")
        .arg(manifests)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("fleetward runs")
}

const SENSOR_PUBLISHES: [&str; 3] = ["acme/sensor-1", "publish", "m/acme/c/telemetry/status"];

#[test]
fn can_i_answers_from_the_running_server_and_a_broken_files_last_good_version() {
    let root = tempdir("can-i-server");
    let manifests = root.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    for f in ["acme.yaml", "globex.yaml"] {
        std::fs::copy(examples().join(f), manifests.join(f)).expect("copy example");
    }
    let state = root.join("state");
    let mut start = Start::run(&manifests, &state);

    let out = start.cli(&[
        "can-i",
        SENSOR_PUBLISHES[0],
        SENSOR_PUBLISHES[1],
        SENSOR_PUBLISHES[2],
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("yes\n"), "{stdout}");
    let from_server = "answered by the running server at http://127.0.0.1:";
    assert!(stdout.contains(from_server), "{stdout}");
    assert!(stdout.contains(&format!("pid {}", start.pid())), "{stdout}");

    // A misspelt field: the API server would refuse the file, and so does start; the file's
    // last good version keeps serving.
    let acme = std::fs::read_to_string(manifests.join("acme.yaml")).expect("read");
    assert!(acme.contains("maxQos: 1"), "the example's Channel moved");
    std::fs::write(
        manifests.join("acme.yaml"),
        acme.replace("maxQos: 1", "maxQoS: 1"),
    )
    .expect("write");
    let line = start.wait_log("unknown field \"spec.maxQoS\"", Duration::from_secs(10));
    assert!(
        line.contains("ERROR")
            && line.contains("acme.yaml")
            && line.contains("document 6: Channel acme/telemetry: strict decoding error"),
        "{line}"
    );

    let out = start.cli(&[
        "can-i",
        SENSOR_PUBLISHES[0],
        SENSOR_PUBLISHES[1],
        SENSOR_PUBLISHES[2],
    ]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "the last good version answers: {stdout}{stderr}"
    );
    assert!(
        stdout.contains("allowed by Connection sensor-1-publishes-telemetry")
            && stdout.contains(from_server),
        "{stdout}"
    );

    // The same question of the files alone (another state directory, no server): the broken
    // file is skipped, and the answer says where it came from.
    let alone = root.join("alone");
    let out = can_i(&manifests, &alone, &SENSOR_PUBLISHES);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("unknown_tenant"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "answered from the files in {}; no server running on {}",
            manifests.display(),
            alone.display()
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains("skipped") && stderr.contains("unknown field \"spec.maxQoS\""),
        "{stderr}"
    );

    // The server is not asked about other manifests than it serves.
    let out = can_i(&examples(), &state, &SENSOR_PUBLISHES);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("serves"), "{stderr}");
    assert!(
        stdout.contains("answered from the files in") && stdout.contains("serves other files"),
        "{stdout}"
    );

    // The endpoint answers only with the token of the state directory.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("server.json")).expect("start records its endpoint"),
    )
    .expect("json");
    let url = record["url"].as_str().expect("a url");
    assert_eq!(
        url,
        format!("http://{}", start.admin),
        "the record names the admin API"
    );
    let ask_as = |token: &str, subject: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-G"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["--data-urlencode", &format!("subject={subject}")])
            .args(["--data-urlencode", "verb=publish"])
            .args(["--data-urlencode", "topic=m/acme/c/telemetry/status"])
            .arg(format!("{url}/can-i"))
            .output()
            .expect("curl is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let token = record["token"].as_str().expect("a token");
    assert_eq!(ask_as("not-the-token", "acme/sensor-1"), "401");
    assert_eq!(ask_as(token, "acme/sensor-1"), "200");
    assert_eq!(ask_as(token, "no-tenant-here"), "400");

    // Once the server is gone (killed: its record stays behind), the files answer.
    start.process.child.kill().expect("kill");
    start.process.child.wait().expect("wait");
    assert!(!start.alive());
    let out = start.cli(&[
        "can-i",
        SENSOR_PUBLISHES[0],
        SENSOR_PUBLISHES[1],
        SENSOR_PUBLISHES[2],
    ]);
    let (stdout, _) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("no server running"), "{stdout}");
    std::fs::remove_dir_all(root).ok();
}
