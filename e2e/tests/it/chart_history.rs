//! The chart's message history (`history.*`): the writer Deployment, its ServiceAccount and
//! RBAC, the PostgreSQL URL and CA given to the writer and the dataplanes, the refusals of
//! history without NATS or a Secret, `helm lint`, the flags the writer binary takes, and the
//! history alerts under `promtool`. Whether the alerts read metrics the binaries export is
//! checked with the others in `chart_ops.rs`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use fleetward_e2e::chart::{self, EnvSource, RELEASE};
use fleetward_e2e::fleetward::OPERATOR_NAMESPACE as NS;
use fleetward_e2e::workspace;
use serde_json::{Value, json};

/// History on, as the README's CloudNativePG example sets it.
fn history_values() -> Value {
    json!({
        "history": {
            "enabled": true,
            "postgres": {
                "existingSecret": "fleetward-history-app",
                "secretKey": "uri",
                "tls": {"mode": "verify-full", "caSecret": "fleetward-history-ca"},
            },
        },
    })
}

/// The names of a container's volume mounts and its pod's volumes.
fn mounts_and_volumes(deployment: &Value) -> (Vec<String>, Vec<Value>) {
    let pod = &deployment["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["mountPath"].as_str().map(str::to_owned))
        .collect();
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    (mounts, volumes)
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn history_renders_the_writer_its_rbac_and_the_dataplanes_database() -> Result<()> {
    // Off by default: nothing of the writer, and the dataplane knows no database.
    let off = chart::template(NS, &[], &json!({}))?;
    ensure!(
        !off.yaml().contains("writer") && !off.yaml().contains("FLEETWARD_HISTORY_POSTGRES"),
        "history is off by default"
    );

    let r = chart::template(NS, &[], &history_values())?;
    let writer = r.get("Deployment", "fleetward-writer")?;
    ensure!(writer["spec"]["replicas"] == 2, "two writers by default");
    let pod = &writer["spec"]["template"]["spec"];
    ensure!(pod["serviceAccountName"] == "fleetward-writer");
    ensure!(
        pod.get("automountServiceAccountToken").is_none(),
        "the writer talks to the API server: it keeps its token"
    );
    ensure!(pod["securityContext"]["runAsNonRoot"] == true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    ensure!(
        sc["readOnlyRootFilesystem"] == true
            && sc["allowPrivilegeEscalation"] == false
            && sc["capabilities"]["drop"] == json!(["ALL"]),
        "the writer's securityContext: {sc}"
    );
    ensure!(
        c["ports"][0] == json!({"name": "admin", "containerPort": 9464, "protocol": "TCP"}),
        "the metrics port: {}",
        c["ports"]
    );
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        ensure!(
            c[probe]["httpGet"] == json!({"path": path, "port": "admin"}),
            "{probe} on the metrics port: {}",
            c[probe]
        );
    }
    ensure!(c["resources"]["requests"]["memory"] == "128Mi");

    let w = r.container("fleetward-writer", "writer")?;
    for (flag, value) in [
        ("--nats", "nats://nats:4222"),
        ("--postgres-pool-size", "8"),
        ("--postgres-ssl-mode", "verify-full"),
        ("--metrics-listen", "0.0.0.0:9464"),
        ("--max-backlog-bytes", "1073741824"),
    ] {
        ensure!(
            w.flag(flag) == Some(value),
            "writer {flag}={value}: {:?}",
            w.args
        );
    }
    let url_from_secret =
        EnvSource::Other(json!({"secretKeyRef": {"name": "fleetward-history-app", "key": "uri"}}));
    let ca = EnvSource::Value("/var/run/secrets/fleetward/postgres-ca/ca.crt".to_owned());
    for (name, source) in [
        ("FLEETWARD_HISTORY_POSTGRES_URL", &url_from_secret),
        ("FLEETWARD_HISTORY_POSTGRES_CA", &ca),
    ] {
        ensure!(
            w.env.iter().any(|(n, s)| n == name && s == source),
            "writer env {name} from {source:?}: {:?}",
            w.env
        );
    }
    let (mounts, volumes) = mounts_and_volumes(writer);
    ensure!(
        mounts == ["/var/run/secrets/fleetward/postgres-ca"]
            && volumes
                == [
                    json!({"name": "postgres-ca", "secret": {"secretName": "fleetward-history-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}})
                ],
        "the CA mounted as a file: {mounts:?} {volumes:?}"
    );

    // The dataplane reads with the same URL and CA; its sslmode comes from PGSSLMODE.
    let dp = r.container("fleetward-dataplane", "dataplane")?;
    ensure!(dp.flag("--history-postgres-pool-size") == Some("4"));
    for (name, source) in [
        ("FLEETWARD_HISTORY_POSTGRES_URL", &url_from_secret),
        ("FLEETWARD_HISTORY_POSTGRES_CA", &ca),
        ("PGSSLMODE", &EnvSource::Value("verify-full".to_owned())),
    ] {
        ensure!(
            dp.env.iter().any(|(n, s)| n == name && s == source),
            "dataplane env {name} from {source:?}: {:?}",
            dp.env
        );
    }
    let (mounts, _) = mounts_and_volumes(r.get("Deployment", "fleetward-dataplane")?);
    ensure!(
        mounts
            .iter()
            .any(|m| m == "/var/run/secrets/fleetward/postgres-ca"),
        "{mounts:?}"
    );

    // Its own ServiceAccount and least privilege: read Channels and Tenants, patch
    // channels/status, nothing else.
    r.get("ServiceAccount", "fleetward-writer")?;
    let role = r.get("ClusterRole", "fleetward-writer")?;
    ensure!(
        role["rules"]
            == json!([
                {"apiGroups": ["fleetward.io"], "resources": ["channels", "tenants"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["fleetward.io"], "resources": ["channels/status"], "verbs": ["patch"]},
            ]),
        "the writer's rules: {}",
        role["rules"]
    );
    let binding = r.get("ClusterRoleBinding", "fleetward-writer")?;
    ensure!(
        binding["roleRef"]["name"] == "fleetward-writer"
            && binding["subjects"]
                == json!([{"kind": "ServiceAccount", "name": "fleetward-writer", "namespace": NS}]),
        "{binding}"
    );
    let pdb = r.get("PodDisruptionBudget", "fleetward-writer")?;
    ensure!(pdb["spec"]["maxUnavailable"] == 1, "{pdb}");

    // Without TLS settings the URL's own sslmode applies: no flag, no PGSSLMODE, no volume.
    let plain = chart::template(
        NS,
        &[],
        &json!({"history": {"enabled": true, "postgres": {"existingSecret": "pg"}}}),
    )?;
    let w = plain.container("fleetward-writer", "writer")?;
    let dp = plain.container("fleetward-dataplane", "dataplane")?;
    ensure!(w.flag("--postgres-ssl-mode").is_none(), "{:?}", w.args);
    ensure!(
        w.env
            .iter()
            .chain(&dp.env)
            .all(|(n, _)| n != "PGSSLMODE" && n != "FLEETWARD_HISTORY_POSTGRES_CA"),
        "{:?} {:?}",
        w.env,
        dp.env
    );
    ensure!(
        w.env
            .iter()
            .any(|(n, s)| n == "FLEETWARD_HISTORY_POSTGRES_URL"
                && *s == EnvSource::Other(json!({"secretKeyRef": {"name": "pg", "key": "url"}}))),
        "the default key is url: {:?}",
        w.env
    );
    ensure!(
        plain.get("Deployment", "fleetward-writer")?["spec"]["template"]["spec"]
            .get("volumes")
            .is_none()
    );

    // With monitoring on, the writer gets a metrics Service, a ServiceMonitor and a
    // NetworkPolicy admitting only metricsFrom to its metrics port.
    let mut values = history_values();
    values["serviceMonitor"] = json!({"enabled": true});
    values["networkPolicy"] = json!({"enabled": true, "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]});
    let m = chart::template(NS, &[], &values)?;
    let svc = m.get("Service", "fleetward-writer")?;
    ensure!(
        svc["spec"]["ports"]
            == json!([{"name": "admin", "port": 9464, "targetPort": "admin", "protocol": "TCP"}])
            && svc["spec"]["selector"]["app.kubernetes.io/component"] == "writer",
        "{svc}"
    );
    let sm = m.get("ServiceMonitor", "fleetward-writer")?;
    ensure!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "writer"
            && sm["spec"]["endpoints"][0]["port"] == "admin",
        "{sm}"
    );
    let np = m.get("NetworkPolicy", "fleetward-writer")?;
    ensure!(
        np["spec"]["ingress"].as_array().map(Vec::len) == Some(1)
            && np["spec"]["ingress"][0]["ports"] == json!([{"port": "admin", "protocol": "TCP"}]),
        "{np}"
    );
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn history_without_nats_or_a_postgres_secret_is_refused_naming_what_to_set() -> Result<()> {
    let one_pod = json!({"replicas": 1, "autoscaling": {"enabled": false}});
    let cases = [
        (
            json!({"history": {"enabled": true, "postgres": {"existingSecret": "pg"}}, "nats": {"url": ""}, "dataplane": one_pod}),
            "history.enabled needs NATS with JetStream, and nats.url is empty",
        ),
        (
            json!({"history": {"enabled": true}}),
            "history.enabled needs history.postgres.existingSecret",
        ),
        (
            json!({"history": {"enabled": true, "postgres": {"existingSecret": "pg", "tls": {"mode": "verify"}}}}),
            "/history/postgres/tls/mode",
        ),
        (
            json!({"history": {"enabled": true, "postgres": {"existingSecret": "pg"}, "writer": {"replicas": 0}}}),
            "/history/writer/replicas",
        ),
        (
            json!({"history": {"enabled": true, "postgres": {"existingSecret": "pg"}, "writer": {"ackWait": "1 minute"}}}),
            "/history/writer/ackWait",
        ),
    ];
    for (values, expected) in cases {
        let out = chart::template_output(NS, &[], &values)?;
        ensure!(
            !out.success && out.stderr.contains(expected),
            "helm template with {values} should fail naming {expected:?}; it said: {}",
            out.stderr
        );
    }
    let out = chart::template_output(NS, &[], &json!({"history": {"enabled": true}}))?;
    ensure!(
        out.stderr.contains("CloudNativePG") && out.stderr.contains(NS),
        "the refusal says where the Secret goes and what CloudNativePG makes: {}",
        out.stderr
    );
    // Fixed, each is accepted; history off needs neither.
    chart::template(
        NS,
        &[],
        &json!({"history": {"enabled": true, "postgres": {"existingSecret": "pg"}}}),
    )?;
    chart::template(
        NS,
        &[],
        &json!({"history": {"enabled": false}, "nats": {"url": ""}, "dataplane": one_pod}),
    )?;
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_chart_with_history_lints_strictly() -> Result<()> {
    let dir = tempfile::tempdir().context("create a directory")?;
    let values = dir.path().join("history.yaml");
    let mut v = history_values();
    v["prometheusRule"] = json!({"enabled": true});
    std::fs::write(&values, v.to_string()).context("write the values")?;
    let chart_dir = chart::chart_dir();
    let chart_path = chart_dir.to_str().context("a UTF-8 path")?;
    let values = values.to_str().context("a UTF-8 path")?;
    let out = chart::helm(&["lint", "--strict", chart_path, "--values", values])?;
    ensure!(
        out.success && out.stdout.contains("0 chart(s) failed"),
        "helm lint --strict with history:\n{}{}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn every_flag_the_chart_passes_the_writer_is_one_it_takes() -> Result<()> {
    let binary = workspace::fleetward_binary()?;
    let mut every = history_values();
    every["history"]["writer"] = json!({
        "maxBatch": 500, "ackWait": "2m", "maintenanceEvery": "30", "metricsPort": 9000,
        "extraArgs": ["--no-maintenance"],
    });
    every["history"]["backlog"] = json!({"maxBytes": 8_589_934_592_u64});
    for values in [history_values(), every] {
        let r = chart::template(NS, &[], &values)?;
        let w = r.container(&format!("{RELEASE}-writer"), "writer")?;
        ensure!(
            w.args.first().map(String::as_str) == Some("writer"),
            "{:?}",
            w.args
        );
        // clap parses every flag and its value before it reaches --help.
        let out = Command::new(&binary)
            .args(&w.args)
            .arg("--help")
            .env(
                "FLEETWARD_HISTORY_POSTGRES_URL",
                "postgres://x@127.0.0.1:1/x",
            )
            .output()
            .with_context(|| format!("run {}", binary.display()))?;
        ensure!(
            out.status.success(),
            "fleetward {} is refused: {}",
            w.args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs promtool in `dir` and returns (success, stdout + stderr).
fn promtool(args: &[&str], dir: &Path) -> Result<(bool, String)> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run promtool (scripts/install-tools.sh installs it from Debian's prometheus)")?;
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
fn the_history_alerts_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    let dir = tempfile::tempdir().context("create a directory")?;
    let rules_of = |extra: Value| -> Result<Value> {
        let mut values = history_values();
        values["prometheusRule"] = json!({"enabled": true});
        if let Some(backlog) = extra.get("backlog") {
            values["history"]["backlog"] = backlog.clone();
        }
        let r = chart::template(NS, &[], &values)?;
        Ok(r.get("PrometheusRule", "fleetward")?["spec"].clone())
    };
    let rules = rules_of(json!({}))?;
    let names: Vec<&str> = rules["groups"][0]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    ensure!(
        names.ends_with(&[
            "FleetwardHistoryBacklogGrowing",
            "FleetwardHistoryBacklogHigh",
            "FleetwardHistoryRefused"
        ]) && names.len() == 7,
        "{names:?}"
    );
    std::fs::write(dir.path().join("rules.yaml"), rules.to_string()).context("write rules")?;
    let test = workspace::root().join("e2e/promtool/history-alerts.test.yaml");
    std::fs::copy(&test, dir.path().join("history-alerts.test.yaml")).context("copy tests")?;
    let (ok, out) = promtool(&["check", "rules", "rules.yaml"], dir.path())?;
    ensure!(
        ok && out.contains("SUCCESS: 7 rules found"),
        "promtool check rules: {out}"
    );
    let (ok, out) = promtool(&["test", "rules", "history-alerts.test.yaml"], dir.path())?;
    ensure!(ok && out.contains("SUCCESS"), "promtool test rules: {out}");
    // The other alerts' unit tests still pass with history on.
    let others = workspace::root().join("e2e/promtool/alerts.test.yaml");
    std::fs::copy(&others, dir.path().join("alerts.test.yaml")).context("copy tests")?;
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yaml"], dir.path())?;
    ensure!(ok, "promtool test rules alerts.test.yaml: {out}");

    // The threshold follows the values, and the unit tests then catch the change.
    let higher = rules_of(json!({"backlog": {"maxBytes": 1_073_741_824_u64, "alertPercent": 60}}))?;
    ensure!(
        higher.to_string().contains("> 644245094"),
        "60% of 1 GiB in the expression: {higher}"
    );
    std::fs::write(dir.path().join("rules.yaml"), higher.to_string()).context("write rules")?;
    let (ok, out) = promtool(&["test", "rules", "history-alerts.test.yaml"], dir.path())?;
    ensure!(
        !ok && out.contains("alertname: FleetwardHistoryBacklogHigh"),
        "the unit tests catch a changed threshold: {out}"
    );
    Ok(())
}
