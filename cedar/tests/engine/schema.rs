//! The published schema matches the generator, and policies are validated against it.

use std::path::Path;

use fleetward_cedar::{grant_policies, role_policies, schema, schema_text, validate_policies};
use fleetward_policy::{Actions, GrantSubject};

use crate::fixtures::mk_grant;

const REGENERATE: &str = "UPDATE_CEDAR_SCHEMA=1 cargo test -p fleetward-cedar";

#[test]
fn the_committed_schema_matches_the_generator() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cedar.cedarschema");
    let generated = schema_text();
    if std::env::var_os("UPDATE_CEDAR_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("docs/cedar.cedarschema can be written");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} drifted from the generator in cedar/src/schema.rs; regenerate it with `{REGENERATE}` and commit it",
        path.display()
    );
    // It parses, and the parsed schema knows the model's entity types.
    let names: Vec<String> = schema().entity_types().map(ToString::to_string).collect();
    for ty in ["Thing", "User", "Group", "Channel", "Topic", "Tenant"] {
        assert!(names.iter().any(|n| n == ty), "{ty} is in {names:?}");
    }
}

#[test]
fn the_translation_validates_against_the_schema() {
    let grant = mk_grant(
        "acme",
        "ops \"quoted\"",
        GrantSubject::Group("ops".into()),
        "telemetry",
        Actions::BOTH,
        &["rooms/+/temp", "", "a/#"],
        &["rooms/vault/#", "+"],
    );
    let mut text = String::new();
    for (_, policy) in role_policies().into_iter().chain(grant_policies(&grant)) {
        text.push_str(&policy);
        text.push('\n');
    }
    if let Err(errors) = validate_policies("translation", &text) {
        panic!("the translation must validate: {errors:?}\n{text}");
    }
}

#[test]
fn a_valid_policy_is_named_by_its_source_and_id() {
    let text = r#"
@id("same-site")
permit (principal is Thing, action == Action::"publish", resource)
when { principal.hasTag("site") && resource.hasTag("0") && principal.getTag("site") == resource.getTag("0") };
forbid (principal, action, resource in Channel::"secrets");
"#;
    let set = validate_policies("Policy/sites", text).expect("valid");
    let mut ids: Vec<String> = set.policies().map(|p| p.id().to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["Policy/sites/1", "Policy/sites/same-site"]);
}

#[test]
fn a_syntax_error_is_placed_by_line_and_column() {
    let text = "permit (principal, action, resource);\nforbid (principal action, resource);\n";
    let errors = validate_policies("p", text).expect_err("a syntax error");
    assert_eq!(errors[0].line, 2, "{errors:?}");
    assert!(errors[0].column > 1, "{errors:?}");
    assert!(!errors[0].message.is_empty());
}

#[test]
fn a_policy_that_does_not_fit_the_schema_is_refused_with_its_place() {
    // Things have no `role`, and there is no `delete` action.
    let text = "permit (principal, action, resource);\n\
                permit (principal is Thing, action == Action::\"publish\", resource)\n  when { principal.role == \"admin\" };\n";
    let errors = validate_policies("p", text).expect_err("invalid against the schema");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, 3, "{errors:?}");
    assert!(errors[0].message.contains("role"), "{errors:?}");

    let errors = validate_policies(
        "p",
        "permit (principal, action == Action::\"delete\", resource);",
    )
    .expect_err("an unknown action");
    assert_eq!(errors[0].line, 1, "{errors:?}");

    let errors = validate_policies("p", "permit (principal == ?principal, action, resource);")
        .expect_err("a template");
    assert!(errors[0].message.contains("templates"), "{errors:?}");

    let twice = "@id(\"x\") permit (principal, action, resource);\n@id(\"x\") forbid (principal, action, resource);";
    let errors = validate_policies("p", twice).expect_err("the same id twice");
    assert!(errors[0].message.contains("@id"), "{errors:?}");
}
