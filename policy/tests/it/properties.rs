//! Property tests over multi-tenant snapshots that deliberately reuse names across tenants.

use std::sync::{Arc, RwLock};

use fleetward_policy::pattern::covers;
use fleetward_policy::{
    Action, Actions, AllowReason, CachedEvaluator, Channel, Credential, Decision, DecisionCache,
    DeliveryGate, DenyReason, Grant, GrantSubject, Group, KeyDigest, Member, PolicyEvaluator, Qos,
    Refusal, Role, Snapshot, Subject, SubjectKind, SubtopicPattern, Tenant, Thing, Topic,
    TopicLimits, User, diff, parse_filter,
};
use proptest::prelude::*;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const THINGS: [&str; 3] = ["sensor", "gateway", "pump"];
const USERS: [&str; 2] = ["alice", "bob"];
const GROUPS: [&str; 2] = ["ops", "all"];
/// The last one is never declared, so grants and topics may name a missing channel.
const CHANNELS: [&str; 3] = ["telemetry", "commands", "ghost"];
const PATTERN_LEVELS: [&str; 3] = ["a", "b", "+"];
/// `zz` appears in no pattern: it stands for every level name a pattern does not mention.
const TOPIC_LEVELS: [&str; 4] = ["a", "b", "zz", "+"];

/// Mostly declared channels, sometimes the missing one.
fn channel_index(i: usize) -> usize {
    [0, 0, 0, 1, 1, 1, 2][i % 7]
}

fn key_of(tenant: &str, thing: &str, k: usize) -> String {
    format!("{tenant}/{thing}/key-{k}")
}

fn arb_pattern() -> impl Strategy<Value = SubtopicPattern> {
    (
        prop::collection::vec(prop::sample::select(&PATTERN_LEVELS[..]), 0..=3),
        any::<bool>(),
    )
        .prop_map(|(levels, hash)| {
            let mut text = levels.join("/");
            if hash {
                text = if text.is_empty() {
                    "#".into()
                } else {
                    format!("{text}/#")
                };
            }
            SubtopicPattern::parse(&text).expect("generated patterns are valid")
        })
}

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Admin), Just(Role::Member), Just(Role::Viewer)]
}

fn arb_kind() -> impl Strategy<Value = SubjectKind> {
    prop_oneof![Just(SubjectKind::Thing), Just(SubjectKind::User)]
}

fn member_name(kind: SubjectKind, i: usize) -> String {
    match kind {
        SubjectKind::Thing => THINGS[i % THINGS.len()].into(),
        SubjectKind::User => USERS[i % USERS.len()].into(),
    }
}

#[derive(Clone, Debug)]
enum Resource {
    Tenant(Tenant),
    Thing(Thing),
    User(User),
    Group(Group),
    Channel(Channel),
    Grant(Grant),
}

fn arb_resource() -> impl Strategy<Value = Resource> {
    let tenant = || prop::sample::select(&TENANTS[..]).prop_map(String::from);
    prop_oneof![
        1 => (tenant(), prop::bool::weighted(0.1)).prop_map(|(name, suspended)| {
            Resource::Tenant(Tenant {
                provisioning: Default::default(),
                device_ca: Default::default(),
                engine: Default::default(),
                uid: String::new(),
                name,
                suspended,
                limits: Default::default(),
                web: Default::default(),
            })
        }),
        1 => (tenant(), 0..THINGS.len(), prop::bool::weighted(0.1), 0..3usize, 0..2usize).prop_map(
            |(tenant, i, disabled, first, count)| {
                let name = THINGS[i].to_owned();
                let key_digests = (first..first + count)
                    .map(|k| KeyDigest::of(key_of(&tenant, &name, k).as_bytes()))
                    .collect();
                Resource::Thing(Thing {
                    x509: Default::default(),
                    credential_mode: Default::default(),
                    attributes: Default::default(),
                    tenant,
                    name,
                    key_digests,
                    disabled,
                    mountpoint: None,
                    max_connections: None,
                })
            }
        ),
        1 => (tenant(), 0..USERS.len(), arb_role(), prop::bool::weighted(0.1), 0..2u64).prop_map(
            |(tenant, i, role, disabled, token_epoch)| {
                Resource::User(User {
                    tenant,
                    name: USERS[i].into(),
                    role,
                    password_hash: None,
                    token_epoch,
                    disabled,
                })
            }
        ),
        1 => (
            tenant(),
            0..GROUPS.len(),
            prop::collection::vec((arb_kind(), 0..3usize), 0..4)
        )
            .prop_map(|(tenant, i, members)| {
                Resource::Group(Group {
                    tenant,
                    name: GROUPS[i].into(),
                    members: members
                        .into_iter()
                        .map(|(kind, n)| Member {
                            kind,
                            name: member_name(kind, n),
                        })
                        .collect(),
                })
            }),
        1 => (tenant(), 0..2usize).prop_map(|(tenant, i)| {
            Resource::Channel(Channel {
                history_retention_secs: Default::default(),
                uid: String::new(),
                tenant,
                name: CHANNELS[i].into(),
                max_qos: Qos::AtLeastOnce,
                retained_allowed: true,
                delivery_metadata: false,
                max_message_size: None,
            })
        }),
        6 => (
            tenant(),
            0..6usize,
            0..3usize,
            0..3usize,
            0..7usize,
            any::<(bool, bool)>(),
            prop::collection::vec(arb_pattern(), 0..3),
            prop::collection::vec(arb_pattern(), 0..2),
        )
            .prop_map(|(tenant, n, kind, who, ch, (publish, subscribe), allow, deny)| {
                let subject = match kind {
                    0 => GrantSubject::Thing(THINGS[who % THINGS.len()].into()),
                    1 => GrantSubject::User(USERS[who % USERS.len()].into()),
                    _ => GrantSubject::Group(GROUPS[who % GROUPS.len()].into()),
                };
                Resource::Grant(Grant {
                    tenant,
                    name: format!("grant-{n}"),
                    subject,
                    channel: CHANNELS[channel_index(ch)].into(),
                    actions: Actions { publish, subscribe },
                    allow,
                    deny,
                })
            }),
    ]
}

fn upsert(s: &mut Snapshot, r: Resource) {
    match r {
        Resource::Tenant(t) => drop(s.upsert_tenant(t)),
        Resource::Thing(t) => drop(s.upsert_thing(t)),
        Resource::User(u) => drop(s.upsert_user(u)),
        Resource::Group(g) => drop(s.upsert_group(g)),
        Resource::Channel(c) => drop(s.upsert_channel(c)),
        Resource::Grant(g) => drop(s.upsert_grant(g)),
    }
}

/// Removes the resource with `r`'s identity.
fn remove_like(s: &mut Snapshot, r: &Resource) {
    match r {
        Resource::Tenant(t) => drop(s.remove_tenant(&t.name)),
        Resource::Thing(t) => drop(s.remove_thing(&t.tenant, &t.name)),
        Resource::User(u) => drop(s.remove_user(&u.tenant, &u.name)),
        Resource::Group(g) => drop(s.remove_group(&g.tenant, &g.name)),
        Resource::Channel(c) => drop(s.remove_channel(&c.tenant, &c.name)),
        Resource::Grant(g) => drop(s.remove_grant(&g.tenant, &g.name)),
    }
}

fn build(version: u64, resources: Vec<Resource>) -> Snapshot {
    let mut s = Snapshot::new(version);
    // Tenants and channels mostly exist, so the interesting checks are reached.
    // Two tenants with the same things, users and channels; the third is only sometimes declared.
    for t in TENANTS.iter().take(2) {
        s.upsert_tenant(Tenant {
            provisioning: Default::default(),
            device_ca: Default::default(),
            engine: Default::default(),
            uid: String::new(),
            name: (*t).into(),
            suspended: false,
            limits: Default::default(),
            web: Default::default(),
        });
        for ch in &CHANNELS[..2] {
            s.upsert_channel(Channel {
                history_retention_secs: Default::default(),
                uid: String::new(),
                tenant: (*t).into(),
                name: (*ch).into(),
                max_qos: Qos::AtLeastOnce,
                retained_allowed: true,
                delivery_metadata: false,
                max_message_size: None,
            });
        }
        for thing in THINGS {
            s.upsert_thing(Thing {
                x509: Default::default(),
                credential_mode: Default::default(),
                attributes: Default::default(),
                tenant: (*t).into(),
                name: thing.into(),
                key_digests: vec![KeyDigest::of(key_of(t, thing, 0).as_bytes())],
                disabled: false,
                mountpoint: None,
                max_connections: None,
            });
        }
        for (i, user) in USERS.iter().enumerate() {
            s.upsert_user(User {
                tenant: (*t).into(),
                name: (*user).into(),
                role: if i == 0 { Role::Member } else { Role::Viewer },
                password_hash: None,
                token_epoch: 0,
                disabled: false,
            });
        }
    }
    for r in resources {
        upsert(&mut s, r);
    }
    s
}

fn arb_snapshot(version: u64) -> impl Strategy<Value = Snapshot> {
    prop::collection::vec(arb_resource(), 0..40).prop_map(move |rs| build(version, rs))
}

/// A request with owned text, parsed on use.
#[derive(Clone, Debug)]
struct Request {
    subject: Subject,
    action: Action,
    filter: String,
}

fn arb_subject() -> impl Strategy<Value = Subject> {
    (
        prop::sample::select(&TENANTS[..]),
        arb_kind(),
        0..3usize,
        prop::option::weighted(0.2, 0..2u64),
    )
        .prop_map(|(tenant, kind, n, epoch)| Subject {
            certificate: Default::default(),
            tenant: tenant.into(),
            kind,
            name: member_name(kind, n),
            token_epoch: if kind == SubjectKind::User {
                epoch
            } else {
                None
            },
        })
}

fn arb_filter(own_tenant: &str) -> impl Strategy<Value = String> + use<> {
    let own = own_tenant.to_owned();
    (
        prop::bool::weighted(0.85).prop_flat_map(move |same| {
            if same {
                Just(own.clone()).boxed()
            } else {
                prop::sample::select(&TENANTS[..])
                    .prop_map(String::from)
                    .boxed()
            }
        }),
        0..7usize,
        prop::option::weighted(
            0.85,
            prop::collection::vec(prop::sample::select(&TOPIC_LEVELS[..]), 0..=3),
        ),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(tenant, ch, levels, hash)| {
            let mut f = format!("m/{tenant}/c/{}", CHANNELS[channel_index(ch)]);
            if let Some(levels) = levels {
                for l in levels {
                    f.push('/');
                    f.push_str(l);
                }
            }
            if hash {
                f.push_str("/#");
            }
            f
        })
}

fn arb_request() -> impl Strategy<Value = Request> {
    arb_subject().prop_flat_map(|subject| {
        let filter = arb_filter(&subject.tenant);
        (
            Just(subject),
            prop_oneof![Just(Action::Publish), Just(Action::Subscribe)],
            filter,
        )
            .prop_map(|(subject, action, filter)| Request {
                subject,
                action,
                filter,
            })
    })
}

fn parse(text: &str) -> Topic<'_> {
    parse_filter(text, &TopicLimits::default()).expect("generated filters are valid")
}

fn ask<E: PolicyEvaluator + ?Sized>(e: &E, r: &Request) -> Decision {
    e.authorize(&r.subject, r.action, &parse(&r.filter))
}

/// Whether any grant or role could give this subject this action on this channel, by a scan
/// of every grant (independent of the snapshot's indexes).
fn some_grant_gives(s: &Snapshot, subject: &Subject, action: Action, channel: &str) -> bool {
    if subject.kind == SubjectKind::User
        && let Some(u) = s.user(&subject.tenant, &subject.name)
        && (u.role == Role::Admin || (u.role == Role::Viewer && action == Action::Subscribe))
    {
        return true;
    }
    s.grants().any(|g| {
        let gives = match action {
            Action::Publish => g.actions.publish,
            Action::Subscribe => g.actions.subscribe,
        };
        let names_subject = match &g.subject {
            GrantSubject::Thing(n) => subject.kind == SubjectKind::Thing && *n == subject.name,
            GrantSubject::User(n) => subject.kind == SubjectKind::User && *n == subject.name,
            GrantSubject::Group(n) => s.group(&g.tenant, n).is_some_and(|grp| {
                grp.members
                    .iter()
                    .any(|m| m.kind == subject.kind && m.name == subject.name)
            }),
        };
        g.tenant == subject.tenant && g.channel == channel && gives && names_subject
    })
}

/// Every concrete subtopic over `TOPIC_LEVELS` (without `+`) of at most `depth` levels.
fn concrete_subtopics(depth: usize) -> Vec<Option<String>> {
    let mut out = vec![None];
    let mut frontier = vec![String::new()];
    for d in 0..depth {
        let mut next = Vec::new();
        for prefix in &frontier {
            for l in &TOPIC_LEVELS[..3] {
                let t = if d == 0 {
                    (*l).to_owned()
                } else {
                    format!("{prefix}/{l}")
                };
                out.push(Some(t.clone()));
                next.push(t);
            }
        }
        frontier = next;
    }
    out
}

fn matches_filter(filter_subtopic: Option<&str>, topic: Option<&str>) -> bool {
    SubtopicPattern::parse(filter_subtopic.unwrap_or(""))
        .expect("a filter subtopic is a valid pattern")
        .matches(topic)
}

/// A policy store that swaps snapshots, as a dataplane does; reads the version first.
struct Store(RwLock<Arc<Snapshot>>);

impl Store {
    fn current(&self) -> Arc<Snapshot> {
        self.0.read().expect("not poisoned").clone()
    }
    fn swap(&self, s: Snapshot) {
        *self.0.write().expect("not poisoned") = Arc::new(s);
    }
}

impl PolicyEvaluator for Store {
    fn version(&self) -> u64 {
        self.current().version()
    }
    fn tenant_version(&self, tenant: &str) -> u64 {
        self.current().tenant_version(tenant)
    }
    fn authenticate(&self, credential: &Credential<'_>) -> Result<Subject, Refusal> {
        self.current().authenticate(credential)
    }
    fn authorize(&self, subject: &Subject, action: Action, topic: &Topic<'_>) -> Decision {
        self.current().authorize(subject, action, topic)
    }
    fn withholds(&self, subject: &Subject, filter: &Topic<'_>) -> bool {
        self.current().withholds(subject, filter)
    }
    fn check_subject(&self, subject: &Subject) -> Result<(), Refusal> {
        self.current().check_subject(subject)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_decision_allows_across_tenants(
        s in arb_snapshot(1),
        requests in prop::collection::vec(arb_request(), 1..40),
    ) {
        for r in &requests {
            let topic = parse(&r.filter);
            if ask(&s, r).is_allowed() {
                prop_assert_eq!(&r.subject.tenant, topic.tenant(), "{:?}", r);
            }
        }
    }

    #[test]
    fn explanations_name_a_connection_for_every_grant_decision(
        s in arb_snapshot(1),
        requests in prop::collection::vec(arb_request(), 1..40),
    ) {
        for r in &requests {
            let e = s.explain(&r.subject, r.action, &parse(&r.filter));
            prop_assert_eq!(e.decision, ask(&s, r));
            match e.decision {
                Decision::Allow(AllowReason::Grant)
                | Decision::Deny(DenyReason::SubtopicDenied)
                | Decision::Deny(DenyReason::SubtopicNotAllowed) => {
                    prop_assert!(!e.grants.is_empty(), "{:?}: {:?}", r, e);
                    for g in &e.grants {
                        prop_assert!(s.grant(&r.subject.tenant, &g.connection).is_some(), "{:?}", g);
                    }
                }
                _ => prop_assert!(e.grants.is_empty(), "{:?}: {:?}", r, e),
            }
        }
    }

    #[test]
    fn nothing_is_allowed_without_a_grant(
        s in arb_snapshot(1),
        requests in prop::collection::vec(arb_request(), 1..40),
    ) {
        for r in &requests {
            let topic = parse(&r.filter);
            let d = ask(&s, r);
            if d.is_allowed() {
                prop_assert!(
                    some_grant_gives(&s, &r.subject, r.action, topic.channel()),
                    "{:?} allowed {:?} with no grant", r, d
                );
            } else if !some_grant_gives(&s, &r.subject, r.action, topic.channel()) {
                prop_assert!(!d.is_allowed());
            }
        }
    }

    #[test]
    fn viewers_never_publish_and_stale_tokens_never_act(
        s in arb_snapshot(1),
        requests in prop::collection::vec(arb_request(), 1..40),
    ) {
        for r in &requests {
            let sub = &r.subject;
            if sub.kind != SubjectKind::User {
                continue;
            }
            let Some(user) = s.user(&sub.tenant, &sub.name) else {
                continue;
            };
            let d = ask(&s, r);
            if user.role == Role::Viewer && r.action == Action::Publish {
                prop_assert!(!d.is_allowed(), "viewer published: {:?} {:?}", r, d);
            }
            if sub.token_epoch.is_some_and(|e| e != user.token_epoch) {
                prop_assert!(!d.is_allowed(), "stale token allowed: {:?} {:?}", r, d);
                prop_assert!(s.check_subject(sub).is_err());
            }
            // A group's grants reach its members: a member user with a grant through a group
            // is treated as the grant's subject.
            if d.is_allowed() && user.role == Role::Member {
                let topic = parse(&r.filter);
                prop_assert!(some_grant_gives(&s, sub, r.action, topic.channel()));
            }
        }
    }

    #[test]
    fn nothing_is_allowed_for_disabled_subjects_or_suspended_tenants(
        s in arb_snapshot(1),
        requests in prop::collection::vec(arb_request(), 1..40),
    ) {
        for r in &requests {
            let sub = &r.subject;
            let suspended = s.tenant(&sub.tenant).is_none_or(|t| t.suspended);
            let disabled = match sub.kind {
                SubjectKind::Thing => s.thing(&sub.tenant, &sub.name).is_none_or(|t| t.disabled),
                SubjectKind::User => s.user(&sub.tenant, &sub.name).is_none_or(|u| u.disabled),
            };
            if suspended || disabled {
                prop_assert!(!ask(&s, r).is_allowed(), "{:?}", r);
                prop_assert!(s.check_subject(sub).is_err());
                if sub.kind == SubjectKind::Thing {
                    for k in 0..4 {
                        let key = key_of(&sub.tenant, &sub.name, k);
                        let cred = Credential::Thing {
                            tenant: &sub.tenant,
                            thing: &sub.name,
                            key: key.as_bytes(),
                        };
                        let refused = s.authenticate(&cred).map(|_| ()).map_err(|r| r.reason);
                        prop_assert!(refused.is_err());
                        // Without the right key, disabled and suspended look like unknown.
                        let right = s.tenant(&sub.tenant).is_some()
                            && s.thing(&sub.tenant, &sub.name)
                                .is_some_and(|t| t.key_digests.iter().any(|d| d.verify(key.as_bytes())));
                        if !right {
                            prop_assert_eq!(refused, Err(DenyReason::BadCredential));
                        }
                    }
                }
            }
        }
    }

    /// The subtopic-deny invariant (DESIGN §4). Through a granted filter a topic is delivered
    /// when the filter does not withhold, or when the topic itself is allowed: no topic the
    /// policy denies the subject is ever delivered. A granted filter matches only topics that
    /// are allowed or withheld by a deny; a filter is refused as denied only when every topic it
    /// matches is denied; and a filter whose topics are all allowed or denied, not all denied,
    /// is granted.
    #[test]
    fn no_denied_topic_is_delivered_and_only_wholly_denied_filters_are_refused(
        s in arb_snapshot(1),
        requests in prop::collection::vec(arb_request(), 1..20),
    ) {
        let topics = concrete_subtopics(5);
        for r in requests.iter().filter(|r| r.action == Action::Subscribe) {
            let f = parse(&r.filter);
            let d = ask(&s, r);
            let withholds = s.withholds(&r.subject, &f);
            let prefix = format!("m/{}/c/{}", f.tenant(), f.channel());
            let (mut allowed, mut denied, mut other) = (0, 0, 0);
            for t in topics.iter().filter(|t| matches_filter(f.subtopic(), t.as_deref())) {
                let text = match t {
                    Some(sub) => format!("{prefix}/{sub}"),
                    None => prefix.clone(),
                };
                let one = s.authorize(&r.subject, Action::Subscribe, &parse(&text));
                let delivered = d.is_allowed() && (!withholds || one.is_allowed());
                prop_assert!(
                    !delivered || one.is_allowed(),
                    "{} delivered through {} ({:?}, withholds {}) but it is {:?}",
                    text, r.filter, d, withholds, one
                );
                match one {
                    Decision::Allow(_) => allowed += 1,
                    Decision::Deny(DenyReason::SubtopicDenied) => denied += 1,
                    Decision::Deny(_) => other += 1,
                }
            }
            if d.is_allowed() {
                prop_assert_eq!(other, 0, "{} granted over topics neither allowed nor denied", &r.filter);
            }
            if d == Decision::Deny(DenyReason::SubtopicDenied) {
                prop_assert!(
                    allowed == 0 && other == 0,
                    "{} refused as denied, but {} of its topics are allowed and {} otherwise refused",
                    r.filter, allowed, other
                );
            }
            if other == 0 && allowed > 0 {
                prop_assert!(d.is_allowed(), "{} has allowed and withheld topics only, but is {:?}", r.filter, d);
            }
            if other == 0 && allowed == 0 && denied > 0 {
                prop_assert_eq!(d, Decision::Deny(DenyReason::SubtopicDenied), "{}", &r.filter);
            }
            if d.is_allowed() {
                // Checked per delivery exactly when there is something to withhold: a filter
                // no deny overlaps costs nothing per message.
                prop_assert_eq!(withholds, denied > 0, "{}", &r.filter);
            }
        }
    }

    /// The delivery gate (memo, then decision cache) answers every delivery as the policy of
    /// the moment does, across new versions and repeated topics.
    #[test]
    fn the_delivery_gate_answers_as_the_policy_does(
        snapshots in prop::collection::vec(arb_snapshot(0), 1..4),
        subject in arb_subject(),
        deliveries in prop::collection::vec((0..64usize, prop::bool::weighted(0.05)), 1..100),
        cache_entries in prop_oneof![Just(0u64), Just(8), Just(1000)],
    ) {
        let mut versions = snapshots.into_iter().enumerate().map(|(i, mut s)| {
            s.set_version(i as u64 + 1);
            s
        });
        let store = Store(RwLock::new(Arc::new(versions.next().expect("at least one"))));
        let cache = DecisionCache::new(cache_entries);
        let mut gate = DeliveryGate::default();
        let topics: Vec<String> = concrete_subtopics(3)
            .into_iter()
            .flat_map(|t| {
                let tenant = subject.tenant.clone();
                CHANNELS.iter().map(move |c| match &t {
                    Some(sub) => format!("m/{tenant}/c/{c}/{sub}"),
                    None => format!("m/{tenant}/c/{c}"),
                })
            })
            .collect();
        for (i, bump) in deliveries {
            if bump && let Some(next) = versions.next() {
                store.swap(next);
            }
            let topic = &topics[i % topics.len()];
            let direct = store.current().authorize(&subject, Action::Subscribe, &parse(topic)).is_allowed();
            prop_assert_eq!(gate.allows(&cache, &store, &subject, topic), direct, "{}", topic);
        }
    }

    #[test]
    fn cached_decisions_equal_direct_ones_across_versions(
        snapshots in prop::collection::vec(arb_snapshot(0), 1..5),
        requests in prop::collection::vec(arb_request(), 1..12),
        order in prop::collection::vec((0..12usize, prop::bool::weighted(0.1)), 1..120),
    ) {
        let mut versions = snapshots.into_iter().enumerate().map(|(i, mut s)| {
            s.set_version(i as u64 + 1);
            s
        });
        let store = Store(RwLock::new(Arc::new(versions.next().expect("at least one"))));
        let cached = CachedEvaluator::new(&store, 64);
        for (i, bump) in order {
            if bump && let Some(next) = versions.next() {
                store.swap(next);
            }
            let r = &requests[i % requests.len()];
            prop_assert_eq!(ask(&cached, r), ask(&*store.current(), r), "{:?}", r);
        }
    }

    #[test]
    fn nothing_allowed_before_a_revoking_version_is_served_after_it(
        s in arb_snapshot(1),
        requests in prop::collection::vec(arb_request(), 1..30),
        revoke in 0..5usize,
        tenant in prop::sample::select(&TENANTS[..]),
    ) {
        let store = Store(RwLock::new(Arc::new(s.clone())));
        let cached = CachedEvaluator::new(&store, 1000);
        let before: Vec<Decision> = requests.iter().map(|r| ask(&cached, r)).collect();
        let mut next = s.clone();
        next.set_version(2);
        match revoke {
            0 => {
                let names: Vec<_> = next.grants().filter(|g| g.tenant == tenant).map(|g| g.name.clone()).collect();
                for n in names { next.remove_grant(tenant, &n); }
                for mut u in next.users().filter(|u| u.tenant == tenant).cloned().collect::<Vec<_>>() {
                    u.role = Role::Member;
                    next.upsert_user(u);
                }
            }
            1 => {
                if let Some(mut t) = next.tenant(tenant).cloned() {
                    t.suspended = true;
                    next.upsert_tenant(t);
                }
            }
            2 => {
                for mut t in next.things().filter(|t| t.tenant == tenant).cloned().collect::<Vec<_>>() {
                    t.disabled = true;
                    next.upsert_thing(t);
                }
            }
            3 => {
                for g in GROUPS { next.remove_group(tenant, g); }
            }
            _ => {
                for c in CHANNELS { next.remove_channel(tenant, c); }
            }
        }
        store.swap(next.clone());
        for (r, was) in requests.iter().zip(before) {
            let now = ask(&next, r);
            let served = ask(&cached, r);
            prop_assert_eq!(served, now);
            if was.is_allowed() && !now.is_allowed() {
                prop_assert!(!served.is_allowed());
            }
            if r.subject.tenant == tenant && revoke != 3 {
                prop_assert!(!served.is_allowed() || r.subject.kind == SubjectKind::User && revoke == 2);
            }
        }
    }

    #[test]
    fn apply_of_diff_gives_the_target(a in arb_snapshot(1), b in arb_snapshot(2)) {
        let d = diff(&a, &b);
        let mut c = a.clone();
        c.apply(&d).expect("same base version");
        prop_assert_eq!(&c, &b);
        // The rebuilt snapshot answers like a freshly built one.
        let fresh = Snapshot::from_resources(2, b.to_resources()).expect("unique");
        prop_assert_eq!(&c, &fresh);
    }

    #[test]
    fn a_one_resource_change_gives_a_one_resource_delta(
        a in arb_snapshot(1),
        r in arb_resource(),
    ) {
        let mut b = a.clone();
        b.set_version(2);
        upsert(&mut b, r);
        let d = diff(&a, &b);
        prop_assert!(d.len() <= 1);
        let mut c = a.clone();
        c.apply(&d).expect("same base version");
        prop_assert_eq!(c, b);
    }

    /// A copy shares its tables with what it was copied from: applying deltas to it changes
    /// neither that snapshot nor earlier copies, and gives what building from the same resources
    /// gives. Tenants a delta did not touch keep their version; those it touched get a greater one.
    #[test]
    fn deltas_applied_to_shared_copies_equal_snapshots_built_from_resources(
        start in arb_snapshot(1),
        steps in prop::collection::vec(
            prop::collection::vec((arb_resource(), prop::bool::weighted(0.3)), 1..6),
            1..6,
        ),
    ) {
        let mut target = start.clone();
        let mut applied = Snapshot::from_resources(1, start.to_resources()).expect("unique");
        let mut history: Vec<(Snapshot, Snapshot)> = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            let mut goal = target.clone();
            goal.set_version(i as u64 + 2);
            for (r, remove) in step {
                if remove { remove_like(&mut goal, &r) } else { upsert(&mut goal, r) }
            }
            let delta = diff(&target, &goal);
            let before = applied.clone();
            applied.apply(&delta).expect("same base version");
            let built = Snapshot::from_resources(goal.version(), goal.to_resources()).expect("unique");
            prop_assert_eq!(&applied, &built);
            let touched = delta.tenants_touched();
            for t in TENANTS {
                if touched.contains(t) {
                    prop_assert!(applied.tenant_version(t) > before.tenant_version(t));
                } else {
                    prop_assert_eq!(applied.tenant_version(t), before.tenant_version(t));
                }
            }
            history.push((before, Snapshot::from_resources(target.version(), target.to_resources()).expect("unique")));
            target = goal;
        }
        for (copy, as_built) in &history {
            prop_assert_eq!(copy, as_built);
        }
    }

    #[test]
    fn snapshots_survive_serialization(s in arb_snapshot(9)) {
        let json = serde_json::to_string(&s).expect("serialize");
        let back: Snapshot = serde_json::from_str(&json).expect("deserialize");
        prop_assert_eq!(back, s);
    }

    /// `covers` agrees with enumerating topics (with `zz` standing for every unnamed level).
    #[test]
    fn coverage_agrees_with_enumeration(
        patterns in prop::collection::vec(arb_pattern(), 0..4),
        filter in prop::option::weighted(0.9, arb_pattern()),
    ) {
        let filter_text = filter.as_ref().map(|f| f.as_str().to_owned()).filter(|t| !t.is_empty());
        let fsub = filter_text.as_deref();
        let all = concrete_subtopics(6)
            .into_iter()
            .filter(|t| matches_filter(fsub, t.as_deref()))
            .all(|t| patterns.iter().any(|p| p.matches(t.as_deref())));
        prop_assert_eq!(covers(&patterns, fsub), all, "patterns {:?} filter {:?}", patterns, fsub);
    }
}
