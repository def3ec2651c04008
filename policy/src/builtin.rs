//! The built-in evaluator: answers from a `Snapshot`'s tables, with no I/O.
//!
//! A decision is allowed only when the tenant exists and is not suspended, the subject exists,
//! is enabled and belongs to the topic's tenant, the channel exists, and a grant (direct,
//! through a group, or the user's role) gives the action. Grants add up: their allow patterns
//! together must cover the subtopic or the whole filter. Deny patterns win: a topic one of them
//! matches (from any grant that gives the subject this action on this channel) is refused,
//! whatever allows it. A subscribe filter is refused only when the denies cover all of it; one
//! that overlaps them is granted, and the denied topics are withheld from it per delivery.

use crate::credentials::{KeyDigest, burn_password_check, verify_password, verify_thing_key};
use crate::evaluator::{
    Action, AllowReason, Credential, Decision, DenyReason, PolicyEvaluator, Refusal, Subject,
};
use crate::model::{AUDIT_CHANNEL, Grant, GrantSubjectKind, Role, SubjectKind, Thing, User};
use crate::pattern::covers;
use crate::snapshot::Snapshot;
use crate::topic::Topic;

/// Compared against when the thing or its tenant is unknown, so that refusal costs what a
/// wrong key costs. No key hashes to all zeroes, and a match is refused anyway.
const DUMMY_DIGESTS: &[KeyDigest] = &[KeyDigest::ZERO];

impl Snapshot {
    fn live_tenant(&self, tenant: &str) -> Result<(), DenyReason> {
        match self.tenant(tenant) {
            None => Err(DenyReason::UnknownTenant),
            Some(t) if t.suspended => Err(DenyReason::TenantSuspended),
            Some(_) => Ok(()),
        }
    }

    fn live_thing(&self, tenant: &str, name: &str) -> Result<&Thing, DenyReason> {
        self.live_tenant(tenant)?;
        match self.thing(tenant, name) {
            None => Err(DenyReason::UnknownSubject),
            Some(t) if t.disabled => Err(DenyReason::SubjectDisabled),
            Some(t) => Ok(t),
        }
    }

    fn live_user(&self, tenant: &str, name: &str) -> Result<&User, DenyReason> {
        self.live_tenant(tenant)?;
        match self.user(tenant, name) {
            None => Err(DenyReason::UnknownSubject),
            Some(u) if u.disabled => Err(DenyReason::SubjectDisabled),
            Some(u) => Ok(u),
        }
    }

    /// The subject's role if it is a user, after checking it may act at all.
    fn live_subject(&self, subject: &Subject) -> Result<Option<Role>, DenyReason> {
        match subject.kind {
            SubjectKind::Thing => self
                .live_thing(&subject.tenant, &subject.name)
                .map(|_| None),
            SubjectKind::User => {
                let user = self.live_user(&subject.tenant, &subject.name)?;
                match subject.token_epoch {
                    Some(epoch) if epoch != user.token_epoch => Err(DenyReason::TokenRevoked),
                    _ => Ok(Some(user.role)),
                }
            }
        }
    }

    fn thing_subject(&self, thing: &Thing) -> Subject {
        Subject::thing(&*thing.tenant, &*thing.name)
    }

    /// The grants on `channel` that give `action` to the subject: its own, then those of its
    /// groups, each with the group it comes through (`None` for a direct grant).
    pub(crate) fn applicable_grants<'a>(
        &'a self,
        subject: &'a Subject,
        action: Action,
        channel: &'a str,
    ) -> impl Iterator<Item = (&'a Grant, Option<&'a str>)> + Clone + 'a {
        let tenant = subject.tenant.as_str();
        let direct_kind = match subject.kind {
            SubjectKind::Thing => GrantSubjectKind::Thing,
            SubjectKind::User => GrantSubjectKind::User,
        };
        let direct = self
            .grants_on(tenant, direct_kind, &subject.name, channel)
            .iter()
            .map(|g| (&**g, None));
        let via_groups = self
            .groups_of(tenant, subject.kind, &subject.name)
            .iter()
            .flat_map(move |group| {
                self.grants_on(tenant, GrantSubjectKind::Group, group, channel)
                    .iter()
                    .map(move |g| (&**g, Some(group.as_str())))
            });
        direct
            .chain(via_groups)
            .filter(move |(g, _)| gives(g, action))
    }
}

fn role_allows(role: Option<Role>, action: Action) -> bool {
    match role {
        Some(Role::Admin) => true,
        Some(Role::Viewer) => action == Action::Subscribe,
        Some(Role::Member) | None => false,
    }
}

fn gives(grant: &Grant, action: Action) -> bool {
    match action {
        Action::Publish => grant.actions.publish,
        Action::Subscribe => grant.actions.subscribe,
    }
}

/// The built-in logic of a [`Snapshot`] alone, whatever engine its tenants use: what an
/// external engine relies on for credentials, liveness and the tenant boundary.
#[derive(Clone, Copy, Debug)]
pub struct Builtin<'a>(&'a Snapshot);

impl Snapshot {
    /// The built-in evaluator over this snapshot, ignoring tenants' engines.
    pub fn builtin(&self) -> Builtin<'_> {
        Builtin(self)
    }
}

impl PolicyEvaluator for Builtin<'_> {
    fn version(&self) -> u64 {
        self.0.version
    }

    fn tenant_version(&self, tenant: &str) -> u64 {
        self.0.tenant_version(tenant)
    }

    fn authenticate(&self, credential: &Credential<'_>) -> Result<Subject, Refusal> {
        match *credential {
            Credential::Thing { tenant, thing, key } => {
                // The key first: without it, an unknown, disabled or suspended thing all get
                // the same answer after the same work (a compare against a dummy digest).
                let found = self.0.tenant(tenant).and(self.0.thing(tenant, thing));
                let digests = found.map_or(DUMMY_DIGESTS, |t| t.key_digests.as_slice());
                let right = verify_thing_key(digests, key);
                let t = found
                    .filter(|t| right && t.credential_mode.allows_key())
                    .ok_or(DenyReason::BadCredential)?;
                let t = self.0.live_thing(&t.tenant, &t.name)?;
                Ok(self.0.thing_subject(t))
            }
            Credential::Certificate {
                chain,
                claimed,
                now,
            } => {
                let (t, seal) = self.0.certificate_thing(chain, claimed, now)?;
                let t = self.0.live_thing(&t.tenant, &t.name)?;
                let mut s = self.0.thing_subject(t);
                s.certificate = Some(std::sync::Arc::new(seal));
                Ok(s)
            }
            Credential::ThingKey { key } => {
                let digest = KeyDigest::of(key);
                // A key shared by two things names neither.
                let [owner] = self.0.things_with_key(&digest) else {
                    return Err(DenyReason::BadCredential.into());
                };
                let t = self
                    .0
                    .tenant(&owner.tenant)
                    .and(self.0.thing(&owner.tenant, &owner.name))
                    .filter(|t| verify_thing_key(&t.key_digests, key))
                    .filter(|t| t.credential_mode.allows_key())
                    .ok_or(DenyReason::BadCredential)?;
                // The key is right: its holder may learn that the thing is disabled.
                let t = self.0.live_thing(&t.tenant, &t.name)?;
                Ok(self.0.thing_subject(t))
            }
            Credential::Password {
                tenant,
                user,
                password,
            } => {
                // The password first, and unknown users cost as much as known ones, so neither
                // the answer nor its timing tells unknown, disabled or suspended apart.
                let found = self.0.tenant(tenant).and(self.0.user(tenant, user));
                let right = match found.and_then(|u| u.password_hash.as_deref()) {
                    Some(phc) => verify_password(phc, password),
                    None => {
                        burn_password_check(password);
                        false
                    }
                };
                let u = found.filter(|_| right).ok_or(DenyReason::BadCredential)?;
                let u = self.0.live_user(&u.tenant, &u.name)?;
                Ok(Subject::user(&*u.tenant, &*u.name))
            }
            Credential::Token {
                tenant,
                user,
                token_epoch,
            } => {
                let u = self.0.live_user(tenant, user)?;
                if u.token_epoch != token_epoch {
                    return Err(DenyReason::TokenRevoked.into());
                }
                let mut s = Subject::user(&*u.tenant, &*u.name);
                s.token_epoch = Some(token_epoch);
                Ok(s)
            }
        }
    }

    fn authorize(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> Decision {
        let role = match self.0.live_subject(subject) {
            Ok(role) => role,
            Err(reason) => return Decision::Deny(reason),
        };
        let tenant = subject.tenant.as_str();
        if topic.tenant() != tenant {
            return Decision::Deny(DenyReason::CrossTenant);
        }
        let channel = topic.channel();
        if self.0.channel(tenant, channel).is_none() {
            return Decision::Deny(DenyReason::UnknownChannel);
        }
        // The audit channel: by role alone, whatever grants say (no grant can name it anyway).
        if channel == AUDIT_CHANNEL {
            return match (action, role) {
                (Action::Subscribe, Some(Role::Admin)) => Decision::Allow(AllowReason::Role),
                _ => Decision::Deny(DenyReason::AuditChannel),
            };
        }
        if action == Action::Publish && topic.has_wildcards() {
            return Decision::Deny(DenyReason::WildcardPublish);
        }
        if role == Some(Role::Viewer) && action == Action::Publish {
            return Decision::Deny(DenyReason::ReadOnlyRole);
        }
        let by_role = role_allows(role, action);
        let applicable = self
            .0
            .applicable_grants(subject, action, channel)
            .map(|(g, _)| g);
        if !by_role && applicable.clone().next().is_none() {
            return Decision::Deny(DenyReason::NoGrant);
        }
        let subtopic = topic.subtopic();
        let denies = applicable.clone().flat_map(|g| &g.deny);
        // A topic name is refused when a deny matches it; a filter only when it lies wholly
        // inside the denies (DESIGN §4): one that overlaps them is granted, and the denied
        // topics are withheld per delivery ([`PolicyEvaluator::withholds`]).
        let denied = match action {
            Action::Publish => denies.clone().any(|p| p.matches(subtopic)),
            Action::Subscribe => covers(denies.clone(), subtopic),
        };
        if denied {
            return Decision::Deny(DenyReason::SubtopicDenied);
        }
        if by_role {
            return Decision::Allow(AllowReason::Role);
        }
        if applicable.clone().any(|g| g.allow.is_empty()) {
            return Decision::Allow(AllowReason::Grant);
        }
        let allows = applicable.flat_map(|g| &g.allow);
        let allowed = match action {
            Action::Publish => allows.clone().any(|p| p.matches(subtopic)),
            // Every topic of the filter is allowed or withheld; not all are withheld (above),
            // so some are delivered.
            Action::Subscribe => covers(allows.chain(denies), subtopic),
        };
        if allowed {
            Decision::Allow(AllowReason::Grant)
        } else {
            Decision::Deny(DenyReason::SubtopicNotAllowed)
        }
    }

    fn withholds(&self, subject: &Subject, filter: &Topic<'_>) -> bool {
        self.0
            .applicable_grants(subject, Action::Subscribe, filter.channel())
            .flat_map(|(g, _)| &g.deny)
            .any(|p| p.overlaps(filter.subtopic()))
    }

    fn check_subject(&self, subject: &Subject) -> Result<(), Refusal> {
        self.0.live_subject(subject)?;
        if let Some(seal) = &subject.certificate {
            self.0
                .certificate_still_valid(subject, seal, rustls_pki_types::UnixTime::now())?;
        }
        Ok(())
    }
}

/// Every tenant is decided by its engine: the built-in logic, or the attached external engine
/// (see [`crate::engine`]), which is asked only once the built-in checks of the subject passed.
impl PolicyEvaluator for Snapshot {
    fn version(&self) -> u64 {
        self.version
    }

    fn tenant_version(&self, tenant: &str) -> u64 {
        Snapshot::tenant_version(self, tenant)
    }

    fn authenticate(&self, credential: &Credential<'_>) -> Result<Subject, Refusal> {
        let subject = self.builtin().authenticate(credential)?;
        match self.external(&subject.tenant) {
            None => Ok(subject),
            Some(Ok(engine)) => engine.may_connect(self, &subject).map(|()| subject),
            Some(Err(())) => Err(DenyReason::PolicyUnavailable.into()),
        }
    }

    fn authorize(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> Decision {
        match self.external(&subject.tenant) {
            None => self.builtin().authorize(subject, action, topic),
            Some(Ok(engine)) => engine.authorize(self, subject, action, topic),
            Some(Err(())) => Decision::Deny(DenyReason::PolicyUnavailable),
        }
    }

    fn withholds(&self, subject: &Subject, filter: &Topic<'_>) -> bool {
        match self.external(&subject.tenant) {
            None => self.builtin().withholds(subject, filter),
            Some(Ok(engine)) => engine.withholds(self, subject, filter),
            Some(Err(())) => true,
        }
    }

    fn check_subject(&self, subject: &Subject) -> Result<(), Refusal> {
        self.builtin().check_subject(subject)?;
        match self.external(&subject.tenant) {
            None => Ok(()),
            Some(Ok(engine)) => engine.may_connect(self, subject),
            Some(Err(())) => Err(DenyReason::PolicyUnavailable.into()),
        }
    }
}

#[cfg(test)]
#[path = "builtin_tests.rs"]
mod tests;
