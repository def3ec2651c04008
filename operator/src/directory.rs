//! The single-binary mode's source: a directory of manifests fed into the index, with the keys
//! the operator would generate kept in a local state directory instead of Secrets, and the
//! tenants' device CAs and issued thing certificates as files there (see [`device_certs`]).

pub mod device_certs;
pub mod local_ca;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fleetward_policy::{KeyDigest, generate_thing_key};

use fleetward_crds::validate;
use serde_json::Value;

use crate::index::{Index, Kind, ObjectKey, SecretData};
use crate::manifest::{self, Document};
use crate::resource::Resource;

/// Why a manifest file, or one of its documents, was not (fully) applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct FileError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong: the document and field where known.
    pub message: String,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Files read anew because they changed (or were removed).
    pub changed_files: usize,
    /// Errors; a file with an error keeps the last good state of that file.
    pub errors: Vec<FileError>,
    /// Keys generated for things that had none.
    pub generated_keys: Vec<ObjectKey>,
}

#[derive(Debug)]
struct FileState {
    digest: KeyDigest,
    objects: BTreeMap<ObjectKey, Resource>,
    /// The Fleetward documents as admitted (defaults applied), by [`admission_key`]: the `old`
    /// of the CEL transition rules when an edit changes one, as on an update in a cluster.
    admitted: BTreeMap<String, Value>,
}

/// A directory of manifests and a state directory of generated keys.
#[derive(Debug)]
pub struct Directory {
    manifests: PathBuf,
    keys: KeyStore,
    files: BTreeMap<PathBuf, FileState>,
    /// Secrets generated for things, by key, as fed to the index.
    generated: BTreeMap<ObjectKey, Resource>,
    /// The device CA and thing certificate Secrets fed from the state directory.
    certs: device_certs::DeviceCerts,
    /// The uids given to Tenants and Channels declared without one (manifests carry none), by
    /// key: kept while some file declares the object, forgotten once a scan finds none does, so
    /// one deleted and declared again gets a new uid, as in a cluster.
    uids: BTreeMap<ObjectKey, String>,
    /// `state_dir/uids.json`: the uids survive a restart, so what is stored under them (a
    /// channel's message history) stays its own.
    uids_file: PathBuf,
    /// The uids read from it at start, by the key's text, until their objects are seen.
    saved_uids: BTreeMap<String, String>,
    /// The uids changed since the file was last written.
    uids_unsaved: bool,
}

/// The file of uids in the state directory.
const UIDS_FILE: &str = "uids.json";

impl Directory {
    /// Reads manifests from `manifests`; keeps generated keys under `state_dir/keys`, and
    /// the uids it gives in `state_dir/uids.json`.
    pub fn new(manifests: impl Into<PathBuf>, state_dir: &Path) -> std::io::Result<Self> {
        let uids_file = state_dir.join(UIDS_FILE);
        // A missing or unreadable file gives new uids, as a first start does.
        let saved_uids: BTreeMap<String, String> = fs::read(&uids_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Self {
            manifests: manifests.into(),
            keys: KeyStore::open(state_dir.join("keys"))?,
            files: BTreeMap::new(),
            generated: BTreeMap::new(),
            certs: device_certs::DeviceCerts::new(state_dir),
            uids: BTreeMap::new(),
            uids_file,
            saved_uids,
            uids_unsaved: false,
        })
    }

    /// Writes the uids when they changed; a failed write is tried again after the next scan.
    fn save_uids(&mut self) {
        if !self.uids_unsaved {
            return;
        }
        let now: BTreeMap<String, String> = self
            .uids
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let tmp = self.uids_file.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&now)
            .map_err(std::io::Error::other)
            .and_then(|text| private_file(&tmp)?.write_all(&text))
            .and_then(|()| fs::rename(&tmp, &self.uids_file));
        match written {
            Ok(()) => self.uids_unsaved = false,
            Err(e) => tracing::warn!(
                error = %e,
                file = %self.uids_file.display(),
                "could not save the uids of tenants and channels; retrying after the next scan"
            ),
        }
    }

    /// The key store, for `fleetward credentials`.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// A device CA or thing certificate Secret this directory feeds from the state directory
    /// (no manifest declares it), if any.
    pub fn fed_secret(&self, key: &ObjectKey) -> Option<&SecretData> {
        self.certs.fed(key)
    }

    /// Every object the manifests declare (the last good version of each file), in file order.
    pub fn declared(&self) -> impl Iterator<Item = &Resource> {
        self.files.values().flat_map(|f| f.objects.values())
    }

    /// The manifest directory.
    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    /// Re-reads every changed file and applies the difference to `index`.
    pub fn scan(&mut self, index: &mut Index) -> ScanReport {
        let mut report = ScanReport::default();
        let found = match manifest_files(&self.manifests) {
            Ok(found) => found,
            Err(e) => {
                report.errors.push(FileError {
                    file: self.manifests.clone(),
                    message: format!("cannot list the manifest directory: {e}"),
                });
                return report;
            }
        };
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| !found.contains(*f))
            .cloned()
            .collect();
        for file in gone {
            report.changed_files += 1;
            if let Some(state) = self.files.remove(&file) {
                self.replace(index, state.objects, BTreeMap::new());
            }
        }
        for file in found {
            self.scan_file(index, &file, &mut report);
        }
        self.ensure_keys(index, &mut report);
        let declared = self.files.values().flat_map(|f| f.objects.values());
        self.certs.feed(declared, index, &mut report);
        // Only now: an object moved between two files within one scan keeps its uid.
        let declared: BTreeSet<&ObjectKey> =
            self.files.values().flat_map(|f| f.objects.keys()).collect();
        let before = self.uids.len();
        self.uids.retain(|key, _| declared.contains(key));
        // Gone objects, and saved ones no manifest declares any more, leave the file too.
        self.uids_unsaved |= self.uids.len() != before || !self.saved_uids.is_empty();
        self.saved_uids.clear();
        self.save_uids();
        report
    }

    /// Gives a Tenant or a Channel declared without a `metadata.uid` the one it was given
    /// before, or a new one the first time it is seen.
    fn identify(&mut self, key: &ObjectKey, object: &mut Resource) {
        let meta = match object {
            Resource::Tenant(t) => &mut t.metadata,
            Resource::Channel(c) => &mut c.metadata,
            _ => return,
        };
        if meta.uid.as_deref().is_some_and(|u| !u.is_empty()) {
            return;
        }
        let (saved, unsaved) = (&mut self.saved_uids, &mut self.uids_unsaved);
        let uid = self.uids.entry(key.clone()).or_insert_with(|| {
            saved.remove(&key.to_string()).unwrap_or_else(|| {
                *unsaved = true;
                new_uid()
            })
        });
        meta.uid = Some(uid.clone());
    }

    fn scan_file(&mut self, index: &mut Index, file: &Path, report: &mut ScanReport) {
        let bytes = match fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                report.errors.push(FileError {
                    file: file.to_owned(),
                    message: format!("cannot read it: {e}"),
                });
                return;
            }
        };
        let digest = KeyDigest::of(&bytes);
        if self.files.get(file).is_some_and(|s| s.digest == digest) {
            return;
        }
        report.changed_files += 1;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                report.errors.push(FileError {
                    file: file.to_owned(),
                    message: "not UTF-8 text; the last good version stays applied".into(),
                });
                return;
            }
        };
        let mut objects = BTreeMap::new();
        let mut errors = Vec::new();
        let mut admitted = BTreeMap::new();
        let docs = manifest::read_admitted(&text, |doc| {
            admit(doc, &mut admitted, |key| self.last_admitted(file, key))
        });
        for doc in docs {
            match doc {
                Ok(Document::Object(mut o)) => {
                    if let Some(key) = o.key() {
                        self.identify(&key, &mut o);
                        device_certs::trust_issuer_locally(&mut o);
                        objects.insert(key, *o);
                    }
                }
                Ok(Document::Skipped { .. }) => {}
                Err(e) => errors.push(FileError {
                    file: file.to_owned(),
                    message: format!("{e}; the last good version of this file stays applied"),
                }),
            }
        }
        if !errors.is_empty() {
            // A broken edit keeps the last good state of the whole file.
            report.errors.extend(errors);
            return;
        }
        let old = self
            .files
            .insert(
                file.to_owned(),
                FileState {
                    digest,
                    objects: objects.clone(),
                    admitted,
                },
            )
            .map(|s| s.objects)
            .unwrap_or_default();
        self.replace(index, old, objects);
    }

    /// Deletes what `old` had and `new` lacks, and applies `new`.
    fn replace(
        &mut self,
        index: &mut Index,
        old: BTreeMap<ObjectKey, Resource>,
        new: BTreeMap<ObjectKey, Resource>,
    ) {
        for key in old.keys().filter(|k| !new.contains_key(*k)) {
            match self.declared_elsewhere(key) {
                Some(other) => index.apply(other.clone()),
                None => index.delete(key),
            }
        }
        for object in new.into_values() {
            index.apply(object);
        }
    }

    /// The document last admitted under `key`: from `file` if it held it, else from any file.
    fn last_admitted(&self, file: &Path, key: &str) -> Option<&Value> {
        self.files
            .get(file)
            .and_then(|f| f.admitted.get(key))
            .or_else(|| self.files.values().find_map(|f| f.admitted.get(key)))
    }

    /// The object another file declares under the same key, if any.
    fn declared_elsewhere(&self, key: &ObjectKey) -> Option<&Resource> {
        self.files.values().find_map(|f| f.objects.get(key))
    }

    /// Gives every declared Thing whose Secret no manifest declares a key from the state
    /// directory, generating one the first time, as the operator does in a cluster.
    fn ensure_keys(&mut self, index: &mut Index, report: &mut ScanReport) {
        let declared: BTreeSet<ObjectKey> = self
            .files
            .values()
            .flat_map(|f| f.objects.keys())
            .filter(|k| k.kind == Kind::Secret)
            .cloned()
            .collect();
        let mut wanted = BTreeMap::new();
        for object in self.files.values().flat_map(|f| f.objects.values()) {
            let Resource::Thing(thing) = object else {
                continue;
            };
            let Some(ns) = thing.metadata.namespace.clone() else {
                continue;
            };
            let key = ObjectKey::namespaced(Kind::Secret, ns, thing.secret_name());
            if !declared.contains(&key) {
                wanted.insert(key, ());
            }
        }
        let stale: Vec<ObjectKey> = self
            .generated
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in stale {
            self.generated.remove(&key);
            if !declared.contains(&key) {
                index.delete(&key);
            }
        }
        for key in wanted.into_keys() {
            if self.generated.contains_key(&key) {
                continue;
            }
            match self.keys.get_or_create(&key.namespace, &key.name) {
                Ok((value, created)) => {
                    if created {
                        report.generated_keys.push(key.clone());
                    }
                    let secret = Resource::Secret(SecretData {
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                        entries: BTreeMap::from([("key".to_owned(), value.into_bytes())]),
                    });
                    index.apply(secret.clone());
                    self.generated.insert(key, secret);
                }
                Err(e) => report.errors.push(FileError {
                    file: self.keys.path(&key.namespace, &key.name),
                    message: format!("cannot keep a generated key: {e}"),
                }),
            }
        }
    }
}

/// A new random uid in the form Kubernetes gives them (a version 4 UUID).
/// Checks a Fleetward document as the API server would admit it (its CRD's schema, defaults and
/// CEL rules, an edit as an update of `old(key)`), and returns it with its defaults applied,
/// remembered in `admitted`. Other kinds (a Secret, a Namespace) pass as they are.
fn admit<'a>(
    doc: Value,
    admitted: &mut BTreeMap<String, Value>,
    old: impl FnOnce(&str) -> Option<&'a Value>,
) -> Result<Value, String> {
    let text = |field: &str| doc[field].as_str().unwrap_or_default();
    let Some(crd) = validate::crd_for(text("apiVersion"), text("kind")) else {
        return Ok(doc);
    };
    let key = admission_key(&doc);
    match validate::admit(crd, &doc, old(&key)) {
        Ok(defaulted) => {
            admitted.insert(key, defaulted.clone());
            Ok(defaulted)
        }
        Err(mut messages) => {
            // The API server's note that the CEL rules were skipped adds nothing to a line
            // that names the error to correct.
            messages.retain(|m| m != validate::CEL_SKIPPED);
            Err(format!("{key}: {}", messages.join("; ")))
        }
    }
}

/// `Kind namespace/name` (`Kind name` for a Tenant), as refusals name an object.
fn admission_key(doc: &Value) -> String {
    let meta = &doc["metadata"];
    let name = meta["name"].as_str().unwrap_or("<no name>");
    let kind = doc["kind"].as_str().unwrap_or_default();
    match meta["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn new_uid() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Without the OS RNG: the time and a counter, unique within this process and, with
        // the time, across its restarts.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b[..8].copy_from_slice(&nanos.to_be_bytes());
        b[8..].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Every `*.yaml` / `*.yml` file under `dir`, recursively, sorted.
fn manifest_files(dir: &Path) -> std::io::Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml")
            {
                out.insert(path);
            }
        }
    }
    Ok(out)
}

/// Generated thing keys on local disk: `<dir>/<namespace>/<secret>.key`, mode 0600.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// Opens (creating, mode 0700) the key directory.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    /// Where the key of Secret `namespace/name` is kept.
    pub fn path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.join(namespace).join(format!("{name}.key"))
    }

    /// The stored key of Secret `namespace/name`, if any.
    pub fn get(&self, namespace: &str, name: &str) -> std::io::Result<Option<String>> {
        match fs::read_to_string(self.path(namespace, name)) {
            Ok(k) => Ok(Some(k.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stored key, or a new one written atomically with mode 0600; `true` when created.
    pub fn get_or_create(&self, namespace: &str, name: &str) -> std::io::Result<(String, bool)> {
        if let Some(key) = self.get(namespace, name)? {
            return Ok((key, false));
        }
        let key = generate_thing_key().map_err(std::io::Error::other)?;
        let path = self.path(namespace, name);
        let dir = path.parent().unwrap_or(&self.dir).to_owned();
        create_private_dir(&dir)?;
        let tmp = dir.join(format!(".{name}.key.tmp"));
        let mut f = private_file(&tmp)?;
        f.write_all(key.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok((key, true))
    }
}

/// Creates `dir` (and its parents) with mode 0700, and makes an existing one 0700.
#[cfg(unix)]
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Creates `dir` (and its parents).
#[cfg(not(unix))]
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

/// Creates or truncates `path` with mode 0600, also when a stale file had another mode (a file
/// renamed into place keeps it).
#[cfg(unix)]
pub fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Creates or truncates `path`.
#[cfg(not(unix))]
pub fn private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Reason;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fleetward-dir-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn examples(dir: &Path) {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        for f in ["acme.yaml", "globex.yaml"] {
            fs::copy(format!("{src}/{f}"), dir.join(f)).expect("copy example");
        }
    }

    fn thing(ns: &str, name: &str) -> ObjectKey {
        ObjectKey::namespaced(Kind::Thing, ns, name)
    }

    #[test]
    fn the_examples_are_all_ready_with_generated_keys_kept_private() {
        let root = tempdir("examples");
        let manifests = root.join("manifests");
        fs::create_dir_all(&manifests).expect("dir");
        examples(&manifests);
        let mut dir = Directory::new(&manifests, &root.join("state")).expect("open");
        let mut index = Index::new();
        let report = dir.scan(&mut index);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            report.generated_keys.len(),
            4,
            "acme/dashboard, acme/meter-1, globex/*"
        );
        index.commit();
        let not_ready: Vec<String> = index
            .objects()
            .filter(|k| !index.status(k).is_some_and(|s| s.readiness.ready))
            .map(ToString::to_string)
            .collect();
        assert!(not_ready.is_empty(), "{not_ready:?}");
        let path = dir.keys().path("acme", "dashboard-credentials");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("key file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second scan (or a restart) keeps the same keys.
        let before = dir
            .keys()
            .get("acme", "dashboard-credentials")
            .expect("read");
        let mut again = Directory::new(&manifests, &root.join("state")).expect("open");
        let report = again.scan(&mut Index::new());
        assert!(report.generated_keys.is_empty());
        assert_eq!(
            again
                .keys()
                .get("acme", "dashboard-credentials")
                .expect("read"),
            before
        );
        fs::remove_dir_all(root).ok();
    }

    fn yaml(value: &Value) -> String {
        serde_yaml::to_string(value).expect("a manifest serializes")
    }

    #[test]
    fn every_invalid_variant_is_refused_with_the_api_servers_message() {
        let root = tempdir("variants");
        let variants = fleetward_crds::testdata::invalid_variants();
        for v in &variants {
            fs::write(root.join(format!("{}.yaml", v.name)), yaml(&v.manifest)).expect("write");
        }
        let mut dir = Directory::new(&root, &root.join(".state")).expect("open");
        let mut index = Index::new();
        let errors = dir.scan(&mut index).errors;
        let mut failures = Vec::new();
        for v in &variants {
            let file = root.join(format!("{}.yaml", v.name));
            match errors.iter().find(|e| e.file == file) {
                None => failures.push(format!("{}: admitted", v.name)),
                Some(e) if !e.message.contains(v.expected_message) => failures.push(format!(
                    "{}: refused without \"{}\": {}",
                    v.name, v.expected_message, e.message
                )),
                Some(e) => assert!(e.message.starts_with("document 1: "), "{e}"),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert_eq!(
            errors.len(),
            variants.len(),
            "one refusal per file: {errors:?}"
        );
        assert_eq!(dir.declared().count(), 0, "no refused document is read");
        fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_misspelt_field_is_refused_as_the_api_server_words_it_and_the_last_version_stays() {
        let root = tempdir("misspelt");
        examples(&root);
        let mut dir = Directory::new(&root, &root.join(".state")).expect("open");
        let mut index = Index::new();
        assert!(dir.scan(&mut index).errors.is_empty());
        index.commit();
        let text = fs::read_to_string(root.join("acme.yaml")).expect("read");
        fs::write(
            root.join("acme.yaml"),
            text.replace("maxQos: 1", "maxQoS: 1"),
        )
        .expect("write");
        let errors = dir.scan(&mut index).errors;
        assert_eq!(errors.len(), 1, "{errors:?}");
        let message = &errors[0].message;
        assert!(
            message.starts_with(
                "document 6: Channel acme/telemetry: strict decoding error: unknown field \"spec.maxQoS\""
            ),
            "{message}"
        );
        assert!(message.ends_with("the last good version of this file stays applied"));
        assert_eq!(index.commit(), None, "nothing of the refused file changed");
        // Reported again on the next scan while the file stays as it is.
        assert_eq!(dir.scan(&mut index).errors, errors);
        fs::remove_dir_all(root).ok();
    }

    #[test]
    fn an_edit_is_checked_as_an_update_of_the_last_admitted_version() {
        let root = tempdir("updates");
        let mut dir = Directory::new(&root, &root.join(".state")).expect("open");
        let mut index = Index::new();
        for u in fleetward_crds::testdata::invalid_updates() {
            let file = root.join(format!("{}.yaml", u.name));
            fs::write(&file, yaml(&u.old)).expect("write");
            let errors = dir.scan(&mut index).errors;
            assert!(errors.is_empty(), "{}: the old object: {errors:?}", u.name);
            fs::write(&file, yaml(&u.new)).expect("write");
            let errors = dir.scan(&mut index).errors;
            assert!(
                errors
                    .iter()
                    .any(|e| e.message.contains(u.expected_message)),
                "{}: expected \"{}\", got {errors:?}",
                u.name,
                u.expected_message
            );
            fs::remove_file(&file).expect("rm");
            assert!(dir.scan(&mut index).errors.is_empty());
        }
        fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_file_that_is_not_yaml_or_not_utf8_is_refused_and_other_kinds_pass() {
        let root = tempdir("garbage");
        fs::write(root.join("garbage.yaml"), "kind: [unclosed\n").expect("write");
        fs::write(root.join("binary.yaml"), [0xff, 0xfe, 0x00]).expect("write");
        fs::write(
            root.join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: acme, labels: {x: y}}\n",
        )
        .expect("write");
        let mut dir = Directory::new(&root, &root.join(".state")).expect("open");
        let errors = dir.scan(&mut Index::new()).errors;
        let message = |name: &str| {
            errors
                .iter()
                .find(|e| e.file == root.join(name))
                .map(|e| e.message.clone())
                .unwrap_or_default()
        };
        assert!(message("garbage.yaml").starts_with("document 1: not valid YAML"));
        assert!(message("binary.yaml").starts_with("not UTF-8 text"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_file_and_names_document_and_field() {
        let root = tempdir("broken");
        examples(&root);
        let mut dir = Directory::new(&root, &root.join(".state")).expect("open");
        let mut index = Index::new();
        dir.scan(&mut index);
        index.commit();
        let text = fs::read_to_string(root.join("acme.yaml")).expect("read");
        fs::write(
            root.join("acme.yaml"),
            text.replace("maxQos: 1", "maxQos: high"),
        )
        .expect("write");
        let report = dir.scan(&mut index);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        let msg = report.errors[0].to_string();
        assert!(msg.contains("acme.yaml"), "{msg}");
        assert!(msg.contains("document"), "{msg}");
        assert!(msg.contains("spec.maxQos"), "{msg}");
        assert_eq!(index.commit(), None, "nothing of the broken file changed");
        assert!(index.snapshot().channel("acme", "telemetry").is_some());
        fs::remove_dir_all(root).ok();
    }

    #[test]
    fn removing_a_file_removes_its_objects() {
        let root = tempdir("remove");
        examples(&root);
        let mut dir = Directory::new(&root, &root.join(".state")).expect("open");
        let mut index = Index::new();
        dir.scan(&mut index);
        index.commit();
        assert!(index.snapshot().tenant("globex").is_some());
        fs::remove_file(root.join("globex.yaml")).expect("rm");
        let report = dir.scan(&mut index);
        assert_eq!(report.changed_files, 1);
        index.commit();
        assert!(index.snapshot().tenant("globex").is_none());
        assert!(index.status(&thing("globex", "sensor-1")).is_none());
        assert!(index.snapshot().tenant("acme").is_some());
        fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_namespace_without_tenant_reports_no_tenant() {
        let root = tempdir("notenant");
        fs::write(
            root.join("orphan.yaml"),
            "apiVersion: fleetward.io/v1alpha1\nkind: Channel\nmetadata: {name: c, namespace: nobody}\nspec: {}\n",
        )
        .expect("write");
        let mut dir = Directory::new(&root, &root.join(".state")).expect("open");
        let mut index = Index::new();
        dir.scan(&mut index);
        index.commit();
        let st = index
            .status(&ObjectKey::namespaced(Kind::Channel, "nobody", "c"))
            .expect("status");
        assert_eq!(st.readiness.reason, Reason::NoTenant);
        fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_tenant_and_a_channel_keep_their_uid_while_declared_and_get_a_new_one_once_gone() {
        let root = tempdir("uids");
        examples(&root);
        let mut dir = Directory::new(&root, &root.join(".state")).expect("open");
        let mut index = Index::new();
        dir.scan(&mut index);
        index.commit();
        let uids = |index: &Index| {
            let s = index.snapshot();
            let t = s.tenant("acme").map(|t| t.uid.clone()).unwrap_or_default();
            let c = s.channel("acme", "telemetry").map(|c| c.uid.clone());
            (t, c.unwrap_or_default())
        };
        let (tenant, channel) = uids(&index);
        assert_eq!(tenant.len(), 36, "{tenant:?}");
        assert_eq!(channel.len(), 36, "{channel:?}");
        assert_ne!(tenant, channel);
        let globex = index.snapshot().tenant("globex").map(|t| t.uid.clone());
        assert_ne!(globex.as_deref(), Some(tenant.as_str()));
        // An edit elsewhere in the file: the same objects, the same uids.
        let text = fs::read_to_string(root.join("acme.yaml")).expect("read");
        fs::write(root.join("acme.yaml"), format!("{text}\n# edited\n")).expect("write");
        assert_eq!(dir.scan(&mut index).changed_files, 1);
        assert_eq!(index.commit(), None, "nothing changed");
        assert_eq!(uids(&index), (tenant.clone(), channel.clone()));
        // Gone for one scan, then declared again: new uids.
        fs::remove_file(root.join("acme.yaml")).expect("rm");
        dir.scan(&mut index);
        index.commit();
        fs::write(root.join("acme.yaml"), &text).expect("write");
        dir.scan(&mut index);
        index.commit();
        let (t2, c2) = uids(&index);
        assert!(t2.len() == 36 && t2 != tenant, "{t2:?} after {tenant:?}");
        assert!(c2.len() == 36 && c2 != channel, "{c2:?} after {channel:?}");
        // A restart on the same state directory: the same uids (a channel's stored history
        // stays its own).
        let mut again = Directory::new(&root, &root.join(".state")).expect("open");
        let mut fresh = Index::new();
        again.scan(&mut fresh);
        fresh.commit();
        assert_eq!(uids(&fresh), (t2, c2));
        fs::remove_dir_all(root).ok();
    }
}
