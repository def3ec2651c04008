//! The load generator: drives any MQTT broker the same way and prints one line of
//! `key=value` results per run.
//!
//! ```text
//! fleetward-bench --port 1883 --auth pairs --pairs 100 --qos 0
//! fleetward-bench --port 1883 fan-out --subscribers 100
//! fleetward-bench --port 1883 fan-in --publishers 100
//! fleetward-bench --port 1883 latency --pairs 100 --total-rate 10000
//! fleetward-bench --port 1883 --auth connect --workers 32
//! fleetward-bench --port 1883 --auth idle --connections 10000 --pid <broker pid>
//! fleetward-bench --port 1883 --auth --flood 10000 latency --pairs 100 --total-rate 10000
//! fleetward-bench --port 1883 --flood 10000 pending --pid <broker pid>
//! fleetward-bench --port 8883 --tls-dir <dir> --auth connect --workers 32
//! fleetward-bench --port 8883 --tls-dir <dir> --cert connect --workers 32
//! fleetward-bench --port 8883 --tls-dir <dir> --cert pairs --pairs 100 --qos 0
//! ```
//!
//! `--flood N` holds N unauthenticated sockets open against the broker while the scenario
//! runs (see `fleetward_bench::flood`), and adds what they held to the result line.
//!
//! With `--auth` clients log in as the Fleetward bench things (`bench/pub-<i>`, with their
//! keys); without it they send no login, for brokers that run without authentication.
//!
//! `--tls-dir DIR` connects over TLS, trusting the server CA `bench-fleetward --tls-dir DIR`
//! wrote; `--cert` then logs in by the thing's client certificate from DIR (no username, no
//! password). Every connection makes a full TLS handshake unless `--tls-resume`.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fleetward_bench::conns::{self, Storm};
use fleetward_bench::fixture;
use fleetward_bench::flood::{self, Flood};
use fleetward_bench::load::{self, Broker, Client, Flow, Login};
use fleetward_bench::tls::TlsClient;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(about = "Load generator for MQTT brokers: throughput, latency, connects, idle memory")]
struct Cli {
    /// The broker's address.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The broker's MQTT port.
    #[arg(long)]
    port: u16,
    /// Log in as the Fleetward bench things, with their keys.
    #[arg(long, conflicts_with = "cert")]
    auth: bool,
    /// Connect over TLS, trusting DIR/server-ca.crt (written by `bench-fleetward --tls-dir`).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<std::path::PathBuf>,
    /// Log in as the Fleetward bench things by their client certificates, DIR/<thing>.crt
    /// and .key, with no username or password (needs --tls-dir).
    #[arg(long, requires = "tls_dir")]
    cert: bool,
    /// Resume TLS sessions (per thing) instead of a full handshake per connection.
    #[arg(long, requires = "tls_dir")]
    tls_resume: bool,
    /// A label printed with the result.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Hold this many unauthenticated sockets open against the broker while the scenario
    /// runs: all opened before it starts, each opened again when the broker closes it.
    #[arg(long, default_value_t = 0)]
    flood: usize,
    /// Flood sockets send the first bytes of a CONNECT and never finish it (by default they
    /// send nothing).
    #[arg(long)]
    flood_partial: bool,
    /// Pair scenarios use pairs `i` from this on (two generators on one broker use disjoint
    /// pairs).
    #[arg(long, default_value_t = 0)]
    first_pair: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

/// What every message flow takes.
#[derive(Args, Debug, Clone)]
struct FlowArgs {
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// PUBLISH packets per socket write, at most.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// QoS 1 PUBLISHes in flight per publisher.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Seconds of load before the window opens.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N publisher → subscriber pairs, each on its own channel, as fast as the broker reads.
    Pairs {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// One publisher, N subscribers of its topic.
    FanOut {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// N publishers, one subscriber of their topic.
    FanIn {
        #[arg(long, default_value_t = 100)]
        publishers: usize,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// N pairs at a fixed total rate, one message per write: publish → deliver percentiles.
    Latency {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages per second over all publishers.
        #[arg(long, default_value_t = 10_000.0)]
        total_rate: f64,
        #[command(flatten)]
        flow: FlowArgs,
    },
    /// CONNECT storm: clients connect, log in, get CONNACK and disconnect, over and over.
    Connect {
        /// Concurrent connecting clients.
        #[arg(long, default_value_t = 32)]
        workers: usize,
        /// Things to log in as, in turn.
        #[arg(long, default_value_t = 10_000)]
        things: usize,
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Idle connections: the broker's RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Things the target grants (`pub-<i>` and `sub-<i>` for `i` below this).
        #[arg(long, default_value_t = 10_000)]
        things: usize,
        /// The broker's process id, to read its RSS.
        #[arg(long)]
        pid: u32,
        /// Seconds to let the broker settle before each reading.
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
    },
    /// Pending sockets: the broker's RSS per unauthenticated socket, weighed before and
    /// after opening the `--flood N` sockets.
    Pending {
        /// The broker's process id, to read its RSS.
        #[arg(long)]
        pid: u32,
        /// Seconds to let the broker settle before each reading (keep it well below the
        /// broker's connect timeout, which closes pending sockets).
        #[arg(long, default_value_t = 3.0)]
        settle: f64,
    },
}

fn flow(args: &FlowArgs, subscribers: Vec<Client>, publishers: Vec<Client>) -> Flow {
    Flow {
        subscribers,
        publishers,
        qos: args.qos,
        payload: args.payload,
        rate: 0.0,
        batch: args.batch,
        window: args.window,
        latency: false,
        warmup: Duration::from_secs_f64(args.warmup),
        window_len: Duration::from_secs_f64(args.seconds),
    }
}

/// Subscribers and publishers of `n` pairs from pair `first`, pair `i` on its own channel.
fn pairs(first: usize, n: usize) -> (Vec<Client>, Vec<Client>) {
    let subs = (first..first + n)
        .map(|i| Client::new(fixture::subscriber(i), fixture::pair_topic(i)))
        .collect();
    let pubs = (first..first + n)
        .map(|i| Client::new(fixture::publisher(i), fixture::pair_topic(i)))
        .collect();
    (subs, pubs)
}

/// `p50_us=… p99_us=… p999_us=… max_us=… samples=…`.
fn percentiles(h: &Histogram<u64>) -> String {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    format!(
        "p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} samples={}",
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1_000.0,
        h.len()
    )
}

/// Runs a flow as fast as the broker reads; its result line.
async fn throughput(
    broker: Broker,
    head: &str,
    scenario: &str,
    f: &FlowArgs,
    subscribers: Vec<Client>,
    publishers: Vec<Client>,
) -> anyhow::Result<String> {
    let r = load::run(broker, flow(f, subscribers, publishers)).await?;
    Ok(format!(
        "{head} scenario={scenario} qos={} payload={} received_per_s={:.0} written_per_s={:.0} generator_cores={:.2}",
        f.qos, f.payload, r.received_per_s, r.written_per_s, r.generator_cores
    ))
}

/// Runs the scenario the command line names and returns its result line; a `pending` run
/// leaves its sockets in `held` for the flood report.
async fn scenario_line(
    broker: Broker,
    head: &str,
    cli: &Cli,
    held: &mut Option<Flood>,
) -> anyhow::Result<String> {
    Ok(match &cli.scenario {
        Scenario::Pairs { pairs: n, flow: f } => {
            let (subs, pubs) = pairs(cli.first_pair, *n);
            throughput(broker, head, &format!("pairs pairs={n}"), f, subs, pubs).await?
        }
        Scenario::FanOut {
            subscribers,
            flow: f,
        } => {
            let subs = (0..*subscribers)
                .map(|i| Client::new(fixture::subscriber(i), fixture::fan_topic()))
                .collect();
            let pubs = vec![Client::new(fixture::publisher(0), fixture::fan_topic())];
            let what = format!("fan-out subscribers={subscribers}");
            throughput(broker, head, &what, f, subs, pubs).await?
        }
        Scenario::FanIn {
            publishers,
            flow: f,
        } => {
            let subs = vec![Client::new(fixture::subscriber(0), fixture::fan_topic())];
            let pubs = (0..*publishers)
                .map(|i| Client::new(fixture::publisher(i), fixture::fan_topic()))
                .collect();
            let what = format!("fan-in publishers={publishers}");
            throughput(broker, head, &what, f, subs, pubs).await?
        }
        Scenario::Latency {
            pairs: n,
            total_rate,
            flow: f,
        } => latency(broker, head, (cli.first_pair, *n), *total_rate, f).await?,
        Scenario::Connect {
            workers,
            things,
            warmup,
            seconds,
        } => connect(broker, head, *workers, *things, *warmup, *seconds).await?,
        Scenario::Idle {
            connections,
            things,
            pid,
            settle,
        } => idle(broker, head, *connections, *things, *pid, *settle).await?,
        Scenario::Pending { pid, settle } => {
            anyhow::ensure!(
                cli.flood > 0,
                "pending weighs the sockets of `--flood N` (before the scenario): give N"
            );
            let (line, f) = pending(broker, head, cli, *pid, *settle).await?;
            *held = Some(f);
            line
        }
    })
}

/// N pairs at a fixed total rate: publish → deliver percentiles.
async fn latency(
    broker: Broker,
    head: &str,
    (first, n): (usize, usize),
    total_rate: f64,
    f: &FlowArgs,
) -> anyhow::Result<String> {
    anyhow::ensure!(total_rate > 0.0, "latency runs at a fixed rate above 0");
    let (subs, pubs) = pairs(first, n);
    let mut spec = flow(f, subs, pubs);
    spec.rate = total_rate / n as f64;
    spec.latency = true;
    let r = load::run(broker, spec).await?;
    let h = r.latency.expect("latency was asked for");
    Ok(format!(
        "{head} scenario=latency qos={} pairs={n} payload={} rate={total_rate:.0} received_per_s={:.0} written_per_s={:.0} {} max_send_lag_us={:.1} generator_cores={:.2}",
        f.qos,
        f.payload,
        r.received_per_s,
        r.written_per_s,
        percentiles(&h),
        r.max_send_lag.as_secs_f64() * 1e6,
        r.generator_cores
    ))
}

/// The CONNECT storm.
async fn connect(
    broker: Broker,
    head: &str,
    workers: usize,
    things: usize,
    warmup: f64,
    seconds: f64,
) -> anyhow::Result<String> {
    let tls = broker.tls.clone();
    let r = conns::storm(
        broker,
        Storm {
            workers,
            things,
            warmup: Duration::from_secs_f64(warmup),
            window_len: Duration::from_secs_f64(seconds),
        },
    )
    .await?;
    // Whether the handshakes were the full ones asked for (or resumed, with --tls-resume).
    let handshakes = tls.map_or_else(String::new, |t| {
        let (full, resumed) = t.handshakes();
        format!(" tls_full={full} tls_resumed={resumed}")
    });
    Ok(format!(
        "{head} scenario=connect workers={workers} connects_per_s={:.0} {} generator_cores={:.2}{handshakes}",
        r.connects_per_s,
        percentiles(&r.latency),
        r.generator_cores
    ))
}

/// Idle connections, weighed.
async fn idle(
    broker: Broker,
    head: &str,
    connections: usize,
    things: usize,
    pid: u32,
    settle: f64,
) -> anyhow::Result<String> {
    let r = conns::idle(
        broker,
        connections,
        things,
        pid,
        Duration::from_secs_f64(settle),
    )
    .await?;
    Ok(format!(
        "{head} scenario=idle connections={connections} rss_before_kib={} rss_after_kib={} kib_per_connection={:.2} connect_s={:.2}",
        r.rss_before_kib,
        r.rss_after_kib,
        r.kib_per_connection(),
        r.connect_secs
    ))
}

/// The `--flood` sockets, weighed; returns them still open.
async fn pending(
    broker: Broker,
    head: &str,
    cli: &Cli,
    pid: u32,
    settle: f64,
) -> anyhow::Result<(String, Flood)> {
    let (r, f) = flood::weigh(
        broker.addr,
        cli.flood,
        cli.flood_partial,
        pid,
        Duration::from_secs_f64(settle),
    )
    .await?;
    let line = format!(
        "{head} scenario=pending rss_before_kib={} rss_after_kib={} pending_held={} kib_per_pending={:.2} open_s={:.2}",
        r.rss_before_kib,
        r.rss_after_kib,
        r.held,
        r.kib_per_pending(),
        r.open_secs
    );
    Ok((line, f))
}

// One thread: the generator shares the machine with the broker under test, and a second
// runtime thread would take a core from the broker and add cross-thread wake-ups to every
// measured delivery.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tls = match &cli.tls_dir {
        Some(dir) => Some(Arc::new(TlsClient::load(dir, cli.tls_resume)?)),
        None => None,
    };
    let login = match (cli.auth, cli.cert) {
        (_, true) => Login::Certificate,
        (true, false) => Login::Key,
        (false, false) => Login::None,
    };
    let broker = Broker {
        addr: SocketAddr::new(cli.host, cli.port),
        login,
        tls,
    };
    let head = format!("label={}", cli.label);
    let nofile_limit = if cli.flood > 0 {
        Some(flood::raise_nofile_limit()?)
    } else {
        None
    };
    let mut held: Option<Flood> = None;
    if cli.flood > 0 && !matches!(cli.scenario, Scenario::Pending { .. }) {
        let f = Flood::start(broker.addr, cli.flood, cli.flood_partial);
        f.ready(flood::ready_deadline(cli.flood)).await;
        held = Some(f);
    }
    let mut line = scenario_line(broker, &head, &cli, &mut held).await?;
    if let Some(f) = held {
        line = format!("{line} {}", f.report());
        f.stop();
    }
    if let Some(limit) = nofile_limit {
        line = format!("{line} nofile_limit={limit}");
    }
    println!("{line}");
    // Open sockets close when the process exits; nothing waits for the brokers to notice.
    std::process::exit(0);
}
