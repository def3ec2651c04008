//! SUBSCRIBE, UNSUBSCRIBE and the re-check of subscriptions on every new snapshot, and the
//! session's index of its subscriptions.
//!
//! The index finds a subscription by its filter, and the subscriptions that may match a topic,
//! without walking all of them: a SUBSCRIBE costs the same whether the session holds ten filters
//! or ten thousand, and so does a delivery (unless the session's wildcard filters in that one
//! channel are many, which is its own cost only).

use foldhash::{HashMap, HashSet};
use std::collections::hash_map::Entry;

use fleetward_policy::{
    Action, Decision, DeliveryGate, PolicyEvaluator, Subject, filter_matches, parse_filter,
};
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, RetainForwardRule, SubAck, Subscribe, SubscribeProperties,
    UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::persist::Incarnation;
use super::{Flow, Session, Subscription, limits};
use crate::audit;
use crate::ingress::Uids;
use crate::mqtt::codec::Version;
use crate::mqtt::reason;
use crate::router::{METADATA_SUBSCRIPTION_PROPERTY, Router, RouterLink, SessionMode, channel_key};

/// Up to this many subscriptions a delivery matches each one instead of using the index.
const SMALL: usize = 8;

/// A session's subscriptions, by full filter, with an index for delivery. Boxed, and made at
/// the first SUBSCRIBE: most sessions never subscribe, and the session is the connection's
/// future (MQTT.md, Memory).
#[derive(Default)]
pub(crate) struct Subs(Option<Box<Index>>);

#[derive(Default)]
struct Index {
    /// The subscriptions, densely: a delivery to a session with a few of them walks this.
    subs: Vec<Subscription>,
    /// Each subscription's place in `subs`, by full filter.
    by_full: HashMap<String, usize>,
    /// Filters without wildcards, by the topic they name: their full filters.
    exact: HashMap<String, Vec<String>>,
    /// Filters with wildcards, by channel (`m/<tenant>/c/<channel>`): their full filters.
    wild: HashMap<String, Vec<String>>,
    /// The full filters a subtopic deny of the subject overlaps: while there is one, every
    /// delivery's topic is checked ([`Subs::withholding`]). A new subscription is in it until
    /// its SUBSCRIBE says otherwise, so nothing is delivered unchecked by mistake.
    withholding: HashSet<String>,
    /// The memo of those checks.
    gate: DeliveryGate,
}

impl Index {
    fn bucket(&mut self, matcher: &str) -> Entry<'_, String, Vec<String>> {
        if matcher.contains(['+', '#']) {
            self.wild.entry(channel_key(matcher).to_owned())
        } else {
            self.exact.entry(matcher.to_owned())
        }
    }

    fn get(&self, full: &str) -> Option<&Subscription> {
        self.by_full.get(full).map(|&i| &self.subs[i])
    }
}

impl Subs {
    /// How many subscriptions the session holds.
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |i| i.subs.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|i| i.subs.is_empty())
    }

    pub(super) fn get_mut(&mut self, full: &str) -> Option<&mut Subscription> {
        let index = self.0.as_mut()?;
        let i = *index.by_full.get(full)?;
        Some(&mut index.subs[i])
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Subscription> {
        self.0.iter_mut().flat_map(|i| i.subs.iter_mut())
    }

    /// Adds a subscription; one with the same full filter is replaced.
    pub(super) fn insert(&mut self, sub: Subscription) {
        let index = self.0.get_or_insert_with(Box::default);
        if let Some(&i) = index.by_full.get(&sub.full) {
            index.subs[i] = sub;
            return;
        }
        let full = sub.full.clone();
        let matcher = sub.matcher.clone();
        index.withholding.insert(full.clone());
        index.by_full.insert(full.clone(), index.subs.len());
        index.subs.push(sub);
        index.bucket(&matcher).or_default().push(full);
    }

    pub(super) fn remove(&mut self, full: &str) -> Option<Subscription> {
        let index = self.0.as_mut()?;
        let i = index.by_full.remove(full)?;
        index.withholding.remove(full);
        let sub = index.subs.swap_remove(i);
        if let Some(moved) = index.subs.get(i)
            && let Some(place) = index.by_full.get_mut(&moved.full)
        {
            *place = i;
        }
        if let Entry::Occupied(mut e) = index.bucket(&sub.matcher) {
            e.get_mut().retain(|f| f != full);
            if e.get().is_empty() {
                e.remove();
            }
        }
        if index.subs.is_empty() {
            self.0 = None;
        }
        Some(sub)
    }

    /// Marks whether a subtopic deny overlaps the subscription `full` ([`Index::withholding`]).
    pub(super) fn set_withholds(&mut self, full: &str, withholds: bool) {
        let Some(index) = self.0.as_mut() else {
            return;
        };
        if !withholds {
            index.withholding.remove(full);
        } else if index.by_full.contains_key(full) && !index.withholding.contains(full) {
            index.withholding.insert(full.to_owned());
        }
    }

    /// Replaces the set of subscriptions a subtopic deny overlaps (after a re-check of all).
    pub(super) fn reset_withholding(&mut self, fulls: Vec<String>) {
        if let Some(index) = self.0.as_mut() {
            index.withholding = fulls.into_iter().collect();
        }
    }

    /// The memo of delivery checks, when a subscription needs them: `None` (nothing to check,
    /// and nothing paid per message) when no subtopic deny overlaps any subscription.
    pub(super) fn withholding(&mut self) -> Option<&mut DeliveryGate> {
        self.0
            .as_deref_mut()
            .filter(|i| !i.withholding.is_empty())
            .map(|i| &mut i.gate)
    }

    /// Removes the subscriptions `gone` says; returns their router filters.
    pub(super) fn remove_where(&mut self, gone: impl Fn(&Subscription) -> bool) -> Vec<String> {
        let fulls: Vec<String> = self
            .0
            .iter()
            .flat_map(|i| i.subs.iter())
            .filter(|s| gone(s))
            .map(|s| s.full.clone())
            .collect();
        fulls
            .iter()
            .filter_map(|f| self.remove(f))
            .map(|s| s.router)
            .collect()
    }

    /// The subscriptions whose filter matches a full topic. A session with a few
    /// subscriptions (most devices) has them matched one by one, which costs less than the
    /// index's lookups; past [`SMALL`] the index finds the candidates.
    pub(super) fn matching<'a>(&'a self, topic: &'a str) -> Matching<'a> {
        let walk = match self.0.as_deref() {
            None => Walk::Done,
            Some(index) if index.subs.len() <= SMALL => Walk::Few(index.subs.iter()),
            Some(index) => Walk::Indexed {
                index,
                exact: index.exact.get(topic).map_or(&[][..], Vec::as_slice).iter(),
                wild: index
                    .wild
                    .get(channel_key(topic))
                    .map_or(&[][..], Vec::as_slice)
                    .iter(),
            },
        };
        Matching { topic, walk }
    }
}

/// The subscriptions that match a topic ([`Subs::matching`]): a plain loop, since it runs for
/// every delivery.
pub(super) struct Matching<'a> {
    topic: &'a str,
    walk: Walk<'a>,
}

enum Walk<'a> {
    Few(std::slice::Iter<'a, Subscription>),
    Indexed {
        index: &'a Index,
        exact: std::slice::Iter<'a, String>,
        wild: std::slice::Iter<'a, String>,
    },
    Done,
}

impl<'a> Iterator for Matching<'a> {
    type Item = &'a Subscription;

    fn next(&mut self) -> Option<&'a Subscription> {
        loop {
            let sub = match &mut self.walk {
                Walk::Few(subs) => subs.next()?,
                Walk::Indexed { index, exact, wild } => {
                    let full = exact.next().or_else(|| wild.next())?;
                    match index.get(full) {
                        Some(sub) => sub,
                        None => continue,
                    }
                }
                Walk::Done => return None,
            };
            if filter_matches(&sub.matcher, self.topic) {
                return Some(sub);
            }
        }
    }
}

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
    async fn link(&mut self) -> Option<&mut R::Link> {
        if self.link.is_none() && self.acc.registration.was_kicked() {
            // Taken over: the router id is the successor's now, and an attach would take its
            // session over in the router.
            return None;
        }
        if self.link.is_none() {
            match self
                .shared
                .router
                .attach(&self.acc.key, SessionMode::Clean)
                .await
            {
                Ok((link, _)) => self.link = Some(Box::new(link)),
                Err(e) => {
                    tracing::error!(error = %e, "could not attach a session to the router");
                    self.shared.metrics.refused("subscribe", e.as_str());
                    return None;
                }
            }
        }
        self.link.as_deref_mut()
    }

    pub(super) async fn on_subscribe(
        &mut self,
        subscribe: Subscribe,
        props: Option<SubscribeProperties>,
    ) {
        let version = self.codec.version();
        let snapshot = self.policy_now();
        // v5: the packet's subscriptions get delivery metadata on any channel.
        let metadata = props.as_ref().is_some_and(|p| {
            p.user_properties
                .iter()
                .any(|(k, v)| k == METADATA_SUBSCRIPTION_PROPERTY && v == "true")
        });
        let sub_id = props.and_then(|p| p.id);
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for f in subscribe.filters {
            let full = match &self.acc.mount {
                Some(m) => m.mount_filter(f.path.as_bytes(), &limits()),
                None => Ok(f.path.clone()),
            };
            let parsed = full
                .as_deref()
                .map_err(|e| *e)
                .and_then(|t| parse_filter(t, &limits()));
            let topic = match parsed {
                // Shared subscriptions on a persistent router link can crash rumqttd 0.20's
                // router (ROUTER.md §2.8), so they are refused: also on a resumed session that
                // will not be kept, whose link is persistent all the same.
                Ok(t) if t.share_group().is_some() && self.acc.persistent_link => {
                    self.shared
                        .metrics
                        .refused("subscribe", "shared_subscription_persistent");
                    self.audit_refused(
                        audit::Action::Subscribe,
                        Some(full.as_deref().unwrap_or(&f.path)),
                        "shared_subscription_persistent",
                    );
                    codes.push(match version {
                        Version::V4 => rumqttd::protocol::SubscribeReasonCode::Failure,
                        Version::V5 => {
                            rumqttd::protocol::SubscribeReasonCode::SharedSubscriptionsNotSupported
                        }
                    });
                    continue;
                }
                Ok(t) => t,
                Err(e) => {
                    self.shared.metrics.refused("subscribe", e.as_str());
                    self.audit_refused(audit::Action::Subscribe, Some(&f.path), e.as_str());
                    codes.push(reason::suback_refused(version, reason::is_invalid_mqtt(e)));
                    continue;
                }
            };
            let decision = self.shared.cache.authorize(
                &*snapshot,
                &self.acc.subject,
                Action::Subscribe,
                &topic,
            );
            if let Decision::Deny(why) = decision {
                self.shared.metrics.refused("subscribe", why.as_str());
                self.audit_refused(
                    audit::Action::Subscribe,
                    Some(full.as_deref().unwrap_or(&f.path)),
                    why.as_str(),
                );
                codes.push(reason::suback_refused(version, false));
                continue;
            }
            let Some(channel) = snapshot.channel(topic.tenant(), topic.channel()) else {
                codes.push(reason::suback_refused(version, false));
                continue;
            };
            // Granted though a deny may overlap it: then the denied topics are withheld from
            // each delivery (deliver.rs), retained ones included.
            let withholds = snapshot.withholds(&self.acc.subject, &topic);
            let granted = (f.qos as u8).min(u8::from(channel.max_qos));
            let retained_allowed = channel.retained_allowed;
            let made_under = Incarnation::of(&snapshot, topic.tenant(), channel);
            let uids_now = Uids::of(&snapshot, topic.tenant(), topic.channel());
            let (tenant, channel_name) = (topic.tenant().to_owned(), topic.channel().to_owned());
            let matcher = topic.as_str().to_owned();
            let group = topic.share_group().map(str::to_owned);
            let (full, router) = match &group {
                Some(g) => (
                    format!("$share/{g}/{matcher}"),
                    format!(
                        "$share/{}/{matcher}",
                        router_share_group(&tenant, g, &matcher)
                    ),
                ),
                None => (matcher.clone(), matcher.clone()),
            };
            let existing = self.subs.get_mut(&full);
            let new = existing.is_none();
            match existing {
                Some(sub) => {
                    // Made again: under the channel the policy has now.
                    sub.made_under = made_under;
                    sub.qos = granted;
                    sub.id = sub_id;
                    sub.no_local = f.nolocal;
                    sub.retain_as_published = f.preserve_retain;
                    if f.nolocal {
                        self.shared
                            .no_local_seen
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                None => {
                    // A new filter beyond the session's cap (a replaced one does not count).
                    if self.subs.len() >= self.shared.config.max_subscriptions_per_session {
                        self.shared
                            .metrics
                            .refused("limit", "subscriptions_per_session");
                        self.audit_refused(
                            audit::Action::Subscribe,
                            Some(&f.path),
                            "subscriptions_per_session",
                        );
                        codes.push(match version {
                            Version::V4 => rumqttd::protocol::SubscribeReasonCode::Failure,
                            Version::V5 => rumqttd::protocol::SubscribeReasonCode::QuotaExceeded,
                        });
                        continue;
                    }
                    let Some(link) = self.link().await else {
                        codes.push(reason::suback_refused(version, false));
                        continue;
                    };
                    if link.subscribe(&router).is_err() {
                        codes.push(reason::suback_refused(version, false));
                        continue;
                    }
                    let client = match &group {
                        Some(_) => f
                            .path
                            .strip_prefix("$share/")
                            .and_then(|r| r.split_once('/'))
                            .map_or(f.path.as_str(), |(_, f)| f)
                            .to_owned(),
                        None => f.path.clone(),
                    };
                    self.subs.insert(Subscription {
                        client,
                        full: full.clone(),
                        matcher: matcher.clone(),
                        router,
                        no_local: f.nolocal,
                        retain_as_published: f.preserve_retain,
                        qos: granted,
                        id: sub_id,
                        metadata,
                        made_under,
                    });
                    if f.nolocal {
                        self.shared
                            .no_local_seen
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            self.subs.set_withholds(&full, withholds);
            codes.push(reason::suback_granted(granted));
            let send_retained = match f.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => true,
                RetainForwardRule::OnNewSubscribe => new,
                RetainForwardRule::Never => false,
            };
            // Retained messages are never sent to shared subscriptions.
            if send_retained && retained_allowed && group.is_none() {
                retained.extend(self.shared.retained.matching(
                    &tenant,
                    &channel_name,
                    &matcher,
                    uids_now,
                ));
            }
        }
        // Written once the router has the subscriptions: a message published after the
        // SUBACK reaches them (`RouterLink::taken_in`).
        if let Some(link) = self.link.as_deref_mut() {
            link.taken_in().await;
        }
        self.write(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes: codes,
            },
            None,
        ));
        for m in retained {
            self.pending.push_back(m);
        }
        self.flush_pending();
    }

    pub(super) fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for f in unsubscribe.filters {
            let full = match &self.acc.mount {
                Some(m) => m.mount_filter(f.as_bytes(), &limits()).unwrap_or_default(),
                None => f,
            };
            match self.subs.remove(&full) {
                Some(sub) => {
                    self.router_unsubscribe(&sub.router);
                    reasons.push(UnsubAckReason::Success);
                }
                None => reasons.push(UnsubAckReason::NoSubscriptionExisted),
            }
        }
        self.write(Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        ));
    }

    /// Removes a router subscription (the router renews what it must of the rest).
    fn router_unsubscribe(&mut self, router_filter: &str) {
        if let Some(link) = &mut self.link {
            let _ = link.unsubscribe(router_filter);
        }
    }

    /// Re-checks the session and its subscriptions against a new snapshot.
    pub(super) fn revalidate(&mut self) -> Flow {
        let snapshot = self.policy.borrow_and_update().clone();
        let subject: &Subject = &self.acc.subject;
        if let Err(refusal) = snapshot.check_subject(subject) {
            return self.end_with(
                DisconnectReasonCode::AdministrativeAction,
                "revoked",
                refusal.reason.as_str(),
            );
        }
        // A key removed after rotation ends the sessions that used it.
        if let Some(digest) = &self.acc.key_digest {
            let still = snapshot
                .thing(&subject.tenant, &subject.name)
                .is_some_and(|t| t.key_digests.iter().any(|d| d.ct_eq(digest)));
            if !still {
                return self.end_with(
                    DisconnectReasonCode::AdministrativeAction,
                    "revoked",
                    "key_removed",
                );
            }
        }
        let mut revoked = Vec::new();
        let mut withholding = Vec::new();
        for sub in self.subs.values_mut() {
            let allowed = parse_filter(&sub.full, &limits()).is_ok_and(|t| {
                let mut ok = self
                    .shared
                    .cache
                    .authorize(&*snapshot, &self.acc.subject, Action::Subscribe, &t)
                    .is_allowed();
                // A deny added, or taken away, since the subscription was checked.
                if snapshot.withholds(subject, &t) {
                    withholding.push(sub.full.clone());
                }
                if let Some(c) = snapshot.channel(t.tenant(), t.channel()) {
                    sub.qos = sub.qos.min(u8::from(c.max_qos));
                    // Deleted and created again (a new uid) within one snapshot: revoked, as
                    // the deletion alone would have revoked it.
                    let now = Incarnation::of(&snapshot, t.tenant(), c);
                    ok &= !sub.made_under.other_than(now);
                }
                ok
            });
            if !allowed {
                revoked.push(sub.full.clone());
            }
        }
        self.subs.reset_withholding(withholding);
        for full in revoked {
            if let Some(sub) = self.subs.remove(&full) {
                self.shared.metrics.refused("revoked", "subscription");
                self.router_unsubscribe(&sub.router);
            }
        }
        if let Some(gate) = self.subs.withholding() {
            self.shared.cache.count_hits(gate.take_hits());
        }
        Flow::Continue
    }
}

/// The router-side name of a shared group: per tenant and per filter, because rumqttd 0.20
/// keys groups by name alone, across tenants and filters (ROUTER.md §2.8).
fn router_share_group(tenant: &str, group: &str, filter: &str) -> String {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same name on every pod and restart.
    let mut h = std::hash::DefaultHasher::new();
    filter.hash(&mut h);
    format!("{tenant}~{}~{group}~{:016x}", group.len(), h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(full: &str) -> Subscription {
        let matcher = full
            .strip_prefix("$share/")
            .and_then(|r| r.split_once('/'))
            .map_or(full, |(_, f)| f);
        Subscription {
            client: matcher.to_owned(),
            full: full.to_owned(),
            matcher: matcher.to_owned(),
            router: full.to_owned(),
            no_local: false,
            retain_as_published: false,
            qos: 0,
            id: None,
            metadata: false,
            made_under: Incarnation::default(),
        }
    }

    #[test]
    fn a_few_subscriptions_and_many_match_the_same_topics() {
        let filters = [
            "m/t/c/a/x",
            "m/t/c/a/+",
            "m/t/c/a/#",
            "$share/g/m/t/c/a/x",
            "m/t/c/b/y/z",
            "m/t/c/b/+/z",
            "m/u/c/a/x",
        ];
        let topics = [
            "m/t/c/a/x",
            "m/t/c/a/y",
            "m/t/c/b/y/z",
            "m/t/c/b/q",
            "m/u/c/a/x",
        ];
        // A few (matched one by one), then past SMALL (through the index) with the same ones
        // among many that match nothing asked.
        for padding in [0, 2 * SMALL] {
            let mut subs = Subs::default();
            for f in filters {
                subs.insert(sub(f));
            }
            for i in 0..padding {
                subs.insert(sub(&format!("m/t/c/other/{i}")));
            }
            for topic in topics {
                let mut got: Vec<&str> = subs.matching(topic).map(|s| s.full.as_str()).collect();
                got.sort_unstable();
                let mut want: Vec<&str> = filters
                    .iter()
                    .copied()
                    .filter(|f| filter_matches(&sub(f).matcher, topic))
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want, "{topic} with {padding} more");
            }
            // Removing one moves another into its place: each is still found, once.
            assert!(subs.remove("m/t/c/a/x").is_some());
            assert!(subs.remove("m/t/c/a/x").is_none());
            for f in filters.iter().filter(|f| **f != "m/t/c/a/x") {
                assert!(subs.get_mut(f).is_some_and(|s| s.full == *f), "{f}");
            }
            let mut got: Vec<&str> = subs
                .matching("m/t/c/a/x")
                .map(|s| s.full.as_str())
                .collect();
            got.sort_unstable();
            assert_eq!(got, ["$share/g/m/t/c/a/x", "m/t/c/a/#", "m/t/c/a/+"]);
            assert_eq!(subs.len(), filters.len() - 1 + padding);
        }
    }
}
