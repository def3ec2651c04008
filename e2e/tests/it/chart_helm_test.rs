//! `helm test` on the e2e API server, as far as a cluster without a kubelet allows.
//!
//! Covered: the chart installs with the test enabled; `helm test` creates the test Pod, which
//! the API server admits; that Pod's image, its Service address and port, and its credentials
//! from Secrets; and the Pod's exact command, run here under /bin/sh with the environment the
//! kubelet would give it (the Secrets read from the API server), against an operator and a
//! dataplane started from the built binary with the chart's flags. It publishes and
//! subscribes, and a wrong password fails it with a message naming the subjects.
//!
//! Not covered: a kubelet running the Pod (pulling the mosquitto image, the cluster DNS name
//! `fleetward-dataplane.<namespace>.svc` resolving, the Service routing to dataplane pods):
//! here the Pod stays Pending and `helm test` times out, and the command dials the local
//! dataplane instead of the Service.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fleetward_e2e::chart::{self, RELEASE};
use fleetward_e2e::fleetward::{Dataplane, DataplaneConfig, OPERATOR_NAMESPACE as NS, Operator};
use fleetward_e2e::workspace::examples_dir;
use fleetward_e2e::{ControlPlane, Kubectl, run_test, wait_until};
use serde_json::Value;

/// The PolicySync token the processes are started with.
const TOKEN: &str = "e2e-sync-token";
const TOPIC: &str = "m/acme/c/telemetry/helm-test";

/// The key in Secret `secret` of namespace acme (a Thing's credentials).
fn thing_key(kubectl: &Kubectl, secret: &str) -> Result<String> {
    let s = kubectl.get_json(&["secret", secret, "-n", "acme"])?;
    decode_base64(
        s["data"]["key"]
            .as_str()
            .with_context(|| format!("{secret} has no key"))?,
    )
}

/// A Secret with keys username and password in the release namespace.
fn credentials_secret(kubectl: &Kubectl, name: &str, username: &str, password: &str) -> Result<()> {
    kubectl.run(&[
        "create",
        "secret",
        "generic",
        name,
        "-n",
        NS,
        &format!("--from-literal=username={username}"),
        &format!("--from-literal=password={password}"),
    ])?;
    Ok(())
}

/// The environment the kubelet gives `container`: literal values, and secretKeyRefs read from
/// the API server, with `overrides` in place of the named literals.
fn pod_env(
    kubectl: &Kubectl,
    container: &Value,
    overrides: &BTreeMap<&str, String>,
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for e in container["env"]
        .as_array()
        .context("the test container has no env")?
    {
        let name = e["name"].as_str().context("an env entry without a name")?;
        let value = if let Some(v) = e["value"].as_str() {
            overrides.get(name).cloned().unwrap_or_else(|| v.to_owned())
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let secret = r["name"]
                .as_str()
                .context("a secretKeyRef without a name")?;
            let key = r["key"].as_str().context("a secretKeyRef without a key")?;
            let s = kubectl.get_json(&["secret", secret, "-n", NS])?;
            let encoded = s["data"][key]
                .as_str()
                .with_context(|| format!("Secret {secret} has no key {key}"))?;
            decode_base64(encoded)?
        } else {
            bail!(
                "the test Pod sets {name} from {}, which this test cannot give it",
                e["valueFrom"]
            );
        };
        env.insert(name.to_owned(), value);
    }
    Ok(env)
}

/// Standard base64, as the API server encodes Secret data.
fn decode_base64(text: &str) -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .with_context(|| format!("{text:?} is not base64"))?;
        bits = (bits << 6) | u32::try_from(v).context("a base64 digit")?;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).context("a byte")?);
        }
    }
    String::from_utf8(out).context("a Secret value that is not UTF-8")
}

/// Runs the test container's command and args with `env` only (plus PATH for the clients).
fn run_pod_command(container: &Value, env: &BTreeMap<String, String>) -> Result<(bool, String)> {
    let command: Vec<&str> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(container["args"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let (program, args) = command
        .split_first()
        .context("the test Pod has no command")?;
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .with_context(|| format!("run {program}"))?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn helm_test_publishes_and_subscribes_through_the_dataplane_service() {
    run_test("chart-helm-test", |logs| {
        let plane = ControlPlane::start_with_crds(logs)?;
        let kubectl = plane.kubectl();
        let kubeconfig = plane
            .kubeconfig()
            .to_str()
            .context("a UTF-8 kubeconfig path")?
            .to_owned();
        let chart_dir = chart::chart_dir();
        let chart_path = chart_dir.to_str().context("a UTF-8 chart path")?;
        let install = chart::helm(&[
            "install",
            RELEASE,
            chart_path,
            "--namespace",
            NS,
            "--create-namespace",
            "--kubeconfig",
            &kubeconfig,
            "--skip-crds",
            "--set",
            "tests.pubsub.publisherSecret=helm-test-publisher",
            "--set",
            "tests.pubsub.subscriberSecret=helm-test-subscriber",
            "--set",
            &format!("tests.pubsub.topic={TOPIC}"),
            "--set",
            "tests.pubsub.timeoutSeconds=30",
        ])?;
        ensure!(install.success, "helm install: {}", install.stderr);

        // The operator and a dataplane from the built binary, with the chart's flags.
        let op = Operator::start("operator-0", plane.kubeconfig(), TOKEN, logs.path())?;
        for file in ["acme.yaml", "globex.yaml"] {
            let path = examples_dir().join(file);
            kubectl.run(&[
                "apply",
                "--server-side",
                "-f",
                path.to_str().context("UTF-8")?,
            ])?;
        }
        let state = tempfile::tempdir().context("create a state directory")?;
        let dp = Dataplane::start(
            "dataplane-0",
            state.path(),
            DataplaneConfig {
                operators: vec![op.sync_url()],
                sync_token: TOKEN.to_owned(),
                nats_url: None,
            },
            logs.path(),
        )?;
        kubectl.run(&[
            "wait",
            "--for=condition=Enforced",
            "--timeout=120s",
            "connections",
            "--all",
            "-n",
            "acme",
        ])?;
        let publisher = thing_key(&kubectl, "sensor-1-credentials")?;
        let subscriber = thing_key(&kubectl, "dashboard-credentials")?;
        credentials_secret(&kubectl, "helm-test-publisher", "acme/sensor-1", &publisher)?;
        credentials_secret(
            &kubectl,
            "helm-test-subscriber",
            "acme/dashboard",
            &subscriber,
        )?;

        // helm test creates the Pod; with no kubelet it stays Pending and helm gives up.
        let test = chart::helm(&[
            "test",
            RELEASE,
            "--namespace",
            NS,
            "--kubeconfig",
            &kubeconfig,
            "--timeout",
            "10s",
        ])?;
        ensure!(
            !test.success,
            "helm test cannot pass without a kubelet: {}",
            test.stdout
        );
        let pod_name = format!("{RELEASE}-test-pubsub");
        wait_until("the test Pod exists", Duration::from_secs(30), || {
            kubectl.exists(&["pod", &pod_name, "-n", NS])
        })
        .with_context(|| format!("helm test said: {}{}", test.stdout, test.stderr))?;
        let pod = kubectl.get_json(&["pod", &pod_name, "-n", NS])?;
        ensure!(
            pod["metadata"]["annotations"]["helm.sh/hook"] == "test",
            "a test hook: {}",
            pod["metadata"]
        );
        let container = &pod["spec"]["containers"][0];
        ensure!(
            container["image"] == "eclipse-mosquitto:2.0.20",
            "the mosquitto clients' image: {}",
            container["image"]
        );
        let service = kubectl.get_json(&["service", "fleetward-dataplane", "-n", NS])?;
        let mqtt_port = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "mqtt")
            .and_then(|p| p["port"].as_i64())
            .context("the dataplane Service has no mqtt port")?;
        let literal = |name: &str| -> Option<String> {
            container["env"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == name)?["value"]
                .as_str()
                .map(str::to_owned)
        };
        ensure!(
            literal("FW_HOST").as_deref() == Some(&format!("fleetward-dataplane.{NS}.svc")[..])
                && literal("FW_PORT") == Some(mqtt_port.to_string())
                && literal("FW_TOPIC").as_deref() == Some(TOPIC),
            "the Pod dials the Service's DNS name and MQTT port: {}",
            container["env"]
        );
        let script = container["args"][0].as_str().unwrap_or_default();
        ensure!(
            script.contains("mosquitto_sub") && script.contains("mosquitto_pub"),
            "the Pod subscribes and publishes: {script}"
        );

        // Its exact command, with the Service's address replaced by the local dataplane's.
        let local = BTreeMap::from([
            ("FW_HOST", dp.mqtt_addr.ip().to_string()),
            ("FW_PORT", dp.mqtt_addr.port().to_string()),
        ]);
        let env = pod_env(&kubectl, container, &local)?;
        ensure!(
            env["FW_PUB_USERNAME"] == "acme/sensor-1" && env["FW_SUB_PASSWORD"] == subscriber,
            "the credentials come from the Secrets"
        );
        let (ok, output) = run_pod_command(container, &env)?;
        ensure!(
            ok && output.contains("OK: acme/sensor-1 published on m/acme/c/telemetry/helm-test and acme/dashboard received it"),
            "the test Pod's command fails against a running dataplane:\n{output}"
        );

        // A subscriber that cannot sign in fails the test, naming both subjects.
        let mut wrong = env.clone();
        wrong.insert("FW_SUB_PASSWORD".to_owned(), "not-the-key".to_owned());
        let (ok, output) = run_pod_command(container, &wrong)?;
        ensure!(
            !ok && output
                .contains("FAIL: acme/dashboard subscribed to m/acme/c/telemetry/helm-test"),
            "a refused subscriber fails the test:\n{output}"
        );
        Ok(())
    });
}
