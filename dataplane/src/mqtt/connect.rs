//! The CONNECT handshake: version, authentication, client id rules, will, takeover, CONNACK.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fleetward_policy::{
    Credential, DenyReason, KeyDigest, Mountpoint, PolicyEvaluator, SubjectKind,
};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, LastWill,
    LastWillProperties, Login, Packet,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::broker::Broker;
use super::codec::{Codec, FrameError, Version, peek_version};
use super::reason;
use super::session::{Accepted, Connected, Session, clear_in_router};
use crate::audit;
use crate::ingress::{ConnectionSlots, random_client_id};
use crate::router::{Publisher, Router, SessionKey, SessionMode};

/// The largest CONNECT accepted (it carries the will).
pub(crate) const MAX_CONNECT: usize = 128 * 1024;

/// Serves one client connection from its first byte to its end.
///
/// Not an `async fn`: its arguments would stay in the future beside what they are moved into.
/// Each stage has a box of its own, so the task holds only the stage it is in: reading the
/// CONNECT (a few hundred bytes: what a socket that never authenticates costs), answering it
/// (the CONNECT, its timeout, the checks: large and short-lived), then the session.
pub(crate) fn serve<R, S>(shared: Arc<Broker<R>>, stream: S) -> impl Future<Output = ()> + Send
where
    R: Router,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Two boxes: a socket that has not sent its CONNECT yet (the one a flood holds open by the
    // thousand) holds only the small first one.
    let first = Box::pin(first_packet(shared, stream));
    async move {
        let Some(first) = first.await else {
            return;
        };
        let Some(session) = Box::pin(handshake(first)).await else {
            return;
        };
        Box::pin(run(session)).await;
    }
}

/// Runs an accepted session to its end, in a box of its own: the connection's task stays
/// small while the socket is only pending.
/// Not an `async fn`, for the same reason as [`serve`]: the session would be in the future
/// twice, 2,648 bytes instead of 1,816.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its argument beside the local it is moved into"
)]
pub(super) fn run<R, S>(mut session: Session<R, S>) -> impl Future<Output = ()> + Send
where
    R: Router,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move { session.run().await }
}

/// A connection whose CONNECT was read.
pub(super) struct FirstPacket<R: Router, S> {
    shared: Arc<Broker<R>>,
    stream: S,
    rbuf: BytesMut,
    codec: Codec,
    connect: Packet,
}

/// Reads the CONNECT within the connect timeout; refuses a connection that does not start
/// with one.
pub(super) async fn first_packet<R, S>(
    shared: Arc<Broker<R>>,
    mut stream: S,
) -> Option<FirstPacket<R, S>>
where
    R: Router,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Small until the client sends more: `read_connect` grows it to what the CONNECT needs.
    let mut rbuf = BytesMut::new();
    // In a block of its own, so that nothing it held (a whole packet) stays in this future
    // while the refusal below is written.
    'read: {
        let first = tokio::time::timeout(
            shared.config.connect_timeout,
            read_connect(&mut stream, &mut rbuf),
        )
        .await;
        let (codec, connect) = match first {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return None,
            Ok(Err(FrameError::UnsupportedVersion(level))) => {
                tracing::debug!(level, "CONNECT with an unsupported protocol level");
                shared.metrics.refused("connect", "unsupported_version");
                break 'read;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "closing a connection that did not start with a valid CONNECT");
                shared.metrics.refused("connect", e.as_str());
                return None;
            }
            Err(_) => {
                shared.metrics.refused("connect", "timeout");
                return None;
            }
        };
        return Some(FirstPacket {
            shared,
            stream,
            rbuf,
            codec,
            connect,
        });
    }
    // 0x01 unacceptable protocol version, in the only form every version can read.
    let _ = stream.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
    None
}

/// Answers the CONNECT; the session to run if it was accepted.
async fn handshake<R, S>(first: FirstPacket<R, S>) -> Option<Session<R, S>>
where
    R: Router,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let FirstPacket {
        shared,
        mut stream,
        rbuf,
        codec,
        connect,
    } = first;
    let Packet::Connect(connect, props, will, will_props, login) = connect else {
        return None;
    };
    let mut hs = Handshake {
        shared: &shared,
        codec: &codec,
        stream: &mut stream,
        username: None,
        kind: None,
    };
    let accepted = hs.accept(connect, props, will, will_props, login).await?;
    Some(Session::new(shared, stream, codec, rbuf, accepted))
}

/// Reads until the first packet is complete; `None` when the peer went away.
pub(crate) async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<Option<(Codec, Packet)>, FrameError> {
    loop {
        if let Some(version) = peek_version(rbuf, MAX_CONNECT)? {
            let codec = Codec::new(version);
            return match codec.read(rbuf, MAX_CONNECT)? {
                Some(frame) => Ok(Some((codec, frame.packet))),
                None => Ok(None),
            };
        }
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

struct Handshake<'a, R: Router, S> {
    shared: &'a Arc<Broker<R>>,
    codec: &'a Codec,
    stream: &'a mut S,
    /// `<tenant>/<name>` as the CONNECT gave it, once read: the subject of a refusal.
    username: Option<String>,
    /// Thing or user, once told apart.
    kind: Option<SubjectKind>,
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

    async fn accept(
        &mut self,
        connect: Connect,
        props: Option<ConnectProperties>,
        will: Option<LastWill>,
        will_props: Option<LastWillProperties>,
        login: Option<Login>,
    ) -> Option<Connected<R::Link>> {
        let version = self.codec.version();
        let shared = self.shared.clone();
        if shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            > shared.config.max_connections
        {
            return self
                .refuse(reason::connack_busy(version), "max_connections")
                .await;
        }
        // MQTT 5, 4.12: no enhanced authentication method is supported.
        if props
            .as_ref()
            .is_some_and(|p| p.authentication_method.is_some())
        {
            return self
                .refuse(
                    ConnectReturnCode::BadAuthenticationMethod,
                    "authentication_method",
                )
                .await;
        }
        // Username `<tenant>/<thing>`, password the thing's key.
        let Some(login) = login else {
            return self
                .refuse(reason::connack_bad_username(version), "no_username")
                .await;
        };
        self.username = Some(login.username.clone());
        let Some((tenant, thing)) = login.username.split_once('/') else {
            return self
                .refuse(reason::connack_bad_username(version), "bad_username")
                .await;
        };
        let snapshot = shared.snapshot();
        if snapshot.version() == 0 {
            // Never had a policy: fail closed, and say it is the server's state.
            return self
                .refuse(
                    reason::connack_for(version, DenyReason::PolicyUnavailable),
                    DenyReason::PolicyUnavailable.as_str(),
                )
                .await;
        }
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
            match shared
                .users
                .check(&snapshot, &login.password, Some((tenant, thing)))
            {
                Ok((s, claims)) => (
                    s,
                    Some(tokio::time::Instant::now() + crate::ingress::remaining(&claims)),
                ),
                Err(refusal) => {
                    return self
                        .refuse(reason::connack_for(version, refusal.reason), refusal.label)
                        .await;
                }
            }
        } else {
            let credential = Credential::Thing {
                tenant,
                thing,
                key: password,
            };
            match snapshot.authenticate(&credential) {
                Ok(s) => (s, None),
                Err(refusal) => {
                    return self
                        .refuse(
                            reason::connack_for(version, refusal.reason),
                            refusal.reason.as_str(),
                        )
                        .await;
                }
            }
        };
        let key_digest = (!by_token).then(|| KeyDigest::of(password));
        let mount = snapshot
            .mountpoint_of(&subject.tenant, &subject.name)
            .map(|ch| Mountpoint::new(&subject.tenant, ch));

        // Zero-length client ids: v3 only with a clean session; v5 gets one assigned.
        let mut assigned = None;
        let client_id = if connect.client_id.is_empty() {
            if version == Version::V4 && !connect.clean_session {
                return self
                    .refuse(reason::connack_bad_client_id(version), "empty_client_id")
                    .await;
            }
            let id = random_client_id();
            if version == Version::V5 {
                assigned = Some(id.clone());
            }
            id
        } else {
            connect.client_id.clone()
        };

        // The keep-alive used: the client's, unless over `--max-keep-alive-secs`.
        let (keep_alive, server_keep_alive) =
            match keep_alive_used(version, connect.keep_alive, shared.config.max_keep_alive) {
                Ok(used) => used,
                Err(()) => {
                    return self
                        .refuse(
                            reason::connack_bad_client_id(version),
                            "keep_alive_over_max",
                        )
                        .await;
                }
            };

        let will = match will {
            None => None,
            Some(w) => {
                match super::will::accept(
                    &shared,
                    &snapshot,
                    &subject,
                    mount.as_ref(),
                    version,
                    w,
                    will_props,
                ) {
                    Ok(w) => Some(w),
                    Err((code, label)) => return self.refuse(code, label).await,
                }
            }
        };

        let key = SessionKey::of(&subject, client_id);
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
        // The tenant's and the thing's maxConnections: v3 0x03, v5 0x97. Counted once the
        // session this one takes over is gone, so a client back after a half-open drop takes
        // its own place over instead of being refused until its old socket times out.
        let tenant_slot = match ConnectionSlots::acquire(&shared, &snapshot, &subject) {
            Ok(slots) => slots,
            Err(over) => {
                let code = match version {
                    Version::V4 => ConnectReturnCode::ServiceUnavailable,
                    Version::V5 => ConnectReturnCode::QuotaExceeded,
                };
                return self.refuse(code, over.label()).await;
            }
        };

        let props = props.unwrap_or(ConnectProperties {
            session_expiry_interval: None,
            receive_maximum: None,
            max_packet_size: None,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: Vec::new(),
            authentication_method: None,
            authentication_data: None,
        });
        // Persistent sessions: v3 clean session 0, v5 a session expiry interval.
        let max_expiry = shared.config.max_session_expiry;
        let requested = props.session_expiry_interval.unwrap_or(0);
        let expiry = match version {
            Version::V4 if connect.clean_session => Duration::ZERO,
            Version::V4 => max_expiry,
            Version::V5 => Duration::from_secs(u64::from(requested)).min(max_expiry),
        };
        // MQTT 5, 3.2.2.3.2: a server using another expiry than the client asked says which.
        let expiry_told = (version == Version::V5 && u64::from(requested) != expiry.as_secs())
            .then(|| u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX));
        let saved = shared.sessions.take(&key.router_id());
        let had_saved = saved.is_some();
        let saved = if connect.clean_session { None } else { saved };
        // An abandoned predecessor saved nothing: what the router still holds for it (its
        // subscriptions and queue) is dropped too, rather than resumed without the front-end's
        // half.
        if (had_saved && saved.is_none()) || abandoned {
            clear_in_router(&shared.router, &key).await;
        }
        let mut link = None;
        let persistent_link = !expiry.is_zero() || saved.is_some();
        if persistent_link {
            match shared.router.attach(&key, SessionMode::Persistent).await {
                Ok((l, _)) => link = Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "could not attach a persistent session");
                    return self
                        .refuse(
                            reason::connack_for(version, DenyReason::PolicyUnavailable),
                            e.as_str(),
                        )
                        .await;
                }
            }
        }
        let session_present = saved.is_some();
        let receive_maximum = props
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(shared.config.max_inflight)
            .max(1);
        let ack_props = (version == Version::V5).then(|| ConnAckProperties {
            assigned_client_identifier: assigned,
            max_packet_size: u32::try_from(shared.config.max_packet_size).ok(),
            topic_alias_max: Some(shared.config.topic_alias_max),
            receive_max: Some(shared.config.max_inflight),
            retain_available: Some(1),
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(1),
            server_keep_alive,
            session_expiry_interval: expiry_told,
            ..ConnAckProperties::default()
        });
        let mut out = BytesMut::new();
        let ack = Packet::ConnAck(
            ConnAck {
                session_present,
                code: ConnectReturnCode::Success,
            },
            ack_props,
        );
        if self.codec.write(ack, &mut out).is_err() || self.stream.write_all(&out).await.is_err() {
            return None;
        }
        // Off the pending budget: the oldest-first eviction spares authenticated sockets.
        crate::listener::authenticated();
        Some(Connected {
            acc: Accepted {
                publisher: Publisher::of(&subject),
                subject,
                key_digest,
                key,
                mount,
                keep_alive: Duration::from_secs(u64::from(keep_alive)),
                will,
                receive_maximum,
                client_max_packet: props.max_packet_size.map(|m| m as usize),
                client_topic_alias_max: props
                    .topic_alias_max
                    .unwrap_or(0)
                    .min(shared.config.topic_alias_max),
                registration,
                _tenant_slot: tenant_slot,
                persistent_link,
                expiry,
                expiry_was_zero: requested == 0,
                token_ends,
            },
            link,
            saved,
        })
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
