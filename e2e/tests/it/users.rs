//! Users end to end: the operator creates the token signing-key Secret and pushes the keys with
//! the policy; a user signs in over HTTP on dataplane A (curl), subscribes over MQTT on dataplane
//! B with the token (mosquitto_sub) and receives what a thing publishes on A; raising the
//! user's `tokenEpoch` with kubectl refuses the token on every dataplane.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fleetward_e2e::fleetward::{
    Dataplane, DataplaneConfig, OPERATOR_NAMESPACE, http_get, start_dataplane_pair, start_operators,
};
use fleetward_e2e::workspace::examples_dir;
use fleetward_e2e::{ControlPlane, Kubectl, Nats, run_test, wait_until};
use serde_json::Value;

/// The PolicySync token the processes are started with.
const TOKEN: &str = "e2e-sync-token";
/// How long a push or a status may take.
const SETTLE: Duration = Duration::from_secs(30);
/// The Secret the chart names for release `fleetward`.
const SIGNING_SECRET: &str = "fleetward-signing-keys";
/// From examples/acme.yaml.
const ALICE_PASSWORD: &str = "acme-alice-example-password";
const SENSOR_KEY: &str = "p5OR2zf95euo-SDM6r3HQBkSsWKpSI1eT71WQ5jOhP8";

fn cluster(logs: &fleetward_e2e::LogDir) -> Result<(ControlPlane, Kubectl)> {
    let plane = ControlPlane::start(logs)?;
    let kubectl = plane.kubectl();
    plane.apply_crds()?;
    kubectl.run(&["create", "namespace", OPERATOR_NAMESPACE])?;
    let path = examples_dir().join("acme.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    kubectl.apply(&text)?;
    Ok((plane, kubectl))
}

/// `POST /users/tokens` with curl; the access token.
fn sign_in(dp: &Dataplane) -> Result<String> {
    let body =
        serde_json::json!({"tenant": "acme", "username": "alice", "password": ALICE_PASSWORD});
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data-binary", &body.to_string()])
        .arg(format!("http://{}/users/tokens", dp.http_addr))
        .output()
        .context("run curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').context("curl printed no status")?;
    ensure!(code.trim() == "200", "sign-in answered {code}: {json}");
    let v: Value = serde_json::from_str(json).context("a JSON answer")?;
    v["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the answer")
}

fn mosquitto_sub(dp: &Dataplane, token: &str, wait_s: &str) -> Command {
    let mut c = Command::new("mosquitto_sub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &dp.mqtt_addr.port().to_string(),
        "-V",
        "mqttv5",
    ])
    .args(["-i", "alice-dashboard", "-u", "acme/alice", "-P", token])
    .args(["-t", "m/acme/c/telemetry/#", "-v", "-C", "1", "-W", wait_s]);
    c
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_user_signs_in_on_one_dataplane_and_receives_on_another() {
    run_test("users-across-dataplanes", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        let nats = Nats::start(logs.path())?;
        let ops = start_operators(1, plane.kubeconfig(), TOKEN, logs.path())?;
        let config = DataplaneConfig {
            operators: vec![ops[0].sync_url()],
            sync_token: TOKEN.to_owned(),
            nats_url: Some(nats.url()),
        };
        let (a, b) = start_dataplane_pair(&logs.path().join("state"), &config, logs.path())?;

        // The operator made the Secret, and both dataplanes serve its key.
        wait_until("the signing-key Secret", SETTLE, || {
            Ok(kubectl
                .call(
                    &["get", "secret", SIGNING_SECRET, "-n", OPERATOR_NAMESPACE],
                    None,
                )?
                .success)
        })?;
        let kid = kubectl.run(&[
            "get",
            "secret",
            SIGNING_SECRET,
            "-n",
            OPERATOR_NAMESPACE,
            "-o",
            "go-template={{.data.active | base64decode}}",
        ])?;
        let kid = kid.trim().to_owned();
        ensure!(kid.starts_with('k'), "the active kid is {kid:?}");
        for dp in [&a, &b] {
            wait_until("the key in the JWKS", SETTLE, || {
                let (status, body) = http_get(dp.http_addr, "/.well-known/jwks.json")?;
                Ok(status == 200 && body.contains(&kid))
            })?;
        }
        wait_until("alice served", SETTLE, || {
            Ok(kubectl
                .call(
                    &[
                        "wait",
                        "user/alice",
                        "-n",
                        "acme",
                        "--for=condition=Enforced",
                        "--timeout=1s",
                    ],
                    None,
                )?
                .success)
        })?;

        // Signed in on A; subscribed on B; a thing publishes on A.
        let token = sign_in(&a)?;
        let subscriber = mosquitto_sub(&b, &token, "20")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run mosquitto_sub")?;
        std::thread::sleep(Duration::from_millis(1500));
        let published = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &a.mqtt_addr.port().to_string(),
                "-V",
                "mqttv5",
            ])
            .args(["-u", "acme/sensor-1", "-P", SENSOR_KEY, "-q", "1"])
            .args(["-t", "m/acme/c/telemetry/room1", "-m", "21.5"])
            .output()
            .context("run mosquitto_pub")?;
        ensure!(
            published.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&published.stderr)
        );
        let received = subscriber
            .wait_with_output()
            .context("mosquitto_sub ends")?;
        ensure!(
            String::from_utf8_lossy(&received.stdout).trim() == "m/acme/c/telemetry/room1 21.5",
            "alice on B received {:?} ({})",
            String::from_utf8_lossy(&received.stdout),
            String::from_utf8_lossy(&received.stderr)
        );

        // kubectl raises the epoch: the token is refused on both dataplanes.
        kubectl.run(&[
            "patch",
            "user",
            "alice",
            "-n",
            "acme",
            "--type=merge",
            "-p",
            r#"{"spec":{"tokenEpoch":1}}"#,
        ])?;
        for dp in [&b, &a] {
            wait_until("the old token refused", SETTLE, || {
                let out = mosquitto_sub(dp, &token, "1").output()?;
                let err = String::from_utf8_lossy(&out.stderr);
                Ok(!out.status.success() && err.to_lowercase().contains("not author"))
            })?;
        }
        // A new sign-in works again.
        let fresh = sign_in(&b)?;
        if fresh == token {
            bail!("the new token is the old one");
        }
        Ok(())
    });
}
