//! What one socket read brings in is handed to the router as one batch, and what the router
//! has ready goes out in one socket write: order, acks, counts and the end of a connection
//! must come out as if every packet were handled alone.

use crate::common;

use std::time::Duration;

use common::{Fixture, raw, v4};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);
const TOPIC: &str = "m/acme/c/telemetry/burst";

/// A raw v3.1.1 publisher, connected as acme/sensor.
async fn publisher(fx: &Fixture, id: &str) -> TcpStream {
    raw::connected(fx.addr, id, "acme", "sensor").await
}

async fn subscriber(fx: &Fixture) -> v4::Client {
    let mut o = v4::options(fx.addr, "acme", "reader", "burst-reader");
    // Room for the whole burst at once, so the test sees the server's batching, not the
    // client's queue.
    o.set_inflight(1000);
    let mut reader = v4::connect_with(o).await.expect("connects");
    reader
        .subscribe("m/acme/c/telemetry/#", v4::QoS::AtLeastOnce)
        .await;
    reader
}

#[tokio::test]
async fn a_burst_in_one_write_is_acked_delivered_and_counted_in_order() {
    const N: u16 = 500;
    let fx = Fixture::start().await;
    let mut reader = subscriber(&fx).await;
    let mut s = publisher(&fx, "burst").await;
    let burst: Vec<u8> = (1..=N)
        .flat_map(|i| raw::publish(TOPIC, 1, i, i.to_string().as_bytes()))
        .collect();
    s.write_all(&burst).await.expect("writes the burst at once");
    for i in 1..=N {
        let (first, body) = raw::read_packet(&mut s, WAIT).await.expect("PUBACK");
        assert_eq!(first, 0x40, "PUBACK for publish {i}");
        assert_eq!(body, i.to_be_bytes(), "acks come in publish order");
    }
    for i in 1..=N {
        let p = reader.next_publish(WAIT).await.expect("delivered");
        assert_eq!(p.payload, i.to_string().as_bytes(), "delivered in order");
    }
    assert!(
        reader
            .next_publish(Duration::from_millis(300))
            .await
            .is_none(),
        "each message once"
    );
    assert_eq!(
        fx.dataplane.metrics().messages("acme"),
        (u64::from(N), u64::from(N)),
        "counted once in and once out"
    );
}

#[tokio::test]
async fn publishes_before_a_malformed_packet_in_the_same_read_are_delivered() {
    let fx = Fixture::start().await;
    let mut reader = subscriber(&fx).await;
    let mut s = publisher(&fx, "then-garbage").await;
    let mut bytes: Vec<u8> = (1..=3u16)
        .flat_map(|i| raw::publish(TOPIC, 1, i, format!("ok-{i}").as_bytes()))
        .collect();
    // Packet type 0 is reserved: a malformed packet right behind the accepted ones.
    bytes.extend_from_slice(&[0x00, 0x00]);
    s.write_all(&bytes).await.expect("writes");
    let (acks, closed) = raw::read_until_closed(&mut s, WAIT).await;
    assert!(closed, "the malformed packet ends the connection");
    assert_eq!(
        acks,
        [0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3],
        "the three accepted publishes are acknowledged before the close"
    );
    for i in 1..=3 {
        let p = reader.next_publish(WAIT).await.expect("delivered");
        assert_eq!(p.payload, format!("ok-{i}").as_bytes());
    }
}

#[tokio::test]
async fn a_refused_publish_in_a_burst_ends_a_v3_client_after_the_accepted_ones() {
    let fx = Fixture::start().await;
    let mut reader = subscriber(&fx).await;
    let mut s = publisher(&fx, "then-refused").await;
    let mut bytes = raw::publish(TOPIC, 1, 1, b"first");
    // acme/sensor has no grant on the channel `nowhere`: a v3 client is disconnected.
    bytes.extend(raw::publish("m/acme/c/nowhere/x", 1, 2, b"refused"));
    bytes.extend(raw::publish(TOPIC, 1, 3, b"never read"));
    s.write_all(&bytes).await.expect("writes");
    let (acks, closed) = raw::read_until_closed(&mut s, WAIT).await;
    assert!(
        closed,
        "a v3 client that publishes where it may not is disconnected"
    );
    assert_eq!(
        acks,
        [0x40, 2, 0, 1],
        "only the accepted publish is acknowledged"
    );
    let p = reader.next_publish(WAIT).await.expect("delivered");
    assert_eq!(p.payload, b"first".as_slice());
    assert!(
        reader
            .next_publish(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing after the refusal is routed"
    );
}
