//! `fleetward start` as a user runs it: the binary over a manifest directory, with real MQTT
//! clients (mosquitto_sub / mosquitto_pub), live edits, broken files, `credentials` and `can-i`.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use support::{SENSOR_KEY, Start, bin, examples, mosquitto_sub, tempdir};

/// The acme example, one document per file, without its Group, so the dashboard's only grant
/// is the Connection `dashboard-subscribes-telemetry` (in its own file).
fn split_acme(dir: &Path) {
    let text = std::fs::read_to_string(examples().join("acme.yaml")).expect("acme example");
    for (i, doc) in text.split("\n---\n").enumerate() {
        if doc.contains("kind: Group") {
            continue;
        }
        let name = if doc.contains("name: dashboard-subscribes-telemetry") {
            "dashboard-connection.yaml".to_owned()
        } else {
            format!("{i:02}.yaml")
        };
        std::fs::write(dir.join(name), doc).expect("write manifest");
    }
}

fn publish(addr: SocketAddr, topic: &str, message: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-u", "acme/sensor-1", "-P", SENSOR_KEY, "-q", "1"])
        .args(["-t", topic, "-m", message])
        .status()
        .expect("mosquitto_pub is installed");
    assert!(
        status.success(),
        "mosquitto_pub to {topic} failed: {status}"
    );
}

#[test]
fn deleting_a_connection_file_cuts_a_live_subscription_within_a_second() {
    let root = tempdir("revoke");
    let manifests = root.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    split_acme(&manifests);
    let start = Start::run(&manifests, &root.join("state"));
    let key = start.key_of("acme/dashboard");
    let sub = mosquitto_sub(start.mqtt, "acme/dashboard", &key, "m/acme/c/telemetry/#");
    publish(start.mqtt, "m/acme/c/telemetry/status", "before");
    sub.expect("m/acme/c/telemetry/status before", Duration::from_secs(5));

    std::fs::remove_file(manifests.join("dashboard-connection.yaml")).expect("rm");
    start.wait_log(
        "Connection acme/dashboard-subscribes-telemetry: removed",
        Duration::from_secs(1),
    );
    // Within the second the index saw it, the dataplane removed the subscription.
    thread::sleep(Duration::from_millis(300));
    publish(start.mqtt, "m/acme/c/telemetry/status", "after");
    assert_eq!(
        sub.count("after", Duration::from_secs(2)),
        0,
        "a revoked subscription still delivered"
    );
    let out = start.cli(&[
        "can-i",
        "acme/dashboard",
        "subscribe",
        "m/acme/c/telemetry/#",
    ]);
    assert!(
        !out.status.success(),
        "can-i must say no once the Connection is gone"
    );
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn a_broken_file_is_reported_and_everything_else_keeps_serving() {
    let root = tempdir("broken");
    let manifests = root.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    split_acme(&manifests);
    let start = Start::run(&manifests, &root.join("state"));
    let key = start.key_of("acme/dashboard");

    // A broken edit of the Connection's file: the last good version stays applied.
    let conn = manifests.join("dashboard-connection.yaml");
    let good = std::fs::read_to_string(&conn).expect("read");
    std::fs::write(
        &conn,
        good.replace("actions: [subscribe]", "actions: subscribe-ish"),
    )
    .expect("write");
    std::fs::write(manifests.join("garbage.yaml"), "kind: [unclosed\n").expect("write");
    let [garbage, conn_error] = start.process.expect_all(
        ["garbage.yaml", "dashboard-connection.yaml"],
        Duration::from_secs(5),
    );
    assert!(garbage.contains("ERROR"), "{garbage}");
    assert!(
        conn_error.contains("spec.actions") && conn_error.contains("document 1"),
        "the error names the document and field: {conn_error}"
    );

    let sub = mosquitto_sub(start.mqtt, "acme/dashboard", &key, "m/acme/c/telemetry/#");
    publish(start.mqtt, "m/acme/c/telemetry/status", "still-served");
    sub.expect("still-served", Duration::from_secs(5));

    let status = start.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("reported by fleetward start"), "{text}");
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains(" at 20") && l.contains("Z, from")),
        "the report's time is RFC 3339: {text}"
    );
    assert!(text.contains("2 files with errors"), "{text}");
    assert!(
        text.contains("error: ") && text.contains("garbage.yaml"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("acme/dashboard-subscribes-telemetry") && l.contains("True")),
        "{text}"
    );

    // Fixing the file applies it again.
    std::fs::write(&conn, &good).expect("write");
    start.wait_log("is valid again", Duration::from_secs(5));
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn a_wrong_key_and_a_cross_tenant_subscription_are_refused() {
    let root = tempdir("refuse");
    let start = Start::run(&examples(), &root.join("state"));
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &start.mqtt.port().to_string()])
        .args(["-u", "acme/sensor-1", "-P", "not-the-key", "-V", "mqttv311"])
        .args(["-t", "m/acme/c/telemetry/status", "-m", "x"])
        .output()
        .expect("mosquitto_pub runs");
    assert!(!out.status.success(), "a wrong key must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not authorised") || err.contains("Not authorized"),
        "{err}"
    );

    let key = start.key_of("globex/dashboard");
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &start.mqtt.port().to_string()])
        .args([
            "-u",
            "globex/dashboard",
            "-P",
            &key,
            "-t",
            "m/acme/c/telemetry/#",
        ])
        .args(["-W", "5"])
        .output()
        .expect("mosquitto_sub runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("All subscription requests were denied"),
        "{err}"
    );

    // Both refusals are in the log: the CONNECT once for people, and each as one JSON line
    // of the audit trail (docs/audit.md).
    let line = start.wait_log("refused a connection", Duration::from_secs(10));
    assert!(line.contains("reason=bad_credential"), "{line}");
    let audit = |needle: &str| {
        let line = start.wait_log(needle, Duration::from_secs(10));
        let json = line
            .split_once("fleetward::audit: ")
            .map(|(_, json)| json)
            .unwrap_or_else(|| panic!("not an audit line: {line}"));
        serde_json::from_str::<serde_json::Value>(json).expect("one JSON object per line")
    };
    let connect = audit(r#""action":"connect""#);
    assert_eq!(connect["subject"], "sensor-1", "{connect}");
    assert_eq!(connect["reason"], "bad_credential", "{connect}");
    let subscribe = audit(r#""action":"subscribe""#);
    assert_eq!(subscribe["tenant"], "globex", "{subscribe}");
    assert_eq!(subscribe["topic"], "m/acme/c/telemetry/#", "{subscribe}");
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn credentials_print_the_key_alone_on_the_last_line() {
    let root = tempdir("creds");
    let state = root.join("state");
    let run = |thing: &str| {
        Command::new(bin())
            .args(["credentials", thing, "--manifests"])
            .arg(examples())
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("runs")
    };
    // A brought-your-own key comes from the manifests' Secret.
    let out = run("acme/sensor-1");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("text");
    assert_eq!(text.lines().last(), Some(SENSOR_KEY), "{text}");
    // A generated key is kept (mode 0600) and printed the same each time.
    let first = String::from_utf8(run("acme/dashboard").stdout).expect("text");
    let second = String::from_utf8(run("acme/dashboard").stdout).expect("text");
    assert_eq!(first, second);
    let key = first.lines().last().expect("key line");
    assert!(key.len() >= 43 && !key.contains(' '), "{key}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("keys/acme/dashboard-credentials.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    for (thing, message) in [
        ("acme/nobody", "no Thing nobody"),
        ("nope/sensor-1", "no Tenant nope"),
        ("acme", "not <tenant>/<name>"),
    ] {
        let out = run(thing);
        assert!(!out.status.success(), "{thing}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{thing}: {err}");
    }
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn can_i_answers_on_the_examples_with_the_grant_or_the_reason() {
    let root = tempdir("can-i");
    let ask = |args: &[&str]| {
        let out = Command::new(bin())
            .arg("can-i")
            .args(args)
            .arg("--manifests")
            .arg(examples())
            .arg("--state-dir")
            .arg(root.join("state"))
            .output()
            .expect("runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let cases: &[(&[&str], bool, &str)] = &[
        (
            &["acme/sensor-1", "publish", "m/acme/c/telemetry/status"],
            true,
            "Connection sensor-1-publishes-telemetry",
        ),
        (
            &["acme/dashboard", "subscribe", "m/acme/c/telemetry/#"],
            true,
            "through Group operators",
        ),
        (
            &["acme/alice", "subscribe", "m/acme/c/telemetry/#", "--user"],
            true,
            "role admin",
        ),
        (
            &[
                "globex/dashboard",
                "subscribe",
                "m/globex/c/telemetry/status",
            ],
            true,
            "pattern status",
        ),
        (
            &["globex/dashboard", "subscribe", "m/acme/c/telemetry/#"],
            false,
            "cross_tenant",
        ),
        (
            &[
                "globex/dashboard",
                "subscribe",
                "m/globex/c/telemetry/readings/lab/+",
            ],
            false,
            "pattern readings/lab/#",
        ),
        (
            &["acme/sensor-1", "subscribe", "m/acme/c/telemetry/#"],
            false,
            "no_grant",
        ),
        (
            &["acme/sensor-1", "publish", "m/acme/c/other/x"],
            false,
            "unknown_channel",
        ),
        (
            &["acme/sensor-1", "publish", "m/acme/c/telemetry/+"],
            false,
            "not a valid topic",
        ),
        (
            &["acme/ghost", "publish", "m/acme/c/telemetry/x"],
            false,
            "unknown_subject",
        ),
        (
            &["acme/sensor-1", "publish", "$SYS/broker"],
            false,
            "not a valid topic",
        ),
    ];
    for (args, allowed, says) in cases {
        let (ok, text) = ask(args);
        assert_eq!(ok, *allowed, "{args:?}: {text}");
        let first = if *allowed { "yes" } else { "no" };
        assert_eq!(text.lines().next(), Some(first), "{args:?}: {text}");
        assert!(text.contains(says), "{args:?} should say {says:?}: {text}");
    }
    std::fs::remove_dir_all(root).ok();
}

/// A CORS preflight of a POST to `path` from a page of `origin`: the status and the
/// `Access-Control-Allow-Origin` it got.
fn preflight(http: SocketAddr, origin: &str, path: &str) -> (u16, Option<String>) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "-X", "OPTIONS"])
        .args(["-H", &format!("Origin: {origin}")])
        .args(["-H", "Access-Control-Request-Method: POST"])
        .arg(format!("http://{http}{path}"))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text}"));
    let allowed = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("access-control-allow-origin")
            .then(|| v.trim().to_owned())
    });
    (status, allowed)
}

#[test]
fn a_manifests_allowed_origins_and_the_cors_flag_answer_preflights() {
    const PAGE: &str = "https://dash.acme.example";
    let root = tempdir("cors");
    let manifests = root.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    let acme = std::fs::read_to_string(examples().join("acme.yaml")).expect("acme example");
    // The example allows the README's dashboard origin; this test allows its own instead.
    // (An origin a browser never sends, like `https://Dash.acme.example/`, is refused by the
    // CRD's rule before it gets here, as in a cluster: operator/src/directory.rs's tests.)
    let acme = acme.replacen(
        "allowedOrigins: [\"http://127.0.0.1:8000\"]",
        "allowedOrigins: [\"https://dash.acme.example\"]",
        1,
    );
    assert!(
        acme.contains("dash.acme.example"),
        "the example's Tenant moved"
    );
    std::fs::write(manifests.join("acme.yaml"), acme).expect("write");
    std::fs::copy(
        examples().join("globex.yaml"),
        manifests.join("globex.yaml"),
    )
    .expect("copy");
    let start = support::StartOptions::new(&manifests, &root.join("state"))
        .args(["--cors-allowed-origins=http://localhost:5173"])
        .run();
    // Poll until the policy is applied: the first snapshot may come after the listeners.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = preflight(start.http, PAGE, "/m/acme/c/telemetry/room1");
        if got == (200, Some(PAGE.to_owned())) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {got:?}");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        preflight(start.http, PAGE, "/m/globex/c/telemetry/room1"),
        (403, None)
    );
    assert_eq!(
        preflight(
            start.http,
            "https://Dash.acme.example/",
            "/m/acme/c/telemetry"
        ),
        (403, None)
    );
    assert_eq!(
        preflight(start.http, "http://localhost:5173", "/m/globex/c/telemetry"),
        (200, Some("http://localhost:5173".to_owned()))
    );
    assert_eq!(
        preflight(start.http, PAGE, "/users/tokens"),
        (200, Some(PAGE.to_owned()))
    );
    std::fs::remove_dir_all(root).ok();
}
