//! A kubectl bound to one kubeconfig, logging every call, and polling helpers.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// `kubectl` with `--kubeconfig` set. The binary is `$KUBECTL` (what
/// `scripts/install-tools.sh` installs), else `kubectl` on PATH. Every call and
/// its output are appended to `kubectl.log` in the test's log directory.
#[derive(Debug, Clone)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
}

/// What a kubectl call printed, and whether it succeeded.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// Exit status 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Kubectl {
    /// A kubectl for the cluster in `kubeconfig`, logging into `log_dir`.
    pub fn new(kubeconfig: &Path, log_dir: &Path) -> Self {
        let bin =
            std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
        Self {
            bin,
            kubeconfig: kubeconfig.to_owned(),
            log: log_dir.join("kubectl.log"),
        }
    }

    /// The kubeconfig it uses.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `kubectl args...` with `stdin` fed in, whatever its exit status.
    pub fn call(&self, args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "run {} (set KUBECTL to the kubectl that scripts/install-tools.sh installs)",
                self.bin.display()
            )
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .context("write kubectl's stdin")?;
        }
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().context("wait for kubectl")?;
        let out = KubectlOutput {
            success: status.success(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        self.record(args, stdin, &out);
        Ok(out)
    }

    /// Runs `kubectl args...`, which must succeed, and returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_with_stdin(args, None)
    }

    /// Like [`Kubectl::run`], with `stdin` fed in.
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.call(args, stdin)?;
        if !out.success {
            bail!("kubectl {} failed: {}", args.join(" "), out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// Applies a YAML or JSON stream with server-side apply.
    pub fn apply(&self, manifests: &str) -> Result<String> {
        self.run_with_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=fleetward-e2e",
                "-f",
                "-",
            ],
            Some(manifests),
        )
    }

    /// Applies several streams with one `kubectl apply` each, side by side (bulk loads: one
    /// kubectl sends its objects one after another).
    pub fn apply_parallel(&self, streams: &[String]) -> Result<()> {
        thread::scope(|scope| {
            let workers: Vec<_> = streams
                .iter()
                .map(|stream| scope.spawn(|| self.apply(stream)))
                .collect();
            for worker in workers {
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("an apply worker panicked"))??;
            }
            Ok(())
        })
    }

    /// `kubectl get args... -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "json"]);
        let out = self.run(&full)?;
        serde_json::from_str(&out)
            .with_context(|| format!("parse the JSON of kubectl {}", full.join(" ")))
    }

    /// `(status, reason, message)` of condition `type_` of the object `kubectl get args...`
    /// names, when it shows one.
    pub fn condition(
        &self,
        args: &[&str],
        type_: &str,
    ) -> Result<Option<(String, String, String)>> {
        let obj = self.get_json(args)?;
        Ok(obj["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .map(|c| {
                let s = |f: &str| c[f].as_str().unwrap_or_default().to_owned();
                (s("status"), s("reason"), s("message"))
            }))
    }

    /// Waits up to `within` until condition `type_` of the object has `status` and `reason`;
    /// returns its message.
    pub fn wait_condition(
        &self,
        args: &[&str],
        (type_, status, reason): (&str, &str, &str),
        within: Duration,
    ) -> Result<String> {
        let mut message = String::new();
        wait_until(
            &format!("{} {type_}={status} ({reason})", args.join(" ")),
            within,
            || {
                Ok(match self.condition(args, type_)? {
                    Some((s, r, m)) if s == status && r == reason => {
                        message = m;
                        true
                    }
                    _ => false,
                })
            },
        )?;
        Ok(message)
    }

    /// Whether `kubectl get args...` finds the object (a NotFound is `false`).
    pub fn exists(&self, args: &[&str]) -> Result<bool> {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "name"]);
        let out = self.call(&full, None)?;
        if out.success {
            return Ok(true);
        }
        if out.stderr.contains("NotFound") || out.stderr.contains("not found") {
            return Ok(false);
        }
        bail!("kubectl {} failed: {}", full.join(" "), out.stderr.trim())
    }

    fn record(&self, args: &[&str], stdin: Option<&str>, out: &KubectlOutput) {
        // The log is for people reading a failure; failing to write it must not fail the test.
        let Ok(mut log) = OpenOptions::new().create(true).append(true).open(&self.log) else {
            return;
        };
        let _ = writeln!(log, "$ kubectl {}", args.join(" "));
        if let Some(input) = stdin {
            let _ = writeln!(log, "<<< stdin\n{}\n>>>", input.trim_end());
        }
        let _ = writeln!(
            log,
            "{}{}[{}]\n",
            out.stdout,
            out.stderr,
            if out.success { "ok" } else { "failed" }
        );
    }
}

/// Polls `check` every 200 ms until it returns `true`, and returns how long that took.
/// Fails with `what` in the message when `timeout` passes first; an error from
/// `check` is remembered and reported then, not at once (the API may be settling).
pub fn wait_until(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    wait_every(what, timeout, Duration::from_millis(200), check)
}

/// [`wait_until`], polling every `every`.
pub fn wait_every(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(err) => last_error = Some(err),
        }
        if start.elapsed() >= timeout {
            match last_error {
                Some(err) => bail!("{what}: not within {timeout:?}; last error: {err:#}"),
                None => bail!("{what}: not within {timeout:?}"),
            }
        }
        thread::sleep(every);
    }
}
