//! The Helm chart against a real API server: lint, server-side dry runs of default and non-default values, schema refusals, the token kept by upgrades, the operator under the chart's RBAC, the flags the binaries take, GitOps idempotence of the examples, and the Argo CD health check.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fleetward_e2e::argocd::{self, Health};
use fleetward_e2e::chart::{self, RELEASE, Rendered};
use fleetward_e2e::fleetward::{
    Dataplane, DataplaneConfig, OPERATOR_NAMESPACE as NS, Operator, operator_values,
    start_operators,
};
use fleetward_e2e::workspace::{self, examples_dir};
use fleetward_e2e::{ControlPlane, Kubectl, LogDir, run_test, wait_until};
use serde_json::{Value, json};

/// The PolicySync token the processes are started with.
const TOKEN: &str = "e2e-sync-token";
/// How long a status or Secret may take to appear.
const SETTLE: Duration = Duration::from_secs(30);
/// The operator's ServiceAccount, as the chart names it for release `fleetward`.
const OPERATOR_SA: &str = "fleetward-operator";

/// The parts of the cert-manager and prometheus-operator APIs the chart uses, as CRDs: the
/// dry run then checks every field the chart sets on them (strict field validation refuses
/// unknown fields). They cover only those fields, not the projects' whole schemas.
const ADDON_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: certificates.cert-manager.io}
spec:
  group: cert-manager.io
  scope: Namespaced
  names: {kind: Certificate, plural: certificates, singular: certificate}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [secretName, issuerRef]
              properties:
                isCA: {type: boolean}
                commonName: {type: string}
                secretName: {type: string}
                duration: {type: string}
                renewBefore: {type: string}
                dnsNames: {type: array, items: {type: string}}
                usages: {type: array, items: {type: string, enum: [server auth, client auth, digital signature, key encipherment, cert sign]}}
                privateKey:
                  type: object
                  properties:
                    algorithm: {type: string, enum: [RSA, ECDSA, Ed25519]}
                    size: {type: integer}
                    rotationPolicy: {type: string, enum: [Never, Always]}
                issuerRef:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    kind: {type: string}
                    group: {type: string}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: issuers.cert-manager.io}
spec:
  group: cert-manager.io
  scope: Namespaced
  names: {kind: Issuer, plural: issuers, singular: issuer}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                selfSigned: {type: object}
                ca:
                  type: object
                  required: [secretName]
                  properties:
                    secretName: {type: string}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [selector, endpoints]
              properties:
                selector:
                  type: object
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                namespaceSelector:
                  type: object
                  properties:
                    matchNames: {type: array, items: {type: string}}
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: string}
                      path: {type: string}
                      interval: {type: string, pattern: '^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      scrapeTimeout: {type: string, pattern: '^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name]
                    properties:
                      name: {type: string}
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: {type: string}
                            record: {type: string}
                            expr: {x-kubernetes-int-or-string: true}
                            for: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
"#;

fn ci_values(name: &str) -> PathBuf {
    chart::chart_dir()
        .join("ci")
        .join(format!("{name}-values.yaml"))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// A control plane with the CRDs and the operator's namespace.
fn cluster(logs: &LogDir) -> Result<(ControlPlane, Kubectl)> {
    let plane = ControlPlane::start(logs)?;
    let kubectl = plane.kubectl();
    plane.apply_crds()?;
    kubectl.run(&["create", "namespace", NS])?;
    Ok((plane, kubectl))
}

/// Applies the operator's ServiceAccount, RBAC and Lease from the chart, and returns a
/// kubeconfig that authenticates with that ServiceAccount's token: what the operator's pod has.
fn operator_service_account(
    plane: &ControlPlane,
    kubectl: &Kubectl,
    logs: &LogDir,
    rendered: &Rendered,
) -> Result<PathBuf> {
    let objects = rendered.stream_of(&[
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Lease",
    ]);
    kubectl.apply(&objects)?;
    let token = kubectl.run(&["create", "token", OPERATOR_SA, "-n", NS, "--duration=2h"])?;
    let admin: Value =
        serde_json::from_str(&kubectl.run(&["config", "view", "--raw", "--minify", "-o", "json"])?)
            .context("parse the admin kubeconfig")?;
    let ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .context("the admin kubeconfig has no certificate-authority-data")?;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": plane.server(), "certificate-authority-data": ca}}],
        "users": [{"name": OPERATOR_SA, "user": {"token": token.trim()}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": OPERATOR_SA}}],
        "current-context": "operator",
    });
    let path = logs.path().join("operator-sa.kubeconfig");
    std::fs::write(&path, config.to_string())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn apply_examples(kubectl: &Kubectl) -> Result<()> {
    for file in ["acme.yaml", "globex.yaml"] {
        let path = examples_dir().join(file);
        kubectl.run(&["apply", "--server-side", "-f", path_str(&path)?])?;
    }
    Ok(())
}

/// Every Fleetward object of `namespace`, as `kind/name`.
fn fleetward_objects(kubectl: &Kubectl, namespace: &str) -> Result<Vec<String>> {
    let out = kubectl.run(&["get", "fleetward", "-n", namespace, "-o", "name"])?;
    Ok(out.lines().map(str::to_owned).collect())
}

fn condition_is(obj: &Value, type_: &str, status: &str) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == status)
}

fn wait_all(kubectl: &Kubectl, namespaces: &[&str], type_: &str) -> Result<()> {
    wait_until(
        &format!("every Fleetward object of {namespaces:?} {type_}=True"),
        SETTLE,
        || {
            let tenants = kubectl.get_json(&["tenants"])?;
            let mut all = tenants["items"].as_array().cloned().unwrap_or_default();
            for ns in namespaces {
                let list = kubectl.get_json(&["fleetward", "-n", ns])?;
                all.extend(list["items"].as_array().cloned().unwrap_or_default());
            }
            Ok(!all.is_empty() && all.iter().all(|o| condition_is(o, type_, "True")))
        },
    )?;
    Ok(())
}

/// `kind/namespace/name → resourceVersion` of every example object, the Namespaces and the
/// Secrets of the tenant namespaces.
fn resource_versions(kubectl: &Kubectl) -> Result<Vec<(String, String)>> {
    let mut versions = Vec::new();
    let mut lists = vec![
        kubectl.get_json(&["tenants"])?,
        kubectl.get_json(&["namespaces", "acme", "globex"])?,
    ];
    for ns in ["acme", "globex"] {
        lists.push(kubectl.get_json(&["fleetward", "-n", ns])?);
        lists.push(kubectl.get_json(&["secrets", "-n", ns])?);
    }
    for list in &lists {
        let items = list["items"].as_array().cloned().unwrap_or_default();
        for o in items {
            let m = &o["metadata"];
            versions.push((
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap_or_default(),
                    m["namespace"].as_str().unwrap_or_default(),
                    m["name"].as_str().unwrap_or_default()
                ),
                m["resourceVersion"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    versions.sort();
    Ok(versions)
}

/// Waits until nothing among the example objects changes for `quiet`, and returns their versions.
fn wait_quiet(kubectl: &Kubectl, quiet: Duration) -> Result<Vec<(String, String)>> {
    let mut last = resource_versions(kubectl)?;
    wait_until("the example objects to stop changing", SETTLE, || {
        thread::sleep(quiet);
        let now = resource_versions(kubectl)?;
        let same = now == last;
        last = now;
        Ok(same)
    })?;
    Ok(last)
}

fn log_text(op: &Operator) -> Result<String> {
    let path = op.process.log_path();
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// `kubectl auth can-i VERB RESOURCE [args]` as the operator's ServiceAccount.
fn operator_can(kubectl: &Kubectl, args: &[&str]) -> Result<bool> {
    let who = format!("--as=system:serviceaccount:{NS}:{OPERATOR_SA}");
    let mut full = vec!["auth", "can-i", who.as_str()];
    full.extend_from_slice(args);
    let out = kubectl.call(&full, None)?;
    match out.stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!(
            "kubectl auth can-i {} answered {:?} {:?}",
            args.join(" "),
            out.stdout,
            out.stderr
        ),
    }
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_chart_lints_strictly_with_default_and_non_default_values() -> Result<()> {
    let chart_dir = chart::chart_dir();
    let chart_path = path_str(&chart_dir)?;
    for values in [None, Some(ci_values("full")), Some(ci_values("single"))] {
        let mut args = vec!["lint", "--strict", chart_path];
        if let Some(file) = &values {
            args.extend(["--values", path_str(file)?]);
        }
        let out = chart::helm(&args)?;
        ensure!(
            out.success && out.stdout.contains("0 chart(s) failed"),
            "helm {} failed:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
    }
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_default_render_has_the_workloads_the_issue_asks_for() -> Result<()> {
    let r = chart::template(NS, &[], &json!({}))?;
    let op = r.get("Deployment", "fleetward-operator")?;
    ensure!(op["spec"]["replicas"] == 2, "two operator replicas");
    let dp = r.get("Deployment", "fleetward-dataplane")?;
    ensure!(
        dp["spec"].get("replicas").is_none(),
        "the HPA owns the dataplane's replicas"
    );
    let hpa = r.get("HorizontalPodAutoscaler", "fleetward-dataplane")?;
    ensure!(hpa["spec"]["scaleTargetRef"]["name"] == "fleetward-dataplane");
    r.get("PodDisruptionBudget", "fleetward-dataplane")?;
    r.get("PodDisruptionBudget", "fleetward-operator")?;
    ensure_dataplane_drains(dp)?;
    r.get("Lease", "fleetward-operator")?;
    let spread = &dp["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    ensure!(
        spread["topologyKey"] == "kubernetes.io/hostname",
        "dataplane spread across nodes: {spread}"
    );
    for deploy in [op, dp] {
        let pod = &deploy["spec"]["template"]["spec"];
        ensure!(pod["securityContext"]["runAsNonRoot"] == true);
        for c in pod["containers"].as_array().into_iter().flatten() {
            let sc = &c["securityContext"];
            ensure!(
                sc["readOnlyRootFilesystem"] == true
                    && sc["runAsNonRoot"] == true
                    && sc["allowPrivilegeEscalation"] == false
                    && sc["capabilities"]["drop"] == json!(["ALL"]),
                "container {} securityContext: {sc}",
                c["name"]
            );
            ensure!(c["livenessProbe"]["httpGet"]["path"] == "/healthz");
            ensure!(c["readinessProbe"]["httpGet"]["path"] == "/readyz");
            ensure!(c["livenessProbe"]["httpGet"]["port"] == "admin");
            ensure!(c["resources"]["requests"]["memory"].is_string());
        }
    }
    let svc = r.get("Service", "fleetward-dataplane")?;
    let ports: Vec<(String, i64)> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["port"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        ports == [("mqtt".to_owned(), 1883), ("http".to_owned(), 8080)],
        "MQTT 1883 and HTTP/WS 8080, no MQTTS without TLS: {ports:?}"
    );
    ensure!(svc["spec"]["type"] == "ClusterIP");
    let secret = r.get("Secret", "fleetward-sync-token")?;
    ensure!(
        secret["data"]["token"]
            .as_str()
            .is_some_and(|t| t.len() >= 64),
        "a generated token of 48 characters (base64): {secret}"
    );
    for kind in [
        "NetworkPolicy",
        "ServiceMonitor",
        "Certificate",
        "Issuer",
        "PrometheusRule",
        "ConfigMap",
        "Pod",
    ] {
        ensure!(r.of_kind(kind).is_empty(), "no {kind} by default");
    }

    // The non-default values turn each optional part on.
    let full = chart::template(NS, &[&ci_values("full")], &json!({}))?;
    let svc = full.get("Service", "fw-dataplane")?;
    ensure!(svc["spec"]["type"] == "LoadBalancer");
    ensure!(
        svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == "mqtts" && p["port"] == 8883),
        "MQTTS 8883 with TLS on: {svc}"
    );
    // Operator, dataplane and (history on) writer.
    ensure!(full.of_kind("NetworkPolicy").len() == 3);
    ensure!(full.of_kind("ServiceMonitor").len() == 3);
    full.get("Deployment", "fw-writer")?;
    full.get("PrometheusRule", "fw")?;
    let dashboard = full.get("ConfigMap", "fw-dashboard")?;
    ensure!(
        dashboard["metadata"]["namespace"] == "monitoring"
            && dashboard["metadata"]["labels"]["grafana_dashboard"] == "1",
        "the dashboard ConfigMap where the Grafana sidecar finds it: {}",
        dashboard["metadata"]
    );
    full.get("Pod", "fw-test-pubsub")?;
    ensure!(
        full.of_kind("Certificate").len() == 4,
        "CA, operator, dataplane client, MQTTS"
    );
    let secrets: Vec<&Value> = full
        .of_kind("Secret")
        .into_iter()
        .map(|s| &s["metadata"]["name"])
        .collect();
    ensure!(
        secrets == [&json!("fw-sync-token")],
        "only the token Secret is generated: {secrets:?}"
    );
    let secret_bindings: Vec<&str> = full
        .of_kind("RoleBinding")
        .into_iter()
        .filter(|b| b["roleRef"]["name"] == "fw-operator-secrets")
        .filter_map(|b| b["metadata"]["namespace"].as_str())
        .collect();
    ensure!(
        secret_bindings == ["acme", "globex"],
        "Secrets only in the listed namespaces: {secret_bindings:?}"
    );
    ensure!(
        full.get("ClusterRoleBinding", "fw-operator-secrets")
            .is_err(),
        "no cluster-wide Secret access when namespaces are listed"
    );
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_rendered_chart_passes_a_server_side_dry_run_with_default_and_non_default_values() {
    run_test("helm-dry-run", |logs| {
        let (_plane, kubectl) = cluster(logs)?;
        // acme and globex: the listed Secret namespaces; monitoring: the dashboard's ConfigMap.
        for ns in ["acme", "globex", "monitoring"] {
            kubectl.run(&["create", "namespace", ns])?;
        }
        kubectl.apply(ADDON_CRDS)?;
        kubectl.run(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/certificates.cert-manager.io",
            "crd/issuers.cert-manager.io",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ])?;
        let full = ci_values("full");
        let single = ci_values("single");
        for (label, files) in [
            ("default", vec![]),
            ("full", vec![full.as_path()]),
            ("single", vec![single.as_path()]),
        ] {
            let rendered = chart::template(NS, &files, &json!({}))?;
            // The ServiceAccounts for real: the `helm test` Pod (a hook, created after the
            // release's objects) runs as the dataplane's, which admission looks up.
            kubectl.apply(&rendered.stream_of(&["ServiceAccount"]))?;
            // The CRDs are applied already; helm template leaves crds/ out of its output.
            let out = kubectl
                .run_with_stdin(
                    &[
                        "apply",
                        "--server-side",
                        "--dry-run=server",
                        "--field-manager=helm",
                        "-f",
                        "-",
                    ],
                    Some(rendered.yaml()),
                )
                .with_context(|| format!("the {label} values"))?;
            let accepted = out
                .lines()
                .filter(|l| l.ends_with("(server dry run)"))
                .count();
            ensure!(
                accepted == rendered.objects().len() && accepted > 10,
                "{label}: {accepted} of {} objects accepted:\n{out}",
                rendered.objects().len()
            );
        }
        // Without the namespaces a listed-Secrets install needs, the API server refuses it.
        let rendered = chart::template(
            NS,
            &[],
            &json!({"rbac": {"secretNamespaces": ["not-created"]}}),
        )?;
        let out = kubectl.call(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            Some(rendered.yaml()),
        )?;
        ensure!(
            !out.success && out.stderr.contains("not-created"),
            "a RoleBinding in a missing namespace is refused: {}",
            out.stderr
        );
        Ok(())
    });
}

/// A rollout keeps dataplanes serving: a pod is added before one goes, Services drop a pod
/// (preStop sleep, by the binary: the image has no shell) before its drain, and the drain fits
/// in the grace period.
fn ensure_dataplane_drains(dp: &Value) -> Result<()> {
    let rolling = &dp["spec"]["strategy"]["rollingUpdate"];
    ensure!(
        rolling["maxSurge"] == 1 && rolling["maxUnavailable"] == 0,
        "dataplane rollout: {rolling}"
    );
    let pod = &dp["spec"]["template"]["spec"];
    ensure!(pod["terminationGracePeriodSeconds"] == 30);
    let c = &pod["containers"][0];
    ensure!(
        c["lifecycle"]["preStop"]["exec"]["command"]
            == json!(["/usr/local/bin/fleetward", "sleep", "5"]),
        "dataplane preStop: {}",
        c["lifecycle"]
    );
    let args = c["args"].as_array().context("dataplane args")?;
    ensure!(
        args.contains(&json!("--drain-timeout-secs=20")),
        "dataplane args: {args:?}"
    );
    ensure!(
        !args.iter().any(|a| a
            .as_str()
            .is_some_and(|a| a.starts_with("--drain-server-reference"))),
        "no server reference by default: {args:?}"
    );
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_drain_values_reach_the_dataplane_and_a_drain_longer_than_the_grace_is_refused() -> Result<()>
{
    let values = json!({"dataplane": {
        "terminationGracePeriodSeconds": 60,
        "drain": {"preStopSleepSeconds": 0, "timeoutSeconds": 45, "serverReference": "mqtt-b.example.com:8883"},
    }});
    let r = chart::template(NS, &[], &values)?;
    let c =
        &r.get("Deployment", "fleetward-dataplane")?["spec"]["template"]["spec"]["containers"][0];
    ensure!(c.get("lifecycle").is_none(), "no preStop at 0 s: {c}");
    let args = c["args"].as_array().context("dataplane args")?;
    for flag in [
        "--drain-timeout-secs=45",
        "--drain-server-reference=mqtt-b.example.com:8883",
    ] {
        ensure!(args.contains(&json!(flag)), "{flag} missing: {args:?}");
    }
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_bad_value_is_refused_with_a_message_naming_it() -> Result<()> {
    let cases = [
        (
            json!({"dataplane": {"service": {"type": "Ingress"}}}),
            "/dataplane/service/type",
        ),
        (json!({"operator": {"replicas": 0}}), "/operator/replicas"),
        (
            json!({"dataplane": {"servce": {"type": "NodePort"}}}),
            "additional properties 'servce' not allowed",
        ),
        (json!({"nats": {"url": "redis://cache:6379"}}), "/nats/url"),
        (json!({"policySync": {"port": 70000}}), "/policySync/port"),
        (
            json!({"dataplane": {"limits": {"maxConnections": "many"}}}),
            "/dataplane/limits/maxConnections",
        ),
        (
            json!({"nats": {"url": ""}}),
            "nats.url is empty but more than one dataplane pod may run",
        ),
        (
            json!({"dataplane": {"mqtts": {"enabled": true}}}),
            "dataplane.mqtts.enabled needs a certificate",
        ),
        (
            json!({"operator": {"lease": {"durationSeconds": 10, "renewBeforeSeconds": 10}}}),
            "must be less than durationSeconds",
        ),
        (
            json!({"dataplane": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}),
            "minReplicas (5) is above maxReplicas (3)",
        ),
        (
            json!({"dataplane": {"drain": {"preStopSleepSeconds": 5, "timeoutSeconds": 30}}}),
            "must stay below dataplane.terminationGracePeriodSeconds (30)",
        ),
        (
            json!({"dataplane": {"drain": {"preStopSleepSeconds": 5, "timeoutSeconds": 20, "serverReference": "mqtt://b"}}}),
            "/dataplane/drain/serverReference",
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
    // The same values with the mistake fixed are accepted.
    for values in [
        json!({"dataplane": {"service": {"type": "NodePort"}}}),
        json!({"nats": {"url": ""}, "dataplane": {"replicas": 1, "autoscaling": {"enabled": false}}}),
    ] {
        chart::template(NS, &[], &values)?;
    }
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn every_flag_the_chart_passes_is_one_the_binary_takes() -> Result<()> {
    let binary = workspace::fleetward_binary()?;
    let mut refused = Vec::new();
    let full = ci_values("full");
    for (prefix, files) in [(RELEASE, vec![]), ("fw", vec![full.as_path()])] {
        let r = chart::template(NS, &files, &json!({}))?;
        for component in ["operator", "dataplane"] {
            let c = r.container(&format!("{prefix}-{component}"), component)?;
            ensure!(
                c.args.first().map(String::as_str) == Some(component),
                "the {component} container runs `fleetward {component}`: {:?}",
                c.args
            );
            // clap parses every flag and its value before it reaches --help: an unknown flag
            // or a value of the wrong form fails, and nothing starts.
            let out = Command::new(&binary)
                .args(&c.args)
                .arg("--help")
                .output()
                .with_context(|| format!("run {}", binary.display()))?;
            if !out.status.success() {
                refused.push(format!(
                    "fleetward {}: {}",
                    c.args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    ensure!(
        refused.is_empty(),
        "the binary refuses what the chart passes:\n{}",
        refused.join("\n")
    );
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_generated_token_is_kept_by_upgrades_and_an_upgrade_leaves_the_lease_to_the_operator() {
    run_test("helm-upgrade", |logs| {
        let plane = ControlPlane::start(logs)?;
        let kubectl = plane.kubectl();
        let kubeconfig = path_str(plane.kubeconfig())?.to_owned();
        let chart_dir = chart::chart_dir();
        let chart_path = path_str(&chart_dir)?;
        let helm = |verb: &str, extra: &[&str]| -> Result<String> {
            let mut args = vec![
                verb,
                RELEASE,
                chart_path,
                "--namespace",
                NS,
                "--kubeconfig",
                &kubeconfig,
            ];
            args.extend_from_slice(extra);
            let out = chart::helm(&args)?;
            ensure!(
                out.success,
                "helm {} failed: {}",
                args.join(" "),
                out.stderr.trim()
            );
            Ok(out.stdout)
        };
        // A real install: the CRDs from crds/, then every object, server-side applied.
        let notes = helm("install", &["--create-namespace"])?;
        ensure!(
            notes.contains("rollout status deployment/fleetward-operator"),
            "NOTES.txt tells what to do next:\n{notes}"
        );
        let token = |kubectl: &Kubectl| -> Result<String> {
            let s = kubectl.get_json(&["secret", "fleetward-sync-token", "-n", NS])?;
            s["data"]["token"]
                .as_str()
                .map(str::to_owned)
                .context("the token Secret has no token")
        };
        let installed = token(&kubectl)?;

        // The operator takes the chart's Lease.
        let _op = Operator::start("operator-0", plane.kubeconfig(), TOKEN, logs.path())?;
        wait_until("operator-0 holds the Lease", SETTLE, || {
            let lease = kubectl.get_json(&["lease", "fleetward-operator", "-n", NS])?;
            Ok(lease["spec"]["holderIdentity"] == "operator-0")
        })?;

        helm(
            "upgrade",
            &[
                "--set",
                "operator.replicas=3",
                "--set",
                "dataplane.logLevel=debug",
            ],
        )?;
        ensure!(
            token(&kubectl)? == installed,
            "the upgrade kept the generated token"
        );
        let deploy = kubectl.get_json(&["deployment", "fleetward-operator", "-n", NS])?;
        ensure!(deploy["spec"]["replicas"] == 3, "the upgrade applied");
        let lease = kubectl.get_json(&["lease", "fleetward-operator", "-n", NS])?;
        ensure!(
            lease["spec"]["holderIdentity"] == "operator-0",
            "the upgrade left the Lease's holder alone: {lease}"
        );

        // A Secret of one's own replaces the generated one.
        kubectl.run(&[
            "create",
            "secret",
            "generic",
            "my-token",
            "-n",
            NS,
            "--from-literal=sync=abc",
        ])?;
        helm(
            "upgrade",
            &[
                "--set",
                "policySync.token.existingSecret=my-token",
                "--set",
                "policySync.token.key=sync",
            ],
        )?;
        wait_until("the generated token Secret to go", SETTLE, || {
            Ok(!kubectl.exists(&["secret", "fleetward-sync-token", "-n", NS])?)
        })?;
        let deploy = kubectl.get_json(&["deployment", "fleetward-dataplane", "-n", NS])?;
        let volumes = &deploy["spec"]["template"]["spec"]["volumes"];
        ensure!(
            volumes
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["secret"]["secretName"] == "my-token"
                    && v["secret"]["items"][0]["key"] == "sync"),
            "the dataplane mounts the given Secret: {volumes}"
        );
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_operator_under_the_charts_service_account_makes_the_examples_ready() {
    run_test("helm-rbac", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        let rendered = chart::template(NS, &[], &operator_values())?;
        let kubeconfig = operator_service_account(&plane, &kubectl, logs, &rendered)?;
        let ops = start_operators(2, &kubeconfig, TOKEN, logs.path())?;
        apply_examples(&kubectl)?;
        wait_all(&kubectl, &["acme", "globex"], "Ready")?;

        // Created under the ServiceAccount: a Secret, an Event, the Lease's holder, and the
        // token signing-key Secret (the Role allows it by name).
        ensure!(kubectl.exists(&["secret", "dashboard-credentials", "-n", "acme"])?);
        wait_until("the token signing-key Secret", SETTLE, || {
            kubectl.exists(&["secret", "fleetward-signing-keys", "-n", NS])
        })?;
        wait_until("an Event from the operator in acme", SETTLE, || {
            let events = kubectl.get_json(&["events.events.k8s.io", "-n", "acme"])?;
            Ok(events["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["reportingController"] == "fleetward.io/operator"))
        })?;
        let lease = kubectl.get_json(&["lease", "fleetward-operator", "-n", NS])?;
        let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
        ensure!(
            ops.iter().any(|op| op.id == holder),
            "a replica holds the chart's Lease: {lease}"
        );
        for op in &ops {
            let text = log_text(op)?;
            ensure!(
                !text.to_lowercase().contains("forbidden"),
                "{} was refused something under the chart's RBAC; see {}",
                op.id,
                op.process.log_path().display()
            );
        }

        // And nothing more than it needs.
        for (args, allowed) in [
            (
                vec!["patch", "things", "--subresource=status", "-n", "acme"],
                true,
            ),
            (vec!["create", "secrets", "-n", "acme"], true),
            (vec!["watch", "tenants"], true),
            (vec!["update", "things", "-n", "acme"], false),
            (vec!["delete", "things", "-n", "acme"], false),
            (vec!["update", "secrets", "-n", "acme"], false),
            (vec!["delete", "secrets", "-n", "acme"], false),
            (vec!["get", "configmaps", "-n", "acme"], false),
            (vec!["patch", "leases/fleetward-operator", "-n", NS], true),
            (vec!["create", "leases", "-n", NS], true),
            (vec!["delete", "leases", "-n", NS], true),
            (vec!["update", "leases", "-n", NS], false),
            (vec!["create", "leases", "-n", "acme"], false),
            (
                vec!["patch", "leases/fleetward-operator", "-n", "kube-system"],
                false,
            ),
            (vec!["create", "events.events.k8s.io", "-n", "acme"], true),
            (vec!["create", "pods", "-n", NS], false),
        ] {
            ensure!(
                operator_can(&kubectl, &args)? == allowed,
                "the operator's ServiceAccount {} {}",
                if allowed {
                    "must be allowed to"
                } else {
                    "must not"
                },
                args.join(" ")
            );
        }
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn secret_access_can_be_limited_to_listed_namespaces() {
    run_test("helm-rbac-namespaces", |logs| {
        let (_plane, kubectl) = cluster(logs)?;
        kubectl.run(&["create", "namespace", "acme"])?;
        let rendered = chart::template(NS, &[], &json!({"rbac": {"secretNamespaces": ["acme"]}}))?;
        kubectl.apply(&rendered.stream_of(&[
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ]))?;
        ensure!(operator_can(
            &kubectl,
            &["create", "secrets", "-n", "acme"]
        )?);
        ensure!(operator_can(&kubectl, &["watch", "secrets", "-n", "acme"])?);
        ensure!(!operator_can(
            &kubectl,
            &["create", "secrets", "-n", "globex"]
        )?);
        ensure!(!operator_can(
            &kubectl,
            &["get", "secrets", "-n", "kube-system"]
        )?);
        ensure!(!operator_can(
            &kubectl,
            &["list", "secrets", "--all-namespaces"]
        )?);
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_examples_applied_again_server_side_change_nothing() {
    run_test("helm-gitops", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        let rendered = chart::template(NS, &[], &operator_values())?;
        let kubeconfig = operator_service_account(&plane, &kubectl, logs, &rendered)?;
        let _ops = start_operators(1, &kubeconfig, TOKEN, logs.path())?;
        apply_examples(&kubectl)?;
        wait_all(&kubectl, &["acme", "globex"], "Ready")?;
        let before = wait_quiet(&kubectl, Duration::from_secs(3))?;

        // What Argo CD and Flux do: a server-side diff, then the same apply again.
        for file in ["acme.yaml", "globex.yaml"] {
            let path = examples_dir().join(file);
            let diff = kubectl.call(&["diff", "--server-side", "-f", path_str(&path)?], None)?;
            ensure!(
                diff.success && diff.stdout.trim().is_empty(),
                "kubectl diff --server-side finds {file} changed:\n{}{}",
                diff.stdout,
                diff.stderr
            );
        }
        apply_examples(&kubectl)?;
        thread::sleep(Duration::from_secs(3));
        let after = resource_versions(&kubectl)?;
        let changed: Vec<&(String, String)> = after
            .iter()
            .filter(|entry| !before.contains(entry))
            .collect();
        ensure!(
            before.len() == after.len() && before.len() > 10,
            "the same objects before and after: {before:?} / {after:?}"
        );
        // The API server itself writes a Namespace once more on its second apply: a Namespace
        // created by server-side apply has no managedFields, and the next apply records the
        // fields it defaulted (its name label, its finalizer) under `before-first-apply`.
        for (key, _) in &changed {
            let name = key.strip_prefix("Namespace//").with_context(|| {
                format!("applying the examples again changed {key}: {changed:?}")
            })?;
            let ns = kubectl.run(&[
                "get",
                "namespace",
                name,
                "-o",
                "json",
                "--show-managed-fields",
            ])?;
            let ns: Value = serde_json::from_str(&ns).context("parse a Namespace")?;
            ensure!(
                ns["metadata"]["managedFields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["manager"] == "before-first-apply"),
                "Namespace {name} changed for another reason than the API server's first-apply \
                 bookkeeping: {ns}"
            );
        }
        // From then on, nothing at all.
        apply_examples(&kubectl)?;
        thread::sleep(Duration::from_secs(3));
        let again = resource_versions(&kubectl)?;
        ensure!(
            again == after,
            "applying the examples a third time changed: {:?}",
            again
                .iter()
                .filter(|e| !after.contains(e))
                .collect::<Vec<_>>()
        );

        // The operator writes only status: never a field of a spec.
        for ns in ["acme", "globex"] {
            for name in fleetward_objects(&kubectl, ns)? {
                let obj = kubectl.get_json(&[&name, "-n", ns, "--show-managed-fields"])?;
                let operator_entries: Vec<&Value> = obj["metadata"]["managedFields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["manager"] == "fleetward-operator")
                    .collect();
                ensure!(
                    !operator_entries.is_empty()
                        && operator_entries
                            .iter()
                            .all(|m| m["subresource"] == "status"),
                    "the operator manages fields of {ns}/{name} outside its status (or none): \
                     {operator_entries:?}"
                );
                // The health check on the real object: accepted, no dataplane yet.
                let health = argocd::health(&argocd::health_script(), &obj)?;
                ensure!(
                    health.status == "Progressing" && health.message.contains("NoDataplanes"),
                    "{ns}/{name}: {health:?}"
                );
            }
        }
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_dataplane_started_from_the_chart_enforces_the_examples() {
    run_test("helm-dataplane", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        let op = Operator::start("operator-0", plane.kubeconfig(), TOKEN, logs.path())?;
        apply_examples(&kubectl)?;
        let state = tempfile::tempdir().context("create a state directory")?;
        let _dp = Dataplane::start(
            "dataplane-0",
            state.path(),
            DataplaneConfig {
                operators: vec![op.sync_url()],
                sync_token: TOKEN.to_owned(),
                nats_url: None,
            },
            logs.path(),
        )?;
        wait_all(&kubectl, &["acme", "globex"], "Enforced")?;
        let thing = kubectl.get_json(&["thing", "sensor-1", "-n", "acme"])?;
        let health = argocd::health(&argocd::health_script(), &thing)?;
        ensure!(health.status == "Healthy", "{health:?}");
        Ok(())
    });
}

fn sample(generation: i64, conditions: Value, observed: Option<i64>) -> Value {
    let mut status = json!({"conditions": conditions});
    if let Some(g) = observed {
        status["observedGeneration"] = json!(g);
    }
    json!({
        "apiVersion": "fleetward.io/v1alpha1",
        "kind": "Thing",
        "metadata": {"name": "sensor-1", "namespace": "acme", "generation": generation},
        "spec": {},
        "status": status,
    })
}

fn cond(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_argocd_health_check_answers_healthy_progressing_degraded_and_suspended() -> Result<()> {
    let script = argocd::health_script();
    let enforced = cond(
        "Enforced",
        "True",
        "Enforced",
        "every connected dataplane …",
        2,
    );
    let ready = cond("Ready", "True", "Accepted", "accepted", 2);
    let cases = [
        (
            sample(2, json!([ready.clone(), enforced.clone()]), Some(2)),
            "Healthy",
            "enforced by every connected dataplane",
        ),
        (
            json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "Channel",
                   "metadata": {"name": "c", "namespace": "acme", "generation": 1}, "spec": {}}),
            "Progressing",
            "Waiting for the Fleetward operator",
        ),
        (
            sample(3, json!([ready.clone(), enforced.clone()]), Some(2)),
            "Progressing",
            "observe generation 3",
        ),
        (
            sample(
                2,
                json!([
                    ready.clone(),
                    cond(
                        "Enforced",
                        "False",
                        "Pending",
                        "waiting for every connected dataplane",
                        2
                    )
                ]),
                Some(2),
            ),
            "Progressing",
            "Pending: waiting for every connected dataplane",
        ),
        (
            sample(2, json!([ready.clone()]), Some(2)),
            "Progressing",
            "waiting for the dataplanes",
        ),
        (
            sample(
                2,
                json!([cond(
                    "Ready",
                    "False",
                    "CredentialsPending",
                    "creating the key",
                    2
                )]),
                Some(2),
            ),
            "Progressing",
            "CredentialsPending",
        ),
        (
            sample(
                2,
                json!([
                    cond(
                        "Ready",
                        "False",
                        "NoTenant",
                        "no Tenant owns namespace \"acme\"",
                        2
                    ),
                    cond("Enforced", "False", "NotServed", "not in the snapshot", 2)
                ]),
                Some(2),
            ),
            "Degraded",
            "NoTenant: no Tenant owns namespace \"acme\"",
        ),
        (
            sample(
                2,
                json!([cond("Ready", "False", "ChannelNotFound", "", 2)]),
                Some(2),
            ),
            "Degraded",
            "ChannelNotFound",
        ),
        (
            sample(
                2,
                json!([
                    cond("Ready", "True", "Suspended", "the tenant is suspended", 2),
                    enforced
                ]),
                Some(2),
            ),
            "Suspended",
            "the tenant is suspended",
        ),
    ];
    for (obj, status, message) in cases {
        let Health {
            status: got,
            message: said,
        } = argocd::health(&script, &obj)?;
        ensure!(
            got == status && said.contains(message),
            "expected {status} ({message:?}) for {obj}, got {got} ({said:?})"
        );
    }
    Ok(())
}
