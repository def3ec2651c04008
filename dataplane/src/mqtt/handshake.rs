//! Answering a CONNECT: room on the pod, authentication, the client id, keep-alive, will,
//! takeover of a live session with the same id, connection limits, resuming a saved session,
//! and the CONNACK.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fleetward_policy::{
    Credential, DenyReason, KeyDigest, Mountpoint, PolicyEvaluator, Snapshot, Subject, SubjectKind,
};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, LastWill,
    LastWillProperties, Login, Packet,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::broker::Broker;
use super::codec::{Codec, Version};
use super::durable::{DurableLink, DurableSessions};
use super::pending_wills::Will;
use super::reason;
use super::registry::Registration;
use super::saved::SavedSession;
use super::session::{Accepted, Connected, clear_in_router};
use crate::audit;
use crate::ingress::{ConnectionSlots, random_client_id};
use crate::router::{Publisher, Router, SessionKey, SessionMode};
use crate::tls::PeerChain;
use tokio_rustls::rustls::pki_types::UnixTime;

/// Why a CONNECT is refused: the CONNACK code, and the label of the metrics and the audit trail.
type Refused = (ConnectReturnCode, &'static str);

/// Answers one CONNECT; remembers who it claimed to be, for the refusal's audit event.
pub(super) struct Handshake<'a, R: Router, S> {
    pub(super) shared: &'a Arc<Broker<R>>,
    pub(super) codec: &'a Codec,
    pub(super) stream: &'a mut S,
    /// `<tenant>/<name>` as the CONNECT gave it, once read: the subject of a refusal.
    pub(super) username: Option<String>,
    /// Thing or user, once told apart.
    pub(super) kind: Option<SubjectKind>,
    /// The client certificate chain of a TLS connection, if the client sent one.
    pub(super) chain: Option<PeerChain>,
}

/// Who the CONNECT proved to be, and under which policy.
struct Identified {
    snapshot: Arc<Snapshot>,
    subject: Subject,
    key_digest: Option<KeyDigest>,
    mount: Option<Mountpoint>,
    /// When the access token of a user expires.
    token_ends: Option<tokio::time::Instant>,
}

impl Identified {
    /// Who a CONNECT proved to be, with its thing's mountpoint.
    fn new(
        snapshot: Arc<Snapshot>,
        subject: Subject,
        key_digest: Option<KeyDigest>,
        token_ends: Option<tokio::time::Instant>,
    ) -> Self {
        let mount = snapshot
            .mountpoint_of(&subject.tenant, &subject.name)
            .map(|ch| Mountpoint::new(&subject.tenant, ch));
        Self {
            snapshot,
            subject,
            key_digest,
            mount,
            token_ends,
        }
    }
}

/// What a resumed or persistent session starts with.
struct Resumed<L> {
    saved: Option<SavedSession>,
    link: Option<L>,
    persistent_link: bool,
    durable: Option<Box<DurableLink>>,
}

impl<L> Resumed<L> {
    /// Whether the CONNACK says session present.
    fn present(&self) -> bool {
        self.saved.is_some() || self.durable.as_ref().is_some_and(|d| d.resumed)
    }
}

impl<R: Router, S: AsyncWrite + Unpin> Handshake<'_, R, S> {
    async fn refuse(
        &mut self,
        code: ConnectReturnCode,
        label: &'static str,
    ) -> Option<Connected<R::Link>> {
        self.shared.metrics.refused("connect", label);
        let (tenant, name) = self
            .username
            .as_deref()
            .map(|u| u.split_once('/').unwrap_or(("", u)))
            .unwrap_or_default();
        self.shared.audit.refused(audit::Refusal::mqtt(
            tenant,
            self.kind,
            name,
            audit::Action::Connect,
            None,
            label,
        ));
        let mut out = BytesMut::new();
        let ack = Packet::ConnAck(
            ConnAck {
                session_present: false,
                code,
            },
            None,
        );
        if self.codec.write(ack, &mut out).is_ok() {
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.flush().await;
        }
        None
    }

    /// Checks the CONNECT step by step, answers it, and hands back what the session needs;
    /// `None` when it was refused (CONNACK sent) or the CONNACK could not be written.
    pub(super) async fn accept(
        &mut self,
        connect: Connect,
        props: Option<ConnectProperties>,
        will: Option<LastWill>,
        will_props: Option<LastWillProperties>,
        login: Option<Login>,
    ) -> Option<Connected<R::Link>> {
        match self
            .establish(connect, props, will, will_props, login)
            .await
        {
            Ok(connected) => connected,
            Err((code, label)) => self.refuse(code, label).await,
        }
    }

    async fn establish(
        &mut self,
        connect: Connect,
        props: Option<ConnectProperties>,
        will: Option<LastWill>,
        will_props: Option<LastWillProperties>,
        login: Option<Login>,
    ) -> Result<Option<Connected<R::Link>>, Refused> {
        let version = self.codec.version();
        let shared = self.shared.clone();
        self.admit(props.as_ref())?;
        let who = self.identify(login)?;
        let (client_id, assigned) = client_id(version, &connect)?;
        let (keep_alive, server_keep_alive) = self.keep_alive(connect.keep_alive)?;
        let will = self.will(&who, will, will_props)?;
        let key = SessionKey::of(&who.subject, client_id);
        let (registration, abandoned) = self.register(&key).await;
        // The tenant's and the thing's maxConnections: v3 0x03, v5 0x97. Counted once the
        // session this one takes over is gone, so a client back after a half-open drop takes
        // its own place over instead of being refused until its old socket times out.
        let tenant_slot = self.slots(&who)?;
        let props = props.unwrap_or_else(no_properties);
        let requested = props.session_expiry_interval.unwrap_or(0);
        let (expiry, expiry_told) = expiry(
            version,
            connect.clean_session,
            requested,
            shared.config.max_session_expiry,
        );
        let resumed = self
            .resume(&key, connect.clean_session, abandoned, expiry)
            .await?;
        let ack_props = self.ack_properties(assigned, server_keep_alive, expiry_told);
        if !self.ack(resumed.present(), ack_props).await {
            return Ok(None);
        }
        // Off the pending budget: the oldest-first eviction spares authenticated sockets.
        crate::listener::authenticated();
        let Identified {
            subject,
            key_digest,
            mount,
            token_ends,
            ..
        } = who;
        Ok(Some(Connected {
            acc: Accepted {
                publisher: Publisher::of(&subject),
                subject,
                key_digest,
                key,
                mount,
                keep_alive: Duration::from_secs(u64::from(keep_alive)),
                will,
                receive_maximum: receive_maximum(&props, shared.config.max_inflight),
                client_max_packet: props.max_packet_size.map(|m| m as usize),
                client_topic_alias_max: props
                    .topic_alias_max
                    .unwrap_or(0)
                    .min(shared.config.topic_alias_max),
                registration,
                _tenant_slot: tenant_slot,
                persistent_link: resumed.persistent_link,
                expiry,
                expiry_was_zero: requested == 0,
                token_ends,
            },
            link: resumed.link,
            saved: resumed.saved,
            durable: resumed.durable,
        }))
    }

    /// The keep-alive used, and the Server Keep Alive to tell: the client's, unless over
    /// `--max-keep-alive-secs`.
    fn keep_alive(&self, asked: u16) -> Result<(u16, Option<u16>), Refused> {
        let version = self.codec.version();
        keep_alive_used(version, asked, self.shared.config.max_keep_alive).map_err(|()| {
            (
                reason::connack_bad_client_id(version),
                "keep_alive_over_max",
            )
        })
    }

    /// The will of the CONNECT, if any, checked as a publish of the subject would be.
    fn will(
        &self,
        who: &Identified,
        will: Option<LastWill>,
        props: Option<LastWillProperties>,
    ) -> Result<Option<Box<Will>>, Refused> {
        let Some(will) = will else {
            return Ok(None);
        };
        super::will::accept(
            self.shared,
            &who.snapshot,
            &who.subject,
            who.mount.as_ref(),
            self.codec.version(),
            will,
            props,
        )
        .map(Some)
    }

    /// The connection counted against its tenant's and thing's `maxConnections`: v3 0x03,
    /// v5 0x97 when over.
    fn slots(&self, who: &Identified) -> Result<ConnectionSlots, Refused> {
        ConnectionSlots::acquire(self.shared, &who.snapshot, &who.subject).map_err(|over| {
            let code = match self.codec.version() {
                Version::V4 => ConnectReturnCode::ServiceUnavailable,
                Version::V5 => ConnectReturnCode::QuotaExceeded,
            };
            (code, over.label())
        })
    }

    /// A v5 CONNACK's properties: the server's limits, and what it chose for the client.
    fn ack_properties(
        &self,
        assigned: Option<String>,
        server_keep_alive: Option<u16>,
        expiry_told: Option<u32>,
    ) -> Option<ConnAckProperties> {
        let config = &self.shared.config;
        (self.codec.version() == Version::V5).then(|| ConnAckProperties {
            assigned_client_identifier: assigned,
            max_packet_size: u32::try_from(config.max_packet_size).ok(),
            topic_alias_max: Some(config.topic_alias_max),
            receive_max: Some(config.max_inflight),
            retain_available: Some(1),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(1),
            server_keep_alive,
            session_expiry_interval: expiry_told,
            ..ConnAckProperties::default()
        })
    }

    /// Room on the pod, and no enhanced authentication (MQTT 5, 4.12: none is supported).
    fn admit(&self, props: Option<&ConnectProperties>) -> Result<(), Refused> {
        let version = self.codec.version();
        let shared = self.shared;
        if shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            > shared.config.max_connections
        {
            return Err((reason::connack_busy(version), "max_connections"));
        }
        if props.is_some_and(|p| p.authentication_method.is_some()) {
            return Err((
                ConnectReturnCode::BadAuthenticationMethod,
                "authentication_method",
            ));
        }
        Ok(())
    }

    /// Authenticates the username `<tenant>/<name>` and the password: a thing's key, or a
    /// user's access token.
    fn identify(&mut self, login: Option<Login>) -> Result<Identified, Refused> {
        let version = self.codec.version();
        // A client certificate and no password: the certificate is the credential.
        if let Some(chain) = self.chain.take()
            && login.as_ref().is_none_or(|l| l.password.is_empty())
        {
            return self.identify_by_certificate(login, &chain);
        }
        let Some(login) = login else {
            return Err((reason::connack_bad_username(version), "no_username"));
        };
        self.username = Some(login.username.clone());
        let Some((tenant, thing)) = login.username.split_once('/') else {
            return Err((reason::connack_bad_username(version), "bad_username"));
        };
        let snapshot = self.policy()?;
        // A user sends an access token as the password; a thing its key.
        let password = login.password.as_bytes();
        let by_token =
            crate::ingress::looks_like_jwt(password) && snapshot.user(tenant, thing).is_some();
        self.kind = Some(if by_token {
            SubjectKind::User
        } else {
            SubjectKind::Thing
        });
        let (subject, token_ends) = if by_token {
            let (s, claims) = self
                .shared
                .users
                .check(&snapshot, &login.password, Some((tenant, thing)))
                .map_err(|refusal| (reason::connack_for(version, refusal.reason), refusal.label))?;
            let ends = tokio::time::Instant::now() + crate::ingress::remaining(&claims);
            (s, Some(ends))
        } else {
            let credential = Credential::Thing {
                tenant,
                thing,
                key: password,
            };
            let s = snapshot.authenticate(&credential).map_err(|refusal| {
                (
                    reason::connack_for(version, refusal.reason),
                    refusal.reason.as_str(),
                )
            })?;
            (s, None)
        };
        let key_digest = (!by_token).then(|| KeyDigest::of(password));
        Ok(Identified::new(snapshot, subject, key_digest, token_ends))
    }

    /// The policy to answer from; a pod that never had one refuses, saying it is the
    /// server's state.
    fn policy(&self) -> Result<Arc<Snapshot>, Refused> {
        let snapshot = self.shared.snapshot();
        if snapshot.version() == 0 {
            let version = self.codec.version();
            return Err((
                reason::connack_for(version, DenyReason::PolicyUnavailable),
                DenyReason::PolicyUnavailable.as_str(),
            ));
        }
        Ok(snapshot)
    }

    /// Authenticates a thing by its client certificate; a username, if sent, must be
    /// `<tenant>/<thing>` of the thing the certificate names.
    fn identify_by_certificate(
        &mut self,
        login: Option<Login>,
        chain: &PeerChain,
    ) -> Result<Identified, Refused> {
        let version = self.codec.version();
        self.kind = Some(SubjectKind::Thing);
        let username = login.map(|l| l.username).filter(|u| !u.is_empty());
        self.username.clone_from(&username);
        let claimed = match &username {
            None => None,
            Some(u) => Some(
                u.split_once('/')
                    .ok_or((reason::connack_bad_username(version), "bad_username"))?,
            ),
        };
        let snapshot = self.policy()?;
        let credential = Credential::Certificate {
            chain: &chain.0,
            claimed,
            now: UnixTime::now(),
        };
        let subject = snapshot.authenticate(&credential).map_err(|refusal| {
            (
                reason::connack_for(version, refusal.reason),
                refusal.reason.as_str(),
            )
        })?;
        self.username = Some(format!("{}/{}", subject.tenant, subject.name));
        // The session ends when the certificate does.
        let token_ends = subject
            .certificate
            .as_ref()
            .map(|c| tokio::time::Instant::now() + c.remaining(UnixTime::now()));
        Ok(Identified::new(snapshot, subject, None, token_ends))
    }

    /// Registers the session, ending any live one with its id (waiting a bounded time), and
    /// cancels a will the id left waiting. `true` when the old session was abandoned.
    async fn register(&mut self, key: &SessionKey) -> (Registration, bool) {
        let shared = self.shared;
        if let Some(store) = shared.durable() {
            // The pod holding a live session with this key ends it (v5 0x8E); a will the key
            // left waiting in JetStream is cancelled (MQTT 5, 3.1.3.2.2).
            Box::pin(store.announce_takeover(&key.router_id())).await;
            let (store, id) = (store.clone(), key.router_id());
            tokio::spawn(async move { store.cancel_will(&id).await });
        }
        let mut registration = shared.registry.register(key.router_id());
        let abandoned = !registration
            .predecessor_gone(shared.config.takeover_wait)
            .await;
        if abandoned {
            // The old session is stuck (a client that does not read, a throttled publish); it
            // leaves the router and its saved state alone from now on.
            tracing::warn!(client = %key.router_id(), "the session taken over did not end in time; abandoned it");
            shared.metrics.refused("takeover", "predecessor_abandoned");
        }
        // A reconnect within a will's delay cancels the will (MQTT 5, 3.1.3.2.2).
        if let Some(will) = shared.pending_wills.remove(&key.router_id()) {
            will.abort();
        }
        (registration, abandoned)
    }

    /// Takes the saved session up (unless the CONNECT asks for a clean one) and attaches the
    /// persistent router link.
    async fn resume(
        &mut self,
        key: &SessionKey,
        clean_session: bool,
        abandoned: bool,
        expiry: Duration,
    ) -> Result<Resumed<R::Link>, Refused> {
        let shared = self.shared;
        if let Some(store) = shared.durable() {
            if !expiry.is_zero() || !clean_session {
                let resumed = self.resume_durable(store, key, clean_session, abandoned, expiry);
                // Boxed: only persistent sessions on a pod with JetStream wait for it.
                return Ok(Box::pin(resumed).await);
            }
            // A clean session ends any session the key had, wherever it lived (MQTT 5,
            // 3.1.2.4); in the background, as most clean CONNECTs had none.
            let (store, id, tenant) = (store.clone(), key.router_id(), key.tenant.clone());
            tokio::spawn(async move { store.drop_session(&id, &tenant).await });
        }
        let saved = shared.sessions.take(&key.router_id());
        let had_saved = saved.is_some();
        let saved = if clean_session { None } else { saved };
        // An abandoned predecessor saved nothing: what the router still holds for it (its
        // subscriptions and queue) is dropped too, rather than resumed without the front-end's
        // half.
        if (had_saved && saved.is_none()) || abandoned {
            clear_in_router(&shared.router, key).await;
        }
        let mut link = None;
        let persistent_link = !expiry.is_zero() || saved.is_some();
        if persistent_link {
            match shared.router.attach(key, SessionMode::Persistent).await {
                Ok((l, _)) => link = Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "could not attach a persistent session");
                    let version = self.codec.version();
                    return Err((
                        reason::connack_for(version, DenyReason::PolicyUnavailable),
                        e.as_str(),
                    ));
                }
            }
        }
        Ok(Resumed {
            saved,
            link,
            persistent_link,
            durable: None,
        })
    }

    /// A persistent session where sessions live in JetStream: its record loaded (unless the
    /// CONNECT asks for a clean start, which drops it), and no state kept on this pod.
    async fn resume_durable(
        &mut self,
        store: &Arc<DurableSessions>,
        key: &SessionKey,
        clean_session: bool,
        abandoned: bool,
        expiry: Duration,
    ) -> Resumed<R::Link> {
        let shared = self.shared;
        let id = key.router_id();
        // A session kept on this pod before JetStream answered is left for the durable one.
        if shared.sessions.take(&id).is_some() || abandoned {
            clear_in_router(&shared.router, key).await;
        }
        let loaded = if clean_session {
            store.drop_session(&id, &key.tenant).await;
            None
        } else {
            store.load(&id, &key.tenant).await
        };
        if loaded.is_some() {
            shared.metrics.durable_resumed();
        }
        let durable = DurableLink::new(store.clone(), id, &key.tenant, loaded, expiry);
        Resumed {
            saved: None,
            link: None,
            persistent_link: false,
            durable: Some(Box::new(durable)),
        }
    }

    /// Writes the CONNACK of success; `false` when it could not be.
    async fn ack(&mut self, session_present: bool, props: Option<ConnAckProperties>) -> bool {
        let mut out = BytesMut::new();
        let ack = Packet::ConnAck(
            ConnAck {
                session_present,
                code: ConnectReturnCode::Success,
            },
            props,
        );
        self.codec.write(ack, &mut out).is_ok() && self.stream.write_all(&out).await.is_ok()
    }
}

/// The client id, and the one assigned to a v5 client that sent none (`None` otherwise).
/// Zero-length client ids: v3 only with a clean session; v5 gets one assigned.
fn client_id(version: Version, connect: &Connect) -> Result<(String, Option<String>), Refused> {
    if !connect.client_id.is_empty() {
        return Ok((connect.client_id.clone(), None));
    }
    if version == Version::V4 && !connect.clean_session {
        return Err((reason::connack_bad_client_id(version), "empty_client_id"));
    }
    let id = random_client_id();
    let assigned = (version == Version::V5).then(|| id.clone());
    Ok((id, assigned))
}

/// The session expiry used (persistent sessions: v3 clean session 0, v5 a session expiry
/// interval, capped by `max`), and the one a v5 CONNACK tells when it differs from the asked
/// one (MQTT 5, 3.2.2.3.2).
fn expiry(
    version: Version,
    clean_session: bool,
    requested: u32,
    max: Duration,
) -> (Duration, Option<u32>) {
    let expiry = match version {
        Version::V4 if clean_session => Duration::ZERO,
        Version::V4 => max,
        Version::V5 => Duration::from_secs(u64::from(requested)).min(max),
    };
    let told = (version == Version::V5 && u64::from(requested) != expiry.as_secs())
        .then(|| u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX));
    (expiry, told)
}

/// The most QoS 1/2 deliveries awaiting the client's ack: its receive maximum, within ours.
fn receive_maximum(props: &ConnectProperties, max_inflight: u16) -> u16 {
    props
        .receive_maximum
        .unwrap_or(u16::MAX)
        .min(max_inflight)
        .max(1)
}

/// The properties of a CONNECT that carries none (v3, or a v5 one without).
fn no_properties() -> ConnectProperties {
    ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    }
}

/// The keep-alive a session is held to and the Server Keep Alive its v5 CONNACK carries, from
/// the client's and `--max-keep-alive-secs`. Over the maximum, or 0 (none) where one is set: a
/// v5 client is given the maximum (MQTT 5, 3.2.2.3.14); a v3 client cannot be told, so it is
/// refused (`Err`) rather than dropped later at a time it did not agree to.
fn keep_alive_used(
    version: Version,
    asked: u16,
    max: Option<u16>,
) -> Result<(u16, Option<u16>), ()> {
    match max {
        Some(max) if asked == 0 || asked > max => match version {
            Version::V5 => Ok((max, Some(max))),
            Version::V4 => Err(()),
        },
        _ => Ok((asked, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keep_alive_over_the_maximum_is_capped_for_v5_and_refused_for_v3() {
        for version in [Version::V4, Version::V5] {
            assert_eq!(keep_alive_used(version, 0, None), Ok((0, None)));
            assert_eq!(keep_alive_used(version, 60, None), Ok((60, None)));
            assert_eq!(keep_alive_used(version, 30, Some(30)), Ok((30, None)));
            assert_eq!(keep_alive_used(version, 5, Some(30)), Ok((5, None)));
        }
        for asked in [0, 31, u16::MAX] {
            assert_eq!(
                keep_alive_used(Version::V5, asked, Some(30)),
                Ok((30, Some(30)))
            );
            assert_eq!(keep_alive_used(Version::V4, asked, Some(30)), Err(()));
        }
    }
}
