//! The Fleetward resource types.
