//! SUBSCRIBE, UNSUBSCRIBE and the re-check of subscriptions on each policy change that
//! concerns the session (the index of a session's subscriptions is `mqtt/subs.rs`).

use fleetward_policy::{
    Action, Decision, PolicyEvaluator, ResourceName, Snapshot, Subject, Topic, TopicError,
    parse_filter,
};
use rumqttd::protocol::{
    DisconnectReasonCode, Filter, Packet, RetainForwardRule, SubAck, Subscribe,
    SubscribeProperties, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Flow, Session, limits};
use crate::audit;
use crate::ingress::Uids;
use crate::mqtt::codec::Version;
use crate::mqtt::reason;
use crate::mqtt::subs::{Incarnation, Subscription};
use crate::router::{METADATA_SUBSCRIPTION_PROPERTY, Message, Router, RouterLink, SessionMode};

/// What a SUBSCRIBE asks for all its filters (v5).
pub(super) struct Asked {
    /// Delivery metadata on any channel (`fleetward-metadata: true`).
    pub(super) metadata: bool,
    /// The subscription identifier.
    pub(super) id: Option<usize>,
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
        let snapshot = self.policy_now();
        // v5: the packet's subscriptions get delivery metadata on any channel.
        let metadata = props.as_ref().is_some_and(|p| {
            p.user_properties
                .iter()
                .any(|(k, v)| k == METADATA_SUBSCRIPTION_PROPERTY && v == "true")
        });
        let asked = Asked {
            metadata,
            id: props.and_then(|p| p.id),
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for f in subscribe.filters {
            codes.push(
                self.subscribe_one(&snapshot, f, &asked, &mut retained)
                    .await,
            );
        }
        // A persistent session's record and queue follow before the SUBACK too.
        if self.durable.as_ref().is_some_and(|d| d.dirty) {
            Box::pin(self.durable_sync()).await;
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

    /// One filter of a SUBSCRIBE: its reason code. The retained messages it is to be sent are
    /// added to `retained`.
    pub(super) async fn subscribe_one(
        &mut self,
        snapshot: &Snapshot,
        f: Filter,
        asked: &Asked,
        retained: &mut Vec<Message>,
    ) -> SubscribeReasonCode {
        let version = self.codec.version();
        let mounted = self.mounted_filter(&f.path);
        let topic = match self.authorize_filter(snapshot, &f.path, &mounted) {
            Ok(topic) => topic,
            Err(code) => return code,
        };
        let Some(channel) = snapshot.channel(topic.tenant(), topic.channel()) else {
            return reason::suback_refused(version, false);
        };
        self.watch_channel(snapshot, topic.tenant(), topic.channel());
        // Granted though a deny may overlap it: then the denied topics are withheld from
        // each delivery (deliver.rs), retained ones included.
        let withholds = snapshot.withholds(&self.acc.subject, &topic);
        let granted = (f.qos as u8).min(u8::from(channel.max_qos));
        let retained_allowed = channel.retained_allowed;
        let made_under = Incarnation::of(snapshot, topic.tenant(), channel);
        let uids_now = Uids::of(snapshot, topic.tenant(), topic.channel());
        let (tenant, channel_name) = (topic.tenant().to_owned(), topic.channel().to_owned());
        let matcher = topic.as_str().to_owned();
        let group = topic.share_group().map(str::to_owned);
        let (full, router) = full_and_router(&tenant, group.as_deref(), &matcher);
        let new = match self.subs.get_mut(&full) {
            Some(sub) => {
                // Made again: under the channel the policy has now.
                sub.renew(made_under, granted, asked.id, f.nolocal, f.preserve_retain);
                false
            }
            None => {
                let sub = Subscription {
                    client: client_filter(&f.path, group.is_some()),
                    full: full.clone(),
                    matcher: matcher.clone(),
                    router,
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    qos: granted,
                    id: asked.id,
                    metadata: asked.metadata,
                    made_under,
                };
                if let Err(code) = self.add_subscription(&f.path, sub).await {
                    return code;
                }
                true
            }
        };
        if let Some(d) = self.durable.as_mut() {
            d.subscribed(
                &full,
                crate::mqtt::durable::RecordedSub {
                    path: f.path.clone(),
                    qos: f.qos as u8,
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    id: asked.id,
                    metadata: asked.metadata,
                },
            );
        }
        if f.nolocal {
            self.shared
                .no_local_seen
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.subs.set_withholds(&full, withholds);
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
        reason::suback_granted(granted)
    }

    /// Watches a channel subscribed to under `snapshot` for policy changes. Before the answer
    /// can go stale: a change that `snapshot` did not have yet is re-checked at the next turn.
    fn watch_channel(&self, snapshot: &Snapshot, tenant: &str, channel: &str) {
        self.interest.watch_channel(tenant, channel);
        if self.policy.borrow().stamp() != snapshot.stamp() {
            self.interest.recheck_now();
        }
    }

    /// The filter of `path` as subscribed: mounted for a mounted thing.
    fn mounted_filter(&self, path: &str) -> Result<String, TopicError> {
        match &self.acc.mount {
            Some(m) => m.mount_filter(path.as_bytes(), &limits()),
            None => Ok(path.to_owned()),
        }
    }

    /// Parses the (mounted) filter of `path` and authorizes the subscription; the refusal's
    /// reason code otherwise, counted and audited.
    fn authorize_filter<'a>(
        &self,
        snapshot: &Snapshot,
        path: &str,
        mounted: &'a Result<String, TopicError>,
    ) -> Result<Topic<'a>, SubscribeReasonCode> {
        let version = self.codec.version();
        let parsed = mounted
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
                    Some(mounted.as_deref().unwrap_or(path)),
                    "shared_subscription_persistent",
                );
                return Err(match version {
                    Version::V4 => SubscribeReasonCode::Failure,
                    Version::V5 => SubscribeReasonCode::SharedSubscriptionsNotSupported,
                });
            }
            Ok(t) => t,
            Err(e) => {
                self.shared.metrics.refused("subscribe", e.as_str());
                self.audit_refused(audit::Action::Subscribe, Some(path), e.as_str());
                return Err(reason::suback_refused(version, reason::is_invalid_mqtt(e)));
            }
        };
        let decision =
            self.shared
                .cache
                .authorize(snapshot, &self.acc.subject, Action::Subscribe, &topic);
        if let Decision::Deny(why) = decision {
            self.shared.metrics.refused("subscribe", why.as_str());
            self.audit_refused(
                audit::Action::Subscribe,
                Some(mounted.as_deref().unwrap_or(path)),
                why.as_str(),
            );
            return Err(reason::suback_refused(version, false));
        }
        Ok(topic)
    }

    /// Adds a new filter: within the session's cap (a replaced one does not count), and once
    /// the router has it.
    async fn add_subscription(
        &mut self,
        path: &str,
        sub: Subscription,
    ) -> Result<(), SubscribeReasonCode> {
        let version = self.codec.version();
        if self.subs.len() >= self.shared.config.max_subscriptions_per_session {
            self.shared
                .metrics
                .refused("limit", "subscriptions_per_session");
            self.audit_refused(
                audit::Action::Subscribe,
                Some(path),
                "subscriptions_per_session",
            );
            return Err(match version {
                Version::V4 => SubscribeReasonCode::Failure,
                Version::V5 => SubscribeReasonCode::QuotaExceeded,
            });
        }
        let Some(link) = self.link().await else {
            return Err(reason::suback_refused(version, false));
        };
        if link.subscribe(&sub.router).is_err() {
            return Err(reason::suback_refused(version, false));
        }
        self.subs.insert(sub);
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for f in unsubscribe.filters {
            let full = match &self.acc.mount {
                Some(m) => m.mount_filter(f.as_bytes(), &limits()).unwrap_or_default(),
                None => f,
            };
            if let Some(d) = self.durable.as_mut() {
                d.unsubscribed(&full);
            }
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

    /// Re-checks the session and its subscriptions against a new snapshot (one that concerns
    /// it: see `ingress::rechecks`).
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
        let mut channels = Vec::new();
        for sub in self.subs.values_mut() {
            let allowed = parse_filter(&sub.full, &limits()).is_ok_and(|t| {
                channels.push(ResourceName::new(t.tenant(), t.channel()));
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
        // A revoked filter's channel may stay watched: a superset only wakes the session more.
        self.interest.set_channels(channels);
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

/// The full filter as subscribed, and the one the router is given: a shared group renamed per
/// tenant and filter.
fn full_and_router(tenant: &str, group: Option<&str>, matcher: &str) -> (String, String) {
    match group {
        Some(g) => (
            format!("$share/{g}/{matcher}"),
            format!(
                "$share/{}/{matcher}",
                router_share_group(tenant, g, matcher)
            ),
        ),
        None => (matcher.to_owned(), matcher.to_owned()),
    }
}

/// The filter as the client sent it, without any `$share/<group>/`.
fn client_filter(path: &str, shared: bool) -> String {
    if !shared {
        return path.to_owned();
    }
    path.strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
        .map_or(path, |(_, f)| f)
        .to_owned()
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
