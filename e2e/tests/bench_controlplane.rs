//! Control-plane benchmarks against the real control plane, one operator and two dataplanes on
//! NATS: push convergence of a new Connection to `Enforced`, revocation of a live subscription,
//! the full snapshot a new dataplane receives, and the operator's cold start, over a data set of
//! many Things and grants built once.
//!
//! A benchmark, not a timed test: every figure is printed as one `BENCH <key> <value> <unit>`
//! line on stdout and no budget fails it; what must hold (every change becomes `Enforced`,
//! deliveries stop after a revocation) is asserted. Minutes long at full size, so the CI run
//! skips it (`--skip bench_`). Run it with
//! `cargo test -p fleetward-e2e --test bench_controlplane -- --ignored --nocapture --test-threads=1`
//! (a release `FLEETWARD_BIN`, as an absolute path, for figures worth reporting), sized by
//! `FLEETWARD_BENCH_THINGS` (10,000), `FLEETWARD_BENCH_GRANTS` (100,000),
//! `FLEETWARD_BENCH_CHANGES` (100) and `FLEETWARD_BENCH_REVOCATIONS` (20).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use fleetward_e2e::fleetward::{
    Dataplane, DataplaneConfig, OPERATOR_NAMESPACE, Operator, http_get, http_status,
    start_dataplane_pair, start_operators,
};
use fleetward_e2e::policysync::{Resume, SyncClient};
use fleetward_e2e::{ControlPlane, Kubectl, LogDir, Nats, run_test, wait_every};
use fleetward_proto::pb;
use prost::Message as _;
use serde_json::{Value, json};

/// The PolicySync token the processes are started with.
const TOKEN: &str = "e2e-sync-token";
/// The tenant and its namespace.
const NS: &str = "bench";
/// `kubectl apply --server-side` processes side by side for the data set, as in the operator's
/// scale benchmark (tests/operator.rs).
const APPLY_WORKERS: usize = 4;
/// The label of the Connections the push-convergence phase creates, which its watch selects.
const PROBE_LABEL: &str = "fleetward.io/bench-probe";
/// The channel of those Connections, so each is a new grant of its Thing.
const PROBE_CHANNEL: &str = "probe";
/// The channel of the revocation phase.
const REV_CHANNEL: &str = "rev";
/// The revocation phase's Things, with the keys they bring: a publisher on dataplane A, the
/// subscriber whose grant is revoked and a control subscriber that keeps its grant, both on B.
const REV_PUBLISHER: (&str, &str) = ("rev-pub", "bench-rev-pub-key-0123456789abcdefghijklmnop");
const REV_SUBSCRIBER: (&str, &str) = ("rev-sub", "bench-rev-sub-key-0123456789abcdefghijklmnop");
const REV_CONTROL: (&str, &str) = ("rev-ctl", "bench-rev-ctl-key-0123456789abcdefghijklmnop");
/// The grant the revocation phase deletes and recreates.
const REV_GRANT: &str = "rev-sub-subscribes";
/// How often the publisher publishes.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(5);
/// How long deliveries must stay stopped after a revocation, while the publisher goes on.
const QUIET_WINDOW: Duration = Duration::from_secs(1);
/// A message this long after the dataplane dropped the subscription means deliveries did not
/// stop (what was already on its way may still arrive just after).
const STRAGGLER_SLACK: f64 = 0.25;
/// The poll interval of the phases that time something by polling.
const POLL: Duration = Duration::from_millis(10);
/// How long one change may take to become `Enforced`, or one process to become ready.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long building the data set may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(3600);
/// The operator's status writer counts as settled after this long without a write.
const SETTLED: Duration = Duration::from_secs(3);
/// `fleetward_mqtt_refusals_total` of subscriptions a new snapshot revoked, on a dataplane.
const REVOKED_SUBSCRIPTIONS: &str =
    "fleetward_mqtt_refusals_total{what=\"revoked\",reason=\"subscription\"}";

/// The size of the run, from the environment.
#[derive(Debug)]
struct Params {
    things: usize,
    grants: usize,
    changes: usize,
    revocations: usize,
}

impl Params {
    fn from_env() -> Result<Self> {
        let p = Self {
            things: env_count("FLEETWARD_BENCH_THINGS", 10_000)?,
            grants: env_count("FLEETWARD_BENCH_GRANTS", 100_000)?,
            changes: env_count("FLEETWARD_BENCH_CHANGES", 100)?,
            revocations: env_count("FLEETWARD_BENCH_REVOCATIONS", 20)?,
        };
        ensure!(
            p.things > 0 && p.changes > 0 && p.revocations > 0,
            "FLEETWARD_BENCH_THINGS, _CHANGES and _REVOCATIONS must be at least 1: {p:?}"
        );
        Ok(p)
    }

    /// Channels `ch0…`: one per grant of a Thing, so no Thing has two grants on a channel.
    fn channels(&self) -> usize {
        self.grants.div_ceil(self.things).max(1)
    }

    /// Things and grants in place, with the revocation phase's three of each.
    fn total_things(&self) -> usize {
        self.things + 3
    }

    fn total_grants(&self) -> usize {
        self.grants + 3
    }
}

fn env_count(var: &str, default: usize) -> Result<usize> {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .with_context(|| format!("{var}={v:?} is not a count")),
        Err(_) => Ok(default),
    }
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn bench_control_plane_push_revocation_snapshot_and_cold_start() {
    run_test("bench-controlplane", |logs| {
        let p = Params::from_env()?;
        let run = Instant::now();
        eprintln!("bench: {p:?}");
        let plane = ControlPlane::start(logs)?;
        let kubectl = plane.kubectl();
        plane.apply_crds()?;
        kubectl.run(&["create", "namespace", OPERATOR_NAMESPACE])?;
        kubectl.run(&["create", "namespace", NS])?;
        let nats = Nats::start(logs.path())?;
        let mut ops = start_operators(1, plane.kubeconfig(), TOKEN, logs.path())?;
        let config = DataplaneConfig {
            operators: vec![ops[0].sync_url()],
            sync_token: TOKEN.to_owned(),
            nats_url: Some(nats.url()),
        };
        let state = logs.path().join("state");
        let (a, b) = start_dataplane_pair(&state, &config, logs.path())?;

        let phase = Instant::now();
        build_data_set(&kubectl, &ops[0], &p)?;
        eprintln!("bench: data set in place after {:.1?}", phase.elapsed());
        report(
            "operator_peak_rss_setup",
            proc_status_mib(ops[0].process.pid(), "VmHWM")?,
            "MiB",
        );
        let admin = ops[0].admin_addr;
        ensure!(
            sample(admin, "fleetward_operator_dataplanes_connected")? == 2.0,
            "both dataplanes are connected to the operator, so Enforced counts both"
        );

        // With FLEETWARD_BENCH_PERF_DIR set, the operator is profiled through both phases.
        let profile = Profile::start(ops[0].process.pid(), "operator-push-and-revocation")?;
        let phase = Instant::now();
        push_convergence(&kubectl, &p, logs.path())?;
        eprintln!("bench: push convergence took {:.1?}", phase.elapsed());

        let phase = Instant::now();
        revocation(&kubectl, &a, &b, &p, logs.path())?;
        eprintln!("bench: revocation took {:.1?}", phase.elapsed());
        profile.finish()?;

        let phase = Instant::now();
        snapshot_and_full_sync(&ops[0], &config, &state, &p, logs)?;
        eprintln!("bench: snapshot and full sync took {:.1?}", phase.elapsed());

        let phase = Instant::now();
        let (sync_addr, admin_addr) = (ops[0].sync_addr, ops[0].admin_addr);
        let status = ops[0].process.stop()?;
        ensure!(
            status.success(),
            "SIGTERM ends the operator with 0: {status}"
        );
        ops.clear();
        let _op = cold_start(&plane, sync_addr, admin_addr, logs.path())?;
        eprintln!("bench: cold start took {:.1?}", phase.elapsed());
        eprintln!("bench: the whole run took {:.1?}", run.elapsed());
        Ok(())
    });
}

/// `perf record -g` of a process into `$FLEETWARD_BENCH_PERF_DIR/<name>.data`, when that
/// variable is set (scripts/bench-suite.sh reads the result); nothing otherwise.
struct Profile(Option<Child>);

impl Profile {
    fn start(pid: u32, name: &str) -> Result<Self> {
        let Ok(dir) = std::env::var("FLEETWARD_BENCH_PERF_DIR") else {
            return Ok(Self(None));
        };
        let out = Path::new(&dir).join(format!("{name}.data"));
        let child = Command::new("perf")
            .args(["record", "-F", "499", "-g", "-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record (FLEETWARD_BENCH_PERF_DIR is set)")?;
        Ok(Self(Some(child)))
    }

    /// Stops the recording (SIGINT, so perf writes its file) and waits for it.
    fn finish(mut self) -> Result<()> {
        if let Some(mut child) = self.0.take() {
            let status = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .context("signalling perf")?;
            ensure!(status.success(), "kill -INT perf: {status}");
            child.wait().context("waiting for perf")?;
        }
        Ok(())
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ----- The data set -----

fn tenant() -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": NS}, "spec": {},
    })
}

fn channel(name: &str) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Channel",
        "metadata": {"name": name, "namespace": NS}, "spec": {},
    })
}

fn thing(name: &str) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Thing",
        "metadata": {"name": name, "namespace": NS}, "spec": {},
    })
}

/// The Secret a Thing brings its own key in (the operator generates the bulk Things' keys).
fn key_secret(thing: &str, key: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{thing}-credentials"), "namespace": NS},
        "type": "Opaque", "stringData": {"key": key},
    })
}

fn connection(name: &str, thing: &str, channel: &str, actions: &[&str]) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Connection",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"subject": {"kind": "Thing", "name": thing},
                 "channel": channel, "actions": actions},
    })
}

fn stream(objects: impl IntoIterator<Item = Value>) -> String {
    objects.into_iter().map(|v| format!("{v}\n")).collect()
}

/// The tenant, the channels, and the revocation phase's Things with their keys and grants.
fn head(p: &Params) -> String {
    let mut objects = vec![tenant(), channel(PROBE_CHANNEL), channel(REV_CHANNEL)];
    objects.extend((0..p.channels()).map(|j| channel(&format!("ch{j}"))));
    for (name, key) in [REV_PUBLISHER, REV_SUBSCRIBER, REV_CONTROL] {
        objects.push(key_secret(name, key));
        objects.push(thing(name));
    }
    objects.push(connection(
        "rev-pub-publishes",
        REV_PUBLISHER.0,
        REV_CHANNEL,
        &["publish"],
    ));
    objects.push(connection(
        "rev-ctl-subscribes",
        REV_CONTROL.0,
        REV_CHANNEL,
        &["subscribe"],
    ));
    objects.push(rev_grant());
    stream(objects)
}

fn rev_grant() -> Value {
    connection(REV_GRANT, REV_SUBSCRIBER.0, REV_CHANNEL, &["subscribe"])
}

/// The bulk: Things `t<i>` and grants `g<k>` (Thing `t<k mod things>` on channel
/// `ch<k / things>`, publish, subscribe or both), one stream per apply worker, each a share of
/// the Things, every Thing followed by its grants.
fn bulk_streams(p: &Params) -> Vec<String> {
    let mut streams = vec![String::new(); APPLY_WORKERS];
    for i in 0..p.things {
        let out = &mut streams[i % APPLY_WORKERS];
        let name = format!("t{i}");
        out.push_str(&format!("{}\n", thing(&name)));
        for j in 0..p.channels() {
            let k = i + j * p.things;
            if k >= p.grants {
                break;
            }
            let actions: &[&str] = match j % 3 {
                0 => &["publish"],
                1 => &["subscribe"],
                _ => &["publish", "subscribe"],
            };
            let grant = connection(&format!("g{k}"), &name, &format!("ch{j}"), actions);
            out.push_str(&format!("{grant}\n"));
        }
    }
    streams
}

/// Applies the data set with the operator and both dataplanes running, and waits until every
/// Thing and Connection shows `Ready` and `Enforced`.
fn build_data_set(kubectl: &Kubectl, op: &Operator, p: &Params) -> Result<()> {
    let admin = op.admin_addr;
    let streams = bulk_streams(p);
    let started = Instant::now();
    kubectl.apply(&head(p))?;
    kubectl.apply_parallel(&streams)?;
    let applied = started.elapsed();
    eprintln!(
        "bench: applied {} Things and {} Connections with {APPLY_WORKERS} kubectl in {applied:.1?}",
        p.total_things(),
        p.total_grants()
    );

    // The operator's counters say when to look; a list of the objects decides. Listing
    // ~100k objects loads the API server, so it is made only once the counters are there.
    let records = 1 + (p.channels() + 2) + p.total_things() + p.total_grants();
    wait_every(
        "the operator's snapshot holds the data set",
        SETUP_TIMEOUT,
        Duration::from_secs(1),
        || {
            Ok(
                sample(admin, "fleetward_operator_snapshot_resources")? >= records as f64
                    && metric(admin, "fleetward_operator_secrets_created_total")?
                        >= p.things as f64,
            )
        },
    )?;
    let indexed = started.elapsed();
    wait_every(
        "both dataplanes applied the operator's snapshot",
        SETUP_TIMEOUT,
        Duration::from_millis(200),
        || dataplanes_synced(admin, &["dataplane-a", "dataplane-b"]),
    )?;
    settle(admin)?;
    wait_every(
        "every Thing and Connection Ready and Enforced",
        SETUP_TIMEOUT,
        Duration::from_secs(2),
        || {
            Ok(enforced_count(kubectl, "things")? == p.total_things()
                && enforced_count(kubectl, "connections")? == p.total_grants())
        },
    )?;
    let enforced = started.elapsed();
    eprintln!(
        "bench: the operator's snapshot held all {records} records {indexed:.1?} after the \
         apply began; all Ready and Enforced (listed) after {enforced:.1?}; {} status writes",
        metric(admin, "fleetward_operator_status_writes_total")?
    );
    report("setup_things", p.total_things() as f64, "count");
    report("setup_grants", p.total_grants() as f64, "count");
    report("setup_apply", applied.as_secs_f64(), "s");
    report("setup_enforced", enforced.as_secs_f64(), "s");
    Ok(())
}

/// How many `kind` objects of the namespace show `Ready` and `Enforced` true, from the API
/// server's table (the printer columns, …, Ready, Enforced, Age), not the whole objects.
fn enforced_count(kubectl: &Kubectl, kind: &str) -> Result<usize> {
    let out = kubectl.run(&["get", kind, "-n", NS, "--no-headers"])?;
    Ok(out
        .lines()
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() >= 3 && f[f.len() - 3] == "True" && f[f.len() - 2] == "True"
        })
        .count())
}

// ----- 1. Push convergence -----

/// A probe Connection's change, as the watch saw it.
struct Seen {
    /// When the event was read from the watch.
    at: Instant,
    name: String,
    /// `Enforced=True` for the object's current generation.
    enforced: bool,
}

/// A helper process (a kubectl watch, an MQTT client), killed when dropped.
struct Helper {
    name: String,
    child: Child,
}

impl Helper {
    /// Spawns `cmd` with stdout piped and stderr into `<log_dir>/<name>.log`.
    fn spawn(name: &str, mut cmd: Command, log_dir: &Path, stdin: bool) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file));
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Already gone is fine; the benchmark has what it needed from it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$KUBECTL`, else `kubectl`, as the harness's [`Kubectl`] picks it.
fn kubectl_bin() -> PathBuf {
    std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

/// One `kubectl get --watch -o json` on the probe Connections, started once before the phase:
/// each change is then seen without a kubectl start-up (tens of ms) or a poll interval in the
/// figure. What remains is the API server's watch dispatch and kubectl printing one object,
/// a few ms on loopback.
fn watch_probes(kubectl: &Kubectl, log_dir: &Path) -> Result<(Helper, Receiver<Seen>)> {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig")
        .arg(kubectl.kubeconfig())
        .args(["get", "connections", "-n", NS, "-l"])
        .arg(format!("{PROBE_LABEL}=true"))
        .args(["--watch", "-o", "json"]);
    let mut helper = Helper::spawn("kubectl-watch-probes", cmd, log_dir, false)?;
    let stdout = helper
        .child
        .stdout
        .take()
        .context("the watch's stdout is piped")?;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("probe-watch".into())
        .spawn(move || {
            let objects = serde_json::Deserializer::from_reader(BufReader::new(stdout));
            for object in objects.into_iter::<Value>() {
                let at = Instant::now();
                let Ok(object) = object else { break };
                let seen = Seen {
                    at,
                    name: object["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    enforced: enforced_now(&object),
                };
                if tx.send(seen).is_err() {
                    break;
                }
            }
        })
        .context("start the watch reader")?;
    Ok((helper, rx))
}

/// Whether an object shows `Enforced=True` for its current generation.
fn enforced_now(object: &Value) -> bool {
    let generation = &object["metadata"]["generation"];
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["type"] == "Enforced"
                && c["status"] == "True"
                && (c["observedGeneration"].is_null() || &c["observedGeneration"] == generation)
        })
}

fn probe(name: &str, thing: &str) -> Value {
    let mut grant = connection(name, thing, PROBE_CHANNEL, &["publish"]);
    grant["metadata"]["labels"] = json!({PROBE_LABEL: "true"});
    grant
}

/// Applies one probe Connection and returns (apply call, first sighting, `Enforced`), each
/// from just before the kubectl call started.
fn one_change(
    kubectl: &Kubectl,
    events: &Receiver<Seen>,
    name: &str,
    thing: &str,
) -> Result<(Duration, Duration, Duration)> {
    while events.try_recv().is_ok() {}
    let manifest = probe(name, thing).to_string();
    let started = Instant::now();
    kubectl.apply(&manifest)?;
    let applied = started.elapsed();
    let mut first_seen = None;
    loop {
        let left = (started + STEP_TIMEOUT).saturating_duration_since(Instant::now());
        let seen = events.recv_timeout(left).with_context(|| {
            format!("Connection {NS}/{name} not Enforced within {STEP_TIMEOUT:?} of its apply")
        })?;
        if seen.name != name {
            continue;
        }
        let at = seen.at.saturating_duration_since(started);
        let first = *first_seen.get_or_insert(at);
        if seen.enforced {
            return Ok((applied, first, at));
        }
    }
}

/// Phase 1: one new Connection at a time, from `kubectl apply` to `Enforced` (both dataplanes
/// applied it), through a watch.
fn push_convergence(kubectl: &Kubectl, p: &Params, log_dir: &Path) -> Result<()> {
    let (_watch, events) = watch_probes(kubectl, log_dir)?;
    // The first change also proves the watch is established; it is not counted.
    one_change(kubectl, &events, "probe-warmup", "t0")?;
    let (mut total, mut after_seen, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..p.changes {
        let thing = format!("t{}", (k + 1) % p.things);
        let (applied, first, enforced) =
            one_change(kubectl, &events, &format!("probe-{k}"), &thing)?;
        calls.push(ms(applied));
        total.push(ms(enforced));
        after_seen.push(ms(enforced - first));
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "bench: push convergence over {} changes: kubectl apply call p50 {:.1} ms; first \
         sighting of the new object to Enforced p50 {:.1} ms, p99 {:.1} ms",
        p.changes,
        percentile(&calls, 0.5),
        percentile(&after_seen, 0.5),
        percentile(&after_seen, 0.99),
    );
    report_latencies("push_convergence", &total);
    report("push_apply_call_p50", percentile(&calls, 0.5), "ms");
    report(
        "push_created_to_enforced_p50",
        percentile(&after_seen, 0.5),
        "ms",
    );
    report(
        "push_created_to_enforced_p99",
        percentile(&after_seen, 0.99),
        "ms",
    );
    Ok(())
}

// ----- 2. Revocation -----

/// Seconds since the Unix epoch, as mosquitto_sub's `%U` prints them.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn mqtt_args(cmd: &mut Command, dp: &Dataplane, (thing, key): (&str, &str), client_id: &str) {
    cmd.args(["-h", "127.0.0.1", "-p", &dp.mqtt_addr.port().to_string()])
        .args(["-V", "mqttv5", "-q", "0", "-i", client_id])
        .args(["-u", &format!("{NS}/{thing}"), "-P", key]);
}

/// A `mosquitto_sub -V mqttv5` on the revocation channel, recording when each message arrived:
/// its own receive time (`%U`), so the pipe in between adds nothing to the figure.
struct Subscriber {
    helper: Helper,
    arrivals: Arc<Mutex<Vec<f64>>>,
    reader: Option<JoinHandle<()>>,
}

impl Subscriber {
    fn start(dp: &Dataplane, thing: (&str, &str), client_id: &str, log_dir: &Path) -> Result<Self> {
        let mut cmd = Command::new("mosquitto_sub");
        mqtt_args(&mut cmd, dp, thing, client_id);
        cmd.args(["-t", &format!("m/{NS}/c/{REV_CHANNEL}/#"), "-F", "%U %p"]);
        let mut helper = Helper::spawn(client_id, cmd, log_dir, false)?;
        let stdout = helper
            .child
            .stdout
            .take()
            .context("mosquitto_sub's stdout is piped")?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let sink = arrivals.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.split_whitespace().next().and_then(|t| t.parse().ok()) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(at);
                }
            }
        });
        Ok(Self {
            helper,
            arrivals,
            reader: Some(reader),
        })
    }

    fn arrivals(&self) -> Vec<f64> {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends the client and returns every arrival.
    fn stop(mut self) -> Vec<f64> {
        let _ = self.helper.child.kill();
        let _ = self.helper.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.arrivals()
    }
}

/// `mosquitto_pub -l` fed a line every [`PUBLISH_INTERVAL`]: a steady stream from one session.
struct Publisher {
    helper: Helper,
    stop: Arc<AtomicBool>,
    feeder: Option<JoinHandle<Result<u64>>>,
}

impl Publisher {
    fn start(dp: &Dataplane, log_dir: &Path) -> Result<Self> {
        let mut cmd = Command::new("mosquitto_pub");
        mqtt_args(&mut cmd, dp, REV_PUBLISHER, "rev-publisher");
        cmd.args(["-t", &format!("m/{NS}/c/{REV_CHANNEL}/x"), "-l"]);
        let mut helper = Helper::spawn("rev-publisher", cmd, log_dir, true)?;
        let mut stdin = helper
            .child
            .stdin
            .take()
            .context("mosquitto_pub's stdin is piped")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let feeder = thread::spawn(move || -> Result<u64> {
            let mut sent = 0;
            let mut next = Instant::now();
            while !stopping.load(Ordering::Relaxed) {
                writeln!(stdin, "{sent}").context("feed mosquitto_pub")?;
                sent += 1;
                next += PUBLISH_INTERVAL;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(sent)
        });
        Ok(Self {
            helper,
            stop,
            feeder: Some(feeder),
        })
    }

    fn check(&mut self) -> Result<()> {
        ensure!(
            self.helper.running(),
            "{} exited; see its log",
            self.helper.name
        );
        Ok(())
    }

    /// Stops feeding it; how many lines it was fed.
    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.feeder.take().map(JoinHandle::join) {
            Some(Ok(sent)) => sent,
            Some(Err(_)) => bail!("the publisher's feeder panicked"),
            None => Ok(0),
        }
    }
}

/// Phase 2: a subscriber on dataplane B receives what a publisher on dataplane A publishes
/// every 5 ms (over NATS); its grant is deleted; timed from the start of `kubectl delete` to
/// the last message it receives. A control subscriber on B keeps its grant, to show the
/// publisher went on meanwhile.
fn revocation(
    kubectl: &Kubectl,
    a: &Dataplane,
    b: &Dataplane,
    p: &Params,
    log_dir: &Path,
) -> Result<()> {
    let control = Subscriber::start(b, REV_CONTROL, "rev-control", log_dir)?;
    let mut publisher = Publisher::start(a, log_dir)?;
    wait_every(
        "the control subscriber on B receives from A",
        STEP_TIMEOUT,
        POLL,
        || Ok(control.arrivals().len() >= 20),
    )?;
    let mut figures = Vec::new();
    for round in 0..p.revocations {
        if round > 0 {
            kubectl.apply(&rev_grant().to_string())?;
            kubectl.run(&[
                "wait",
                &format!("connection/{REV_GRANT}"),
                "-n",
                NS,
                "--for=condition=Enforced",
                "--timeout=120s",
            ])?;
        }
        let mut sub = Subscriber::start(b, REV_SUBSCRIBER, &format!("rev-sub-{round}"), log_dir)?;
        wait_every(
            "the subscriber receives before its revocation",
            STEP_TIMEOUT,
            POLL,
            || Ok(sub.arrivals().len() >= 20),
        )?;
        let revoked_before = sample(b.admin_addr, REVOKED_SUBSCRIPTIONS)?;
        let deleted_at = unix_now();
        kubectl.run(&["delete", "connection", REV_GRANT, "-n", NS])?;
        wait_every(
            "dataplane-b drops the revoked subscription",
            STEP_TIMEOUT,
            POLL,
            || {
                Ok(
                    sample(b.admin_addr, REVOKED_SUBSCRIPTIONS)? > revoked_before
                        || !sub.helper.running(),
                )
            },
        )?;
        let dropped_at = unix_now();
        thread::sleep(QUIET_WINDOW);
        publisher.check()?;
        let arrivals = sub.stop();
        let last = arrivals.iter().copied().fold(f64::MIN, f64::max);
        let late = arrivals
            .iter()
            .filter(|&&t| t > dropped_at + STRAGGLER_SLACK)
            .count();
        ensure!(
            late == 0,
            "round {round}: {late} messages arrived more than {STRAGGLER_SLACK} s after \
             dataplane-b dropped the subscription: deliveries did not stop"
        );
        let control_after = control
            .arrivals()
            .iter()
            .filter(|&&t| t > dropped_at + STRAGGLER_SLACK)
            .count();
        ensure!(
            control_after > 0,
            "round {round}: the control subscriber received nothing after the revocation, so \
             the publisher had stopped and the revocation shows nothing"
        );
        let took = (last - deleted_at).max(0.0) * 1000.0;
        eprintln!(
            "bench: revocation {round}: last message {took:.1} ms after the delete began; \
             subscription dropped (seen on the metric) after {:.1} ms; {} messages before",
            (dropped_at - deleted_at) * 1000.0,
            arrivals.len()
        );
        figures.push(took);
    }
    let sent = publisher.stop()?;
    let control = control.stop();
    eprintln!(
        "bench: the publisher sent {sent} messages, the control subscriber received {}",
        control.len()
    );
    report_latencies("revocation", &figures);
    Ok(())
}

// ----- 4. Snapshot size and full sync -----

/// Phase 4: the full snapshot a new dataplane receives (the PolicySync test client: its
/// encoded size and the time from connect to received), then a third dataplane process from
/// spawn to ready (snapshot applied), and the status writes a new dataplane causes.
fn snapshot_and_full_sync(
    op: &Operator,
    config: &DataplaneConfig,
    state: &Path,
    p: &Params,
    logs: &LogDir,
) -> Result<()> {
    let admin = op.admin_addr;
    let writes_before = metric(admin, "fleetward_operator_status_writes_total")?;
    let started = Instant::now();
    let mut client = SyncClient::connect(&op.sync_url(), TOKEN, "bench-client", Resume::default())?;
    let update = client.next_update(STEP_TIMEOUT)?;
    let received = started.elapsed();
    client.ack(&update)?;
    client.disconnect();
    let Some(pb::update::Payload::Snapshot(snapshot)) = &update.payload else {
        bail!("a new client's first update is a full snapshot");
    };
    ensure!(
        snapshot.things.len() >= p.total_things() && snapshot.grants.len() >= p.total_grants(),
        "the full snapshot holds the data set: {} things, {} grants",
        snapshot.things.len(),
        snapshot.grants.len()
    );
    report("snapshot_bytes", update.encoded_len() as f64, "bytes");
    report("full_sync_client", ms(received), "ms");

    let started = Instant::now();
    let mut c = Dataplane::launch(
        "dataplane-c",
        &state.join("dataplane-c"),
        config.clone(),
        logs.path(),
    )?;
    wait_every("dataplane-c ready", STEP_TIMEOUT, POLL, || {
        ensure!(c.process.is_running(), "dataplane-c exited; see its log");
        Ok(http_status(c.admin_addr, "/readyz").is_ok_and(|s| s == 200))
    })?;
    report("full_sync", ms(started.elapsed()), "ms");
    c.process.stop()?;
    drop(c);

    let (writes, settled) = settle(admin)?;
    eprintln!(
        "bench: the new client and dataplane-c caused {} status writes; the writer settled \
         {settled:.1?} after",
        writes - writes_before
    );
    report("full_sync_status_writes", writes - writes_before, "count");
    Ok(())
}

// ----- 3. Operator cold start -----

/// Phase 3: a fresh operator on the stopped one's listeners, with the data set in place: from
/// spawn to `/readyz`, to the first full snapshot a client receives, to both dataplanes
/// re-synced; its status writes until settled; its peak and settled RSS.
fn cold_start(
    plane: &ControlPlane,
    sync_addr: SocketAddr,
    admin_addr: SocketAddr,
    log_dir: &Path,
) -> Result<Operator> {
    let spawned = Instant::now();
    let mut op = Operator::launch(
        "operator-1",
        plane.kubeconfig(),
        TOKEN,
        log_dir,
        sync_addr,
        admin_addr,
    )?;
    let url = op.sync_url();
    let first_snapshot = thread::spawn(move || -> Result<Duration> {
        let deadline = spawned + STEP_TIMEOUT;
        let mut client = loop {
            match SyncClient::connect(&url, TOKEN, "bench-cold-client", Resume::default()) {
                Ok(client) => break client,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => thread::sleep(POLL),
            }
        };
        let update = client.next_update(deadline.saturating_duration_since(Instant::now()))?;
        let at = spawned.elapsed();
        ensure!(
            matches!(update.payload, Some(pb::update::Payload::Snapshot(_))),
            "the first update after a cold start is a full snapshot"
        );
        client.ack(&update)?;
        Ok(at)
    });
    wait_every("the new operator ready", STEP_TIMEOUT, POLL, || {
        ensure!(
            op.process.is_running(),
            "the new operator exited; see its log"
        );
        Ok(http_status(admin_addr, "/readyz").is_ok_and(|s| s == 200))
    })?;
    let ready = spawned.elapsed();
    let first = first_snapshot
        .join()
        .map_err(|_| anyhow::anyhow!("the cold-start client panicked"))??;
    wait_every(
        "dataplane-a and dataplane-b re-synced",
        STEP_TIMEOUT,
        Duration::from_millis(50),
        || dataplanes_synced(admin_addr, &["dataplane-a", "dataplane-b"]),
    )?;
    let resynced = spawned.elapsed();
    let (writes, settled) = settle(admin_addr)?;
    let pid = op.process.pid();
    eprintln!(
        "bench: cold start: ready {ready:.1?}, first snapshot {first:.1?}, both dataplanes \
         re-synced {resynced:.1?} after spawn; {writes} status writes, settled {settled:.1?} \
         after"
    );
    report("operator_cold_start_ready", ms(ready), "ms");
    report("operator_cold_start_first_snapshot", ms(first), "ms");
    report("operator_cold_start_dataplanes_synced", ms(resynced), "ms");
    report("operator_cold_start_status_writes", writes, "count");
    report("operator_peak_rss", proc_status_mib(pid, "VmHWM")?, "MiB");
    report("operator_rss_after", proc_status_mib(pid, "VmRSS")?, "MiB");
    Ok(op)
}

// ----- Metrics, polling and figures -----

/// The value of the sample `series` (name and labels, as exposed) on `/metrics`; 0 when absent.
fn sample(addr: SocketAddr, series: &str) -> Result<f64> {
    let (_, text) = http_get(addr, "/metrics")?;
    Ok(series_in(&text, series))
}

fn series_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every sample of metric `name` (all label sets); 0 when absent.
fn metric(addr: SocketAddr, name: &str) -> Result<f64> {
    let (_, text) = http_get(addr, "/metrics")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v))
}

/// Whether each of `nodes` is connected to the operator and has applied its snapshot version.
fn dataplanes_synced(admin: SocketAddr, nodes: &[&str]) -> Result<bool> {
    let (_, text) = http_get(admin, "/metrics")?;
    let version = series_in(&text, "fleetward_operator_snapshot_version");
    Ok(version > 0.0
        && nodes.iter().all(|node| {
            series_in(
                &text,
                &format!("fleetward_operator_dataplane_applied_version{{node=\"{node}\"}}"),
            ) >= version
        }))
}

/// Waits until the operator's status writer has written nothing for [`SETTLED`]; returns its
/// accepted status writes and how long it took to settle.
fn settle(admin: SocketAddr) -> Result<(f64, Duration)> {
    let started = Instant::now();
    let mut last = metric(admin, "fleetward_operator_status_writes_total")?;
    let mut since = Instant::now();
    while since.elapsed() < SETTLED {
        if started.elapsed() > SETUP_TIMEOUT {
            bail!("the status writer did not settle within {SETUP_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(500));
        let now = metric(admin, "fleetward_operator_status_writes_total")?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    Ok((last, since.saturating_duration_since(started)))
}

/// A line of `/proc/<pid>/status` in kB (`VmHWM`, `VmRSS`), in MiB.
fn proc_status_mib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank `q` quantile of `samples` (0 when empty).
fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or(0.0)
}

/// `<key>_p50`, `<key>_p99` and `<key>_max`, in ms.
fn report_latencies(key: &str, samples_ms: &[f64]) {
    report(&format!("{key}_p50"), percentile(samples_ms, 0.5), "ms");
    report(&format!("{key}_p99"), percentile(samples_ms, 0.99), "ms");
    report(&format!("{key}_max"), percentile(samples_ms, 1.0), "ms");
}

/// One machine-readable figure on stdout: `BENCH <key> <value> <unit>`.
fn report(key: &str, value: f64, unit: &str) {
    match unit {
        "count" | "bytes" => println!("BENCH {key} {value:.0} {unit}"),
        _ => println!("BENCH {key} {value:.1} {unit}"),
    }
}
