//! What the HTTP and WebSocket adapters read from a request alike: the topic in the path, the
//! content types a message may carry, who the request came from (for its audit event), and an
//! id for a client that gave none.

use std::collections::HashMap;

use axum::http::StatusCode;
use fleetward_policy::{Subject, SubjectKind};

use super::api_error::ApiError;
use super::credentials::Presented;

/// The content types a publish may carry.
pub const CONTENT_TYPES: [&str; 5] = [
    "application/json",
    "application/senml+json",
    "application/senml+cbor",
    "application/octet-stream",
    "text/plain",
];

/// Whether `content_type`'s media type (parameters such as `charset` aside, in any case) is
/// one of `types`.
pub(crate) fn media_type_in(content_type: &str, types: &[&str]) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    types.iter().any(|t| t.eq_ignore_ascii_case(essence))
}

/// The topic named by the path: `m/<tenant>/c/<channel>[/<rest>]`. Tenant and channel must be
/// single levels (no `/`, `+`, `#` after percent-decoding).
pub(crate) fn topic_of(params: &HashMap<String, String>) -> Result<String, ApiError> {
    let (Some(tenant), Some(channel)) = (params.get("tenant"), params.get("channel")) else {
        return Err(ApiError::bad_request(
            "the path must be /m/{tenant}/c/{channel}[/…]",
        ));
    };
    for (what, v) in [("tenant", tenant), ("channel", channel)] {
        if v.is_empty() || v.contains(['/', '+', '#']) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_topic",
                format!("the {what} {v:?} must be one topic level without `/`, `+` or `#`"),
            ));
        }
    }
    let mut topic = format!("m/{tenant}/c/{channel}");
    if let Some(rest) = params.get("subtopic") {
        topic.push('/');
        topic.push_str(rest);
    }
    Ok(topic)
}

/// Who a request came from and what it was refused for, as far as it got: for its audit event.
#[derive(Default)]
pub(crate) struct Seen {
    pub tenant: String,
    pub kind: Option<SubjectKind>,
    pub subject: String,
    /// Whether the credentials held.
    pub proved: bool,
    /// The publish path's own refusal label, where it has one finer than the answer's.
    pub reason: Option<&'static str>,
}

impl Seen {
    /// The subject the credentials name, before they are checked.
    pub(crate) fn claimed(&mut self, presented: &Presented) {
        match presented {
            Presented::Thing { tenant, thing, .. } => {
                self.tenant.clone_from(tenant);
                self.subject.clone_from(thing);
                self.kind = Some(SubjectKind::Thing);
            }
            Presented::Key(_) | Presented::Certificate(_) => self.kind = Some(SubjectKind::Thing),
            Presented::Bearer(_) => self.kind = Some(SubjectKind::User),
        }
    }

    /// The subject the credentials proved.
    pub(crate) fn proved(&mut self, subject: &Subject) {
        self.tenant.clone_from(&subject.tenant);
        self.subject.clone_from(&subject.name);
        self.kind = Some(subject.kind);
        self.proved = true;
    }
}

/// A random client id (`fw-` and 24 hex digits) for a client that sent none.
pub(crate) fn random_client_id() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // Unique enough within a pod when the OS RNG is unavailable.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return format!("fw-{n}");
    }
    let mut s = String::from("fw-");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
