//! The dataplane's policy sync client against the operator's real PolicySync server, both
//! in-process on 127.0.0.1 (the server and its fixtures from `fleetward_operator::grpc`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleetward_dataplane::sync::{SyncClient, SyncConfig, SyncStatus};
use fleetward_operator::dataplanes::Dataplanes;
use fleetward_operator::grpc::ServerConfig;
use fleetward_operator::grpc::fixtures::{
    TOKEN, TestOperator as Operator, WAIT, apply, channel, server_config, tenant,
};
use fleetward_operator::index::Index;
use fleetward_operator::shared::SharedIndex;
use fleetward_policy::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

fn client_config(endpoints: Vec<String>, state: &Path) -> SyncConfig {
    SyncConfig {
        state_dir: Some(state.to_owned()),
        token: Some(TOKEN.into()),
        connect_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..SyncConfig::new(endpoints, "dp-1")
    }
}

struct Dataplane {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    status: Arc<SyncStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Dataplane {
    fn start(config: SyncConfig) -> Self {
        let client = SyncClient::new(config).expect("valid configuration");
        let snapshot = client.snapshot();
        let status = client.status();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(client.run(async move {
            let _ = stopped.await;
        }));
        Self {
            snapshot,
            status,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn version(&mut self, version: u64) -> Arc<Snapshot> {
        let status = self.status.clone();
        tokio::time::timeout(WAIT, self.snapshot.wait_for(|s| s.version() == version))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "never reached version {version}; last error: {:?}",
                    status.last_error()
                )
            })
            .expect("the client is alive")
            .clone()
    }

    /// Stops the client; it writes its snapshot before returning.
    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("the client stops in time")
                .expect("no panic");
        }
    }
}

async fn registered(dataplanes: &Dataplanes, node: &str, version: u64) {
    let mut rx = dataplanes.subscribe();
    tokio::time::timeout(WAIT, async {
        while dataplanes.all().get(node).map(|n| n.applied) != Some(version) {
            rx.changed().await.expect("registry alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{node} never ACKed {version}: {:?}", dataplanes.all()));
}

/// Grows the snapshot well past 64 bytes.
fn many_channels(index: &SharedIndex) {
    let yaml: String = (0..20)
        .map(|i| channel("acme", &format!("channel-with-a-long-name-{i}")))
        .collect();
    apply(index, &yaml);
}

async fn eventually(what: &str, status: &SyncStatus, f: impl Fn(&SyncStatus) -> bool) {
    tokio::time::timeout(WAIT, async {
        while !f(status) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}; last error: {:?}", status.last_error()));
}

#[tokio::test]
async fn full_sync_then_deltas_and_the_operator_sees_the_acks() {
    let mut op = Operator::start(server_config()).await;
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(client_config(vec![op.url()], state.path()));
    assert!(!dp.status.is_ready(), "not ready before any snapshot");
    assert_eq!(dp.status.seconds_since_update(), None);

    let v1 = op.index.read().snapshot().version();
    let s = dp.version(v1).await;
    assert_eq!(&*s, op.index.read().snapshot());
    assert!(dp.status.is_ready());
    registered(&op.dataplanes, "dp-1", v1).await;

    let v2 = apply(&op.index, &channel("acme", "alerts"));
    let s = dp.version(v2).await;
    assert!(s.channel("acme", "alerts").is_some());
    assert_eq!(&*s, op.index.read().snapshot());
    registered(&op.dataplanes, "dp-1", v2).await;
    assert_eq!(dp.status.full_snapshots(), 1);
    assert_eq!(dp.status.delta_updates(), 1);
    assert_eq!(dp.status.version(), v2);
    assert_eq!(dp.status.seconds_since_contact(), Some(0.0), "connected");
    assert!(dp.status.seconds_since_update().is_some_and(|s| s < 5.0));

    dp.stop().await;
    op.stop().await;
}

#[tokio::test]
async fn a_restarted_client_resumes_from_its_persisted_snapshot_with_deltas_only() {
    let mut op = Operator::start(server_config()).await;
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(client_config(vec![op.url()], state.path()));
    let v1 = op.index.read().snapshot().version();
    dp.version(v1).await;
    dp.stop().await;

    let v2 = apply(&op.index, &channel("acme", "alerts"));
    let mut dp = Dataplane::start(client_config(vec![op.url()], state.path()));
    assert!(dp.status.is_ready(), "ready from disk before any contact");
    assert_eq!(dp.snapshot.borrow().version(), v1);
    let s = dp.version(v2).await;
    assert_eq!(&*s, op.index.read().snapshot());
    assert_eq!(
        dp.status.full_snapshots(),
        0,
        "resumed without a full snapshot"
    );
    assert_eq!(dp.status.delta_updates(), 1);
    dp.stop().await;
    op.stop().await;
}

#[tokio::test]
async fn without_an_operator_a_restarted_client_serves_its_persisted_snapshot() {
    let mut op = Operator::start(server_config()).await;
    apply(&op.index, &channel("acme", "alerts"));
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(client_config(vec![op.url()], state.path()));
    let v = op.index.read().snapshot().version();
    let before = dp.version(v).await;
    dp.stop().await;
    let url = op.url();
    op.stop().await;

    let mut dp = Dataplane::start(client_config(vec![url], state.path()));
    assert!(dp.status.is_ready());
    assert_eq!(*dp.snapshot.borrow().clone(), *before);
    assert_eq!(dp.status.version(), v);
    assert_eq!(
        dp.status.seconds_since_contact(),
        None,
        "no operator heard since start"
    );
    assert!(dp.status.seconds_since_update().is_some());
    // It keeps trying, and keeps the snapshot while it does.
    eventually("a failed attempt is reported", &dp.status, |s| {
        s.last_error().is_some_and(|e| e.contains("cannot reach"))
    })
    .await;
    assert_eq!(*dp.snapshot.borrow().clone(), *before);
    dp.stop().await;
}

/// `GET path` on the admin listener; the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin listener");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("writes");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("reads");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

/// A dataplane front-end fed by `dp`, with its admin listener; returns its admin address.
async fn serve_metrics(dp: &Dataplane) -> (fleetward_dataplane::RunningDataplane, SocketAddr) {
    let running = fleetward_dataplane::Dataplane::new(dp.snapshot.clone())
        .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .admin_listen(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .sync_status(dp.status.clone())
        .start()
        .await
        .expect("the dataplane starts");
    let admin = running.admin_addr.expect("an admin listener");
    (running, admin)
}

#[tokio::test]
async fn metrics_say_how_stale_the_snapshot_is_and_whether_it_came_from_disk() {
    let mut op = Operator::start(server_config()).await;
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(client_config(vec![op.url()], state.path()));
    let v = op.index.read().snapshot().version();
    dp.version(v).await;
    let (running, admin) = serve_metrics(&dp).await;
    eventually("connected", &dp.status, SyncStatus::is_connected).await;
    let text = http_get(admin, "/metrics").await;
    assert_eq!(metric(&text, "fleetward_policy_sync_connected"), 1.0);
    assert_eq!(
        metric(&text, "fleetward_policy_snapshot_staleness_seconds"),
        0.0
    );
    assert_eq!(metric(&text, "fleetward_policy_snapshot_from_disk"), 0.0);
    assert_eq!(metric(&text, "fleetward_policy_snapshot_version"), v as f64);
    drop(running);
    dp.stop().await;
    let url = op.url();
    op.stop().await;

    // Restarted with no operator: it serves the persisted snapshot and says so.
    let mut dp = Dataplane::start(client_config(vec![url], state.path()));
    let (_running, admin) = serve_metrics(&dp).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let text = http_get(admin, "/metrics").await;
    assert_eq!(metric(&text, "fleetward_policy_sync_connected"), 0.0);
    assert_eq!(metric(&text, "fleetward_policy_snapshot_from_disk"), 1.0);
    assert_eq!(metric(&text, "fleetward_policy_snapshot_version"), v as f64);
    let stale = metric(&text, "fleetward_policy_snapshot_staleness_seconds");
    assert!((1.0..60.0).contains(&stale), "staleness {stale}");
    assert!(
        metric(&text, "fleetward_policy_operator_contact_age_seconds").is_infinite(),
        "no operator heard since start"
    );
    dp.stop().await;
}

#[tokio::test]
async fn a_dead_first_endpoint_is_skipped() {
    let mut op = Operator::start(server_config()).await;
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("address"));
    drop(dead);
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(client_config(vec![dead_url, op.url()], state.path()));
    let v = op.index.read().snapshot().version();
    dp.version(v).await;
    registered(&op.dataplanes, "dp-1", v).await;
    dp.stop().await;
    op.stop().await;
}

#[tokio::test]
async fn when_the_operator_goes_the_client_moves_to_another() {
    let index = Arc::new(SharedIndex::new(Index::new()));
    apply(&index, &(tenant("acme") + &channel("acme", "tele")));
    let mut a = Operator::start_with(server_config(), index.clone()).await;
    let mut b = Operator::start_with(server_config(), index.clone()).await;
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(client_config(vec![a.url(), b.url()], state.path()));
    let v1 = index.read().snapshot().version();
    dp.version(v1).await;
    registered(&a.dataplanes, "dp-1", v1).await;
    a.stop().await;
    registered(&b.dataplanes, "dp-1", v1).await;
    let v2 = apply(&index, &channel("acme", "alerts"));
    dp.version(v2).await;
    dp.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_reported() {
    let mut op = Operator::start(server_config()).await;
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(SyncConfig {
        token: Some("wrong".into()),
        ..client_config(vec![op.url()], state.path())
    });
    eventually("the refusal is reported", &dp.status, |s| {
        s.last_error().is_some_and(|e| e.contains("token"))
    })
    .await;
    assert!(!dp.status.is_ready());
    assert!(op.dataplanes.all().is_empty());
    dp.stop().await;
    op.stop().await;
}

#[tokio::test]
async fn an_update_over_the_client_size_cap_is_refused_without_harm() {
    let mut op = Operator::start(server_config()).await;
    many_channels(&op.index);
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(SyncConfig {
        max_message_size: 64,
        ..client_config(vec![op.url()], state.path())
    });
    eventually("the over-size update is reported", &dp.status, |s| {
        s.last_error().is_some_and(|e| e.contains("size cap"))
    })
    .await;
    assert!(!dp.status.is_ready());
    dp.stop().await;
    op.stop().await;
}

#[tokio::test]
async fn an_update_over_the_server_size_cap_is_refused_without_harm() {
    let mut op = Operator::start(ServerConfig {
        max_message_size: 64,
        ..server_config()
    })
    .await;
    many_channels(&op.index);
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(client_config(vec![op.url()], state.path()));
    eventually("the over-size snapshot is reported", &dp.status, |s| {
        s.last_error().is_some_and(|e| e.contains("size cap"))
    })
    .await;
    assert!(!dp.status.is_ready());
    dp.stop().await;
    op.stop().await;
}

mod fake;

#[tokio::test]
async fn a_bad_delta_is_nacked_the_snapshot_kept_and_a_full_snapshot_recovers() {
    let (url, mut script) = fake::operator().await;
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(client_config(vec![url], state.path()));
    let hello = script.hello().await;
    assert_eq!((hello.node_id.as_str(), hello.version), ("dp-1", 0));

    script.send(fake::full(1, 10, &["tele"])).await;
    assert_eq!(script.answer().await, fake::ack(1, 10));
    let v1 = dp.version(1).await;

    // A delta from a version the dataplane does not have.
    script.send(fake::delta(5, 6, 11, "x")).await;
    let (version, nonce, error) = script.nack().await;
    assert_eq!((version, nonce), (6, 11));
    assert!(error.contains("version 5"), "{error}");
    // A delta whose content is malformed.
    let mut bad = fake::delta(1, 2, 12, "y");
    if let Some(fleetward_proto::pb::update::Payload::Deltas(b)) = &mut bad.payload {
        b.deltas[0].thing_upserts.push(fleetward_proto::pb::Thing {
            tenant: "acme".into(),
            name: "t".into(),
            key_digests: vec![vec![0; 5]],
            ..Default::default()
        });
    }
    script.send(bad).await;
    let (_, nonce, error) = script.nack().await;
    assert_eq!(nonce, 12);
    assert!(error.contains("32"), "{error}");
    assert_eq!(
        *dp.snapshot.borrow().clone(),
        *v1,
        "the old snapshot is kept"
    );
    assert_eq!(dp.status.nacks(), 2);

    script.send(fake::full(2, 13, &["tele", "alerts"])).await;
    assert_eq!(script.answer().await, fake::ack(2, 13));
    let v2 = dp.version(2).await;
    assert!(v2.channel("acme", "alerts").is_some());
    assert_eq!(dp.status.last_error(), None);
    dp.stop().await;
}

#[tokio::test]
async fn a_lower_version_from_another_replica_is_published_under_a_newer_local_version() {
    let (url, mut script) = fake::operator().await;
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(client_config(vec![url], state.path()));
    script.hello().await;
    script.send(fake::full(7, 1, &["tele"])).await;
    assert_eq!(script.answer().await, fake::ack(7, 1));
    dp.version(7).await;

    // Another replica's lineage counts from a lower number.
    let mut other = fake::full(3, 2, &["tele", "alerts"]);
    other.lineage = "other-replica".into();
    script.send(other).await;
    assert_eq!(
        script.answer().await,
        fake::ack(3, 2),
        "ACKed in the operator's numbering"
    );
    let published = dp.version(8).await;
    assert!(
        published.channel("acme", "alerts").is_some(),
        "the new policy is published, under version 8 so no cached answer of version 3 or 7 applies"
    );
    assert_eq!(dp.status.version(), 3);
    dp.stop().await;
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let leaf = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf("localhost"),
        client: leaf("dp-1"),
    }
}

#[tokio::test]
async fn mutual_tls_works_and_a_client_without_a_certificate_is_refused() {
    use fleetward_dataplane::sync::ClientTls;
    use fleetward_operator::grpc::ServerTls;
    let pki = pki();
    let mut op = Operator::start(ServerConfig {
        tls: Some(ServerTls {
            cert_pem: pki.server.0.clone().into_bytes(),
            key_pem: pki.server.1.clone().into_bytes(),
            client_ca_pem: Some(pki.ca.clone().into_bytes()),
        }),
        ..server_config()
    })
    .await;
    let url = format!("https://{}", op.addr);
    let tls = |identity: bool| ClientTls {
        ca_pem: pki.ca.clone().into_bytes(),
        identity: identity.then(|| {
            (
                pki.client.0.clone().into_bytes(),
                pki.client.1.clone().into_bytes(),
            )
        }),
        domain: Some("localhost".into()),
    };
    let state = tempfile::tempdir().expect("temp dir");
    let mut dp = Dataplane::start(SyncConfig {
        tls: Some(tls(true)),
        ..client_config(vec![url.clone()], state.path())
    });
    let v = op.index.read().snapshot().version();
    dp.version(v).await;
    registered(&op.dataplanes, "dp-1", v).await;
    dp.stop().await;

    let other = tempfile::tempdir().expect("temp dir");
    let mut anonymous = Dataplane::start(SyncConfig {
        tls: Some(tls(false)),
        node_id: "dp-2".into(),
        ..client_config(vec![url], other.path())
    });
    eventually("the refusal is reported", &anonymous.status, |s| {
        s.last_error().is_some()
    })
    .await;
    assert!(!anonymous.status.is_ready());
    assert!(!op.dataplanes.all().contains_key("dp-2"));
    anonymous.stop().await;
    op.stop().await;
}
