//! The dataplane core the adapters (`mqtt/`, `http/`, `ws/`, `users/`) share as peers: the
//! state of a pod ([`Ingress`]), subject authentication (credentials, sign-in and tokens), the
//! one publish path and its limits (rates, sizes, the retained store, connection slots),
//! delivery matching under subtopic denies, and the HTTP error type every HTTP-facing adapter
//! answers with.

mod api_error;
mod config;
mod credentials;
mod delivery;
mod drain;
mod history;
mod publish_path;
mod rechecks;
pub(crate) mod refresh;
mod request;
mod retained;
mod sign_in;
mod slots;
mod state;

pub(crate) use api_error::{ApiError, body_timed_out};
pub use config::MqttConfig;
pub use credentials::WS_PROTOCOL;
pub(crate) use credentials::{Authenticated, authenticate, from_authorization, from_ws_protocols};
pub(crate) use drain::{Drain, Phase};
pub(crate) use history::HistoryTap;
pub use history::{History, HistorySink};
pub(crate) use publish_path::{PublishMemo, PublishRefusal, PublishRequest};
pub(crate) use rechecks::{Interest, Rechecks, follow as follow_rechecks};
pub use request::CONTENT_TYPES;
pub(crate) use request::{Seen, media_type_in, random_client_id, topic_of};
pub(crate) use retained::{RetainedStore, Uids, purge_deleted_channels};
pub use sign_in::{LoginRefusal, TokenPair, UsersConfig};
pub(crate) use sign_in::{TokenExpiry, Users, looks_like_jwt, remaining};
pub(crate) use slots::ConnectionSlots;
pub(crate) use state::Ingress;
