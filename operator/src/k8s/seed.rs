//! A new replica that starts from a peer's saved state instead of listing.
//!
//! A replica whose state directory holds no saved state (a new pod: the chart's emptyDir does
//! not outlive it) would list every object, and at 100k objects the API server alone takes
//! 8–11 s to stream them. With `--seed-from`, it first asks a running replica for its saved
//! state (PolicySync's `SavedState`, authenticated as dataplanes are: the same token, and the
//! replica's own certificate under mutual TLS), writes it as its own file and starts as a
//! restart does: it restores the file and resumes each kind's watch from the resourceVersion
//! saved with it ([`super::resume`]). The chart points `--seed-from` at the operator's
//! Service, which only routes to ready replicas, so a new pod never asks itself.
//!
//! Whatever goes wrong (no replica ready yet, a refused token, an older operator, a transfer
//! cut short) is logged and the replica lists, as without `--seed-from`. A seeded state older
//! than the API server's history is listed kind by kind, as a restart's is.

use std::path::Path;
use std::time::{Duration, Instant};

use fleetward_proto::pb;
use fleetward_proto::pb::policy_sync_client::PolicySyncClient;
use tokio::io::AsyncWriteExt as _;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

use super::resume;

/// How long connecting to the peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the whole transfer may take: past it, listing is as quick.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The replica to start from, and how to authenticate to it.
#[derive(Clone)]
pub struct Peer {
    /// Its PolicySync URL: `http://` or `https://`.
    pub url: String,
    /// The PolicySync token, sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// For an `https://` URL: the CA its certificate chains to, and this replica's own
    /// certificate and key for mutual TLS.
    pub tls: Option<PeerTls>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// TLS material to reach a peer, PEM-encoded.
#[derive(Clone)]
pub struct PeerTls {
    /// The CA the peer's certificate chains to.
    pub ca_pem: Vec<u8>,
    /// This replica's certificate and key, presented when the peer asks for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Why a peer's state was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("the peer URL {url:?} is not usable: {source}")]
    Endpoint {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot reach the peer: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("the peer refused ({:?}): {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("the PolicySync token is not a valid header value")]
    Token,
    #[error("the peer took longer than {TIMEOUT:?}")]
    Timeout,
    #[error("cannot write the state file: {0}")]
    Write(#[source] std::io::Error),
}

/// Writes `peer`'s saved state as the state file of `dir`, unless `dir` already holds one;
/// returns the bytes written, or `None` when there was a file. A transfer that fails leaves
/// no file.
pub async fn seed(dir: &Path, peer: &Peer) -> Result<Option<u64>, SeedError> {
    let file = resume::file(dir);
    if tokio::fs::try_exists(&file).await.unwrap_or(true) {
        return Ok(None);
    }
    let tmp = resume::scratch(dir, "seed");
    let fetched = tokio::time::timeout(TIMEOUT, fetch(peer, &tmp)).await;
    let outcome = match fetched {
        Ok(Ok(bytes)) => tokio::fs::rename(&tmp, &file)
            .await
            .map(|()| Some(bytes))
            .map_err(SeedError::Write),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SeedError::Timeout),
    };
    if outcome.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    outcome
}

/// Streams `peer`'s state into `to`; the bytes written.
async fn fetch(peer: &Peer, to: &Path) -> Result<u64, SeedError> {
    let channel = endpoint(peer)?
        .connect()
        .await
        .map_err(SeedError::Connect)?;
    let auth: Option<MetadataValue<_>> = match &peer.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| SeedError::Token)?,
        ),
        None => None,
    };
    let mut client =
        PolicySyncClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            if let Some(a) = &auth {
                r.metadata_mut().insert("authorization", a.clone());
            }
            Ok(r)
        });
    let mut chunks = client
        .saved_state(pb::SavedStateRequest {})
        .await
        .map_err(SeedError::Refused)?
        .into_inner();
    let mut out = tokio::fs::File::create(to)
        .await
        .map_err(SeedError::Write)?;
    let mut bytes = 0;
    while let Some(chunk) = chunks.message().await.map_err(SeedError::Refused)? {
        out.write_all(&chunk.data).await.map_err(SeedError::Write)?;
        bytes += chunk.data.len() as u64;
    }
    out.flush().await.map_err(SeedError::Write)?;
    Ok(bytes)
}

fn endpoint(peer: &Peer) -> Result<Endpoint, SeedError> {
    let err = |source| SeedError::Endpoint {
        url: peer.url.clone(),
        source,
    };
    let mut e = Endpoint::from_shared(peer.url.clone())
        .map_err(err)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(tls) = &peer.tls {
        let identity = tls.identity.as_ref().map(|(c, k)| (&c[..], &k[..]));
        let t = fleetward_proto::client_tls(&tls.ca_pem, identity, None);
        e = e.tls_config(t).map_err(err)?;
    }
    Ok(e)
}

/// Seeds `dir` from `peer` when it holds no state, and logs what happened; a failure only
/// means the kinds are listed.
pub async fn seed_logged(dir: &Path, peer: &Peer) {
    let started = Instant::now();
    match seed(dir, peer).await {
        Ok(None) => {}
        Ok(Some(bytes)) => tracing::info!(
            peer = %peer.url,
            bytes,
            took_ms = started.elapsed().as_millis(),
            "seeded the state from a running replica"
        ),
        Err(SeedError::Refused(status)) if status.code() == tonic::Code::Unavailable => {
            tracing::info!(peer = %peer.url, reason = status.message(), "no state to start from; listing every kind");
        }
        Err(e @ SeedError::Connect(_)) => {
            tracing::info!(peer = %peer.url, reason = %e, "no running replica to start from; listing every kind");
        }
        Err(e) => {
            tracing::warn!(peer = %peer.url, error = %e, "cannot start from a running replica's state; listing every kind");
        }
    }
}

#[cfg(test)]
mod tests;
