//! The Cedar engine's tests: the published schema, policy validation, the oracle against the
//! built-in evaluator, and forbids over wildcard subscriptions.

mod attached;
mod fixtures;
mod forbid;
mod no_bypass;
mod oracle;
mod schema;
