//! Credentials of HTTP and WebSocket clients: `Authorization: Thing <key>`, HTTP Basic
//! `<tenant>/<thing>:<key>`, `Authorization: Bearer <user access token>`, or (browsers) a
//! `fleetward.auth.<base64url>` or `fleetward.bearer.<token>` WebSocket subprotocol.

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use fleetward_policy::{Credential, DenyReason, KeyDigest, PolicyEvaluator, Snapshot, Subject};

use tokio_rustls::rustls::pki_types::UnixTime;

use super::api_error::ApiError;
use super::sign_in::{Users, remaining};
use crate::tls::PeerChain;

/// The subprotocol a browser offers with its token, so it gets one it offered back.
pub const WS_PROTOCOL: &str = "fleetward.v1";
/// The prefix of the subprotocol carrying credentials: `fleetward.auth.` then
/// base64url (no padding) of `<tenant>/<thing>:<key>`.
pub const WS_AUTH_PREFIX: &str = "fleetward.auth.";
/// The prefix of the subprotocol carrying a user's access token: `fleetward.bearer.` then the
/// token as is (a JWT is made of characters a subprotocol may hold).
pub const WS_BEARER_PREFIX: &str = "fleetward.bearer.";

/// Credentials as a client presented them.
#[derive(PartialEq, Eq)]
pub(crate) enum Presented {
    /// `<tenant>/<thing>` and the key.
    Thing {
        tenant: String,
        thing: String,
        key: Vec<u8>,
    },
    /// A key alone; it names its thing.
    Key(Vec<u8>),
    /// A user's access token.
    Bearer(String),
    /// A client certificate chain from the TLS handshake; it names its thing.
    Certificate(PeerChain),
}

/// Reads the `Authorization` header.
pub(crate) fn from_authorization(headers: &HeaderMap) -> Result<Presented, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        // Over HTTPS, a client certificate is the credential of a request without another.
        if let Some(chain) = crate::tls::request_chain() {
            return Ok(Presented::Certificate(chain));
        }
        return Err(ApiError::unauthorized(
            "no credentials: send `Authorization: Thing <key>`, HTTP Basic \
             `<tenant>/<thing>:<key>` or `Authorization: Bearer <access token>`",
        ));
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, rest) = value.trim().split_once(' ').ok_or_else(malformed)?;
    let rest = rest.trim();
    match scheme.to_ascii_lowercase().as_str() {
        "thing" if !rest.is_empty() => Ok(Presented::Key(rest.as_bytes().to_vec())),
        "basic" => {
            let decoded = STANDARD.decode(rest).map_err(|_| malformed())?;
            basic_pair(&decoded).ok_or_else(malformed)
        }
        "bearer" if !rest.is_empty() => Ok(Presented::Bearer(rest.to_owned())),
        _ => Err(malformed()),
    }
}

/// Reads credentials from the offered WebSocket subprotocols, if one carries them.
pub(crate) fn from_ws_protocols(headers: &HeaderMap) -> Option<Result<Presented, ApiError>> {
    let offered = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL);
    let protocols: Vec<&str> = offered
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if let Some(jwt) = protocols
        .iter()
        .find_map(|p| p.strip_prefix(WS_BEARER_PREFIX))
    {
        return Some(Ok(Presented::Bearer(jwt.to_owned())));
    }
    let token = protocols
        .iter()
        .find_map(|p| p.strip_prefix(WS_AUTH_PREFIX))?;
    Some(
        URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .ok()
            .and_then(|d| basic_pair(&d))
            .ok_or_else(|| {
                ApiError::unauthorized(format!(
                    "the {WS_AUTH_PREFIX}… subprotocol must carry base64url of \
                     `<tenant>/<thing>:<key>`"
                ))
            }),
    )
}

fn basic_pair(decoded: &[u8]) -> Option<Presented> {
    let colon = decoded.iter().position(|&b| b == b':')?;
    let (user, key) = (&decoded[..colon], &decoded[colon + 1..]);
    let user = std::str::from_utf8(user).ok()?;
    let (tenant, thing) = user.split_once('/')?;
    if tenant.is_empty() || thing.is_empty() || key.is_empty() {
        return None;
    }
    Some(Presented::Thing {
        tenant: tenant.to_owned(),
        thing: thing.to_owned(),
        key: key.to_vec(),
    })
}

fn malformed() -> ApiError {
    ApiError::unauthorized(
        "the Authorization header is not `Thing <key>`, HTTP Basic with \
         `<tenant>/<thing>:<key>`, or `Bearer <access token>`",
    )
}

/// Who a request is from.
pub(crate) struct Authenticated {
    pub subject: Subject,
    /// A thing's key digest, so removing the key later ends the streams that used it.
    pub key_digest: Option<KeyDigest>,
    /// When a user's access token expires: a stream ends then.
    pub token_ends: Option<tokio::time::Instant>,
}

/// Authenticates against the snapshot (and, for a token, the user's signing keys).
pub(crate) fn authenticate(
    snapshot: &Snapshot,
    users: &Users,
    presented: &Presented,
) -> Result<Authenticated, ApiError> {
    if snapshot.version() == 0 {
        return Err(ApiError::policy_unavailable());
    }
    let (credential, key) = match presented {
        Presented::Thing { tenant, thing, key } => (Credential::Thing { tenant, thing, key }, key),
        Presented::Key(key) => (Credential::ThingKey { key }, key),
        Presented::Certificate(chain) => return by_certificate(snapshot, chain),
        Presented::Bearer(token) => {
            return match users.check(snapshot, token, None) {
                Ok((subject, claims)) => Ok(Authenticated {
                    subject,
                    key_digest: None,
                    token_ends: Some(tokio::time::Instant::now() + remaining(&claims)),
                }),
                Err(refusal) => Err(match refusal.reason {
                    DenyReason::SubjectDisabled | DenyReason::TenantSuspended => forbidden("user"),
                    DenyReason::PolicyUnavailable => ApiError::policy_unavailable(),
                    _ => ApiError::unauthorized(format!(
                        "the access token was refused ({}); sign in again at POST \
                         /users/tokens or refresh it",
                        refusal.label
                    )),
                }),
            };
        }
    };
    match snapshot.authenticate(&credential) {
        Ok(subject) => Ok(Authenticated {
            subject,
            key_digest: Some(KeyDigest::of(key)),
            token_ends: None,
        }),
        Err(refusal) => Err(match refusal.reason {
            DenyReason::SubjectDisabled | DenyReason::TenantSuspended => forbidden("thing"),
            DenyReason::PolicyUnavailable => ApiError::policy_unavailable(),
            _ => ApiError::unauthorized("unknown thing or wrong key"),
        }),
    }
}

/// Authenticates a thing by its client certificate; a stream it opens ends when the
/// certificate expires.
fn by_certificate(snapshot: &Snapshot, chain: &PeerChain) -> Result<Authenticated, ApiError> {
    let now = UnixTime::now();
    let credential = Credential::Certificate {
        chain: &chain.0,
        claimed: None,
        now,
    };
    match snapshot.authenticate(&credential) {
        Ok(subject) => {
            let token_ends = subject
                .certificate
                .as_ref()
                .map(|c| tokio::time::Instant::now() + c.remaining(now));
            Ok(Authenticated {
                subject,
                key_digest: None,
                token_ends,
            })
        }
        Err(refusal) => Err(match refusal.reason {
            DenyReason::SubjectDisabled | DenyReason::TenantSuspended => forbidden("thing"),
            DenyReason::PolicyUnavailable => ApiError::policy_unavailable(),
            _ => ApiError::unauthorized(
                "the client certificate was refused: it must chain to the tenant's deviceCA, \
                 be valid now and not revoked, and name a thing that accepts certificates \
                 (URI SAN fleetward://<tenant>/<thing> or its common name)",
            ),
        }),
    }
}

fn forbidden(who: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "the credentials are right but the {who} is disabled or its tenant suspended; ask \
             the tenant's admin"
        ),
    )
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn thing_and_basic_credentials_are_read() {
        let h = headers(header::AUTHORIZATION, "Thing k3y");
        assert!(matches!(from_authorization(&h), Ok(Presented::Key(k)) if k == b"k3y"));
        let basic = STANDARD.encode("acme/sensor:a:b");
        let h = headers(header::AUTHORIZATION, &format!("Basic {basic}"));
        match from_authorization(&h) {
            Ok(Presented::Thing { tenant, thing, key }) => {
                assert_eq!((tenant.as_str(), thing.as_str()), ("acme", "sensor"));
                // Everything after the first colon is the key.
                assert_eq!(key, b"a:b");
            }
            _ => panic!("basic credentials"),
        }
        let h = headers(header::AUTHORIZATION, "Bearer eyJ.a.b");
        assert!(matches!(from_authorization(&h), Ok(Presented::Bearer(t)) if t == "eyJ.a.b"));
        for bad in ["Basic !!", "Thing", "Digest x", "Bearer"] {
            let h = headers(header::AUTHORIZATION, bad);
            let e = from_authorization(&h).err().expect("refused");
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad}");
        }
        assert!(from_authorization(&HeaderMap::new()).is_err());
    }

    #[test]
    fn the_subprotocol_token_is_base64url_of_basic_credentials() {
        let token = URL_SAFE_NO_PAD.encode("acme/reader:key");
        let h = headers(
            header::SEC_WEBSOCKET_PROTOCOL,
            &format!("{WS_PROTOCOL}, {WS_AUTH_PREFIX}{token}"),
        );
        assert!(matches!(
            from_ws_protocols(&h),
            Some(Ok(Presented::Thing { thing, .. })) if thing == "reader"
        ));
        let h = headers(header::SEC_WEBSOCKET_PROTOCOL, WS_PROTOCOL);
        assert!(from_ws_protocols(&h).is_none());
        let h = headers(
            header::SEC_WEBSOCKET_PROTOCOL,
            &format!("{WS_AUTH_PREFIX}notbase64!"),
        );
        assert!(matches!(from_ws_protocols(&h), Some(Err(_))));
        // A user's token rides in its own subprotocol, as is.
        let h = headers(
            header::SEC_WEBSOCKET_PROTOCOL,
            &format!("{WS_PROTOCOL}, {WS_BEARER_PREFIX}eyJ.x.y"),
        );
        assert!(matches!(
            from_ws_protocols(&h),
            Some(Ok(Presented::Bearer(t))) if t == "eyJ.x.y"
        ));
    }
}
