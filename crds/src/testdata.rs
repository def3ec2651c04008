//! The invalid-variant table: valid example manifests with one mutation each that the API server must refuse.
//!
//! Shared by the schema tests in this crate (through `validate`) and the end-to-end tests, which
//! apply each manifest to a real kube-apiserver (with `--dry-run=server`, so nothing is persisted even if a
//! variant were wrongly accepted) and expect the refusal to contain `expected_message`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::schema::{
    DNS_LABEL_MESSAGE, NAME_MESSAGE, SUBTOPIC_DOLLAR_MESSAGE, SUBTOPIC_HASH_LAST_MESSAGE,
    SUBTOPIC_NUL_MESSAGE, SUBTOPIC_WILDCARD_MESSAGE,
};
use crate::tenant::{NAMESPACE_IMMUTABLE_MESSAGE, ORIGIN_MESSAGE};

/// The example manifests, as committed under `examples/`: (file name, YAML).
pub const EXAMPLES: [(&str, &str); 2] = [
    ("acme.yaml", include_str!("../../examples/acme.yaml")),
    ("globex.yaml", include_str!("../../examples/globex.yaml")),
];

/// A manifest the API server must refuse on create.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidVariant {
    /// What is wrong, as a DNS-1123 label usable as a test name.
    pub name: &'static str,
    /// The whole manifest (apiVersion, kind, metadata, spec).
    pub manifest: Value,
    /// Text the API server's refusal contains: a CEL rule's message or the OpenAPI error text.
    pub expected_message: &'static str,
}

/// An update the API server must refuse: `old` is accepted on create, `new` is refused on update.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidUpdate {
    /// What is wrong, as a DNS-1123 label usable as a test name.
    pub name: &'static str,
    /// The manifest as created.
    pub old: Value,
    /// The manifest as updated.
    pub new: Value,
    /// Text the API server's refusal contains.
    pub expected_message: &'static str,
}

/// Every document of every example file, Namespaces and Secrets included.
pub fn example_documents() -> Vec<Value> {
    EXAMPLES
        .iter()
        .flat_map(|(file, yaml)| {
            serde_yaml::Deserializer::from_str(yaml).map(move |doc| {
                Value::deserialize(doc).unwrap_or_else(|e| {
                    panic!("examples/{file} holds a document that is not valid YAML: {e}")
                })
            })
        })
        .collect()
}

/// The example manifest of `kind` named `name` in `namespace` (`""` for the cluster-scoped Tenant).
pub fn example(kind: &str, namespace: &str, name: &str) -> Value {
    example_documents()
        .into_iter()
        .find(|doc| {
            doc["kind"] == kind
                && doc["metadata"]["name"] == name
                && doc["metadata"]["namespace"].as_str().unwrap_or_default() == namespace
        })
        .unwrap_or_else(|| panic!("examples/ has no {kind} {namespace}/{name}"))
}

/// `base` with the value at JSON pointer `pointer` replaced (or added, also at the end of a list)
/// by `value`.
fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{pointer} is not a JSON pointer"));
    let slot = base
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("the example has nothing at {parent}"));
    match slot {
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        Value::Array(items) => {
            let index: usize = key
                .parse()
                .unwrap_or_else(|_| panic!("{pointer}: {key} is not an index"));
            if index == items.len() {
                items.push(value);
            } else {
                items[index] = value;
            }
        }
        other => panic!("{parent} is {other}, not an object or array"),
    }
    base
}

/// `base` without the field at JSON pointer `pointer`.
fn without(mut base: Value, pointer: &str) -> Value {
    let (parent, key) = pointer
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{pointer} is not a JSON pointer"));
    if let Some(Value::Object(map)) = base.pointer_mut(parent) {
        map.remove(key);
    }
    base
}

fn variant(name: &'static str, manifest: Value, expected_message: &'static str) -> InvalidVariant {
    InvalidVariant {
        name,
        manifest,
        expected_message,
    }
}

/// Manifests the API server must refuse on create, each a valid example with one mutation.
// A data table, one entry per variant: its length is the number of variants, not logic.
#[allow(clippy::too_many_lines)]
pub fn invalid_variants() -> Vec<InvalidVariant> {
    let tenant = || example("Tenant", "", "acme");
    let thing = || example("Thing", "acme", "sensor-1");
    let channel = || example("Channel", "acme", "telemetry");
    let publish = || example("Connection", "acme", "sensor-1-publishes-telemetry");
    let subscribe = || example("Connection", "globex", "dashboard-subscribes-telemetry");
    let user = || example("User", "acme", "alice");
    let group = || example("Group", "acme", "operators");

    let origin = |o: &str| with(tenant(), "/spec/web", json!({ "allowedOrigins": [o] }));

    vec![
        // An allowed origin is exactly what a browser sends in `Origin`.
        variant(
            "tenant-origin-with-a-path",
            origin("https://dash.example.com/"),
            ORIGIN_MESSAGE,
        ),
        variant("tenant-origin-wildcard", origin("*"), ORIGIN_MESSAGE),
        variant(
            "tenant-origin-upper-case",
            origin("https://Dash.example.com"),
            ORIGIN_MESSAGE,
        ),
        variant(
            "tenant-origin-without-scheme",
            origin("dash.example.com"),
            ORIGIN_MESSAGE,
        ),
        // Every reference is a DNS-1123 label.
        variant(
            "tenant-namespace-not-a-dns-label",
            with(tenant(), "/spec/namespace", json!("ACME")),
            DNS_LABEL_MESSAGE,
        ),
        variant(
            "thing-secret-name-not-a-dns-label",
            with(
                thing(),
                "/spec/credentials/secretName",
                json!("sensor_1.credentials"),
            ),
            DNS_LABEL_MESSAGE,
        ),
        variant(
            "thing-mountpoint-not-a-dns-label",
            with(thing(), "/spec/mountpoint", json!("Telemetry")),
            DNS_LABEL_MESSAGE,
        ),
        variant(
            "connection-subject-name-not-a-dns-label",
            with(publish(), "/spec/subject/name", json!("sensor/1")),
            DNS_LABEL_MESSAGE,
        ),
        variant(
            "connection-channel-not-a-dns-label",
            with(publish(), "/spec/channel", json!("telemetry-")),
            DNS_LABEL_MESSAGE,
        ),
        variant(
            "connection-channel-empty",
            with(publish(), "/spec/channel", json!("")),
            DNS_LABEL_MESSAGE,
        ),
        variant(
            "user-password-secret-not-a-dns-label",
            with(
                user(),
                "/spec/passwordSecretRef/name",
                json!("alice.password"),
            ),
            DNS_LABEL_MESSAGE,
        ),
        variant(
            "group-member-name-not-a-dns-label",
            with(group(), "/spec/members/0/name", json!("-alice")),
            DNS_LABEL_MESSAGE,
        ),
        // Resource names end up in topics and references, so they are labels too.
        variant(
            "thing-name-not-a-dns-label",
            with(thing(), "/metadata/name", json!("sensor.1")),
            NAME_MESSAGE,
        ),
        variant(
            "tenant-name-not-a-dns-label",
            with(tenant(), "/metadata/name", json!("acme.example.com")),
            NAME_MESSAGE,
        ),
        // A Connection's actions are a non-empty set of publish and subscribe.
        variant(
            "connection-actions-empty",
            with(publish(), "/spec/actions", json!([])),
            "spec.actions in body should have at least 1 items",
        ),
        variant(
            "connection-actions-missing",
            without(publish(), "/spec/actions"),
            "spec.actions: Required value",
        ),
        variant(
            "connection-action-unknown",
            with(publish(), "/spec/actions", json!(["publish", "read"])),
            r#"spec.actions[1]: Unsupported value: "read": supported values: "publish", "subscribe""#,
        ),
        variant(
            "connection-action-duplicate",
            with(publish(), "/spec/actions", json!(["publish", "publish"])),
            r#"spec.actions[1]: Duplicate value: "publish""#,
        ),
        variant(
            "connection-subject-kind-unknown",
            with(publish(), "/spec/subject/kind", json!("Channel")),
            r#"spec.subject.kind: Unsupported value: "Channel": supported values: "Thing", "User", "Group""#,
        ),
        variant(
            "connection-subject-kind-lower-case",
            with(publish(), "/spec/subject/kind", json!("thing")),
            r#"spec.subject.kind: Unsupported value: "thing": supported values: "Thing", "User", "Group""#,
        ),
        // Subtopic patterns are well-formed MQTT filters below the channel.
        variant(
            "subtopic-plus-inside-a-level",
            with(
                subscribe(),
                "/spec/subtopics/allow/0",
                json!("readings/room+/temperature"),
            ),
            SUBTOPIC_WILDCARD_MESSAGE,
        ),
        variant(
            "subtopic-hash-inside-a-level",
            with(
                subscribe(),
                "/spec/subtopics/allow/0",
                json!("readings/temp#"),
            ),
            SUBTOPIC_WILDCARD_MESSAGE,
        ),
        variant(
            "subtopic-hash-not-last",
            with(
                subscribe(),
                "/spec/subtopics/allow/0",
                json!("readings/#/temperature"),
            ),
            SUBTOPIC_HASH_LAST_MESSAGE,
        ),
        variant(
            "subtopic-deny-hash-not-last",
            with(subscribe(), "/spec/subtopics/deny/0", json!("#/lab")),
            SUBTOPIC_HASH_LAST_MESSAGE,
        ),
        variant(
            "subtopic-starts-with-dollar",
            with(subscribe(), "/spec/subtopics/allow/0", json!("$SYS/#")),
            SUBTOPIC_DOLLAR_MESSAGE,
        ),
        variant(
            "subtopic-deny-starts-with-dollar",
            with(
                subscribe(),
                "/spec/subtopics/deny/0",
                json!("$share/g/readings"),
            ),
            SUBTOPIC_DOLLAR_MESSAGE,
        ),
        variant(
            "subtopic-contains-nul",
            with(
                subscribe(),
                "/spec/subtopics/allow/0",
                json!("readings/\u{0}/temperature"),
            ),
            SUBTOPIC_NUL_MESSAGE,
        ),
        variant(
            "subtopic-empty",
            with(subscribe(), "/spec/subtopics/allow/0", json!("")),
            "spec.subtopics.allow[0] in body should be at least 1 chars long",
        ),
        variant(
            "subtopic-duplicate",
            with(
                subscribe(),
                "/spec/subtopics/allow/1",
                json!("readings/+/temperature"),
            ),
            r#"spec.subtopics.allow[1]: Duplicate value: "readings/+/temperature""#,
        ),
        // QoS is 0, 1 or 2.
        variant(
            "channel-max-qos-3",
            with(channel(), "/spec/maxQos", json!(3)),
            "spec.maxQos in body should be less than or equal to 2",
        ),
        variant(
            "channel-max-qos-negative",
            with(channel(), "/spec/maxQos", json!(-1)),
            "spec.maxQos in body should be greater than or equal to 0",
        ),
        // A misspelt field is refused (kubectl's strict field validation), not dropped: a
        // dropped `maxQoS` would leave the channel at its default QoS without a word.
        variant(
            "channel-max-qos-misspelt",
            with(channel(), "/spec/maxQoS", json!(1)),
            "strict decoding error: unknown field \"spec.maxQoS\"",
        ),
        variant(
            "thing-credentials-unknown-field",
            with(
                thing(),
                "/spec/credentials/secret",
                json!("sensor-1-credentials"),
            ),
            "strict decoding error: unknown field \"spec.credentials.secret\"",
        ),
        variant(
            "channel-max-message-size-zero",
            with(channel(), "/spec/maxMessageSize", json!(0)),
            "spec.maxMessageSize in body should be greater than or equal to 1",
        ),
        // Tenant limits are positive.
        variant(
            "tenant-max-things-zero",
            with(tenant(), "/spec/limits/maxThings", json!(0)),
            "spec.limits.maxThings in body should be greater than or equal to 1",
        ),
        variant(
            "tenant-max-channels-negative",
            with(tenant(), "/spec/limits/maxChannels", json!(-3)),
            "spec.limits.maxChannels in body should be greater than or equal to 1",
        ),
        variant(
            "tenant-max-connections-zero",
            with(tenant(), "/spec/limits/maxConnections", json!(0)),
            "spec.limits.maxConnections in body should be greater than or equal to 1",
        ),
        variant(
            "tenant-max-message-size-zero",
            with(tenant(), "/spec/limits/maxMessageSize", json!(0)),
            "spec.limits.maxMessageSize in body should be greater than or equal to 1",
        ),
        variant(
            "tenant-publish-rate-zero",
            with(tenant(), "/spec/limits/publishRate", json!(0)),
            "spec.limits.publishRate in body should be greater than or equal to 1",
        ),
        variant(
            "tenant-publish-burst-negative",
            with(tenant(), "/spec/limits/publishBurst", json!(-1)),
            "spec.limits.publishBurst in body should be greater than or equal to 1",
        ),
        variant(
            "tenant-suspended-not-a-boolean",
            with(tenant(), "/spec/suspended", json!("yes")),
            "spec.suspended in body must be of type boolean",
        ),
        // Users.
        variant(
            "user-role-unknown",
            with(user(), "/spec/role", json!("root")),
            r#"spec.role: Unsupported value: "root": supported values: "admin", "member", "viewer""#,
        ),
        variant(
            "user-token-epoch-negative",
            with(user(), "/spec/tokenEpoch", json!(-1)),
            "spec.tokenEpoch in body should be greater than or equal to 0",
        ),
        variant(
            "user-password-key-malformed",
            with(user(), "/spec/passwordSecretRef/key", json!("pass word")),
            "spec.passwordSecretRef.key in body should match '^[-._a-zA-Z0-9]+$'",
        ),
        // Groups.
        variant(
            "group-member-kind-group",
            with(group(), "/spec/members/0/kind", json!("Group")),
            r#"spec.members[0].kind: Unsupported value: "Group": supported values: "Thing", "User""#,
        ),
        variant(
            "group-member-duplicate",
            with(
                group(),
                "/spec/members/2",
                json!({"kind": "User", "name": "alice"}),
            ),
            "spec.members[2]: Duplicate value",
        ),
    ]
}

/// Updates the API server must refuse: the Tenant's namespace never changes.
pub fn invalid_updates() -> Vec<InvalidUpdate> {
    let acme = example("Tenant", "", "acme");
    let globex = example("Tenant", "", "globex");
    vec![
        InvalidUpdate {
            name: "tenant-namespace-changed",
            old: acme.clone(),
            new: with(acme.clone(), "/spec/namespace", json!("acme-2")),
            expected_message: NAMESPACE_IMMUTABLE_MESSAGE,
        },
        InvalidUpdate {
            name: "tenant-namespace-removed-after-naming-another",
            old: with(acme.clone(), "/spec/namespace", json!("acme-prod")),
            new: without(acme, "/spec/namespace"),
            expected_message: NAMESPACE_IMMUTABLE_MESSAGE,
        },
        InvalidUpdate {
            name: "tenant-namespace-set-to-another-than-its-name",
            old: globex.clone(),
            new: with(globex, "/spec/namespace", json!("globex-2")),
            expected_message: NAMESPACE_IMMUTABLE_MESSAGE,
        },
    ]
}

/// Updates the API server must accept: they keep the Tenant's effective namespace, so the
/// immutability rule is shown not to refuse everything.
pub fn valid_updates() -> Vec<(&'static str, Value, Value)> {
    let acme = example("Tenant", "", "acme");
    let globex = example("Tenant", "", "globex");
    vec![
        (
            "tenant-suspended",
            acme.clone(),
            with(acme.clone(), "/spec/suspended", json!(true)),
        ),
        (
            "tenant-namespace-written-out-as-its-name",
            globex.clone(),
            with(globex, "/spec/namespace", json!("globex")),
        ),
        (
            "tenant-namespace-dropped-when-equal-to-its-name",
            acme.clone(),
            without(acme, "/spec/namespace"),
        ),
    ]
}
