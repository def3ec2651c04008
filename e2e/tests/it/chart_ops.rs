//! The chart's operating parts: the generated README, probes and ServiceAccount annotations,
//! `kubeVersion`, the NetworkPolicy/ServiceMonitor refusal, the PrometheusRule under
//! `promtool`, and the alerts' and dashboard's queries (the history alerts too) against the
//! metrics the real binaries export (operator, dataplane and writer). `helm test` is in
//! `chart_helm_test.rs`; the history values in `chart_history.rs`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleetward_e2e::chart;
use fleetward_e2e::fleetward::{
    Dataplane, DataplaneConfig, OPERATOR_NAMESPACE as NS, Operator, http_get,
};
use fleetward_e2e::ports::{free_port, loopback, wait_for_listener};
use fleetward_e2e::workspace;
use fleetward_e2e::{ControlPlane, Nats, Process, run_test};
use serde_json::{Value, json};

/// The PolicySync token the processes are started with.
const TOKEN: &str = "e2e-sync-token";

/// Runs `program args` and returns (success, stdout, stderr).
fn run(program: &str, args: &[&str], dir: Option<&Path>) -> Result<(bool, String, String)> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().with_context(|| {
        format!(
            "run {program} (scripts/install-tools.sh installs promtool from Debian's prometheus)"
        )
    })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_chart_readme_values_table_is_generated_from_values_yaml() -> Result<()> {
    let root = workspace::root();
    let script = root.join("scripts/chart-readme.py");
    let script = script.to_str().context("a UTF-8 path")?;
    let (ok, _, err) = run("python3", &[script, "--check"], None)?;
    ensure!(ok, "the chart README has drifted from values.yaml: {err}");

    // The same check on a copy whose values.yaml gained a key fails and says what to run.
    let copy = tempfile::tempdir().context("create a directory")?;
    let chart = copy.path().join("charts/fleetward");
    std::fs::create_dir_all(&chart).context("create the chart copy")?;
    std::fs::create_dir_all(copy.path().join("scripts")).context("create scripts/")?;
    std::fs::copy(script, copy.path().join("scripts/chart-readme.py")).context("copy")?;
    std::fs::copy(
        chart::chart_dir().join("README.md"),
        chart.join("README.md"),
    )
    .context("copy the README")?;
    let values = std::fs::read_to_string(chart::chart_dir().join("values.yaml"))
        .context("read values.yaml")?;
    std::fs::write(
        chart.join("values.yaml"),
        format!("{values}\n# -- A key the README does not list.\nnewKey: 1\n"),
    )
    .context("write the changed values.yaml")?;
    let copied = copy.path().join("scripts/chart-readme.py");
    let copied = copied.to_str().context("a UTF-8 path")?;
    let (ok, _, err) = run("python3", &[copied, "--check"], None)?;
    ensure!(
        !ok && err.contains("out of date") && err.contains("scripts/chart-readme.py"),
        "drift is refused with what to run: {err}"
    );
    let (ok, _, err) = run("python3", &[copied], None)?;
    ensure!(ok, "regenerate: {err}");
    let readme = std::fs::read_to_string(chart.join("README.md")).context("read README")?;
    ensure!(
        readme.contains("| `newKey` | int | `1` | A key the README does not list. |"),
        "the new key has its row"
    );
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn probes_service_account_annotations_and_kube_version_render_as_set() -> Result<()> {
    let r = chart::template(
        NS,
        &[],
        &json!({
            "operator": {
                "probes": {"startup": {"failureThreshold": 90}},
                "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/op"}},
            },
            "dataplane": {"probes": {"liveness": {"periodSeconds": 20}}},
            "probes": {"readiness": {"timeoutSeconds": 4}},
        }),
    )?;
    for (deployment, startup_failures, liveness_period) in [
        ("fleetward-operator", 90, 10),
        ("fleetward-dataplane", 30, 20),
    ] {
        let c = &r.get("Deployment", deployment)?["spec"]["template"]["spec"]["containers"][0];
        let startup = &c["startupProbe"];
        ensure!(
            startup["httpGet"] == json!({"path": "/healthz", "port": "admin"})
                && startup["failureThreshold"] == startup_failures
                && startup["periodSeconds"] == 2,
            "{deployment}: startupProbe {startup}"
        );
        ensure!(
            c["livenessProbe"]["periodSeconds"] == liveness_period,
            "{deployment}: per-workload liveness {}",
            c["livenessProbe"]
        );
        ensure!(
            c["readinessProbe"]["timeoutSeconds"] == 4 && c["readinessProbe"]["periodSeconds"] == 5,
            "{deployment}: the shared readiness setting, merged: {}",
            c["readinessProbe"]
        );
    }
    let sa = r.get("ServiceAccount", "fleetward-operator")?;
    ensure!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::1:role/op",
        "{sa}"
    );
    let dp_sa = r.get("ServiceAccount", "fleetward-dataplane")?;
    ensure!(dp_sa["metadata"].get("annotations").is_none(), "{dp_sa}");

    // kubeVersion: an older cluster is refused at install, a newer one accepted.
    let chart_dir = chart::chart_dir();
    let chart_path = chart_dir.to_str().context("a UTF-8 path")?;
    let old = chart::helm(&["template", "x", chart_path, "--kube-version", "1.28.9"])?;
    ensure!(
        !old.success && old.stderr.contains("kubeVersion"),
        "Kubernetes 1.28 is refused naming kubeVersion: {}",
        old.stderr
    );
    let new = chart::helm(&["template", "x", chart_path, "--kube-version", "1.35.0"])?;
    ensure!(new.success, "1.35 is accepted: {}", new.stderr);
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_network_policy_with_a_service_monitor_needs_metrics_from() -> Result<()> {
    let both = json!({"networkPolicy": {"enabled": true}, "serviceMonitor": {"enabled": true}});
    let out = chart::template_output(NS, &[], &both)?;
    ensure!(
        !out.success
            && out.stderr.contains("networkPolicy.metricsFrom")
            && out.stderr.contains("would block Prometheus"),
        "the silent scrape block is refused, naming the value to set: {}",
        out.stderr
    );
    let fixed = json!({
        "networkPolicy": {"enabled": true, "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "serviceMonitor": {"enabled": true},
    });
    let r = chart::template(NS, &[], &fixed)?;
    let np = r.get("NetworkPolicy", "fleetward-dataplane")?;
    ensure!(
        np["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| rule["ports"][0]["port"] == "admin"),
        "the admin port is open to metricsFrom: {np}"
    );
    // Either alone is accepted as before.
    chart::template(NS, &[], &json!({"networkPolicy": {"enabled": true}}))?;
    chart::template(NS, &[], &json!({"serviceMonitor": {"enabled": true}}))?;
    Ok(())
}

/// The chart's alert rules, rendered for release namespace `NS`, as a Prometheus rule file.
fn rule_file(values: &Value) -> Result<Value> {
    let r = chart::template(NS, &[], values)?;
    Ok(r.get("PrometheusRule", "fleetward")?["spec"].clone())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_prometheus_rule_passes_promtool_check_and_its_unit_tests() -> Result<()> {
    let dir = tempfile::tempdir().context("create a directory")?;
    let rules = rule_file(&json!({"prometheusRule": {"enabled": true}}))?;
    let names: Vec<&str> = rules["groups"][0]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    ensure!(
        names
            == [
                "FleetwardSnapshotStale",
                "FleetwardConvergenceSlow",
                "FleetwardRefusalSpike",
                "FleetwardNatsDisconnected"
            ],
        "{names:?}"
    );
    // JSON is YAML: promtool reads it as a rule file.
    std::fs::write(dir.path().join("rules.yaml"), rules.to_string()).context("write rules")?;
    let test = workspace::root().join("e2e/promtool/alerts.test.yaml");
    std::fs::copy(&test, dir.path().join("alerts.test.yaml")).context("copy the unit tests")?;
    let (ok, out, err) = run(
        "promtool",
        &["check", "rules", "rules.yaml"],
        Some(dir.path()),
    )?;
    ensure!(
        ok && out.contains("SUCCESS: 4 rules found"),
        "promtool check rules: {out}{err}"
    );
    let (ok, out, err) = run(
        "promtool",
        &["test", "rules", "alerts.test.yaml"],
        Some(dir.path()),
    )?;
    ensure!(
        ok && out.contains("SUCCESS"),
        "promtool test rules: {out}{err}"
    );

    // A threshold set in values reaches the rule, and the unit tests then fail on it.
    let stricter =
        rule_file(&json!({"prometheusRule": {"enabled": true, "snapshotStaleSeconds": 3600}}))?;
    ensure!(
        stricter.to_string().contains("> 3600"),
        "the threshold is in the expression: {stricter}"
    );
    std::fs::write(dir.path().join("rules.yaml"), stricter.to_string()).context("write rules")?;
    let (ok, out, err) = run(
        "promtool",
        &["test", "rules", "alerts.test.yaml"],
        Some(dir.path()),
    )?;
    ensure!(
        !ok && err.contains("alertname: FleetwardSnapshotStale"),
        "the unit tests catch a changed alert: {out}{err}"
    );
    Ok(())
}

/// Every sample name a `/metrics` exposition can carry: its samples, and for each `# TYPE`
/// the names a family of that type exposes (a labelled family has no sample until first used).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The operator's metric families as `operator/src/metrics.rs` registers them
/// (`fleetward_operator_<name>`): a labelled family is absent from `/metrics` until its first
/// sample, and the error counters get none on a healthy run.
fn operator_families() -> Result<BTreeSet<String>> {
    let path = workspace::root().join("operator/src/metrics.rs");
    let source =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut names = BTreeSet::new();
    let mut rest = source.as_str();
    while let Some(at) = rest.find("registry.register(") {
        rest = &rest[at + "registry.register(".len()..];
        if let Some(name) = rest.split('"').nth(1) {
            names.insert(format!("fleetward_operator_{name}"));
        }
    }
    ensure!(
        names.len() > 10,
        "{} registers only {names:?}",
        path.display()
    );
    Ok(names)
}

/// Whether `name` is a sample of a registered family (a counter's `_total`, a histogram's
/// `_bucket`, `_sum` or `_count`).
fn of_family(name: &str, families: &BTreeSet<String>) -> bool {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| families.contains(base))
        })
}

/// The `fleetward_…` metric names a PromQL expression reads.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("fleetward_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        found.push(name);
    }
    found
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_alerts_and_the_dashboard_query_only_metrics_the_binaries_export() {
    run_test("chart-metrics", |logs| {
        let plane = ControlPlane::start_with_crds(logs)?;
        plane.kubectl().run(&["create", "namespace", NS])?;
        let op = Operator::start("operator-0", plane.kubeconfig(), TOKEN, logs.path())?;
        // With NATS, so the bus's series exist as they do on a multi-pod install.
        let nats = Nats::start(logs.path())?;
        let state = tempfile::tempdir().context("create a state directory")?;
        let dp = Dataplane::start(
            "dataplane-0",
            state.path(),
            DataplaneConfig {
                operators: vec![op.sync_url()],
                sync_token: TOKEN.to_owned(),
                nats_url: Some(nats.url()),
            },
            logs.path(),
        )?;
        // The writer as the chart runs it (history.enabled), serving /metrics before it
        // reaches PostgreSQL: its series exist from the start, which is all this checks.
        let history = json!({"enabled": true, "postgres": {"existingSecret": "pg"}});
        let chart_writer = chart::template(NS, &[], &json!({"history": history}))?
            .container("fleetward-writer", "writer")?;
        let writer_addr = loopback(free_port()?);
        let mut cmd = Command::new(workspace::fleetward_binary()?);
        for arg in &chart_writer.args {
            cmd.arg(match arg.split_once('=') {
                Some(("--nats", _)) => format!("--nats={}", nats.url()),
                Some(("--metrics-listen", _)) => format!("--metrics-listen={writer_addr}"),
                _ => arg.clone(),
            });
        }
        // No Kubernetes API for the sweep here; nothing listens on port 1.
        cmd.arg("--no-maintenance").env(
            "FLEETWARD_HISTORY_POSTGRES_URL",
            "postgres://fleetward@127.0.0.1:1/fleetward",
        );
        let _writer = Process::spawn("writer", cmd, logs.path())?;
        wait_for_listener(writer_addr, Duration::from_secs(60))?;

        let mut exported = BTreeSet::new();
        for (what, addr) in [
            ("operator", op.admin_addr),
            ("dataplane", dp.admin_addr),
            ("writer", writer_addr),
        ] {
            let (status, body) = http_get(addr, "/metrics")?;
            ensure!(status == 200, "{what} /metrics answered {status}");
            exported.extend(exported_names(&body));
        }
        for sure in [
            "fleetward_operator_snapshot_version",
            "fleetward_audit_events_total",
            "fleetward_bus_connected",
            "fleetward_policy_snapshot_staleness_seconds",
            "fleetward_history_backlog_bytes",
            "fleetward_history_refused_total",
        ] {
            ensure!(exported.contains(sure), "{sure} in {exported:?}");
        }
        ensure!(metrics_in("rate(fleetward_nope_total[5m])") == ["fleetward_nope_total"]);
        let families = operator_families()?;
        ensure!(
            of_family(
                "fleetward_operator_reconcile_duration_seconds_bucket",
                &families
            ) && !of_family("fleetward_operator_nope_total", &families),
            "{families:?}"
        );

        let values = json!({
            "prometheusRule": {"enabled": true},
            "grafanaDashboard": {"enabled": true},
            "history": history,
        });
        let r = chart::template(NS, &[], &values)?;
        let mut exprs: Vec<(String, String)> = Vec::new();
        for rule in r.get("PrometheusRule", "fleetward")?["spec"]["groups"][0]["rules"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let expr = rule["expr"].as_str().context("a rule without expr")?;
            exprs.push((format!("alert {}", rule["alert"]), expr.to_owned()));
        }
        let text = r.get("ConfigMap", "fleetward-dashboard")?["data"]["fleetward.json"]
            .as_str()
            .context("the ConfigMap holds no fleetward.json")?
            .to_owned();
        let dashboard: Value = serde_json::from_str(&text).context("the dashboard is not JSON")?;
        let panels = dashboard["panels"].as_array().context("no panels")?;
        ensure!(panels.len() >= 10, "{} panels", panels.len());
        for panel in panels {
            let targets = panel["targets"]
                .as_array()
                .context("a panel without targets")?;
            ensure!(!targets.is_empty(), "panel {} has no query", panel["title"]);
            for t in targets {
                let expr = t["expr"].as_str().context("a target without expr")?;
                exprs.push((format!("panel {}", panel["title"]), expr.to_owned()));
            }
        }
        let mut unknown = Vec::new();
        for (whose, expr) in &exprs {
            let names = metrics_in(expr);
            ensure!(
                !names.is_empty(),
                "{whose} reads no Fleetward metric: {expr}"
            );
            unknown.extend(
                names
                    .into_iter()
                    .filter(|n| !exported.contains(n) && !of_family(n, &families))
                    .map(|n| format!("{whose}: {n}")),
            );
        }
        ensure!(
            unknown.is_empty(),
            "queries name metrics neither binary exports:\n{}\nexported: {exported:?}",
            unknown.join("\n")
        );
        Ok(())
    });
}
