//! Outbound delivery: QoS selection, packet ids, the in-flight window, v5 properties.

use bytes::Bytes;
use fleetward_policy::{Action, Decision, Snapshot, filter_matches, parse_topic_name};
use rumqttd::protocol::{Packet, PubRel, PubRelReason, Publish, PublishProperties};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{MetadataMemo, Session, limits};
use crate::mqtt::codec::{Version, publish_with_id};
use crate::mqtt::saved::{OutMsg, Outbound};
use crate::router::publish_props;
use crate::router::{Message, MessageProps, Router, channel_key};

/// What the subscriptions matching a delivery grant together.
struct Matched {
    granted: u8,
    /// Their v5 subscription identifiers.
    ids: Vec<usize>,
    /// Any asks for retain-as-published.
    keep_retain: bool,
    /// Any asks for delivery metadata.
    metadata: bool,
}

impl<R: Router, S: AsyncRead + AsyncWrite + Unpin + Send> Session<R, S> {
    pub(super) fn flush_pending(&mut self) {
        while self.inflight.len() < usize::from(self.acc.receive_maximum) {
            let Some(m) = self.pending.pop_front() else {
                break;
            };
            self.deliver(m, true);
        }
    }

    fn allocate_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// What the session's subscriptions that match `topic` grant: once, whatever number of
    /// filters match (the router hands a message to a session once, router::routes), at the
    /// highest QoS of them. `None` when none does.
    fn matched(&self, topic: &str, client_topic: &str, own: bool) -> Option<Matched> {
        let mut matched: Option<Matched> = None;
        for sub in self.subs.matching(topic) {
            let matches = (self.acc.mount.is_none() || filter_matches(&sub.client, client_topic))
                && !(own && sub.no_local);
            if matches {
                let m = matched.get_or_insert(Matched {
                    granted: sub.qos,
                    ids: Vec::new(),
                    keep_retain: false,
                    metadata: false,
                });
                m.granted = m.granted.max(sub.qos);
                m.keep_retain |= sub.retain_as_published;
                m.metadata |= sub.metadata;
                if let Some(id) = sub.id {
                    m.ids.push(id);
                }
            }
        }
        matched
    }

    /// A v5 delivery's properties: the client's own, and after them the delivery metadata
    /// where the channel or a matching subscription asks for it; and how many were added.
    fn v5_properties(
        &mut self,
        message: &Message,
        mut p: MessageProps,
        topic: &str,
        metadata: bool,
        ids: Vec<usize>,
    ) -> (Option<PublishProperties>, usize) {
        if let (Some(m), Some(rt)) = (&self.acc.mount, &p.response_topic) {
            // Relative to the mountpoint, like the topic; one outside it is of no use to a
            // client whose every publish is taken relative to it.
            p.response_topic = m.unmount(rt).map(str::to_owned);
        }
        let mut added = 0;
        if metadata || self.channel_metadata(topic) {
            let extra = message.metadata_properties();
            added = extra.len();
            p.user_properties.extend(extra);
        }
        let props = (!p.is_empty() || !ids.is_empty()).then(|| publish_props(p, ids));
        (props, added)
    }

    /// Delivers a message to the client at min(published QoS, granted QoS), if a live
    /// subscription still matches it.
    pub(super) fn deliver(&mut self, message: Message, retained: bool) {
        self.deliver_from(message, retained, None);
    }

    /// [`Session::deliver`] of a message from the router (`durable` = `None`) or from the
    /// session's durable queue (`Some((dup, pkid))`: `dup` when delivered before, sent with
    /// DUP; `pkid` the packet id it is to have). The packet id of a QoS 1/2 delivery written.
    pub(super) fn deliver_from(
        &mut self,
        mut message: Message,
        retained: bool,
        durable: Option<(bool, u16)>,
    ) -> Option<u16> {
        let topic = std::str::from_utf8(&message.topic).ok()?;
        // Withheld, as a message nothing subscribes to is: not counted as a refusal.
        if !self.may_receive(topic) {
            return None;
        }
        let client_topic = match &self.acc.mount {
            Some(m) => m.unmount(topic)?,
            None => topic,
        };
        let own = message.origin.is_some() && message.origin == Some(self.acc.registration.conn());
        // Nothing matches: unsubscribed or revoked while the message was in the router, or
        // the session's own publish on a no-local subscription.
        let Matched {
            granted,
            ids,
            keep_retain,
            metadata,
        } = self.matched(topic, client_topic, own)?;
        // A session whose QoS 1/2 deliveries come from its durable queue takes from the router
        // only what was not stored (QoS 0, retained messages, a channel that had no
        // persistent session when it was published): the queue has the rest.
        if durable.is_none()
            && !retained
            && message.stored
            && granted > 0
            && self.durable.as_ref().is_some_and(|d| d.has_queue())
        {
            return None;
        }
        if !retained && !self.within_offline_bound(message.created_ns) {
            return None;
        }
        let retained = retained || (message.retain && keep_retain);
        let qos = message.qos.min(granted);
        let topic_bytes = if self.acc.mount.is_some() {
            Bytes::copy_from_slice(client_topic.as_bytes())
        } else {
            message.topic.clone()
        };
        // v5: the client's own properties, and after them the delivery metadata where the
        // channel or a matching subscription asks for it (`added` of them).
        let (props, added) = match self.codec.version() {
            Version::V4 => (None, 0),
            Version::V5 => {
                let own = message.props.take().map(|b| *b).unwrap_or_default();
                self.v5_properties(&message, own, topic, metadata, ids)
            }
        };
        // A delivery from the queue takes the packet id its stream sequence gives it, so that
        // one sent again on resume, on any pod, has its original id (MQTT 3.1.1, 4.4); another
        // id only if that one is in flight already.
        let preferred = durable
            .map(|(_, pkid)| pkid)
            .filter(|p| *p != 0 && !self.inflight.contains_key(p));
        let pkid = (qos > 0).then(|| preferred.unwrap_or_else(|| self.allocate_pkid()));
        let (publish, out) = match pkid {
            None => (Publish::new(topic_bytes, message.payload, retained), None),
            Some(pkid) => {
                let dup = durable.is_some_and(|(dup, _)| dup);
                let publish =
                    publish_with_id(&topic_bytes, &message.payload, qos, pkid, retained, dup);
                (publish, Some((pkid, topic_bytes, message.payload)))
            }
        };
        let props = self.write_delivery(publish, props, added, out.is_some())?;
        let written = out.as_ref().map(|o| o.0);
        if let Some((pkid, topic, payload)) = out {
            let state = if qos == 1 {
                Outbound::Qos1Sent
            } else {
                Outbound::Qos2Sent
            };
            let out = OutMsg {
                topic,
                payload,
                qos,
                retain: retained,
                props,
            };
            self.inflight.insert(pkid, (state, out));
        }
        self.delivered += 1;
        written
    }

    /// Writes a delivery within the client's maximum packet size: a client whose maximum only
    /// our `added` properties exceed gets the message without them (MQTT 5 has the server drop
    /// what is larger; that copy is made only for a client with a maximum). The properties to
    /// keep for a resend (`kept`: a QoS 1/2 delivery), or `None` when nothing was written.
    fn write_delivery(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        added: usize,
        kept: bool,
    ) -> Option<Option<PublishProperties>> {
        let keep = |p: &Option<PublishProperties>| if kept { p.clone() } else { None };
        let without_ours = (added > 0 && self.acc.client_max_packet.is_some()).then(|| {
            props.clone().map(|mut p| {
                p.user_properties
                    .truncate(p.user_properties.len().saturating_sub(added));
                p
            })
        });
        let kept_props = keep(&props);
        match without_ours {
            None => self.write_within_max(publish, props).then_some(kept_props),
            Some(plain) => {
                if self.write_within_max(publish.clone(), props) {
                    Some(kept_props)
                } else {
                    let kept_plain = keep(&plain);
                    self.write_within_max(publish, plain).then_some(kept_plain)
                }
            }
        }
    }

    /// Writes a delivery unless it is larger than the client accepts (v5 maximum packet size):
    /// then it is taken back, and so is an alias it would have introduced.
    fn write_within_max(&mut self, publish: Publish, props: Option<PublishProperties>) -> bool {
        let (publish, props, new_alias) = self.alias_outbound(publish, props);
        let before = self.wbuf.len();
        self.write(Packet::Publish(publish, props));
        if let Some(max) = self.acc.client_max_packet
            && self.wbuf.len() - before > max
        {
            self.wbuf.truncate(before);
            if let Some(topic) = new_alias {
                self.out_aliases.remove(&topic);
            }
            return false;
        }
        true
    }

    /// Whether the channel of `topic` (a full topic) carries delivery metadata, remembered for
    /// the last channel under the policy version it was read from.
    fn channel_metadata(&mut self, topic: &str) -> bool {
        let snapshot = self.policy.borrow();
        let key = channel_key(topic);
        if let Some(m) = &self.metadata_memo
            && m.version == snapshot.version()
            && *m.channel == *key
        {
            return m.on;
        }
        let mut levels = key.split('/').skip(1).step_by(2);
        let on = match (levels.next(), levels.next()) {
            (Some(tenant), Some(channel)) => snapshot
                .channel(tenant, channel)
                .is_some_and(|c| c.delivery_metadata),
            _ => false,
        };
        let memo = MetadataMemo {
            version: snapshot.version(),
            channel: key.into(),
            on,
        };
        match &mut self.metadata_memo {
            Some(m) => **m = memo,
            None => self.metadata_memo = Some(Box::new(memo)),
        }
        on
    }

    /// Whether the subject may receive a message on the full `topic`: a subtopic deny of its
    /// grants withholds it (DESIGN §4). Asked only while a deny overlaps one of the session's
    /// subscriptions; then a repeated topic is answered by the session's memo, another by the
    /// decision cache.
    fn may_receive(&mut self, topic: &str) -> bool {
        let Some(gate) = self.subs.withholding() else {
            return true;
        };
        self.shared.may_deliver(gate, &self.acc.subject, topic)
    }

    /// Whether a message may go out under a resumed session's offline bound: what was queued
    /// while the client was away is sent up to `max_offline_messages`; the rest are dropped
    /// (which MQTT allows of a server) and counted.
    fn within_offline_bound(&mut self, created_ns: u64) -> bool {
        let Some(bound) = self.offline.as_deref_mut() else {
            return true;
        };
        if created_ns >= bound.since_ns {
            return true;
        }
        if bound.left > 0 {
            bound.left -= 1;
            return true;
        }
        self.shared.metrics.refused("offline", "queue_full");
        false
    }

    /// v5 outbound topic aliases: the first delivery on a topic names it and gives it an
    /// alias; later ones send the alias with an empty topic. Aliases are never reassigned.
    fn alias_outbound(
        &mut self,
        mut publish: Publish,
        props: Option<PublishProperties>,
    ) -> (Publish, Option<PublishProperties>, Option<Bytes>) {
        if self.acc.client_topic_alias_max == 0 {
            return (publish, props, None);
        }
        let mut new = None;
        let alias = match self.out_aliases.get(&publish.topic) {
            Some(&a) => {
                publish.topic = Bytes::new();
                a
            }
            None if self.out_aliases.len() < usize::from(self.acc.client_topic_alias_max) => {
                let a = self.out_aliases.len() as u16 + 1;
                self.out_aliases.insert(publish.topic.clone(), a);
                new = Some(publish.topic.clone());
                a
            }
            None => return (publish, props, None),
        };
        let mut p = props.unwrap_or_default();
        p.topic_alias = Some(alias);
        (publish, Some(p), new)
    }

    /// After a persistent session resumes: resends what the client had not acknowledged, in
    /// packet-id order, with DUP set (PUBREL for what it had received). Each message is
    /// authorized again as a new delivery would be; refused ones are dropped and counted.
    pub(super) fn resend_inflight(&mut self) {
        let snapshot = self.policy_now();
        let mut ids: Vec<u16> = self.inflight.keys().copied().collect();
        ids.sort_unstable();
        for pkid in ids {
            let Some((state, out)) = self.inflight.get(&pkid) else {
                continue;
            };
            let packet = match state {
                Outbound::Qos1Sent | Outbound::Qos2Sent => {
                    if let Err(why) = self.may_redeliver(&snapshot, &out.topic) {
                        // Nothing upstream waits for it: the router only ever sees QoS 0.
                        self.inflight.remove(&pkid);
                        self.shared.metrics.refused("resend", why);
                        continue;
                    }
                    Packet::Publish(
                        publish_with_id(&out.topic, &out.payload, out.qos, pkid, out.retain, true),
                        out.props.clone(),
                    )
                }
                Outbound::Released => Packet::PubRel(
                    PubRel {
                        pkid,
                        reason: PubRelReason::Success,
                    },
                    None,
                ),
            };
            self.write(packet);
        }
    }

    /// Whether a message this session delivered before (on its client-side `topic`) may be
    /// delivered again now: a live subscription still matches it, and the subject may still
    /// subscribe to that very topic (grants, subtopic denies, subject and tenant state).
    fn may_redeliver(&self, snapshot: &Snapshot, topic: &[u8]) -> Result<(), &'static str> {
        let full = match &self.acc.mount {
            Some(m) => m
                .mount_topic_name(topic, &limits())
                .map_err(|e| e.as_str())?,
            None => std::str::from_utf8(topic)
                .map_err(|_| "invalid_utf8")?
                .to_owned(),
        };
        let parsed = parse_topic_name(&full, &limits()).map_err(|e| e.as_str())?;
        let decision =
            self.shared
                .cache
                .authorize(snapshot, &self.acc.subject, Action::Subscribe, &parsed);
        if let Decision::Deny(why) = decision {
            return Err(why.as_str());
        }
        let subscribed = self.subs.matching(&full).any(|sub| {
            std::str::from_utf8(topic)
                .is_ok_and(|t| self.acc.mount.is_none() || filter_matches(&sub.client, t))
        });
        if subscribed {
            Ok(())
        } else {
            Err("no_subscription")
        }
    }
}
