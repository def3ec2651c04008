//! SUBSCRIBE, UNSUBSCRIBE and the re-check of subscriptions on every new snapshot, and the
//! session's index of its subscriptions.
//!
//! The index finds a subscription by its filter, and the subscriptions that may match a topic,
//! without walking all of them: a SUBSCRIBE costs the same whether the session holds ten filters
//! or ten thousand, and so does a delivery (unless the session's wildcard filters in that one
//! channel are many, which is its own cost only).

use fleetward_policy::{Action, Decision, PolicyEvaluator, Subject, parse_filter};
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, RetainForwardRule, SubAck, Subscribe, SubscribeProperties,
    UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Flow, Session, limits};
use crate::audit;
use crate::ingress::Uids;
use crate::mqtt::codec::Version;
use crate::mqtt::reason;
use crate::mqtt::subs::{Incarnation, Subscription};
use crate::router::{METADATA_SUBSCRIPTION_PROPERTY, Router, RouterLink, SessionMode};

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
