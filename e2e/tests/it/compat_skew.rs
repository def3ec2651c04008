//! Version skew with real binaries, as a rolling upgrade runs them: the newest release
//! baseline's `fleetward` (built by `scripts/baseline.sh`, named by `$FLEETWARD_BASELINE`)
//! beside the tree's, each started with the command line its own chart renders.
//!
//! - the new operator serving an old dataplane and a new one, on one NATS bus;
//! - the old operator (the CRDs already upgraded, as the README orders it) serving a new
//!   dataplane and an old one.
//!
//! And a Helm upgrade drill: the baseline's chart installed, the new CRDs applied, then
//! `helm upgrade --reset-then-reuse-values` to the tree's chart, first with `--dry-run=server`, whose
//! rendered Deployments, HorizontalPodAutoscaler and PodDisruptionBudgets must keep at least
//! one dataplane (and one operator) serving through the rollout and through a drain.
//!
//! Each skew scenario checks what a rollout must keep: every dataplane takes the snapshot and becomes ready,
//! the Connections reach `Enforced`, a message crosses pods both ways, and deleting the grants
//! cuts the live subscriptions on both pods. The manifests use a field newer than the baseline
//! (a Tenant's `web.allowedOrigins`): an old peer ignores it, as docs/upgrades.md says, and
//! nothing fails closed because of it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fleetward_e2e::chart;
use fleetward_e2e::fleetward::{
    Dataplane, DataplaneConfig, OPERATOR_NAMESPACE, Operator, Release, http_get,
};
use fleetward_e2e::workspace::examples_dir;
use fleetward_e2e::{ControlPlane, Kubectl, LogDir, Nats, run_test, wait_until};
use serde_json::Value;

/// The PolicySync token the processes are started with.
const TOKEN: &str = "e2e-sync-token";
/// How long a push, a status or a delivery may take.
const SETTLE: Duration = Duration::from_secs(30);
/// From examples/acme.yaml.
const SENSOR_KEY: &str = "p5OR2zf95euo-SDM6r3HQBkSsWKpSI1eT71WQ5jOhP8";
/// The two Connections that let `acme/dashboard` subscribe to telemetry (its own, and its
/// group's).
const DASHBOARD_GRANTS: [&str; 2] = [
    "dashboard-subscribes-telemetry",
    "operators-subscribe-telemetry",
];
/// Subscriptions a new snapshot revoked, on a dataplane (the same series in the baseline).
const REVOKED: &str = "fleetward_mqtt_refusals_total{what=\"revoked\",reason=\"subscription\"}";
/// Fields patched onto the examples, each with the field that must come back: a Channel's
/// `deliveryMetadata` (both releases add the metadata, so it crosses pods of two versions), and
/// a Tenant's `web.allowedOrigins`, added after 0.1.0 (an old operator or dataplane ignores
/// it; docs/upgrades.md lists what that means).
const PATCHES: [(&str, &str, &str); 2] = [
    (
        "channel/telemetry",
        r#"{"spec":{"deliveryMetadata":true}}"#,
        "deliveryMetadata",
    ),
    (
        "tenant/acme",
        r#"{"spec":{"web":{"allowedOrigins":["https://dashboard.example.com"]}}}"#,
        "web",
    ),
];

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn compat_the_new_operator_serves_an_old_dataplane_beside_a_new_one() {
    run_test("compat-new-operator", |logs| {
        let (current, baseline) = (Release::current()?, Release::baseline()?);
        skew(logs, &current, [&baseline, &current])
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn compat_the_old_operator_serves_a_new_dataplane_beside_an_old_one() {
    run_test("compat-old-operator", |logs| {
        let (current, baseline) = (Release::current()?, Release::baseline()?);
        skew(logs, &baseline, [&current, &baseline])
    });
}

/// One skew scenario: `operator` serving dataplanes `pods` (`dataplane-a`, `dataplane-b`) on
/// one bus, over the current CRDs and the examples with the newer fields.
fn skew(logs: &LogDir, operator: &Release, pods: [&Release; 2]) -> Result<()> {
    let plane = ControlPlane::start(logs)?;
    let kubectl = plane.kubectl();
    plane.apply_crds()?;
    kubectl.run(&["create", "namespace", OPERATOR_NAMESPACE])?;
    let path = examples_dir().join("acme.yaml");
    let examples =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    kubectl.apply(&examples)?;
    for (object, patch, field) in PATCHES {
        kubectl.run(&["patch", object, "-n", "acme", "--type=merge", "-p", patch])?;
        let stored = kubectl.get_json(&[object, "-n", "acme"])?;
        ensure!(
            !stored["spec"][field].is_null(),
            "the API server dropped {object}'s spec.{field}: {}",
            stored["spec"]
        );
    }

    let nats = Nats::start(logs.path())?;
    let op = Operator::start_release(
        operator,
        "operator-0",
        plane.kubeconfig(),
        TOKEN,
        logs.path(),
    )
    .with_context(|| format!("the {} operator starts", operator.name))?;
    let config = DataplaneConfig {
        operators: vec![op.sync_url()],
        sync_token: TOKEN.to_owned(),
        nats_url: Some(nats.url()),
    };
    let state = logs.path().join("state");
    let mut dps = Vec::new();
    for (release, id) in pods.into_iter().zip(["dataplane-a", "dataplane-b"]) {
        let dp =
            Dataplane::start_release(release, id, &state.join(id), config.clone(), logs.path())
                .with_context(|| {
                    format!("the {} dataplane {id} takes the snapshot", release.name)
                })?;
        dps.push(dp);
    }
    let names = |i: usize| format!("{} ({})", dps[i].node_id, pods[i].name);

    // Every Connection is Enforced: each dataplane, old or new, acknowledged the policy.
    wait_until("every Connection Enforced", SETTLE, || {
        let wait = [
            "wait",
            "connection",
            "--all",
            "-n",
            "acme",
            "--for=condition=Enforced",
            "--timeout=1s",
        ];
        Ok(kubectl.call(&wait, None)?.success)
    })?;

    // A message crosses pods both ways, to a subscriber on each.
    let key = dashboard_key(&kubectl)?;
    let subs = [
        Subscriber::start(dps[0].mqtt_addr, &key)?,
        Subscriber::start(dps[1].mqtt_addr, &key)?,
    ];
    for (from, to) in [(0, 1), (1, 0)] {
        let text = format!("from-{}", dps[from].node_id);
        publish(dps[from].mqtt_addr, &text)?;
        subs[to]
            .expect(&format!("m/acme/c/telemetry/skew {text}"), SETTLE)
            .with_context(|| format!("{} published; {} delivers", names(from), names(to)))?;
    }

    // Revocation: deleting the grants cuts both live subscriptions.
    let before: Vec<f64> = dps
        .iter()
        .map(|dp| metric(dp.admin_addr, REVOKED))
        .collect::<Result<_>>()?;
    let mut delete = vec!["delete", "connection", "-n", "acme"];
    delete.extend(DASHBOARD_GRANTS);
    kubectl.run(&delete)?;
    for (i, dp) in dps.iter().enumerate() {
        wait_until(
            &format!("{} revokes the subscription", names(i)),
            SETTLE,
            || Ok(metric(dp.admin_addr, REVOKED)? > before[i]),
        )?;
    }
    for dp in &dps {
        publish(dp.mqtt_addr, "after-revocation")?;
    }
    for (i, sub) in subs.iter().enumerate() {
        let got = sub.count("after-revocation", Duration::from_secs(2));
        ensure!(
            got == 0,
            "{} delivered {got} messages after the revocation",
            names(i)
        );
    }
    Ok(())
}

/// The generated key of `acme/dashboard`, from its Secret.
fn dashboard_key(kubectl: &Kubectl) -> Result<String> {
    let mut key = String::new();
    wait_until("the dashboard's key Secret", SETTLE, || {
        let out = kubectl.call(
            &[
                "get",
                "secret",
                "dashboard-credentials",
                "-n",
                "acme",
                "-o",
                "go-template={{.data.key | base64decode}}",
            ],
            None,
        )?;
        key = out.stdout.trim().to_owned();
        Ok(out.success && !key.is_empty())
    })?;
    Ok(key)
}

/// `mosquitto_pub` (MQTT 5, QoS 1) of `text` to `m/acme/c/telemetry/skew` as `acme/sensor-1`.
fn publish(addr: SocketAddr, text: &str) -> Result<()> {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args([
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            "acme/sensor-1",
            "-P",
            SENSOR_KEY,
        ])
        .args(["-t", "m/acme/c/telemetry/skew", "-m", text])
        .output()
        .context("run mosquitto_pub")?;
    ensure!(
        out.status.success(),
        "mosquitto_pub to {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A series' value on a dataplane's `/metrics` (0 when absent).
fn metric(admin: SocketAddr, series: &str) -> Result<f64> {
    let (status, body) = http_get(admin, "/metrics")?;
    ensure!(status == 200, "GET /metrics answered {status}");
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

/// A live `mosquitto_sub` (MQTT 5, debug lines on) of `acme/dashboard` to the telemetry
/// channel, its output lines on a channel; killed on drop.
struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Subscriber {
    /// Starts it and waits for the SUBACK.
    fn start(addr: SocketAddr, key: &str) -> Result<Self> {
        // mosquitto_sub block-buffers a pipe; stdbuf makes it hand over every line.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args([
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-d",
                "-v",
                "-u",
                "acme/dashboard",
                "-P",
                key,
            ])
            .args(["-t", "m/acme/c/telemetry/#"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("run mosquitto_sub")?;
        let out = child.stdout.take().context("mosquitto_sub's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let sub = Self { child, lines };
        sub.expect("received SUBACK", SETTLE)
            .with_context(|| format!("mosquitto_sub on {addr} is subscribed"))?;
        Ok(sub)
    }

    /// Waits for a line containing `needle`.
    fn expect(&self, needle: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!("no line with {needle:?} within {within:?}"),
            }
        }
    }

    /// Lines containing `needle` during `window`.
    fn count(&self, needle: &str, window: Duration) -> usize {
        let deadline = Instant::now() + window;
        let mut n = 0;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            n += usize::from(line.contains(needle));
        }
        n
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespace the chart is installed in.
const CHART_NS: &str = "fleetward-system";

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn compat_a_helm_upgrade_from_the_baseline_chart_keeps_a_dataplane_serving() {
    run_test("compat-helm-upgrade", |logs| {
        let baseline = Release::baseline()?;
        let plane = ControlPlane::start(logs)?;
        let kubectl = plane.kubectl();
        let kubeconfig = path_str(plane.kubeconfig())?.to_owned();
        let helm = |args: &[&str]| -> Result<String> {
            let mut all = args.to_vec();
            all.extend(["--namespace", CHART_NS, "--kubeconfig", &kubeconfig]);
            let out = chart::helm(&all)?;
            ensure!(
                out.success,
                "helm {} failed: {}",
                all.join(" "),
                out.stderr.trim()
            );
            Ok(out.stdout)
        };
        // The baseline as a user installed it: its chart, its CRDs.
        let old_chart = path_str(&baseline.chart)?.to_owned();
        helm(&["install", chart::RELEASE, &old_chart, "--create-namespace"])
            .with_context(|| format!("install the {} chart", baseline.name))?;

        // The upgrade as docs/upgrades.md orders it: the new CRDs first, then the chart with
        // the installed values; a server-side dry run before the real one.
        let crds = chart::chart_dir().join("crds");
        let apply = [
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            path_str(&crds)?,
        ];
        kubectl.run(&apply)?;
        let new_chart = path_str(&chart::chart_dir())?.to_owned();
        let upgrade = [
            "upgrade",
            chart::RELEASE,
            &new_chart,
            "--reset-then-reuse-values",
        ];
        let dry = helm(&[&upgrade[..], &["--dry-run=server", "-o", "json"]].concat())?;
        let release: Value = serde_json::from_str(&dry).context("helm upgrade -o json")?;
        let manifest = release["manifest"]
            .as_str()
            .context("the dry run printed no manifest")?;
        let rendered = chart::Rendered::parse(manifest.to_owned())?;
        for component in ["dataplane", "operator"] {
            let serving = keeps_serving(&rendered, &format!("{}-{component}", chart::RELEASE))?;
            ensure!(
                serving >= 1,
                "the upgraded chart lets every {component} pod go at once (at least {serving} \
                 stay during a rollout or a drain)"
            );
        }

        helm(&upgrade)?;
        let history: Value =
            serde_json::from_str(&helm(&["history", chart::RELEASE, "-o", "json"])?)
                .context("helm history -o json")?;
        let last = history
            .as_array()
            .and_then(|h| h.last())
            .context("no release history")?;
        ensure!(
            last["revision"] == 2 && last["status"] == "deployed",
            "the upgrade is deployed as revision 2: {last}"
        );
        Ok(())
    });
}

/// How many of workload `name`'s pods the rendered chart keeps serving, at least, through a
/// rolling update (its Deployment's `maxUnavailable`) and through a voluntary drain (its
/// PodDisruptionBudget), given its replicas (or its HorizontalPodAutoscaler's minimum).
fn keeps_serving(rendered: &chart::Rendered, name: &str) -> Result<i64> {
    let deploy = rendered.get("Deployment", name)?;
    let spec = &deploy["spec"];
    let replicas = match rendered.get("HorizontalPodAutoscaler", name) {
        Ok(hpa) => hpa["spec"]["minReplicas"].as_i64().unwrap_or(1),
        Err(_) => spec["replicas"].as_i64().unwrap_or(1),
    };
    let container = &spec["template"]["spec"]["containers"][0];
    ensure!(
        container["readinessProbe"].is_object(),
        "{name}'s pods have no readinessProbe, so a new pod takes traffic before it serves"
    );
    let rolling = &spec["strategy"]["rollingUpdate"];
    ensure!(
        spec["strategy"]["type"] != "Recreate",
        "{name} is replaced all at once (strategy Recreate)"
    );
    // The Deployment default is 25%, rounded down for maxUnavailable.
    let rollout = replicas - scaled(&rolling["maxUnavailable"], replicas, "25%")?;
    let pdb = rendered
        .get("PodDisruptionBudget", name)
        .with_context(|| format!("{name} has no PodDisruptionBudget"))?;
    let drain = match (&pdb["spec"]["minAvailable"], &pdb["spec"]["maxUnavailable"]) {
        (min, _) if !min.is_null() => scaled(min, replicas, "0")?,
        (_, max) => replicas - scaled(max, replicas, "0")?,
    };
    Ok(rollout.min(drain))
}

/// An int-or-percent field of `replicas` (`default` when absent), percentages rounded down.
fn scaled(field: &Value, replicas: i64, default: &str) -> Result<i64> {
    let text = match field {
        Value::Null => default.to_owned(),
        Value::Number(n) => return n.as_i64().context("an integer"),
        Value::String(s) => s.clone(),
        other => bail!("{other} is neither an integer nor a percentage"),
    };
    let percent: i64 = text
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{text:?} is neither an integer nor a percentage"))?;
    Ok(replicas * percent / 100)
}

fn path_str(path: &std::path::Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
