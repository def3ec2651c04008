//! The single-binary mode's policy source: a manifest directory, checked as the API server
//! would check it (the operator's directory source applies the CRDs' rules), read into the
//! operator's index, and the status report that `fleetward start` keeps and `fleetward status`
//! prints.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use fleetward_operator::directory::{Directory, FileError, ScanReport};
use fleetward_operator::index::{Facts, Index, Kind, ObjectKey};
use serde::{Deserialize, Serialize};

/// Where `start`, `status`, `credentials` and `can-i` read manifests and keep state, unless told.
pub const DEFAULT_MANIFESTS: &str = "manifests";
/// The default state directory (generated keys, the status report).
pub const DEFAULT_STATE_DIR: &str = ".fleetward";
/// The status report's file name in the state directory.
const STATUS_FILE: &str = "status.json";

/// A manifest directory read into an index.
pub struct Local {
    /// The directory source: it checks every file with the CRDs' rules and keeps the last good
    /// version of every file.
    pub directory: Directory,
    /// The index built from it.
    pub index: Index,
    /// What was wrong with the signing-key files at the last read, logged once.
    key_problems: Vec<String>,
    /// What channels with history hold, for the report.
    pub history: crate::history::Figures,
}

impl Local {
    /// Opens `manifests` with its state in `state_dir`; nothing is read yet.
    fn open(manifests: &Path, state_dir: &Path) -> anyhow::Result<Self> {
        if !manifests.is_dir() {
            anyhow::bail!(
                "the manifest directory {} does not exist or is not a directory; \
                 pass --manifests DIR (for example --manifests examples)",
                manifests.display()
            );
        }
        // Private: it holds keys and names every tenant and thing.
        fleetward_operator::directory::create_private_dir(state_dir).with_context(|| {
            format!(
                "creating the state directory {}; pass a writable --state-dir",
                state_dir.display()
            )
        })?;
        let directory = Directory::new(manifests, state_dir).with_context(|| {
            format!(
                "opening the key store under {}; pass a writable --state-dir",
                state_dir.display()
            )
        })?;
        Ok(Self {
            directory,
            index: Index::new(),
            key_problems: Vec::new(),
            history: crate::history::Figures::default(),
        })
    }

    /// Opens and reads the directory once, committing the result.
    pub fn load(manifests: &Path, state_dir: &Path) -> anyhow::Result<(Self, ScanReport)> {
        let mut local = Self::open(manifests, state_dir)?;
        let report = local.scan();
        local.read_signing_keys(state_dir)?;
        local.index.commit();
        Ok((local, report))
    }

    /// Checks the changed manifest files and applies the admitted ones to the index (not
    /// committed). A refused file keeps its last admitted version.
    pub fn scan(&mut self) -> ScanReport {
        self.directory.scan(&mut self.index)
    }

    /// The manifest directory.
    pub fn manifests(&self) -> &Path {
        self.directory.manifests()
    }

    /// Reads the token signing keys from the state directory (generating one the first time)
    /// into the index; they go out with the next commit when they changed.
    pub fn read_signing_keys(&mut self, state_dir: &Path) -> anyhow::Result<()> {
        let (keys, problems) = fleetward_operator::k8s::signing::local_keys(state_dir)
            .context("reading the token signing keys")?;
        // Read on every rescan; a problem is logged when it appears, not on every read.
        for p in problems.iter().filter(|p| !self.key_problems.contains(p)) {
            tracing::warn!(problem = %p, "a token signing key file is not usable");
        }
        self.key_problems = problems;
        self.index.set_signing_keys(keys);
        Ok(())
    }

    /// Each served tenant's namespace, by tenant name.
    pub fn tenant_namespaces(&self) -> std::collections::HashMap<String, String> {
        self.index
            .objects()
            .filter(|key| key.kind == Kind::Tenant)
            .filter_map(|key| match &*self.index.status(key)?.facts {
                Facts::Tenant {
                    namespace: Some(ns),
                    ..
                } => Some((key.name.clone(), ns.clone())),
                _ => None,
            })
            .collect()
    }

    /// The status of every object, sorted by kind, namespace and name.
    pub fn report(&self, errors: &[FileError]) -> StatusReport {
        let mut keys: Vec<&ObjectKey> = self.index.objects().collect();
        keys.sort();
        // A Channel's namespace is its tenant's (`spec.namespace`, else the tenant's name).
        let tenant_of: std::collections::HashMap<&str, &str> = keys
            .iter()
            .filter_map(|key| match &*self.index.status(key)?.facts {
                Facts::Tenant {
                    namespace: Some(ns),
                    ..
                } => Some((ns.as_str(), key.name.as_str())),
                _ => None,
            })
            .collect();
        let objects = keys
            .into_iter()
            .filter_map(|key| {
                let st = self.index.status(key)?;
                Some(ObjectStatus {
                    kind: key.kind.as_str().to_owned(),
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    ready: st.readiness.ready,
                    reason: st.readiness.reason.as_str().to_owned(),
                    message: st.readiness.message.to_string(),
                    history: (key.kind == Kind::Channel)
                        .then(|| tenant_of.get(key.namespace.as_str()))
                        .flatten()
                        .and_then(|tenant| self.history.of(tenant, &key.name)),
                })
            })
            .collect();
        let snapshot = self.index.snapshot();
        StatusReport {
            written_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            pid: std::process::id(),
            manifests: self.manifests().to_owned(),
            version: snapshot.version(),
            tenants: snapshot.tenants().count(),
            things: snapshot.things().count(),
            channels: snapshot.channels().count(),
            connections: snapshot.grants().count(),
            users: snapshot.users().count(),
            errors: errors
                .iter()
                .map(|e| FileProblem {
                    file: e.file.clone(),
                    message: e.message.clone(),
                })
                .collect(),
            objects,
        }
    }
}

/// One object's `Ready` condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus {
    /// The kind.
    pub kind: String,
    /// The namespace; empty for a Tenant.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// Whether it is Ready (and served).
    pub ready: bool,
    /// The condition's reason, as in a cluster.
    pub reason: String,
    /// The condition's message.
    pub message: String,
    /// A Channel's kept messages (`spec.history`), counted at most a minute ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::history::HistoryFigures>,
}

/// A manifest file that could not be (fully) applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileProblem {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, naming the document and field.
    pub message: String,
}

/// What `fleetward start` serves, written to the state directory on every change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// When it was written, seconds since the Unix epoch.
    pub written_at_unix: u64,
    /// The process that wrote it.
    pub pid: u32,
    /// The manifest directory.
    pub manifests: PathBuf,
    /// The policy snapshot version served.
    pub version: u64,
    /// Tenants served.
    pub tenants: usize,
    /// Things served.
    pub things: usize,
    /// Channels served.
    pub channels: usize,
    /// Connections served.
    pub connections: usize,
    /// Users served.
    pub users: usize,
    /// Files whose last edit was refused (their last good version stays applied).
    pub errors: Vec<FileProblem>,
    /// Every object's condition.
    pub objects: Vec<ObjectStatus>,
}

impl StatusReport {
    /// The one-line summary `start` logs.
    pub fn summary(&self) -> String {
        let not_ready = self.objects.iter().filter(|o| !o.ready).count();
        format!(
            "serving {}, {}, {}, {}, {} (policy version {}); {} not ready, {} with errors",
            count(self.tenants, "tenant"),
            count(self.things, "thing"),
            count(self.channels, "channel"),
            count(self.connections, "connection"),
            count(self.users, "user"),
            self.version,
            count(not_ready, "object"),
            count(self.errors.len(), "file")
        )
    }

    /// Writes the report atomically into `state_dir`.
    pub fn write(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = state_dir.join(STATUS_FILE);
        let tmp = state_dir.join(format!(".{STATUS_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).context("encoding the status report")?;
        fleetward_operator::directory::private_file(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &text))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// The report a running `start` left in `state_dir`, if any.
    pub fn read(state_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = state_dir.join(STATUS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading the status report {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Whether process `pid` still runs (always `true` where that cannot be told).
pub fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// `1 file`, `2 files`: the nouns of the summary all take an `s`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(count(1, "file"), "1 file");
        assert_eq!(count(0, "file"), "0 files");
        assert_eq!(count(2, "object"), "2 objects");
    }
}
