//! TLS for the MQTT and HTTP listeners: the server certificate, and client certificates.
//!
//! Every TLS listener asks for a client certificate and takes a connection without one (a
//! thing may still sign in with its key, a user with a token). A certificate's key is proved
//! in the handshake (its signature is checked here), but its chain is not: which CA to trust
//! depends on the tenant, which the handshake does not know. The chain is checked at CONNECT
//! (or on the HTTP request) against that one tenant's CA, so a refusal is the protocol's own
//! answer (MQTT v5 0x86, HTTP 401) rather than a TLS alert the client cannot read.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::WebPkiSupportedAlgorithms;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// The chain a client presented in its TLS handshake, leaf first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerChain(pub Arc<[CertificateDer<'static>]>);

tokio::task_local! {
    /// The client certificate chain of the HTTPS connection whose request is being served:
    /// set around each request by the HTTP listener, read where credentials are read (a
    /// request without `Authorization` presents its certificate).
    static REQUEST_CHAIN: Option<PeerChain>;
}

/// Runs `request` with `chain` as its connection's client certificate chain.
pub(crate) async fn with_request_chain<F: Future>(
    chain: Option<PeerChain>,
    request: F,
) -> F::Output {
    REQUEST_CHAIN.scope(chain, request).await
}

/// The client certificate chain of the request being served, if it came over TLS with one.
pub(crate) fn request_chain() -> Option<PeerChain> {
    REQUEST_CHAIN.try_with(Clone::clone).ok().flatten()
}

impl PeerChain {
    /// The chain of an established server-side TLS connection, if the client sent one.
    pub(crate) fn of(conn: &tokio_rustls::rustls::ServerConnection) -> Option<Self> {
        let chain = conn.peer_certificates().filter(|c| !c.is_empty())?;
        Some(Self(chain.iter().map(|c| c.clone().into_owned()).collect()))
    }
}

/// Asks for a client certificate, accepts a connection without one, and checks the proof of
/// possession of a presented certificate's key; its chain is checked later, per tenant.
#[derive(Debug)]
struct DeferredChainCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for DeferredChainCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No CA names: a client picks its certificate without learning which tenants have CAs.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        // Bounded here as well as at CONNECT: a longer chain is never a device's.
        if intermediates.len() >= fleetward_policy::certificates::MAX_CHAIN {
            return Err(Error::General("client certificate chain too long".into()));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The acceptor of a TLS listener: the server chain and key from PEM files, and client
/// certificates asked for (see the module docs).
pub(crate) fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = {
        let file = std::fs::File::open(cert)
            .with_context(|| format!("opening the TLS certificate {}", cert.display()))?;
        rustls_pemfile::certs(&mut std::io::BufReader::new(file))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading PEM certificates from {}", cert.display()))?
    };
    if certs.is_empty() {
        anyhow::bail!(
            "{} holds no PEM certificate; give --tls-cert a PEM chain",
            cert.display()
        );
    }
    let key_der = {
        let file = std::fs::File::open(key)
            .with_context(|| format!("opening the TLS key {}", key.display()))?;
        rustls_pemfile::private_key(&mut std::io::BufReader::new(file))
            .with_context(|| format!("reading a PEM private key from {}", key.display()))?
            .with_context(|| {
                format!(
                    "{} holds no PEM private key; give --tls-key a PKCS#8, PKCS#1 or SEC1 key",
                    key.display()
                )
            })?
    };
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let verifier = Arc::new(DeferredChainCheck {
        algorithms: provider.signature_verification_algorithms,
    });
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("configuring TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key_der)
        .context("the TLS certificate and key do not match or are unsupported")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
