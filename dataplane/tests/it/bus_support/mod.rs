//! A real `nats-server` for the bus tests (JetStream on, monitoring on), and dataplanes on it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetward_dataplane::bus::NatsConfig;
use fleetward_dataplane::{Dataplane, RunningDataplane};
use fleetward_policy::Snapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A `nats-server` on free 127.0.0.1 ports, with JetStream in a temporary store.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub monitor: u16,
    store: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

impl Nats {
    pub async fn start() -> Self {
        let mut nats = Self {
            child: None,
            port: free_port(),
            monitor: free_port(),
            store: tempfile::tempdir().expect("a temporary JetStream store"),
        };
        nats.spawn().await;
        nats
    }

    async fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-js"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({e}): the bus tests need it; install the Debian \
                     package nats-server (scripts/install-tools.sh does)"
                )
            });
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while self.get("/healthz?js-enabled-only=true").await.is_none() {
            assert!(
                Instant::now() < until,
                "nats-server did not become healthy in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A GET on the monitoring port; the body of a 200 answer.
    pub async fn get(&self, path: &str) -> Option<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.monitor))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        let (head, body) = body.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_owned())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
    }

    /// The bus subjects (`m.…`) a dataplane's NATS connection subscribes to now.
    pub async fn subjects_of(&self, node: &str) -> Vec<String> {
        let body = self
            .get("/connz?subs=1&limit=1024")
            .await
            .expect("NATS monitoring answers /connz");
        let v: serde_json::Value = serde_json::from_str(&body).expect("/connz is JSON");
        let name = format!("fleetward-dataplane {node}");
        let mut out: Vec<String> = v["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == name.as_str())
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|s| s.as_str().map(str::to_owned))
            .filter(|s| s.starts_with("m."))
            .collect();
        out.sort();
        out
    }

    /// Waits until `node` subscribes to exactly `want` on NATS.
    pub async fn wait_subjects(&self, node: &str, want: &[&str]) {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.subjects_of(node).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < until,
                "{node} subscribes on NATS to {got:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A dataplane on the bus, with its node id.
pub struct Pod {
    pub node: String,
    pub policy: watch::Sender<Arc<Snapshot>>,
    pub dataplane: RunningDataplane,
    pub addr: SocketAddr,
}

impl Pod {
    pub async fn start(node: &str, nats_urls: Vec<String>) -> Self {
        Self::start_with(node, nats_urls, fleetward_dataplane::MqttConfig::default()).await
    }

    /// [`Pod::start`] with the front-end's limits given.
    pub async fn start_with(
        node: &str,
        nats_urls: Vec<String>,
        mqtt: fleetward_dataplane::MqttConfig,
    ) -> Self {
        let (policy, rx) = watch::channel(crate::common::snapshot(1, crate::common::resources()));
        let dataplane = Dataplane::new(rx)
            .mqtt_config(mqtt)
            .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .admin_listen(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .nats(Some(NatsConfig::new(nats_urls, node)))
            .start()
            .await
            .expect("dataplane starts");
        let addr = dataplane.mqtt_addr;
        Self {
            node: node.to_owned(),
            policy,
            dataplane,
            addr,
        }
    }

    /// Waits until the bus is connected (or not).
    pub async fn wait_connected(&self, connected: bool) {
        let until = Instant::now() + Duration::from_secs(15);
        while self.dataplane.metrics().bus_is_connected() != connected {
            assert!(
                Instant::now() < until,
                "{}: the bus did not become connected={connected} in 15 s",
                self.node
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
