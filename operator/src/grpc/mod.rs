//! The PolicySync gRPC server: streams the index's snapshot and deltas to every dataplane.
//!
//! [`serve`] runs it on a listener until a shutdown future resolves, then ends every stream
//! (dataplanes reconnect to another replica) and returns. Every stream is authenticated by a
//! shared token and, when certificates are given, by mutual TLS. Start it once the index
//! reflects the cluster (watches synced): a dataplane that connects gets what the index holds.
//!
//! The server reads a [`PolicySource`], never the index itself, and holds no lock of it while
//! it encodes. The push path: a commit that makes a new version announces it. Each stream then
//! takes, under the index's read lock, only the `Arc<Delta>`s from its dataplane's version to
//! the current one, and encodes them itself, since they depend on where its dataplane is. A
//! full snapshot is encoded once per version, on a blocking thread, by the first stream that
//! needs it: it takes an `Arc<Snapshot>` of the index (copied under the read lock, once per
//! version), encodes it with no lock held, and keeps the protobuf until a newer version is
//! asked for. Streams asking meanwhile wait for that encoding; every stream sends its own copy
//! of the shared protobuf. A feeder's update or the batcher's commit waits at most for that one
//! copy, never for an encoding.

mod encoded;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
mod session;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetward_proto::pb;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::dataplanes::Dataplanes;
use crate::source::PolicySource;

/// The default cap on one PolicySync message, either way.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How the PolicySync server runs. Its `Debug` output never shows the token.
#[derive(Clone)]
pub struct ServerConfig {
    /// The shared token dataplanes send as `authorization: Bearer <token>`; `None` accepts
    /// every stream (only for a loopback or mTLS-only setup).
    pub token: Option<String>,
    /// Serve TLS (and require client certificates when a client CA is given).
    pub tls: Option<ServerTls>,
    /// The largest message sent or received, in bytes.
    pub max_message_size: usize,
    /// How often an idle connection is pinged, so dead dataplanes are noticed.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long a new stream may wait before its Hello.
    pub hello_timeout: Duration,
    /// How long shutdown waits for connections to close after every stream ended.
    pub drain_timeout: Duration,
    /// What makes Things for dataplanes' fleet provisioning requests; `None` answers them
    /// UNAVAILABLE.
    pub provisioner: Option<Arc<dyn crate::provisioning::Provisioner>>,
    /// The file of this replica's saved state, which `SavedState` sends to a new replica;
    /// `None` answers it UNAVAILABLE.
    pub saved_state: Option<PathBuf>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("max_message_size", &self.max_message_size)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("hello_timeout", &self.hello_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("provisioner", &self.provisioner.is_some())
            .field("saved_state", &self.saved_state)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            tls: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            hello_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            provisioner: None,
            saved_state: None,
        }
    }
}

/// The server's TLS material, PEM-encoded.
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
    /// When given, every dataplane must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the PEM files.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, ServeError> {
        Ok(Self {
            cert_pem: read_file(cert)?,
            key_pem: read_file(key)?,
            client_ca_pem: client_ca.map(read_file).transpose()?,
        })
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ServeError> {
    Ok(fleetward_process::read_file(path)?)
}

/// Why the PolicySync server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A certificate or key file could not be read.
    #[error(transparent)]
    ReadFile(#[from] fleetward_process::ReadFileError),
    /// The TLS material was refused.
    #[error("the PolicySync TLS certificate, key or client CA is not usable: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The listener's address could not be read.
    #[error("cannot read the PolicySync listener's address: {0}")]
    Listener(#[source] std::io::Error),
    /// The server failed.
    #[error("the PolicySync server failed: {0}")]
    Transport(#[source] tonic::transport::Error),
}

/// Serves PolicySync from `source` on `listener` until `shutdown` resolves; then ends every
/// stream, waits up to `config.drain_timeout` for connections to close, and returns.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    source: Arc<dyn PolicySource>,
    dataplanes: Arc<Dataplanes>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (drain_tx, drain_rx) = watch::channel(false);
    let service = PolicySyncService::new(
        source,
        dataplanes,
        &config,
        drain_rx,
        encoded::EncodedSnapshots::default(),
    );
    serve_service(listener, config, service, drain_tx, shutdown).await
}

/// Serves `service`, whose streams end when `drain` turns true.
async fn serve_service(
    listener: TcpListener,
    config: ServerConfig,
    service: PolicySyncService,
    drain_tx: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let local: SocketAddr = listener.local_addr().map_err(ServeError::Listener)?;
    if config.token.is_none()
        && config
            .tls
            .as_ref()
            .is_none_or(|t| t.client_ca_pem.is_none())
    {
        tracing::warn!(
            %local,
            "PolicySync accepts unauthenticated dataplanes: give a token or a client CA"
        );
    }
    let grpc = wire::Routes::new(service, config.max_message_size);
    let grpc = InterceptedService::new(grpc, TokenCheck::new(config.token.as_deref()));
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .tcp_keepalive(Some(config.keepalive_interval));
    if let Some(tls) = &config.tls {
        let mut t =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        if let Some(ca) = &tls.client_ca_pem {
            t = t.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(t).map_err(ServeError::Tls)?;
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let drain_timeout = config.drain_timeout;
    let mut drained = drain_tx.subscribe();
    let signal = async move {
        shutdown.await;
        tracing::info!(%local, "PolicySync is shutting down: ending every stream");
        let _ = drain_tx.send(true);
    };
    tracing::info!(%local, tls = config.tls.is_some(), "serving PolicySync");
    let server = builder
        .add_service(grpc)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::select! {
        r = server => r.map_err(ServeError::Transport),
        () = async {
            let _ = drained.wait_for(|d| *d).await;
            tokio::time::sleep(drain_timeout).await;
        } => {
            tracing::warn!(%local, "PolicySync connections still open after the drain timeout; closing");
            Ok(())
        }
    }
}

/// Checks the shared token in constant time.
#[derive(Clone)]
struct TokenCheck {
    expected: Option<Arc<[u8]>>,
}

impl TokenCheck {
    fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| Arc::from(format!("Bearer {t}").into_bytes())),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(given.ct_eq(expected)) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong PolicySync token: send `authorization: Bearer <token>` with \
                 the token the operator was given",
            ))
        }
    }
}

/// The tonic service: one [`session::Session`] task per stream.
pub(crate) struct PolicySyncService {
    shared: Arc<session::SessionContext>,
    provisioner: Option<Arc<dyn crate::provisioning::Provisioner>>,
    saved_state: Option<PathBuf>,
    state_sends: Arc<tokio::sync::Semaphore>,
}

impl PolicySyncService {
    fn new(
        source: Arc<dyn PolicySource>,
        dataplanes: Arc<Dataplanes>,
        config: &ServerConfig,
        drain: watch::Receiver<bool>,
        snapshots: encoded::EncodedSnapshots,
    ) -> Self {
        Self {
            shared: Arc::new(session::SessionContext {
                source,
                snapshots,
                dataplanes,
                lineage: new_lineage(),
                max_message_size: config.max_message_size,
                hello_timeout: config.hello_timeout,
                drain,
                active: Mutex::new(HashMap::new()),
                next_session: Default::default(),
            }),
            provisioner: config.provisioner.clone(),
            saved_state: config.saved_state.clone(),
            state_sends: Arc::new(tokio::sync::Semaphore::new(MAX_STATE_SENDS)),
        }
    }
}

/// A random id for this server's index; see `Update.lineage` in the protocol.
fn new_lineage() -> String {
    match getrandom::u64() {
        Ok(n) => format!("{n:016x}"),
        // Without randomness, a time-based id still differs between replicas and restarts.
        Err(_) => format!(
            "t{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<wire::Outgoing, Status>> + Send>>;
type StateStream = Pin<Box<dyn Stream<Item = Result<pb::StateChunk, Status>> + Send>>;

/// The size of one `StateChunk`.
const STATE_CHUNK: usize = 1024 * 1024;
/// How many `SavedState` calls are sent at once; more are refused with RESOURCE_EXHAUSTED
/// (the new replica lists). Each holds up to five chunks in memory while its peer reads.
pub const MAX_STATE_SENDS: usize = 2;

impl PolicySyncService {
    /// A Sync stream: one session, which sends the updates the dataplane needs.
    async fn sync(
        &self,
        request: Request<Streaming<pb::DataplaneMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let hello = session::read_hello(&mut inbound, self.shared.hello_timeout).await?;
        let (tx, rx) = mpsc::channel(4);
        let session = session::Session::start(self.shared.clone(), hello, peer, tx);
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// A Provision call: a Thing made from a certificate signing request, when this operator
    /// makes them.
    async fn provision(
        &self,
        request: Request<pb::ProvisionRequest>,
    ) -> Result<Response<pb::ProvisionResponse>, Status> {
        use crate::provisioning::Failure;
        let Some(provisioner) = &self.provisioner else {
            return Err(Status::unavailable(
                "this operator makes no Things for provisioning requests",
            ));
        };
        let r = request.into_inner();
        let request = crate::provisioning::Request {
            tenant: r.tenant,
            claim: r.claim,
            thing: r.thing,
            csr_pem: r.csr_pem,
        };
        match provisioner.provision(request).await {
            Ok(signed) => Ok(Response::new(pb::ProvisionResponse {
                certificate_pem: signed.certificate_pem,
                ca_pem: signed.ca_pem,
            })),
            Err(e) => Err(match &e {
                Failure::Exists(_) => Status::already_exists(e.to_string()),
                Failure::LimitReached(_) => Status::resource_exhausted(e.to_string()),
                Failure::Claim(_) => Status::failed_precondition(e.to_string()),
                Failure::BadRequest(_) => Status::invalid_argument(e.to_string()),
                Failure::Unavailable(_) => Status::unavailable(e.to_string()),
            }),
        }
    }
}

impl PolicySyncService {
    /// A SavedState call: the state file's bytes, read from one open file, so a save that
    /// replaces the file meanwhile does not mix two states.
    async fn saved_state(&self) -> Result<Response<StateStream>, Status> {
        let Some(path) = &self.saved_state else {
            return Err(Status::unavailable(
                "this operator keeps no saved state (no --state-dir): list instead",
            ));
        };
        let mut file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Status::unavailable(
                    "this operator has not saved its state yet: list instead",
                ));
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot open the saved state for a peer");
                return Err(Status::unavailable(format!(
                    "this operator cannot read its saved state: {e}"
                )));
            }
        };
        let Ok(sending) = self.state_sends.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "this operator is already sending its saved state {MAX_STATE_SENDS} times: \
                 list instead"
            )));
        };
        tracing::info!(file = %path.display(), "sending the saved state to a new replica");
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let _sending = sending;
            loop {
                let mut data = Vec::with_capacity(STATE_CHUNK);
                let chunk = match (&mut file)
                    .take(STATE_CHUNK as u64)
                    .read_to_end(&mut data)
                    .await
                {
                    Ok(0) => return,
                    Ok(_) => Ok(pb::StateChunk { data }),
                    Err(e) => Err(Status::unavailable(format!(
                        "reading the saved state failed: {e}"
                    ))),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
