//! The end-to-end tests, one binary so that they compile and link once: one module per area (each
//! was a test file of its own), every test `#[ignore]`d (they need a real kube-apiserver, see
//! e2e/README.md).

// Shared support, used by several test modules.

// One module per area (each was its own test binary).
mod cedar;
mod chart_helm_test;
mod chart_history;
mod chart_ops;
mod compat_skew;
mod controlplane;
mod crd_validation;
mod device_certs;
mod helm;
mod history;
mod image;
mod nats;
mod operator;
mod policysync;
mod quickstart;
mod users;
