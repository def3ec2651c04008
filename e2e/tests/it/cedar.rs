//! Cedar end to end on a real API server: `kubectl explain` documents the Policy kind; the
//! operator validates a Policy, reports it Ready and Enforced, and pushes it; a dataplane
//! enforces the attribute policy and the forbid of `examples/initech.yaml` for mosquitto
//! clients; an invalid edit is refused with its line and column in the status while the last
//! valid text stays enforced.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleetward_e2e::fleetward::{
    DataplaneConfig, OPERATOR_NAMESPACE, start_dataplane_pair, start_operators,
};
use fleetward_e2e::workspace::{examples_dir, fleetward_binary};
use fleetward_e2e::{ControlPlane, Kubectl, run_test, wait_until};

const TOKEN: &str = "e2e-sync-token";
const SETTLE: Duration = Duration::from_secs(30);

/// probe-1's key, from examples/initech.yaml.
fn probe_key() -> Result<String> {
    let text = std::fs::read_to_string(examples_dir().join("initech.yaml"))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("key: "))
        .map(str::to_owned)
        .context("no key in examples/initech.yaml")
}

fn publish(port: u16, user: &str, key: &str, topic: &str) -> Result<Output> {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args(["-u", user, "-P", key, "-q", "1", "-t", topic, "-m", "21.5"])
        .output()
        .context("run mosquitto_pub")
}

fn refused(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stderr).contains("Not authorized")
}

fn condition(kubectl: &Kubectl, policy: &str, kind: &str) -> Result<(String, String)> {
    let v = kubectl.get_json(&["policy", policy, "-n", "initech"])?;
    let c = v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind);
    Ok(c.map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_owned(),
            c["reason"].as_str().unwrap_or_default().to_owned(),
        )
    })
    .unwrap_or_default())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_cedar_tenant_is_enforced_from_its_policy_objects() {
    run_test("cedar-policies", |logs| {
        let plane = ControlPlane::start(logs)?;
        let kubectl = plane.kubectl();
        plane.apply_crds()?;
        kubectl.run(&["create", "namespace", OPERATOR_NAMESPACE])?;

        let explained = kubectl.run(&["explain", "policy.spec"])?;
        ensure!(
            explained.contains("cedar") && explained.contains("Cedar policy text"),
            "kubectl explain policy.spec: {explained}"
        );
        let explained = kubectl.run(&["explain", "tenant.spec.authorization.engine"])?;
        ensure!(explained.contains("cedar"), "{explained}");

        let text = std::fs::read_to_string(examples_dir().join("initech.yaml"))?;
        kubectl.apply(&text)?;
        let ops = start_operators(1, plane.kubeconfig(), TOKEN, logs.path())?;
        let config = DataplaneConfig {
            operators: vec![ops[0].sync_url()],
            sync_token: TOKEN.to_owned(),
            nats_url: None,
        };
        let (a, _b) = start_dataplane_pair(&logs.path().join("state"), &config, logs.path())?;
        wait_until("Policy sites Ready and Enforced", SETTLE, || {
            Ok(condition(&kubectl, "sites", "Ready")?.0 == "True"
                && condition(&kubectl, "sites", "Enforced")?.0 == "True")
        })?;

        // The attribute policy: probe-1 (site hall) publishes under hall only.
        let key = probe_key()?;
        let port = a.mqtt_addr.port();
        let ok = publish(port, "initech/probe-1", &key, "m/initech/c/readings/hall/t")?;
        ensure!(ok.status.success() && !refused(&ok), "{ok:?}");
        let bad = publish(port, "initech/probe-1", &key, "m/initech/c/readings/lab/t")?;
        ensure!(refused(&bad), "a publish outside the site: {bad:?}");

        // can-i --cluster names the Cedar policy that decided.
        let out = Command::new(fleetward_binary()?)
            .env("KUBECONFIG", plane.kubeconfig())
            .args([
                "can-i",
                "initech/dashboard",
                "subscribe",
                "m/initech/c/readings/lab/#",
            ])
            .arg("--cluster")
            .output()
            .context("run fleetward can-i")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            !out.status.success()
                && text.contains("forbidden by Cedar policy Policy/sites/lab-private"),
            "can-i --cluster: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // An invalid edit: refused with its place, the last valid text enforced meanwhile.
        kubectl.run(&[
            "patch",
            "policy",
            "sites",
            "-n",
            "initech",
            "--type=merge",
            "-p",
            r#"{"spec":{"cedar":"permit (principal, action, resource)\nwhen { principal.site == };"}}"#,
        ])?;
        wait_until("Policy sites InvalidPolicy", SETTLE, || {
            Ok(condition(&kubectl, "sites", "Ready")? == ("False".into(), "InvalidPolicy".into()))
        })?;
        let v = kubectl.get_json(&["policy", "sites", "-n", "initech"])?;
        let error = &v["status"]["errors"][0];
        ensure!(error["line"] == 2, "the error's place: {v}");
        ensure!(error["column"].as_u64().is_some_and(|c| c > 0), "{v}");
        ensure!(v["status"]["enforced"]["generation"] == 1, "{v}");
        let still = publish(port, "initech/probe-1", &key, "m/initech/c/readings/lab/t")?;
        ensure!(
            refused(&still),
            "the last valid text must stay enforced: {still:?}"
        );
        let events = kubectl.run(&["get", "events", "-n", "initech"])?;
        ensure!(
            events.contains("InvalidPolicy"),
            "no InvalidPolicy event: {events}"
        );
        Ok(())
    });
}
