//! Benchmark: what a user token costs at CONNECT, and how many sign-ins a dataplane serves.
//!
//! 1. CONNECT → CONNACK round trips, one connection after another, with a thing key, with a new
//!    user access token (JWT, EdDSA) each time, and with one token again and again (a
//!    reconnecting client: its signature was checked before): the differences are the token
//!    check per CONNECT, first and repeated.
//! 2. `POST /users/tokens` from `clients` concurrent HTTP/1.1 keep-alive clients for a few
//!    seconds: sign-ins per second (argon2id password checks dominate).
//!
//! Run: `cargo run --release -p fleetward-dataplane --example bench_users -- [connects] [clients] [seconds]`

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fleetward_dataplane::Dataplane;
use fleetward_dataplane::users::UsersConfig;
use fleetward_policy::tokens::{Keyring, TokenSettings};
use fleetward_policy::{
    KeyDigest, Resources, Role, SigningAlgorithm, SigningKey, Snapshot, Tenant, Thing, User,
    generate_signing_key, hash_password,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const KEY: &str = "bench-key-0123456789";
const PASSWORD: &str = "bench password, long enough";

fn policy(signing_key: SigningKey) -> Arc<Snapshot> {
    let r = Resources {
        tenants: vec![Tenant::named("acme")],
        things: vec![Thing {
            x509: Default::default(),
            credential_mode: Default::default(),
            attributes: Default::default(),
            tenant: "acme".into(),
            name: "bench".into(),
            key_digests: vec![KeyDigest::of(KEY.as_bytes())],
            disabled: false,
            mountpoint: None,
            max_connections: None,
        }],
        users: vec![User {
            tenant: "acme".into(),
            name: "alice".into(),
            role: Role::Member,
            password_hash: Some(hash_password(PASSWORD.as_bytes()).expect("hash")),
            token_epoch: 0,
            disabled: false,
        }],
        signing_keys: vec![signing_key],
        ..Resources::default()
    };
    Arc::new(Snapshot::from_resources(1, r).expect("valid"))
}

/// A v3.1.1 CONNECT with a clean session and the given credentials.
fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 60]);
    for field in [client_id, username, password] {
        body.extend_from_slice(&u16::try_from(field.len()).expect("short").to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Mean microseconds per CONNECT → CONNACK (accepted) over fresh connections, one per
/// password (cycled when fewer than `n`).
async fn connects(addr: SocketAddr, username: &str, passwords: &[String], n: u32) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let password = &passwords[i as usize % passwords.len()];
        s.write_all(&connect_packet(&format!("c{i}"), username, password))
            .await
            .expect("write");
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await.expect("CONNACK");
        assert_eq!(ack, [0x20, 2, 0, 0], "accepted");
        s.write_all(&[0xe0, 0]).await.expect("DISCONNECT");
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

async fn sign_in(s: &mut TcpStream, http: SocketAddr) -> Option<String> {
    let body = format!(r#"{{"tenant":"acme","username":"alice","password":"{PASSWORD}"}}"#);
    let req = format!(
        "POST /users/tokens HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(2048);
    loop {
        let mut chunk = [0u8; 2048];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head.starts_with("HTTP/1.1 200").then(|| body.to_owned());
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let clients: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);

    let signing_key = generate_signing_key(SigningAlgorithm::EdDSA, "k1").expect("key");
    let ring = Keyring::new(std::slice::from_ref(&signing_key)).expect("keyring");
    let (_tx, rx) = tokio::sync::watch::channel(policy(signing_key));
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let dp = Dataplane::new(rx)
        .mqtt_listen(local)
        .http_listen(Some(local))
        .users(UsersConfig {
            logins_per_user_per_minute: u32::MAX,
            logins_per_address_per_minute: u32::MAX,
            ..UsersConfig::default()
        })
        .start()
        .await
        .expect("dataplane");
    let (mqtt, http) = (dp.mqtt_addr, dp.http_addr.expect("http"));
    connect_costs(mqtt, &ring, n).await;
    sign_in_rate(http, clients, seconds).await;
}

/// Part 1: CONNECT → CONNACK with a thing key, a new user token each time, and one token again.
async fn connect_costs(mqtt: SocketAddr, ring: &Keyring, n: u32) {
    // Tokens as the dataplane issues them (same key, issuer and audience), each one new.
    let settings = TokenSettings::default();
    let fresh: Vec<String> = (0..n * 4)
        .map(|_| {
            ring.issue(&settings, "acme", "alice", 0, SystemTime::now())
                .expect("issued")
                .0
        })
        .collect();
    let (warm, rounds) = fresh.split_at(n as usize);
    let key = vec![KEY.to_owned()];
    let again = vec![fresh[0].clone()];

    // Warm up every path, then alternate rounds so drift hits all alike.
    connects(mqtt, "acme/bench", &key, n / 10).await;
    connects(mqtt, "acme/alice", warm, n).await;
    connects(mqtt, "acme/alice", &again, n / 10).await;
    let (mut key_us, mut first_us, mut again_us) = (0.0, 0.0, 0.0);
    for round in rounds.chunks(n as usize) {
        key_us += connects(mqtt, "acme/bench", &key, n).await / 3.0;
        first_us += connects(mqtt, "acme/alice", round, n).await / 3.0;
        again_us += connects(mqtt, "acme/alice", &again, n).await / 3.0;
    }
    println!(
        "CONNECT→CONNACK, {n} × 3 sequential connections: thing key {key_us:.1} µs; new user token {first_us:.1} µs (+{:.1}); the same token again {again_us:.1} µs (+{:.1})",
        first_us - key_us,
        again_us - key_us,
    );
}

/// Part 2: sign-ins per second from `clients` keep-alive HTTP clients.
async fn sign_in_rate(http: SocketAddr, clients: usize, seconds: u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(http).await.expect("http");
            while Instant::now() < until {
                match sign_in(&mut s, http).await {
                    Some(_) => done.fetch_add(1, Ordering::Relaxed),
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        s = TcpStream::connect(http).await.expect("http");
                        0
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let done = done.load(Ordering::Relaxed);
    println!(
        "sign-ins: {clients} clients × {seconds} s: {done} ok ({:.1}/s), {} failed",
        done as f64 / seconds as f64,
        failed.load(Ordering::Relaxed)
    );
}
