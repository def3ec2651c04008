//! Sockets, open files, connection counting and safe defaults (issue 17, rows "idle sockets,
//! no credentials" and "WebSocket streams", and the admin bind and state modes of "smaller").

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::harness::{
    Scratch, idle_sockets, legitimate_pub_sub_works, mode, mosquitto_pub, mosquitto_sub, wait_until,
};
use crate::support::bin;

/// The open-files limit the flood runs under: fast to exhaust, as in CI.
const NOFILE: usize = 512;

#[test]
fn an_idle_socket_flood_past_the_open_files_limit_leaves_the_process_serving() {
    let scratch = Scratch::with_examples("sockets-flood");
    let limit = format!("--nofile={NOFILE}:{NOFILE}");
    let mut start = scratch.start(|o| o.under(["prlimit", limit.as_str()]));
    // Warm up (the first clients allocate what every later one reuses), then measure.
    legitimate_pub_sub_works(&start, Duration::from_secs(5));
    let rss_before = start.rss_kib();

    // More idle sockets than the process may hold files, on the MQTT port and then on the
    // HTTP port; each batch is held while a legitimate client gets in.
    for (what, addr) in [("MQTT", start.mqtt), ("HTTP", start.http)] {
        let flood = idle_sockets(addr, NOFILE + 200);
        assert!(
            start.alive(),
            "the process ended under an idle {what} flood"
        );
        assert!(
            flood.len() > NOFILE,
            "the test opened only {} sockets on the {what} port",
            flood.len()
        );
        legitimate_pub_sub_works(&start, Duration::from_secs(5));
        drop(flood);
    }
    assert!(start.alive(), "the process ended after the flood");

    // Within a second of the flood ending, a legitimate pub/sub is served.
    legitimate_pub_sub_works(&start, Duration::from_secs(1));
    // And the memory the flood took comes back (allowing the allocator some slack).
    let slack = rss_before / 4 + 8 * 1024;
    wait_until(
        Duration::from_secs(20),
        "RSS back near where it started",
        || start.rss_kib() <= rss_before + slack,
    );
}

#[test]
fn websocket_streams_count_against_the_tenants_connections() {
    let scratch = Scratch::with_examples("sockets-ws");
    let acme = std::fs::read_to_string(scratch.manifests().join("acme.yaml")).expect("acme");
    assert!(
        acme.contains("    maxChannels: 100\n"),
        "the example's limits changed"
    );
    scratch.write(
        "acme.yaml",
        &acme.replace(
            "    maxChannels: 100\n",
            "    maxChannels: 100\n    maxConnections: 3\n",
        ),
    );
    let start = scratch.start(|o| o);
    let key = start.key_of("acme/dashboard");
    let path = "/m/acme/c/telemetry/%23";
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut ws = ws_open(start.http, path, &key);
        assert_eq!(ws_close(&mut ws, Duration::from_millis(300)), None);
        held.push(ws);
    }
    // The fourth stream of the tenant is closed with 1008 and a reason.
    let mut fourth = ws_open(start.http, path, &key);
    match ws_close(&mut fourth, Duration::from_secs(5)) {
        Some((code, reason)) => {
            assert_eq!(code, 1008, "{reason}");
            assert!(reason.contains("maxConnections"), "{reason}");
        }
        None => panic!("a stream past the tenant's maxConnections stayed open"),
    }
    // Another tenant still connects, subscribes and receives.
    let dashboard = start.key_of("globex/dashboard");
    let sensor = start.key_of("globex/sensor-1");
    let sub = mosquitto_sub(
        start.mqtt,
        "globex/dashboard",
        &dashboard,
        "m/globex/c/telemetry/status",
    );
    assert!(mosquitto_pub(
        start.mqtt,
        "globex/sensor-1",
        &sensor,
        "status",
        "globex-still-served"
    ));
    sub.expect("globex-still-served", Duration::from_secs(5));
}

#[test]
fn admin_listeners_bind_loopback_by_default_and_state_is_private() {
    for command in ["start", "dataplane", "operator"] {
        let help = Command::new(bin())
            .args([command, "--help"])
            .output()
            .expect("fleetward runs");
        let text = String::from_utf8_lossy(&help.stdout);
        let admin = text
            // The option's own entry, not a mention of it in the command's description.
            .split("--admin-listen <")
            .nth(1)
            .and_then(|rest| rest.split("[default: ").nth(1))
            .and_then(|rest| rest.split(']').next())
            .unwrap_or_else(|| panic!("`fleetward {command} --help` names no default: {text}"));
        assert!(
            admin.starts_with("127.0.0.1:"),
            "`fleetward {command}` binds its admin listener to {admin} by default"
        );
    }

    let scratch = Scratch::with_examples("sockets-modes");
    let start = scratch.start(|o| o);
    // Generated keys, signing keys and the status report are all written by now.
    let _ = start.key_of("globex/sensor-1");
    wait_until(Duration::from_secs(10), "status.json written", || {
        scratch.state().join("status.json").exists()
    });
    assert_eq!(mode(&scratch.state()), 0o700, "the state directory");
    let mut files = 0;
    check_private(&scratch.state(), &mut files);
    assert!(files >= 2, "the state directory holds {files} files");
}

/// Every directory under `dir` is 0700 and every file 0600.
fn check_private(dir: &Path, files: &mut usize) {
    for entry in std::fs::read_dir(dir).expect("the state directory reads") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            assert_eq!(mode(&path), 0o700, "{}", path.display());
            check_private(&path, files);
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            *files += 1;
        }
    }
}

/// A WebSocket stream of `path` as the thing with `key`, its handshake answered 101.
fn ws_open(http: SocketAddr, path: &str, key: &str) -> TcpStream {
    let mut s = TcpStream::connect(http).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {http}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Thing {key}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).expect("writes");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => panic!(
                "the handshake ended early: {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// The close frame (code, reason) the server sends within `wait`; `None` when it sends none.
/// Other frames are skipped.
fn ws_close(s: &mut TcpStream, wait: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).expect("a timeout");
        let mut header = [0u8; 2];
        s.read_exact(&mut header).ok()?;
        let mut len = u64::from(header[1] & 0x7f);
        if len == 126 {
            let mut ext = [0u8; 2];
            s.read_exact(&mut ext).ok()?;
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            s.read_exact(&mut ext).ok()?;
            len = u64::from_be_bytes(ext);
        }
        let mut payload = vec![0u8; usize::try_from(len).ok()?];
        s.read_exact(&mut payload).ok()?;
        if header[0] & 0x0f == 0x8 {
            let code = payload
                .get(..2)
                .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
            return Some((code, reason.into_owned()));
        }
    }
}
