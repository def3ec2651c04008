//! What tests of the PolicySync server build on: manifests applied to an index, and the
//! server running on 127.0.0.1 until stopped. Used by this crate's tests and by the
//! workspace's operator↔dataplane tests (`tests/it/sync.rs`, feature `test-fixtures`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{ServeError, ServerConfig, serve};
use crate::dataplanes::Dataplanes;
use crate::manifest::{self, Document};
use crate::shared::SharedIndex;

/// The shared token the test servers require.
pub const TOKEN: &str = "s3cret-token";
/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A Tenant manifest, ending in `---`.
pub fn tenant(name: &str) -> String {
    format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: Tenant\nmetadata:\n  name: {name}\n  generation: 1\nspec: {{}}\n---\n"
    )
}

/// A Channel manifest, ending in `---`.
pub fn channel(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: Channel\nmetadata:\n  name: {name}\n  namespace: {ns}\n  generation: 1\nspec: {{}}\n---\n"
    )
}

/// Applies manifests and commits them as one version; returns it. Panics on a manifest that
/// does not parse.
pub fn apply(index: &SharedIndex, yaml: &str) -> u64 {
    index.update(|idx| {
        for document in manifest::read(yaml) {
            if let Document::Object(o) = document.expect("valid manifest") {
                idx.apply(*o);
            }
        }
    });
    index.commit().expect("the change commits").version
}

/// The server config the tests use: the shared [`TOKEN`], defaults otherwise.
pub fn server_config() -> ServerConfig {
    ServerConfig {
        token: Some(TOKEN.into()),
        ..ServerConfig::default()
    }
}

/// A PolicySync server on 127.0.0.1, serving an index of its own.
pub struct TestOperator {
    pub addr: SocketAddr,
    pub index: Arc<SharedIndex>,
    pub dataplanes: Arc<Dataplanes>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestOperator {
    /// Serves tenant `acme` with channel `tele`.
    pub async fn start(config: ServerConfig) -> Self {
        let index = Arc::new(SharedIndex::default());
        apply(&index, &(tenant("acme") + &channel("acme", "tele")));
        Self::start_with(config, index).await
    }

    /// Serves the given index.
    pub async fn start_with(config: ServerConfig, index: Arc<SharedIndex>) -> Self {
        let dataplanes = Arc::new(Dataplanes::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(
            listener,
            config,
            index.clone(),
            dataplanes.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            index,
            dataplanes,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The URL a dataplane connects to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for a clean shutdown.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("the operator stops in time")
                .expect("no panic")
                .expect("clean shutdown");
        }
    }
}
