//! The translation of a tenant's grants (Connections) and roles into Cedar policies.
//!
//! The crate documentation states the translation rule by rule; [`tenant_policies`] builds it.

use std::fmt::Write;

use cedar_policy::{Policy, PolicyId, PolicySet};
use fleetward_policy::{AUDIT_CHANNEL, Action, Grant, GrantSubject, Role, SubtopicPattern};

use crate::schema::CONNECT;

/// The id prefix of the translated policies of a Connection: `Connection/<name>/permit` and
/// `Connection/<name>/forbid`.
pub const CONNECTION_PREFIX: &str = "Connection/";

/// The id prefix of the role policies, such as `role/admin`.
pub const ROLE_PREFIX: &str = "role/";

/// A Cedar string literal: quotes, backslashes and control characters escaped.
pub(crate) fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The Cedar condition that holds exactly when a topic's subtopic matches `pattern`: its
/// depth, and each literal level by its tag ("0" is the first level). `+` constrains only the
/// depth; a trailing `#` makes the depth a lower bound.
pub fn pattern_condition(pattern: &SubtopicPattern) -> String {
    let text = pattern.as_str();
    let levels: Vec<&str> = if text.is_empty() {
        Vec::new()
    } else {
        text.split('/').collect()
    };
    let (fixed, open) = match levels.split_last() {
        Some((&"#", fixed)) => (fixed, true),
        _ => (&levels[..], false),
    };
    let mut parts = Vec::with_capacity(fixed.len() + 1);
    match (open, fixed.len()) {
        (true, 0) => {}
        (true, n) => parts.push(format!("resource.depth >= {n}")),
        (false, n) => parts.push(format!("resource.depth == {n}")),
    }
    for (i, level) in fixed.iter().enumerate() {
        if *level != "+" {
            let tag = literal(&i.to_string());
            parts.push(format!(
                "(resource.hasTag({tag}) && resource.getTag({tag}) == {})",
                literal(level)
            ));
        }
    }
    if parts.is_empty() {
        "true".to_owned()
    } else {
        parts.join(" && ")
    }
}

/// Any of the patterns, as one condition.
fn any_of(patterns: &[SubtopicPattern]) -> String {
    let conditions: Vec<String> = patterns
        .iter()
        .map(|p| format!("({})", pattern_condition(p)))
        .collect();
    conditions.join(" || ")
}

/// The Cedar policies of one grant: a `permit` of its actions on its channel, limited to its
/// allow patterns, and a `forbid` of the same for its deny patterns. A grant without actions
/// gives nothing.
pub fn grant_policies(grant: &Grant) -> Vec<(PolicyId, String)> {
    let mut actions = Vec::new();
    if grant.actions.publish {
        actions.push(format!("Action::{}", literal(Action::Publish.as_str())));
    }
    if grant.actions.subscribe {
        actions.push(format!("Action::{}", literal(Action::Subscribe.as_str())));
    }
    if actions.is_empty() {
        return Vec::new();
    }
    let principal = match &grant.subject {
        GrantSubject::Thing(n) => format!("principal == Thing::{}", literal(n)),
        GrantSubject::User(n) => format!("principal == User::{}", literal(n)),
        GrantSubject::Group(n) => format!("principal in Group::{}", literal(n)),
    };
    let scope = format!(
        "{principal}, action in [{}], resource in Channel::{}",
        actions.join(", "),
        literal(&grant.channel)
    );
    let name = &grant.name;
    let mut out = Vec::with_capacity(2);
    let permit = if grant.allow.is_empty() {
        format!("permit ({scope});")
    } else {
        format!("permit ({scope})\nwhen {{ {} }};", any_of(&grant.allow))
    };
    out.push((
        PolicyId::new(format!("{CONNECTION_PREFIX}{name}/permit")),
        permit,
    ));
    if !grant.deny.is_empty() {
        out.push((
            PolicyId::new(format!("{CONNECTION_PREFIX}{name}/forbid")),
            format!("forbid ({scope})\nwhen {{ {} }};", any_of(&grant.deny)),
        ));
    }
    out
}

/// The policies every tenant has: connecting, the roles, and the audit channel.
pub fn role_policies() -> Vec<(PolicyId, String)> {
    let publish = format!("Action::{}", literal(Action::Publish.as_str()));
    let subscribe = format!("Action::{}", literal(Action::Subscribe.as_str()));
    let admin = literal(Role::Admin.as_str());
    let viewer = literal(Role::Viewer.as_str());
    let audit = format!("Channel::{}", literal(AUDIT_CHANNEL));
    let id = |s: &str| PolicyId::new(format!("{ROLE_PREFIX}{s}"));
    vec![
        (
            id(CONNECT),
            format!(
                "permit (principal, action == Action::{}, resource);",
                literal(CONNECT)
            ),
        ),
        (
            id("admin"),
            format!(
                "permit (principal is User, action in [{publish}, {subscribe}], resource)\n\
                 when {{ principal.role == {admin} }};"
            ),
        ),
        (
            id("viewer"),
            format!(
                "permit (principal is User, action == {subscribe}, resource)\n\
                 when {{ principal.role == {viewer} }};"
            ),
        ),
        (
            id("viewer-read-only"),
            format!(
                "forbid (principal is User, action == {publish}, resource)\n\
                 when {{ principal.role == {viewer} }};"
            ),
        ),
        (
            id("audit-no-publish"),
            format!("forbid (principal, action == {publish}, resource in {audit});"),
        ),
        (
            id("audit-things"),
            format!("forbid (principal is Thing, action == {subscribe}, resource in {audit});"),
        ),
        (
            id("audit-admins-only"),
            format!(
                "forbid (principal is User, action == {subscribe}, resource in {audit})\n\
                 unless {{ principal.role == {admin} }};"
            ),
        ),
    ]
}

/// Why a translation could not be parsed: a bug of this crate, never of the input.
#[derive(Debug, thiserror::Error)]
#[error("the Cedar translation of {id} does not parse ({message}); please report it")]
pub struct TranslationError {
    /// The policy's id.
    pub id: String,
    /// Cedar's words.
    pub message: String,
}

/// The Cedar policies of one tenant: [`role_policies`] and the [`grant_policies`] of each of
/// its grants (all of one tenant), in grant-name order.
pub fn tenant_policies(grants: &[&Grant]) -> Result<PolicySet, TranslationError> {
    let mut grants = grants.to_vec();
    grants.sort_by(|a, b| a.name.cmp(&b.name));
    let texts = role_policies()
        .into_iter()
        .chain(grants.into_iter().flat_map(grant_policies));
    let mut set = PolicySet::new();
    for (id, text) in texts {
        let policy = parse_translation(id.clone(), &text)?;
        set.add(policy).map_err(|e| TranslationError {
            id: id.to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(set)
}

/// Parses one translated policy under its id.
pub fn parse_translation(id: PolicyId, text: &str) -> Result<Policy, TranslationError> {
    Policy::parse(Some(id.clone()), text).map_err(|e| TranslationError {
        id: id.to_string(),
        message: e.to_string(),
    })
}

/// The longest fixed part (levels before a trailing `#`) of the tenant's grant patterns: the
/// depth beyond which every filter level answers the same (see `pattern::covers`).
pub fn longest_pattern(grants: &[&Grant]) -> usize {
    grants
        .iter()
        .flat_map(|g| g.allow.iter().chain(&g.deny))
        .map(|p| {
            let n = if p.as_str().is_empty() {
                0
            } else {
                p.as_str().split('/').count()
            };
            if p.as_str().ends_with('#') { n - 1 } else { n }
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SubtopicPattern {
        SubtopicPattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn patterns_become_depth_and_level_conditions() {
        assert_eq!(pattern_condition(&p("#")), "true");
        assert_eq!(pattern_condition(&p("")), "resource.depth == 0");
        assert_eq!(pattern_condition(&p("+")), "resource.depth == 1");
        assert_eq!(
            pattern_condition(&p("a/+/#")),
            "resource.depth >= 2 && (resource.hasTag(\"0\") && resource.getTag(\"0\") == \"a\")"
        );
    }

    #[test]
    fn literals_escape_quotes_backslashes_and_controls() {
        assert_eq!(literal(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(literal("x\ny"), "\"x\\u{a}y\"");
    }
}
