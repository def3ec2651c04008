//! The HTTP adapter: `POST` publishes on a channel, and `GET /audit` reads the caller's tenant's
//! audit trail. The listener that mounts them is `web/`.

pub(crate) mod audit;
pub(crate) mod history;
pub(crate) mod provision;
mod publish;
mod senml;

pub(crate) use publish::publish;
