//! A real `nats-server` with JetStream on free 127.0.0.1 ports, killed and restarted at will.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server -js` with its store in a temporary directory.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
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
            store: tempfile::tempdir().expect("a temporary JetStream store"),
        };
        nats.spawn().await;
        nats
    }

    async fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-js"])
            .args(["-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({e}): the stream tests need it; install the Debian \
                     package nats-server (scripts/install-tools.sh does)"
                )
            });
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < until, "nats-server did not listen in 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A JetStream context on a client that reconnects forever.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None::<usize>)
            .reconnect_delay_callback(|_| Duration::from_millis(200))
            .connect(self.url())
            .await
            .expect("a NATS connection");
        async_nats::jetstream::new(client)
    }

    /// SIGKILL: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the server flushes its store and goes. (A `kill -9` of a single server may
    /// lose what it acknowledged last: its file store writes behind; a clustered JetStream
    /// with `replicas: 3` is what survives that.)
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
