//! Load generator: QoS 0 publish throughput over publisher/subscriber pairs, for any MQTT broker.
//!
//! Pair `i` is a subscriber on `m/bench/c/pair-<i>/data` and a publisher that sends QoS 0
//! PUBLISH packets there as fast as the broker reads them (or at `--rate` per publisher). The
//! figure is what subscribers receive per second over a fixed window after a warm-up. Clients
//! speak MQTT 3.1.1 over plain sockets with pre-encoded packets, so the generator costs little
//! CPU beside the broker under test. With `--auth`, pair `i` logs in as `bench/pub-<i>` and
//! `bench/sub-<i>` with the keys of `examples/bench_dataplane.rs`.
//!
//! Run: `cargo run --release -p fleetward-dataplane --example mqtt_load -- --port 1883 --auth`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tenant, channel names and keys shared with `bench_dataplane`.
fn topic(pair: usize) -> String {
    format!("m/bench/c/pair-{pair}/data")
}

#[derive(Parser, Debug)]
struct Args {
    /// The broker's address.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// The broker's MQTT port.
    #[arg(long)]
    port: u16,
    /// Publisher/subscriber pairs.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds of load before the window opens.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// PUBLISH packets written per socket write.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Messages per second per publisher; 0 sends as fast as the broker reads.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Log in with the Fleetward bench credentials (`bench/pub-<i>`, `bench/sub-<i>`).
    #[arg(long)]
    auth: bool,
    /// A label printed with the result.
    #[arg(long, default_value = "broker")]
    label: String,
}

/// The key of a bench thing (also used by `bench_dataplane`).
fn key(thing: &str) -> String {
    format!("bench-key-{thing}-0123456789")
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn connect_packet(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4);
    let mut flags = 0b10; // clean session
    if login.is_some() {
        flags |= 0b1100_0000;
    }
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    if let Some((user, pass)) = login {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, pass.as_bytes());
    }
    packet(0x10, &body)
}

fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    put_str(&mut body, filter.as_bytes());
    body.push(0);
    packet(0x82, &body)
}

fn publish_packet(topic: &str, payload: usize) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    body.extend(std::iter::repeat_n(b'x', payload));
    packet(0x30, &body)
}

/// Reads one whole packet and returns its first byte.
async fn read_packet(s: &mut TcpStream) -> anyhow::Result<u8> {
    let first = s.read_u8().await?;
    let mut len = 0usize;
    for i in 0..4 {
        let b = s.read_u8().await?;
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok(first)
}

async fn open(addr: SocketAddr, id: &str, thing: &str, auth: bool) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let user = format!("bench/{thing}");
    let pass = key(thing);
    let login = auth.then_some((user.as_str(), pass.as_str()));
    s.write_all(&connect_packet(id, login)).await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut ack))
        .await
        .context("no CONNACK within 10 s")??;
    anyhow::ensure!(ack[0] == 0x20 && ack[3] == 0, "{id}: CONNACK {ack:?}");
    Ok(s)
}

/// Counts PUBLISH packets in a byte stream; keeps a partial packet for the next read.
#[derive(Default)]
struct Counter {
    buf: Vec<u8>,
}

impl Counter {
    fn feed(&mut self, data: &[u8]) -> u64 {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        let mut publishes = 0;
        loop {
            let rest = &self.buf[at..];
            if rest.len() < 2 {
                break;
            }
            let mut len = 0usize;
            let mut header = 1;
            let mut complete = false;
            for (i, b) in rest[1..].iter().take(4).enumerate() {
                len |= usize::from(b & 0x7f) << (7 * i);
                header += 1;
                if b & 0x80 == 0 {
                    complete = true;
                    break;
                }
            }
            if !complete || rest.len() < header + len {
                break;
            }
            if rest[0] >> 4 == 3 {
                publishes += 1;
            }
            at += header + len;
        }
        self.buf.drain(..at);
        publishes
    }
}

async fn subscriber(
    mut s: TcpStream,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut counter = Counter::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.tick().await;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            n = s.read(&mut buf) => {
                let n = n?;
                anyhow::ensure!(n > 0, "the broker closed a subscriber");
                received.fetch_add(counter.feed(&buf[..n]), Ordering::Relaxed);
            }
            _ = ping.tick() => s.write_all(&[0xc0, 0]).await?,
        }
    }
    Ok(())
}

async fn publisher(
    mut s: TcpStream,
    one: Vec<u8>,
    batch: usize,
    rate: u64,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let chunk = one.repeat(batch.max(1));
    let (mut read_side, mut write_side) = s.split();
    // Drain whatever the broker sends (PINGRESP); nothing is expected.
    let drain = async {
        let mut sink = [0u8; 256];
        while matches!(read_side.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let send = async {
        let started = Instant::now();
        let mut count = 0u64;
        let mut ping = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if rate > 0 {
                let due = started + Duration::from_secs_f64(count as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            write_side.write_all(&chunk).await?;
            count += batch as u64;
            sent.fetch_add(batch as u64, Ordering::Relaxed);
            if ping.elapsed() > Duration::from_secs(20) {
                write_side.write_all(&[0xc0, 0]).await?;
                ping = Instant::now();
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = send => r,
        () = drain => anyhow::bail!("the broker closed a publisher"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr = SocketAddr::new(args.host, args.port);
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.pairs {
        let mut s = open(addr, &format!("sub-{i}"), &format!("sub-{i}"), args.auth).await?;
        s.write_all(&subscribe_packet(&topic(i))).await?;
        let first = tokio::time::timeout(Duration::from_secs(10), read_packet(&mut s))
            .await
            .context("no SUBACK within 10 s")??;
        anyhow::ensure!(first == 0x90, "sub-{i}: expected SUBACK, got {first:#x}");
        tasks.spawn(subscriber(s, received.clone(), stop.clone()));
    }
    // A SUBACK can arrive before the broker routes to the new filter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..args.pairs {
        let s = open(addr, &format!("pub-{i}"), &format!("pub-{i}"), args.auth).await?;
        let one = publish_packet(&topic(i), args.payload);
        tasks.spawn(publisher(
            s,
            one,
            args.batch,
            args.rate,
            sent.clone(),
            stop.clone(),
        ));
    }
    let watch_failures = async {
        match tasks.join_next().await {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(anyhow::anyhow!("a client task failed: {e}")),
            _ => Ok(()),
        }
    };
    let measure = async {
        tokio::time::sleep(Duration::from_secs(args.warmup)).await;
        let (r0, s0, t0) = (
            received.load(Ordering::Relaxed),
            sent.load(Ordering::Relaxed),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let (r1, s1, dt) = (
            received.load(Ordering::Relaxed),
            sent.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64(),
        );
        ((r1 - r0) as f64 / dt, (s1 - s0) as f64 / dt)
    };
    let (recv_rate, sent_rate) = tokio::select! {
        r = measure => r,
        e = watch_failures => {
            e?;
            anyhow::bail!("client tasks ended before the window closed");
        }
    };
    stop.store(true, Ordering::Relaxed);
    println!(
        "label={} pairs={} payload={} window_s={} received_per_s={:.0} written_per_s={:.0}",
        args.label, args.pairs, args.payload, args.seconds, recv_rate, sent_rate
    );
    // The sockets close when the process exits.
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_counts_publishes_across_reads() {
        let p = publish_packet("a/b", 200);
        let mut stream = p.repeat(3);
        stream.extend_from_slice(&[0xd0, 0]); // PINGRESP
        let mut c = Counter::default();
        let (a, b) = stream.split_at(150);
        assert_eq!(c.feed(a), 0);
        assert_eq!(c.feed(b), 3);
        assert!(c.buf.is_empty());
    }
}
