//! Things authenticated by client certificates from their tenant's CA, over MQTTS (mosquitto
//! clients) and HTTPS (curl): delivery, cross-tenant and expired certificates refused, a
//! username that names another thing refused, and revocation ending a live session.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Fixture, resources};
use fleetward_dataplane::Dataplane;
use fleetward_policy::{CredentialMode, DeviceCa, Resources, ThingX509};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use tokio::process::Command;

/// A tenant's CA, and where its certificates are written.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} device CA"));
        let key = KeyPair::generate().expect("key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA");
        Self {
            issuer,
            dir: dir.to_owned(),
        }
    }

    fn device_ca(&self) -> DeviceCa {
        DeviceCa::new(vec![self.issuer.der().to_vec()], Vec::new()).expect("a CA")
    }

    /// Writes `<file>.crt` and `<file>.key` for a leaf with this common name and URI SAN,
    /// valid from `days_from_now.0` to `.1` days from now; returns (cert, key, serial hex).
    fn leaf(
        &self,
        file: &str,
        cn: &str,
        uri: Option<&str>,
        days: (i64, i64),
    ) -> (PathBuf, PathBuf, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("a URI"))];
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days.0);
        params.not_after = now + time::Duration::days(days.1);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let names = fleetward_policy::CertificateNames::read(cert.der()).expect("parses");
        let (c, k) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("writes");
        std::fs::write(&k, key.serialize_pem()).expect("writes");
        (c, k, names.serial)
    }
}

/// The server's certificate for 127.0.0.1, signed by a CA of its own.
fn server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = Ca::new(dir, "server");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    let (c, k, a) = (
        dir.join("server.crt"),
        dir.join("server.key"),
        dir.join("server-ca.crt"),
    );
    std::fs::write(&c, cert.pem()).expect("writes");
    std::fs::write(&k, key.serialize_pem()).expect("writes");
    std::fs::write(&a, ca.issuer.pem()).expect("writes");
    (c, k, a)
}

/// The fixture's resources with acme's CA from `acme`, globex's from `globex`, and every
/// thing taking a key or a certificate; `sensor` of acme takes only a certificate.
fn with_cas(acme: &Ca, globex: &Ca, revoked: &[String]) -> Resources {
    let mut r = resources();
    for t in &mut r.tenants {
        t.device_ca = Some(match t.name.as_str() {
            "acme" => {
                DeviceCa::new(vec![acme.issuer.der().to_vec()], revoked.to_vec()).expect("a CA")
            }
            _ => globex.device_ca(),
        });
    }
    for thing in &mut r.things {
        thing.credential_mode = if thing.tenant == "acme" && thing.name == "sensor" {
            CredentialMode::Certificate
        } else {
            CredentialMode::KeyOrCertificate
        };
        thing.x509 = Some(ThingX509::default());
    }
    r
}

/// The fixture's tenants with their CAs, and a dataplane over them with MQTTS and HTTPS.
struct Tls {
    fx: Fixture,
    acme: Ca,
    globex: Ca,
    dataplane: fleetward_dataplane::RunningDataplane,
    server_ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tls {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (acme, globex) = (Ca::new(dir.path(), "acme"), Ca::new(dir.path(), "globex"));
        let (server, server_key, server_ca) = server_cert(dir.path());
        let mut fx = Fixture::start().await;
        fx.apply(with_cas(&acme, &globex, &[]));
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let dataplane = Dataplane::new(fx.policy.subscribe())
            .mqtt_listen(any)
            .mqtts_listen(any, server.clone(), server_key.clone())
            .https_listen(any, server, server_key)
            .start()
            .await
            .expect("starts with TLS");
        Self {
            fx,
            acme,
            globex,
            dataplane,
            server_ca,
            _dir: dir,
        }
    }
}

async fn mosquitto(
    bin: &str,
    port: u16,
    server_ca: &Path,
    cert: Option<(&Path, &Path)>,
    args: &[&str],
) -> Command {
    let mut c = Command::new(bin);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(server_ca);
    if let Some((cert, key)) = cert {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    c.args(args).kill_on_drop(true);
    c
}

async fn publish(tls: &Tls, cert: (&Path, &Path), extra: &[&str]) -> std::process::Output {
    let port = tls.dataplane.mqtts_addr.expect("MQTTS").port();
    let mut args = vec!["-t", "m/acme/c/telemetry/cert", "-m", "by-cert", "-q", "1"];
    args.extend_from_slice(extra);
    mosquitto("mosquitto_pub", port, &tls.server_ca, Some(cert), &args)
        .await
        .output()
        .await
        .expect("mosquitto_pub runs")
}

#[tokio::test]
async fn certificates_authenticate_things_of_their_own_tenant_only() {
    let tls = Tls::start().await;
    let (acme, globex) = (&tls.acme, &tls.globex);
    let port = tls.dataplane.mqtts_addr.expect("MQTTS").port();
    let reader = acme.leaf("reader", "reader", None, (-1, 30));
    let sensor = acme.leaf(
        "sensor",
        "sensor",
        Some("fleetward://acme/sensor"),
        (-1, 30),
    );

    // Delivery: both ends authenticated by certificate alone, no username.
    let sub = mosquitto(
        "mosquitto_sub",
        port,
        &tls.server_ca,
        Some((&reader.0, &reader.1)),
        &[
            "-t",
            "m/acme/c/telemetry/#",
            "-C",
            "1",
            "-W",
            "10",
            "-v",
            "-V",
            "5",
        ],
    )
    .await
    .output();
    let pub_ = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        publish(&tls, (&sensor.0, &sensor.1), &[]).await
    };
    let (sub, published) = tokio::join!(sub, pub_);
    let sub = sub.expect("mosquitto_sub runs");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&sub.stdout),
        "m/acme/c/telemetry/cert by-cert\n",
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );

    // A certificate from globex's CA naming acme's sensor: acme's CA is the one asked.
    let forged = globex.leaf(
        "forged",
        "sensor",
        Some("fleetward://acme/sensor"),
        (-1, 30),
    );
    let out = publish(&tls, (&forged.0, &forged.1), &["-V", "5"]).await;
    assert!(
        !out.status.success(),
        "a globex certificate authenticated in acme"
    );
    assert_refused(&out);
    // acme's certificate for `reader` never authenticates as globex's `reader`.
    let out = publish(
        &tls,
        (&reader.0, &reader.1),
        &["-u", "globex/reader", "-V", "5"],
    )
    .await;
    assert_refused(&out);
    // A username naming another thing than the certificate.
    let out = publish(
        &tls,
        (&sensor.0, &sensor.1),
        &["-u", "acme/reader", "-V", "5"],
    )
    .await;
    assert_refused(&out);
    // Expired (v5: 0x86 bad user name or password), and not yet valid.
    let expired = acme.leaf("expired", "sensor", None, (-30, -1));
    let out = publish(&tls, (&expired.0, &expired.1), &["-V", "5"]).await;
    assert_refused(&out);
    let early = acme.leaf("early", "sensor", None, (2, 30));
    assert_refused(&publish(&tls, (&early.0, &early.1), &["-V", "5"]).await);
    // `sensor` takes only a certificate: its key is refused, even on the TLS port.
    let out = mosquitto(
        "mosquitto_pub",
        port,
        &tls.server_ca,
        None,
        &[
            "-u",
            "acme/sensor",
            "-P",
            &common::key("acme", "sensor"),
            "-t",
            "m/acme/c/telemetry/k",
            "-m",
            "x",
            "-V",
            "5",
        ],
    )
    .await
    .output()
    .await
    .expect("mosquitto_pub runs");
    assert_refused(&out);
}

/// mosquitto's words for a refused CONNECT.
fn assert_refused(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success(), "accepted: {err}");
    assert!(
        err.contains("bad user name or password") || err.contains("not authori"),
        "refused for another reason than the credential: {err}"
    );
}

#[tokio::test]
async fn revoking_a_certificate_ends_its_live_session() {
    let mut tls = Tls::start().await;
    let server_ca = tls.server_ca.clone();
    let port = tls.dataplane.mqtts_addr.expect("MQTTS").port();
    let reader = tls.acme.leaf("reader", "reader", None, (-1, 30));
    let mut sub = mosquitto(
        "mosquitto_sub",
        port,
        &server_ca,
        Some((&reader.0, &reader.1)),
        &["-t", "m/acme/c/telemetry/#", "-V", "5", "-v"],
    )
    .await;
    let mut sub = sub
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        sub.try_wait().expect("waits").is_none(),
        "the session did not stay up"
    );
    // The tenant CA revokes the reader's serial: the session ends.
    let revoked = with_cas(&tls.acme, &tls.globex, std::slice::from_ref(&reader.2));
    tls.fx.apply(revoked);
    let ended = tokio::time::timeout(Duration::from_secs(5), sub.wait()).await;
    assert!(
        ended.is_ok(),
        "the session outlived its certificate's revocation"
    );
    // And the certificate no longer connects.
    let again = mosquitto(
        "mosquitto_sub",
        port,
        &server_ca,
        Some((&reader.0, &reader.1)),
        &[
            "-t",
            "m/acme/c/telemetry/#",
            "-V",
            "5",
            "-C",
            "1",
            "-W",
            "3",
        ],
    )
    .await
    .output()
    .await
    .expect("runs");
    assert_refused(&again);
}

#[tokio::test]
async fn https_takes_a_client_certificate_as_the_credential() {
    let tls = Tls::start().await;
    let (acme, globex, server_ca) = (&tls.acme, &tls.globex, &tls.server_ca);
    let url = format!(
        "https://127.0.0.1:{}/m/acme/c/telemetry/cert",
        tls.dataplane.https_addr.expect("HTTPS").port()
    );
    let curl = |cert: Option<&(PathBuf, PathBuf, String)>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(server_ca)
            .args([
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                "21.5",
                &url,
            ]);
        if let Some((cert, key, _)) = cert {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        async move {
            let out = c.output().await.expect("curl runs");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let sensor = acme.leaf("sensor", "sensor", None, (-1, 30));
    assert_eq!(curl(Some(&sensor)).await, "202", "publish by certificate");
    assert_eq!(curl(None).await, "401", "no credential at all");
    let forged = globex.leaf(
        "forged",
        "sensor",
        Some("fleetward://acme/sensor"),
        (-1, 30),
    );
    assert_eq!(curl(Some(&forged)).await, "401", "another tenant's CA");
    let expired = acme.leaf("expired", "sensor", None, (-30, -1));
    assert_eq!(curl(Some(&expired)).await, "401", "expired");
}
