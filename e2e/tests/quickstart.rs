//! The README's quick start, run verbatim: its blocks are taken from README.md by their
//! `quickstart=<name>` marks, so the commands a newcomer copies cannot drift from what works.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fleetward_e2e::fleetward::http_get;
use fleetward_e2e::process::Process;
use fleetward_e2e::{run_test, workspace};

/// The fenced blocks of the README marked `quickstart=<name>`, by name.
fn quickstart_blocks() -> Result<BTreeMap<String, String>> {
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
            .find_map(|w| w.strip_prefix("quickstart="))
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

/// A block run by bash in the workspace root, its stdout line-buffered (for mosquitto_sub).
fn shell(name: &str, script: &str, logs: &std::path::Path) -> Result<Process> {
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "bash", "-c", script])
        .current_dir(workspace::root())
        .env("RUST_LOG", "info");
    Process::spawn(name, cmd, logs)
}

/// Runs a block to completion with bash in the workspace root.
fn run_block(name: &str, script: &str) -> Result<Output> {
    Command::new("bash")
        .args(["-c", script])
        .current_dir(workspace::root())
        .output()
        .with_context(|| format!("run the {name} block"))
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
        // The defaults the README promises must be free, or the run means nothing.
        for port in [1883, 8080, 8081] {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!("127.0.0.1:{port} is taken; stop what listens there and run again");
            }
        }
        // Warm the release build, so the verbatim `cargo run --release` starts in seconds.
        let status = Command::new("cargo")
            .args(["build", "--release", "--bin", "fleetward"])
            .current_dir(workspace::root())
            .status()
            .context("cargo build --release")?;
        ensure!(status.success(), "cargo build --release failed: {status}");

        let mut start = shell("start", &blocks["start"], logs.path())?;
        let mqtt: SocketAddr = "127.0.0.1:1883".parse()?;
        let http: SocketAddr = "127.0.0.1:8080".parse()?;
        let admin: SocketAddr = "127.0.0.1:8081".parse()?;
        wait_listening(mqtt, Duration::from_secs(120))?;
        wait_listening(http, Duration::from_secs(10))?;

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

        let publish = run_block("publish", &blocks["publish"])?;
        let curl = String::from_utf8_lossy(&publish.stdout);
        ensure!(
            publish.status.success() && curl.contains("202"),
            "the publish block failed ({}): {curl}{}",
            publish.status,
            String::from_utf8_lossy(&publish.stderr)
        );

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
