//! Reads Fleetward objects from YAML manifests (files of one or more documents).

use fleetward_crds as crds;
use k8s_openapi::api::core::v1::Secret;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::resource::{self, Resource};

/// Why one document of a manifest could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {document}: {message}")]
pub struct ManifestError {
    /// The document's position in its file, from 1.
    pub document: usize,
    /// What is wrong, naming the field where there is one.
    pub message: String,
}

/// One document of a manifest, read.
#[derive(Debug, Clone)]
pub enum Document {
    /// A Fleetward object or a Secret.
    Object(Box<Resource>),
    /// A kind Fleetward does not read, such as a Namespace; skipped.
    Skipped {
        /// The document's `kind`.
        kind: String,
    },
}

/// Reads every document of a YAML stream; each document succeeds or fails on its own, except
/// that a YAML syntax error ends the stream (the parser cannot find the next document after
/// it, and would repeat the same error forever).
pub fn read(text: &str) -> Vec<Result<Document, ManifestError>> {
    read_admitted(text, Ok)
}

/// Like [`read`], with each document passed as JSON through `admit` first, which refuses it
/// (with a message) or returns what is read instead: the single-binary mode checks documents
/// with the CRDs' rules and applies their defaults there, as the API server does.
pub fn read_admitted(
    text: &str,
    mut admit: impl FnMut(Value) -> Result<Value, String>,
) -> Vec<Result<Document, ManifestError>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        match <Value as serde::Deserialize>::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(value) => out.push(
                admit(value)
                    .and_then(read_document)
                    .map_err(|message| ManifestError { document, message }),
            ),
            Err(e) => {
                out.push(Err(ManifestError {
                    document,
                    message: format!("not valid YAML: {e}"),
                }));
                break;
            }
        }
    }
    out
}

fn read_document(value: Value) -> Result<Document, String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("no `kind`: every document needs apiVersion and kind")?
        .to_owned();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let fleetward = format!("{}/{}", crds::GROUP, crds::VERSION);
    let object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret") => {
            let secret: Secret = typed(value, &kind)?;
            let data = resource::secret_data(&secret)
                .ok_or("a Secret needs metadata.name and metadata.namespace")?;
            Resource::Secret(data)
        }
        (v, "Tenant") if v == fleetward => Resource::Tenant(typed(value, &kind)?),
        (v, "Thing") if v == fleetward => Resource::Thing(typed(value, &kind)?),
        (v, "Channel") if v == fleetward => Resource::Channel(typed(value, &kind)?),
        (v, "Connection") if v == fleetward => Resource::Connection(typed(value, &kind)?),
        (v, "User") if v == fleetward => Resource::User(typed(value, &kind)?),
        (v, "Group") if v == fleetward => Resource::Group(typed(value, &kind)?),
        (v, "Policy") if v == fleetward => Resource::Policy(typed(value, &kind)?),
        (v, _) if v.starts_with(crds::GROUP) => {
            return Err(format!(
                "{kind} of {api_version} is not a kind Fleetward knows: expected {fleetward} \
                 Tenant, Thing, Channel, Connection, User, Group or Policy"
            ));
        }
        _ => return Ok(Document::Skipped { kind }),
    };
    if object.key().is_none() {
        return Err(format!(
            "{kind} needs metadata.name{}",
            if kind == "Tenant" {
                ""
            } else {
                " and metadata.namespace"
            }
        ));
    }
    Ok(Document::Object(Box::new(object)))
}

/// Deserializes a document, naming the field that failed.
fn typed<T: DeserializeOwned>(value: Value, kind: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("{kind}: {inner}")
        } else {
            format!("{kind} field {path}: {inner}")
        }
    })
}
