//! Fleetward's operator: turns resources into a versioned policy snapshot, statuses and deltas.
//!
//! The [`index`] is source-agnostic: it resolves plain domain inputs. The Kubernetes watchers and
//! the single-binary mode's directory reader both read [`resource::Resource`]s and feed the index
//! their conversions.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod changes;
pub mod dataplanes;
pub mod directory;
pub mod grpc;
pub mod index;
pub mod k8s;
pub mod manifest;
pub mod metrics;
pub mod provisioning;
pub mod replicas;
pub mod resource;
pub mod runtime;
pub mod shared;
pub mod source;
