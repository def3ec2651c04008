//! Resolves one namespace's objects into policy records and the status each object should show.

use std::collections::{BTreeMap, HashMap};

use fleetward_policy as policy;
use policy::{KeyDigest, SubtopicPattern};

use super::Served;
use super::device_ca::{self, Issuers, tenant_device_ca, thing_certificate};
use super::incremental::Refs;
use super::input::{self, IssuerRef, Meta};
use super::object::{Kind, ObjectKey, SecretData};
use super::policies::EnforcedPolicies;
use super::readiness::{BoxedFacts, DesiredStatus, Facts, Readiness, Reason, X509Facts};

/// The shortest key accepted from a Secret, in bytes: keys are compared by a fast hash, which is
/// only right for high-entropy keys (a generated key is 43 characters).
pub const MIN_KEY_LEN: usize = 32;

/// Every object of one namespace, as last applied.
#[derive(Debug, Default)]
pub(crate) struct Namespace {
    pub things: BTreeMap<String, input::Thing>,
    pub channels: BTreeMap<String, input::Channel>,
    pub connections: BTreeMap<String, input::Connection>,
    pub users: BTreeMap<String, input::User>,
    pub groups: BTreeMap<String, input::Group>,
    pub policies: BTreeMap<String, input::Policy>,
    pub secrets: BTreeMap<String, SecretData>,
    /// References between them, by name.
    pub refs: Refs,
}

impl Namespace {
    pub fn is_empty(&self) -> bool {
        self.things.is_empty()
            && self.channels.is_empty()
            && self.connections.is_empty()
            && self.users.is_empty()
            && self.groups.is_empty()
            && self.policies.is_empty()
            && self.secrets.is_empty()
    }
}

/// What one namespace contributes to the snapshot, and its objects' statuses.
#[derive(Debug, Default)]
pub(crate) struct Resolution {
    pub tenant: Option<policy::Tenant>,
    pub things: Vec<policy::Thing>,
    pub channels: Vec<policy::Channel>,
    pub users: Vec<policy::User>,
    pub groups: Vec<policy::Group>,
    pub grants: Vec<policy::Grant>,
    pub policies: Vec<policy::TenantPolicy>,
    pub statuses: Vec<(ObjectKey, DesiredStatus)>,
    /// The owning Tenant's `DeviceCA` condition, when it declares `spec.deviceCA`.
    pub device_ca: Option<Readiness>,
    /// The owning Tenant's settings; `None` when no Tenant owns the namespace.
    pub context: Option<Context>,
}

/// Argon2 hashes of plaintext passwords, so a password is hashed once, not on every resolve.
#[derive(Debug, Default)]
pub(crate) struct PasswordHashes {
    by_user: HashMap<(String, String), (KeyDigest, String)>,
}

impl PasswordHashes {
    fn hash(&mut self, namespace: &str, user: &str, plaintext: &[u8]) -> Result<String, String> {
        let digest = KeyDigest::of(plaintext);
        let slot = (namespace.to_owned(), user.to_owned());
        if let Some((d, hash)) = self.by_user.get(&slot)
            && d.ct_eq(&digest)
        {
            return Ok(hash.clone());
        }
        let hash = policy::hash_password(plaintext).map_err(|e| e.to_string())?;
        self.by_user.insert(slot, (digest, hash.clone()));
        Ok(hash)
    }

    pub fn forget(&mut self, namespace: &str, user: &str) {
        self.by_user
            .remove(&(namespace.to_owned(), user.to_owned()));
    }
}

/// A Tenant's browser settings. An origin no browser would send (the CRD schema refuses it
/// in a cluster; a manifest directory has no schema) is left out with a warning.
fn web_of(tenant: &str, origins: &[String]) -> policy::TenantWeb {
    let allowed_origins = origins
        .iter()
        .filter_map(|o| match policy::parse_origin(o) {
            Ok(origin) => Some(origin),
            Err(why) => {
                tracing::warn!(tenant, "spec.web.allowedOrigins: {why}; left out");
                None
            }
        })
        .collect();
    policy::TenantWeb { allowed_origins }
}

/// The owning Tenant's settings that every object of its namespace resolves against.
#[derive(Clone, Debug)]
pub(crate) struct Context {
    pub namespace: String,
    pub tenant: String,
    pub max_channels: Option<u32>,
    pub max_things: Option<u32>,
    pub engine: policy::Engine,
    /// Whether the Tenant has a usable device CA.
    ca: bool,
    /// The cert-manager issuer things with `x509.issue` get certificates from.
    issuer: Option<IssuerRef>,
    /// Whether cert-manager's CRDs are installed (as far as the operator knows).
    cert_manager: bool,
}

/// Which objects of a namespace are served, as the objects that refer to them ask.
pub(crate) trait ServedNames {
    fn serves(&self, kind: Kind, name: &str) -> bool;
}

/// One object resolved: its policy record when it is served, and the status it should show.
pub(crate) type Resolved<R> = (Option<R>, DesiredStatus);

/// Resolves a namespace that `owner` owns, or that no Tenant owns, whole. The incremental index
/// resolves one object at a time with the same functions; this is its oracle.
pub(crate) fn resolve(
    namespace: &str,
    owner: Option<&input::Tenant>,
    objects: &Namespace,
    passwords: &mut PasswordHashes,
    enforced: &mut EnforcedPolicies,
    issuers: &Issuers,
    cert_manager: bool,
) -> Resolution {
    let Some(owner) = owner else {
        return unowned(namespace, objects);
    };
    let engine = owner.engine;
    let (cx, mut out) = owned(namespace, owner, objects, issuers, cert_manager);
    let mut served = Served::default();
    let status_key = |kind: Kind, name: &str| ObjectKey::namespaced(kind, namespace, name);
    for (name, ch, within) in within_limit(&objects.channels, cx.max_channels, |c| &c.meta) {
        let (record, status) = channel(&cx, name, ch, within);
        if let Some(r) = record {
            served.channels.insert(name.clone());
            out.channels.push(r);
        }
        out.statuses.push((status_key(Kind::Channel, name), status));
    }
    for (name, t, within) in within_limit(&objects.things, cx.max_things, |t| &t.meta) {
        let (record, status) = thing(&cx, objects, name, t, within, &served);
        if let Some(r) = record {
            served.things.insert(name.clone());
            out.things.push(r);
        }
        out.statuses.push((status_key(Kind::Thing, name), status));
    }
    for (name, u) in &objects.users {
        let (record, status) = user(&cx, objects, passwords, name, u);
        if let Some(r) = record {
            served.users.insert(name.clone());
            out.users.push(r);
        }
        out.statuses.push((status_key(Kind::User, name), status));
    }
    for (name, g) in &objects.groups {
        let (record, status) = group(&cx, name, g, &served);
        if let Some(r) = record {
            served.groups.insert(name.clone());
            out.groups.push(r);
        }
        out.statuses.push((status_key(Kind::Group, name), status));
    }
    for (name, c) in &objects.connections {
        let (record, status) = connection(&cx, objects, name, c, &served);
        out.grants.extend(record);
        out.statuses
            .push((status_key(Kind::Connection, name), status));
    }
    super::policies::resolve(namespace, &cx.tenant, objects, engine, enforced, &mut out);
    out.context = Some(cx);
    out
}

/// The context of a namespace that `owner` owns, and its resolution so far: the Tenant's
/// record and its `DeviceCA` condition.
pub(crate) fn owned(
    namespace: &str,
    owner: &input::Tenant,
    objects: &Namespace,
    issuers: &Issuers,
    cert_manager: bool,
) -> (Context, Resolution) {
    let tenant = owner.meta.name.as_str();
    let limits = &owner.limits;
    // The claims' statuses are the Tenant's (`tenant_statuses`).
    let (provisioning, _) = super::claims::resolve(owner, objects, &|claim| {
        super::claims::count_provisioned(objects, claim)
    });
    let device_ca_source = owner.device_ca.as_ref();
    let (device_ca, device_ca_condition) =
        match tenant_device_ca(namespace, device_ca_source, &objects.secrets, issuers) {
            Some((ca, condition)) => (ca, Some(condition)),
            None => (None, None),
        };
    let cx = Context {
        namespace: namespace.to_owned(),
        tenant: tenant.to_owned(),
        max_channels: limits.max_channels,
        max_things: limits.max_things,
        engine: owner.engine,
        ca: device_ca.is_some(),
        issuer: device_ca_source.and_then(|d| d.issuer.clone()),
        cert_manager,
    };
    let out = Resolution {
        device_ca: device_ca_condition,
        tenant: Some(policy::Tenant {
            provisioning,
            device_ca,
            engine: owner.engine,
            name: tenant.to_owned(),
            uid: owner.meta.uid.clone(),
            suspended: owner.suspended,
            limits: limits.clone(),
            web: web_of(tenant, &owner.allowed_origins),
        }),
        ..Resolution::default()
    };
    (cx, out)
}

/// The status of an object in a namespace no Tenant owns: refused with `NoTenant`.
pub(crate) fn no_tenant(namespace: &str, generation: Option<i64>) -> DesiredStatus {
    let message = format!(
        "namespace {namespace} is not owned by any Tenant: create a Tenant with spec.namespace: \
         {namespace} (or named {namespace}) to serve it"
    );
    DesiredStatus {
        generation,
        readiness: Readiness::not_ready(Reason::NoTenant, message),
        served: false,
        facts: BoxedFacts::default(),
    }
}

/// Every object of a namespace no Tenant owns is refused with `NoTenant`.
fn unowned(namespace: &str, objects: &Namespace) -> Resolution {
    let mut out = Resolution::default();
    let mut refuse = |kind: Kind, name: &str, generation: Option<i64>| {
        out.statuses.push((
            ObjectKey::namespaced(kind, namespace, name),
            no_tenant(namespace, generation),
        ));
    };
    for (name, o) in &objects.things {
        refuse(Kind::Thing, name, o.meta.generation);
    }
    for (name, o) in &objects.channels {
        refuse(Kind::Channel, name, o.meta.generation);
    }
    for (name, o) in &objects.connections {
        refuse(Kind::Connection, name, o.meta.generation);
    }
    for (name, o) in &objects.users {
        refuse(Kind::User, name, o.meta.generation);
    }
    for (name, o) in &objects.groups {
        refuse(Kind::Group, name, o.meta.generation);
    }
    for (name, o) in &objects.policies {
        refuse(Kind::Policy, name, o.meta.generation);
    }
    out
}

/// The objects of a kind in limit order, each marked whether it is within the limit.
fn within_limit<T>(
    objects: &BTreeMap<String, T>,
    limit: Option<u32>,
    meta: impl Fn(&T) -> &Meta,
) -> Vec<(&String, &T, bool)> {
    let mut ordered: Vec<(&String, &T)> = objects.iter().collect();
    ordered.sort_by(|a, b| meta(a.1).age_order().cmp(&meta(b.1).age_order()));
    let limit = limit.map_or(usize::MAX, |l| l as usize);
    ordered
        .into_iter()
        .enumerate()
        .map(|(i, (name, o))| (name, o, i < limit))
        .collect()
}

/// A status whose readiness says whether the object is served.
fn status(generation: Option<i64>, readiness: Readiness, facts: Facts) -> DesiredStatus {
    DesiredStatus {
        generation,
        served: readiness.ready,
        readiness,
        facts: facts.into(),
    }
}

fn refused<R>(generation: Option<i64>, readiness: Readiness) -> Resolved<R> {
    (None, status(generation, readiness, Facts::None))
}

fn limit_exceeded(cx: &Context, kind: &str, limit: Option<u32>) -> Readiness {
    Readiness::not_ready(
        Reason::LimitExceeded,
        format!(
            "Tenant {} allows at most {} {kind}s (spec.limits); this one is not served. \
             Delete another {kind} or raise the limit",
            cx.tenant,
            limit.unwrap_or_default()
        ),
    )
}

/// One Channel; `within` says whether it is within the Tenant's `maxChannels`.
pub(crate) fn channel(
    cx: &Context,
    name: &str,
    ch: &input::Channel,
    within: bool,
) -> Resolved<policy::Channel> {
    let generation = ch.meta.generation;
    if !within {
        return refused(generation, limit_exceeded(cx, "channel", cx.max_channels));
    }
    let max_qos = match policy::Qos::try_from(ch.max_qos) {
        Ok(q) => q,
        Err(e) => {
            let r = Readiness::not_ready(Reason::InvalidSpec, format!("spec.maxQos: {e}"));
            return refused(generation, r);
        }
    };
    let history_retention_secs = match &ch.history {
        None => None,
        Some(h) => match h.secs {
            Some(secs) => Some(secs),
            None => {
                let r = Readiness::not_ready(
                    Reason::InvalidSpec,
                    format!(
                        "spec.history.retention: {:?} is not a retention; write a whole number \
                         and a unit, s, m, h or d (7d, 12h), from 1m to 3650d",
                        h.text
                    ),
                );
                return refused(generation, r);
            }
        },
    };
    let record = policy::Channel {
        tenant: cx.tenant.clone(),
        name: name.to_owned(),
        uid: ch.meta.uid.clone(),
        max_qos,
        retained_allowed: ch.retained,
        max_message_size: ch.max_message_size,
        delivery_metadata: ch.delivery_metadata,
        history_retention_secs,
    };
    let r = Readiness::ready(Reason::Accepted, "the channel is served");
    (Some(record), status(generation, r, Facts::None))
}

/// One Thing; `within` says whether it is within the Tenant's `maxThings`.
pub(crate) fn thing(
    cx: &Context,
    objects: &Namespace,
    name: &str,
    thing: &input::Thing,
    within: bool,
    served: &dyn ServedNames,
) -> Resolved<policy::Thing> {
    let generation = thing.meta.generation;
    let mode = thing.mode;
    let secret_name = &thing.secret_name;
    // A certificate-only thing has no key: none is pushed, required or generated.
    let keys = if mode.allows_key() {
        thing_keys(objects.secrets.get(secret_name))
    } else {
        Ok(ThingKeys::none())
    };
    let facts = Facts::Thing {
        secret_name: secret_name.clone(),
        key_fingerprint: keys.as_ref().ok().and_then(|k| k.fingerprint.clone()),
        keys: keys.as_ref().map_or(0, |k| k.digests.len() as u32),
        mode,
        x509: x509_facts(cx, objects, name, thing),
    };
    let x509 = device_ca::thing_x509(thing.x509.as_ref(), &thing.status_revoked_serials);
    let refusal = if !within {
        Some(limit_exceeded(cx, "thing", cx.max_things))
    } else if let Some(mp) = thing
        .mountpoint
        .as_deref()
        .filter(|mp| !served.serves(Kind::Channel, mp))
    {
        Some(Readiness::not_ready(
            Reason::MountpointNotFound,
            format!(
                "spec.mountpoint names Channel {}/{mp}, which does not exist or is not served; \
                 create it or change the mountpoint",
                cx.namespace
            ),
        ))
    } else if let Err(r) = &x509 {
        Some(r.clone())
    } else if !mode.allows_key() && !cx.ca {
        Some(device_ca::no_device_ca(&cx.tenant))
    } else {
        keys.as_ref().err().cloned()
    };
    if let Some(r) = refusal {
        return (None, status(generation, r, facts));
    }
    let digests = keys.map(|k| k.digests).unwrap_or_default();
    let record = policy::Thing {
        x509: x509.unwrap_or_default(),
        credential_mode: mode,
        attributes: thing.attributes.clone(),
        tenant: cx.tenant.clone(),
        name: name.to_owned(),
        key_digests: digests,
        disabled: thing.disabled,
        mountpoint: thing.mountpoint.clone(),
        max_connections: thing.max_connections,
    };
    let r = device_ca::accepted(mode, &cx.tenant, cx.ca, thing.disabled);
    (Some(record), status(generation, r, facts))
}

/// A thing's certificate facts, when it has `x509`.
fn x509_facts(
    cx: &Context,
    objects: &Namespace,
    name: &str,
    thing: &input::Thing,
) -> Option<Box<X509Facts>> {
    thing.x509.as_ref()?;
    let certificate = thing_certificate(objects.secrets.get(&thing.tls_secret_name));
    let issue = device_ca::certificate_request(&cx.tenant, thing, cx.issuer.as_ref());
    let condition = device_ca::certificate_condition(
        &cx.namespace,
        name,
        issue.as_ref(),
        certificate.as_ref(),
        cx.cert_manager,
    );
    Some(Box::new(X509Facts {
        certificate,
        issue,
        condition,
    }))
}

/// One User.
pub(crate) fn user(
    cx: &Context,
    objects: &Namespace,
    passwords: &mut PasswordHashes,
    name: &str,
    user: &input::User,
) -> Resolved<policy::User> {
    let generation = user.meta.generation;
    let password_hash = match &user.password {
        None => None,
        Some(r) => match objects
            .secrets
            .get(&r.name)
            .and_then(|s| s.entries.get(&r.key))
        {
            None => {
                let msg = format!(
                    "spec.passwordSecretRef names entry {:?} of Secret {}/{}, which does not \
                     exist; create it with the password or an argon2 hash",
                    r.key, cx.namespace, r.name
                );
                return refused(
                    generation,
                    Readiness::not_ready(Reason::PasswordSecretNotFound, msg),
                );
            }
            Some(value) => match password_hash(passwords, &cx.namespace, name, value) {
                Ok(hash) => Some(hash),
                Err(e) => {
                    return refused(generation, Readiness::not_ready(Reason::PasswordInvalid, e));
                }
            },
        },
    };
    let msg = if password_hash.is_some() {
        "the user is served"
    } else {
        "the user is served but cannot sign in: set spec.passwordSecretRef"
    };
    let record = policy::User {
        tenant: cx.tenant.clone(),
        name: name.to_owned(),
        role: user.role,
        password_hash,
        token_epoch: user.token_epoch,
        disabled: user.disabled,
    };
    let r = Readiness::ready(Reason::Accepted, msg);
    (Some(record), status(generation, r, Facts::None))
}

/// One Group: always served, with the members that are.
pub(crate) fn group(
    cx: &Context,
    name: &str,
    group: &input::Group,
    served: &dyn ServedNames,
) -> Resolved<policy::Group> {
    let mut members = Vec::new();
    let mut missing = Vec::new();
    for m in &group.members {
        let kind = member_kind(m.kind);
        if served.serves(kind, &m.name) {
            members.push(m.clone());
        } else {
            missing.push(format!("{} {}", kind.as_str(), m.name));
        }
    }
    let readiness = if missing.is_empty() {
        Readiness::ready(Reason::Accepted, "the group is served")
    } else {
        Readiness::not_ready(
            Reason::MemberNotFound,
            format!(
                "members not found or not served in namespace {}: {}; the other members are \
                 served",
                cx.namespace,
                missing.join(", ")
            ),
        )
    };
    let record = policy::Group {
        tenant: cx.tenant.clone(),
        name: name.to_owned(),
        members,
    };
    let status = DesiredStatus {
        generation: group.meta.generation,
        readiness,
        served: true,
        facts: BoxedFacts::default(),
    };
    (Some(record), status)
}

/// One Connection.
pub(crate) fn connection(
    cx: &Context,
    objects: &Namespace,
    name: &str,
    conn: &input::Connection,
    served: &dyn ServedNames,
) -> Resolved<policy::Grant> {
    let generation = conn.meta.generation;
    match grant(cx, objects, name, conn, served) {
        Ok(grant) => {
            let r = Readiness::ready(Reason::Accepted, "the grant is served");
            (Some(grant), status(generation, r, Facts::None))
        }
        Err(r) => refused(generation, r),
    }
}

fn grant(
    cx: &Context,
    objects: &Namespace,
    name: &str,
    spec: &input::Connection,
    served: &dyn ServedNames,
) -> Result<policy::Grant, Readiness> {
    grant_subject(cx, objects, &spec.subject, served)?;
    grant_channel(cx, objects, &spec.channel, served)?;
    let (allow, deny) = subtopic_patterns(&spec.allow, &spec.deny)?;
    if !spec.actions.publish && !spec.actions.subscribe {
        return Err(Readiness::not_ready(
            Reason::InvalidSpec,
            "spec.actions is empty: list publish, subscribe or both",
        ));
    }
    Ok(policy::Grant {
        tenant: cx.tenant.clone(),
        name: name.to_owned(),
        subject: spec.subject.clone(),
        channel: spec.channel.clone(),
        actions: spec.actions,
        allow,
        deny,
    })
}

/// Whether a grant's subject exists and is served.
fn grant_subject(
    cx: &Context,
    objects: &Namespace,
    subject: &policy::GrantSubject,
    served: &dyn ServedNames,
) -> Result<(), Readiness> {
    let ns = &cx.namespace;
    let (kind, subject_name) = subject_of(subject);
    let exists = match kind {
        Kind::Thing => objects.things.contains_key(subject_name),
        Kind::User => objects.users.contains_key(subject_name),
        _ => objects.groups.contains_key(subject_name),
    };
    let subject_label = format!("{} {ns}/{subject_name}", kind.as_str());
    if !exists {
        return Err(Readiness::not_ready(
            Reason::SubjectNotFound,
            format!("spec.subject names {subject_label}, which does not exist; create it"),
        ));
    }
    if !served.serves(kind, subject_name) {
        return Err(Readiness::not_ready(
            Reason::SubjectNotReady,
            format!("{subject_label} exists but is not Ready; see its status"),
        ));
    }
    Ok(())
}

/// The kind and name of a grant's subject.
pub(crate) fn subject_of(subject: &policy::GrantSubject) -> (Kind, &str) {
    match subject {
        policy::GrantSubject::Thing(name) => (Kind::Thing, name),
        policy::GrantSubject::User(name) => (Kind::User, name),
        policy::GrantSubject::Group(name) => (Kind::Group, name),
    }
}

/// The kind of a group member.
pub(crate) fn member_kind(kind: policy::SubjectKind) -> Kind {
    match kind {
        policy::SubjectKind::Thing => Kind::Thing,
        policy::SubjectKind::User => Kind::User,
    }
}

/// Whether a grant's channel exists and is served.
fn grant_channel(
    cx: &Context,
    objects: &Namespace,
    channel: &str,
    served: &dyn ServedNames,
) -> Result<(), Readiness> {
    let ns = &cx.namespace;
    if !objects.channels.contains_key(channel) {
        return Err(Readiness::not_ready(
            Reason::ChannelNotFound,
            format!("spec.channel names Channel {ns}/{channel}, which does not exist; create it"),
        ));
    }
    if !served.serves(Kind::Channel, channel) {
        return Err(Readiness::not_ready(
            Reason::ChannelNotReady,
            format!("Channel {ns}/{channel} exists but is not Ready; see its status"),
        ));
    }
    Ok(())
}

/// A grant's allowed and denied subtopic patterns, parsed.
fn subtopic_patterns(
    allow: &[String],
    deny: &[String],
) -> Result<(Vec<SubtopicPattern>, Vec<SubtopicPattern>), Readiness> {
    let parse = |field: &str, list: &[String]| {
        list.iter()
            .map(|p| {
                SubtopicPattern::parse(p).map_err(|e| {
                    Readiness::not_ready(
                        Reason::InvalidSpec,
                        format!("spec.subtopics.{field}: pattern {p:?}: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok((parse("allow", allow)?, parse("deny", deny)?))
}

/// The usable keys of a thing's Secret.
struct ThingKeys {
    digests: Vec<KeyDigest>,
    fingerprint: Option<String>,
}

impl ThingKeys {
    fn none() -> Self {
        Self {
            digests: Vec::new(),
            fingerprint: None,
        }
    }
}

/// Whether a Secret entry holds a thing key: `key`, or a name starting with `key` (`key-next`,
/// `key.2026-11`), so a rotation adds the new key beside the old one.
pub fn is_key_entry(entry: &str) -> bool {
    entry.starts_with("key")
}

/// The keys of a thing's Secret, or why the thing cannot be served.
fn thing_keys(secret: Option<&SecretData>) -> Result<ThingKeys, Readiness> {
    let Some(secret) = secret else {
        return Err(Readiness::not_ready(
            Reason::CredentialsPending,
            "waiting for the credentials Secret; the operator creates it with a new key, or \
             create it yourself with your key under `key`",
        ));
    };
    let mut digests = Vec::new();
    let mut fingerprint = None;
    for (entry, value) in secret.entries.iter().filter(|(e, _)| is_key_entry(e)) {
        let key = value.trim_ascii();
        if key.len() < MIN_KEY_LEN {
            return Err(Readiness::not_ready(
                Reason::CredentialsInvalid,
                format!(
                    "Secret {}/{} entry {entry:?} holds a key of {} bytes; keys must be at \
                     least {MIN_KEY_LEN} bytes of high-entropy text (delete the entry and the \
                     operator generates one)",
                    secret.namespace,
                    secret.name,
                    key.len()
                ),
            ));
        }
        let digest = KeyDigest::of(key);
        if entry == "key" || fingerprint.is_none() {
            fingerprint = Some(digest.fingerprint());
        }
        digests.push(digest);
    }
    if digests.is_empty() {
        return Err(Readiness::not_ready(
            Reason::CredentialsInvalid,
            format!(
                "Secret {}/{} has no `key` entry; add the thing's key under `key`",
                secret.namespace, secret.name
            ),
        ));
    }
    digests.sort();
    digests.dedup();
    Ok(ThingKeys {
        digests,
        fingerprint,
    })
}

/// A user's password entry as an argon2 PHC hash: kept when it already is one, hashed otherwise.
fn password_hash(
    passwords: &mut PasswordHashes,
    namespace: &str,
    user: &str,
    value: &[u8],
) -> Result<String, String> {
    let value = value.trim_ascii_end();
    if value.is_empty() {
        return Err("the password entry is empty; put a password or an argon2 hash in it".into());
    }
    if value.starts_with(b"$argon2") {
        return std::str::from_utf8(value)
            .map(str::to_owned)
            .map_err(|_| "the argon2 hash in the password entry is not UTF-8".to_owned());
    }
    passwords
        .hash(namespace, user, value)
        .map_err(|e| format!("hashing the password failed: {e}"))
}
