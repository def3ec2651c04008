//! The Helm chart as the harness reads it: `helm template`, the rendered objects, and the command line the chart gives a container, with only its addresses and paths replaced.
//!
//! The operator and dataplane spawners start the real binaries from what the chart renders,
//! so a flag the chart passes and the binary lacks (or the other way round) fails every
//! end-to-end test that starts a process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value;

use crate::workspace;

/// The release name the harness renders the chart under (the names tests expect,
/// `fleetward-operator` among them, follow from it).
pub const RELEASE: &str = "fleetward";

/// The chart's directory, `charts/fleetward`.
pub fn chart_dir() -> PathBuf {
    workspace::root().join("charts").join("fleetward")
}

/// The helm binary: `$HELM` (what `scripts/install-tools.sh` installs), else `helm` on PATH.
pub fn helm_binary() -> PathBuf {
    std::env::var_os("HELM").map_or_else(|| PathBuf::from("helm"), PathBuf::from)
}

/// What a helm call printed.
#[derive(Debug, Clone)]
pub struct HelmOutput {
    /// Exit status 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `helm args...`, whatever its exit status.
pub fn helm(args: &[&str]) -> Result<HelmOutput> {
    let bin = helm_binary();
    let out = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "run {} (set HELM to the helm that scripts/install-tools.sh installs)",
                bin.display()
            )
        })?;
    Ok(HelmOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The chart rendered by `helm template`: the YAML stream and its objects.
#[derive(Debug, Clone)]
pub struct Rendered {
    yaml: String,
    objects: Vec<Value>,
}

/// Renders the chart as release [`RELEASE`] in `namespace`, with the values files `files`
/// (in order) and then `values` on top. Fails with helm's message when it refuses the values.
pub fn template(namespace: &str, files: &[&Path], values: &Value) -> Result<Rendered> {
    template_of(&chart_dir(), namespace, files, values)
}

/// Like [`template`], for the chart in `chart` (an older release's, in the version-skew test).
pub fn template_of(
    chart: &Path,
    namespace: &str,
    files: &[&Path],
    values: &Value,
) -> Result<Rendered> {
    let out = template_output_of(chart, namespace, files, values)?;
    if !out.success {
        bail!("helm template failed: {}", out.stderr.trim());
    }
    Rendered::parse(out.stdout)
}

/// Runs `helm template` like [`template`] and returns what helm printed, refusals included.
pub fn template_output(namespace: &str, files: &[&Path], values: &Value) -> Result<HelmOutput> {
    template_output_of(&chart_dir(), namespace, files, values)
}

fn template_output_of(
    chart: &Path,
    namespace: &str,
    files: &[&Path],
    values: &Value,
) -> Result<HelmOutput> {
    let dir = tempfile::Builder::new()
        .prefix("fleetward-e2e-values-")
        .tempdir()
        .context("create a directory for the values file")?;
    // JSON is YAML: the values go to helm as a file, so no --set escaping is involved.
    let values_file = dir.path().join("values.json");
    std::fs::write(&values_file, values.to_string())
        .with_context(|| format!("write {}", values_file.display()))?;
    let mut args: Vec<String> = vec![
        "template".into(),
        RELEASE.into(),
        path_str(chart)?.into(),
        "--namespace".into(),
        namespace.into(),
    ];
    for file in files {
        args.push("--values".into());
        args.push(path_str(file)?.into());
    }
    args.push("--values".into());
    args.push(path_str(&values_file)?.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm(&args)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

impl Rendered {
    /// The objects of a YAML stream of rendered manifests (`helm template`, or a release's
    /// `manifest`).
    pub fn parse(yaml: String) -> Result<Self> {
        let mut objects = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&yaml) {
            let value = Value::deserialize(doc).context("parse the YAML helm template printed")?;
            if !value.is_null() {
                objects.push(value);
            }
        }
        Ok(Self { yaml, objects })
    }

    /// The YAML stream, as `kubectl apply -f -` takes it.
    pub fn yaml(&self) -> &str {
        &self.yaml
    }

    /// Every rendered object.
    pub fn objects(&self) -> &[Value] {
        &self.objects
    }

    /// The objects of `kind`.
    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> Result<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .with_context(|| format!("the chart renders no {kind} {name}"))
    }

    /// The objects of `kinds`, as a YAML stream (JSON documents separated by `---`).
    pub fn stream_of(&self, kinds: &[&str]) -> String {
        self.objects
            .iter()
            .filter(|o| kinds.iter().any(|k| o["kind"] == *k))
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// Container `container` of Deployment `deployment`.
    pub fn container(&self, deployment: &str, container: &str) -> Result<ChartContainer> {
        let spec = &self.get("Deployment", deployment)?["spec"]["template"]["spec"]["containers"];
        let c = spec
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == container)
            .with_context(|| format!("Deployment {deployment} has no container {container}"))?;
        ChartContainer::from_json(c)
            .with_context(|| format!("container {container} of Deployment {deployment}"))
    }
}

/// Where an environment variable of a rendered container takes its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// A literal `value`.
    Value(String),
    /// `valueFrom.fieldRef.fieldPath` (the pod's own name or namespace).
    Field(String),
    /// Any other `valueFrom` (a Secret, a ConfigMap, a resource).
    Other(Value),
}

/// The command line and environment the chart gives one container.
#[derive(Debug, Clone)]
pub struct ChartContainer {
    /// `args` (the image's entrypoint is the `fleetward` binary).
    pub args: Vec<String>,
    /// `env`, in order.
    pub env: Vec<(String, EnvSource)>,
}

impl ChartContainer {
    fn from_json(c: &Value) -> Result<Self> {
        let args = c["args"]
            .as_array()
            .context("no args")?
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_owned)
                    .context("an arg is not a string")
            })
            .collect::<Result<_>>()?;
        let mut env = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().context("an env entry has no name")?;
            let source = if let Some(v) = e["value"].as_str() {
                EnvSource::Value(v.to_owned())
            } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                EnvSource::Field(field.to_owned())
            } else {
                EnvSource::Other(e["valueFrom"].clone())
            };
            env.push((name.to_owned(), source));
        }
        Ok(Self { args, env })
    }

    /// The value of `--flag=value` in the args, if the chart passes it.
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let prefix = format!("{flag}=");
        self.args.iter().find_map(|a| a.strip_prefix(&prefix))
    }

    /// The names of every `--flag` the chart passes.
    pub fn flags(&self) -> Vec<&str> {
        self.args
            .iter()
            .filter(|a| a.starts_with("--"))
            .map(|a| a.split_once('=').map_or(a.as_str(), |(name, _)| name))
            .collect()
    }

    /// The command to start this container as a local process of `binary`: every arg as
    /// rendered except the flags in `flags`, whose values are replaced (they are addresses,
    /// ports and paths, which differ between a pod and a test); every env var as rendered,
    /// with `fieldRef`s resolved from `fields`. A replaced flag the chart does not render, or
    /// an env source the harness cannot reproduce, is an error: the chart changed.
    pub fn command(
        &self,
        binary: &Path,
        flags: &BTreeMap<&str, String>,
        fields: &BTreeMap<&str, String>,
    ) -> Result<Command> {
        for flag in flags.keys() {
            ensure!(
                self.flag(flag).is_some(),
                "the chart no longer renders {flag}=…, which the harness replaces with a local \
                 value; update e2e/src/fleetward.rs to what the chart passes now (args: {:?})",
                self.args
            );
        }
        let mut cmd = Command::new(binary);
        for arg in &self.args {
            let replaced = arg
                .split_once('=')
                .and_then(|(name, _)| flags.get(name).map(|v| format!("{name}={v}")));
            cmd.arg(replaced.unwrap_or_else(|| arg.clone()));
        }
        for (name, source) in &self.env {
            let value = match source {
                EnvSource::Value(v) => v.clone(),
                EnvSource::Field(path) => fields.get(path.as_str()).cloned().with_context(|| {
                    format!(
                        "the chart sets {name} from the pod field {path}, which the harness does \
                         not know; add it to the fields in e2e/src/fleetward.rs"
                    )
                })?,
                EnvSource::Other(from) => bail!(
                    "the chart sets {name} from {from}, which the harness cannot reproduce; \
                     teach e2e/src/chart.rs that source"
                ),
            };
            cmd.env(name, value);
        }
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container() -> ChartContainer {
        ChartContainer::from_json(&json!({
            "name": "operator",
            "args": ["operator", "--sync-listen=0.0.0.0:50051", "--lease-name=x", "--verbose"],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "RUST_LOG", "value": "info"},
            ],
        }))
        .expect("a well-formed container")
    }

    fn args_of(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn only_the_named_flags_are_replaced_and_fields_are_resolved() -> Result<()> {
        let c = container();
        let flags = BTreeMap::from([("--sync-listen", "127.0.0.1:4000".to_owned())]);
        let fields = BTreeMap::from([("metadata.name", "operator-0".to_owned())]);
        let cmd = c.command(Path::new("/bin/true"), &flags, &fields)?;
        assert_eq!(
            args_of(&cmd),
            [
                "operator",
                "--sync-listen=127.0.0.1:4000",
                "--lease-name=x",
                "--verbose"
            ]
        );
        let env: BTreeMap<String, String> = cmd
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        assert_eq!(env["POD_NAME"], "operator-0");
        assert_eq!(env["RUST_LOG"], "info");
        assert_eq!(c.flags(), ["--sync-listen", "--lease-name", "--verbose"]);
        Ok(())
    }

    #[test]
    fn a_replaced_flag_the_chart_lacks_is_refused() {
        let flags = BTreeMap::from([("--grpc-listen", "127.0.0.1:4000".to_owned())]);
        let fields = BTreeMap::from([("metadata.name", "operator-0".to_owned())]);
        let err = container()
            .command(Path::new("/bin/true"), &flags, &fields)
            .expect_err("--grpc-listen is not rendered");
        assert!(
            err.to_string().contains("no longer renders --grpc-listen"),
            "{err:#}"
        );
    }

    #[test]
    fn an_unknown_pod_field_or_env_source_is_refused() {
        let err = container()
            .command(Path::new("/bin/true"), &BTreeMap::new(), &BTreeMap::new())
            .expect_err("metadata.name is not given");
        assert!(err.to_string().contains("metadata.name"), "{err:#}");

        let secret = ChartContainer::from_json(&json!({
            "args": ["dataplane"],
            "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        }))
        .expect("a well-formed container");
        let err = secret
            .command(Path::new("/bin/true"), &BTreeMap::new(), &BTreeMap::new())
            .expect_err("a secretKeyRef cannot be reproduced");
        assert!(err.to_string().contains("secretKeyRef"), "{err:#}");
    }
}
