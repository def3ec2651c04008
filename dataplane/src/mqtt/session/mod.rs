//! A connected client's session, cut by concern: its state (`connection`), the loop
//! (`serve`), inbound PUBLISH (`inbound`), delivery (`deliver`), SUBSCRIBE and UNSUBSCRIBE
//! (`subscriptions`), the end of a session (`ending`) and a saved session's expiry (`persist`).

mod accepted;
mod connection;
mod deliver;
mod durable;
mod ending;
mod held;
mod inbound;
mod persist;
mod serve;
mod subscriptions;

pub(crate) use accepted::{Accepted, Connected};
pub(crate) use connection::Session;
pub(crate) use ending::publish_will;
pub(crate) use persist::{clear_in_router, expire_later};
