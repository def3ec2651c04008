//! Cedar as a Fleetward policy engine: the schema, the translation of grants and roles into
//! Cedar policies, and [`CedarEvaluator`], a [`fleetward_policy::PolicyEvaluator`].
//!
//! # What stays outside Cedar
//!
//! Credentials, an unknown or disabled subject, a revoked token, a missing or suspended tenant,
//! a topic of another tenant, an unknown channel and a wildcard in a publish topic are decided
//! by the built-in logic of the [`fleetward_policy::Snapshot`], with the built-in reasons,
//! before Cedar is asked. Every tenant has its own policy set and entities, so no Cedar policy
//! can name, let alone grant, anything of another tenant. Cedar is asked whether a subject may
//! `connect` (after its credential is right), `publish` and `subscribe`.
//!
//! # The translation
//!
//! Entities ([`schema_text`], published as `docs/cedar.cedarschema`): the subject is a
//! `Thing` or a `User` (with its `role`), both children of their `Group`s; the resource is a
//! `Topic`, child of its `Channel`, child of the `Tenant`. A topic carries its `subtopic`, its
//! `depth` (number of levels) and one tag per level: `"0"` is the first.
//!
//! A Connection (a [`fleetward_policy::Grant`]) named `n` becomes:
//! - `Connection/n/permit`: `permit (principal == Thing::"t" | User::"u" | in Group::"g",
//!   action in [its actions], resource in Channel::"c") when { any allow pattern }`, with no
//!   condition when the Connection allows every subtopic;
//! - `Connection/n/forbid`, when it has deny patterns: the same scope, `forbid … when { any
//!   deny pattern }`. A forbid reaches exactly the subjects, actions and channel its grant
//!   reaches, as a deny pattern does in the built-in engine.
//!
//! A pattern is a condition on the depth and the literal levels ([`pattern_condition`]): `a/+/b`
//! is `depth == 3 && tag "0" == "a" && tag "2" == "b"`; a trailing `#` makes the depth a lower
//! bound (`a/#`: `depth >= 1 && tag "0" == "a"`); `""` is the channel itself, `depth == 0`.
//!
//! Every tenant also gets the role and audit policies ([`role_policies`]): `role/connect`
//! permits everyone to connect; `role/admin` permits admins to publish and subscribe
//! everywhere; `role/viewer` permits viewers to subscribe everywhere and `role/viewer-read-only`
//! forbids them to publish; `role/audit-no-publish` forbids every publish on the audit channel
//! and `role/audit-things`, `role/audit-admins-only` forbid its subscription to all but admins.
//! A tenant's own policies ([`UserPolicy`], ids `Policy/<name>/<n or @id>`) are validated
//! strictly against the schema ([`validate_policies`]) and added beside them. A forbid always
//! wins, and a forbid that fails to evaluate refuses.
//!
//! # Wildcard subscriptions: decided on their topics
//!
//! A subscription filter is never asked of Cedar as a string: Cedar cannot tell that the
//! topics of `readings/#` include those a `forbid` on `readings/lab/#` refuses. The evaluator
//! decides a filter on concrete topics instead, one per shape: each `+` becomes a level no
//! topic and no pattern can hold (it contains NUL), and a trailing `#` becomes the prefix
//! followed by k such levels for every k up to one past the tenant's longest pattern. The
//! filter is granted when every one of those topics is permitted or forbidden and at least one
//! is permitted; it is refused with `cedar_forbid` when all are forbidden and with
//! `cedar_no_permit` when one is neither.
//!
//! For the translation this is exact, and equal to the built-in engine's coverage rule
//! (`fleetward_policy::pattern::covers`): a translated condition compares levels with literals
//! only, so the fresh level behaves as "any level", and beyond the longest pattern every depth
//! answers alike. The property test `tests/oracle.rs` checks it against the built-in evaluator.
//!
//! A tenant's own policies can say anything about a topic (`like`, `!=`, deeper levels), so
//! there the shape-wise answer only decides whether the subscription is taken;
//! [`fleetward_policy::PolicyEvaluator::withholds`] is then `true` for every filter, and each
//! delivery is decided by Cedar on its concrete topic, through the dataplane's delivery gate and
//! decision cache. A forbid can therefore never be read around with a wider filter. Without
//! policies of its own, a tenant's filters are withheld exactly where a deny pattern overlaps
//! them, as in the built-in engine. (Proving coverage of arbitrary Cedar conditions over
//! filters would need a solver; the per-delivery check costs a cache hit per message.)
//!
//! The request context (`protocol`, `clientAddress`, `time`) is declared by the schema but not
//! yet filled: `PolicyEvaluator` does not carry it, and a decision that depends on the time
//! could not be cached under today's keys.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

mod engine;
mod evaluator;
mod schema;
mod translate;

pub use engine::{BuildError, CedarEngine};
pub use evaluator::{CedarEvaluator, CedarExplanation, UserPolicy};
pub use schema::{CONNECT, PolicyError, schema, schema_text, validate_policies};
pub use translate::{
    CONNECTION_PREFIX, ROLE_PREFIX, TranslationError, grant_policies, longest_pattern,
    pattern_condition, role_policies, tenant_policies,
};
