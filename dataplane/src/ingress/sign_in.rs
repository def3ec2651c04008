//! Users: sign-in with a password, access tokens (JWT) and rotating refresh tokens, and the
//! check of a token on every use (MQTT CONNECT, HTTP `Bearer`, WebSocket).
//!
//! Signing keys come with the policy snapshot (the operator keeps them in a Secret), so every
//! pod signs and verifies with the same keys, and a rotation reaches every pod in one push.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleetward_policy::tokens::{AccessClaims, Keyring, TokenError, TokenSettings};
use fleetward_policy::{Credential, DenyReason, PolicyEvaluator, SigningKey, Snapshot, Subject};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use super::refresh::{self, Family, RefreshStore, StoreError};

/// How users sign in and how long their tokens last.
#[derive(Clone, Debug)]
pub struct UsersConfig {
    /// Issuer, audience and lifetimes of tokens.
    pub tokens: TokenSettings,
    /// Sign-in attempts per user per minute (the burst is the same number).
    pub logins_per_user_per_minute: u32,
    /// Sign-in attempts per client address per minute.
    pub logins_per_address_per_minute: u32,
    /// The window the two sign-in rates are counted over: a minute, as their names say. A
    /// test that must see no attempt come back while it runs, however slowly, widens it.
    pub login_window: Duration,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            tokens: TokenSettings::default(),
            logins_per_user_per_minute: 10,
            logins_per_address_per_minute: 60,
            login_window: Duration::from_secs(60),
        }
    }
}

/// A pair handed out at sign-in and on refresh.
#[derive(Debug, serde::Serialize)]
pub struct TokenPair {
    /// The access token (JWT).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds the access token lasts.
    pub expires_in: u64,
    /// The refresh token; single use.
    pub refresh_token: String,
    /// Seconds the refresh token lasts.
    pub refresh_expires_in: u64,
}

/// Why a sign-in or refresh was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Unknown user, wrong password, disabled user or suspended tenant: one answer for all, so
    /// the answer does not tell which users exist.
    BadCredentials,
    /// Too many attempts; retry after this many seconds.
    RateLimited(u64),
    /// The refresh token is unknown, expired, or its user changed.
    BadRefreshToken,
    /// A refresh token was used twice: the whole sign-in is revoked.
    Replayed,
    /// No policy yet, no signing key, or the refresh store is unreachable.
    Unavailable(String),
}

impl LoginRefusal {
    /// A stable label, for the audit trail.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadCredentials => "bad_credential",
            Self::RateLimited(_) => "rate_limited",
            Self::BadRefreshToken => "bad_refresh_token",
            Self::Replayed => "refresh_token_replayed",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Why a presented access token was refused.
#[derive(Debug)]
pub struct TokenRefusal {
    /// The policy's view, for CONNACK codes and metrics.
    pub reason: DenyReason,
    /// A short label (`expired`, `bad_signature`, `revoked`, …).
    pub label: &'static str,
}

/// A keyring, the keys it was built from (compared by pointer), and its generation.
struct CachedKeyring {
    keys: Arc<Vec<SigningKey>>,
    ring: Arc<Keyring>,
    generation: u64,
}

/// The sign-in and token service of a dataplane.
pub struct Users {
    config: UsersConfig,
    /// The keyring of the last snapshot's keys, rebuilt when the keys change.
    keyring: Mutex<Option<CachedKeyring>>,
    refresh: RefreshStore,
    /// Tokens whose signature was checked, by keyring generation and SHA-256 of the token: a
    /// reconnecting client (or a reconnect storm after a restart) pays for the signature once
    /// per token. An entry counts only under the keyring it was checked with, so once the
    /// keys change a removed key's tokens are checked (and refused) again, even if a check
    /// under the old keys finishes after the change.
    verified: moka::sync::Cache<(u64, [u8; 32]), Arc<AccessClaims>>,
    per_user: DefaultKeyedRateLimiter<(String, String)>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
}

/// Checked tokens remembered per pod.
const VERIFIED_TOKENS: u64 = 100_000;

/// `n` attempts at once, and `n` more over each `window` after.
fn per_window(n: u32, window: Duration) -> Quota {
    let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(window / n.get())
        .unwrap_or_else(|| Quota::per_minute(n))
        .allow_burst(n)
}

impl Users {
    /// The service, with refresh families kept in `refresh`.
    pub fn new(config: UsersConfig, refresh: RefreshStore) -> Self {
        Self {
            per_user: RateLimiter::keyed(per_window(
                config.logins_per_user_per_minute,
                config.login_window,
            )),
            per_address: RateLimiter::keyed(per_window(
                config.logins_per_address_per_minute,
                config.login_window,
            )),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(config.tokens.access_ttl)
                .build(),
            config,
            keyring: Mutex::new(None),
            refresh,
        }
    }

    /// The keyring of the snapshot's signing keys. Keys that do not parse are left out (and
    /// logged), so one bad entry does not stop the others from working.
    pub fn keyring(&self, snapshot: &Snapshot) -> Arc<Keyring> {
        self.current(snapshot).0
    }

    /// The keyring of the snapshot's keys and its generation, rebuilt when the keys change.
    fn current(&self, snapshot: &Snapshot) -> (Arc<Keyring>, u64) {
        let keys = snapshot.signing_keys();
        let mut cached = self.keyring.lock();
        if let Some(c) = &*cached
            && Arc::ptr_eq(&c.keys, keys)
        {
            return (c.ring.clone(), c.generation);
        }
        let ring = Arc::new(match Keyring::new(keys) {
            Ok(ring) => ring,
            Err(e) => {
                tracing::error!(error = %e, "a token signing key is unusable; the others are used");
                let usable: Vec<SigningKey> = keys
                    .iter()
                    .filter(|k| Keyring::new(std::slice::from_ref(*k)).is_ok())
                    .cloned()
                    .collect();
                Keyring::new(&usable).unwrap_or_else(|_| Keyring::new(&[]).expect("empty"))
            }
        });
        let generation = cached.as_ref().map_or(0, |c| c.generation + 1);
        *cached = Some(CachedKeyring {
            keys: keys.clone(),
            ring: ring.clone(),
            generation,
        });
        // Entries of older generations are never read again: free their room now.
        self.verified.invalidate_all();
        (ring, generation)
    }

    /// The claims of a token with a good signature, issuer and audience that has not expired.
    fn verify(&self, snapshot: &Snapshot, token: &str) -> Result<Arc<AccessClaims>, TokenError> {
        use sha2::Digest as _;
        let now = SystemTime::now();
        let (ring, generation) = self.current(snapshot);
        let id = (generation, sha2::Sha256::digest(token.as_bytes()).into());
        if let Some(claims) = self.verified.get(&id) {
            if claims.exp <= refresh::unix(now) {
                self.verified.invalidate(&id);
                return Err(TokenError::Expired);
            }
            return Ok(claims);
        }
        let claims = Arc::new(ring.verify(&self.config.tokens, token, now)?);
        self.verified.insert(id, claims.clone());
        Ok(claims)
    }

    /// Checks an access token on use: signature, issuer, audience, expiry, then that its user
    /// exists in its tenant, is enabled and still has the token's epoch. `expected` is the
    /// `<tenant>/<user>` the client named (MQTT username), which must be the token's.
    pub fn check(
        &self,
        snapshot: &Snapshot,
        token: &str,
        expected: Option<(&str, &str)>,
    ) -> Result<(Subject, Arc<AccessClaims>), TokenRefusal> {
        let claims = self.verify(snapshot, token).map_err(|e| TokenRefusal {
            reason: DenyReason::BadCredential,
            label: e.as_str(),
        })?;
        if let Some((tenant, user)) = expected
            && (tenant != claims.tenant || user != claims.sub)
        {
            return Err(TokenRefusal {
                reason: DenyReason::BadCredential,
                label: "token_of_another_user",
            });
        }
        let subject = snapshot
            .authenticate(&Credential::Token {
                tenant: &claims.tenant,
                user: &claims.sub,
                token_epoch: claims.epoch,
            })
            .map_err(|r| TokenRefusal {
                reason: r.reason,
                label: match r.reason {
                    DenyReason::TokenRevoked => "revoked",
                    other => other.as_str(),
                },
            })?;
        Ok((subject, claims))
    }

    fn rate_limit(&self, tenant: &str, user: &str, address: Option<IpAddr>) -> Result<(), u64> {
        let wait = |n: governor::NotUntil<_>| {
            n.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
            .as_secs()
            .max(1)
        };
        if let Some(ip) = address {
            self.per_address.check_key(&ip).map_err(wait)?;
        }
        self.per_user
            .check_key(&(tenant.to_owned(), user.to_owned()))
            .map_err(wait)?;
        // Forget quiet keys now and then, so the limiters do not grow without bound.
        if self.per_user.len() > 100_000 || self.per_address.len() > 100_000 {
            self.per_user.retain_recent();
            self.per_address.retain_recent();
        }
        Ok(())
    }

    /// Signs a user in with a password and starts a refresh family.
    pub async fn login(
        &self,
        snapshot: Arc<Snapshot>,
        tenant: String,
        user: String,
        password: Vec<u8>,
        address: Option<IpAddr>,
    ) -> Result<TokenPair, LoginRefusal> {
        if snapshot.version() == 0 {
            return Err(LoginRefusal::Unavailable(
                "no policy snapshot yet; retry shortly".into(),
            ));
        }
        self.rate_limit(&tenant, &user, address)
            .map_err(LoginRefusal::RateLimited)?;
        // argon2 takes tens of milliseconds: off the I/O threads.
        let checked = {
            let snapshot = snapshot.clone();
            let (tenant, user) = (tenant.clone(), user.clone());
            tokio::task::spawn_blocking(move || {
                snapshot.authenticate(&Credential::Password {
                    tenant: &tenant,
                    user: &user,
                    password: &password,
                })
            })
            .await
            .map_err(|e| LoginRefusal::Unavailable(format!("the password check failed: {e}")))?
        };
        let subject = checked.map_err(|_| LoginRefusal::BadCredentials)?;
        let epoch = snapshot
            .user(&subject.tenant, &subject.name)
            .map_or(0, |u| u.token_epoch);
        let family = refresh::new_family_id();
        let refresh_token = refresh::new_token(&family);
        let now = SystemTime::now();
        let record = Family {
            tenant: subject.tenant.clone(),
            user: subject.name.clone(),
            epoch,
            current: refresh_token.digest,
            expires_unix: refresh::unix(now + self.config.tokens.refresh_ttl),
            revoked: false,
        };
        self.refresh
            .create(&family, &record)
            .await
            .map_err(|e| LoginRefusal::Unavailable(e.to_string()))?;
        self.pair(&snapshot, &subject, epoch, refresh_token.token, now)
    }

    /// Trades a refresh token for a new pair; the presented one stops working. A token used
    /// before (or raced) revokes its family.
    pub async fn refresh(
        &self,
        snapshot: Arc<Snapshot>,
        token: &str,
    ) -> Result<TokenPair, LoginRefusal> {
        let Some((id, secret)) = refresh::split(token) else {
            return Err(LoginRefusal::BadRefreshToken);
        };
        let unavailable = |e: StoreError| LoginRefusal::Unavailable(e.to_string());
        let Some(read) = self.refresh.get(id).await.map_err(unavailable)? else {
            return Err(LoginRefusal::BadRefreshToken);
        };
        let mut family = read.family.clone();
        if family.revoked {
            return Err(LoginRefusal::Replayed);
        }
        let now = SystemTime::now();
        if refresh::digest(secret) != family.current {
            // Revoked whatever happens to this write: a conflict means another pod wrote, and
            // the family is then read again and revoked on its next use.
            self.revoke(id, &read).await;
            tracing::warn!(tenant = %family.tenant, user = %family.user, "a refresh token was replayed; its sign-in is revoked");
            return Err(LoginRefusal::Replayed);
        }
        if family.expires_unix <= refresh::unix(now) {
            return Err(LoginRefusal::BadRefreshToken);
        }
        let subject = snapshot
            .authenticate(&Credential::Token {
                tenant: &family.tenant,
                user: &family.user,
                token_epoch: family.epoch,
            })
            .map_err(|_| LoginRefusal::BadRefreshToken)?;
        let next = refresh::new_token(id);
        family.current = next.digest;
        family.expires_unix = refresh::unix(now + self.config.tokens.refresh_ttl);
        match self.refresh.update(id, &family, &read).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                // Two uses of one token at once: one of them is not the user's.
                if let Ok(Some(again)) = self.refresh.get(id).await {
                    self.revoke(id, &again).await;
                }
                return Err(LoginRefusal::Replayed);
            }
            Err(e) => return Err(unavailable(e)),
        }
        self.pair(&snapshot, &subject, family.epoch, next.token, now)
    }

    /// Marks a family revoked, best effort (the caller refuses either way).
    async fn revoke(&self, id: &str, read: &refresh::Versioned) {
        let mut family = read.family.clone();
        family.revoked = true;
        let _ = self.refresh.update(id, &family, read).await;
    }

    fn pair(
        &self,
        snapshot: &Snapshot,
        subject: &Subject,
        epoch: u64,
        refresh_token: String,
        now: SystemTime,
    ) -> Result<TokenPair, LoginRefusal> {
        let settings = &self.config.tokens;
        let (access_token, _) = self
            .keyring(snapshot)
            .issue(settings, &subject.tenant, &subject.name, epoch, now)
            .map_err(|e| match e {
                TokenError::NoSigningKey => LoginRefusal::Unavailable(
                    "no token signing key has reached this dataplane yet".into(),
                ),
                other => LoginRefusal::Unavailable(other.to_string()),
            })?;
        Ok(TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in: settings.access_ttl.as_secs(),
            refresh_token,
            refresh_expires_in: settings.refresh_ttl.as_secs(),
        })
    }
}

/// Whether a password looks like a JWT (three base64url parts, a JSON header): MQTT clients of
/// users send their access token as the password.
pub fn looks_like_jwt(password: &[u8]) -> bool {
    password.starts_with(b"eyJ")
        && password.iter().filter(|&&b| b == b'.').count() == 2
        && password
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The timer of a session's access-token expiry, made once per session: `None` for things, so
/// their sessions have no timer at all and the session loop builds none per turn.
pub(crate) struct TokenExpiry(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl TokenExpiry {
    pub(crate) fn new(at: Option<tokio::time::Instant>) -> Self {
        Self(at.map(|at| Box::pin(tokio::time::sleep_until(at))))
    }

    /// Whether the session has a token that expires.
    pub(crate) fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Completes when the token expires; never without one.
    pub(crate) async fn expired(&mut self) {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

/// When a token's session must end, as a duration from now (zero if already past).
pub fn remaining(claims: &AccessClaims) -> Duration {
    let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
    exp.duration_since(SystemTime::now()).unwrap_or_default()
}
