//! The PolicySync protocol and the internal message format: generated protobuf and conversions.
//!
//! The `.proto` files under `proto/fleetward/` are the source of truth; they only ever grow
//! (DESIGN §9). [`convert`] maps the policy model to and from the wire types.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod convert;

/// PolicySync v1: the operator → dataplane push stream and its model messages.
pub mod policysync {
    /// Version 1.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("fleetward.policysync.v1");
    }
}

/// The internal message carried between adapters and over the bus.
pub mod message {
    /// Version 1.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("fleetward.message.v1");
    }
}

pub use policysync::v1 as pb;
