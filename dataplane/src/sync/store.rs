//! The last-known-good snapshot on local disk: written atomically, encoded with the protocol.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetward_policy::Snapshot;
use fleetward_proto::convert::{snapshot_from_proto, snapshot_to_proto};
use fleetward_proto::pb;
use prost::Message;

/// The file under the state directory.
pub const SNAPSHOT_FILE: &str = "policy-snapshot.pb";

/// A snapshot with what the dataplane must remember about where it came from.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// The operator lineage its version counts in.
    pub lineage: String,
    /// When it was last updated from an operator, in ms since the Unix epoch.
    pub updated_unix_ms: u64,
}

/// Why the stored snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a stored snapshot.
    #[error(
        "{} is not a readable policy snapshot ({problem}); it is ignored until the operator \
         sends a new one, or delete it",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the stored snapshot; `None` when there is none.
pub fn load(dir: &Path) -> Result<Option<Stored>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let corrupt = |problem: String| StoreError::Corrupt {
        path: path.clone(),
        problem,
    };
    let stored =
        pb::StoredSnapshot::decode(bytes.as_slice()).map_err(|e| corrupt(e.to_string()))?;
    let snapshot = stored
        .snapshot
        .ok_or_else(|| corrupt("no snapshot in it".into()))?;
    let snapshot = snapshot_from_proto(snapshot).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(Stored {
        snapshot: Arc::new(snapshot),
        lineage: stored.lineage,
        updated_unix_ms: stored.updated_unix_ms,
    }))
}

/// Writes the snapshot so that a crash at any point leaves either the old file or the new one:
/// a temporary file, fsync, rename over the old one, fsync of the directory.
pub fn save(dir: &Path, stored: &Stored) -> Result<(), StoreError> {
    private_dir(dir).map_err(io(dir))?;
    let bytes = pb::StoredSnapshot {
        snapshot: Some(snapshot_to_proto(&stored.snapshot)),
        lineage: stored.lineage.clone(),
        updated_unix_ms: stored.updated_unix_ms,
    }
    .encode_to_vec();
    let tmp = dir.join(format!(".{SNAPSHOT_FILE}.tmp"));
    let path = dir.join(SNAPSHOT_FILE);
    let mut file = private_file(&tmp).map_err(io(&tmp))?;
    file.write_all(&bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Creates `dir` (and its parents) with mode 0700, and makes an existing one 0700: the
/// snapshot names every tenant and thing.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Creates or truncates `path` with mode 0600 (also when a stale one had another mode); the
/// rename keeps the mode, so the snapshot file is 0600 too.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    std::fs::File::create(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use fleetward_policy::{Resources, Tenant, TenantLimits};

    use super::*;

    pub(crate) fn stored(version: u64) -> Stored {
        let resources = Resources {
            tenants: vec![Tenant {
                provisioning: Default::default(),
                device_ca: Default::default(),
                engine: Default::default(),
                uid: String::new(),
                name: "acme".into(),
                suspended: false,
                limits: TenantLimits::default(),
                web: Default::default(),
            }],
            ..Resources::default()
        };
        Stored {
            snapshot: Arc::new(Snapshot::from_resources(version, resources).expect("valid")),
            lineage: "abc".into(),
            updated_unix_ms: 1234,
        }
    }

    #[test]
    fn a_saved_snapshot_loads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state");
        assert!(load(&state).expect("no file is fine").is_none());
        save(&state, &stored(3)).expect("saved");
        save(&state, &stored(4)).expect("saved again");
        let back = load(&state).expect("readable").expect("present");
        assert_eq!(*back.snapshot, *stored(4).snapshot);
        assert_eq!(back.lineage, "abc");
        assert_eq!(back.updated_unix_ms, 1234);
        let names: Vec<_> = std::fs::read_dir(&state)
            .expect("listable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [SNAPSHOT_FILE], "no temporary file left behind");
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"\xff\xff\xff garbage").expect("write");
        let err = load(dir.path()).expect_err("garbage");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(SNAPSHOT_FILE), "{err}");
    }
}
