//! The policy core's integration tests, one binary so that they compile and link once: one module
//! per area (each was a test file of its own).

// Shared support, used by several test modules.

// One module per area (each was its own test binary).
mod no_alloc;
mod properties;
mod snapshot;
mod tenant_versions;
