//! The Fleetward resource types (`fleetward.io/v1alpha1`) and the CRDs generated from them.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod channel;
pub mod connection;
pub mod group;
pub mod policy;
pub mod schema;
pub mod status;
pub mod tenant;
#[cfg(feature = "testdata")]
pub mod testdata;
pub mod thing;
pub mod user;
#[cfg(feature = "validate")]
pub mod validate;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use channel::{Channel, ChannelHistory, ChannelSpec, parse_retention};
pub use connection::{Action, Connection, ConnectionSpec, Subject, SubjectKind, Subtopics};
pub use group::{Group, GroupSpec, Member, MemberKind};
pub use policy::{Policy, PolicySpec};
pub use status::{
    ChannelHistoryStatus, ChannelStatus, ClaimStatus, ConnectionStatus, EnforcedPolicy,
    GroupStatus, PolicyStatus, PolicyTextError, ResourceStatus, TenantStatus, ThingCertificate,
    ThingStatus, UserStatus,
};
pub use tenant::{
    AuthorizationEngine, DeviceCA, IssuerKind, IssuerRef, PROVISIONING_CLAIM_LABEL,
    PROVISIONING_CLAIMS_MAX, Provisioning, ProvisioningClaim, Tenant, TenantAuthorization,
    TenantLimits, TenantSpec, TenantWeb,
};
pub use thing::{
    CredentialMode, REVOKED_SERIALS_MAX, Thing, ThingCredentials, ThingSpec, ThingX509, X509Subject,
};
pub use user::{Role, SecretKeyRef, User, UserSpec};

/// The API group of every Fleetward resource.
pub const GROUP: &str = "fleetward.io";

/// The API version the types in this crate describe.
pub const VERSION: &str = "v1alpha1";

/// The first line of every generated CRD file.
const HEADER: &str = "# Generated from the Rust types in crds/src; do not edit.\n\
     # Regenerate with: UPDATE_CRDS=1 cargo test -p fleetward-crds\n";

/// The seven CRDs, in the order Tenant, Thing, Channel, Connection, User, Group, Policy.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Tenant::crd(),
        Thing::crd(),
        Channel::crd(),
        Connection::crd(),
        User::crd(),
        Group::crd(),
        Policy::crd(),
    ]
}

/// One file per CRD: its file name (`tenants.fleetward.io.yaml`, ...) and its YAML.
pub fn files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.as_deref().unwrap_or_default();
            Ok((
                format!("{name}.yaml"),
                format!("{HEADER}{}", serde_yaml::to_string(crd)?),
            ))
        })
        .collect()
}

/// All seven CRDs as one `---`-separated YAML stream, ready for `kubectl apply -f -`.
pub fn yaml_stream() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(HEADER);
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
