//! The "router filters" row: a session that subscribes to and unsubscribes from many distinct
//! filters and leaves cleanly leaves nothing behind in the router, memory stays flat from one
//! such session to the next, and the process serves everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::harness::{self, Scratch, Start};
use fleetward_bench::wire::{packet, put_str};

/// Distinct filters the hostile session subscribes to (the issue measured 81 MB for these).
const FILTERS: usize = 20_000;
/// Filters per SUBSCRIBE packet: the default `--max-subscriptions-per-session`.
const PER_PACKET: usize = 100;
/// Sessions, one after the other.
const ROUNDS: usize = 3;
/// What may stay after the first session: the decision cache's 20,000 answers (about 12 MB)
/// and allocator pages (main kept 81 MB).
const RSS_SLACK_KIB: u64 = 24 * 1024;
/// What later sessions may add to that: churn leaves memory flat.
const CHURN_SLACK_KIB: u64 = 6 * 1024;

fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).expect("a packet");
    let mut len = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("a length");
        len |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).expect("a body");
    (first[0], body)
}

/// A clean v3.1.1 session of `acme/dashboard` on a raw socket, its CONNACK read.
fn connected(start: &Start, key: &str) -> TcpStream {
    let mut s = TcpStream::connect(start.mqtt).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a timeout");
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0b1100_0010, 0, 0]);
    put_str(&mut body, b"many-filters");
    put_str(&mut body, b"acme/dashboard");
    put_str(&mut body, key.as_bytes());
    s.write_all(&packet(0x10, &body)).expect("CONNECT");
    let (first, ack) = read_packet(&mut s);
    assert_eq!((first, ack), (0x20, vec![0, 0]), "dashboard accepted");
    s
}

fn metrics(start: &Start) -> Option<String> {
    let mut s = TcpStream::connect(start.admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The router's filter count from `/metrics`.
fn router_filters(start: &Start) -> Option<u64> {
    metrics(start)?
        .lines()
        .find_map(|l| l.strip_prefix("fleetward_router_filters "))
        .and_then(|v| v.trim().parse().ok())
}

/// One session goes through `FILTERS` distinct filters, `PER_PACKET` at a time (the
/// per-session subscription cap lets it hold no more): SUBSCRIBE them, UNSUBSCRIBE them, next.
/// Then it disconnects cleanly.
fn attack(start: &Start, key: &str) -> (Duration, u64) {
    let mut s = connected(start, key);
    let started = Instant::now();
    for (n, chunk) in (0..FILTERS)
        .collect::<Vec<_>>()
        .chunks(PER_PACKET)
        .enumerate()
    {
        let pkid = (n % 30_000) as u16 * 2 + 1;
        let names: Vec<String> = chunk
            .iter()
            .map(|i| format!("m/acme/c/telemetry/h/{i}"))
            .collect();
        let mut body = pkid.to_be_bytes().to_vec();
        for f in &names {
            put_str(&mut body, f.as_bytes());
            body.push(0);
        }
        s.write_all(&packet(0x82, &body)).expect("SUBSCRIBE");
        let (first, ack) = read_packet(&mut s);
        assert_eq!(first, 0x90, "a SUBACK");
        assert_eq!(&ack[..2], &pkid.to_be_bytes());
        assert!(ack[2..].iter().all(|&c| c == 0), "granted: {:?}", &ack[2..]);
        let mut body = (pkid + 1).to_be_bytes().to_vec();
        for f in &names {
            put_str(&mut body, f.as_bytes());
        }
        s.write_all(&packet(0xA2, &body)).expect("UNSUBSCRIBE");
        let (first, ack) = read_packet(&mut s);
        assert_eq!((first, &ack[..2]), (0xB0, &(pkid + 1).to_be_bytes()[..]));
    }
    let took = started.elapsed();
    let rss = start.rss_kib();
    s.write_all(&[0xE0, 0]).expect("DISCONNECT");
    (took, rss)
}

/// Waits until the router holds `before` filters again.
fn wait_for_filters(start: &Start, before: Option<u64>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = router_filters(start);
        if now == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the router holds {now:?} filters after the session left, {before:?} before"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// RSS once it stops falling (the allocator's decay is a second here).
fn settled_rss(start: &Start) -> u64 {
    let mut last = start.rss_kib();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(1500));
        let now = start.rss_kib();
        if now + 256 >= last {
            return now.min(last);
        }
        last = now;
    }
    last
}

#[test]
fn distinct_filters_are_freed_when_their_session_leaves() {
    let scratch = Scratch::with_examples("router-filters");
    // jemalloc returns freed pages after its decay time, but only on allocator activity
    // unless its background thread runs: with it, an idle process shows what it still holds.
    // The session may hold them all (the default cap is 100 per session).
    let mut start = scratch.start(|o| {
        o.under([
            "env",
            "_RJEM_MALLOC_CONF=background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0",
        ])
        .args([format!("--max-subscriptions-per-session={FILTERS}")])
    });
    // Warm: the allocator and the router have served a pub/sub before the baseline.
    harness::legitimate_pub_sub_works(&start, Duration::from_secs(5));
    let key = start.key_of("acme/dashboard");
    // The warm-up's subscriber is gone (killed; its session ends as the socket closes).
    harness::wait_until(
        Duration::from_secs(10),
        "no router filters held before the attack",
        || router_filters(&start).is_none_or(|n| n == 0),
    );
    let filters_before = router_filters(&start);
    let rss_before = start.rss_kib();

    // Three sessions one after the other, each through the same 20,000 distinct filters: what
    // stays after the first is the policy decision cache's answers for them (one per subject
    // and filter, up to its entry cap; new names each round would grow it to that cap) and
    // allocator pages; it must not grow from session to session.
    let mut after = Vec::new();
    for round in 0..ROUNDS {
        let (took, rss_subscribed) = attack(&start, &key);
        wait_for_filters(&start, filters_before);
        let rss = settled_rss(&start);
        eprintln!(
            "round {round}: {FILTERS} filters in {took:?}; RSS {rss_before} KiB before, \
             {rss_subscribed} KiB at the end of the session, {rss} KiB after"
        );
        after.push(rss);
    }
    let (first, last) = (after[0], after[ROUNDS - 1]);
    assert!(
        first <= rss_before + RSS_SLACK_KIB,
        "RSS {first} KiB after the session left, {rss_before} KiB before"
    );
    assert!(
        last <= first + CHURN_SLACK_KIB,
        "RSS grew from {first} KiB after the first round to {last} KiB after {ROUNDS}"
    );
    harness::legitimate_pub_sub_works(&start, Duration::from_secs(5));
    assert!(start.alive());
}
