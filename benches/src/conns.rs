//! Connections without messages: a CONNECT storm, and idle connections held to weigh the
//! broker's memory per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixture;
use crate::load::{Broker, Conn, cpu_seconds, first_failure, histogram};
use crate::wire;

/// A CONNECT storm: `workers` clients connect, authenticate, get their CONNACK, disconnect and
/// start over, for `warmup` and then the measured window.
#[derive(Clone, Debug)]
pub struct Storm {
    /// Concurrent connecting clients.
    pub workers: usize,
    /// Things to log in as, in turn (`pub-<i>` for `i` below this).
    pub things: usize,
    /// Connecting before the window opens.
    pub warmup: Duration,
    /// The measured window.
    pub window_len: Duration,
}

/// What a storm measured over its window.
#[derive(Debug)]
pub struct StormResult {
    /// CONNECT → successful CONNACK per second.
    pub connects_per_s: f64,
    /// From the TCP connect to the CONNACK, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Cores this process used over the window.
    pub generator_cores: f64,
}

/// Runs `storm` against `broker`. A refused CONNECT fails the run.
///
/// Each connection ends with DISCONNECT and a zero-linger close (a reset), so the generator
/// does not leave a socket in TIME_WAIT per connection and run out of local ports. Over TLS
/// (`broker.tls`) every connection makes its own handshake, a full one unless the client
/// resumes sessions.
pub async fn storm(broker: Broker, storm: Storm) -> anyhow::Result<StormResult> {
    ensure!(
        storm.workers > 0 && storm.things > 0,
        "a storm needs workers and things"
    );
    let phase = Arc::new(AtomicU8::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..storm.workers {
        let (phase, done, things) = (phase.clone(), done.clone(), storm.things);
        let broker = broker.clone();
        tasks.spawn(async move {
            let mut latency = histogram();
            let mut n = 0usize;
            while phase.load(Ordering::Relaxed) < 2 {
                let thing = fixture::publisher((w + n * storm.workers) % things);
                let started = Instant::now();
                connect_once(&broker, &format!("c{w}-{n}"), &thing).await?;
                if phase.load(Ordering::Relaxed) == 1 {
                    latency.saturating_record(started.elapsed().as_nanos() as u64);
                }
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(latency)
        });
    }
    let failed = first_failure(&mut tasks, "a connecting task");
    let measure = async {
        tokio::time::sleep(storm.warmup).await;
        let (n0, cpu0, t0) = (done.load(Ordering::Relaxed), cpu_seconds(), Instant::now());
        phase.store(1, Ordering::Relaxed);
        tokio::time::sleep(storm.window_len).await;
        phase.store(2, Ordering::Relaxed);
        let dt = t0.elapsed().as_secs_f64();
        (
            (done.load(Ordering::Relaxed) - n0) as f64 / dt,
            (cpu_seconds() - cpu0) / dt,
        )
    };
    let (connects_per_s, generator_cores) = tokio::select! {
        m = measure => m,
        e = failed => {
            e?;
            anyhow::bail!("connecting tasks ended before the window closed");
        }
    };
    let mut latency = histogram();
    while let Some(joined) = tasks.join_next().await {
        let h = joined.context("a connecting task panicked")??;
        latency.add(&h).context("merging latency histograms")?;
    }
    Ok(StormResult {
        connects_per_s,
        latency,
        generator_cores,
    })
}

async fn connect_once(broker: &Broker, client_id: &str, thing: &str) -> anyhow::Result<()> {
    let mut s = broker.open(client_id, thing).await?;
    s.write_all(&wire::DISCONNECT).await?;
    // A TLS stream may still hold the record.
    s.flush().await?;
    s.set_zero_linger()?;
    Ok(())
}

/// What holding idle connections cost the broker.
#[derive(Debug)]
pub struct IdleResult {
    /// Connections held.
    pub connections: usize,
    /// The broker's RSS before, in KiB.
    pub rss_before_kib: u64,
    /// The broker's RSS with every connection open and settled, in KiB.
    pub rss_after_kib: u64,
    /// Seconds it took to open them all.
    pub connect_secs: f64,
}

impl IdleResult {
    /// The broker's RSS per connection, in KiB.
    pub fn kib_per_connection(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.connections as f64
    }
}

/// Opens `connections` idle clients (clean session, no subscription; `pub-<i>`, then
/// `sub-<i>` once `things` publishers are used), 64 at a time, and weighs the broker process
/// `pid` before and after, letting it settle for `settle` each time.
pub async fn idle(
    broker: Broker,
    connections: usize,
    things: usize,
    pid: u32,
    settle: Duration,
) -> anyhow::Result<IdleResult> {
    ensure!(
        connections <= 2 * things,
        "{connections} connections need {} things (pub-<i> and sub-<i>); the target grants {things}",
        connections.div_ceil(2)
    );
    tokio::time::sleep(settle).await;
    let rss_before_kib = rss_kib(pid)?;
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let (gate, broker) = (gate.clone(), broker.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let thing = if i < things {
                fixture::publisher(i)
            } else {
                fixture::subscriber(i - things)
            };
            broker.open(&format!("idle-{i}"), &thing).await
        });
    }
    let mut held: Vec<Conn> = Vec::with_capacity(connections);
    while let Some(joined) = tasks.join_next().await {
        held.push(joined.context("a connecting task panicked")??);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after_kib = rss_kib(pid)?;
    // Every connection must still be open: a broker that dropped some would look cheap.
    let mut probe = [0u8; 1];
    for s in &mut held {
        match tokio::time::timeout(Duration::ZERO, s.read(&mut probe)).await {
            Err(_) => {}
            Ok(r) => anyhow::bail!("the broker closed or wrote to an idle connection: {r:?}"),
        }
    }
    Ok(IdleResult {
        connections,
        rss_before_kib,
        rss_after_kib,
        connect_secs,
    })
}

/// The resident set of process `pid`, in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the broker running?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_set() {
        let kib = rss_kib(std::process::id()).expect("our own RSS");
        assert!(
            kib > 100,
            "a running test process holds more than 100 KiB, got {kib}"
        );
    }
}
