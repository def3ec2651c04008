//! A scripted PolicySync server, to send what a correct operator never would.

use std::pin::Pin;

use fleetward_proto::pb;
use fleetward_proto::pb::dataplane_message::Message as In;
use fleetward_proto::pb::policy_sync_server::{PolicySync, PolicySyncServer};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::WAIT;

/// The test's end of one stream.
pub struct Script {
    streams: mpsc::Receiver<(pb::Hello, Streaming<pb::DataplaneMessage>, Out)>,
    current: Option<(Streaming<pb::DataplaneMessage>, Out)>,
}

type Out = mpsc::Sender<Result<pb::OperatorMessage, Status>>;

struct Fake {
    streams: Mutex<mpsc::Sender<(pb::Hello, Streaming<pb::DataplaneMessage>, Out)>>,
}

#[tonic::async_trait]
impl PolicySync for Fake {
    type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::OperatorMessage, Status>> + Send>>;

    async fn sync(
        &self,
        request: Request<Streaming<pb::DataplaneMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await?.and_then(|m| m.message) {
            Some(In::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("no hello")),
        };
        let (tx, rx) = mpsc::channel(8);
        let _ = self.streams.lock().await.send((hello, inbound, tx)).await;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// The scripted operator makes no Things: as an operator without a provisioner answers.
    async fn provision(
        &self,
        _: Request<pb::ProvisionRequest>,
    ) -> Result<Response<pb::ProvisionResponse>, Status> {
        Err(Status::unavailable("the fake operator makes no Things"))
    }

    type SavedStateStream = Pin<Box<dyn Stream<Item = Result<pb::StateChunk, Status>> + Send>>;

    /// The scripted operator keeps no state, as an operator without `--state-dir` answers.
    async fn saved_state(
        &self,
        _: Request<pb::SavedStateRequest>,
    ) -> Result<Response<Self::SavedStateStream>, Status> {
        Err(Status::unavailable(
            "the fake operator keeps no saved state",
        ))
    }
}

/// Starts the fake operator; returns its URL and the script that drives it.
pub async fn operator() -> (String, Script) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (tx, rx) = mpsc::channel(8);
    let fake = Fake {
        streams: Mutex::new(tx),
    };
    tokio::spawn(
        Server::builder()
            .add_service(PolicySyncServer::new(fake))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (
        url,
        Script {
            streams: rx,
            current: None,
        },
    )
}

impl Script {
    /// Waits for a stream and returns its Hello.
    pub async fn hello(&mut self) -> pb::Hello {
        let (hello, inbound, out) = tokio::time::timeout(WAIT, self.streams.recv())
            .await
            .expect("a stream in time")
            .expect("the fake is running");
        self.current = Some((inbound, out));
        hello
    }

    pub async fn send(&mut self, update: pb::Update) {
        let (_, out) = self.current.as_mut().expect("a stream is open");
        out.send(Ok(pb::OperatorMessage {
            message: Some(pb::operator_message::Message::Update(update)),
        }))
        .await
        .expect("the stream is open");
    }

    pub async fn answer(&mut self) -> In {
        let (inbound, _) = self.current.as_mut().expect("a stream is open");
        tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("an answer in time")
            .expect("the stream is healthy")
            .expect("the stream is open")
            .message
            .expect("a message")
    }

    pub async fn nack(&mut self) -> (u64, u64, String) {
        match self.answer().await {
            In::Nack(n) => (n.version, n.nonce, n.error),
            other => panic!("expected a NACK, got {other:?}"),
        }
    }
}

pub fn ack(version: u64, nonce: u64) -> In {
    In::Ack(pb::Ack { version, nonce })
}

pub fn full(version: u64, nonce: u64, channels: &[&str]) -> pb::Update {
    pb::Update {
        version,
        nonce,
        from_version: 0,
        lineage: "fake".into(),
        payload: Some(pb::update::Payload::Snapshot(pb::FullSnapshot {
            version,
            tenants: vec![pb::Tenant {
                name: "acme".into(),
                web: Default::default(),
                ..Default::default()
            }],
            channels: channels
                .iter()
                .map(|c| pb::Channel {
                    history_retention_secs: Default::default(),
                    uid: String::new(),
                    tenant: "acme".into(),
                    name: (*c).into(),
                    max_qos: pb::Qos::AtLeastOnce.into(),
                    retained_allowed: true,
                    delivery_metadata: false,
                    max_message_size: None,
                })
                .collect(),
            ..Default::default()
        })),
    }
}

pub fn delta(from: u64, to: u64, nonce: u64, channel: &str) -> pb::Update {
    pb::Update {
        version: to,
        nonce,
        from_version: from,
        lineage: "fake".into(),
        payload: Some(pb::update::Payload::Deltas(pb::DeltaBatch {
            deltas: vec![pb::Delta {
                from_version: from,
                to_version: to,
                channel_upserts: vec![pb::Channel {
                    tenant: "acme".into(),
                    name: channel.into(),
                    max_qos: pb::Qos::AtMostOnce.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })),
    }
}
