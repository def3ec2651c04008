//! Close codes of plain WebSocket streams (4000–4999 are the application's, RFC 6455 7.4.2).

use axum::extract::ws::close_code;

/// The credentials no longer hold: the thing was disabled or deleted, its key removed,
/// or its tenant suspended.
pub const CREDENTIALS_REVOKED: u16 = 4401;
/// The subscription is no longer granted (the grant was revoked or narrowed).
pub const SUBSCRIPTION_REVOKED: u16 = 4403;
/// The router went away; reconnect.
pub const UNAVAILABLE: u16 = close_code::ERROR;
/// The server is shutting down (a drain); reconnect, to another pod.
pub const GOING_AWAY: u16 = close_code::AWAY;
