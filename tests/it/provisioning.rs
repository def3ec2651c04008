//! Fleet provisioning through `fleetward start`, with curl and mosquitto as a factory line
//! would use them: a device holding the claim certificate sends its own CSR (openssl) and gets
//! a Thing and a certificate it connects with at once; the claim's count, name pattern,
//! certificate and a taken name are refused with their answers.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{StartOptions, bin, tempdir};

const ACME: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  deviceCA: {secretName: acme-device-ca}
  provisioning:
    claims:
    - name: line-1
      certificateSecretName: line-1-claim
      signingSecretName: acme-device-ca
      namePattern: "sensor-[0-9]{4}"
      maxThings: 1
---
apiVersion: fleetward.io/v1alpha1
kind: Channel
metadata: {name: telemetry, namespace: acme}
spec: {}
"#;

/// A device's key and CSR for `name`, made with openssl as a device's firmware would.
fn device_csr(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", &format!("/CN={name}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, std::fs::read_to_string(&csr).expect("the CSR"))
}

/// POSTs a provisioning request with curl; the status and the body.
fn provision(
    url: &str,
    server_ca: &Path,
    claim: Option<(&Path, &Path)>,
    thing: &str,
    csr: &str,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({"thing": thing, "csr": csr}).to_string();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(server_ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            url,
        ]);
    if let Some((crt, key)) = claim {
        cmd.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').expect("a status line");
    let value = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
    (code.trim().parse().expect("a status"), value)
}

#[test]
fn a_claim_makes_a_thing_that_connects_and_refuses_past_its_limit() {
    let root = tempdir("provisioning");
    let (manifests, state) = (root.join("manifests"), root.join("state"));
    std::fs::create_dir_all(&manifests).expect("dir");
    // The claim certificate every device of the line holds: from `fleetward certs issue`.
    let claim_dir = root.join("claim");
    let issued = Command::new(bin())
        .args(["certs", "issue", "acme/line-1-claim", "--state-dir"])
        .arg(&state)
        .arg("--out")
        .arg(&claim_dir)
        .output()
        .expect("fleetward runs");
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let (claim_crt, claim_key) = (
        claim_dir.join("line-1-claim.crt"),
        claim_dir.join("line-1-claim.key"),
    );
    let claim_pem = std::fs::read_to_string(&claim_crt).expect("the claim certificate");
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "line-1-claim", "namespace": "acme"},
        "stringData": {"tls.crt": claim_pem},
    });
    let yaml = format!(
        "{ACME}---\n{}",
        serde_yaml::to_string(&secret).expect("yaml")
    );
    std::fs::write(manifests.join("acme.yaml"), yaml).expect("write");
    let start = StartOptions::new(&manifests, &state)
        .args(["--mqtts-listen=127.0.0.1:0", "--https-listen=127.0.0.1:0"])
        .run();
    let server_ca = state.join("tls").join("ca.crt");
    let https = start.https.expect("HTTPS");
    let url = format!(
        "https://localhost:{}/provisioning/acme/line-1",
        https.port()
    );
    let claim = Some((claim_crt.as_path(), claim_key.as_path()));
    let (key, csr) = device_csr(&root, "sensor-0001");

    // No claim certificate, and a device's own certificate instead of the claim's: 401.
    assert_eq!(
        provision(&url, &server_ca, None, "sensor-0001", &csr).0,
        401
    );
    // A name the pattern does not give, and a CSR that does not read.
    let (code, body) = provision(&url, &server_ca, claim, "pump-1", &csr);
    assert_eq!(
        (code, body["error"].as_str()),
        (422, Some("name_not_allowed"))
    );
    let (code, body) = provision(&url, &server_ca, claim, "sensor-0002", "not a csr");
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("bad_csr")),
        "{body}"
    );

    // The request: a Thing and a certificate for the device's own key.
    let (code, body) = provision(&url, &server_ca, claim, "sensor-0001", &csr);
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["thing"], "sensor-0001");
    let cert = root.join("sensor-0001.crt");
    std::fs::write(&cert, body["certificate"].as_str().expect("a certificate")).expect("write");
    let written = manifests.join("provisioned").join("acme--sensor-0001.yaml");
    let manifest = std::fs::read_to_string(&written).expect("the thing's manifest");
    assert!(
        manifest.contains("fleetward.io/provisioning-claim: line-1"),
        "{manifest}"
    );
    // The device connects with it at once (the answer waited until the thing was served).
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &start.mqtts.expect("MQTTS").port().to_string(),
        ])
        .arg("--cafile")
        .arg(&server_ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-t", "m/acme/c/telemetry/x", "-m", "1"])
        .output()
        .expect("mosquitto_pub runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The name is taken; and the claim (maxThings 1) is exhausted.
    let (code, body) = provision(&url, &server_ca, claim, "sensor-0001", &csr);
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("exists")),
        "{body}"
    );
    let (_, csr2) = device_csr(&root, "sensor-0002");
    let (code, body) = provision(&url, &server_ca, claim, "sensor-0002", &csr2);
    assert_eq!(
        (code, body["error"].as_str()),
        (403, Some("claim_exhausted")),
        "{body}"
    );
    assert!(
        !manifests
            .join("provisioned")
            .join("acme--sensor-0002.yaml")
            .exists()
    );

    // The status shows the claim's count; the metric counts what this pod made.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = start.cli(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("sensor-0001") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sensor-0001 not in the status: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = Command::new("curl")
        .args(["-s", &format!("http://{}/metrics", start.admin)])
        .output()
        .expect("curl runs");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("fleetward_provisioned_things_total 1"),
        "{metrics}"
    );
    std::fs::remove_dir_all(&root).ok();
}
