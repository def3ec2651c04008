//! What the hostile tests share beyond the process harness: a scratch manifest directory of
//! two tenants, idle sockets held open, and a legitimate pub/sub with real clients.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use crate::support::{SENSOR_KEY, Start, StartOptions, examples, mosquitto_sub, tempdir};

/// A scratch root with a copy of the example manifests in `manifests/` and an empty
/// `state/`, for a test that edits them.
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn with_examples(tag: &str) -> Self {
        let root = tempdir(&format!("hostile-{tag}"));
        let manifests = root.join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifest dir");
        for entry in std::fs::read_dir(examples()).expect("examples") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                std::fs::copy(&path, manifests.join(path.file_name().expect("name")))
                    .expect("copy example");
            }
        }
        Self { root }
    }

    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Writes (or replaces) one manifest file.
    pub fn write(&self, name: &str, yaml: &str) {
        std::fs::write(self.manifests().join(name), yaml).expect("write manifest");
    }

    /// `fleetward start` over this scratch directory, with `options` applied.
    pub fn start(&self, options: impl FnOnce(StartOptions) -> StartOptions) -> Start {
        options(StartOptions::new(&self.manifests(), &self.state())).run()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Opens up to `n` TCP connections to `addr` that send nothing, and keeps them open while
/// held. Stops early when the client side runs out (the count says how many).
pub fn idle_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    held
}

/// `mosquitto_pub` of one QoS 1 message as `user` with `key`; whether it succeeded.
pub fn mosquitto_pub(addr: SocketAddr, user: &str, key: &str, topic: &str, message: &str) -> bool {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-u", user, "-P", key, "-q", "1", "-t", topic, "-m", message])
        .status()
        .expect("mosquitto_pub is installed")
        .success()
}

/// A legitimate subscriber (`acme/dashboard`) receives what `acme/sensor-1` publishes on
/// the examples' telemetry channel, within `within` of being asked.
pub fn legitimate_pub_sub_works(start: &Start, within: Duration) {
    let deadline = Instant::now() + within;
    let key = start.key_of("acme/dashboard");
    let sub = mosquitto_sub(start.mqtt, "acme/dashboard", &key, "m/acme/c/telemetry/#");
    let word = format!("still-served-{}", std::process::id());
    assert!(
        mosquitto_pub(
            start.mqtt,
            "acme/sensor-1",
            SENSOR_KEY,
            "m/acme/c/telemetry/status",
            &word
        ),
        "a legitimate publish was refused"
    );
    sub.expect(
        &word,
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1)),
    );
}

/// Waits until `check` holds, polling every 50 ms; panics with `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file's permission bits.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}
