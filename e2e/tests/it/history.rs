//! Message history on a real API server: a dataplane on `nats-server -js` hands the
//! messages of `examples/acme.yaml`'s telemetry channel (`spec.history`) to the JetStream
//! stream, `fleetward writer` stores them in PostgreSQL (scripts/postgres.sh) and writes what
//! the channel holds into its `status.history` by server-side apply; deleting the Channel
//! deletes its messages at the writer's next sweep.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleetward_e2e::fleetward::{DataplaneConfig, OPERATOR_NAMESPACE, start_operators};
use fleetward_e2e::nats::Nats;
use fleetward_e2e::ports::free_port;
use fleetward_e2e::process::Process;
use fleetward_e2e::workspace::{examples_dir, fleetward_binary};
use fleetward_e2e::{ControlPlane, run_test, wait_until};

const TOKEN: &str = "e2e-sync-token";
const SETTLE: Duration = Duration::from_secs(60);
/// acme/sensor-1's key, from examples/acme.yaml.
const SENSOR_KEY: &str = "p5OR2zf95euo-SDM6r3HQBkSsWKpSI1eT71WQ5jOhP8";

/// A database of this test's own on the PostgreSQL of scripts/postgres.sh.
fn database() -> Result<String> {
    let url = std::env::var("FLEETWARD_POSTGRES_URL")
        .context("FLEETWARD_POSTGRES_URL: run scripts/postgres.sh (scripts/test.sh does)")?;
    let name = format!("e2e_history_{}", std::process::id());
    let out = Command::new("psql")
        .args([url.as_str(), "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .context("run psql")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

fn count(db: &str) -> Result<u64> {
    let out = Command::new("psql")
        .args([db, "-At", "-c"])
        .arg("SELECT count(*) FROM messages WHERE tenant = 'acme' AND channel = 'telemetry'")
        .output()
        .context("run psql")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("psql: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_channels_history_is_stored_counted_in_its_status_and_deleted_with_it() {
    run_test("history", |logs| {
        let plane = ControlPlane::start(logs)?;
        let kubectl = plane.kubectl();
        plane.apply_crds()?;
        kubectl.run(&["create", "namespace", OPERATOR_NAMESPACE])?;
        kubectl.apply(&std::fs::read_to_string(examples_dir().join("acme.yaml"))?)?;
        let nats = Nats::start_jetstream(logs.path())?;
        let db = database()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut writer = Command::new(fleetward_binary()?);
        writer
            .env("KUBECONFIG", plane.kubeconfig())
            .args(["writer", "--nats", &nats.url(), "--postgres-url", &db])
            .arg(format!("--metrics-listen={metrics}"))
            .args(["--maintenance-every", "2s"]);
        let _writer = Process::spawn("writer", writer, logs.path())?;
        let ops = start_operators(1, plane.kubeconfig(), TOKEN, logs.path())?;
        let config = DataplaneConfig {
            operators: vec![ops[0].sync_url()],
            sync_token: TOKEN.to_owned(),
            nats_url: Some(nats.url()),
        };
        let dp = fleetward_e2e::fleetward::Dataplane::start(
            "dataplane-h",
            &logs.path().join("state"),
            config,
            logs.path(),
        )?;
        for i in 0..5 {
            let out = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &dp.mqtt_addr.port().to_string()])
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
                .args(["-t", "m/acme/c/telemetry/room1", "-m", &format!("t-{i}")])
                .output()
                .context("run mosquitto_pub")?;
            ensure!(out.status.success(), "{out:?}");
        }
        wait_until("the five messages stored", SETTLE, || Ok(count(&db)? == 5))?;
        wait_until("the Channel's status.history counts them", SETTLE, || {
            let v = kubectl.get_json(&["channel", "telemetry", "-n", "acme"])?;
            Ok(v["status"]["history"]["messages"] == 5)
        })?;
        let v = kubectl.get_json(&[
            "channel",
            "telemetry",
            "-n",
            "acme",
            "--show-managed-fields",
        ])?;
        let managers = v["metadata"]["managedFields"].to_string();
        ensure!(managers.contains("fleetward-writer"), "{managers}");

        kubectl.run(&["delete", "channel", "telemetry", "-n", "acme"])?;
        wait_until("the deleted channel's messages swept", SETTLE, || {
            Ok(count(&db)? == 0)
        })?;
        Ok(())
    });
}
