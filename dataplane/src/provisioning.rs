//! Fleet provisioning: what a dataplane asks of whatever can create Things (the operator over
//! PolicySync in a cluster, the manifest directory in `fleetward start`), and what it gets.
//!
//! The dataplane checks the request first (`http/provision.rs`): the claim certificate, the
//! name pattern, the claim's room. The [`Provisioner`] makes the Thing and signs the device's
//! certificate, checking the claim's count again where it is authoritative.

use std::future::Future;
use std::pin::Pin;

/// A device's request for a Thing and its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionRequest {
    /// The tenant.
    pub tenant: String,
    /// The claim the device presented the certificate of.
    pub claim: String,
    /// The thing name the device asks for.
    pub thing: String,
    /// The device's certificate signing request (PEM, PKCS#10): its own key pair, which never
    /// leaves it.
    pub csr_pem: String,
}

/// What a device gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    /// Its certificate (PEM), naming `fleetward://<tenant>/<thing>`.
    pub certificate_pem: String,
    /// The CA that signed it (PEM).
    pub ca_pem: String,
}

/// Why a request was not provisioned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// A Thing of that name exists.
    #[error("a thing named {0} exists already")]
    Exists(String),
    /// The claim made as many Things as it may; what to tell the device.
    #[error("{0}")]
    LimitReached(String),
    /// The claim is unknown or disabled, or its Secrets are missing.
    #[error("{0}")]
    Claim(String),
    /// The signing request does not read or cannot be signed.
    #[error("the certificate signing request was refused: {0}")]
    BadRequest(String),
    /// What creates Things cannot be reached or failed; the device may retry.
    #[error("provisioning is unavailable: {0}")]
    Unavailable(String),
}

/// Makes Things for provisioning requests. One per dataplane, shared by its requests.
pub trait Provisioner: Send + Sync + 'static {
    /// Creates the Thing (labelled with its claim) and signs the device's certificate.
    fn provision(
        &self,
        request: ProvisionRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Provisioned, ProvisionError>> + Send + '_>>;
}
