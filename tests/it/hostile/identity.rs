//! Identity rows of issue 17: a User and a Thing of the same name share nothing, and a
//! disabled thing or suspended tenant cannot be told apart from an unknown one without its key.
//! Raw MQTT v5 packets over std sockets, so every byte of the answer is seen.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::harness::{self, SENSOR_KEY, Scratch, Start};
use fleetward_bench::wire::{packet, put_str};

const WAIT: Duration = Duration::from_secs(5);

/// A v5 CONNECT with credentials; `expiry` > 0 asks for a persistent session.
fn connect_v5(client_id: &str, user: &str, pass: &str, clean: bool, expiry: u32) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(5);
    body.push(0b1100_0000 | if clean { 0b10 } else { 0 });
    body.extend_from_slice(&30u16.to_be_bytes());
    if expiry > 0 {
        body.push(5);
        body.push(0x11);
        body.extend_from_slice(&expiry.to_be_bytes());
    } else {
        body.push(0);
    }
    put_str(&mut body, client_id.as_bytes());
    put_str(&mut body, user.as_bytes());
    put_str(&mut body, pass.as_bytes());
    packet(0x10, &body)
}

/// A v5 SUBSCRIBE of one filter at QoS 1.
fn subscribe_v5(filter: &str) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.push(0);
    put_str(&mut body, filter.as_bytes());
    body.push(1);
    packet(0x82, &body)
}

/// Reads one whole packet: (first byte, body); `None` on EOF or after `wait`.
fn read_packet(s: &mut TcpStream, wait: Duration) -> Option<(u8, Vec<u8>)> {
    s.set_read_timeout(Some(wait)).ok()?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first).ok()?;
    let mut len = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        len |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some((first[0], body))
}

/// Connects and returns the socket with the CONNACK's (session present, reason code).
fn connect(addr: SocketAddr, packet: &[u8]) -> (TcpStream, (bool, u8)) {
    let mut s = TcpStream::connect(addr).expect("connects");
    s.write_all(packet).expect("writes CONNECT");
    let (first, body) = read_packet(&mut s, WAIT).expect("a CONNACK");
    assert_eq!(first, 0x20, "CONNACK");
    (s, (body[0] & 1 == 1, body[1]))
}

/// Sends PINGREQ and returns what arrived before the PINGRESP: a server writes anything it
/// resends on resume before it reads the first packet.
fn before_pingresp(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&[0xC0, 0]).expect("writes PINGREQ");
    let mut seen = Vec::new();
    loop {
        match read_packet(s, WAIT) {
            Some((0xD0, _)) => return seen,
            Some(p) => seen.push(p),
            None => panic!("no PINGRESP; before it: {seen:?}"),
        }
    }
}

/// `curl` of `args`: the status code and body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The user `acme/dashboard` beside the thing `acme/dashboard`: a member with no grant.
const USER_DASHBOARD: &str = "apiVersion: v1
kind: Secret
metadata:
  name: dashboard-user-password
  namespace: acme
type: Opaque
stringData:
  password: dashboard-user-password-1
---
apiVersion: fleetward.io/v1alpha1
kind: User
metadata:
  name: dashboard
  namespace: acme
spec:
  role: member
  passwordSecretRef:
    name: dashboard-user-password
    key: password
";

fn access_token(start: &Start, tenant: &str, user: &str, password: &str) -> String {
    let body = format!(r#"{{"tenant":"{tenant}","username":"{user}","password":"{password}"}}"#);
    let url = format!("http://{}/users/tokens", start.http);
    let (status, text) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &url,
    ]);
    assert_eq!(status, 200, "sign-in of {tenant}/{user}: {text}");
    // `{"access_token":"eyJ…",…}`: a JWT has no quote in it.
    text.split_once(r#""access_token":""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(token, _)| token.to_owned())
        .unwrap_or_else(|| panic!("no access token in {text}"))
}

/// Issue 17: "a User and a Thing with the same name share one session key: the user kicks
/// the thing off (0x8E) and, resuming the thing's persistent session, is sent the thing's
/// unacknowledged QoS 1 message, although its own SUBSCRIBE to that topic is refused."
#[test]
fn a_user_and_a_thing_of_the_same_name_share_nothing() {
    let scratch = Scratch::with_examples("identity-same-name");
    scratch.write("user-dashboard.yaml", USER_DASHBOARD);
    let start = scratch.start(|o| o);
    let thing_key = start.key_of("acme/dashboard");

    // The thing: a persistent session, a QoS 1 delivery it never acknowledges.
    let (mut thing, (present, code)) = connect(
        start.mqtt,
        &connect_v5("same", "acme/dashboard", &thing_key, false, 600),
    );
    assert_eq!((present, code), (false, 0), "the thing connects");
    thing
        .write_all(&subscribe_v5("m/acme/c/telemetry/#"))
        .expect("writes SUBSCRIBE");
    assert_eq!(
        read_packet(&mut thing, WAIT).map(|(f, b)| (f, b.last().copied())),
        Some((0x90, Some(1))),
        "granted QoS 1"
    );
    assert!(harness::mosquitto_pub(
        start.mqtt,
        "acme/sensor-1",
        SENSOR_KEY,
        "m/acme/c/telemetry/secret",
        "for-the-thing-only",
    ));
    let (first, _) = read_packet(&mut thing, WAIT).expect("delivered to the thing");
    assert_eq!(first & 0xF6, 0x32, "a QoS 1 PUBLISH, left unacknowledged");

    // The user of the same name, with the same client id, asking to resume.
    let token = access_token(&start, "acme", "dashboard", "dashboard-user-password-1");
    let (mut user, (present, code)) = connect(
        start.mqtt,
        &connect_v5("same", "acme/dashboard", &token, false, 600),
    );
    assert_eq!(code, 0, "the user connects");
    assert!(!present, "the user is not handed the thing's session");
    let resent = before_pingresp(&mut user);
    assert!(
        resent.iter().all(|(f, _)| f & 0xF0 != 0x30),
        "the thing's message reached the user: {resent:?}"
    );
    user.write_all(&subscribe_v5("m/acme/c/telemetry/#"))
        .expect("writes SUBSCRIBE");
    assert_eq!(
        read_packet(&mut user, WAIT).map(|(f, b)| (f, b.last().copied())),
        Some((0x90, Some(0x87))),
        "the user's own SUBSCRIBE is refused"
    );

    // The thing was not kicked off (DISCONNECT 0x8E): it still answers.
    let seen = before_pingresp(&mut thing);
    assert!(seen.iter().all(|(f, _)| *f != 0xE0), "{seen:?}");
}

/// Issue 17: "a disabled thing or suspended tenant is told apart from an unknown thing without
/// its key (v5 0x87 vs 0x86; HTTP 403 vs 401): the disabled state is checked before the key."
#[test]
fn without_its_key_a_disabled_thing_or_suspended_tenant_looks_unknown() {
    let scratch = Scratch::with_examples("identity-enumeration");
    let acme = std::fs::read_to_string(scratch.manifests().join("acme.yaml")).expect("acme");
    let disabled = acme.replacen(
        "  name: sensor-1\n  namespace: acme\nspec:\n",
        "  name: sensor-1\n  namespace: acme\nspec:\n  disabled: true\n",
        1,
    );
    assert_ne!(acme, disabled, "the example's sensor-1 is where it was");
    scratch.write("acme.yaml", &disabled);
    let globex = std::fs::read_to_string(scratch.manifests().join("globex.yaml")).expect("globex");
    let suspended = globex.replacen(
        "spec:\n  displayName: Globex Inc.\n",
        "spec:\n  displayName: Globex Inc.\n  suspended: true\n",
        1,
    );
    assert_ne!(
        globex, suspended,
        "the example's globex tenant is where it was"
    );
    scratch.write("globex.yaml", &suspended);
    let start = scratch.start(|o| o);
    let globex_key = start.key_of("globex/dashboard");

    let mqtt_code = |user: &str, pass: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, (_, code)) = connect(start.mqtt, &connect_v5("probe", user, pass, true, 0));
            // 0x88 until the first snapshot is served.
            if code != 0x88 || Instant::now() > deadline {
                return code;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let http_status = |user: &str, pass: &str, tenant: &str| {
        let url = format!("http://{}/m/{tenant}/c/telemetry/x", start.http);
        curl(&[
            "-X",
            "POST",
            "-u",
            &format!("{user}:{pass}"),
            "--data-binary",
            "x",
            &url,
        ])
    };

    // Without the key: one answer for unknown, wrong key, disabled and suspended.
    let mut bodies = std::collections::BTreeSet::new();
    for (user, tenant) in [
        ("acme/nobody", "acme"),
        ("acme/dashboard", "acme"),
        ("acme/sensor-1", "acme"),
        ("globex/dashboard", "globex"),
        ("nope/sensor-1", "nope"),
    ] {
        assert_eq!(
            mqtt_code(user, "wrong-key"),
            0x86,
            "{user}, wrong key, MQTT"
        );
        let (status, body) = http_status(user, "wrong-key", tenant);
        assert_eq!(status, 401, "{user}, wrong key, HTTP: {body}");
        bodies.insert(body);
    }
    assert_eq!(bodies.len(), 1, "one HTTP answer: {bodies:?}");

    // With it, the thing learns why.
    assert_eq!(
        mqtt_code("acme/sensor-1", SENSOR_KEY),
        0x87,
        "disabled, right key"
    );
    assert_eq!(
        mqtt_code("globex/dashboard", &globex_key),
        0x87,
        "suspended, right key"
    );
    let (status, body) = http_status("acme/sensor-1", SENSOR_KEY, "acme");
    assert_eq!(status, 403, "disabled, right key, HTTP: {body}");
}
