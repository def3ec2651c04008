//! Fleetward's policy core: snapshot, deltas, evaluator, decision cache, delivery checks, topic
//! grammar, credentials.
//!
//! Plain Rust with no Kubernetes, network or runtime types. The operator converts its resources
//! into [`Resources`] (or calls the `upsert_*`/`remove_*` methods of a [`Snapshot`]) and ships
//! [`Delta`]s; the dataplane answers every CONNECT, PUBLISH and SUBSCRIBE through the
//! [`PolicyEvaluator`] trait, usually behind a [`CachedEvaluator`].
//!
//! A [`Snapshot`] keeps its tables in persistent maps: a copy costs O(1) and applying a
//! [`Delta`] to it what the delta changes. Each tenant has a version of its own, which the
//! decision cache keys its answers by, and an applied delta notes whom it reached
//! ([`changes`]), so a dataplane re-checks only the sessions it concerns.
//!
//! ```
//! use fleetward_policy::*;
//!
//! let key = generate_thing_key()?;
//! let resources = Resources {
//!     tenants: vec![Tenant {
//!         name: "acme".into(),
//!         uid: String::new(),
//!         suspended: false,
//!         limits: TenantLimits::default(),
//!         web: Default::default(),
//!         engine: Engine::Builtin,
//!         device_ca: None,
//!         provisioning: Vec::new(),
//!     }],
//!     things: vec![Thing {
//!         tenant: "acme".into(),
//!         name: "sensor-1".into(),
//!         key_digests: vec![KeyDigest::of(key.as_bytes())],
//!         disabled: false,
//!         mountpoint: None,
//!         max_connections: None,
//!         attributes: Default::default(),
//!         credential_mode: CredentialMode::Key,
//!         x509: None,
//!     }],
//!     channels: vec![Channel {
//!         tenant: "acme".into(),
//!         name: "telemetry".into(),
//!         uid: String::new(),
//!         max_qos: Qos::AtLeastOnce,
//!         retained_allowed: true,
//!         max_message_size: None,
//!         delivery_metadata: false,
//!         history_retention_secs: None,
//!     }],
//!     grants: vec![Grant {
//!         tenant: "acme".into(),
//!         name: "sensor-1-telemetry".into(),
//!         subject: GrantSubject::Thing("sensor-1".into()),
//!         channel: "telemetry".into(),
//!         actions: Actions::PUBLISH,
//!         allow: vec!["rooms/#".parse()?],
//!         deny: vec![],
//!     }],
//!     ..Resources::default()
//! };
//! let policy = CachedEvaluator::new(Snapshot::from_resources(1, resources)?, 100_000);
//!
//! let subject = policy.authenticate(&Credential::Thing {
//!     tenant: "acme",
//!     thing: "sensor-1",
//!     key: key.as_bytes(),
//! })?;
//! let limits = TopicLimits::default();
//! let topic = parse_topic_name(b"m/acme/c/telemetry/rooms/7/temp", &limits)?;
//! assert_eq!(policy.authorize(&subject, Action::Publish, &topic), Decision::Allow(AllowReason::Grant));
//! let other = parse_topic_name(b"m/acme/c/telemetry/hall", &limits)?;
//! let denied = policy.authorize(&subject, Action::Publish, &other);
//! assert_eq!(denied.as_str(), "subtopic_not_allowed");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

mod builtin;
pub mod cache;
pub mod certificates;
pub mod changes;
pub mod credentials;
pub mod delivery;
pub mod delta;
pub mod engine;
pub mod evaluator;
pub mod explain;
pub mod model;
pub mod pattern;
pub mod provisioning;
pub mod snapshot;
#[cfg(test)]
mod testing;
pub mod tokens;
pub mod topic;
pub mod web;

pub use builtin::Builtin;
pub use cache::{CacheStats, CachedEvaluator, DecisionCache};
pub use certificates::{
    CaError, CertificateNames, CertificateSeal, CredentialMode, DeviceCa, ThingX509,
    normalize_serial,
};
pub use changes::{Since, SubjectName, Touched};
pub use credentials::{
    CredentialError, KeyDigest, generate_thing_key, hash_password, verify_password,
    verify_thing_key,
};
pub use delivery::DeliveryGate;
pub use delta::{ApplyError, Changes, Delta, diff};
pub use engine::TenantEngine;
pub use evaluator::{
    Action, AllowReason, Credential, Decision, DenyReason, PolicyEvaluator, Refusal, Subject,
};
pub use explain::{Explanation, GrantUse, deny_text};
pub use model::{
    AUDIT_CHANNEL, Actions, Channel, Engine, Grant, GrantSubject, Group, Member, Qos, ResourceName,
    Resources, Role, SigningAlgorithm, SigningKey, SubjectKind, Tenant, TenantLimits, TenantPolicy,
    Thing, User, is_dns_label,
};
pub use pattern::{PatternError, SubtopicPattern};
pub use provisioning::ProvisioningClaim;
pub use snapshot::{BuildError, Snapshot};
pub use tokens::{
    AccessClaims, KeyError, Keyring, TokenError, TokenSettings, generate_signing_key, new_kid,
    signing_key_from_pkcs8,
};
pub use topic::{
    Mountpoint, Topic, TopicError, TopicKind, TopicLimits, filter_matches, parse_filter,
    parse_topic_name,
};
pub use web::{TenantWeb, parse_origin};
