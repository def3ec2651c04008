//! Things with client certificates through `fleetward start`: certificates from
//! `fleetward certs issue` (and from `x509.issue`) over MQTTS with mosquitto and paho, and over
//! HTTPS with curl; other tenants' names, expired certificates, revoked serials, a key in
//! `mode: certificate` and a username naming another thing are refused.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fleetward_operator::directory::local_ca::LocalCa;
use support::{Running, Start, StartOptions, bin, tempdir};

const ACME: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {deviceCA: {secretName: acme-device-ca}}
---
apiVersion: fleetward.io/v1alpha1
kind: Channel
metadata: {name: telemetry, namespace: acme}
spec: {}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: meter-1, namespace: acme}
spec: {credentials: {x509: {}}}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: reader, namespace: acme}
spec: {credentials: {x509: {REVOKED}}}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: locked, namespace: acme}
spec: {credentials: {mode: certificate, x509: {}}}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: auto, namespace: acme}
spec: {credentials: {x509: {issue: true}}}
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: publishers, namespace: acme}
spec: {subject: {kind: Thing, name: meter-1}, channel: telemetry, actions: [publish]}
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: locked-publishes, namespace: acme}
spec: {subject: {kind: Thing, name: locked}, channel: telemetry, actions: [publish]}
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: auto-publishes, namespace: acme}
spec: {subject: {kind: Thing, name: auto}, channel: telemetry, actions: [publish]}
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: reader-subscribes, namespace: acme}
spec: {subject: {kind: Thing, name: reader}, channel: telemetry, actions: [subscribe]}
"#;

const GLOBEX: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Tenant
metadata: {name: globex}
spec: {deviceCA: {secretName: globex-device-ca}}
---
apiVersion: fleetward.io/v1alpha1
kind: Channel
metadata: {name: telemetry, namespace: globex}
spec: {}
---
apiVersion: fleetward.io/v1alpha1
kind: Thing
metadata: {name: meter-1, namespace: globex}
spec: {credentials: {x509: {}}}
---
apiVersion: fleetward.io/v1alpha1
kind: Connection
metadata: {name: publishers, namespace: globex}
spec: {subject: {kind: Thing, name: meter-1}, channel: telemetry, actions: [publish]}
"#;

/// A client certificate and key on disk, and the certificate's serial.
struct Cert {
    crt: PathBuf,
    key: PathBuf,
    serial: String,
}

/// `fleetward start` with MQTTS and HTTPS over the acme and globex manifests above.
struct Fixture {
    start: Start,
    root: PathBuf,
    server_ca: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let root = tempdir(tag);
        let manifests = root.join("manifests");
        std::fs::create_dir_all(&manifests).expect("dir");
        std::fs::write(manifests.join("acme.yaml"), ACME.replace("REVOKED", "")).expect("write");
        std::fs::write(manifests.join("globex.yaml"), GLOBEX).expect("write");
        let state = root.join("state");
        let start = StartOptions::new(&manifests, &state)
            .args(["--mqtts-listen=127.0.0.1:0", "--https-listen=127.0.0.1:0"])
            .run();
        let server_ca = state.join("tls").join("ca.crt");
        Self {
            start,
            root,
            server_ca,
        }
    }

    fn mqtts_port(&self) -> String {
        self.start.mqtts.expect("MQTTS").port().to_string()
    }

    /// `fleetward certs issue <thing>`, as a user runs it.
    fn issue(&self, thing: &str) -> Cert {
        let out_dir = self.root.join("certs").join(thing.replace('/', "-"));
        let out = Command::new(bin())
            .args(["certs", "issue", thing, "--state-dir"])
            .arg(&self.start.state)
            .arg("--out")
            .arg(&out_dir)
            .output()
            .expect("fleetward runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = thing.split_once('/').map_or(thing, |(_, n)| n);
        let serial = text
            .lines()
            .find_map(|l| l.strip_prefix("serial:"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("no serial in {text}"));
        Cert {
            crt: out_dir.join(format!("{name}.crt")),
            key: out_dir.join(format!("{name}.key")),
            serial,
        }
    }

    /// A certificate from `tenant`'s CA naming `uri_thing` (`<tenant>/<thing>`), with common
    /// name `cn`, valid from `from` to `until` seconds from now.
    fn forge(&self, tenant: &str, uri_thing: &str, cn: &str, from: i64, until: i64) -> Cert {
        let ca = LocalCa::open(&self.start.state.join("ca").join(tenant)).expect("the CA");
        let (t, n) = uri_thing.split_once('/').expect("tenant/thing");
        let issued = ca
            .issue_thing_between(t, n, cn, from, until)
            .expect("signs");
        let name = format!("forged-{tenant}-{t}-{n}-{from}");
        let (crt, key) = issued
            .write(&self.root.join("forged"), &name)
            .expect("writes");
        Cert {
            crt,
            key,
            serial: issued.facts.serial,
        }
    }

    /// mosquitto_pub over MQTTS with `cert` (if any) and `extra` flags, publishing on acme's
    /// telemetry unless `extra` names a topic (`-t`) or a message (`-m`).
    fn publish(&self, cert: Option<&Cert>, extra: &[&str]) -> Output {
        let mut cmd = self.mosquitto("mosquitto_pub", cert);
        if !extra.contains(&"-t") {
            cmd.args(["-t", "m/acme/c/telemetry/reading"]);
        }
        if !extra.contains(&"-m") {
            cmd.args(["-m", "21.5"]);
        }
        cmd.args(extra);
        cmd.output().expect("mosquitto_pub runs")
    }

    fn mosquitto(&self, program: &str, cert: Option<&Cert>) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(["-h", "localhost", "-p", &self.mqtts_port(), "--cafile"])
            .arg(&self.server_ca);
        if let Some(c) = cert {
            cmd.arg("--cert").arg(&c.crt).arg("--key").arg(&c.key);
        }
        cmd
    }

    /// A mosquitto_sub over MQTTS on acme's telemetry, subscribed once it returns.
    fn subscribe(&self, cert: &Cert, version: &str) -> Running {
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"])
            .args(["-h", "localhost", "-p", &self.mqtts_port(), "--cafile"])
            .arg(&self.server_ca)
            .arg("--cert")
            .arg(&cert.crt)
            .arg("--key")
            .arg(&cert.key)
            .args(["-V", version, "-t", "m/acme/c/telemetry/#", "-v", "-d"]);
        let sub = Running::spawn("mosquitto_sub", cmd, false);
        sub.expect("received SUBACK", Duration::from_secs(10));
        sub
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.root).ok();
    }
}

/// mosquitto's words for a CONNECT refused for its credential.
fn assert_refused(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success(), "{what}: accepted");
    assert!(
        err.contains("bad user name or password") || err.contains("not authori"),
        "{what}: refused for another reason than the credential: {err}"
    );
}

fn assert_accepted(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn certificates_from_certs_issue_and_x509_issue_deliver_over_mqtts_v311_and_v5_and_https() {
    let fx = Fixture::new("certs-deliver");
    let meter = fx.issue("acme/meter-1");
    let reader = fx.issue("acme/reader");
    for version in ["mqttv311", "mqttv5"] {
        let sub = fx.subscribe(&reader, version);
        let message = format!("by-certificate-{version}");
        let out = fx.publish(Some(&meter), &["-V", version, "-q", "1", "-m", &message]);
        assert_accepted(&out, version);
        sub.expect(&message, Duration::from_secs(10));
    }
    // A thing with `x509.issue`: its certificate is in the state directory.
    let dir = fx.start.state.join("certs").join("acme");
    let auto = Cert {
        crt: dir.join("auto.crt"),
        key: dir.join("auto.key"),
        serial: String::new(),
    };
    let sub = fx.subscribe(&reader, "mqttv5");
    assert_accepted(&fx.publish(Some(&auto), &["-m", "from-auto"]), "x509.issue");
    sub.expect("from-auto", Duration::from_secs(10));
    // HTTPS with curl: the certificate is the credential; without one, 401.
    let curl = |cert: Option<&Cert>| {
        let https = fx.start.https.expect("HTTPS");
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&fx.server_ca)
            .args(["-H", "Content-Type: text/plain", "--data", "22.0"])
            .arg(format!(
                "https://localhost:{}/m/acme/c/telemetry/http",
                https.port()
            ));
        if let Some(cert) = cert {
            c.arg("--cert").arg(&cert.crt).arg("--key").arg(&cert.key);
        }
        let out = c.output().expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(Some(&meter)), "202");
    assert_eq!(curl(None), "401");
    sub.expect("m/acme/c/telemetry/http 22.0", Duration::from_secs(10));
}

#[test]
fn certificates_never_cross_tenants() {
    let fx = Fixture::new("certs-tenants");
    // Control: globex's own certificate for its meter-1 works in globex.
    let globex = fx.issue("globex/meter-1");
    let globex_topic = ["-t", "m/globex/c/telemetry/reading"];
    assert_accepted(&fx.publish(Some(&globex), &globex_topic), "globex's own");
    // acme's CA naming globex/x (URI), or globex's meter-1 (URI and CN): refused.
    let forged = fx.forge("acme", "globex/x", "x", -60, 86_400);
    assert_refused(
        &fx.publish(Some(&forged), &globex_topic),
        "acme's CA, globex/x",
    );
    let forged = fx.forge("acme", "globex/meter-1", "meter-1", -60, 86_400);
    assert_refused(
        &fx.publish(Some(&forged), &globex_topic),
        "acme's CA, globex/meter-1",
    );
    // acme's certificate for meter-1, which globex also has, never signs in there.
    let acme = fx.issue("acme/meter-1");
    let as_globex = ["-u", "globex/meter-1", "-t", "m/globex/c/telemetry/reading"];
    assert_refused(
        &fx.publish(Some(&acme), &as_globex),
        "acme's meter-1 as globex's",
    );
    assert_accepted(&fx.publish(Some(&acme), &[]), "acme's meter-1 in acme");
}

#[test]
fn an_expired_certificate_is_refused_with_v5_0x86_or_0x87_as_paho_reads_it() {
    let fx = Fixture::new("certs-expired");
    let expired = fx.forge("acme", "acme/meter-1", "meter-1", -30 * 86_400, -3600);
    let valid = fx.issue("acme/meter-1");
    let script = r#"
import json, ssl, sys, threading
import paho.mqtt.client as mqtt

port, ca = int(sys.argv[1]), sys.argv[2]
out = {}
for name, cert, key in [("valid", sys.argv[3], sys.argv[4]), ("expired", sys.argv[5], sys.argv[6])]:
    done = threading.Event()
    def on_connect(c, userdata, flags, reason_code, props, name=name, done=done):
        out[name] = reason_code.value
        done.set()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-" + name, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    c.on_connect = on_connect
    c.connect("localhost", port)
    c.loop_start()
    done.wait(10)
    c.loop_stop()
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &fx.mqtts_port()])
        .arg(&fx.server_ca)
        .args([&valid.crt, &valid.key, &expired.crt, &expired.key])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["valid"], 0, "{stdout}");
    let code = v["expired"].as_u64().unwrap_or_default();
    assert!(
        code == 0x86 || code == 0x87,
        "expired: CONNACK {code:#x}: {stdout}"
    );
    // mosquitto says the same in its words.
    assert_refused(&fx.publish(Some(&expired), &["-V", "mqttv5"]), "expired");
}

#[test]
fn listing_a_serial_in_the_manifest_ends_the_live_session_that_used_it() {
    let fx = Fixture::new("certs-revoke");
    let reader = fx.issue("acme/reader");
    let mut sub = fx.subscribe(&reader, "mqttv5");
    let manifest = fx.start.manifests.join("acme.yaml");
    let revoked = format!("revokedSerials: [\"{}\"]", reader.serial);
    std::fs::write(&manifest, ACME.replace("REVOKED", &revoked)).expect("edit");
    // Generous: the rescan runs every 2 s and the machine may be loaded.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sub.alive() {
        assert!(
            Instant::now() < deadline,
            "the session outlived its certificate's revocation"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let mut again = fx.mosquitto("mosquitto_sub", Some(&reader));
    again.args([
        "-t",
        "m/acme/c/telemetry/#",
        "-V",
        "mqttv5",
        "-C",
        "1",
        "-W",
        "5",
    ]);
    assert_refused(&again.output().expect("runs"), "a revoked certificate");
    // Another certificate of the same thing still works.
    let fresh = fx.issue("acme/reader");
    let mut sub = fx.subscribe(&fresh, "mqttv5");
    assert!(sub.alive());
}

#[test]
fn certificate_mode_refuses_the_key_and_key_or_certificate_takes_both() {
    let fx = Fixture::new("certs-mode");
    let plain = |thing: &str| {
        let key = fx.start.key_of(thing);
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &fx.start.mqtt.port().to_string()])
            .args(["-u", thing, "-P", &key])
            .args(["-t", "m/acme/c/telemetry/k", "-m", "x"])
            .stderr(Stdio::piped())
            .output()
            .expect("mosquitto_pub runs")
    };
    assert_refused(
        &plain("acme/locked"),
        "the key of a thing in mode certificate",
    );
    let locked = fx.issue("acme/locked");
    assert_accepted(&fx.publish(Some(&locked), &[]), "locked's certificate");
    assert_accepted(
        &plain("acme/meter-1"),
        "the key of a thing in keyOrCertificate",
    );
    let meter = fx.issue("acme/meter-1");
    assert_accepted(&fx.publish(Some(&meter), &[]), "meter-1's certificate");
}

#[test]
fn a_username_naming_another_thing_than_the_certificate_is_refused() {
    let fx = Fixture::new("certs-username");
    let meter = fx.issue("acme/meter-1");
    let out = fx.publish(Some(&meter), &["-u", "acme/reader", "-V", "mqttv5"]);
    assert_refused(&out, "meter-1's certificate as acme/reader");
    let out = fx.publish(Some(&meter), &["-u", "acme/meter-1", "-V", "mqttv5"]);
    assert_accepted(&out, "meter-1's certificate as acme/meter-1");
}

#[test]
fn certs_issue_writes_a_private_key_and_refuses_a_name_that_is_not_tenant_slash_thing() {
    let root = tempdir("certs-cli");
    let state = root.join("state");
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .current_dir(&root)
            .output()
            .expect("fleetward runs")
    };
    let out = run(&["certs", "issue", "acme/meter-1", "--days", "30"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mosquitto_pub -h localhost -p 8883 --cafile")
            && text.contains("--cert ./meter-1.crt --key ./meter-1.key"),
        "{text}"
    );
    let crt = std::fs::read(root.join("meter-1.crt")).expect("the certificate");
    let facts = fleetward_operator::directory::local_ca::CertFacts::read_pem(&crt).expect("parses");
    assert_eq!(facts.thing, Some(("acme".into(), "meter-1".into())));
    assert_eq!(facts.common_name.as_deref(), Some("meter-1"));
    let days = (facts.not_after - facts.not_before) / 86_400;
    assert_eq!(days, 30, "--days");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("meter-1.key")), 0o600);
        assert_eq!(mode(&state.join("ca").join("acme").join("ca.key")), 0o600);
        assert_eq!(mode(&state.join("ca").join("acme")), 0o700);
    }
    // `certs ca` prints the CA that signed it.
    let out = run(&["certs", "ca", "acme"]);
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let ca = LocalCa::open(Path::new(&path).parent().expect("a dir")).expect("the CA");
    assert!(ca.signed(&crt));
    for (name, expected) in [
        ("acme", "is not <tenant>/<thing>"),
        ("Acme/meter-1", "tenant \"Acme\" is not a DNS label"),
        ("acme/meter_1", "thing \"meter_1\" is not a DNS label"),
    ] {
        let out = run(&["certs", "issue", name]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expected),
            "{name}: {err}"
        );
    }
    std::fs::remove_dir_all(root).ok();
}
