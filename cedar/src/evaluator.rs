//! [`CedarEvaluator`]: the [`PolicyEvaluator`] that asks Cedar about publish and subscribe.
//!
//! Credentials, subject liveness, the tenant boundary, unknown channels and wildcard publishes
//! are answered by the built-in logic of the [`Snapshot`]; only what a subject may do inside its
//! own tenant goes to the tenant's Cedar policy set.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Request, RestrictedExpression,
};
use fleetward_policy::{
    Action, AllowReason, Credential, Decision, DenyReason, Grant, GrantSubject, PolicyEvaluator,
    Refusal, Snapshot, Subject, SubjectKind, Topic,
};

use crate::schema::{CONNECT, PolicyError, validate_policies};
use crate::translate::{
    ROLE_PREFIX, TranslationError, grant_policies, longest_pattern, parse_translation,
    role_policies,
};

/// The level that stands for "any level" when a filter is decided on its topics: it holds NUL,
/// which no topic and no grant pattern can, so no literal of a policy can equal it.
const ANY_LEVEL: &str = "\0";

/// How deep a `#` filter is examined in a tenant with its own policies, at least: those may
/// speak of levels no grant pattern names (see the crate documentation).
const USER_POLICY_DEPTH: usize = 8;

/// One `Policy` object's text, for a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPolicy {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Its name in the tenant; its policies get ids `Policy/<name>/<n or @id>`.
    pub name: String,
    /// Cedar policy text: one or more `permit` and `forbid` policies.
    pub text: String,
}

/// Why a [`CedarEvaluator`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A user policy does not parse or does not validate against the schema.
    #[error("Policy {tenant}/{name} is invalid: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidPolicy {
        /// The tenant.
        tenant: String,
        /// The Policy's name.
        name: String,
        /// Each problem with its line and column.
        errors: Vec<PolicyError>,
    },
    /// The translation of grants did not parse (a bug of this crate).
    #[error(transparent)]
    Translation(#[from] TranslationError),
}

/// One tenant's Cedar policies, sliced so that a request is evaluated against the policies
/// that can apply to it only: Cedar's authorizer tries every policy it is given, and a
/// tenant's translated grants mostly name other subjects and channels.
struct TenantPolicies {
    /// Policies that may apply to any request: the roles' and the tenant's own.
    general: Vec<Policy>,
    /// The translated policies of grants, by the grant's subject and channel. Their scopes
    /// name that subject (or group) and channel, so no other request can satisfy them.
    by_target: HashMap<(GrantSubject, String), Vec<Policy>>,
    /// How many policies there are in all.
    count: usize,
    /// The longest fixed part of the tenant's grant patterns (for `#` filters).
    longest: usize,
    /// Whether the tenant has policies of its own beside the translation.
    own_policies: bool,
}

impl TenantPolicies {
    /// The policies that can apply to `subject` on `channel` (`None`: connecting, which no
    /// grant concerns).
    fn slice(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        channel: Option<&str>,
    ) -> Option<PolicySet> {
        let mut policies = self.general.clone();
        if let Some(channel) = channel {
            let direct = match subject.kind {
                SubjectKind::Thing => GrantSubject::Thing(subject.name.clone()),
                SubjectKind::User => GrantSubject::User(subject.name.clone()),
            };
            let groups = snapshot
                .groups_of(&subject.tenant, subject.kind, &subject.name)
                .iter()
                .map(|g| GrantSubject::Group(g.clone()));
            for who in std::iter::once(direct).chain(groups) {
                if let Some(found) = self.by_target.get(&(who, channel.to_owned())) {
                    policies.extend(found.iter().cloned());
                }
            }
        }
        PolicySet::from_policies(policies).ok()
    }
}

/// The entity type names and action ids, parsed once.
struct Names {
    thing: EntityTypeName,
    user: EntityTypeName,
    group: EntityTypeName,
    channel: EntityTypeName,
    topic: EntityTypeName,
    tenant: EntityTypeName,
    connect: EntityUid,
    publish: EntityUid,
    subscribe: EntityUid,
}

impl Names {
    fn new() -> Self {
        // Constant names of the schema this crate generates; a test builds an evaluator.
        #[allow(clippy::expect_used)]
        let ty = |n: &str| EntityTypeName::from_str(n).expect("a schema type name");
        let action = |n: &str| EntityUid::from_type_name_and_id(ty("Action"), EntityId::new(n));
        Self {
            thing: ty("Thing"),
            user: ty("User"),
            group: ty("Group"),
            channel: ty("Channel"),
            topic: ty("Topic"),
            tenant: ty("Tenant"),
            connect: action(CONNECT),
            publish: action(Action::Publish.as_str()),
            subscribe: action(Action::Subscribe.as_str()),
        }
    }

    fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }
}

/// What Cedar answered for one concrete topic.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// Permitted, by these policies.
    Allow(AllowReason, Vec<PolicyId>),
    /// A forbid applies (or failed to evaluate, which refuses too).
    Forbid(Vec<PolicyId>),
    /// No permit applies.
    NoPermit,
}

/// A decision with the Cedar policies behind it (for `fleetward can-i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CedarExplanation {
    /// The decision, exactly as [`PolicyEvaluator::authorize`] answers it.
    pub decision: Decision,
    /// The policies that decided: the permits that allowed, or the forbids that refused.
    /// Empty when the decision was taken before Cedar was asked, or no permit applied.
    pub policies: Vec<String>,
}

/// Answers from a [`Snapshot`] and each tenant's Cedar policies: the translation of its grants
/// and roles, and its own `Policy` texts.
pub struct CedarEvaluator {
    snapshot: Arc<Snapshot>,
    tenants: HashMap<String, TenantPolicies>,
    authorizer: Authorizer,
    names: Names,
}

impl std::fmt::Debug for CedarEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CedarEvaluator")
            .field("snapshot", &self.snapshot)
            .field("tenants", &self.tenants.len())
            .finish()
    }
}

impl CedarEvaluator {
    /// Translates every tenant of `snapshot` and adds the `policies` of each; every policy is
    /// validated against the schema. Its version is the snapshot's: a change of policies must
    /// come with a new snapshot version.
    pub fn new(snapshot: Arc<Snapshot>, policies: &[UserPolicy]) -> Result<Self, BuildError> {
        let mut grants: HashMap<&str, Vec<&Grant>> = HashMap::new();
        for g in snapshot.grants() {
            grants.entry(g.tenant.as_str()).or_default().push(g);
        }
        let mut tenants = HashMap::new();
        for t in snapshot.tenants() {
            let of_tenant = grants.get(t.name.as_str()).map_or(&[][..], Vec::as_slice);
            let mut general = Vec::new();
            for (id, text) in role_policies() {
                general.push(parse_translation(id, &text)?);
            }
            let mut by_target: HashMap<(GrantSubject, String), Vec<Policy>> = HashMap::new();
            let mut count = general.len();
            for g in of_tenant {
                let key = (g.subject.clone(), g.channel.clone());
                for (id, text) in grant_policies(g) {
                    by_target
                        .entry(key.clone())
                        .or_default()
                        .push(parse_translation(id, &text)?);
                    count += 1;
                }
            }
            let policies = TenantPolicies {
                general,
                by_target,
                count,
                longest: longest_pattern(of_tenant),
                own_policies: false,
            };
            tenants.insert(t.name.clone(), policies);
        }
        for p in policies {
            let invalid = |errors| BuildError::InvalidPolicy {
                tenant: p.tenant.clone(),
                name: p.name.clone(),
                errors,
            };
            let own = validate_policies(&format!("Policy/{}", p.name), &p.text).map_err(invalid)?;
            // A Policy of a tenant that is not served answers nothing: the tenant is refused.
            let Some(tenant) = tenants.get_mut(&p.tenant) else {
                continue;
            };
            // Ids are `Policy/<name>/…`, and names are unique in a tenant, so none collide.
            tenant.general.extend(own.policies().cloned());
            tenant.count += own.policies().count();
            tenant.own_policies = true;
        }
        Ok(Self {
            snapshot,
            tenants,
            authorizer: Authorizer::new(),
            names: Names::new(),
        })
    }

    /// The snapshot answered from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The number of Cedar policies of `tenant` (translated and its own).
    pub fn policy_count(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.count)
    }

    /// Decides like [`PolicyEvaluator::authorize`] and names the Cedar policies that decided.
    pub fn explain(
        &self,
        subject: &Subject,
        action: Action,
        topic: &Topic<'_>,
    ) -> CedarExplanation {
        let (decision, policies) = self.decide(subject, action, topic);
        CedarExplanation {
            decision,
            policies: policies.iter().map(ToString::to_string).collect(),
        }
    }

    fn decide(
        &self,
        subject: &Subject,
        action: Action,
        topic: &Topic<'_>,
    ) -> (Decision, Vec<PolicyId>) {
        if let Err(refusal) = self.snapshot.check_subject(subject) {
            return (Decision::Deny(refusal.reason), Vec::new());
        }
        let tenant = subject.tenant.as_str();
        // The tenant boundary and the grammar are decided before Cedar is asked.
        if topic.tenant() != tenant {
            return (Decision::Deny(DenyReason::CrossTenant), Vec::new());
        }
        if self.snapshot.channel(tenant, topic.channel()).is_none() {
            return (Decision::Deny(DenyReason::UnknownChannel), Vec::new());
        }
        if action == Action::Publish && topic.has_wildcards() {
            return (Decision::Deny(DenyReason::WildcardPublish), Vec::new());
        }
        let Some(policies) = self.tenants.get(tenant) else {
            return (Decision::Deny(DenyReason::PolicyUnavailable), Vec::new());
        };
        let Some(principal) = self.principal(subject) else {
            return (Decision::Deny(DenyReason::PolicyUnavailable), Vec::new());
        };
        let action_uid = match action {
            Action::Publish => &self.names.publish,
            Action::Subscribe => &self.names.subscribe,
        };
        let longest = if policies.own_policies {
            policies.longest.max(USER_POLICY_DEPTH)
        } else {
            policies.longest
        };
        let Some(set) = policies.slice(&self.snapshot, subject, Some(topic.channel())) else {
            return (Decision::Deny(DenyReason::PolicyUnavailable), Vec::new());
        };
        // A filter is decided on its topics: one per shape, `+` levels standing for any level
        // (the crate documentation says why this is exact for translated grants).
        let mut first_forbid = Vec::new();
        let mut allowed = None;
        for levels in representatives(topic.subtopic(), longest) {
            match self.ask(
                &set,
                &principal,
                action_uid,
                tenant,
                topic.channel(),
                &levels,
            ) {
                Err(()) => return (Decision::Deny(DenyReason::PolicyUnavailable), Vec::new()),
                Ok(Verdict::NoPermit) => {
                    return (Decision::Deny(DenyReason::CedarNoPermit), Vec::new());
                }
                Ok(Verdict::Forbid(ids)) => {
                    if first_forbid.is_empty() {
                        first_forbid = ids;
                    }
                }
                Ok(Verdict::Allow(reason, ids)) => {
                    if allowed.is_none() {
                        allowed = Some((reason, ids));
                    }
                }
            }
        }
        match allowed {
            // Every topic is permitted or forbidden, and some are permitted: the forbidden
            // ones are withheld per delivery ([`PolicyEvaluator::withholds`]).
            Some((reason, ids)) => (Decision::Allow(reason), ids),
            None => (Decision::Deny(DenyReason::CedarForbid), first_forbid),
        }
    }

    /// The principal's entity and its groups'.
    fn principal(&self, subject: &Subject) -> Option<Vec<Entity>> {
        let tenant = subject.tenant.as_str();
        let groups = self.snapshot.groups_of(tenant, subject.kind, &subject.name);
        let parents: Vec<EntityUid> = groups
            .iter()
            .map(|g| Names::uid(&self.names.group, g))
            .collect();
        let principal = match subject.kind {
            SubjectKind::Thing => Entity::new_with_tags(
                Names::uid(&self.names.thing, &subject.name),
                [],
                parents.iter().cloned(),
                [],
            ),
            SubjectKind::User => {
                let role = self.snapshot.user(tenant, &subject.name)?.role;
                Entity::new_with_tags(
                    Names::uid(&self.names.user, &subject.name),
                    [(
                        "role".to_owned(),
                        RestrictedExpression::new_string(role.as_str().to_owned()),
                    )],
                    parents.iter().cloned(),
                    [],
                )
            }
        }
        .ok()?;
        let mut entities = Vec::with_capacity(parents.len() + 1);
        entities.push(principal);
        entities.extend(parents.into_iter().map(Entity::with_uid));
        Some(entities)
    }

    /// Cedar's answer for one concrete topic of `channel` with these subtopic levels.
    fn ask(
        &self,
        set: &PolicySet,
        principal: &[Entity],
        action: &EntityUid,
        tenant: &str,
        channel: &str,
        levels: &[&str],
    ) -> Result<Verdict, ()> {
        let subtopic = levels.join("/");
        let channel_uid = Names::uid(&self.names.channel, channel);
        let channel_entity = Entity::new_with_tags(
            channel_uid.clone(),
            [(
                "name".to_owned(),
                RestrictedExpression::new_string(channel.to_owned()),
            )],
            [Names::uid(&self.names.tenant, tenant)],
            [],
        )
        .map_err(drop)?;
        let topic_uid = Names::uid(&self.names.topic, &subtopic);
        let depth = i64::try_from(levels.len()).map_err(drop)?;
        let topic = Entity::new_with_tags(
            topic_uid.clone(),
            [
                (
                    "channel".to_owned(),
                    RestrictedExpression::new_string(channel.to_owned()),
                ),
                (
                    "subtopic".to_owned(),
                    RestrictedExpression::new_string(subtopic),
                ),
                ("depth".to_owned(), RestrictedExpression::new_long(depth)),
            ],
            [channel_uid],
            levels.iter().enumerate().map(|(i, l)| {
                (
                    i.to_string(),
                    RestrictedExpression::new_string((*l).to_owned()),
                )
            }),
        )
        .map_err(drop)?;
        let entities = Entities::from_entities(
            principal.iter().cloned().chain([channel_entity, topic]),
            None,
        )
        .map_err(drop)?;
        let principal_uid = principal.first().ok_or(())?.uid();
        let request = Request::new(
            principal_uid,
            action.clone(),
            topic_uid,
            Context::empty(),
            None,
        )
        .map_err(drop)?;
        Ok(self.verdict(set, &request, &entities))
    }

    fn verdict(&self, set: &PolicySet, request: &Request, entities: &Entities) -> Verdict {
        let response = self.authorizer.is_authorized(request, set, entities);
        // A forbid that fails to evaluate refuses: its author meant to refuse something.
        let failed_forbids: Vec<PolicyId> = response
            .diagnostics()
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(e) => e.policy_id().clone(),
            })
            .filter(|id| set.policy(id).is_some_and(|p| p.effect() == Effect::Forbid))
            .collect();
        let reasons: Vec<PolicyId> = response.diagnostics().reason().cloned().collect();
        if !failed_forbids.is_empty() {
            return Verdict::Forbid(failed_forbids);
        }
        match response.decision() {
            CedarDecision::Allow => {
                let by_role = reasons
                    .iter()
                    .all(|id| AsRef::<str>::as_ref(id).starts_with(ROLE_PREFIX));
                let reason = if by_role {
                    AllowReason::Role
                } else {
                    AllowReason::Grant
                };
                Verdict::Allow(reason, reasons)
            }
            CedarDecision::Deny if reasons.is_empty() => Verdict::NoPermit,
            CedarDecision::Deny => Verdict::Forbid(reasons),
        }
    }

    /// Whether Cedar lets `subject` connect (the built-in checks passed).
    fn may_connect(&self, subject: &Subject) -> Result<(), Refusal> {
        let tenant = subject.tenant.as_str();
        let unavailable = || Refusal::from(DenyReason::PolicyUnavailable);
        let policies = self.tenants.get(tenant).ok_or_else(unavailable)?;
        let principal = self.principal(subject).ok_or_else(unavailable)?;
        let tenant_uid = Names::uid(&self.names.tenant, tenant);
        let principal_uid = principal.first().ok_or_else(unavailable)?.uid();
        let entities = Entities::from_entities(
            principal
                .into_iter()
                .chain([Entity::with_uid(tenant_uid.clone())]),
            None,
        )
        .map_err(|_| unavailable())?;
        let request = Request::new(
            principal_uid,
            self.names.connect.clone(),
            tenant_uid,
            Context::empty(),
            None,
        )
        .map_err(|_| unavailable())?;
        let set = policies
            .slice(&self.snapshot, subject, None)
            .ok_or_else(unavailable)?;
        match self.verdict(&set, &request, &entities) {
            Verdict::Allow(..) => Ok(()),
            Verdict::Forbid(_) => Err(DenyReason::CedarForbid.into()),
            Verdict::NoPermit => Err(DenyReason::CedarNoPermit.into()),
        }
    }
}

/// The concrete topics (as level lists) a subtopic filter is decided on: itself for a topic
/// name; each `+` as [`ANY_LEVEL`]; for a trailing `#`, the prefix followed by k any-levels for
/// every k up to one past the longest pattern, beyond which every k answers alike.
fn representatives(subtopic: Option<&str>, longest: usize) -> Vec<Vec<&str>> {
    fn any(l: &str) -> &str {
        if l == "+" { ANY_LEVEL } else { l }
    }
    let Some(sub) = subtopic else {
        return vec![Vec::new()];
    };
    let Some(prefix) = sub.strip_suffix('#') else {
        return vec![sub.split('/').map(any).collect()];
    };
    let prefix: Vec<&str> = match prefix.strip_suffix('/') {
        Some(p) => p.split('/').map(any).collect(),
        None => Vec::new(),
    };
    let extra = longest.saturating_sub(prefix.len()) + 1;
    (0..=extra)
        .map(|k| {
            let mut levels = prefix.clone();
            levels.extend(std::iter::repeat_n(ANY_LEVEL, k));
            levels
        })
        .collect()
}

impl PolicyEvaluator for CedarEvaluator {
    fn version(&self) -> u64 {
        self.snapshot.version()
    }

    fn authenticate(&self, credential: &Credential<'_>) -> Result<Subject, Refusal> {
        let subject = self.snapshot.authenticate(credential)?;
        self.may_connect(&subject)?;
        Ok(subject)
    }

    fn authorize(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> Decision {
        self.decide(subject, action, topic).0
    }

    /// The translated forbids are exactly the grants' deny patterns, so the built-in answer
    /// holds for them; a tenant's own policies may forbid any topic, so its filters are
    /// always checked per delivery.
    fn withholds(&self, subject: &Subject, filter: &Topic<'_>) -> bool {
        let own = self
            .tenants
            .get(subject.tenant.as_str())
            .is_none_or(|t| t.own_policies);
        own || self.snapshot.withholds(subject, filter)
    }

    fn check_subject(&self, subject: &Subject) -> Result<(), Refusal> {
        self.snapshot.check_subject(subject)?;
        self.may_connect(subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_decided_on_one_topic_per_shape() {
        assert_eq!(representatives(None, 3), vec![Vec::<&str>::new()]);
        assert_eq!(representatives(Some("a/b"), 3), vec![vec!["a", "b"]]);
        assert_eq!(representatives(Some("a/+"), 3), vec![vec!["a", ANY_LEVEL]]);
        assert_eq!(
            representatives(Some("a/#"), 2),
            vec![
                vec!["a"],
                vec!["a", ANY_LEVEL],
                vec!["a", ANY_LEVEL, ANY_LEVEL]
            ]
        );
        assert_eq!(
            representatives(Some("#"), 0),
            vec![Vec::<&str>::new(), vec![ANY_LEVEL]]
        );
    }
}
