//! The CRD crate's integration tests, one binary so that they compile and link once: one module
//! per area (each was a test file of its own).

// Shared support, used by several test modules.

// One module per area (each was its own test binary).
mod compat;
mod examples;
mod generated;
mod invalid_variants;
