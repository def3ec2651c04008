//! The one publish path of every adapter (MQTT, HTTP, WebSocket): authorization, the channel's
//! QoS cap, size and rate limits, the retained store, and the hand-over to the router.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetward_policy::{Action, Decision, DenyReason, Snapshot, Subject, TopicError, TopicLimits};

use super::retained::{QuotaExceeded, RetainedQuota, Uids};
use super::state::Ingress;
use crate::limits::TenantRate;
use crate::router::message_len;
use crate::router::{Message, MessageProps, Protocol, Publisher, Router, RouterError, RouterLink};

/// User properties with this prefix are the dataplane's own (publisher, protocol, created):
/// a client's copies are dropped so a subscriber can trust them.
pub(crate) const METADATA_PREFIX: &str = "fleetward-";

/// One publish as an adapter received it.
#[derive(Debug)]
pub(crate) struct PublishRequest {
    /// The full topic name, `m/<tenant>/c/<channel>[/…]` (any mountpoint already applied); a
    /// topic that is not UTF-8 is refused.
    pub topic: Bytes,
    /// The payload.
    pub payload: Bytes,
    /// The requested QoS (0–2); the channel's `maxQos` caps it.
    pub qos: u8,
    /// Whether to retain it (ignored where the channel takes no retained messages).
    pub retain: bool,
    /// v5 properties, content type included.
    pub props: Option<Box<MessageProps>>,
    /// The publishing MQTT session, for v5 no-local.
    pub origin: Option<u64>,
    /// The adapter it came in through.
    pub protocol: Protocol,
    /// When the adapter received it, ns since the Unix epoch ([`crate::router::now_ns`]): the
    /// message's created time. The MQTT front-end reads the clock once per socket read.
    pub created_ns: u64,
}

/// What the policy said of the last topic a session published on, under one snapshot version:
/// the decision, and the channel's and the tenant's terms for it. A device mostly publishes on
/// one topic, and each publish there after the first then costs a comparison instead of the
/// topic's parsing, the decision cache and the channel and tenant lookups (a tenant's publish
/// rate is still taken per publish, from the tenant's own limiter the memo holds). The memo
/// holds under the snapshot version it was made at, and under any later one that leaves the
/// tenant's version as it was (a change to another tenant): snapshot versions only grow on a
/// dataplane, and a tenant's version names its records (the decision cache keys on it too), so
/// a memo of an older policy of the tenant is never taken for the current one.
///
/// It is a tier of the decision cache: kept only while the cache is on, and its answers count
/// as the cache's hits ([`PublishMemo::take_hits`]).
#[derive(Debug, Default)]
pub(crate) struct PublishMemo {
    version: u64,
    /// The version of the topic's tenant (the publisher's: only its own tenant's topics are
    /// allowed, and only allowed ones are kept).
    tenant_version: u64,
    topic: Bytes,
    terms: Option<Terms>,
    hits: u64,
    /// The topic of the last refused publish, for its audit event (copied only on refusal).
    refused: Option<Bytes>,
}

/// A channel's and its tenant's terms for an allowed publish, and where the tenant and channel
/// levels are in the topic they were decided for (a memo compares the whole topic, so the
/// same spans hold for every publish it answers).
#[derive(Debug)]
struct Terms {
    max_qos: u8,
    retained_allowed: bool,
    max_size: Option<u32>,
    /// The tenant's retained-message quota.
    retained_quota: RetainedQuota,
    /// The tenant's publish limiter, if it has a rate.
    rate: Option<Arc<TenantRate>>,
    /// The channel's uid when it keeps history.
    history: Option<Arc<str>>,
    tenant: Range<usize>,
    channel: Range<usize>,
}

impl Terms {
    /// The tenant level of `topic`, the topic these terms were decided for.
    fn tenant_of<'t>(&self, topic: &'t [u8]) -> Option<&'t str> {
        topic
            .get(self.tenant.clone())
            .and_then(|t| std::str::from_utf8(t).ok())
    }
}

impl PublishMemo {
    /// The terms of `topic` under `snapshot`: the memo's, or what `decide` says (then kept).
    /// Borrowed, not cloned: a hit touches nothing shared (the limiter's count included).
    fn terms(
        &mut self,
        snapshot: &Snapshot,
        topic: &Bytes,
        decide: impl FnOnce() -> Result<Terms, PublishRefusal>,
    ) -> Result<&Terms, PublishRefusal> {
        let same_tenant_policy = |terms: &Terms| {
            terms
                .tenant_of(topic)
                .is_some_and(|t| snapshot.tenant_version(t) == self.tenant_version)
        };
        let hit = self.terms.as_ref().is_some_and(|terms| {
            self.topic == *topic
                && (self.version == snapshot.version() || same_tenant_policy(terms))
        });
        if hit {
            self.hits += 1;
            self.version = snapshot.version();
        } else {
            let terms = decide()?;
            self.tenant_version = terms
                .tenant_of(topic)
                .map_or(0, |t| snapshot.tenant_version(t));
            self.version = snapshot.version();
            // A copy: the topic may be a slice of a whole socket read, not to be kept alive.
            self.topic = Bytes::copy_from_slice(topic);
            self.terms = Some(terms);
        }
        self.terms
            .as_ref()
            .ok_or(PublishRefusal::Denied(DenyReason::PolicyUnavailable))
    }

    /// The topic of the publish just refused, if it had one.
    pub(crate) fn take_refused(&mut self) -> Option<String> {
        self.refused
            .take()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
    }

    /// The answers given since the last call, for the decision cache's hit count.
    pub(crate) fn take_hits(&mut self) -> u64 {
        std::mem::take(&mut self.hits)
    }
}

/// What became of an accepted publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Published {
    /// The QoS it travels with after the channel's cap.
    pub qos: u8,
    /// Whether it was stored as the topic's retained message (or cleared it).
    pub retained: bool,
    /// Its id.
    pub id: crate::router::MessageId,
    /// Stored for persistent sessions (BUS.md): an acknowledgement waits for the store.
    pub stored: bool,
}

/// Why a publish was refused. Nothing reached the router.
#[derive(Debug)]
pub(crate) enum PublishRefusal {
    /// Not a valid topic name.
    Topic(TopicError),
    /// Not allowed (no grant, another tenant, a channel that does not exist, …).
    Denied(DenyReason),
    /// The message (payload and properties, [`message_len`]) is over the tenant's or the
    /// channel's size limit.
    TooLarge {
        /// The limit, bytes.
        max: u32,
    },
    /// A retained publish over its tenant's retained-message quota.
    Quota(QuotaExceeded),
    /// More user properties than the pod's `--max-user-properties`.
    TooManyUserProperties {
        /// The limit.
        max: usize,
    },
    /// The tenant is over its publish rate. The request is handed back so a caller that
    /// throttles instead of refusing can try again after the wait.
    Rate {
        /// How long until a token is available.
        retry_after: Duration,
        /// The request, unchanged.
        request: Box<PublishRequest>,
    },
    /// The channel keeps history and the history writer is behind (its queue is full).
    HistoryBehind,
    /// The router did not take it.
    Router(RouterError),
}

impl PublishRefusal {
    /// The metric labels (`what`, `reason`) of the refusal.
    pub(crate) fn labels(&self) -> (&'static str, &'static str) {
        match self {
            PublishRefusal::Topic(e) => ("publish", e.as_str()),
            PublishRefusal::Denied(r) => ("publish", r.as_str()),
            PublishRefusal::TooLarge { .. } => ("limit", "message_size"),
            PublishRefusal::TooManyUserProperties { .. } => ("limit", "user_properties"),
            PublishRefusal::Quota(q) => ("limit", q.as_str()),
            PublishRefusal::Rate { .. } => ("limit", "publish_rate"),
            PublishRefusal::HistoryBehind => ("limit", "history_behind"),
            PublishRefusal::Router(e) => ("publish", e.as_str()),
        }
    }
}

impl<R: Router> Ingress<R> {
    /// Publishes for `subject`: authorizes the topic, caps the QoS at the channel's, enforces
    /// the tenant's and the channel's size limit and the tenant's rate, stores or clears the
    /// retained message, stamps publisher, protocol and created time, and hands the message to
    /// the router (through `link` when the session has one). Every adapter publishes only here
    /// or through [`Shared::publish_to_outbox`].
    pub(crate) fn publish(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        publisher: &Publisher,
        request: PublishRequest,
        link: Option<&mut R::Link>,
    ) -> Result<Published, PublishRefusal> {
        let (mut message, mut published) =
            self.accept(snapshot, subject, publisher, request, None)?;
        published.stored = self
            .router
            .store_durably(std::slice::from_mut(&mut message))
            .map_err(PublishRefusal::Router)?;
        match link {
            Some(link) => link.publish(message),
            None => self.router.publish(message),
        }
        .map_err(PublishRefusal::Router)?;
        self.metrics.messages_in(&subject.tenant, 1);
        Ok(published)
    }

    /// [`Shared::publish`] that leaves the accepted message in `outbox`, for the MQTT front-end
    /// to hand everything one socket read brought in to the router at once
    /// ([`crate::router::RouterLink::publish_batch`]) and count it then.
    pub(crate) fn publish_to_outbox(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        publisher: &Publisher,
        request: PublishRequest,
        outbox: &mut Vec<Message>,
        memo: &mut PublishMemo,
    ) -> Result<Published, PublishRefusal> {
        let (message, published) =
            self.accept(snapshot, subject, publisher, request, Some(memo))?;
        outbox.push(message);
        Ok(published)
    }

    /// Everything of a publish but the hand-over to the router. A refused publish's topic is
    /// left in `memo` for the audit trail.
    fn accept(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        publisher: &Publisher,
        request: PublishRequest,
        mut memo: Option<&mut PublishMemo>,
    ) -> Result<(Message, Published), PublishRefusal> {
        let mut decided = None;
        let terms = match self.terms_of(
            snapshot,
            subject,
            &request,
            memo.as_deref_mut(),
            &mut decided,
        ) {
            Ok(terms) => terms,
            Err(e) => {
                if let Some(memo) = memo {
                    memo.refused = Some(Bytes::copy_from_slice(&request.topic));
                }
                return Err(e);
            }
        };
        let retain = request.retain && terms.retained_allowed;
        // The tenant and channel levels, for the rate and the retained store.
        let text = || {
            std::str::from_utf8(&request.topic)
                .map_err(|_| PublishRefusal::Topic(TopicError::InvalidUtf8))
        };
        if let Some(rate) = &terms.rate
            && let Err(retry_after) = rate.take()
        {
            return Err(PublishRefusal::Rate {
                retry_after,
                request: Box::new(request),
            });
        }
        // The topic is moved into the message below; the retained store needs its parts.
        let retain_key = if retain {
            let text = text()?;
            Some((
                text[terms.tenant.clone()].to_owned(),
                text[terms.channel.clone()].to_owned(),
            ))
        } else {
            None
        };
        // Copied out of the terms, which borrow the memo the refusals below write to.
        let history = terms
            .history
            .clone()
            .map(|uid| (uid, terms.tenant.clone(), terms.channel.clone()));
        let message = message_of(request, publisher, terms.max_qos, retain);
        let qos = message.qos;
        if let Some((tenant, channel)) = retain_key {
            self.store_retained(snapshot, &tenant, &channel, &message, terms.retained_quota)
                .map_err(|q| {
                    if let Some(memo) = memo {
                        memo.refused = Some(Bytes::copy_from_slice(&message.topic));
                    }
                    PublishRefusal::Quota(q)
                })?;
        }
        if let Some((uid, tenant, channel)) = history {
            let text = std::str::from_utf8(&message.topic)
                .map_err(|_| PublishRefusal::Topic(TopicError::InvalidUtf8))?;
            let spans = super::history::Spans {
                tenant: &text[tenant],
                channel: &text[channel.clone()],
                channel_uid: &uid,
                rest: channel.end,
            };
            self.history
                .offer(&message, spans)
                .map_err(|_| PublishRefusal::HistoryBehind)?;
        }
        let published = Published {
            qos,
            retained: retain,
            id: message.id,
            stored: false,
        };
        Ok((message, published))
    }

    /// Keeps a retained message of `tenant`'s `channel` within the tenant's quota.
    fn store_retained(
        &self,
        snapshot: &Snapshot,
        tenant: &str,
        channel: &str,
        message: &Message,
        quota: RetainedQuota,
    ) -> Result<(), QuotaExceeded> {
        let topic = std::str::from_utf8(&message.topic).unwrap_or_default();
        // Looked up here rather than kept in the terms: only retained publishes need them, and
        // `snapshot` is the one the terms were decided under.
        let uids = Uids::of(snapshot, tenant, channel);
        self.retained
            .store(tenant, channel, topic, message.clone(), quota, uids)
    }

    /// The checks of a publish that need only a look at it: its user properties, its topic's
    /// decision and terms (from the session's memo when the cache is on), its size.
    fn terms_of<'m>(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        request: &PublishRequest,
        memo: Option<&'m mut PublishMemo>,
        decided: &'m mut Option<Terms>,
    ) -> Result<&'m Terms, PublishRefusal> {
        let max_user = self.config.max_user_properties;
        if request
            .props
            .as_ref()
            .is_some_and(|p| p.user_properties.len() > max_user)
        {
            return Err(PublishRefusal::TooManyUserProperties { max: max_user });
        }
        let terms = match memo.filter(|_| self.cache.is_enabled()) {
            Some(memo) => memo.terms(snapshot, &request.topic, || {
                self.decide(snapshot, subject, &request.topic)
            })?,
            None => decided.insert(self.decide(snapshot, subject, &request.topic)?),
        };
        if let Some(max) = terms.max_size
            && message_len(&request.payload, request.props.as_deref()) > max as usize
        {
            return Err(PublishRefusal::TooLarge { max });
        }
        Ok(terms)
    }

    /// Parses and authorizes a topic, and finds its channel's and its tenant's terms.
    fn decide(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        topic: &Bytes,
    ) -> Result<Terms, PublishRefusal> {
        let text = std::str::from_utf8(topic)
            .map_err(|_| PublishRefusal::Topic(TopicError::InvalidUtf8))?;
        let topic = fleetward_policy::parse_topic_name(text, &TopicLimits::default())
            .map_err(PublishRefusal::Topic)?;
        if let Decision::Deny(why) =
            self.cache
                .authorize(snapshot, subject, Action::Publish, &topic)
        {
            return Err(PublishRefusal::Denied(why));
        }
        let (tenant, channel_name) = (topic.tenant(), topic.channel());
        let Some(channel) = snapshot.channel(tenant, channel_name) else {
            return Err(PublishRefusal::Denied(DenyReason::UnknownChannel));
        };
        let tenant_limits = snapshot.tenant(tenant).map(|t| &t.limits);
        let max_size = [
            tenant_limits.and_then(|l| l.max_message_size),
            channel.max_message_size,
        ]
        .into_iter()
        .flatten()
        .min();
        // The levels are slices of `text`.
        let span = |level: &str| {
            let at = level.as_ptr() as usize - text.as_ptr() as usize;
            at..at + level.len()
        };
        Ok(Terms {
            max_qos: u8::from(channel.max_qos),
            retained_allowed: channel.retained_allowed,
            max_size,
            retained_quota: RetainedQuota::of(tenant_limits),
            rate: tenant_limits.and_then(|l| {
                l.publish_rate
                    .map(|rate| self.rates.of(tenant, rate, l.publish_burst))
            }),
            tenant: span(tenant),
            channel: span(channel_name),
            history: channel
                .history_retention_secs
                .map(|_| Arc::from(channel.uid.as_str())),
        })
    }
}

/// The message an accepted publish becomes: the channel's QoS cap applied, a client's copies
/// of the dataplane's own properties dropped, and the retain flag only where the channel takes
/// retained messages.
fn message_of(
    request: PublishRequest,
    publisher: &Publisher,
    max_qos: u8,
    retain: bool,
) -> Message {
    let mut props = request.props;
    if let Some(p) = &mut props {
        p.user_properties
            .retain(|(k, _)| !k.starts_with(METADATA_PREFIX));
    }
    Message {
        stored: false,
        topic: request.topic,
        payload: request.payload,
        qos: request.qos.min(max_qos),
        props,
        retain,
        origin: request.origin,
        publisher: Some(publisher.clone()),
        protocol: request.protocol,
        created_ns: request.created_ns,
        id: crate::router::MessageId::new(request.created_ns),
    }
}
