//! Probe: what one policy delta costs a dataplane with 10,000 MQTT sessions connected (issue
//! 19). Each session is a thing of one tenant subscribed to its own filter under its own grant.
//! Each round revokes one thing's grant with a one-grant delta, taken as the PolicySync client
//! takes it (decoded from protobuf, applied to a copy of the snapshot, engines attached,
//! published), and measures:
//! - apply: from the encoded delta to the snapshot published (which notifies its followers);
//! - revoked: from the encoded delta to the affected session's subscription revoked (its
//!   re-check done);
//! - CPU: the process's CPU time in the 100 ms from the delta on (every re-check it caused);
//! - re-checks: the sessions the delta woke (`fleetward_policy_rechecks_last`).
//!
//! Run: `cargo run --release -p fleetward-dataplane --example delta_rechecks -- 10000 300`
//! (sessions, rounds). The last line, `SUMMARY key=value …`, is what the benchmark suite
//! reads. The clients live in a child process, so each side stays under the open-files limit.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_dataplane::sync::engines;
use fleetward_dataplane::{Dataplane, MqttConfig, RunningDataplane, raise_open_files_limit};
use fleetward_policy::{
    Actions, Channel, Delta, Grant, GrantSubject, KeyDigest, Qos, ResourceName, Resources,
    Snapshot, Tenant, Thing,
};
use fleetward_proto::convert::{delta_from_proto, delta_to_proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The allocator the fleetward binary runs on, so the figure is the binary's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn key(i: usize) -> String {
    format!("probe-key-{i:06}-0123456789")
}

fn policy(n: usize) -> Snapshot {
    let mut r = Resources {
        tenants: vec![Tenant::named("acme")],
        channels: vec![Channel {
            history_retention_secs: Default::default(),
            uid: String::new(),
            tenant: "acme".into(),
            name: "telemetry".into(),
            max_qos: Qos::AtLeastOnce,
            retained_allowed: true,
            delivery_metadata: false,
            max_message_size: None,
        }],
        ..Resources::default()
    };
    for i in 0..n {
        r.things.push(Thing {
            x509: Default::default(),
            credential_mode: Default::default(),
            attributes: Default::default(),
            tenant: "acme".into(),
            name: format!("d{i}"),
            key_digests: vec![KeyDigest::of(key(i).as_bytes())],
            disabled: false,
            mountpoint: None,
            max_connections: None,
        });
        r.grants.push(Grant {
            tenant: "acme".into(),
            name: format!("d{i}"),
            subject: GrantSubject::Thing(format!("d{i}")),
            channel: "telemetry".into(),
            actions: Actions::BOTH,
            allow: vec![format!("d{i}/#").parse().expect("a valid pattern")],
            deny: vec![],
        });
    }
    Snapshot::from_resources(1, r).expect("valid policy")
}

fn mqtt_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend(body);
    out
}

/// The child: `n` sessions, each connected and subscribed; "ready" once all are; then holds
/// them until its standard input closes.
async fn clients(port: u16, n: usize) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await?;
        let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 0];
        mqtt_str(&mut connect, &format!("c{i}"));
        mqtt_str(&mut connect, &format!("acme/d{i}"));
        mqtt_str(&mut connect, &key(i));
        s.write_all(&packet(0x10, connect)).await?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await?;
        anyhow::ensure!(ack == [0x20, 2, 0, 0], "CONNACK {ack:?}");
        let mut subscribe = vec![0, 1];
        mqtt_str(&mut subscribe, &format!("m/acme/c/telemetry/d{i}/#"));
        subscribe.push(1);
        s.write_all(&packet(0x82, subscribe)).await?;
        let mut suback = [0u8; 5];
        s.read_exact(&mut suback).await?;
        anyhow::ensure!(suback[4] == 1, "SUBACK {suback:?}");
        conns.push(s);
    }
    println!("ready");
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    })
    .await?;
    drop(conns);
    Ok(())
}

/// CPU time of every thread of this process so far.
fn cpu_time() -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
        let Ok(task) = task else { continue };
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(ns)
}

/// The sessions the last delta woke to re-check (-1 where the dataplane does not count them:
/// before issue 19, every session re-checked on every snapshot).
fn rechecks_last(dp: &RunningDataplane) -> i64 {
    dp.metrics().policy_rechecks().1
}

struct Round {
    apply: Duration,
    revoked: Duration,
    cpu: Duration,
    rechecks: i64,
}

/// Revokes thing `i`'s grant with a one-grant delta; what it cost.
fn round(tx: &watch::Sender<Arc<Snapshot>>, dp: &RunningDataplane, i: usize) -> Round {
    let version = tx.borrow().version();
    let delta = Delta {
        from_version: version,
        to_version: version + 1,
        grants: fleetward_policy::Changes {
            upserts: vec![],
            removals: vec![ResourceName::new("acme", format!("d{i}"))],
        },
        ..Delta::default()
    };
    let wire = delta_to_proto(&delta);
    let revoked_before = dp.metrics().refusals("revoked", "subscription");
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let delta = delta_from_proto(wire).expect("decodes");
    let mut next = Snapshot::clone(&tx.borrow());
    next.apply(&delta).expect("applies");
    tx.send_replace(Arc::new(engines::attach(next)));
    let apply = t0.elapsed();
    while dp.metrics().refusals("revoked", "subscription") == revoked_before {
        assert!(t0.elapsed() < Duration::from_secs(10), "never revoked");
        std::thread::sleep(Duration::from_micros(20));
    }
    let revoked = t0.elapsed();
    std::thread::sleep(Duration::from_millis(100).saturating_sub(t0.elapsed()));
    let cpu = cpu_time().saturating_sub(cpu0);
    let rechecks = rechecks_last(dp);
    Round {
        apply,
        revoked,
        cpu,
        rechecks,
    }
}

/// p50, p99 and max of `v`, in milliseconds.
fn percentiles(mut v: Vec<Duration>) -> [f64; 3] {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    [0.50, 0.99, 1.0].map(|p| at(p).as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    raise_open_files_limit();
    if args.get(1).map(String::as_str) == Some("clients") {
        return clients(args[2].parse()?, args[3].parse()?).await;
    }
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(300);
    let (tx, rx) = watch::channel(Arc::new(policy(n)));
    let dp = Dataplane::new(rx)
        .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .mqtt_config(MqttConfig {
            max_connections: n + 100,
            ..MqttConfig::default()
        })
        .start()
        .await?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["clients", &dp.mqtt_addr.port().to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    anyhow::ensure!(
        line.trim() == "ready",
        "the clients did not connect: {line:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    println!("{n} sessions connected and subscribed; {rounds} one-grant deltas");
    let results: Vec<Round> = (0..rounds)
        .map(|r| round(&tx, &dp, r * (n / rounds)))
        .collect();
    let mut summary = format!("SUMMARY sessions={n} rounds={rounds}");
    for (label, field) in [
        ("apply", (|r: &Round| r.apply) as fn(&Round) -> Duration),
        ("revoked", |r| r.revoked),
        ("cpu", |r| r.cpu),
    ] {
        let [p50, p99, max] = percentiles(results.iter().map(field).collect());
        println!("{label:>8}: p50 {p50:>9.3} ms  p99 {p99:>9.3} ms  max {max:>9.3} ms");
        write!(
            summary,
            " {label}_p50_ms={p50:.4} {label}_p99_ms={p99:.4} {label}_max_ms={max:.4}"
        )?;
    }
    let rechecks: Vec<i64> = results.iter().map(|r| r.rechecks).collect();
    let (min, max) = (
        rechecks.iter().min().copied().unwrap_or(0),
        rechecks.iter().max().copied().unwrap_or(0),
    );
    println!("re-checks per delta: min {min} max {max}");
    // One line for scripts/bench_suite.py.
    println!("{summary} rechecks_min={min} rechecks_max={max}");
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}
