//! Paths in the Fleetward workspace: its root, the cargo target directory, the binaries under test.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The root of the workspace (the directory holding `crds/`, `examples/`, `e2e/`).
pub fn root() -> &'static Path {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
    e2e.parent().unwrap_or(e2e)
}

/// The cargo target directory: `$CARGO_TARGET_DIR`, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        None => root().join("target"),
    }
}

/// The `examples/` directory a newcomer applies first.
pub fn examples_dir() -> PathBuf {
    root().join("examples")
}

/// A binary named by the environment variable `var`, which must exist.
pub fn binary_from_env(var: &str, how: &str) -> Result<PathBuf> {
    let Some(path) = std::env::var_os(var) else {
        bail!("set {var} to {how}");
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!("{var}={} is not a file; set it to {how}", path.display());
    }
    Ok(path)
}

/// The `fleetward` binary: `$FLEETWARD_BIN`, else `<target>/debug/fleetward`.
pub fn fleetward_binary() -> Result<PathBuf> {
    if std::env::var_os("FLEETWARD_BIN").is_some() {
        return binary_from_env(
            "FLEETWARD_BIN",
            "the fleetward binary (cargo build --bin fleetward)",
        );
    }
    let path = target_dir().join("debug").join("fleetward");
    if !path.is_file() {
        bail!(
            "{} does not exist; run `cargo build --bin fleetward` or set FLEETWARD_BIN",
            path.display()
        );
    }
    Ok(path)
}
