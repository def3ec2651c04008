//! [`CedarEngine`]: the [`TenantEngine`] that decides, with Cedar, what the subjects of the
//! tenants whose engine is `cedar` may do.
//!
//! Credentials, subject liveness, the tenant boundary, unknown channels and wildcard publishes
//! are answered by the built-in logic of the [`Snapshot`] ([`Snapshot::builtin`]); only what a
//! subject may do inside its own tenant goes to the tenant's Cedar policies.
//!
//! # Cost of a decision
//!
//! Cedar's authorizer tries every policy it is given, and a tenant's translated grants mostly
//! name other subjects and channels. So each tenant's policies are kept as prebuilt sets, split
//! by what their scopes can match: the action, the principal's kind (`principal is Thing`, `==
//! User::"…"`), and the channel a `resource in Channel::"…"` names; the translated grants are
//! further split by their target (subject or group, and channel). A policy goes into every set
//! its scope might match. A request is evaluated against its sets only, and the answers are
//! combined as Cedar combines policies (a satisfied forbid wins; else a satisfied permit
//! allows): each policy is evaluated on its own, and the ones left out have a scope the request
//! fails, so splitting changes no answer. Nothing is built per request but its entities.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request,
    ResourceConstraint, RestrictedExpression,
};
use fleetward_policy::{
    Action, AllowReason, Decision, DenyReason, Engine, Grant, GrantSubject, PolicyEvaluator,
    Refusal, Snapshot, Subject, SubjectKind, TenantEngine, TenantPolicy, Topic,
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

/// Why a tenant's Cedar policies could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A `Policy` does not parse or does not validate against the schema.
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

/// Where a request looks for the policies that can apply to it: its action (`connect`,
/// `publish`, `subscribe`), its principal's kind (thing, user) and, for a policy whose resource
/// scope names a channel, that channel (`None`: any resource).
type BucketKey = (u8, u8, Option<String>);

/// Policies split by the requests their scopes can match. A policy goes into every bucket its
/// scope might match (a superset), so a request evaluated against its buckets only gets the
/// answer it would get from the whole set: the policies left out have a scope it fails.
#[derive(Default)]
struct Buckets {
    sets: HashMap<BucketKey, PolicySet>,
}

impl Buckets {
    fn new(policies: Vec<Policy>) -> Result<Self, BuildError> {
        let mut by_key: HashMap<BucketKey, Vec<Policy>> = HashMap::new();
        for p in policies {
            for key in bucket_keys(&p) {
                by_key.entry(key).or_default().push(p.clone());
            }
        }
        let sets = by_key
            .into_iter()
            .map(|(k, v)| Ok((k, set_of(v)?)))
            .collect::<Result<_, BuildError>>()?;
        Ok(Self { sets })
    }

    /// The sets for a request: those of any resource, then those of its channel.
    fn for_request<'a>(
        &'a self,
        action: u8,
        kind: u8,
        channel: Option<&str>,
        out: &mut Vec<&'a PolicySet>,
    ) {
        if let Some(set) = self.sets.get(&(action, kind, None)) {
            out.push(set);
        }
        if let Some(channel) = channel
            && let Some(set) = self.sets.get(&(action, kind, Some(channel.to_owned())))
        {
            out.push(set);
        }
    }
}

/// The index of an action in a [`BucketKey`].
fn action_index(action: Option<Action>) -> u8 {
    match action {
        None => 0,
        Some(Action::Publish) => 1,
        Some(Action::Subscribe) => 2,
    }
}

/// The index of a principal's kind in a [`BucketKey`].
fn kind_index(kind: SubjectKind) -> u8 {
    match kind {
        SubjectKind::Thing => 0,
        SubjectKind::User => 1,
    }
}

/// The buckets a policy's scope might match.
fn bucket_keys(policy: &Policy) -> Vec<BucketKey> {
    let action_of = |uid: &EntityUid| match uid.id().unescaped() {
        id if id == CONNECT => Some(0),
        id if id == Action::Publish.as_str() => Some(1),
        id if id == Action::Subscribe.as_str() => Some(2),
        _ => None,
    };
    let actions: Vec<u8> = match policy.action_constraint() {
        ActionConstraint::Any => vec![0, 1, 2],
        ActionConstraint::Eq(uid) => action_of(&uid).into_iter().collect(),
        // The schema has no action groups: `in [..]` is membership in the list.
        ActionConstraint::In(list) => list.iter().filter_map(action_of).collect(),
    };
    let kind_of = |ty: &EntityTypeName| match ty.basename() {
        "Thing" => vec![0],
        "User" => vec![1],
        // A group's members, or a type no principal has (then nothing matches; kept anyway).
        _ => vec![0, 1],
    };
    let kinds = match policy.principal_constraint() {
        PrincipalConstraint::Any => vec![0, 1],
        PrincipalConstraint::In(uid) | PrincipalConstraint::Eq(uid) => kind_of(uid.type_name()),
        PrincipalConstraint::Is(ty) | PrincipalConstraint::IsIn(ty, _) => kind_of(&ty),
    };
    let channel_of = |uid: &EntityUid| {
        (uid.type_name().basename() == "Channel").then(|| uid.id().unescaped().to_owned())
    };
    let channel = match policy.resource_constraint() {
        ResourceConstraint::In(uid) | ResourceConstraint::IsIn(_, uid) => channel_of(&uid),
        _ => None,
    };
    let mut keys = Vec::with_capacity(actions.len() * kinds.len());
    for a in &actions {
        for k in &kinds {
            keys.push((*a, *k, channel.clone()));
        }
    }
    keys
}

/// One tenant's Cedar policies, sliced by what they can apply to (see the module docs).
struct TenantPolicies {
    /// Policies that may apply to any subject: the roles' and the tenant's own.
    general: Buckets,
    /// The translated policies of grants, by the grant's subject and channel.
    by_target: HashMap<(GrantSubject, String), Buckets>,
    /// How many policies there are in all.
    count: usize,
    /// The longest fixed part of the tenant's grant patterns (for `#` filters).
    longest: usize,
    /// Whether the tenant has policies of its own beside the translation.
    own_policies: bool,
}

impl TenantPolicies {
    /// The translation of a tenant's grants and roles, and its own `Policy` texts (validated
    /// against the schema).
    fn build(grants: &[&Grant], own: &[&TenantPolicy]) -> Result<Self, BuildError> {
        let mut general = Vec::new();
        for (id, text) in role_policies() {
            general.push(parse_translation(id, &text)?);
        }
        let mut count = general.len();
        let mut targets: HashMap<(GrantSubject, String), Vec<Policy>> = HashMap::new();
        for g in grants {
            let key = (g.subject.clone(), g.channel.clone());
            for (id, text) in grant_policies(g) {
                targets
                    .entry(key.clone())
                    .or_default()
                    .push(parse_translation(id, &text)?);
                count += 1;
            }
        }
        for policy in own {
            let invalid = |errors| BuildError::InvalidPolicy {
                tenant: policy.tenant.clone(),
                name: policy.name.clone(),
                errors,
            };
            let source = format!("Policy/{}", policy.name);
            let set = validate_policies(&source, &policy.text).map_err(invalid)?;
            // Ids are `Policy/<name>/…`, and names are unique in a tenant, so none collide.
            general.extend(set.policies().cloned());
            count += set.policies().count();
        }
        let by_target = targets
            .into_iter()
            .map(|(k, v)| Ok((k, Buckets::new(v)?)))
            .collect::<Result<_, BuildError>>()?;
        Ok(Self {
            general: Buckets::new(general)?,
            by_target,
            count,
            longest: longest_pattern(grants),
            own_policies: !own.is_empty(),
        })
    }

    /// The prebuilt sets that can apply to `subject` taking `action` (`None`: connecting, which
    /// no grant concerns) on `channel`.
    fn sets<'a>(
        &'a self,
        snapshot: &Snapshot,
        subject: &Subject,
        action: Option<Action>,
        channel: Option<&str>,
    ) -> Vec<&'a PolicySet> {
        let (a, k) = (action_index(action), kind_index(subject.kind));
        let mut sets = Vec::with_capacity(4);
        self.general.for_request(a, k, channel, &mut sets);
        let Some(channel) = channel else {
            return sets;
        };
        if self.by_target.is_empty() {
            return sets;
        }
        let direct = match subject.kind {
            SubjectKind::Thing => GrantSubject::Thing(subject.name.clone()),
            SubjectKind::User => GrantSubject::User(subject.name.clone()),
        };
        let groups = snapshot
            .groups_of(&subject.tenant, subject.kind, &subject.name)
            .iter()
            .map(|g| GrantSubject::Group(g.clone()));
        for who in std::iter::once(direct).chain(groups) {
            if let Some(b) = self.by_target.get(&(who, channel.to_owned())) {
                b.for_request(a, k, Some(channel), &mut sets);
            }
        }
        sets
    }
}

fn set_of(policies: Vec<Policy>) -> Result<PolicySet, BuildError> {
    PolicySet::from_policies(policies).map_err(|e| {
        BuildError::Translation(TranslationError {
            id: "(a set of translated policies)".to_owned(),
            message: e.to_string(),
        })
    })
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

/// The Cedar engine of a snapshot: each Cedar tenant's translated grants and roles, and its
/// `Policy` texts. Built for one snapshot version; see [`fleetward_policy::engine`].
pub struct CedarEngine {
    version: u64,
    tenants: HashMap<String, TenantPolicies>,
    authorizer: Authorizer,
    names: Names,
}

impl std::fmt::Debug for CedarEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CedarEngine")
            .field("version", &self.version)
            .field("tenants", &self.tenants.len())
            .finish()
    }
}

impl CedarEngine {
    /// The engine for the tenants of `snapshot` whose engine is `cedar`, with the snapshot's
    /// policy texts. A tenant whose texts do not validate is left out, so it is refused with
    /// `policy_unavailable` (the operator serves only validated texts; this is a second line),
    /// and its error is returned beside the engine.
    pub fn build(snapshot: &Snapshot) -> (Self, Vec<BuildError>) {
        let cedar: Vec<&str> = snapshot
            .tenants()
            .filter(|t| t.engine == Engine::Cedar)
            .map(|t| t.name.as_str())
            .collect();
        let own: Vec<&TenantPolicy> = snapshot.policies().collect();
        Self::for_tenants(snapshot, &cedar, &own)
    }

    /// The engine for `tenants` of `snapshot` (whatever their engine), with `policies`.
    pub(crate) fn for_tenants(
        snapshot: &Snapshot,
        tenants: &[&str],
        policies: &[&TenantPolicy],
    ) -> (Self, Vec<BuildError>) {
        let mut grants: HashMap<&str, Vec<&Grant>> =
            tenants.iter().map(|t| (*t, Vec::new())).collect();
        for g in snapshot.grants() {
            if let Some(list) = grants.get_mut(g.tenant.as_str()) {
                list.push(g);
            }
        }
        let mut own: HashMap<&str, Vec<&TenantPolicy>> = HashMap::new();
        for p in policies {
            own.entry(p.tenant.as_str()).or_default().push(p);
        }
        let mut built = HashMap::new();
        let mut errors = Vec::new();
        for (tenant, of_tenant) in grants {
            let mut texts = own.remove(tenant).unwrap_or_default();
            // A stable order: the ids name the Policy, so the order only fixes which error
            // is reported first.
            texts.sort_by(|a, b| a.name.cmp(&b.name));
            let policies = TenantPolicies::build(&of_tenant, &texts);
            match policies {
                Ok(p) => {
                    built.insert(tenant.to_owned(), p);
                }
                Err(e) => errors.push(e),
            }
        }
        let engine = Self {
            version: snapshot.version(),
            tenants: built,
            authorizer: Authorizer::new(),
            names: Names::new(),
        };
        (engine, errors)
    }

    /// The number of Cedar policies of `tenant` (translated and its own).
    pub fn policy_count(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.count)
    }

    pub(crate) fn decide(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        action: Action,
        topic: &Topic<'_>,
    ) -> (Decision, Vec<PolicyId>) {
        if let Err(refusal) = snapshot.builtin().check_subject(subject) {
            return (Decision::Deny(refusal.reason), Vec::new());
        }
        let tenant = subject.tenant.as_str();
        // The tenant boundary and the grammar are decided before Cedar is asked.
        if topic.tenant() != tenant {
            return (Decision::Deny(DenyReason::CrossTenant), Vec::new());
        }
        if snapshot.channel(tenant, topic.channel()).is_none() {
            return (Decision::Deny(DenyReason::UnknownChannel), Vec::new());
        }
        if action == Action::Publish && topic.has_wildcards() {
            return (Decision::Deny(DenyReason::WildcardPublish), Vec::new());
        }
        let unavailable = (Decision::Deny(DenyReason::PolicyUnavailable), Vec::new());
        let Some(policies) = self.tenants.get(tenant) else {
            return unavailable;
        };
        let Some(principal) = self.principal(snapshot, subject) else {
            return unavailable;
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
        let sets = policies.sets(snapshot, subject, Some(action), Some(topic.channel()));
        // A filter is decided on its topics: one per shape, `+` levels standing for any level
        // (the crate documentation says why this is exact for translated grants).
        let mut first_forbid = Vec::new();
        let mut allowed = None;
        for levels in representatives(topic.subtopic(), longest) {
            let asked = self.ask(
                &sets,
                &principal,
                action_uid,
                tenant,
                topic.channel(),
                &levels,
            );
            match asked {
                Err(()) => return unavailable,
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
    fn principal(&self, snapshot: &Snapshot, subject: &Subject) -> Option<Vec<Entity>> {
        let tenant = subject.tenant.as_str();
        let groups = snapshot.groups_of(tenant, subject.kind, &subject.name);
        let parents: Vec<EntityUid> = groups
            .iter()
            .map(|g| Names::uid(&self.names.group, g))
            .collect();
        let principal = match subject.kind {
            SubjectKind::Thing => {
                let thing = snapshot.thing(tenant, &subject.name)?;
                let tags = thing
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
                Entity::new_with_tags(
                    Names::uid(&self.names.thing, &subject.name),
                    [],
                    parents.iter().cloned(),
                    tags,
                )
            }
            SubjectKind::User => {
                let role = snapshot.user(tenant, &subject.name)?.role;
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
        sets: &[&PolicySet],
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
        Ok(self.verdict(sets, &request, &entities))
    }

    /// Cedar's answer over several sets, combined as one set: a satisfied forbid (or one that
    /// fails to evaluate) in any refuses; else a satisfied permit in any allows.
    fn verdict(&self, sets: &[&PolicySet], request: &Request, entities: &Entities) -> Verdict {
        let mut forbids = Vec::new();
        let mut permits = Vec::new();
        for set in sets {
            let response = self.authorizer.is_authorized(request, set, entities);
            // A forbid that fails to evaluate refuses: its author meant to refuse something.
            forbids.extend(
                response
                    .diagnostics()
                    .errors()
                    .map(|e| match e {
                        cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                            e.policy_id().clone()
                        }
                    })
                    .filter(|id| set.policy(id).is_some_and(|p| p.effect() == Effect::Forbid)),
            );
            let reasons = response.diagnostics().reason().cloned();
            match response.decision() {
                CedarDecision::Allow => permits.extend(reasons),
                CedarDecision::Deny => forbids.extend(reasons),
            }
        }
        if !forbids.is_empty() {
            return Verdict::Forbid(forbids);
        }
        if permits.is_empty() {
            return Verdict::NoPermit;
        }
        let by_role = permits
            .iter()
            .all(|id| AsRef::<str>::as_ref(id).starts_with(ROLE_PREFIX));
        let reason = if by_role {
            AllowReason::Role
        } else {
            AllowReason::Grant
        };
        Verdict::Allow(reason, permits)
    }

    /// Whether Cedar lets `subject` connect (the built-in checks passed).
    fn connect(&self, snapshot: &Snapshot, subject: &Subject) -> Result<(), Refusal> {
        let tenant = subject.tenant.as_str();
        let unavailable = || Refusal::from(DenyReason::PolicyUnavailable);
        let policies = self.tenants.get(tenant).ok_or_else(unavailable)?;
        let principal = self.principal(snapshot, subject).ok_or_else(unavailable)?;
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
        let sets = policies.sets(snapshot, subject, None, None);
        match self.verdict(&sets, &request, &entities) {
            Verdict::Allow(..) => Ok(()),
            Verdict::Forbid(_) => Err(DenyReason::CedarForbid.into()),
            Verdict::NoPermit => Err(DenyReason::CedarNoPermit.into()),
        }
    }

    /// Whether deliveries on `filter` must be decided one by one.
    pub(crate) fn must_withhold(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        filter: &Topic<'_>,
    ) -> bool {
        let own = self
            .tenants
            .get(subject.tenant.as_str())
            .is_none_or(|t| t.own_policies);
        // The translated forbids are exactly the grants' deny patterns, so the built-in
        // answer holds for them; a tenant's own policies may forbid any topic.
        own || snapshot.builtin().withholds(subject, filter)
    }
}

impl TenantEngine for CedarEngine {
    fn version(&self) -> u64 {
        self.version
    }

    fn may_connect(&self, snapshot: &Snapshot, subject: &Subject) -> Result<(), Refusal> {
        self.connect(snapshot, subject)
    }

    fn authorize(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        action: Action,
        topic: &Topic<'_>,
    ) -> Decision {
        self.decide(snapshot, subject, action, topic).0
    }

    fn withholds(&self, snapshot: &Snapshot, subject: &Subject, filter: &Topic<'_>) -> bool {
        self.must_withhold(snapshot, subject, filter)
    }

    fn explain(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        action: Action,
        topic: &Topic<'_>,
    ) -> (Decision, Vec<String>) {
        let (decision, ids) = self.decide(snapshot, subject, action, topic);
        (decision, ids.iter().map(ToString::to_string).collect())
    }

    fn name(&self) -> &'static str {
        "cedar"
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
