//! The PolicySync protocol and the internal message format: generated protobuf and conversions.
//!
//! The `.proto` files under `proto/fleetward/` are the source of truth; they only ever grow
//! (DESIGN §9). [`convert`] maps the policy model to and from the wire types.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod convert;

/// PolicySync v1: the operator → dataplane push stream and its model messages.
pub mod policysync {
    /// Version 1.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("fleetward.policysync.v1");
    }
}

/// The internal message carried between adapters and over the bus.
pub mod message {
    /// Version 1.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("fleetward.message.v1");
    }
}

pub use policysync::v1 as pb;

/// TLS towards a PolicySync server, from PEM: trust `ca_pem`, present `identity` (certificate
/// and key) when the server asks for one, and expect `domain` in the server's certificate
/// instead of the URL's host when given.
#[cfg(feature = "client")]
#[must_use]
pub fn client_tls(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    domain: Option<&str>,
) -> tonic::transport::ClientTlsConfig {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        t = t.identity(Identity::from_pem(cert, key));
    }
    if let Some(d) = domain {
        t = t.domain_name(d);
    }
    t
}
