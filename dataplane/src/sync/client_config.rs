//! How the sync client connects: operator endpoints, TLS, message size, and what fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default longest wait between reconnect rounds ([`SyncConfig::backoff_max`]).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(1500);

/// The default cap on one PolicySync message, either way.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// How the client connects. Its `Debug` output never shows the token.
#[derive(Clone)]
pub struct SyncConfig {
    /// Operator URLs (`http://host:port` or `https://…`), tried in turn.
    pub endpoints: Vec<String>,
    /// This dataplane's node id (its pod name).
    pub node_id: String,
    /// Where the last-known-good snapshot is kept; `None` keeps nothing across restarts.
    pub state_dir: Option<PathBuf>,
    /// The shared token, sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// TLS towards the operators (required for `https://` endpoints).
    pub tls: Option<ClientTls>,
    /// The largest message sent or received, in bytes.
    pub max_message_size: usize,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is given up.
    pub keepalive_timeout: Duration,
    /// The first wait after every endpoint failed; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// The longest wait between rounds of attempts (default 1.5 s, jittered down to half):
    /// while the stream is down no revocation reaches the pod, so once an operator is back the
    /// pod must be too within about 2 s. A round costs one TCP connect per endpoint.
    pub backoff_max: Duration,
}

impl std::fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncConfig")
            .field("endpoints", &self.endpoints)
            .field("node_id", &self.node_id)
            .field("state_dir", &self.state_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("max_message_size", &self.max_message_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

impl SyncConfig {
    /// A configuration with defaults for everything but the endpoints and node id.
    pub fn new(endpoints: Vec<String>, node_id: impl Into<String>) -> Self {
        Self {
            endpoints,
            node_id: node_id.into(),
            state_dir: None,
            token: None,
            tls: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            backoff_min: Duration::from_millis(200),
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }
}

/// Splits `--operator URL[,URL…]` into endpoints, dropping blanks.
pub fn parse_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// TLS towards the operators, PEM-encoded.
#[derive(Clone)]
pub struct ClientTls {
    /// The CA that signed the operators' certificates.
    pub ca_pem: Vec<u8>,
    /// This dataplane's certificate and key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to expect in the operators' certificates, if not the URL's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the PEM files; `cert` and `key` go together.
    pub fn from_files(
        ca: &Path,
        cert_and_key: Option<(&Path, &Path)>,
        domain: Option<String>,
    ) -> Result<Self, SyncError> {
        let identity = match cert_and_key {
            Some((c, k)) => Some((read_file(c)?, read_file(k)?)),
            None => None,
        };
        Ok(Self {
            ca_pem: read_file(ca)?,
            identity,
            domain,
        })
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, SyncError> {
    Ok(fleetward_process::read_file(path)?)
}

/// Why the client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No operator endpoint was given.
    #[error("no operator endpoint: give --operator URL[,URL…]")]
    NoEndpoint,
    /// The node id is empty.
    #[error("the dataplane needs a node id (its pod name) to sync policy")]
    NoNodeId,
    /// An endpoint is not a usable URL.
    #[error("operator endpoint {url:?} is not usable: {source}")]
    Endpoint {
        /// The URL as given.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A TLS file could not be read.
    #[error(transparent)]
    ReadFile(#[from] fleetward_process::ReadFileError),
}
