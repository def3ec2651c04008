//! Finding the newest release baseline in `compat/`, for the compatibility tests of the proto
//! and crds crates (each includes this file with `#[path]`).

use std::path::{Path, PathBuf};

/// A release directory's name as a version, for ordering: `0.10.0` is newer than `0.9.0`.
pub fn parse_version(name: &str) -> Option<(u64, u64, u64)> {
    let mut parts = name.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// The newest `compat/<version>/` that holds `entry` (a file or a directory): its version
/// and the entry's path.
pub fn newest_baseline(compat: &Path, entry: &str) -> Option<(String, PathBuf)> {
    std::fs::read_dir(compat)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = parse_version(&name)?;
            let path = e.path().join(entry);
            path.exists().then_some((version, name, path))
        })
        .max()
        .map(|(_, name, path)| (name, path))
}
