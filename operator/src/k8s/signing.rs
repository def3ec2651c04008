//! The platform's token signing keys: one Secret in the operator's namespace, created with a
//! fresh Ed25519 key when missing, read on every change and pushed to dataplanes with the
//! policy.
//!
//! Each entry `<kid>.pem` holds a PKCS#8 private key (Ed25519 or P-256); an optional `active`
//! entry names the kid that signs new tokens (else the greatest kid). Every key verifies, so a
//! rotation is: add a key, point `active` at it, and remove the old one once the tokens it
//! signed have expired (15 minutes by default).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::FIELD_MANAGER;
use super::secrets::LABEL_MANAGED_BY;
use crate::shared::SharedIndex;
use fleetward_policy::SigningKey;
use fleetward_policy::tokens::{generate_signing_key, new_kid, signing_key_from_pkcs8};

/// The entry naming the active kid.
pub const ACTIVE_ENTRY: &str = "active";
/// The suffix of key entries.
pub const KEY_SUFFIX: &str = ".pem";

/// The signing keys of a Secret's data; entries that are not keys are reported, not fatal.
pub fn keys_of(data: &BTreeMap<String, ByteString>) -> (Vec<SigningKey>, Vec<String>) {
    let active = data
        .get(ACTIVE_ENTRY)
        .and_then(|v| std::str::from_utf8(&v.0).ok())
        .map(str::trim);
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for (entry, value) in data {
        let Some(kid) = entry.strip_suffix(KEY_SUFFIX) else {
            if entry != ACTIVE_ENTRY {
                problems.push(format!(
                    "entry {entry:?} is neither `<kid>{KEY_SUFFIX}` nor `{ACTIVE_ENTRY}`"
                ));
            }
            continue;
        };
        let der = match pem::parse(&value.0) {
            Ok(p) if p.tag() == "PRIVATE KEY" => p.into_contents(),
            Ok(p) => {
                problems.push(format!(
                    "{entry}: a PEM {:?} block; expected a PKCS#8 `PRIVATE KEY`",
                    p.tag()
                ));
                continue;
            }
            Err(e) => {
                problems.push(format!("{entry}: not PEM ({e})"));
                continue;
            }
        };
        match signing_key_from_pkcs8(kid, der, active == Some(kid)) {
            Ok(k) => keys.push(k),
            Err(e) => problems.push(format!("{entry}: {e}")),
        }
    }
    if let Some(a) = active
        && !keys.iter().any(|k| k.kid == a)
    {
        problems.push(format!(
            "`{ACTIVE_ENTRY}` names {a:?}, which is not a key here; the greatest kid signs"
        ));
    }
    (keys, problems)
}

/// A new Secret holding one fresh Ed25519 key, active.
pub fn new_secret(namespace: &str, name: &str) -> anyhow::Result<Secret> {
    let kid = new_kid(SystemTime::now());
    let key = generate_signing_key(fleetward_policy::SigningAlgorithm::EdDSA, kid.clone())?;
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", key.private_key));
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (format!("{kid}{KEY_SUFFIX}"), ByteString(pem.into_bytes())),
            (ACTIVE_ENTRY.to_owned(), ByteString(kid.into_bytes())),
        ])),
        ..Secret::default()
    })
}

/// The directory under a single binary's state directory that holds its signing keys, one
/// `<kid>.pem` per key and an optional `active` file, like the Secret's entries.
pub const LOCAL_DIR: &str = "signing-keys";

/// The signing keys of `fleetward start`, from `<state_dir>/signing-keys/`; a fresh Ed25519 key
/// is written there (mode 0600) when it holds none, so tokens outlive a restart.
pub fn local_keys(state_dir: &std::path::Path) -> anyhow::Result<(Vec<SigningKey>, Vec<String>)> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = state_dir.join(LOCAL_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let read = |dir: &std::path::Path| -> anyhow::Result<BTreeMap<String, ByteString>> {
        let mut data = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                data.insert(name.to_owned(), ByteString(std::fs::read(entry.path())?));
            }
        }
        Ok(data)
    };
    let mut data = read(&dir)?;
    if !data.keys().any(|k| k.ends_with(KEY_SUFFIX)) {
        let fresh = new_secret("", "")?.data.unwrap_or_default();
        for (name, value) in &fresh {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(name))?;
            std::io::Write::write_all(&mut f, &value.0)?;
        }
        tracing::info!(dir = %dir.display(), "generated a token signing key");
        data = read(&dir)?;
    }
    Ok(keys_of(&data))
}

/// Watches the signing-key Secret, feeds its keys to the index, and (on the leader) creates it
/// when it does not exist. Runs until the index goes away.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    index: Arc<SharedIndex>,
    mut leader: watch::Receiver<bool>,
) -> &'static str {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api.clone(), config).default_backoff();
    futures::pin_mut!(stream);
    // Whether the Secret exists, once the first list told.
    let mut exists: Option<bool> = None;
    let mut listed: Option<Secret> = None;
    loop {
        if exists == Some(false) && *leader.borrow_and_update() {
            match new_secret(&namespace, &name) {
                Ok(secret) => match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(namespace = %namespace, secret = %name, "created the token signing key Secret");
                        exists = Some(true);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => exists = Some(true),
                    Err(e) => {
                        tracing::warn!(error = %e, namespace = %namespace, secret = %name, "could not create the token signing key Secret; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                        continue;
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "could not generate a token signing key");
                    return "signing keys";
                }
            }
        }
        let event = tokio::select! {
            e = stream.next() => e,
            r = leader.changed() => {
                if r.is_err() {
                    return "signing keys";
                }
                continue;
            }
        };
        let Some(event) = event else {
            return "signing keys";
        };
        match event {
            Ok(watcher::Event::Init) => listed = None,
            Ok(watcher::Event::InitApply(s)) => listed = Some(s),
            Ok(watcher::Event::InitDone) => match listed.take() {
                Some(s) => {
                    exists = Some(true);
                    apply(&index, &s, &name);
                }
                None => {
                    exists = Some(false);
                    index.update(|idx| idx.set_signing_keys(Vec::new()));
                }
            },
            Ok(watcher::Event::Apply(s)) => {
                exists = Some(true);
                apply(&index, &s, &name);
            }
            Ok(watcher::Event::Delete(_)) => {
                exists = Some(false);
                tracing::warn!(namespace = %namespace, secret = %name, "the token signing key Secret was deleted; user tokens stop verifying until a new one is made");
                index.update(|idx| idx.set_signing_keys(Vec::new()));
            }
            Err(e) => {
                tracing::warn!(error = %e, secret = %name, "watching the token signing key Secret failed; retrying");
            }
        }
    }
}

fn apply(index: &SharedIndex, secret: &Secret, name: &str) {
    let empty = BTreeMap::new();
    let (keys, problems) = keys_of(secret.data.as_ref().unwrap_or(&empty));
    for p in &problems {
        tracing::warn!(secret = %name, problem = %p, "a token signing key entry is not usable");
    }
    tracing::info!(secret = %name, keys = keys.len(), "token signing keys read");
    index.update(|idx| idx.set_signing_keys(keys));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_secret_reads_back_as_one_active_key() {
        let s = new_secret("fleetward", "fleetward-signing-keys").expect("generated");
        let (keys, problems) = keys_of(s.data.as_ref().expect("data"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(keys.len(), 1);
        assert!(keys[0].active);
        assert_eq!(keys[0].algorithm, fleetward_policy::SigningAlgorithm::EdDSA);
    }

    #[test]
    fn a_state_directory_gets_one_key_that_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, problems) = local_keys(dir.path()).expect("generated");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(first.len(), 1);
        let (again, _) = local_keys(dir.path()).expect("read");
        assert_eq!(again, first, "the key survives a restart");
        let path = dir
            .path()
            .join(LOCAL_DIR)
            .join(format!("{}{KEY_SUFFIX}", first[0].kid));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path).expect("key file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_entries_are_reported_and_good_ones_kept() {
        let good = new_secret("ns", "s").expect("generated");
        let mut data = good.data.expect("data");
        data.insert("junk.pem".into(), ByteString(b"not pem".to_vec()));
        data.insert(
            "cert.pem".into(),
            ByteString(pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3])).into_bytes()),
        );
        data.insert("notes".into(), ByteString(b"x".to_vec()));
        let (keys, problems) = keys_of(&data);
        assert_eq!(keys.len(), 1);
        assert_eq!(problems.len(), 3, "{problems:?}");
        data.insert(ACTIVE_ENTRY.into(), ByteString(b"nope".to_vec()));
        let (keys, problems) = keys_of(&data);
        assert!(!keys[0].active);
        assert!(problems.iter().any(|p| p.contains("nope")), "{problems:?}");
    }
}
