//! The history benchmarks of issue 21, one run, figures for BENCHMARKS.md:
//!
//! - the writer's throughput into PostgreSQL, 64-byte payloads (budget ≥ 50k msg/s): the
//!   in-process writer ([`writer::run`], its default batching) fed as fast as its queue takes;
//! - the reader's newest 100 messages of a channel, on a table of 10M rows (budget p99 ≤ 20 ms),
//!   through [`read`];
//! - SQLite insert throughput through the same writer (budget ≥ 10k msg/s).
//!
//! ```sh
//! export FLEETWARD_POSTGRES_URL=$(scripts/postgres.sh | tail -n1)
//! cargo run --release -p fleetward-history --example pg_bench [messages] [table rows]
//! ```
//!
//! It uses (and first drops) the database `fleetward_bench` of that server.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetward_history::writer::{self, WriterConfig};
use fleetward_history::{
    MessageId, Order, PostgresOptions, PostgresStore, Query, Record, SqliteStore, Store,
    SubtopicFilter, now_ns, read,
};
use sqlx::Connection as _;

const DAY_NS: u64 = 86_400_000_000_000;

fn record(channel: &str, at: u64) -> Record {
    Record {
        id: MessageId::new(at),
        tenant: "bench".into(),
        channel: channel.into(),
        channel_uid: "uid".into(),
        subtopic: "/room1/temp".into(),
        payload: Bytes::from_static(&[b'x'; 64]),
        qos: 1,
        content_type: None,
        publisher: Some("thing-1".into()),
        publisher_kind: Some("thing".into()),
        protocol: "mqtt".into(),
        created_ns: at,
        user_properties: Vec::new(),
    }
}

/// Feeds `n` records through the in-process writer into `store`; returns messages a second.
async fn writer_throughput<S: Store + Clone + 'static>(store: S, n: u64) -> f64 {
    let config = WriterConfig::default();
    let (sink, rx) = writer::channel(&config);
    let stats = sink.stats().clone();
    let task = tokio::spawn(writer::run(
        store,
        rx,
        config,
        stats.clone(),
        std::future::pending(),
    ));
    let start = Instant::now();
    for _ in 0..n {
        let mut r = record("throughput", now_ns());
        // A full queue refuses: wait for the writer, as a dataplane's retry would.
        while let Err(writer::Full) = sink.offer(r.clone()) {
            tokio::time::sleep(Duration::from_micros(200)).await;
            r.id = MessageId::new(r.created_ns);
        }
    }
    drop(sink);
    task.await.expect("the writer ran");
    let secs = start.elapsed().as_secs_f64();
    let written = stats.written.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(written, n, "every record written once");
    n as f64 / secs
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(admin) = std::env::var("FLEETWARD_POSTGRES_URL") else {
        eprintln!(
            "set FLEETWARD_POSTGRES_URL: export FLEETWARD_POSTGRES_URL=$(scripts/postgres.sh | tail -n1)"
        );
        return ExitCode::FAILURE;
    };
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let messages = args.next().and_then(Result::ok).unwrap_or(500_000);
    let rows = args.next().and_then(Result::ok).unwrap_or(10_000_000);
    match run(&admin, messages, rows).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(admin: &str, messages: u64, rows: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query("DROP DATABASE IF EXISTS fleetward_bench WITH (FORCE)")
        .execute(&mut conn)
        .await?;
    sqlx::query("CREATE DATABASE fleetward_bench")
        .execute(&mut conn)
        .await?;
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or("FLEETWARD_POSTGRES_URL has no database")?;
    let store = PostgresStore::connect(&PostgresOptions::new(format!("{base}/fleetward_bench")))?;
    store.migrate().await?;

    let pg = writer_throughput(store.clone(), messages).await;
    println!(
        "writer into PostgreSQL, 64-byte payloads, {messages} messages: {pg:.0} msg/s (budget >= 50000)"
    );

    // 10M rows over the last 5 days, 10 channels, bulk-loaded by the server itself; the day
    // partitions are made first by inserting one message of each day.
    let now = now_ns();
    let days: Vec<Record> = (0..5).map(|d| record("c0", now - d * DAY_NS)).collect();
    store.insert(&days).await?;
    let start = Instant::now();
    let now_ms = i64::try_from(now / 1_000_000)?;
    let span_ms: i64 = 5 * 86_400_000 - 1;
    let rows_i = i64::try_from(rows)?;
    // id: 48-bit ms, version 7, frac 0, variant 8, then the row number: time-ordered like ours.
    sqlx::query(
        "INSERT INTO messages (id, created, tenant, channel, channel_uid, subtopic, payload, qos, \
         publisher, publisher_kind, protocol, created_ns, stored_bytes) \
         SELECT (lpad(to_hex(ms), 12, '0') || '70008' || lpad(to_hex(i), 15, '0'))::uuid, \
         'epoch'::timestamptz + ms * interval '1 millisecond', 'bench', 'c' || (i % 10), 'uid', \
         '/room1/temp', convert_to(repeat('x', 64), 'UTF8'), 1, 'thing-1', 'thing', 'mqtt', \
         ms * 1000000, 139 \
         FROM (SELECT i, $1 - $2 + (i * $2 / $3) AS ms FROM generate_series(1, $3) AS i) AS g",
    )
    .bind(now_ms)
    .bind(span_ms)
    .bind(rows_i)
    .execute(store.pool())
    .await?;
    sqlx::query("ANALYZE messages")
        .execute(store.pool())
        .await?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
        .fetch_one(store.pool())
        .await?;
    println!(
        "loaded {total} rows in {:.1}s",
        start.elapsed().as_secs_f64()
    );

    let query = Query {
        tenant: "bench".into(),
        channel: "c3".into(),
        channel_uid: "uid".into(),
        filter: SubtopicFilter::all(),
        from_ns: None,
        to_ns: None,
        limit: 100,
        order: Order::Desc,
        cursor: None,
    };
    for (label, filter) in [
        ("#", SubtopicFilter::all()),
        ("room1/+", SubtopicFilter::parse("room1/+")?),
    ] {
        let q = Query {
            filter,
            ..query.clone()
        };
        let mut times = Vec::new();
        for i in 0..1_100 {
            let t = Instant::now();
            let page = read(&store, &q, |_| true).await?;
            if i >= 100 {
                times.push(t.elapsed());
            }
            assert_eq!(page.records.len(), 100);
        }
        times.sort_unstable();
        println!(
            "reader, newest 100 of a channel (filter {label}), {total} rows: p50 {:.2} ms, p99 {:.2} ms (budget p99 <= 20 ms)",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
        );
    }

    let dir = tempfile::tempdir()?;
    let sqlite = SqliteStore::open(&dir.path().join("history.db")).await?;
    sqlite.migrate().await?;
    let lite = writer_throughput(sqlite, messages.min(200_000)).await;
    println!(
        "writer into SQLite, 64-byte payloads, {} messages: {lite:.0} msg/s (budget >= 10000)",
        messages.min(200_000)
    );
    Ok(())
}
