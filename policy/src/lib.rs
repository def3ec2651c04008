//! Fleetward's policy core: snapshot, deltas, evaluator, decision cache, topic grammar, credentials.
//!
//! Plain Rust with no Kubernetes, network or runtime types. The operator converts its resources
//! into [`Resources`] (or calls the `upsert_*`/`remove_*` methods of a [`Snapshot`]) and ships
//! [`Delta`]s; the dataplane answers every CONNECT, PUBLISH and SUBSCRIBE through the
//! [`PolicyEvaluator`] trait, usually behind a [`CachedEvaluator`].

mod builtin;
pub mod cache;
pub mod credentials;
pub mod delta;
pub mod evaluator;
pub mod model;
pub mod pattern;
pub mod snapshot;
pub mod topic;

pub use cache::{CacheStats, CachedEvaluator, DecisionCache};
pub use credentials::{
    CredentialError, KeyDigest, generate_thing_key, hash_password, verify_password,
    verify_thing_key,
};
pub use delta::{ApplyError, Changes, Delta, diff};
pub use evaluator::{
    Action, AllowReason, Credential, Decision, DenyReason, PolicyEvaluator, Refusal, Subject,
};
pub use model::{
    Actions, Channel, Grant, GrantSubject, Group, Member, Qos, ResourceName, Resources, Role,
    SubjectKind, Tenant, TenantLimits, Thing, User,
};
pub use pattern::{PatternError, SubtopicPattern};
pub use snapshot::{BuildError, Snapshot};
pub use topic::{
    Mountpoint, Topic, TopicError, TopicKind, TopicLimits, filter_matches, parse_filter,
    parse_topic_name,
};
