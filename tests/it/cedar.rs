//! A tenant that authorizes with Cedar, as a user runs it: `fleetward start` over manifests with
//! a `Policy`, and real clients (mosquitto_pub/sub, curl, a WebSocket client in Node): an
//! attribute policy, a forbid that overrides a Connection, an invalid edit that keeps the last
//! valid text enforced and says where it is wrong, and a new forbid cutting a live subscription.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use support::{Start, mosquitto_sub, tempdir};

const PROBE_KEY: &str = "bH4zUo0kqkq7Xw0cJ9e8d1Z2Wn5yT6vR3sQpLmNoPqA";
const LAB_PROBE_KEY: &str = "Zk9vJ2mXc4Qa7Tn1Re5Wy8Ui3Op6As0Df2Gh4Jk6LzA";
const DASHBOARD_KEY: &str = "Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXc9Vb8Nm7Qw6EA";

/// Tenant `lab` (engine cedar): probes `probe` (site hall) and `lab-probe` (site lab), a
/// `dashboard` with a Connection to subscribe to everything of `readings`, and the probes'
/// Connection to publish anywhere on it, which the site policy narrows.
const BASE: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Tenant
metadata: {name: lab}
spec:
  authorization: {engine: cedar}
---
apiVersion: v1
kind: Secret
metadata: {name: probe-credentials, namespace: lab}
stringData: {key: PROBE_KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: lab-probe-credentials, namespace: lab}
stringData: {key: LAB_PROBE_KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: dashboard-credentials, namespace: lab}
stringData: {key: DASHBOARD_KEY}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: probe, namespace: lab}
spec: {attributes: {site: hall}}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: lab-probe, namespace: lab}
spec: {attributes: {site: lab}}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: dashboard, namespace: lab}
spec: {disabled: false}
---
apiVersion: fleetward.io/v1alpha1
kind: Channel
metadata: {name: readings, namespace: lab}
spec: {maxQos: 1}
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: dashboard-reads, namespace: lab}
spec:
  subject: {kind: Thing, name: dashboard}
  channel: readings
  actions: [subscribe]
"#;

/// A probe publishes only under its own site.
const SITES: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Policy
metadata: {name: sites, namespace: lab}
spec:
  cedar: |
    @id("own-site")
    permit (principal is Thing, action == Action::"publish", resource in Channel::"readings")
    when { principal.hasTag("site") && resource.hasTag("0") && resource.getTag("0") == principal.getTag("site") };
"#;

/// Nobody reads the lab, whatever Connection says.
const LAB_PRIVATE: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Policy
metadata: {name: private, namespace: lab}
spec:
  cedar: |
    @id("lab-private")
    forbid (principal, action == Action::"subscribe", resource in Channel::"readings")
    when { resource.hasTag("0") && resource.getTag("0") == "lab" };
"#;

fn setup(tag: &str, policies: &[(&str, &str)]) -> (std::path::PathBuf, Start) {
    let root = tempdir(tag);
    let manifests = root.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    let base = BASE
        .replace("LAB_PROBE_KEY", LAB_PROBE_KEY)
        .replace("PROBE_KEY", PROBE_KEY)
        .replace("DASHBOARD_KEY", DASHBOARD_KEY);
    std::fs::write(manifests.join("base.yaml"), base).expect("write");
    for (file, text) in policies {
        std::fs::write(manifests.join(file), text).expect("write");
    }
    let start = Start::run(&manifests, &root.join("state"));
    (root, start)
}

/// `mosquitto_pub` (v5, QoS 1) as `thing`; its output, with the PUBACK's reason on refusal.
fn publish(addr: SocketAddr, thing: &str, key: &str, topic: &str, message: &str) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args([
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            &format!("lab/{thing}"),
            "-P",
            key,
        ])
        .args(["-t", topic, "-m", message])
        .output()
        .expect("mosquitto_pub is installed")
}

fn refused(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stderr).contains("Not authorized")
}

/// `curl` POST of `body` to the HTTP adapter as `key`: the status and the body.
fn http_publish(http: SocketAddr, key: &str, topic: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Thing {key}")])
        .args(["-H", "Content-Type: text/plain"])
        .args(["--data", body])
        .arg(format!("http://{http}/{topic}"))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status line");
    (code.trim().parse().expect("a status"), body.to_owned())
}

/// A WebSocket JSON stream of `path` opened with Node's `ws` client: the messages it got within
/// `wait`, one per line, then `close <code>` if the server closed it.
fn ws_stream(
    http: SocketAddr,
    path: &str,
    key: &str,
    wait: Duration,
) -> thread::JoinHandle<String> {
    let modules = std::env::var("FLEETWARD_BROWSER_MODULES")
        .expect("FLEETWARD_BROWSER_MODULES (scripts/install-tools.sh) names mqtt.js and ws");
    let script = format!(
        "const WebSocket = require('ws');
         const ws = new WebSocket('ws://{http}{path}', {{headers: {{Authorization: 'Thing {key}'}}}});
         ws.on('message', m => console.log('message ' + m));
         ws.on('close', c => {{ console.log('close ' + c); process.exit(0); }});
         ws.on('unexpected-response', (q, r) => {{ console.log('status ' + r.statusCode); process.exit(0); }});
         setTimeout(() => process.exit(0), {});",
        wait.as_millis()
    );
    thread::spawn(move || {
        let out = Command::new("node")
            .env("NODE_PATH", modules)
            .args(["-e", &script])
            .output()
            .expect("node is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

#[test]
fn an_attribute_policy_lets_a_probe_publish_under_its_own_site_only() {
    let (root, start) = setup("cedar-site", &[("sites.yaml", SITES)]);
    let sub = mosquitto_sub(
        start.mqtt,
        "lab/dashboard",
        DASHBOARD_KEY,
        "m/lab/c/readings/#",
    );

    let ok = publish(
        start.mqtt,
        "probe",
        PROBE_KEY,
        "m/lab/c/readings/hall/t",
        "hall-1",
    );
    assert!(ok.status.success() && !refused(&ok), "{ok:?}");
    sub.expect("m/lab/c/readings/hall/t hall-1", Duration::from_secs(5));

    let bad = publish(
        start.mqtt,
        "probe",
        PROBE_KEY,
        "m/lab/c/readings/lab/t",
        "lab-1",
    );
    assert!(refused(&bad), "a publish outside the probe's site: {bad:?}");
    assert_eq!(sub.count("lab-1", Duration::from_secs(1)), 0);

    // The same decisions over HTTP, with Cedar's reason.
    let (code, _) = http_publish(start.http, PROBE_KEY, "m/lab/c/readings/hall/t", "hall-2");
    assert!(
        (200..300).contains(&code),
        "HTTP publish in the site: {code}"
    );
    sub.expect("hall-2", Duration::from_secs(5));
    let (code, body) = http_publish(start.http, PROBE_KEY, "m/lab/c/readings/lab/t", "lab-2");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cedar_no_permit"), "{body}");

    // can-i names the policy.
    let out = start.cli(&["can-i", "lab/probe", "publish", "m/lab/c/readings/hall/t"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("permitted by Cedar policy Policy/sites/own-site"),
        "{text}"
    );
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn a_forbid_overrides_the_dashboards_connection_on_every_protocol() {
    let (root, start) = setup(
        "cedar-forbid",
        &[("sites.yaml", SITES), ("private.yaml", LAB_PRIVATE)],
    );
    // The lab itself is refused outright (SUBACK 0x87); the whole channel is granted and the
    // lab's messages are withheld from it.
    let denied = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &start.mqtt.port().to_string()])
        .args(["-V", "mqttv5", "-u", "lab/dashboard", "-P", DASHBOARD_KEY])
        .args(["-t", "m/lab/c/readings/lab/#", "-W", "3"])
        .output()
        .expect("mosquitto_sub is installed");
    let said = String::from_utf8_lossy(&denied.stderr);
    assert!(
        said.contains("denied") || said.contains("Not authorized"),
        "{said}"
    );

    let all = mosquitto_sub(
        start.mqtt,
        "lab/dashboard",
        DASHBOARD_KEY,
        "m/lab/c/readings/#",
    );
    let ws_all = ws_stream(
        start.http,
        "/m/lab/c/readings/%23",
        DASHBOARD_KEY,
        Duration::from_secs(4),
    );
    let ws_lab = ws_stream(
        start.http,
        "/m/lab/c/readings/lab/%23",
        DASHBOARD_KEY,
        Duration::from_secs(4),
    );
    thread::sleep(Duration::from_millis(1500));
    let lab = publish(
        start.mqtt,
        "lab-probe",
        LAB_PROBE_KEY,
        "m/lab/c/readings/lab/t",
        "secret",
    );
    assert!(lab.status.success() && !refused(&lab), "{lab:?}");
    let hall = publish(
        start.mqtt,
        "probe",
        PROBE_KEY,
        "m/lab/c/readings/hall/t",
        "public",
    );
    assert!(hall.status.success() && !refused(&hall), "{hall:?}");
    all.expect("m/lab/c/readings/hall/t public", Duration::from_secs(5));
    assert_eq!(
        all.count("secret", Duration::from_secs(1)),
        0,
        "a forbidden topic was delivered"
    );

    let ws_all = ws_all.join().expect("the ws client");
    assert!(ws_all.contains("public"), "{ws_all}");
    assert!(!ws_all.contains("secret"), "{ws_all}");
    let ws_lab = ws_lab.join().expect("the ws client");
    assert!(!ws_lab.contains("message "), "{ws_lab}");
    assert!(
        ws_lab.contains("close 4") || ws_lab.contains("status 403"),
        "{ws_lab}"
    );

    let out = start.cli(&[
        "can-i",
        "lab/dashboard",
        "subscribe",
        "m/lab/c/readings/lab/#",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cedar_forbid"), "{text}");
    assert!(
        text.contains("forbidden by Cedar policy Policy/private/lab-private"),
        "{text}"
    );
    std::fs::remove_dir_all(root).ok();
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write");
}

#[test]
fn an_invalid_edit_keeps_the_last_valid_policy_and_says_where() {
    let (root, start) = setup(
        "cedar-invalid",
        &[("sites.yaml", SITES), ("private.yaml", LAB_PRIVATE)],
    );
    let manifests = root.join("manifests");
    // A typo on the second line of the text: `principl`.
    let broken = LAB_PRIVATE.replace("forbid (principal,", "forbid (principl,");
    write(&manifests, "private.yaml", &broken);
    let line = start.wait_log("Policy lab/private: not Ready", Duration::from_secs(10));
    assert!(line.contains("InvalidPolicy"), "{line}");
    assert!(line.contains("line 2, column"), "{line}");
    assert!(line.contains("stays enforced"), "{line}");
    // The forbid still holds.
    let out = start.cli(&[
        "can-i",
        "lab/dashboard",
        "subscribe",
        "m/lab/c/readings/lab/#",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("forbidden by Cedar policy Policy/private/lab-private"),
        "{text}"
    );
    let status = start.cli(&["status"]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("InvalidPolicy"), "{shown}");
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn a_new_forbid_cuts_a_live_subscription_within_a_second() {
    let (root, start) = setup("cedar-revoke", &[("sites.yaml", SITES)]);
    let manifests = root.join("manifests");
    let sub = mosquitto_sub(
        start.mqtt,
        "lab/dashboard",
        DASHBOARD_KEY,
        "m/lab/c/readings/lab/#",
    );
    let before = publish(
        start.mqtt,
        "lab-probe",
        LAB_PROBE_KEY,
        "m/lab/c/readings/lab/t",
        "before",
    );
    assert!(before.status.success() && !refused(&before), "{before:?}");
    sub.expect("m/lab/c/readings/lab/t before", Duration::from_secs(5));

    write(&manifests, "private.yaml", LAB_PRIVATE);
    start.wait_log("Policy lab/private: Ready", Duration::from_secs(1));
    // Within the second the index saw it, the dataplane re-checked the live subscription.
    thread::sleep(Duration::from_millis(300));
    let after = publish(
        start.mqtt,
        "lab-probe",
        LAB_PROBE_KEY,
        "m/lab/c/readings/lab/t",
        "after",
    );
    assert!(after.status.success() && !refused(&after), "{after:?}");
    assert_eq!(
        sub.count("after", Duration::from_secs(2)),
        0,
        "a subscription a new forbid covers still delivered"
    );
    std::fs::remove_dir_all(root).ok();
}
