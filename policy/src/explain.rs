//! Explaining a decision (`fleetward can-i`): which Connection allowed it, or why it is refused.
//!
//! The decision itself always comes from [`PolicyEvaluator::authorize`], so an explanation can
//! never disagree with what a dataplane enforces; this module only finds the grants and patterns
//! behind it.

use std::fmt;

use crate::evaluator::{Action, AllowReason, Decision, DenyReason, PolicyEvaluator, Subject};
use crate::model::{Grant, Role, SubjectKind};
use crate::snapshot::Snapshot;
use crate::topic::Topic;

/// A Connection that takes part in a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantUse {
    /// The Connection's name in the tenant.
    pub connection: String,
    /// The group through which it reaches the subject, when not granted directly.
    pub via_group: Option<String>,
    /// The subtopic pattern involved: the allow pattern that matched, or the deny pattern that
    /// hit. `None` when the Connection allows every subtopic.
    pub pattern: Option<String>,
}

/// A decision with what lies behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The decision, exactly as the evaluator answers it.
    pub decision: Decision,
    /// For an allow by grant: the Connections that allow it. For a refusal by a deny pattern:
    /// the Connections whose deny pattern hits. For a refusal by uncovered subtopics: the
    /// Connections that give the action (with patterns that do not cover it). Otherwise empty.
    pub grants: Vec<GrantUse>,
    /// The user's role, when the subject is a user.
    pub role: Option<Role>,
    /// For a tenant with an external engine: the engine's policies that decided (the permits
    /// that allowed, or the forbids that refused), by id, such as
    /// `Policy/site-match/0` or `Connection/sensor-1-telemetry/permit`.
    pub policies: Vec<String>,
}

impl Snapshot {
    /// Explains whether `subject` may take `action` on `topic`.
    pub fn explain(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> Explanation {
        let role = match subject.kind {
            SubjectKind::User => self.user(&subject.tenant, &subject.name).map(|u| u.role),
            SubjectKind::Thing => None,
        };
        if let Some(engine) = self.external(&subject.tenant) {
            let (decision, policies) = match engine {
                Ok(engine) => engine.explain(self, subject, action, topic),
                Err(()) => (Decision::Deny(DenyReason::PolicyUnavailable), Vec::new()),
            };
            return Explanation {
                decision,
                grants: Vec::new(),
                role,
                policies,
            };
        }
        let decision = self.authorize(subject, action, topic);
        let subtopic = topic.subtopic();
        // A subscription may be covered by several allow patterns together, so for a filter
        // every pattern that overlaps it is named.
        let hits = |pattern: &crate::SubtopicPattern| match action {
            Action::Publish => pattern.matches(subtopic),
            Action::Subscribe => pattern.overlaps(subtopic),
        };
        let applicable = self.applicable_grants(subject, action, topic.channel());
        let grants = match decision {
            Decision::Allow(AllowReason::Grant) => applicable
                .filter_map(|(grant, via)| {
                    if grant.allow.is_empty() {
                        return Some(use_of(grant, via, None));
                    }
                    let pattern = grant.allow.iter().find(|p| hits(p))?;
                    Some(use_of(grant, via, Some(pattern.to_string())))
                })
                .collect(),
            Decision::Deny(DenyReason::SubtopicDenied) => applicable
                .filter_map(|(grant, via)| {
                    let pattern = grant.deny.iter().find(|p| hits(p))?;
                    Some(use_of(grant, via, Some(pattern.to_string())))
                })
                .collect(),
            Decision::Deny(DenyReason::SubtopicNotAllowed) => applicable
                .map(|(grant, via)| {
                    let patterns: Vec<String> = grant.allow.iter().map(|p| p.to_string()).collect();
                    use_of(grant, via, Some(patterns.join(", ")))
                })
                .collect(),
            _ => Vec::new(),
        };
        Explanation {
            decision,
            grants,
            role,
            policies: Vec::new(),
        }
    }
}

fn use_of(grant: &Grant, via: Option<&str>, pattern: Option<String>) -> GrantUse {
    GrantUse {
        connection: grant.name.clone(),
        via_group: via.map(str::to_owned),
        pattern,
    }
}

impl fmt::Display for GrantUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection {}", self.connection)?;
        if let Some(group) = &self.via_group {
            write!(f, " (through Group {group})")?;
        }
        match &self.pattern {
            Some(p) => write!(f, ", pattern {p}"),
            None => write!(f, ", every subtopic"),
        }
    }
}

/// What a person should read for each refusal.
pub fn deny_text(reason: DenyReason) -> &'static str {
    match reason {
        DenyReason::UnknownTenant => "the tenant does not exist (or is not Ready)",
        DenyReason::TenantSuspended => "the tenant is suspended",
        DenyReason::UnknownSubject => {
            "no such thing or user is served in the tenant (missing, or not Ready)"
        }
        DenyReason::SubjectDisabled => "the thing or user is disabled",
        DenyReason::BadCredential => "the credential does not match",
        DenyReason::TokenRevoked => "the token's epoch was revoked",
        DenyReason::CrossTenant => "the topic names another tenant than the subject's",
        DenyReason::UnknownChannel => "no such channel is served in the tenant",
        DenyReason::WildcardPublish => "a publish topic cannot hold wildcards",
        DenyReason::NoGrant => {
            "no Connection (direct, through a group, or by role) gives this action on the channel"
        }
        DenyReason::SubtopicNotAllowed => {
            "the Connections that give this action do not allow this subtopic"
        }
        DenyReason::SubtopicDenied => "a deny pattern of a Connection refuses this subtopic",
        DenyReason::ReadOnlyRole => "the user's role is viewer, which only subscribes",
        DenyReason::AuditChannel => {
            "the audit channel ($audit) is read by the tenant's admins only, and nobody publishes on it"
        }
        DenyReason::PolicyUnavailable => {
            "no policy is loaded (or the tenant's engine could not be built from it)"
        }
        DenyReason::CedarForbid => "a Cedar forbid policy of the tenant refuses this",
        DenyReason::CedarNoPermit => {
            "no Cedar permit policy of the tenant (a translated Connection, a role, or a Policy) allows this"
        }
    }
}
