//! Device certificates on a real API server: a Tenant's CA from a Secret (its `DeviceCA`
//! condition, good and bad), a Thing's certificate shown from its TLS Secret, and the
//! cert-manager `Certificate` the operator applies for a Thing with `x509.issue`, checked
//! against cert-manager's own CRDs (scripts/cert-manager-crds.sh) and collected with its Thing.
//! No cert-manager controller runs here, so nothing issues it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleetward_e2e::fleetward::{DataplaneConfig, OPERATOR_NAMESPACE, Operator, TlsDataplane};
use fleetward_e2e::workspace;
use fleetward_e2e::{ControlPlane, Kubectl, LogDir, run_test, wait_until};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SerialNumber,
};
use serde_json::{Value, json};

/// The PolicySync token the operator is started with.
const TOKEN: &str = "e2e-sync-token";
/// How long a status or object may take to appear.
const SETTLE: Duration = Duration::from_secs(30);
/// The garbage collector rediscovers kinds every 30 s (see e2e/README.md).
const COLLECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// A tenant's CA.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ok(Self(CertifiedIssuer::self_signed(
            params,
            KeyPair::generate()?,
        )?))
    }

    /// A client certificate naming `fleetward://<tenant>/<thing>`, with `serial`.
    fn leaf(&self, tenant: &str, thing: &str, serial: u64) -> Result<String> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, thing);
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("fleetward://{tenant}/{thing}").try_into()?,
        )];
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(params.signed_by(&KeyPair::generate()?, &*self.0)?.pem())
    }
}

impl Ca {
    /// Writes a client certificate naming `fleetward://<tenant>/<thing>` and its key to
    /// `<dir>/<file>.crt|.key`; returns both paths.
    fn leaf_files(
        &self,
        dir: &Path,
        file: &str,
        tenant: &str,
        thing: &str,
    ) -> Result<[PathBuf; 2]> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, thing);
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("fleetward://{tenant}/{thing}").try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.0)?;
        let paths = [
            dir.join(format!("{file}.crt")),
            dir.join(format!("{file}.key")),
        ];
        std::fs::write(&paths[0], cert.pem())?;
        std::fs::write(&paths[1], key.serialize_pem())?;
        Ok(paths)
    }

    /// A server certificate for localhost and 127.0.0.1, written like [`Ca::leaf_files`].
    fn server_files(&self, dir: &Path) -> Result<[PathBuf; 2]> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &*self.0)?;
        let paths = [dir.join("server.crt"), dir.join("server.key")];
        std::fs::write(&paths[0], cert.pem())?;
        std::fs::write(&paths[1], key.serialize_pem())?;
        Ok(paths)
    }
}

fn cluster(logs: &LogDir) -> Result<(ControlPlane, Kubectl)> {
    let plane = ControlPlane::start(logs)?;
    let kubectl = plane.kubectl();
    plane.apply_crds()?;
    kubectl.run(&["create", "namespace", OPERATOR_NAMESPACE])?;
    Ok((plane, kubectl))
}

fn secret(namespace: &str, name: &str, entries: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "stringData": data})
}

fn tenant(name: &str, device_ca: Value) -> Value {
    json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": {"deviceCA": device_ca}})
}

fn thing(namespace: &str, name: &str, credentials: Value) -> Value {
    json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "Thing", "metadata": {"name": name, "namespace": namespace}, "spec": {"credentials": credentials}})
}

fn apply_all(kubectl: &Kubectl, objects: &[Value]) -> Result<()> {
    let stream: Vec<String> = objects.iter().map(Value::to_string).collect();
    kubectl.apply(&stream.join("\n---\n"))?;
    Ok(())
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_byo_ca_and_certificate_flow_into_the_status() {
    run_test("device-certs-byo", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        for ns in ["acme", "globex", "initech"] {
            kubectl.run(&["create", "namespace", ns])?;
        }
        let ca = Ca::new("acme devices")?;
        let leaf = ca.leaf("acme", "sensor-1", 0x1f2e)?;
        apply_all(
            &kubectl,
            &[
                secret("acme", "acme-ca", &[("ca.crt", &ca.0.pem())]),
                tenant("acme", json!({"secretName": "acme-ca"})),
                thing(
                    "acme",
                    "sensor-1",
                    json!({"mode": "certificate", "x509": {}}),
                ),
                secret("acme", "sensor-1-tls", &[("tls.crt", &leaf)]),
                // A CA Secret holding no certificate.
                secret("globex", "globex-ca", &[("ca.crt", "not a certificate")]),
                tenant("globex", json!({"secretName": "globex-ca"})),
                thing(
                    "globex",
                    "meter",
                    json!({"mode": "certificate", "x509": {}}),
                ),
                // An issuer, but no cert-manager here.
                tenant("initech", json!({"issuerRef": {"name": "devices"}})),
                thing("initech", "gw", json!({"x509": {"issue": true}})),
            ],
        )?;
        let _op = Operator::start("operator-0", plane.kubeconfig(), TOKEN, logs.path())?;

        let acme = ["tenant", "acme"];
        let message = kubectl.wait_condition(&acme, ("DeviceCA", "True", "CALoaded"), SETTLE)?;
        ensure!(message.contains("acme/acme-ca"), "{message}");
        kubectl.wait_condition(&acme, ("Ready", "True", "Accepted"), SETTLE)?;
        let sensor = ["thing", "sensor-1", "-n", "acme"];
        kubectl.wait_condition(&sensor, ("Ready", "True", "Accepted"), SETTLE)?;
        let mut shown = Value::Null;
        wait_until("sensor-1's status.certificate", SETTLE, || {
            shown = kubectl.get_json(&sensor)?["status"]["certificate"].clone();
            Ok(!shown.is_null())
        })?;
        ensure!(shown["secretName"] == "sensor-1-tls", "{shown}");
        ensure!(shown["serial"] == "1f2e", "{shown}");
        let fingerprint = shown["fingerprint"].as_str().unwrap_or_default();
        ensure!(fingerprint.len() == 12, "{shown}");
        ensure!(
            shown["notAfter"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{shown}"
        );
        ensure!(
            !kubectl.exists(&["secret", "sensor-1-credentials", "-n", "acme"])?,
            "a certificate-only thing gets no key Secret"
        );

        let globex = ["tenant", "globex"];
        let message =
            kubectl.wait_condition(&globex, ("DeviceCA", "False", "InvalidCA"), SETTLE)?;
        ensure!(message.contains("globex/globex-ca"), "{message}");
        kubectl.wait_condition(&globex, ("Ready", "True", "Accepted"), SETTLE)?;
        let meter = ["thing", "meter", "-n", "globex"];
        kubectl.wait_condition(&meter, ("Ready", "False", "NoDeviceCA"), SETTLE)?;

        let initech = ["tenant", "initech"];
        kubectl.wait_condition(&initech, ("DeviceCA", "False", "IssuerNotFound"), SETTLE)?;
        let gw = ["thing", "gw", "-n", "initech"];
        let message =
            kubectl.wait_condition(&gw, ("Certificate", "False", "CertManagerMissing"), SETTLE)?;
        ensure!(message.contains("install cert-manager"), "{message}");
        // Its key still works meanwhile: keyOrCertificate, with the generated key.
        kubectl.wait_condition(&gw, ("Ready", "True", "Accepted"), SETTLE)?;

        // Fixing the CA Secret loads it.
        kubectl.apply(
            &secret(
                "globex",
                "globex-ca",
                &[("ca.crt", &Ca::new("globex")?.0.pem())],
            )
            .to_string(),
        )?;
        kubectl.wait_condition(&globex, ("DeviceCA", "True", "CALoaded"), SETTLE)?;
        kubectl.wait_condition(&meter, ("Ready", "True", "Accepted"), SETTLE)?;
        Ok(())
    });
}

/// cert-manager's CRDs, fetched (and cached) by scripts/cert-manager-crds.sh.
fn cert_manager_crds() -> Result<String> {
    let path = match std::env::var("FLEETWARD_CERT_MANAGER_CRDS") {
        Ok(path) => path,
        Err(_) => {
            let out = Command::new(workspace::root().join("scripts/cert-manager-crds.sh"))
                .output()
                .context("run scripts/cert-manager-crds.sh")?;
            ensure!(
                out.status.success(),
                "scripts/cert-manager-crds.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .context("scripts/cert-manager-crds.sh printed no path")?
                .to_owned()
        }
    };
    std::fs::read_to_string(&path).with_context(|| format!("read {path}"))
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_thing_that_asks_gets_a_cert_manager_certificate_owned_by_it() {
    run_test("device-certs-cert-manager", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        kubectl.apply(&cert_manager_crds()?)?;
        kubectl.run(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/certificates.cert-manager.io",
            "crd/issuers.cert-manager.io",
            "crd/clusterissuers.cert-manager.io",
        ])?;
        plane.wait_for_garbage_collector()?;
        kubectl.run(&["create", "namespace", "acme"])?;
        let ca = Ca::new("acme devices")?;
        let issuer = json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Issuer",
            "metadata": {"name": "devices", "namespace": "acme"},
            "spec": {"ca": {"secretName": "devices-ca"}},
        });
        let asking = |name: &str, issue: bool| {
            thing(
                "acme",
                name,
                json!({"mode": "certificate", "x509": {"issue": issue, "subject": {"commonName": format!("SN-{name}")}}}),
            )
        };
        apply_all(
            &kubectl,
            &[
                secret("acme", "devices-ca", &[("tls.crt", &ca.0.pem())]),
                issuer,
                tenant(
                    "acme",
                    json!({"issuerRef": {"name": "devices", "kind": "Issuer"}}),
                ),
                asking("sensor-1", true),
                asking("sensor-2", true),
            ],
        )?;
        let _op = Operator::start("operator-0", plane.kubeconfig(), TOKEN, logs.path())?;

        // The issuer's CA is the tenant's trust.
        let message = kubectl.wait_condition(
            &["tenant", "acme"],
            ("DeviceCA", "True", "CALoaded"),
            SETTLE,
        )?;
        ensure!(message.contains("Issuer acme/devices"), "{message}");

        let cert = ["certificate", "sensor-1", "-n", "acme"];
        wait_until("the Certificate of sensor-1", SETTLE, || {
            kubectl.exists(&cert)
        })?;
        let c = kubectl.get_json(&cert)?;
        let uid =
            kubectl.get_json(&["thing", "sensor-1", "-n", "acme"])?["metadata"]["uid"].clone();
        let owner = &c["metadata"]["ownerReferences"][0];
        ensure!(
            owner["kind"] == "Thing"
                && owner["name"] == "sensor-1"
                && owner["uid"] == uid
                && owner["controller"] == true,
            "owned by the Thing: {owner}"
        );
        let spec = &c["spec"];
        let expected = json!({
            "secretName": "sensor-1-tls",
            "commonName": "SN-sensor-1",
            "uris": ["fleetward://acme/sensor-1"],
            "issuerRef": {"name": "devices", "kind": "Issuer", "group": "cert-manager.io"},
            "usages": ["client auth", "digital signature", "key encipherment"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        });
        ensure!(
            *spec == expected,
            "the Certificate's spec:\n{spec:#}\nexpected:\n{expected:#}"
        );
        // No cert-manager controller here: the thing waits for its certificate.
        kubectl.wait_condition(
            &["thing", "sensor-1", "-n", "acme"],
            ("Certificate", "False", "Pending"),
            SETTLE,
        )?;

        // A thing that stops asking loses its Certificate.
        wait_until("the Certificate of sensor-2", SETTLE, || {
            kubectl.exists(&["certificate", "sensor-2", "-n", "acme"])
        })?;
        kubectl.apply(&asking("sensor-2", false).to_string())?;
        wait_until("sensor-2's Certificate deleted", SETTLE, || {
            Ok(!kubectl.exists(&["certificate", "sensor-2", "-n", "acme"])?)
        })?;

        // Deleting the Thing collects its Certificate.
        kubectl.run(&["delete", "thing", "sensor-1", "-n", "acme"])?;
        wait_until(
            "sensor-1's Certificate collected",
            COLLECTION_TIMEOUT,
            || Ok(!kubectl.exists(&cert)?),
        )?;
        Ok(())
    });
}

/// mosquitto_pub over MQTTS with a client certificate and no password: `true` when the broker
/// accepted the CONNECT (QoS 0 on a v3.1.1 session).
fn publishes(dp: &TlsDataplane, server_ca: &Path, [crt, key]: &[PathBuf; 2]) -> Result<bool> {
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &dp.mqtts_addr.port().to_string(),
            "--cafile",
        ])
        .arg(server_ca)
        .arg("--cert")
        .arg(crt)
        .arg("--key")
        .arg(key)
        .args(["-t", "m/acme/c/telemetry/e2e", "-m", "1"])
        .output()
        .context("run mosquitto_pub")?;
    Ok(out.status.success())
}

/// POSTs a provisioning request with curl and the claim certificate; status and body.
fn provision(
    dp: &TlsDataplane,
    server_ca: &Path,
    [crt, key]: &[PathBuf; 2],
    thing: &str,
    csr: &str,
) -> Result<(u16, Value)> {
    let url = format!(
        "https://127.0.0.1:{}/provisioning/acme/line-1",
        dp.https_addr.port()
    );
    let body = json!({"thing": thing, "csr": csr}).to_string();
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(server_ca)
        .arg("--cert")
        .arg(crt)
        .arg("--key")
        .arg(key)
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &url,
        ])
        .output()
        .context("run curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((
        code.trim().parse()?,
        serde_json::from_str(json).unwrap_or(Value::Null),
    ))
}

/// A device's key (P-256) and CSR, made with openssl as its firmware would.
fn device_csr(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let (key, csr) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", &format!("/CN={name}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .context("run openssl")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((key, std::fs::read_to_string(&csr)?))
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn devices_connect_by_certificate_and_a_claim_provisions_one_through_the_operator() {
    run_test("device-certs-mtls", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        for ns in ["acme", "globex"] {
            kubectl.run(&["create", "namespace", ns])?;
        }
        let pki = logs.path().join("pki");
        std::fs::create_dir_all(&pki)?;
        let (acme, globex, server) = (
            Ca::new("acme devices")?,
            Ca::new("globex devices")?,
            Ca::new("server")?,
        );
        let server_ca = pki.join("server-ca.crt");
        std::fs::write(&server_ca, server.0.pem())?;
        let [server_crt, server_key] = server.server_files(&pki)?;
        let sensor = acme.leaf_files(&pki, "sensor", "acme", "sensor")?;
        let forged = globex.leaf_files(&pki, "forged", "acme", "sensor")?;
        let claim = acme.leaf_files(&pki, "claim", "acme", "line-1-claim")?;
        let claim_pem = std::fs::read_to_string(&claim[0])?;
        let (acme_pem, acme_key) = (acme.0.pem(), acme.0.key().serialize_pem());
        let tenant_spec = json!({
            "deviceCA": {"secretName": "acme-ca"},
            "provisioning": {"claims": [{
                "name": "line-1", "certificateSecretName": "line-1-claim",
                "signingSecretName": "acme-ca", "namePattern": "sensor-[0-9]{4}", "maxThings": 1,
            }]},
        });
        let mut acme_tenant = tenant("acme", json!({}));
        acme_tenant["spec"] = tenant_spec;
        apply_all(
            &kubectl,
            &[
                secret(
                    "acme",
                    "acme-ca",
                    &[
                        ("ca.crt", &acme_pem),
                        ("tls.crt", &acme_pem),
                        ("tls.key", &acme_key),
                    ],
                ),
                secret("acme", "line-1-claim", &[("tls.crt", &claim_pem)]),
                acme_tenant,
                thing("acme", "sensor", json!({"x509": {}})),
                json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "Channel", "metadata": {"name": "telemetry", "namespace": "acme"}, "spec": {}}),
                json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "Connection", "metadata": {"name": "sensor", "namespace": "acme"}, "spec": {"subject": {"kind": "Thing", "name": "sensor"}, "channel": "telemetry", "actions": ["publish"]}}),
                secret("globex", "globex-ca", &[("ca.crt", &globex.0.pem())]),
                tenant("globex", json!({"secretName": "globex-ca"})),
                thing("globex", "sensor", json!({"x509": {}})),
            ],
        )?;
        let op = Operator::start("operator-0", plane.kubeconfig(), TOKEN, logs.path())?;
        kubectl.wait_condition(
            &["tenant", "acme"],
            ("DeviceCA", "True", "CALoaded"),
            SETTLE,
        )?;
        let config = DataplaneConfig {
            operators: vec![op.sync_url()],
            sync_token: TOKEN.to_owned(),
            nats_url: None,
        };
        let state = logs.path().join("dataplane-0");
        let files = (server_crt.as_path(), server_key.as_path());
        let dp = TlsDataplane::start("dataplane-0", &state, config, files, logs.path())?;

        // acme's certificate for its sensor connects; globex's CA naming it does not.
        wait_until("sensor connects by its certificate", SETTLE, || {
            publishes(&dp, &server_ca, &sensor)
        })?;
        ensure!(
            !publishes(&dp, &server_ca, &forged)?,
            "a certificate from globex's CA authenticated acme's sensor"
        );

        // A factory device asks with the claim certificate: the operator makes its Thing
        // in the API server and signs its own CSR; it connects with the answer.
        let (device_key, csr) = device_csr(&pki, "sensor-0001")?;
        let (code, body) = provision(&dp, &server_ca, &claim, "sensor-0001", &csr)?;
        ensure!(code == 201, "provisioning answered {code}: {body}");
        let device_crt = pki.join("sensor-0001.crt");
        std::fs::write(
            &device_crt,
            body["certificate"].as_str().unwrap_or_default(),
        )?;
        let made = kubectl.get_json(&["thing", "sensor-0001", "-n", "acme"])?;
        ensure!(
            made["metadata"]["labels"]["fleetward.io/provisioning-claim"] == "line-1",
            "{made}"
        );
        ensure!(
            made["spec"]["credentials"]["mode"] == "certificate",
            "{made}"
        );
        ensure!(
            publishes(&dp, &server_ca, &[device_crt, device_key])?,
            "the provisioned device could not connect with its certificate"
        );
        // The claim gives one Thing.
        let (_, csr) = device_csr(&pki, "sensor-0002")?;
        let (code, body) = provision(&dp, &server_ca, &claim, "sensor-0002", &csr)?;
        ensure!(
            code == 403 && body["error"] == "claim_exhausted",
            "{code}: {body}"
        );
        ensure!(!kubectl.exists(&["thing", "sensor-0002", "-n", "acme"])?);
        let shown = wait_until_value(&kubectl)?;
        ensure!(shown["provisioned"] == 1, "{shown}");
        Ok(())
    });
}

/// acme's `status.provisioning[0]`, once it shows the provisioned Thing.
fn wait_until_value(kubectl: &Kubectl) -> Result<Value> {
    let mut shown = Value::Null;
    wait_until("the claim's count in the Tenant's status", SETTLE, || {
        shown = kubectl.get_json(&["tenant", "acme"])?["status"]["provisioning"][0].clone();
        Ok(shown["provisioned"] == 1)
    })?;
    Ok(shown)
}
