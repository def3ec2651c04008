//! The manifests as the API server would admit them. Every document of a Fleetward kind is
//! checked with its CRD's schema, defaults and CEL rules (`fleetward_crds::validate`, the same
//! checks the crds crate tests against a real API server) before the operator's directory
//! source reads it.
//!
//! The directory source reads a private mirror of the manifest directory under the state
//! directory: a file whose every document is admitted is copied there with its defaults
//! applied; a file with a refused document keeps its last admitted copy there, so its last
//! good version keeps serving while the refusal is reported with file, document and field.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fleetward_crds::validate;
use fleetward_operator::directory::{FileError, create_private_dir, private_file};
use serde::Deserialize as _;
use serde_json::Value;

/// The mirror directories' name prefix in the state directory (hidden, so that a state
/// directory inside the manifest directory is not read as manifests).
const MIRROR_PREFIX: &str = ".admitted-";

/// What the last check of one file found.
struct FileCheck {
    /// The file's bytes at that check; an unchanged file is not checked again.
    bytes: Vec<u8>,
    /// Its refusals, reported again on every scan while the file stays as it is.
    errors: Vec<FileError>,
}

/// A manifest directory checked into a private mirror, removed when dropped.
pub struct Checked {
    manifests: PathBuf,
    mirror: PathBuf,
    files: BTreeMap<PathBuf, FileCheck>,
    /// The last admitted version of every object, by `apiVersion kind namespace/name`: the
    /// `old` of the CEL transition rules when a file changes one, as on an update in a cluster.
    admitted: BTreeMap<PathBuf, BTreeMap<String, Value>>,
}

impl Checked {
    /// A mirror of `manifests` in a new directory under `state_dir` (mirrors that processes
    /// which no longer run left behind are removed).
    pub fn open(manifests: &Path, state_dir: &Path) -> std::io::Result<Self> {
        remove_stale_mirrors(state_dir);
        // One per process and instance: `can-i` or `status` may run beside a `start`.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mirror = state_dir.join(format!(
            "{MIRROR_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&mirror);
        create_private_dir(&mirror)?;
        Ok(Self {
            manifests: manifests.to_owned(),
            mirror,
            files: BTreeMap::new(),
            admitted: BTreeMap::new(),
        })
    }

    /// The manifest directory.
    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    /// The mirror the directory source reads.
    pub fn mirror(&self) -> &Path {
        &self.mirror
    }

    /// `path` in the mirror as the manifest file it mirrors; other paths as they are.
    pub fn original(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.mirror) {
            Ok(relative) => self.manifests.join(relative),
            Err(_) => path.to_owned(),
        }
    }

    /// Checks every changed file into the mirror; the refusals of every file that has one.
    pub fn sync(&mut self) -> Vec<FileError> {
        let found = match manifest_files(&self.manifests) {
            Ok(found) => found,
            Err(e) => {
                return vec![FileError {
                    file: self.manifests.clone(),
                    message: format!("cannot list the manifest directory: {e}"),
                }];
            }
        };
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| !found.contains(*f))
            .cloned()
            .collect();
        for file in gone {
            self.files.remove(&file);
            self.admitted.remove(&file);
            if let Some(copy) = self.copy_of(&file) {
                let _ = fs::remove_file(copy);
            }
        }
        let mut errors = Vec::new();
        for file in found {
            errors.extend(self.sync_file(&file));
        }
        errors
    }

    /// Where `file` is mirrored.
    fn copy_of(&self, file: &Path) -> Option<PathBuf> {
        file.strip_prefix(&self.manifests)
            .ok()
            .map(|relative| self.mirror.join(relative))
    }

    fn sync_file(&mut self, file: &Path) -> Vec<FileError> {
        let refused = |message: String| FileError {
            file: file.to_owned(),
            message: format!("{message}; the last good version of this file stays applied"),
        };
        let bytes = match fs::read(file) {
            Ok(b) => b,
            Err(e) => return vec![refused(format!("cannot read it: {e}"))],
        };
        if let Some(last) = self.files.get(file).filter(|c| c.bytes == bytes) {
            return last.errors.clone();
        }
        let checked = match std::str::from_utf8(&bytes) {
            Ok(text) => self.check(file, text),
            Err(_) => Err(vec!["not UTF-8 text".to_owned()]),
        };
        // A copy that failed is tried again on the next scan; a refusal waits for an edit.
        let (errors, settled) = match checked {
            Ok((text, objects)) => match self.write_copy(file, &text) {
                Ok(()) => {
                    self.admitted.insert(file.to_owned(), objects);
                    (Vec::new(), true)
                }
                Err(e) => (
                    vec![FileError {
                        file: file.to_owned(),
                        message: format!(
                            "cannot copy it into {} (in the state directory): {e}; the last \
                             good version of this file stays applied until a copy works",
                            self.mirror.display()
                        ),
                    }],
                    false,
                ),
            },
            Err(messages) => (messages.into_iter().map(refused).collect(), true),
        };
        if settled {
            self.files.insert(
                file.to_owned(),
                FileCheck {
                    bytes,
                    errors: errors.clone(),
                },
            );
        }
        errors
    }

    /// The file's text as the API server would store its documents (defaults applied) and the
    /// admitted objects, or a refusal per refused document, each naming it.
    fn check(
        &self,
        file: &Path,
        text: &str,
    ) -> Result<(String, BTreeMap<String, Value>), Vec<String>> {
        let mut out = String::new();
        let mut objects = BTreeMap::new();
        let mut refusals = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document = i + 1;
            let value = match Value::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    // A syntax error ends the stream: the parser cannot find the next document.
                    refusals.push(format!("document {document}: not valid YAML: {e}"));
                    break;
                }
            };
            let text = |field: &str| value[field].as_str().unwrap_or_default();
            let admitted = match validate::crd_for(text("apiVersion"), text("kind")) {
                // Not a Fleetward kind (a Secret, a Namespace): the directory source reads it.
                None => value,
                Some(crd) => {
                    let key = object_key(&value);
                    let old = self.last_admitted(file, &key);
                    match validate::admit(&crd, &value, old) {
                        Ok(defaulted) => {
                            objects.insert(key, defaulted.clone());
                            defaulted
                        }
                        Err(mut messages) => {
                            // The API server's note that the CEL rules were skipped adds
                            // nothing to a line that names the error to correct.
                            messages.retain(|m| m != validate::CEL_SKIPPED);
                            refusals.push(format!(
                                "document {document}: {key}: {}",
                                messages.join("; ")
                            ));
                            continue;
                        }
                    }
                }
            };
            // Every document is kept, nulls too, so the mirror's document numbers are the file's.
            out.push_str("---\n");
            match serde_yaml::to_string(&admitted) {
                Ok(yaml) => out.push_str(&yaml),
                Err(e) => refusals.push(format!("document {document}: cannot be copied: {e}")),
            }
        }
        if refusals.is_empty() {
            Ok((out, objects))
        } else {
            Err(refusals)
        }
    }

    /// The object last admitted under `key`: from `file` if it held it, else from any file.
    fn last_admitted(&self, file: &Path, key: &str) -> Option<&Value> {
        self.admitted
            .get(file)
            .and_then(|o| o.get(key))
            .or_else(|| self.admitted.values().find_map(|o| o.get(key)))
    }

    /// Writes `text` as the mirror of `file`, atomically, when it differs from the copy there.
    fn write_copy(&self, file: &Path, text: &str) -> std::io::Result<()> {
        let Some(copy) = self.copy_of(file) else {
            return Ok(());
        };
        if fs::read(&copy).is_ok_and(|b| b == text.as_bytes()) {
            return Ok(());
        }
        let dir = copy.parent().unwrap_or(&self.mirror).to_owned();
        create_private_dir(&dir)?;
        // Hidden, so that the directory source never reads a half-written copy.
        let tmp = dir.join(".copy.tmp");
        let mut f = private_file(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        fs::rename(&tmp, &copy)
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.mirror);
    }
}

/// `Kind namespace/name` (or `Kind name` for a Tenant), as messages name an object; also the
/// key of the last admitted versions.
fn object_key(value: &Value) -> String {
    let meta = &value["metadata"];
    let name = meta["name"].as_str().unwrap_or("<no name>");
    let kind = value["kind"].as_str().unwrap_or_default();
    match meta["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Removes the mirrors of processes that no longer run (killed before they could).
fn remove_stale_mirrors(state_dir: &Path) {
    let Ok(entries) = fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(MIRROR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !crate::local::process_alive(pid)
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Every `*.yaml` / `*.yml` file under `dir`, recursively, skipping hidden names, as the
/// directory source lists them.
fn manifest_files(dir: &Path) -> std::io::Result<std::collections::BTreeSet<PathBuf>> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with('.') {
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

#[cfg(test)]
mod tests {
    use super::*;
    use fleetward_crds::testdata::{invalid_updates, invalid_variants};

    fn yaml(value: &Value) -> String {
        serde_yaml::to_string(value).expect("a manifest serializes")
    }

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().expect("temp dir");
        let manifests = root.path().join("manifests");
        let state = root.path().join("state");
        fs::create_dir_all(&manifests).expect("manifests dir");
        fs::create_dir_all(&state).expect("state dir");
        (root, manifests, state)
    }

    #[test]
    fn every_invalid_variant_is_refused_with_the_api_servers_message() {
        let (_root, manifests, state) = dirs();
        let variants = invalid_variants();
        for v in &variants {
            fs::write(
                manifests.join(format!("{}.yaml", v.name)),
                yaml(&v.manifest),
            )
            .expect("write");
        }
        let mut checked = Checked::open(&manifests, &state).expect("open");
        let errors = checked.sync();
        let mut failures = Vec::new();
        for v in &variants {
            let file = manifests.join(format!("{}.yaml", v.name));
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
        let mirrored = fs::read_dir(checked.mirror()).expect("mirror").count();
        assert_eq!(mirrored, 0, "no refused file is mirrored");
    }

    #[test]
    fn a_refused_edit_keeps_the_last_admitted_copy_with_its_defaults() {
        let (_root, manifests, state) = dirs();
        let file = manifests.join("acme.yaml");
        let good = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/acme.yaml"))
            .expect("example");
        fs::write(&file, &good).expect("write");
        let mut checked = Checked::open(&manifests, &state).expect("open");
        assert!(checked.sync().is_empty());
        let copy = checked.mirror().join("acme.yaml");
        let admitted = fs::read_to_string(&copy).expect("the file is mirrored");
        // A default of the schema the example leaves out (the User's `tokenEpoch: 0`).
        assert!(admitted.contains("tokenEpoch: 0"), "{admitted}");

        fs::write(&file, good.replace("maxQos: 1", "maxQoS: 1")).expect("write");
        let errors = checked.sync();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let message = &errors[0].message;
        assert!(
            message.starts_with("document 6: Channel acme/telemetry: strict decoding error: unknown field \"spec.maxQoS\""),
            "{message}"
        );
        assert!(message.ends_with("the last good version of this file stays applied"));
        assert_eq!(fs::read_to_string(&copy).expect("copy"), admitted);
        // Reported again while the file stays broken, without being read anew.
        assert_eq!(checked.sync(), errors);

        fs::remove_file(&file).expect("rm");
        assert!(checked.sync().is_empty());
        assert!(!copy.exists(), "a removed file's copy goes too");
        let mirror = checked.mirror().to_owned();
        drop(checked);
        assert!(!mirror.exists(), "the mirror is removed with it");
    }

    #[test]
    fn an_edit_is_checked_as_an_update_of_the_last_admitted_version() {
        let (_root, manifests, state) = dirs();
        let mut checked = Checked::open(&manifests, &state).expect("open");
        for u in invalid_updates() {
            let file = manifests.join(format!("{}.yaml", u.name));
            fs::write(&file, yaml(&u.old)).expect("write");
            assert!(checked.sync().is_empty(), "{}: the old object", u.name);
            fs::write(&file, yaml(&u.new)).expect("write");
            let errors = checked.sync();
            assert!(
                errors
                    .iter()
                    .any(|e| e.message.contains(u.expected_message)),
                "{}: expected \"{}\", got {errors:?}",
                u.name,
                u.expected_message
            );
            fs::remove_file(&file).expect("rm");
            assert!(checked.sync().is_empty());
        }
    }

    #[test]
    fn a_file_that_is_not_yaml_or_not_utf8_is_refused_and_other_kinds_pass() {
        let (_root, manifests, state) = dirs();
        fs::write(manifests.join("garbage.yaml"), "kind: [unclosed\n").expect("write");
        fs::write(manifests.join("binary.yaml"), [0xff, 0xfe, 0x00]).expect("write");
        fs::write(
            manifests.join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: acme, labels: {x: y}}\n",
        )
        .expect("write");
        let mut checked = Checked::open(&manifests, &state).expect("open");
        let errors = checked.sync();
        let message = |name: &str| {
            errors
                .iter()
                .find(|e| e.file == manifests.join(name))
                .map(|e| e.message.clone())
                .unwrap_or_default()
        };
        assert!(message("garbage.yaml").starts_with("document 1: not valid YAML"));
        assert!(message("binary.yaml").starts_with("not UTF-8 text"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(checked.mirror().join("ns.yaml").exists());
    }
}
