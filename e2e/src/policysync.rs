//! A PolicySync test client built on `fleetward-proto`: connects to an operator replica as a dataplane would, and ACKs or NACKs each update as the test says.
//!
//! It owns a small tokio runtime so tests stay synchronous like the rest of the harness.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fleetward_proto::pb;
use fleetward_proto::pb::dataplane_message::Message as Out;
use fleetward_proto::pb::policy_sync_client::PolicySyncClient;
use fleetward_proto::pb::update::Payload;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

/// Where a client resumes from: the operator's lineage and the version it had applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// `Update.lineage` of the updates it applied.
    pub lineage: String,
    /// The version it applied last.
    pub version: u64,
}

/// One update as the client saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The update's version.
    pub version: u64,
    /// Its nonce.
    pub nonce: u64,
    /// The version it applies to (0 for a full snapshot to an empty client).
    pub from_version: u64,
    /// Its lineage.
    pub lineage: String,
    /// A full snapshot (else deltas).
    pub full: bool,
    /// The names of the Things it adds or carries (`tenant/name`).
    pub things: BTreeSet<String>,
}

impl Seen {
    fn from_update(u: &pb::Update) -> Self {
        let (full, things) = match &u.payload {
            Some(Payload::Snapshot(s)) => (
                true,
                s.things
                    .iter()
                    .map(|t| format!("{}/{}", t.tenant, t.name))
                    .collect(),
            ),
            Some(Payload::Deltas(batch)) => (
                false,
                batch
                    .deltas
                    .iter()
                    .flat_map(|d| d.thing_upserts.iter())
                    .map(|t| format!("{}/{}", t.tenant, t.name))
                    .collect(),
            ),
            None => (false, BTreeSet::new()),
        };
        Self {
            version: u.version,
            nonce: u.nonce,
            from_version: u.from_version,
            lineage: u.lineage.clone(),
            full,
            things,
        }
    }
}

/// A connected PolicySync stream.
pub struct SyncClient {
    runtime: Arc<Runtime>,
    tx: Option<mpsc::Sender<pb::DataplaneMessage>>,
    inbound: Option<Streaming<pb::OperatorMessage>>,
    /// The node id it said hello with.
    pub node: String,
    /// What it has applied (ACKed) last.
    pub applied: Resume,
    auto: Option<tokio::task::JoinHandle<()>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl SyncClient {
    /// Connects to `url` (`http://addr`) with `token` as dataplane `node`, saying it has `from`.
    pub fn connect(url: &str, token: &str, node: &str, from: Resume) -> Result<Self> {
        let runtime = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("start a tokio runtime for the PolicySync client")?,
        );
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::DataplaneMessage {
            message: Some(Out::Hello(pb::Hello {
                node_id: node.to_owned(),
                version: from.version,
                software_version: "e2e-test-client".to_owned(),
                lineage: from.lineage.clone(),
            })),
        };
        let inbound = runtime.block_on(async {
            tx.send(hello).await.context("queue the Hello")?;
            let channel = Endpoint::from_shared(url.to_owned())
                .with_context(|| format!("a PolicySync URL: {url}"))?
                .connect()
                .await
                .with_context(|| format!("connect to PolicySync at {url}"))?;
            // As large as a dataplane's sync client takes (its `DEFAULT_MAX_MESSAGE_SIZE`): a
            // full snapshot of 330k records is 11.8 MB, past tonic's default of 4 MiB.
            let mut client =
                PolicySyncClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
            let mut request = tonic::Request::new(ReceiverStream::new(rx));
            let value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .context("a token that fits in a header")?;
            request.metadata_mut().insert("authorization", value);
            let response = client
                .sync(request)
                .await
                .with_context(|| format!("open the PolicySync stream at {url}"))?;
            anyhow::Ok(response.into_inner())
        })?;
        Ok(Self {
            runtime,
            tx: Some(tx),
            inbound: Some(inbound),
            node: node.to_owned(),
            applied: from,
            auto: None,
            seen: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The next update, within `timeout`.
    pub fn next_update(&mut self, timeout: Duration) -> Result<pb::Update> {
        let Some(inbound) = self.inbound.as_mut() else {
            bail!("the client answers updates by itself (auto_ack)");
        };
        let message = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, inbound.message()).await })
            .with_context(|| format!("no PolicySync update within {timeout:?}"))?
            .context("the PolicySync stream failed")?
            .context("the operator ended the PolicySync stream")?;
        match message.message {
            Some(pb::operator_message::Message::Update(u)) => {
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Seen::from_update(&u));
                Ok(u)
            }
            None => bail!("an OperatorMessage without an update"),
        }
    }

    /// Receives updates, ACKing each, until `done` holds for one; returns what was seen.
    pub fn ack_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Seen) -> bool,
    ) -> Result<Vec<Seen>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let update = self.next_update(left)?;
            let s = Seen::from_update(&update);
            self.ack(&update)?;
            let finished = done(&s);
            seen.push(s);
            if finished {
                return Ok(seen);
            }
        }
    }

    /// ACKs `update`.
    pub fn ack(&mut self, update: &pb::Update) -> Result<()> {
        self.send(Out::Ack(pb::Ack {
            version: update.version,
            nonce: update.nonce,
        }))?;
        self.applied = Resume {
            lineage: update.lineage.clone(),
            version: update.version,
        };
        Ok(())
    }

    /// NACKs `update` with `error`.
    pub fn nack(&mut self, update: &pb::Update, error: &str) -> Result<()> {
        self.send(Out::Nack(pb::Nack {
            version: update.version,
            nonce: update.nonce,
            error: error.to_owned(),
        }))
    }

    fn send(&self, message: Out) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .context("the client answers updates by itself (auto_ack)")?;
        self.runtime
            .block_on(tx.send(pb::DataplaneMessage {
                message: Some(message),
            }))
            .context("the PolicySync stream is closed")
    }

    /// From now on ACKs every update in the background, as a healthy dataplane does.
    pub fn auto_ack(&mut self) -> Result<()> {
        let (Some(tx), Some(mut inbound)) = (self.tx.take(), self.inbound.take()) else {
            bail!("auto_ack is already on");
        };
        let seen = self.seen.clone();
        self.auto = Some(self.runtime.spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let Some(pb::operator_message::Message::Update(u)) = message.message else {
                    continue;
                };
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Seen::from_update(&u));
                let ack = pb::DataplaneMessage {
                    message: Some(Out::Ack(pb::Ack {
                        version: u.version,
                        nonce: u.nonce,
                    })),
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        }));
        Ok(())
    }

    /// Every update received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ends the stream (the dataplane goes away).
    pub fn disconnect(mut self) -> Resume {
        self.close();
        self.applied.clone()
    }

    fn close(&mut self) {
        if let Some(task) = self.auto.take() {
            task.abort();
        }
        self.tx = None;
        self.inbound = None;
    }
}

impl Drop for SyncClient {
    fn drop(&mut self) {
        self.close();
    }
}
