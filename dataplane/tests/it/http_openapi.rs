//! `openapi.yaml` documents exactly the HTTP listener's routes: the route table matches the
//! document, and every documented operation answers on a running listener (with curl).

use crate::adapters;

use std::collections::BTreeSet;

use adapters::{Adapters, curl};
use fleetward_dataplane::web::ROUTES;

fn documented() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("dataplane/openapi.yaml is readable");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("openapi.yaml is YAML");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let paths = doc["paths"].as_mapping().expect("a paths map");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("a path string");
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    out
}

/// axum's `{*rest}` is OpenAPI's `{rest}` (a parameter that may hold `/`).
fn implemented() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), p.replace("{*", "{")))
        .collect()
}

#[test]
fn the_route_table_is_what_openapi_yaml_documents() {
    let documented = documented();
    let implemented = implemented();
    let undocumented: Vec<_> = implemented.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&implemented).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "routes not in openapi.yaml: {undocumented:?}; documented but not served: {missing:?}"
    );
}

#[tokio::test]
async fn every_documented_operation_is_served_and_nothing_else() {
    let fx = Adapters::start().await;
    for (method, path) in documented() {
        let concrete = path
            .replace("{tenant}", "acme")
            .replace("{channel}", "telemetry")
            .replace("{subtopic}", "a/b");
        let r = curl(&["-X", &method, &fx.url(&concrete)]).await;
        // Served, never 404/405: a publish is refused for its credentials, a stream for not
        // upgrading, a sign-in for its missing body, the audit trail and the history reader
        // for their missing credentials, provisioning for its missing claim certificate;
        // the key set is public.
        let expected = match (method.as_str(), path.starts_with("/m/")) {
            ("POST", true) => 401,
            ("POST", false) if path.starts_with("/provisioning/") => 401,
            ("POST", false) => 400,
            (_, _) if path == "/.well-known/jwks.json" => 200,
            (_, _) if path == "/audit" || path.ends_with("/messages") => 401,
            _ => 426,
        };
        assert_eq!(r.status, expected, "{method} {path}: {r:?}");
    }
    for (method, path) in [
        ("PUT", "/m/acme/c/telemetry"),
        ("DELETE", "/m/acme/c/telemetry/a"),
        ("POST", "/mqtt"),
    ] {
        let r = curl(&["-X", method, &fx.url(path)]).await;
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
    }
    for path in ["/", "/m/acme", "/m/acme/x/telemetry", "/healthz"] {
        let r = curl(&[&fx.url(path)]).await;
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
}
