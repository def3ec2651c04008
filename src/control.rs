//! `fleetward start`'s `/can-i` on its admin API, through which `fleetward can-i` answers from
//! exactly the policy the running server serves (a broken file's last good version included)
//! rather than from a fresh read of the files.
//!
//! It answers only requests that carry the token written, with the admin API's address, to
//! `server.json` in the private state directory: whoever can read the state directory's keys
//! may ask, nobody else, whatever address the admin API listens on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetward_policy::{KeyDigest, Snapshot};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::inspect::{Answer, Question};

/// Where a running `start` records its admin API and token, in the state directory.
const SERVER_FILE: &str = "server.json";
/// How long `can-i` waits for the server's answer (generous: a loaded machine).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The content of `server.json`.
#[derive(Debug, Serialize, Deserialize)]
struct ServerFile {
    pid: u32,
    url: String,
    token: String,
    manifests: PathBuf,
}

/// A running `fleetward start`, as `can-i` finds it in the state directory.
#[derive(Debug)]
pub struct Server {
    /// Its process.
    pub pid: u32,
    /// Its admin API, `http://127.0.0.1:<port>`.
    pub url: String,
    token: String,
}

impl Server {
    /// The `fleetward start` running on `state_dir`, if one does. An error when one runs but
    /// serves another manifest directory than `manifests` (its answer would not be about them).
    pub fn running(state_dir: &Path, manifests: &Path) -> anyhow::Result<Option<Self>> {
        let path = state_dir.join(SERVER_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file: ServerFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a server record", path.display()))?;
        // A record a killed process left behind.
        if !crate::local::process_alive(file.pid) {
            return Ok(None);
        }
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        if !same(&file.manifests, manifests) {
            anyhow::bail!(
                "the fleetward start running on {} (pid {}) serves {}, not {}",
                state_dir.display(),
                file.pid,
                file.manifests.display(),
                manifests.display()
            );
        }
        Ok(Some(Self {
            pid: file.pid,
            url: file.url,
            token: file.token,
        }))
    }

    /// Asks the server.
    pub async fn ask(&self, question: &Question) -> anyhow::Result<Answer> {
        use http_body_util::BodyExt as _;
        let query = serde_urlencoded::to_string(question).context("encoding the question")?;
        let request = hyper::Request::get(format!("{}/can-i?{query}", self.url))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .context("building the request")?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let exchange = async {
            let response = client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(ASK_TIMEOUT, exchange)
            .await
            .with_context(|| format!("no answer from {} within {ASK_TIMEOUT:?}", self.url))?
            .with_context(|| format!("asking {}", self.url))?;
        if !status.is_success() {
            anyhow::bail!(
                "{} answered {status}: {}",
                self.url,
                String::from_utf8_lossy(&body).trim()
            );
        }
        serde_json::from_slice(&body).with_context(|| format!("{} answered no answer", self.url))
    }
}

/// The record of a running `start` in its state directory, removed when dropped.
pub struct Record {
    path: PathBuf,
}

impl Drop for Record {
    fn drop(&mut self) {
        // Only our own record: another start may have taken the state directory over since.
        let ours = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ServerFile>(&b).ok())
            .is_some_and(|f| f.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Clone)]
struct CanIState {
    policy: watch::Receiver<Arc<Snapshot>>,
    token: KeyDigest,
}

/// `/can-i`, answering from `policy` to requests with the token that [`Control::record`]
/// writes down.
pub struct Control {
    token: String,
    /// The route, for the admin listener.
    pub routes: axum::Router,
}

impl Control {
    /// The route and a fresh token.
    pub fn new(policy: watch::Receiver<Arc<Snapshot>>) -> anyhow::Result<Self> {
        let token = fleetward_policy::generate_thing_key().context("making the control token")?;
        let shared = CanIState {
            policy,
            token: KeyDigest::of(token.as_bytes()),
        };
        let routes = axum::Router::new()
            .route("/can-i", axum::routing::get(can_i))
            .with_state(shared);
        Ok(Self { token, routes })
    }

    /// Records the admin API at `admin` (where the route is served) and the token in
    /// `state_dir`, for `can-i` to find.
    pub fn record(
        &self,
        admin: SocketAddr,
        state_dir: &Path,
        manifests: &Path,
    ) -> anyhow::Result<Record> {
        // An admin API on every address is asked on loopback.
        let host = match admin.ip() {
            ip if ip.is_unspecified() && ip.is_ipv6() => {
                SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], admin.port()))
            }
            ip if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], admin.port())),
            _ => admin,
        };
        let path = state_dir.join(SERVER_FILE);
        let file = ServerFile {
            pid: std::process::id(),
            url: format!("http://{host}"),
            token: self.token.clone(),
            manifests: std::path::absolute(manifests).unwrap_or_else(|_| manifests.to_owned()),
        };
        write_private(&path, &serde_json::to_vec_pretty(&file)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Record { path })
    }
}

async fn can_i(
    State(shared): State<CanIState>,
    headers: HeaderMap,
    Query(question): Query<Question>,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Digests compared, so that the comparison takes the same time however much matches.
    if token.map(|t| KeyDigest::of(t.as_bytes())) != Some(shared.token) {
        return (
            StatusCode::UNAUTHORIZED,
            "the token of server.json in the state directory is required\n",
        )
            .into_response();
    }
    let snapshot = shared.policy.borrow().clone();
    match crate::inspect::answer(&snapshot, &question) {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e:#}\n")).into_response(),
    }
}

/// Writes `bytes` to `path` with mode 0600, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_file_name(format!(".{SERVER_FILE}.tmp"));
    let mut f = fleetward_operator::directory::private_file(&tmp)?;
    std::io::Write::write_all(&mut f, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
