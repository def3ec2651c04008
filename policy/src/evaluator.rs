//! The `PolicyEvaluator` trait and the types it speaks: credentials, subjects, actions, decisions.

use std::fmt;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, UnixTime};

use crate::certificates::CertificateSeal;
use crate::model::SubjectKind;
use crate::topic::Topic;

/// What a client wants to do on a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish to a topic name (PUBLISH, will, HTTP POST).
    Publish,
    /// Subscribe to a filter (SUBSCRIBE, WebSocket stream).
    Subscribe,
}

impl Action {
    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

/// What a client presents to prove who it is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A thing's key with its name (MQTT `<tenant>/<thing>` + key, HTTP Basic).
    Thing {
        /// The tenant named by the client.
        tenant: &'a str,
        /// The thing named by the client.
        thing: &'a str,
        /// The key as presented.
        key: &'a [u8],
    },
    /// A thing's key alone (HTTP `Authorization: Thing <key>`); the key names its thing.
    ThingKey {
        /// The key as presented.
        key: &'a [u8],
    },
    /// A user's password (token issuance).
    Password {
        /// The tenant named by the client.
        tenant: &'a str,
        /// The user named by the client.
        user: &'a str,
        /// The password as presented.
        password: &'a [u8],
    },
    /// A user token whose signature and expiry the caller has already verified.
    Token {
        /// The token's tenant claim.
        tenant: &'a str,
        /// The token's user claim.
        user: &'a str,
        /// The token's epoch claim; it must equal the user's current `tokenEpoch`.
        token_epoch: u64,
    },
    /// A client certificate chain (leaf first) whose holder proved its key in the TLS
    /// handshake; the chain itself is checked here, against the named tenant's CA.
    Certificate {
        /// The chain as the client sent it.
        chain: &'a [CertificateDer<'a>],
        /// `(tenant, thing)` the client also named (an MQTT username): it must be the thing
        /// the certificate names.
        claimed: Option<(&'a str, &'a str)>,
        /// The time to check validity at.
        now: UnixTime,
    },
}

impl fmt::Debug for Credential<'_> {
    /// Never prints a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Thing { tenant, thing, .. } => {
                write!(f, "Credential::Thing({tenant}/{thing}, key: <redacted>)")
            }
            Credential::ThingKey { .. } => f.write_str("Credential::ThingKey(<redacted>)"),
            Credential::Password { tenant, user, .. } => {
                write!(f, "Credential::Password({tenant}/{user}, <redacted>)")
            }
            Credential::Token {
                tenant,
                user,
                token_epoch,
            } => write!(f, "Credential::Token({tenant}/{user}, epoch {token_epoch})"),
            Credential::Certificate { chain, claimed, .. } => {
                write!(
                    f,
                    "Credential::Certificate({} certificates, claimed {claimed:?})",
                    chain.len()
                )
            }
        }
    }
}

/// An authenticated thing or user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    /// The subject's tenant.
    pub tenant: String,
    /// Thing or user.
    pub kind: SubjectKind,
    /// The subject's name in its tenant.
    pub name: String,
    /// For a user signed in with a token, the token's epoch; a later epoch revokes it.
    pub token_epoch: Option<u64>,
    /// For a thing that authenticated with a client certificate, that certificate: revoking
    /// it, or dropping its CA from the tenant's bundle, ends the subject's sessions.
    pub certificate: Option<Arc<CertificateSeal>>,
}

impl Subject {
    /// A thing of a tenant.
    pub fn thing(tenant: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            kind: SubjectKind::Thing,
            name: name.into(),
            token_epoch: None,
            certificate: None,
        }
    }

    /// A user of a tenant, not bound to a token.
    pub fn user(tenant: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            kind: SubjectKind::User,
            name: name.into(),
            token_epoch: None,
            certificate: None,
        }
    }
}

/// Why something is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllowReason {
    /// A grant (direct or through a group) covers it.
    Grant,
    /// The user's role (admin, viewer) covers it.
    Role,
}

impl AllowReason {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AllowReason::Grant => "grant",
            AllowReason::Role => "role",
        }
    }
}

/// Why something is refused. Labels are stable: logs, metrics and reason-code maps use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No such tenant.
    UnknownTenant,
    /// The tenant is suspended.
    TenantSuspended,
    /// No such thing or user in the tenant.
    UnknownSubject,
    /// The thing or user is disabled.
    SubjectDisabled,
    /// The key or password does not match.
    BadCredential,
    /// The token's epoch is no longer the user's.
    TokenRevoked,
    /// The topic names another tenant than the subject's.
    CrossTenant,
    /// No such channel in the tenant.
    UnknownChannel,
    /// A publish topic has wildcards.
    WildcardPublish,
    /// No grant or role gives the action on the channel.
    NoGrant,
    /// Grants exist, but their allow patterns do not cover the subtopic or filter.
    SubtopicNotAllowed,
    /// A deny pattern of an applicable grant hits the subtopic or filter.
    SubtopicDenied,
    /// A `viewer` user publishes: the role only reads, whatever a grant says.
    ReadOnlyRole,
    /// The evaluator has no policy to answer from (never loaded, or the engine failed).
    PolicyUnavailable,
    /// A publish on the tenant's audit channel, or a subscription to it by anyone but an admin.
    AuditChannel,
    /// A Cedar `forbid` policy of the tenant applies (tenants on the Cedar engine).
    CedarForbid,
    /// No Cedar `permit` policy of the tenant applies (tenants on the Cedar engine).
    CedarNoPermit,
}

impl DenyReason {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::UnknownTenant => "unknown_tenant",
            DenyReason::TenantSuspended => "tenant_suspended",
            DenyReason::UnknownSubject => "unknown_subject",
            DenyReason::SubjectDisabled => "subject_disabled",
            DenyReason::BadCredential => "bad_credential",
            DenyReason::TokenRevoked => "token_revoked",
            DenyReason::CrossTenant => "cross_tenant",
            DenyReason::UnknownChannel => "unknown_channel",
            DenyReason::WildcardPublish => "wildcard_publish",
            DenyReason::NoGrant => "no_grant",
            DenyReason::SubtopicNotAllowed => "subtopic_not_allowed",
            DenyReason::SubtopicDenied => "subtopic_denied",
            DenyReason::ReadOnlyRole => "read_only_role",
            DenyReason::AuditChannel => "audit_channel",
            DenyReason::PolicyUnavailable => "policy_unavailable",
            DenyReason::CedarForbid => "cedar_forbid",
            DenyReason::CedarNoPermit => "cedar_no_permit",
        }
    }

    /// Every reason, for exhaustive maps and tests.
    pub const ALL: [DenyReason; 17] = [
        DenyReason::UnknownTenant,
        DenyReason::TenantSuspended,
        DenyReason::UnknownSubject,
        DenyReason::SubjectDisabled,
        DenyReason::BadCredential,
        DenyReason::TokenRevoked,
        DenyReason::CrossTenant,
        DenyReason::UnknownChannel,
        DenyReason::WildcardPublish,
        DenyReason::NoGrant,
        DenyReason::SubtopicNotAllowed,
        DenyReason::SubtopicDenied,
        DenyReason::ReadOnlyRole,
        DenyReason::PolicyUnavailable,
        DenyReason::AuditChannel,
        DenyReason::CedarForbid,
        DenyReason::CedarNoPermit,
    ];
}

/// The answer to an authorization question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Allowed.
    Allow(AllowReason),
    /// Refused.
    Deny(DenyReason),
}

impl Decision {
    /// Whether it is allowed.
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The reason's stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow(r) => r.as_str(),
            Decision::Deny(r) => r.as_str(),
        }
    }
}

/// An authentication refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("authentication refused: {}", .reason.as_str())]
pub struct Refusal {
    /// Why.
    pub reason: DenyReason,
}

impl From<DenyReason> for Refusal {
    fn from(reason: DenyReason) -> Self {
        Self { reason }
    }
}

/// Answers who a client is and what it may do. The dataplane depends on this trait only.
///
/// The built-in implementation is [`crate::Snapshot`]; other engines (Cedar, OPA) can plug in.
pub trait PolicyEvaluator {
    /// The policy version answers come from. It must never decrease, and must be read before
    /// the policy it describes is consulted, so a cache never files an older answer under a
    /// newer version.
    fn version(&self) -> u64;

    /// The version of what answers about subjects of `tenant` come from. Two calls that give
    /// the same value must mean the same policy for that tenant, and a value never comes back
    /// for another one; like [`Self::version`], it is read before the policy is consulted. The
    /// default, [`Self::version`] itself, changes with every policy. A [`crate::Snapshot`]
    /// gives each tenant its own (see [`crate::changes`]), so that answers about tenants a
    /// change did not touch stay valid in a cache.
    fn tenant_version(&self, tenant: &str) -> u64 {
        let _ = tenant;
        self.version()
    }

    /// Authenticates a credential. The credential is checked before any other state: an
    /// unknown tenant or subject, a wrong key or password, and a disabled subject or suspended
    /// tenant presented with a wrong one all answer `BadCredential`, after the same work. Only
    /// the right credential learns `SubjectDisabled` or `TenantSuspended`.
    fn authenticate(&self, credential: &Credential<'_>) -> Result<Subject, Refusal>;

    /// Whether `subject` may take `action` on `topic` (a topic name or a filter).
    fn authorize(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> Decision;

    /// Whether a subscription to `filter`, which [`Self::authorize`] allowed, may match topics
    /// the subject may not receive (a subtopic deny overlaps it): then each delivery through it
    /// is checked, by `authorize` of `Action::Subscribe` on the delivered topic. `false`
    /// promises that every topic the filter matches is allowed, so deliveries go unchecked;
    /// an engine that cannot tell answers `true`, the default.
    fn withholds(&self, subject: &Subject, filter: &Topic<'_>) -> bool {
        let _ = (subject, filter);
        true
    }

    /// Whether an authenticated subject is still allowed to be connected (run on every new
    /// policy version: deleted, disabled, suspended or revoked subjects are disconnected).
    fn check_subject(&self, subject: &Subject) -> Result<(), Refusal>;
}

macro_rules! forward_evaluator {
    ($($ty:ty),*) => {$(
        impl<E: PolicyEvaluator + ?Sized> PolicyEvaluator for $ty {
            fn version(&self) -> u64 {
                (**self).version()
            }
            fn tenant_version(&self, tenant: &str) -> u64 {
                (**self).tenant_version(tenant)
            }
            fn authenticate(&self, credential: &Credential<'_>) -> Result<Subject, Refusal> {
                (**self).authenticate(credential)
            }
            fn authorize(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> Decision {
                (**self).authorize(subject, action, topic)
            }
            fn withholds(&self, subject: &Subject, filter: &Topic<'_>) -> bool {
                (**self).withholds(subject, filter)
            }
            fn check_subject(&self, subject: &Subject) -> Result<(), Refusal> {
                (**self).check_subject(subject)
            }
        }
    )*};
}

forward_evaluator!(&E, Box<E>, Arc<E>);

// Engines are chosen at run time, so the trait must stay usable as `dyn PolicyEvaluator`.
const _: Option<&(dyn PolicyEvaluator + Send + Sync)> = None;
