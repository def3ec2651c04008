//! The PolicySync server driven by a raw tonic client on 127.0.0.1.

use std::time::Duration;

use fleetward_policy::Snapshot;
use fleetward_proto::convert::{snapshot_from_proto, snapshot_to_proto};
use fleetward_proto::pb::policy_sync_client::PolicySyncClient;
use fleetward_proto::pb::update::Payload;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

use super::fixtures::{
    TOKEN, TestOperator as Operator, WAIT, apply, channel, server_config as config, tenant,
};
use super::*;
use crate::shared::SharedIndex;
use crate::source::PolicySource as _;
use prost::Message as _;

async fn operator(config: ServerConfig) -> Operator {
    Operator::start(config).await
}

/// A dataplane speaking the protocol by hand.
struct Stream {
    tx: mpsc::Sender<pb::DataplaneMessage>,
    rx: Streaming<pb::OperatorMessage>,
}

async fn open(addr: SocketAddr, token: Option<&str>, hello: pb::Hello) -> Result<Stream, Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid URL")
        .connect()
        .await
        .expect("connects");
    let auth: Option<MetadataValue<_>> =
        token.map(|t| format!("Bearer {t}").parse().expect("ASCII token"));
    let mut client = PolicySyncClient::with_interceptor(channel, move |mut r: Request<()>| {
        if let Some(a) = &auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        Ok(r)
    });
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::DataplaneMessage {
        message: Some(In::Hello(hello)),
    })
    .await
    .expect("queued");
    let rx = client.sync(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Stream { tx, rx })
}

use pb::dataplane_message::Message as In;

fn hello(node: &str, version: u64, lineage: &str) -> pb::Hello {
    pb::Hello {
        node_id: node.into(),
        version,
        software_version: "test".into(),
        lineage: lineage.into(),
    }
}

impl Stream {
    async fn update(&mut self) -> pb::Update {
        let m = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("an update in time")
            .expect("the stream is healthy")
            .expect("the stream is open");
        match m.message {
            Some(pb::operator_message::Message::Update(u)) => u,
            None => panic!("an empty operator message"),
        }
    }

    async fn send(&self, m: In) {
        self.tx
            .send(pb::DataplaneMessage { message: Some(m) })
            .await
            .expect("the stream is open");
    }

    async fn ack(&self, u: &pb::Update) {
        self.send(In::Ack(pb::Ack {
            version: u.version,
            nonce: u.nonce,
        }))
        .await;
    }

    /// Asserts nothing arrives for a moment.
    async fn quiet(&mut self) {
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await {
            panic!("expected no message, got {m:?}");
        }
    }
}

fn full(u: &pb::Update) -> &pb::FullSnapshot {
    match &u.payload {
        Some(Payload::Snapshot(s)) => s,
        other => panic!("expected a full snapshot, got {other:?}"),
    }
}

fn deltas(u: &pb::Update) -> &[pb::Delta] {
    match &u.payload {
        Some(Payload::Deltas(d)) => &d.deltas,
        other => panic!("expected deltas, got {other:?}"),
    }
}

async fn applied(dataplanes: &Dataplanes, node: &str, version: u64) {
    let mut rx = dataplanes.subscribe();
    tokio::time::timeout(WAIT, async {
        loop {
            if dataplanes.all().get(node).map(|n| n.applied) == Some(version) {
                return;
            }
            rx.changed().await.expect("registry alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{node} never reached {version}: {:?}", dataplanes.all()));
}

#[tokio::test]
async fn full_snapshot_first_then_deltas_and_acks_reach_the_registry() {
    let op = operator(config()).await;
    let v1 = op.index.read().snapshot().version();
    let mut s = open(op.addr, Some(TOKEN), hello("dp-1", 0, ""))
        .await
        .expect("opens");
    let u = s.update().await;
    assert_eq!(u.version, v1);
    let snap = snapshot_from_proto(full(&u).clone()).expect("well-formed");
    assert_eq!(&snap, op.index.read().snapshot());
    assert!(snap.channel("acme", "tele").is_some());
    assert_eq!(op.dataplanes.all()["dp-1"].applied, 0, "not ACKed yet");
    s.ack(&u).await;
    applied(&op.dataplanes, "dp-1", v1).await;

    let v2 = apply(&op.index, &channel("acme", "alerts"));
    let d = s.update().await;
    assert_eq!((d.from_version, d.version), (v1, v2));
    assert_ne!(d.nonce, u.nonce, "every update has a fresh nonce");
    let ds = deltas(&d);
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].channel_upserts.len(), 1, "{ds:?}");
    assert_eq!(ds[0].channel_upserts[0].name, "alerts");
    s.ack(&d).await;
    applied(&op.dataplanes, "dp-1", v2).await;

    drop(s);
    tokio::time::timeout(WAIT, async {
        while op.dataplanes.all().contains_key("dp-1") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a closed stream unregisters the dataplane");
}

#[tokio::test]
async fn a_dataplane_resuming_in_the_same_lineage_gets_only_deltas() {
    let op = operator(config()).await;
    let mut s = open(op.addr, Some(TOKEN), hello("dp-1", 0, ""))
        .await
        .expect("opens");
    let first = s.update().await;
    s.ack(&first).await;
    drop(s);
    let v2 = apply(&op.index, &channel("acme", "alerts"));

    let mut s = open(
        op.addr,
        Some(TOKEN),
        hello("dp-1", first.version, &first.lineage),
    )
    .await
    .expect("opens");
    let u = s.update().await;
    assert_eq!((u.from_version, u.version), (first.version, v2));
    assert_eq!(deltas(&u).len(), 1);
    assert_eq!(
        op.dataplanes.all()["dp-1"].applied,
        first.version,
        "registered with the version it has"
    );

    // Already current: an empty batch confirms it.
    let mut s2 = open(op.addr, Some(TOKEN), hello("dp-2", v2, &first.lineage))
        .await
        .expect("opens");
    let u = s2.update().await;
    assert_eq!((u.from_version, u.version), (v2, v2));
    assert!(deltas(&u).is_empty());

    // The same version number from another lineage means nothing here.
    let mut s3 = open(op.addr, Some(TOKEN), hello("dp-3", v2, "another-replica"))
        .await
        .expect("opens");
    let u = s3.update().await;
    full(&u);
    assert_eq!(op.dataplanes.all()["dp-3"].applied, 0);
}

#[tokio::test]
async fn a_nack_is_recorded_and_answered_with_a_full_snapshot() {
    let op = operator(config()).await;
    let mut s = open(op.addr, Some(TOKEN), hello("dp-1", 0, ""))
        .await
        .expect("opens");
    let first = s.update().await;
    s.ack(&first).await;
    let v2 = apply(&op.index, &channel("acme", "alerts"));
    let d = s.update().await;
    deltas(&d);
    s.send(In::Nack(pb::Nack {
        version: d.version,
        nonce: d.nonce,
        error: "cannot apply".into(),
    }))
    .await;
    let recovery = s.update().await;
    assert_eq!(recovery.version, v2);
    assert!(recovery.nonce > d.nonce);
    assert_eq!(full(&recovery).channels.len(), 2);
    let state = &op.dataplanes.all()["dp-1"];
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot apply")),
        "{state:?}"
    );
    assert_eq!(state.applied, first.version);
    s.ack(&recovery).await;
    applied(&op.dataplanes, "dp-1", v2).await;
    assert_eq!(op.dataplanes.all()["dp-1"].last_error, None);

    // A refused full snapshot is not resent at once; the next version brings a new one.
    let v3 = apply(&op.index, &channel("acme", "c3"));
    let d = s.update().await;
    s.send(In::Nack(pb::Nack {
        version: d.version,
        nonce: d.nonce,
        error: "still broken".into(),
    }))
    .await;
    let f = s.update().await;
    assert_eq!(f.version, v3);
    s.send(In::Nack(pb::Nack {
        version: f.version,
        nonce: f.nonce,
        error: "still broken".into(),
    }))
    .await;
    s.quiet().await;
    let v4 = apply(&op.index, &channel("acme", "c4"));
    let f = s.update().await;
    assert_eq!(f.version, v4);
    full(&f);
}

#[tokio::test]
async fn answers_to_superseded_nonces_are_ignored() {
    let op = operator(config()).await;
    let mut s = open(op.addr, Some(TOKEN), hello("dp-1", 0, ""))
        .await
        .expect("opens");
    let u = s.update().await;
    // A stale ACK claiming a far newer version, and a stale NACK.
    s.send(In::Ack(pb::Ack {
        version: 999,
        nonce: u.nonce + 100,
    }))
    .await;
    s.send(In::Nack(pb::Nack {
        version: u.version,
        nonce: u.nonce.wrapping_sub(1),
        error: "old".into(),
    }))
    .await;
    s.ack(&u).await;
    applied(&op.dataplanes, "dp-1", u.version).await;
    assert_eq!(
        op.dataplanes.all()["dp-1"].last_error,
        None,
        "stale NACK ignored"
    );
    // Had the stale NACK counted, the next update would be a full snapshot.
    apply(&op.index, &channel("acme", "alerts"));
    let d = s.update().await;
    assert_eq!(deltas(&d).len(), 1);
    assert_eq!(
        op.dataplanes.all()["dp-1"].applied,
        u.version,
        "the stale ACK for 999 never counted"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused() {
    let op = operator(config()).await;
    for token in [None, Some("wrong"), Some("s3cret-token-but-longer")] {
        let err = open(op.addr, token, hello("dp-1", 0, ""))
            .await
            .err()
            .unwrap_or_else(|| panic!("token {token:?} accepted"));
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
        assert!(err.message().contains("token"), "{err}");
    }
    assert!(op.dataplanes.all().is_empty());
}

#[tokio::test]
async fn a_stream_must_start_with_a_hello_with_a_node_id() {
    let op = operator(config()).await;
    let err = open(op.addr, Some(TOKEN), hello("", 0, ""))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("node_id"), "{err}");
}

#[tokio::test]
async fn an_update_over_the_size_cap_is_refused_clearly() {
    let op = operator(ServerConfig {
        max_message_size: 300,
        ..config()
    })
    .await;
    let mut yaml = String::new();
    for i in 0..20 {
        yaml += &channel("acme", &format!("channel-with-a-long-name-{i}"));
    }
    apply(&op.index, &yaml);
    let mut s = open(op.addr, Some(TOKEN), hello("dp-1", 0, ""))
        .await
        .expect("opens");
    let err = tokio::time::timeout(WAIT, s.rx.message())
        .await
        .expect("an answer in time")
        .expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("size cap"), "{err}");
    // The server keeps serving.
    let again = open(op.addr, Some(TOKEN), hello("dp-2", 0, "")).await;
    assert!(again.is_ok());
}

#[tokio::test]
async fn shutdown_ends_every_stream_and_returns() {
    let mut op = operator(config()).await;
    let mut s = open(op.addr, Some(TOKEN), hello("dp-1", 0, ""))
        .await
        .expect("opens");
    let u = s.update().await;
    s.ack(&u).await;
    applied(&op.dataplanes, "dp-1", u.version).await;
    op.stop
        .take()
        .expect("running")
        .send(())
        .expect("server alive");
    let end = tokio::time::timeout(WAIT, s.rx.message())
        .await
        .expect("the stream ends in time");
    assert!(matches!(end, Ok(None)), "{end:?}");
    tokio::time::timeout(WAIT, op.task.take().expect("running"))
        .await
        .expect("serve returns in time")
        .expect("no panic")
        .expect("clean shutdown");
    assert!(op.dataplanes.all().is_empty());
}

#[tokio::test]
async fn a_reconnected_dataplane_is_not_unregistered_by_its_old_stream() {
    let op = operator(config()).await;
    let mut old = open(op.addr, Some(TOKEN), hello("dp-1", 0, ""))
        .await
        .expect("opens");
    let u = old.update().await;
    old.ack(&u).await;
    applied(&op.dataplanes, "dp-1", u.version).await;

    let mut new = open(op.addr, Some(TOKEN), hello("dp-1", u.version, &u.lineage))
        .await
        .expect("opens");
    let confirm = new.update().await;
    assert!(deltas(&confirm).is_empty());
    new.ack(&confirm).await;
    let v2 = apply(&op.index, &channel("acme", "alerts"));
    let n = new.update().await;
    new.ack(&n).await;
    applied(&op.dataplanes, "dp-1", v2).await;
    // The old stream ACKs its own update late, then goes: neither touches the registration.
    let d = old.update().await;
    old.ack(&d).await;
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        op.dataplanes.all().get("dp-1").map(|s| s.applied),
        Some(v2),
        "still registered after the old stream closed"
    );
}

#[test]
fn the_config_never_prints_its_token() {
    let text = format!("{:?}", config());
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains("redacted"), "{text}");
}

/// An encoder that reports each snapshot version it starts on, then waits for a go.
struct Gate {
    started: mpsc::UnboundedReceiver<u64>,
    go: std::sync::mpsc::Sender<()>,
}

impl Gate {
    fn new() -> (encoded::Encode, Self) {
        let (started_tx, started) = mpsc::unbounded_channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let encode: encoded::Encode = Arc::new(move |s: &Snapshot| {
            let _ = started_tx.send(s.version());
            // Dropping the gate lets every waiting encoding through.
            let _ = go_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
            snapshot_to_proto(s)
        });
        (encode, Self { started, go })
    }

    async fn started(&mut self) -> u64 {
        tokio::time::timeout(WAIT, self.started.recv())
            .await
            .expect("an encoding starts in time")
            .expect("the encoder is alive")
    }

    fn open(&self) {
        self.go.send(()).expect("the encoder is alive");
    }
}

/// Serves tenant `acme` with channel `tele`, encoding full snapshots with `encode`; also
/// returns what the server's streams share.
async fn operator_encoding_with(
    encode: encoded::Encode,
) -> (Operator, Arc<session::SessionContext>) {
    let index = Arc::new(SharedIndex::default());
    apply(&index, &(tenant("acme") + &channel("acme", "tele")));
    let dataplanes = Arc::new(Dataplanes::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (drain_tx, drain_rx) = watch::channel(false);
    let service = PolicySyncService::new(
        index.clone(),
        dataplanes.clone(),
        &config(),
        drain_rx,
        encoded::EncodedSnapshots::new(encode),
    );
    let shared = service.shared.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_service(
        listener,
        config(),
        service,
        drain_tx,
        async move {
            let _ = stopped.await;
        },
    ));
    let op = Operator {
        addr,
        index,
        dataplanes,
        stop: Some(stop),
        task: Some(task),
    };
    (op, shared)
}

#[tokio::test]
async fn one_version_is_encoded_once_for_every_stream_that_needs_it() {
    let (encode, mut gate) = Gate::new();
    let (op, shared) = operator_encoding_with(encode).await;
    let v1 = op.index.version();
    let mut a = open(op.addr, Some(TOKEN), hello("dp-1", 0, ""))
        .await
        .expect("opens");
    assert_eq!(gate.started().await, v1);
    // A second stream asks for the same version while the first encoding is held.
    let mut b = open(op.addr, Some(TOKEN), hello("dp-2", 0, ""))
        .await
        .expect("opens");
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.open();
    let (ua, ub) = (a.update().await, b.update().await);
    assert_eq!(full(&ua), full(&ub));
    assert_eq!(ua.version, v1);
    // A stream after the encoding gets the same one.
    let mut c = open(op.addr, Some(TOKEN), hello("dp-3", 0, ""))
        .await
        .expect("opens");
    assert_eq!(full(&c.update().await), full(&ua));
    assert_eq!(
        shared.snapshots.encodings(),
        1,
        "three streams, one encoding"
    );

    // A new version is encoded once more.
    let v2 = apply(&op.index, &channel("acme", "alerts"));
    gate.open();
    let mut d = open(op.addr, Some(TOKEN), hello("dp-4", 0, ""))
        .await
        .expect("opens");
    assert_eq!(gate.started().await, v2);
    assert_eq!(full(&d.update().await).version, v2);
    assert_eq!(shared.snapshots.encodings(), 2);
    assert!(
        gate.started.try_recv().is_err(),
        "no other encoding started"
    );
}

#[tokio::test]
async fn a_feeder_commits_while_a_stream_encodes() {
    let (encode, mut gate) = Gate::new();
    let (op, _shared) = operator_encoding_with(encode).await;
    let mut s = open(op.addr, Some(TOKEN), hello("dp-1", 0, ""))
        .await
        .expect("opens");
    let v1 = gate.started().await;
    // The stream is held inside the encoding: the index takes a change and commits it. On a
    // blocking thread, so a lock still held fails the timeout instead of hanging the test.
    let index = op.index.clone();
    let v2 = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || apply(&index, &channel("acme", "alerts"))),
    )
    .await
    .expect("a feeder's change commits while a stream encodes")
    .expect("no panic");
    assert_eq!(op.index.version(), v2, "published while the stream encodes");
    gate.open();
    let u = s.update().await;
    assert_eq!(full(&u).version, v1, "the version the stream started on");
    s.ack(&u).await;
    let d = s.update().await;
    assert_eq!((d.from_version, d.version), (v1, v2));
    assert_eq!(deltas(&d).len(), 1);
}

#[test]
fn the_size_of_a_full_snapshot_update_is_known_before_it_is_built() {
    let index = SharedIndex::default();
    apply(&index, &(tenant("acme") + &channel("acme", "tele")));
    let proto = snapshot_to_proto(&index.snapshot());
    let mut update = pb::Update {
        version: 7,
        nonce: 300,
        from_version: 2,
        payload: None,
        lineage: "0123456789abcdef".into(),
    };
    let predicted = session::full_wire_len(&update, proto.encoded_len());
    update.payload = Some(Payload::Snapshot(proto));
    let message = pb::OperatorMessage {
        message: Some(pb::operator_message::Message::Update(update)),
    };
    assert_eq!(predicted, message.encoded_len());
}
