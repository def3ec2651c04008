//! TLS for the benchmarks: the files a Fleetward target serves MQTTS with and trusts device
//! certificates from (`bench-fleetward --tls-dir`), and the client side the load generator
//! connects with (`fleetward-bench --tls-dir`). Keys are ECDSA P-256, as
//! `fleetward certs issue` makes them.
//!
//! The directory holds `server-ca.crt` (what clients trust), `server.crt` and `server.key`
//! (for 127.0.0.1 and localhost), `device-ca.crt` (the tenant `bench`'s device CA) and, per
//! thing, `<thing>.crt` and `<thing>.key`: a client certificate whose CN and URI SAN
//! `fleetward://bench/<thing>` name it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use fleetward_policy::DeviceCa;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, HandshakeKind, RootCertStore};

use crate::fixture;

/// The CA clients trust the server's certificate by.
pub const SERVER_CA: &str = "server-ca.crt";
/// The server's certificate (127.0.0.1 and localhost).
pub const SERVER_CERT: &str = "server.crt";
/// The server's key.
pub const SERVER_KEY: &str = "server.key";
/// The tenant `bench`'s device CA.
pub const DEVICE_CA: &str = "device-ca.crt";

/// What [`generate`] made: the server's files and the device CA the tenant trusts.
pub struct Generated {
    /// The server's certificate (PEM).
    pub server_cert: PathBuf,
    /// The server's key (PEM).
    pub server_key: PathBuf,
    /// The tenant's device CA, for the policy.
    pub device_ca: DeviceCa,
}

fn p256() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating an ECDSA P-256 key")
}

fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, p256()?)?)
}

fn write(dir: &Path, file: &str, pem: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(file);
    std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes a new server CA, server certificate, device CA and a client certificate for each of
/// `things` (of the tenant `bench`) into `dir`, replacing what was there.
pub fn generate(dir: &Path, things: impl IntoIterator<Item = String>) -> anyhow::Result<Generated> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let server_ca = ca("fleetward-bench server CA")?;
    write(dir, SERVER_CA, &server_ca.pem())?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let key = p256()?;
    let cert = params.signed_by(&key, &server_ca)?;
    let server_cert = write(dir, SERVER_CERT, &cert.pem())?;
    let server_key = write(dir, SERVER_KEY, &key.serialize_pem())?;

    let device_ca = ca(&format!("{} device CA", fixture::TENANT))?;
    write(dir, DEVICE_CA, &device_ca.pem())?;
    for thing in things {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, &thing);
        let uri = format!("fleetward://{}/{thing}", fixture::TENANT);
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = p256()?;
        let cert = params.signed_by(&key, &device_ca)?;
        write(dir, &format!("{thing}.crt"), &cert.pem())?;
        write(dir, &format!("{thing}.key"), &key.serialize_pem())?;
    }
    let device_ca = DeviceCa::new(vec![device_ca.der().to_vec()], Vec::new())
        .context("the generated device CA")?;
    Ok(Generated {
        server_cert,
        server_key,
        device_ca,
    })
}

/// The load generator's side: trusts `server-ca.crt` of a directory [`generate`] wrote, and
/// presents `<thing>.crt` when a thing logs in by certificate.
pub struct TlsClient {
    dir: PathBuf,
    roots: Arc<RootCertStore>,
    resume: bool,
    /// For key logins: no client certificate.
    anonymous: TlsConnector,
    /// Per thing, with its certificate; read from the directory on first use.
    by_thing: parking_lot::Mutex<HashMap<String, TlsConnector>>,
    /// Handshakes made: full, and resumed.
    full: AtomicU64,
    resumed: AtomicU64,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("dir", &self.dir)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Reads the server CA of `dir`. Without `resume` every connection makes a full handshake
    /// (no session tickets kept), as a device does after a power cycle.
    pub fn load(dir: &Path, resume: bool) -> anyhow::Result<Self> {
        let ca = dir.join(SERVER_CA);
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).with_context(|| {
            format!(
                "reading {} (start bench-fleetward with --tls-dir first)",
                ca.display()
            )
        })? {
            roots
                .add(cert.with_context(|| format!("a PEM certificate in {}", ca.display()))?)
                .with_context(|| format!("trusting {}", ca.display()))?;
        }
        let roots = Arc::new(roots);
        let anonymous = connector(&roots, resume, None)?;
        Ok(Self {
            dir: dir.to_owned(),
            roots,
            resume,
            anonymous,
            by_thing: parking_lot::Mutex::new(HashMap::new()),
            full: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        })
    }

    /// The connector that presents `thing`'s certificate, or none.
    fn connector(&self, thing: Option<&str>) -> anyhow::Result<TlsConnector> {
        let Some(thing) = thing else {
            return Ok(self.anonymous.clone());
        };
        if let Some(c) = self.by_thing.lock().get(thing) {
            return Ok(c.clone());
        }
        let (cert, key) = (
            self.dir.join(format!("{thing}.crt")),
            self.dir.join(format!("{thing}.key")),
        );
        let chain = CertificateDer::pem_file_iter(&cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| {
                format!(
                    "reading {} (did bench-fleetward --client-certs cover {thing}?)",
                    cert.display()
                )
            })?;
        let key = PrivateKeyDer::from_pem_file(&key)
            .with_context(|| format!("reading {}", key.display()))?;
        let c = connector(&self.roots, self.resume, Some((chain, key)))?;
        self.by_thing.lock().insert(thing.to_owned(), c.clone());
        Ok(c)
    }

    /// The TLS handshake over `tcp` with the server at `ip`, presenting `thing`'s certificate
    /// if given.
    pub async fn connect(
        &self,
        ip: IpAddr,
        tcp: TcpStream,
        thing: Option<&str>,
    ) -> anyhow::Result<TlsStream<TcpStream>> {
        let s = self
            .connector(thing)?
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .with_context(|| format!("TLS handshake with {ip}"))?;
        let kind = s.get_ref().1.handshake_kind();
        if kind == Some(HandshakeKind::Resumed) {
            self.resumed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.full.fetch_add(1, Ordering::Relaxed);
        }
        Ok(s)
    }

    /// Handshakes made so far: (full, resumed).
    pub fn handshakes(&self) -> (u64, u64) {
        (
            self.full.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
        )
    }
}

fn connector(
    roots: &Arc<RootCertStore>,
    resume: bool,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS versions")?
        .with_root_certificates(roots.clone());
    let mut config = match client_cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .context("the client certificate and key do not match")?,
        None => builder.with_no_client_auth(),
    };
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}
