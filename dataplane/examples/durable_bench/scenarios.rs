//! The three scenarios of the benchmark (the module docs of `main.rs` say what each measures).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

use super::{Conn, Pod, Sizes, percentile, result};

const WAIT: Duration = Duration::from_secs(10);

/// Waits until `n` PUBACKs were counted on `c` (QoS 1: stored in JetStream on a durable pod).
async fn acked(c: &Conn, n: u64) {
    let until = Instant::now() + WAIT;
    while c.acked.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < until, "PUBACKs missing after 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    json!({
        "p50": percentile(&v, 0.5),
        "p99": percentile(&v, 0.99),
        "max": v.last().copied().unwrap_or(f64::NAN),
        "n": v.len(),
    })
}

/// A persistent session moves from pod A to pod B with `queued` messages waiting.
pub async fn resume(s: &Sizes, a: &Pod, b: &Pod) {
    let publisher = Conn::connect(a.addr, "resume-pub", false, false).await;
    let (mut connack, mut last) = (Vec::new(), Vec::new());
    let (mut absent, mut lost, mut dups, mut dup_flags, mut reordered) = (0, 0, 0, 0, 0);
    let mut sent = 0u64;
    for i in 0..s.resumes {
        let id = format!("resume-{i}");
        let topic = format!("m/acme/c/telemetry/resume/{i}");
        let mut sub = Conn::connect(a.addr, &id, true, true).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        sub.close().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for n in 0..s.queued {
            publisher
                .client
                .publish(&topic, QoS::AtLeastOnce, false, n.to_string())
                .await
                .expect("queued");
        }
        sent += u64::from(s.queued);
        acked(&publisher, sent).await;

        let started = Instant::now();
        let mut back = Conn::connect(b.addr, &id, true, true).await;
        connack.push(back.connack_in.as_secs_f64() * 1e3);
        absent += usize::from(!back.session_present);
        let mut seen = BTreeSet::new();
        let mut high = None;
        let until = Instant::now() + WAIT;
        while seen.len() < s.queued as usize && Instant::now() < until {
            let Ok(Some(g)) = tokio::time::timeout(WAIT, back.rx.recv()).await else {
                break;
            };
            let n: u32 = String::from_utf8_lossy(&g.payload)
                .parse()
                .unwrap_or(u32::MAX);
            dup_flags += usize::from(g.dup);
            if !seen.insert(n) {
                dups += 1;
            } else if high.is_some_and(|h| n < h) {
                reordered += 1;
            }
            high = high.max(Some(n));
            if seen.len() == s.queued as usize {
                last.push(g.at.duration_since(started).as_secs_f64() * 1e3);
            }
        }
        lost += s.queued as usize - seen.len();
        // Anything more is a duplicate.
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(300), back.rx.recv()).await
        {
            dups += 1;
        }
        back.close().await;
    }
    publisher.close().await;
    let (c, l) = (stats(connack), stats(last));
    println!(
        "resume on another pod, {} queued, {} times: CONNECT→CONNACK p50 {:.2} p99 {:.2} ms; \
         CONNECT→last p50 {:.2} p99 {:.2} max {:.2} ms; session absent {absent}, lost {lost}, \
         duplicates {dups} (DUP set {dup_flags}), out of order {reordered}",
        s.queued, s.resumes, c["p50"], c["p99"], l["p50"], l["p99"], l["max"]
    );
    result(json!({
        "scenario": "durable-resume", "queued": s.queued, "resumes": s.resumes,
        "connack_ms": c, "last_ms": l, "session_absent": absent, "lost": lost,
        "duplicates": dups, "dup_flags": dup_flags, "out_of_order": reordered,
    }));
}

/// One throughput run: (label, publisher's pod, subscriber's pod, persistent, QoS).
type Mode<'a> = (&'static str, &'a Pod, &'a Pod, bool, QoS);

/// QoS 1 (and QoS 0) 1:1 throughput, every mode once per round, order rotated per round.
pub async fn throughput(s: &Sizes, [a, b, c, d]: [&Pod; 4]) {
    let modes: Vec<Mode> = vec![
        ("q1-persistent-cross", a, b, true, QoS::AtLeastOnce),
        ("q1-clean-cross", a, b, false, QoS::AtLeastOnce),
        ("q1-persistent-same", a, a, true, QoS::AtLeastOnce),
        ("q1-clean-same", a, a, false, QoS::AtLeastOnce),
        ("q1-clean-cross-followed", a, b, false, QoS::AtLeastOnce),
        ("q1-clean-cross-unstored", c, d, false, QoS::AtLeastOnce),
        ("q1-clean-same-unstored", c, c, false, QoS::AtLeastOnce),
        ("q0-cross", a, b, false, QoS::AtMostOnce),
        ("q0-cross-unstored", c, d, false, QoS::AtMostOnce),
    ];
    for round in 0..s.rounds {
        let k = round % modes.len();
        for m in modes[k..].iter().chain(&modes[..k]) {
            let r = one_throughput(s, round, m).await;
            println!("round {} {r}", round + 1);
            result(r);
        }
    }
}

async fn one_throughput(s: &Sizes, round: usize, m: &Mode<'_>) -> serde_json::Value {
    let (label, from, to, persistent, qos) = *m;
    // Clean sessions publish on a channel no persistent session follows (not stored), except
    // `…-followed`, which shares `telemetry` with the persistent ones (stored, PUBACK waits).
    let channel = if persistent || label.ends_with("-followed") {
        "telemetry"
    } else {
        "live"
    };
    let topic = format!("m/acme/c/{channel}/tp/{round}/{label}");
    let mut sub = Conn::connect(
        to.addr,
        &format!("tp-sub-{round}-{label}"),
        persistent,
        false,
    )
    .await;
    sub.subscribe(&topic, qos).await;
    let publisher =
        Arc::new(Conn::connect(from.addr, &format!("tp-pub-{round}-{label}"), false, false).await);
    let stop = Arc::new(AtomicBool::new(false));
    let pumping = tokio::spawn({
        let (p, stop, topic) = (publisher.clone(), stop.clone(), topic.clone());
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if p.client
                    .publish(&topic, qos, false, vec![7u8; 64])
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
            }
            n
        }
    });
    tokio::time::sleep(s.warmup).await;
    let (r0, a0, t0) = (
        sub.received.load(Ordering::Relaxed),
        publisher.acked.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(s.window).await;
    let (r1, a1, secs) = (
        sub.received.load(Ordering::Relaxed),
        publisher.acked.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    let _ = pumping.await;
    // Drain: every acknowledged message should arrive (QoS 1), none twice.
    let settle = Instant::now() + Duration::from_secs(2);
    let mut last = (u64::MAX, u64::MAX);
    while Instant::now() < settle {
        let now = (
            publisher.acked.load(Ordering::Relaxed),
            sub.received.load(Ordering::Relaxed),
        );
        if now == last && now.1 >= now.0 {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (acks, got) = (
        publisher.acked.load(Ordering::Relaxed),
        sub.received.load(Ordering::Relaxed),
    );
    if let Ok(p) = Arc::try_unwrap(publisher) {
        p.close().await;
    }
    sub.close().await;
    let q = if qos == QoS::AtMostOnce { 0 } else { 1 };
    json!({
        "scenario": "durable-throughput", "mode": label, "round": round + 1, "qos": q,
        "persistent": persistent, "received_per_s": (r1 - r0) as f64 / secs,
        "acked_per_s": (a1 - a0) as f64 / secs, "acked": acks, "received": got,
        "missing": if q == 1 { acks.saturating_sub(got) } else { 0 },
        "extra": if q == 1 { got.saturating_sub(acks) } else { 0 },
    })
}

/// Publish → deliver at a fixed total rate over `pairs` pairs (publishers on A, subscribers on
/// B), persistent and clean subscribers in turn.
pub async fn latency(s: &Sizes, a: &Pod, b: &Pod) {
    for round in 0..s.rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for persistent in order {
            let r = one_latency(s, round, a, b, persistent).await;
            println!("round {} {r}", round + 1);
            result(r);
        }
    }
}

async fn one_latency(
    s: &Sizes,
    round: usize,
    a: &Pod,
    b: &Pod,
    persistent: bool,
) -> serde_json::Value {
    let kind = if persistent { "persistent" } else { "clean" };
    let base = Instant::now();
    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    for k in 0..s.pairs {
        let topic = format!("m/acme/c/telemetry/lat/{round}/{kind}/{k}");
        let mut sub = Conn::connect(
            b.addr,
            &format!("lat-sub-{round}-{kind}-{k}"),
            persistent,
            true,
        )
        .await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        subs.push(sub);
        pubs.push((
            Conn::connect(a.addr, &format!("lat-pub-{round}-{kind}-{k}"), false, false).await,
            topic,
        ));
    }
    let period = Duration::from_secs_f64(f64::from(s.pairs) / f64::from(s.rate));
    let total = s.warmup + s.latency_window;
    let per_pair = (total.as_secs_f64() / period.as_secs_f64()) as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, topic) in pubs {
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut lag = Duration::ZERO;
            let first = Instant::now();
            for seq in 0..per_pair {
                tick.tick().await;
                let now = Instant::now();
                lag = lag.max(now.saturating_duration_since(first + period * seq as u32));
                let mut payload = vec![0u8; 64];
                payload[..8]
                    .copy_from_slice(&(now.duration_since(base).as_micros() as u64).to_le_bytes());
                payload[8..16].copy_from_slice(&seq.to_le_bytes());
                if p.client
                    .publish(&topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            acked(&p, per_pair).await;
            p.close().await;
            lag
        }));
    }
    let mut max_lag = Duration::ZERO;
    for t in tasks {
        max_lag = max_lag.max(t.await.expect("publisher"));
    }
    let sending = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warm = s.warmup.as_micros() as u64 + started.duration_since(base).as_micros() as u64;
    let (lat, lost, dups, in_window) = collect(subs, base, warm, per_pair).await;
    let st = stats(lat);
    json!({
        "scenario": "durable-latency", "subscribers": kind, "round": round + 1,
        "rate": s.rate, "pairs": s.pairs, "latency_ms": st,
        "sent": per_pair * u64::from(s.pairs), "sending_s": sending.as_secs_f64(),
        "delivered_per_s": in_window as f64 / s.latency_window.as_secs_f64(),
        "max_send_lag_ms": max_lag.as_secs_f64() * 1e3, "lost": lost, "duplicates": dups,
    })
}

/// Latencies (ms) of what was sent after `warm` µs, and lost, duplicated and counted messages.
async fn collect(
    subs: Vec<Conn>,
    base: Instant,
    warm: u64,
    per_pair: u64,
) -> (Vec<f64>, u64, u64, u64) {
    let (mut lat, mut lost, mut dups, mut in_window) = (Vec::new(), 0u64, 0u64, 0u64);
    for mut sub in subs {
        let mut seen = BTreeSet::new();
        while let Ok(g) = sub.rx.try_recv() {
            let sent_us = u64::from_le_bytes(g.payload[..8].try_into().unwrap_or([0; 8]));
            let seq = u64::from_le_bytes(g.payload[8..16].try_into().unwrap_or([0; 8]));
            if !seen.insert(seq) {
                dups += 1;
                continue;
            }
            if sent_us >= warm {
                in_window += 1;
                let at = g.at.duration_since(base).as_micros() as u64;
                lat.push(at.saturating_sub(sent_us) as f64 / 1e3);
            }
        }
        lost += per_pair - seen.len() as u64;
        sub.close().await;
    }
    (lat, lost, dups, in_window)
}
