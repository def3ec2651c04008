//! A throwaway `nats-server -js` for the examples that measure the bus (`bus_latency`,
//! `durable_bench`): on a free port, its store in a temporary directory, gone when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The server and its store, removed when dropped.
pub struct Server {
    child: Child,
    _store: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `nats-server -js` on `port` and waits until it accepts connections.
pub fn nats_server(port: u16) -> Server {
    let dir = tempfile::tempdir().expect("a temporary store");
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-js", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server on the PATH (scripts/install-tools.sh builds it)");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, _store: dir }
}
