//! The README's quick start and cluster path, run verbatim: their blocks are taken from
//! README.md by their `quickstart=<name>` and `cluster=<name>` marks, so the commands a
//! newcomer copies cannot drift from what works.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fleetward_e2e::fleetward::http_get;
use fleetward_e2e::process::Process;
use fleetward_e2e::{run_test, workspace};

/// The fenced blocks of the README marked `quickstart=<name>`, by name.
fn quickstart_blocks() -> Result<BTreeMap<String, String>> {
    readme_blocks("quickstart")
}

/// The fenced blocks of the README marked `<mark>=<name>`, by name.
fn readme_blocks(mark: &str) -> Result<BTreeMap<String, String>> {
    let prefix = format!("{mark}=");
    let readme =
        std::fs::read_to_string(workspace::root().join("README.md")).context("read README.md")?;
    let mut blocks = BTreeMap::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let Some(name) = info
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
        else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        blocks.insert(name.to_owned(), body.join("\n"));
    }
    Ok(blocks)
}

/// The release profile the blocks' `cargo run --release` and `cargo build --release` build
/// with here: the README's commands run as written, but unoptimized, like the debug binary
/// every other end-to-end test runs. A cold optimized build (thin LTO) takes about 22 CPU
/// minutes on CI's two cores, this one 7 (measured with a cold target dir); the optimized
/// binary is what the benchmark suite measures. Overflow checks and debug assertions stay as
/// the release profile has them (off), so the binary behaves as a user's does.
const UNOPTIMIZED_RELEASE: [(&str, &str); 3] = [
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0"),
    ("CARGO_PROFILE_RELEASE_LTO", "off"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "256"),
];

/// A block run by bash in the workspace root, its stdout line-buffered (for mosquitto_sub).
fn shell(name: &str, script: &str, logs: &std::path::Path) -> Result<Process> {
    shell_with(name, script, &[], logs)
}

/// [`shell`] with more environment (`PATH` for the cluster path's `fleetward`).
fn shell_with(
    name: &str,
    script: &str,
    env: &[(&str, std::ffi::OsString)],
    logs: &std::path::Path,
) -> Result<Process> {
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "bash", "-c", script])
        .current_dir(workspace::root())
        .env("RUST_LOG", "info")
        .envs(UNOPTIMIZED_RELEASE)
        .envs(env.iter().map(|(k, v)| (k, v)));
    Process::spawn(name, cmd, logs)
}

/// Runs a block to completion with bash in the workspace root.
fn run_block(name: &str, script: &str) -> Result<Output> {
    run_block_with(name, script, &[])
}

/// [`run_block`] with more environment.
fn run_block_with(name: &str, script: &str, env: &[(&str, std::ffi::OsString)]) -> Result<Output> {
    Command::new("bash")
        .args(["-c", script])
        .current_dir(workspace::root())
        .envs(UNOPTIMIZED_RELEASE)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .with_context(|| format!("run the {name} block"))
}

/// Runs a block that must succeed; returns its stdout.
fn succeeds(name: &str, script: &str, env: &[(&str, std::ffi::OsString)]) -> Result<String> {
    let out = run_block_with(name, script, env)?;
    ensure!(
        out.status.success(),
        "the {name} block failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_listening(addr: SocketAddr, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "nothing listens on {addr} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The stdout lines a process printed, from its log (stderr lines are there too; callers
/// look for what only stdout holds).
fn output_of(p: &Process) -> Result<String> {
    std::fs::read_to_string(p.log_path())
        .with_context(|| format!("read {}", p.log_path().display()))
}

/// Runs the quick start's `start` block once the ports the README promises (and `more`) are
/// free, and waits for its MQTT and HTTP listeners.
fn start_as_written(block: &str, more: &[u16], logs: &std::path::Path) -> Result<Process> {
    // The defaults the README promises must be free, or the run means nothing.
    for &port in [1883, 8080, 8081].iter().chain(more) {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("127.0.0.1:{port} is taken; stop what listens there and run again");
        }
    }
    // Warm the release build, so the verbatim `cargo run --release` starts in seconds.
    let status = Command::new("cargo")
        .args(["build", "--release", "--bin", "fleetward"])
        .envs(UNOPTIMIZED_RELEASE)
        .current_dir(workspace::root())
        .status()
        .context("cargo build --release")?;
    ensure!(status.success(), "cargo build --release failed: {status}");
    let start = shell("start", block, logs)?;
    wait_listening("127.0.0.1:1883".parse()?, Duration::from_secs(120))?;
    wait_listening("127.0.0.1:8080".parse()?, Duration::from_secs(10))?;
    Ok(start)
}

/// Runs the quick start's publish block and checks that curl got its 202.
fn publish_as_written(block: &str) -> Result<()> {
    let publish = run_block("publish", block)?;
    let curl = String::from_utf8_lossy(&publish.stdout);
    ensure!(
        publish.status.success() && curl.contains("202"),
        "the publish block failed ({}): {curl}{}",
        publish.status,
        String::from_utf8_lossy(&publish.stderr)
    );
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_readme_quick_start_works_as_written() {
    run_test("quickstart", |logs| {
        let blocks = quickstart_blocks()?;
        let names: Vec<&str> = blocks.keys().map(String::as_str).collect();
        ensure!(
            names
                == [
                    "acme-subscriber",
                    "explain",
                    "globex-subscriber",
                    "history",
                    "publish",
                    "refused",
                    "start"
                ],
            "the README's quick start blocks changed: {names:?}; update this test with it"
        );
        ensure!(
            blocks["start"].trim() == "cargo run --release -- start --manifests examples",
            "the first command is the one the issue names: {}",
            blocks["start"]
        );
        let mut start = start_as_written(&blocks["start"], &[], logs.path())?;
        let admin: SocketAddr = "127.0.0.1:8081".parse()?;

        let mut acme = shell("acme-subscriber", &blocks["acme-subscriber"], logs.path())?;
        let globex = shell(
            "globex-subscriber",
            &blocks["globex-subscriber"],
            logs.path(),
        )?;
        // Both subscribers are connected (and SUBSCRIBE follows CONNACK at once).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http_get(admin, "/metrics")?
            .1
            .contains("fleetward_mqtt_connections 2\n")
        {
            ensure!(Instant::now() < deadline, "the subscribers did not connect");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(500));

        publish_as_written(&blocks["publish"])?;

        acme.wait_for_line(Duration::from_secs(10), |l| {
            l.contains("m/acme/c/telemetry/status {\"temp\": 21.5}")
                .then_some(())
        })
        .context("acme/dashboard did not print the MQTT message")?;
        acme.wait_for_line(Duration::from_secs(10), |l| {
            l.contains("m/acme/c/telemetry/status {\"temp\": 22.0}")
                .then_some(())
        })
        .context("acme/dashboard did not print the HTTP message")?;

        // The channel keeps history: the dashboard reads both back, newest first (the writer
        // batches for up to 20 ms).
        let deadline = Instant::now() + Duration::from_secs(10);
        let history = loop {
            let out = run_block("history", &blocks["history"])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("21.5") || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let (newer, older) = (history.find("22.0"), history.find("21.5"));
        ensure!(
            newer.is_some() && older.is_some() && newer < older,
            "the history read did not return both messages, newest first: {history}"
        );

        let refused = run_block("refused", &blocks["refused"])?;
        let said = String::from_utf8_lossy(&refused.stderr);
        ensure!(
            said.contains("All subscription requests were denied"),
            "the cross-tenant subscription was not refused: {said}"
        );

        let explain = run_block("explain", &blocks["explain"])?;
        let text = String::from_utf8_lossy(&explain.stdout);
        ensure!(
            text.starts_with("no\n") && text.contains("cross_tenant") && text.contains("\nyes\n"),
            "can-i answered: {text}"
        );
        // The quick start's server is running: can-i asks it rather than the files.
        ensure!(
            text.matches("answered by the running server at http://127.0.0.1:")
                .count()
                == 2,
            "can-i did not answer through the running server: {text}"
        );
        ensure!(
            text.contains("reported by fleetward start") && text.contains("0 objects not ready"),
            "status answered: {text}"
        );

        // globex/dashboard saw none of acme's messages.
        ensure!(
            !output_of(&globex)?.contains("temp"),
            "globex/dashboard received acme's messages"
        );
        drop(globex);
        drop(acme);
        start.stop()?;
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_readme_device_certificates_work_as_written() {
    run_test("readme-certificates", |logs| {
        let blocks = readme_blocks("certs")?;
        let names: Vec<&str> = blocks.keys().map(String::as_str).collect();
        ensure!(
            names == ["publish", "start", "subscriber"],
            "the README's certificate blocks changed: {names:?}; update this test with it"
        );
        let mut start = start_as_written(&blocks["start"], &[8883, 8443], logs.path())?;
        wait_listening("127.0.0.1:8883".parse()?, Duration::from_secs(10))?;
        wait_listening("127.0.0.1:8443".parse()?, Duration::from_secs(10))?;
        let admin: SocketAddr = "127.0.0.1:8081".parse()?;
        let mut dashboard = shell("subscriber", &blocks["subscriber"], logs.path())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http_get(admin, "/metrics")?
            .1
            .contains("fleetward_mqtt_connections 1\n")
        {
            ensure!(Instant::now() < deadline, "the dashboard did not connect");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(500));
        let said = succeeds("publish", &blocks["publish"], &[])?;
        ensure!(
            said.contains("\"status\":\"accepted\"") || said.contains("message_id"),
            "curl over HTTPS was not accepted: {said}"
        );
        for watts in ["230", "231"] {
            dashboard
                .wait_for_line(Duration::from_secs(10), |l| {
                    l.contains(&format!("m/acme/c/telemetry/power {{\"watts\": {watts}}}"))
                        .then_some(())
                })
                .with_context(|| format!("the dashboard did not print meter-1's {watts}"))?;
        }
        drop(dashboard);
        start.stop()?;
        Ok(())
    });
}

/// Where `scripts/install-tools.sh` puts puppeteer-core and mqtt.js.
fn browser_modules() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLEETWARD_BROWSER_MODULES") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".cache/fleetward/browser/node_modules"))
}

/// `tests/browser/run.mjs` beside a link to the browser modules (it resolves puppeteer-core
/// from where it lies), driving Chromium against the served page.
fn drive_browser(page: &str, api: &str, logs: &Path) -> Result<Process> {
    let modules = browser_modules()?;
    ensure!(
        modules.join("puppeteer-core").is_dir(),
        "{} holds no puppeteer-core; run scripts/install-tools.sh",
        modules.display()
    );
    let driver = logs.join("driver");
    std::fs::create_dir_all(&driver).context("make the driver's directory")?;
    std::fs::copy(
        workspace::root().join("tests/browser/run.mjs"),
        driver.join("run.mjs"),
    )
    .context("copy tests/browser/run.mjs")?;
    std::os::unix::fs::symlink(&modules, driver.join("node_modules"))
        .context("link the browser modules")?;
    let mut cmd = Command::new("node");
    cmd.arg(driver.join("run.mjs"))
        .args([page, api])
        .arg(logs.join("dashboard.png"))
        .current_dir(&driver);
    Process::spawn("browser", cmd, logs)
}

/// The payloads one of the page's lists received.
fn payloads<'a>(seen: &'a serde_json::Value, list: &str) -> Vec<&'a str> {
    seen[list]
        .as_array()
        .map(|l| l.iter().filter_map(|m| m["payload"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_readme_dashboard_works_as_written_in_a_browser() {
    run_test("dashboard", |logs| {
        let quick = quickstart_blocks()?;
        let blocks = readme_blocks("dashboard")?;
        let names: Vec<&str> = blocks.keys().map(String::as_str).collect();
        ensure!(
            names == ["bundle", "serve"],
            "the README's dashboard blocks changed: {names:?}; update this test with it"
        );
        let mut start = start_as_written(&quick["start"], &[8000], logs.path())?;
        let bundle = run_block("bundle", &blocks["bundle"])?;
        ensure!(
            bundle.status.success(),
            "the bundle block failed ({}): {}",
            bundle.status,
            String::from_utf8_lossy(&bundle.stderr)
        );
        let mut serve = shell("serve", &blocks["serve"], logs.path())?;
        wait_listening("127.0.0.1:8000".parse()?, Duration::from_secs(10))?;

        // A person opens the page and presses Sign in; then the quick start's publishes.
        let mut browser = drive_browser(
            "http://127.0.0.1:8000/",
            "http://127.0.0.1:8080",
            logs.path(),
        )?;
        browser
            .wait_for_line(Duration::from_secs(90), |l| (l == "ready").then_some(()))
            .context("the page did not sign in and follow its channel")?;
        publish_as_written(&quick["publish"])?;
        let result = browser.wait_for_line(Duration::from_secs(60), |l| {
            l.strip_prefix("result ").map(str::to_owned)
        })?;
        let result: serde_json::Value =
            serde_json::from_str(&result).context("the driver's result")?;
        ensure!(result["failure"].is_null(), "the page: {result}");
        let seen = &result["seen"];
        for list in ["mqtt", "stream"] {
            let got = payloads(seen, list);
            ensure!(
                got.contains(&r#"{"temp": 21.5}"#) && got.contains(&r#"{"temp": 22.0}"#),
                "the {list} list shows {got:?}, not the MQTT and the HTTP message"
            );
        }
        // globex's channel is no business of acme's user: the page sees why, not a bare 1006.
        ensure!(
            seen["refused"]["code"] == 4403
                && seen["refused"]["reason"]
                    .as_str()
                    .is_some_and(|r| !r.is_empty()),
            "the refused stream: {}",
            seen["refused"]
        );
        let shot = logs.path().join("dashboard.png");
        ensure!(
            shot.metadata().is_ok_and(|m| m.len() > 0),
            "no screenshot in {}",
            shot.display()
        );
        // Kept where CI keeps artifacts: the log directory goes when the test passes.
        let kept = workspace::root().join("target/browser");
        std::fs::create_dir_all(&kept).context("make target/browser")?;
        std::fs::copy(&shot, kept.join("dashboard.png")).context("keep the screenshot")?;
        serve.stop()?;
        start.stop()?;
        Ok(())
    });
}

/// Deletes the README's local cluster (`scripts/local-cluster.sh delete`) when the test ends,
/// passed or not: it runs in the background, where dropping a process handle does not reach.
struct LocalCluster;

impl LocalCluster {
    const SCRIPT: &str = "scripts/local-cluster.sh";

    fn delete() -> Result<()> {
        let status = Command::new(workspace::root().join(Self::SCRIPT))
            .arg("delete")
            .current_dir(workspace::root())
            .status()
            .context("run scripts/local-cluster.sh delete")?;
        ensure!(
            status.success(),
            "scripts/local-cluster.sh delete: {status}"
        );
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(e) = Self::delete() {
            eprintln!("e2e: {e:#}");
        }
    }
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_readme_cluster_path_works_as_written() {
    run_test("cluster-path", |logs| {
        let blocks = readme_blocks("cluster")?;
        let names: Vec<&str> = blocks.keys().map(String::as_str).collect();
        ensure!(
            names
                == [
                    "api-server",
                    "apply",
                    "dataplane",
                    "install",
                    "operator",
                    "publish",
                    "subscribe",
                    "wait"
                ],
            "the README's cluster blocks changed: {names:?}; update this test with it"
        );
        // Every block runs as written but `install`, a release build into ~/.cargo/bin: the
        // blocks find `fleetward` on PATH, where the test puts the binary under test.
        ensure!(
            blocks["install"].trim() == "cargo install --locked --path .",
            "the install block changed: {}",
            blocks["install"]
        );
        let bin = logs.path().join("bin");
        std::fs::create_dir_all(&bin).context("make the bin directory")?;
        std::os::unix::fs::symlink(workspace::fleetward_binary()?, bin.join("fleetward"))
            .context("link fleetward into the bin directory")?;
        let mut path = std::ffi::OsString::from(&bin);
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let env = [("PATH", path)];

        // The defaults the README promises must be free, or the run means nothing.
        for port in [1883, 8080, 8081, 8082, 50051] {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!("127.0.0.1:{port} is taken; stop what listens there and run again");
            }
        }
        let pid = workspace::root().join(".fleetward/cluster/pid");
        ensure!(
            !pid.exists(),
            "{} exists: a local cluster may be running; stop it with `{} delete`",
            pid.display(),
            LocalCluster::SCRIPT
        );
        let _cluster = LocalCluster;

        succeeds("api-server", &blocks["api-server"], &env)?;
        succeeds("apply", &blocks["apply"], &env)?;
        let _operator = shell_with("operator", &blocks["operator"], &env, logs.path())?;
        let _dataplane = shell_with("dataplane", &blocks["dataplane"], &env, logs.path())?;
        wait_listening("127.0.0.1:1883".parse()?, Duration::from_secs(60))?;

        let waited = succeeds("wait", &blocks["wait"], &env)?;
        ensure!(
            waited.contains("connection.fleetward.io/dashboard-subscribes-telemetry condition met"),
            "kubectl wait said: {waited}"
        );
        ensure!(
            waited.contains("Normal") && waited.contains("Enforced"),
            "kubectl describe shows the Enforced Event: {waited}"
        );

        let mut subscriber = shell_with("subscribe", &blocks["subscribe"], &env, logs.path())?;
        let admin: SocketAddr = "127.0.0.1:8081".parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http_get(admin, "/metrics")?
            .1
            .contains("fleetward_mqtt_connections 1\n")
        {
            ensure!(Instant::now() < deadline, "the subscriber did not connect");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(500));
        succeeds("publish", &blocks["publish"], &env)?;
        subscriber
            .wait_for_line(Duration::from_secs(10), |l| {
                l.contains("m/acme/c/telemetry/status {\"temp\": 21.5}")
                    .then_some(())
            })
            .context("acme/dashboard did not print the message")?;
        Ok(())
    });
}
