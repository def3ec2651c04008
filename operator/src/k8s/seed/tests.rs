use std::path::Path;

use std::time::Duration;

use tonic::Code;

use super::*;
use crate::grpc::fixtures::{TOKEN, TestOperator, server_config};
use crate::grpc::{ServerConfig, ServerTls};
use crate::k8s::resume;

/// A state file of `len` bytes, not a whole number of chunks, each byte telling its place.
fn write_state(dir: &Path, len: usize) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(resume::file(dir), &bytes).expect("written");
    bytes
}

/// A running replica that saves its state in `dir`.
async fn replica(dir: &Path, config: ServerConfig) -> TestOperator {
    TestOperator::start(ServerConfig {
        saved_state: Some(resume::file(dir)),
        ..config
    })
    .await
}

fn peer(op: &TestOperator, token: &str) -> Peer {
    Peer {
        url: op.url(),
        token: Some(token.to_owned()),
        tls: None,
    }
}

/// What `dir` holds besides its state file: nothing left from a transfer.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != "operator-state.jsonl")
        .collect()
}

#[tokio::test]
async fn a_new_replica_takes_a_running_replicas_state_byte_for_byte() {
    let (running, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let saved = write_state(running.path(), 2 * 1024 * 1024 + 12_345);
    let mut op = replica(running.path(), server_config()).await;

    let written = seed(new.path(), &peer(&op, TOKEN)).await.expect("seeded");
    assert_eq!(written, Some(saved.len() as u64));
    assert_eq!(
        std::fs::read(resume::file(new.path())).expect("a state file"),
        saved
    );
    assert!(
        leftovers(new.path()).is_empty(),
        "{:?}",
        leftovers(new.path())
    );

    // A directory that holds a state keeps it: a restart resumes from its own.
    std::fs::write(resume::file(new.path()), b"its own").expect("written");
    assert_eq!(
        seed(new.path(), &peer(&op, TOKEN)).await.expect("no error"),
        None
    );
    assert_eq!(
        std::fs::read(resume::file(new.path())).expect("a state file"),
        b"its own"
    );
    op.stop().await;
}

#[tokio::test]
async fn a_seeded_state_restores_what_the_running_replica_saved() {
    let (running, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let saved = resume::tests::fed();
    let count = resume::save(running.path(), &saved).expect("saved");
    let mut op = replica(running.path(), server_config()).await;
    seed(new.path(), &peer(&op, TOKEN)).await.expect("seeded");
    op.stop().await;

    let restored = resume::tests::feed();
    let resume = resume::restore(new.path(), &restored);
    assert!(!resume.is_empty(), "the seeded kinds resume their watches");
    for (kind, version) in &resume {
        assert_eq!(
            saved
                .observed
                .version(*kind)
                .map(|v| v.to_string())
                .as_ref(),
            Some(version)
        );
    }
    let restored_objects: usize = resume
        .keys()
        .map(|kind| restored.index.read().keys_of(*kind).len())
        .sum();
    assert_eq!(restored_objects, count, "every saved object is restored");
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_leaves_no_file() {
    let (running, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_state(running.path(), 100);
    let mut op = replica(running.path(), server_config()).await;
    match seed(new.path(), &peer(&op, "not-the-token")).await {
        Err(SeedError::Refused(status)) => assert_eq!(status.code(), Code::Unauthenticated),
        other => panic!("a wrong token is refused, got {other:?}"),
    }
    let none = Peer {
        token: None,
        ..peer(&op, TOKEN)
    };
    match seed(new.path(), &none).await {
        Err(SeedError::Refused(status)) => assert_eq!(status.code(), Code::Unauthenticated),
        other => panic!("a missing token is refused, got {other:?}"),
    }
    assert!(!resume::file(new.path()).exists());
    assert!(
        leftovers(new.path()).is_empty(),
        "{:?}",
        leftovers(new.path())
    );
    op.stop().await;
}

#[tokio::test]
async fn a_replica_with_nothing_saved_answers_unavailable() {
    let (running, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A state directory without a save yet, then no state directory at all.
    let mut op = replica(running.path(), server_config()).await;
    let mut without = TestOperator::start(server_config()).await;
    for op in [&op, &without] {
        match seed(new.path(), &peer(op, TOKEN)).await {
            Err(SeedError::Refused(status)) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            }
            other => panic!("nothing to send is UNAVAILABLE, got {other:?}"),
        }
    }
    assert!(!resume::file(new.path()).exists());
    op.stop().await;
    without.stop().await;
}

#[tokio::test]
async fn no_replica_listening_is_a_connect_error() {
    let new = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let peer = Peer {
        url,
        token: Some(TOKEN.into()),
        tls: None,
    };
    assert!(matches!(
        seed(new.path(), &peer).await,
        Err(SeedError::Connect(_))
    ));
    assert!(leftovers(new.path()).is_empty() && !resume::file(new.path()).exists());
}

/// A CA and one certificate for `localhost`, which the replicas use both to serve and to
/// ask each other (as the chart's operator certificate does).
fn pki() -> (String, (String, String)) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("signed");
    (ca.pem(), (cert.pem(), key.serialize_pem()))
}

#[tokio::test]
async fn under_mutual_tls_a_replica_presents_its_certificate_and_one_without_is_refused() {
    let (running, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let saved = write_state(running.path(), 5000);
    let (ca, (cert, key)) = pki();
    let mut op = replica(
        running.path(),
        ServerConfig {
            tls: Some(ServerTls {
                cert_pem: cert.clone().into_bytes(),
                key_pem: key.clone().into_bytes(),
                client_ca_pem: Some(ca.clone().into_bytes()),
            }),
            ..server_config()
        },
    )
    .await;
    let peer = |identity: bool| Peer {
        url: format!("https://localhost:{}", op.addr.port()),
        token: Some(TOKEN.into()),
        tls: Some(PeerTls {
            ca_pem: ca.clone().into_bytes(),
            identity: identity.then(|| (cert.clone().into_bytes(), key.clone().into_bytes())),
        }),
    };
    assert!(
        seed(new.path(), &peer(false)).await.is_err(),
        "without a client certificate the peer refuses"
    );
    assert!(!resume::file(new.path()).exists());
    assert_eq!(
        seed(new.path(), &peer(true)).await.expect("seeded"),
        Some(saved.len() as u64)
    );
    assert_eq!(std::fs::read(resume::file(new.path())).unwrap(), saved);
    op.stop().await;
}

#[tokio::test]
async fn a_replica_sends_its_state_twice_at_once_and_refuses_a_third() {
    use crate::grpc::MAX_STATE_SENDS;
    let running = tempfile::tempdir().unwrap();
    let saved = write_state(running.path(), 16 * 1024 * 1024);
    let mut op = replica(running.path(), server_config()).await;
    let client = || async {
        let channel = Endpoint::from_shared(op.url())
            .expect("a URL")
            .connect()
            .await
            .expect("connects");
        let auth: MetadataValue<_> = format!("Bearer {TOKEN}").parse().expect("ASCII");
        PolicySyncClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", auth.clone());
            Ok(r)
        })
    };
    // Calls whose streams nobody reads: each holds its send until its peer reads or goes.
    let mut held = Vec::new();
    for _ in 0..MAX_STATE_SENDS {
        let mut c = client().await;
        held.push(c.saved_state(pb::SavedStateRequest {}).await.expect("sent"));
    }
    let mut extra = client().await;
    let refused = extra
        .saved_state(pb::SavedStateRequest {})
        .await
        .expect_err("a third send at once is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // A held call read to its end frees its place.
    let mut stream = held.pop().expect("a call").into_inner();
    let mut bytes = 0;
    while let Some(chunk) = stream.message().await.expect("chunks") {
        bytes += chunk.data.len();
    }
    assert_eq!(bytes, saved.len());
    let new = tempfile::tempdir().unwrap();
    let mut written = None;
    for _ in 0..50 {
        match seed(new.path(), &peer(&op, TOKEN)).await {
            Ok(w) => {
                written = w;
                break;
            }
            Err(SeedError::Refused(s)) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(written, Some(saved.len() as u64), "a place is free again");
    drop(held);
    op.stop().await;
}
