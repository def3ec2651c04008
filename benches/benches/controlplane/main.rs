//! Control-plane benchmarks against the real control plane, one operator and two dataplanes on
//! NATS: push convergence of a new Connection to `Enforced`, revocation of a live subscription,
//! the full snapshot a new dataplane receives, and the operator's cold start, over a data set of
//! many Things and grants. Push convergence is measured twice in one run, after a tenth of the
//! data set and after all of it, and the ratio of the two p50s printed: the cost of one change
//! should not grow with the namespace (issue 19).
//!
//! A benchmark, not a timed test: every figure is printed as one `BENCH <key> <value> <unit>`
//! line on stdout and no budget fails it; what must hold (every change becomes `Enforced`,
//! deliveries stop after a revocation) is asserted. Minutes long at full size, so the CI run
//! runs it only at tiny sizes (`scripts/bench-suite.sh --smoke`). Run it with
//! `cargo bench -p fleetward-bench --profile dev --bench controlplane` (a release
//! `FLEETWARD_BIN`, as an absolute path, for figures worth reporting), sized by
//! `FLEETWARD_BENCH_THINGS` (10,000), `FLEETWARD_BENCH_GRANTS` (100,000),
//! `FLEETWARD_BENCH_CHANGES` (100) and `FLEETWARD_BENCH_REVOCATIONS` (20).
//! `FLEETWARD_BENCH_NAMESPACES` (1) spreads the Things and grants over that many tenants, each
//! owning its namespace (`bench`, `bench-1`, …, the same names in each); the probes and the
//! revocation phase stay in `bench`. `FLEETWARD_BENCH_APPLY_SECONDS` (none) makes the sizes an
//! upper bound: after the first tenth the bulk is applied a tenth at a time, and no tenth starts
//! once the apply has taken that long; the `setup_*` figures say what was applied.
//! `FLEETWARD_BENCH_HOLD=<file>` keeps the control plane (with the data set) and NATS up after
//! the run, to study the operator by hand against it: the run writes the kubeconfig's path
//! into that file and waits until the file is removed.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use fleetward_e2e::fleetward::{
    Dataplane, DataplaneConfig, OPERATOR_NAMESPACE, Operator, Release, http_get, http_status,
    start_dataplane_pair, start_operators,
};
use fleetward_e2e::policysync::{Resume, SyncClient};
use fleetward_e2e::ports::{free_ports, loopback};
use fleetward_e2e::{ControlPlane, Kubectl, LogDir, Nats, run_test, wait_every};
use fleetward_proto::pb;

mod data_set;
mod figures;
mod push;
mod revocation;
mod startup;

use data_set::*;
use figures::*;
use prost::Message as _;
use push::*;
use revocation::*;
use serde_json::{Value, json};
use startup::*;

/// The PolicySync token the processes are started with.
const TOKEN: &str = "e2e-sync-token";
/// The first tenant and its namespace, where the push and revocation phases run; further
/// tenants are `bench-1` … (see [`namespace`]).
const NS: &str = "bench";
/// `kubectl apply --server-side` processes side by side for the data set, as in the operator's
/// scale benchmark (e2e/tests/it/operator.rs).
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
    namespaces: usize,
    /// How long the bulk apply may take: no further tenth of the data set starts after it.
    apply_budget: Option<Duration>,
}

impl Params {
    fn from_env() -> Result<Self> {
        let p = Self {
            things: env_count("FLEETWARD_BENCH_THINGS", 10_000)?,
            grants: env_count("FLEETWARD_BENCH_GRANTS", 100_000)?,
            changes: env_count("FLEETWARD_BENCH_CHANGES", 100)?,
            revocations: env_count("FLEETWARD_BENCH_REVOCATIONS", 20)?,
            namespaces: env_count("FLEETWARD_BENCH_NAMESPACES", 1)?,
            apply_budget: match std::env::var_os("FLEETWARD_BENCH_APPLY_SECONDS") {
                Some(_) => Some(Duration::from_secs(
                    env_count("FLEETWARD_BENCH_APPLY_SECONDS", 0)? as u64,
                )),
                None => None,
            },
        };
        ensure!(
            p.things > 0 && p.changes > 0 && p.revocations > 0 && p.namespaces > 0,
            "FLEETWARD_BENCH_THINGS, _CHANGES, _REVOCATIONS and _NAMESPACES must be at least 1: \
             {p:?}"
        );
        Ok(p)
    }

    /// The bulk Things `t0…` of each namespace: the data set's Things spread over them.
    fn things_per_namespace(&self) -> usize {
        self.things.div_ceil(self.namespaces)
    }

    /// The bulk grants `g0…` of each namespace.
    fn grants_per_namespace(&self) -> usize {
        self.grants.div_ceil(self.namespaces)
    }

    /// Channels `ch0…`: one per grant of a Thing, so no Thing has two grants on a channel.
    fn channels(&self) -> usize {
        self.grants_per_namespace()
            .div_ceil(self.things_per_namespace())
            .max(1)
    }

    /// The grants of bulk Thing `t<i>` of a namespace, as (`k` of `g<k>`, `j` of `ch<j>`):
    /// grant `k` is Thing `k mod things` on channel `k / things`.
    fn grants_of(&self, i: usize) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (things, grants) = (self.things_per_namespace(), self.grants_per_namespace());
        (0..self.channels())
            .map(move |j| (i + j * things, j))
            .take_while(move |&(k, _)| k < grants)
    }

    /// The bulk Things per namespace in place for the first push phase: a tenth of them.
    fn small_things(&self) -> usize {
        (self.things_per_namespace() / 10).max(1)
    }
}

/// Namespace `n` of the run, which a Tenant of the same name owns: [`NS`], then `bench-<n>`.
fn namespace(n: usize) -> String {
    if n == 0 {
        NS.to_owned()
    } else {
        format!("{NS}-{n}")
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

/// The run, in order; `run_test` panics on a failed step (exit status 101), keeping the logs.
fn main() {
    run_test("bench-controlplane", |logs| {
        let p = Params::from_env()?;
        let run = Instant::now();
        eprintln!("bench: {p:?}");
        let plane = ControlPlane::start(logs)?;
        let kubectl = plane.kubectl();
        plane.apply_crds()?;
        kubectl.run(&["create", "namespace", OPERATOR_NAMESPACE])?;
        let nats = Nats::start(logs.path())?;
        let mut ops = start_operators(1, plane.kubeconfig(), TOKEN, logs.path())?;
        let config = DataplaneConfig {
            operators: vec![ops[0].sync_url()],
            sync_token: TOKEN.to_owned(),
            nats_url: Some(nats.url()),
        };
        let state = logs.path().join("state");
        let (a, b) = start_dataplane_pair(&state, &config, logs.path())?;

        // With FLEETWARD_BENCH_PERF_DIR set, the operator is profiled through the second push
        // phase and the revocation phase.
        let (profile, in_place) = data_set_and_push(&kubectl, &ops[0], &p, logs.path())?;

        let phase = Instant::now();
        revocation(&kubectl, &a, &b, &p, logs.path())?;
        eprintln!("bench: revocation took {:.1?}", phase.elapsed());
        profile.finish()?;

        let phase = Instant::now();
        snapshot_and_full_sync(&ops[0], &config, &state, &p, in_place, logs)?;
        eprintln!("bench: snapshot and full sync took {:.1?}", phase.elapsed());

        let phase = Instant::now();
        let (sync_addr, admin_addr) = (ops[0].sync_addr, ops[0].admin_addr);
        let status = ops[0].process.stop()?;
        ensure!(
            status.success(),
            "SIGTERM ends the operator with 0: {status}"
        );
        ops.clear();
        let mut op = cold_start(&plane, sync_addr, admin_addr, logs.path())?;
        eprintln!("bench: cold start took {:.1?}", phase.elapsed());

        let phase = Instant::now();
        let status = op.process.stop()?;
        ensure!(
            status.success(),
            "SIGTERM ends the operator with 0: {status}"
        );
        let op = warm_start(&plane, &op, logs.path())?;
        eprintln!(
            "bench: restart with the saved state took {:.1?}",
            phase.elapsed()
        );

        let phase = Instant::now();
        let seeded = seeded_start(&plane, &op, logs.path())?;
        eprintln!(
            "bench: a new replica seeded from a running one took {:.1?}",
            phase.elapsed()
        );
        eprintln!("bench: the whole run took {:.1?}", run.elapsed());
        drop((seeded, op, a, b));
        hold(&plane)
    });
}

/// With `FLEETWARD_BENCH_HOLD=<file>` set: writes the control plane's kubeconfig path into the
/// file and waits until the file is removed, the control plane and NATS still running.
fn hold(plane: &ControlPlane) -> Result<()> {
    let Some(file) = std::env::var_os("FLEETWARD_BENCH_HOLD").map(PathBuf::from) else {
        return Ok(());
    };
    std::fs::write(&file, format!("{}\n", plane.kubeconfig().display()))
        .with_context(|| format!("write {}", file.display()))?;
    eprintln!(
        "bench: holding the control plane; its kubeconfig is in {}, remove that file to end",
        file.display()
    );
    while file.exists() {
        thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// The data set in two steps, each followed by the push-convergence phase: a tenth of it
/// (the `_small` figures), then the rest; prints the setup figures of the whole and the ratio
/// of the two p50s. Returns the operator's profile, started before the second push phase, and
/// the data set in place.
fn data_set_and_push(
    kubectl: &Kubectl,
    op: &Operator,
    p: &Params,
    log_dir: &Path,
) -> Result<(Profile, InPlace)> {
    let small = InPlace {
        things: p.small_things(),
        probes: 0,
    };
    let (small, first) = grow(kubectl, op, p, InPlace::default(), small, None)?;
    ensure!(
        sample(op.admin_addr, "fleetward_operator_dataplanes_connected")? == 2.0,
        "both dataplanes are connected to the operator, so Enforced counts both"
    );
    let phase = Instant::now();
    let p50_small = push_convergence(kubectl, p, &PushStage::small(small), log_dir)?;
    eprintln!(
        "bench: push convergence (small) took {:.1?}",
        phase.elapsed()
    );

    let probed = InPlace {
        probes: p.changes + 1,
        ..small
    };
    let target = InPlace {
        things: p.things_per_namespace(),
        ..probed
    };
    let budget = p.apply_budget.map(|b| b.saturating_sub(first.applied));
    let (grown, rest) = grow(kubectl, op, p, probed, target, budget)?;
    report_setup(p, grown, first, rest);
    report(
        "operator_peak_rss_setup",
        proc_status_mib(op.process.pid(), "VmHWM")?,
        "MiB",
    );

    let profile = Profile::start(op.process.pid(), "operator-push-and-revocation")?;
    let phase = Instant::now();
    let p50 = push_convergence(kubectl, p, &PushStage::full(small, grown), log_dir)?;
    eprintln!("bench: push convergence took {:.1?}", phase.elapsed());
    report("push_convergence_ratio_p50", p50 / p50_small, "ratio");
    Ok((profile, grown))
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
