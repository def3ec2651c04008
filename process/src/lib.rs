//! Process glue the operator and the dataplane share: the host name, the shutdown signals,
//! the token and TLS files they read at start, the wall clock in Unix units, and names as NATS
//! subject tokens.
//!
//! One copy here keeps the two binaries' behaviour the same; neither links the other.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod nats;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The host's name: `HOSTNAME`, else the kernel's; `None` when neither names it (in a pod, the
/// pod's name).
pub fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Waits for SIGTERM or SIGINT; returns its name. Where SIGTERM cannot be listened for, it
/// warns and waits for SIGINT alone.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// A token file's content without surrounding whitespace (a Secret mounted as a file often
/// ends in a newline). The caller says which token and flag in its error.
pub fn read_token_file(path: &Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// A file (a certificate, key or CA) that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct ReadFileError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    pub source: io::Error,
}

/// Reads a PEM file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ReadFileError> {
    std::fs::read(path).map_err(|source| ReadFileError {
        path: path.to_owned(),
        source,
    })
}

/// Now, in milliseconds since the Unix epoch (0 before it).
#[inline]
pub fn unix_millis() -> u64 {
    since_epoch().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, in nanoseconds since the Unix epoch (0 before it): per message, so inlined.
#[inline]
pub fn unix_nanos() -> u64 {
    since_epoch().map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[inline]
fn since_epoch() -> Option<std::time::Duration> {
    SystemTime::now().duration_since(UNIX_EPOCH).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_trimmed_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret\n").expect("write");
        assert_eq!(read_token_file(&path).expect("readable"), "s3cret");
        let missing = dir.path().join("missing");
        assert!(read_token_file(&missing).is_err());
    }

    #[test]
    fn an_unreadable_file_is_named_in_the_error() {
        let missing = Path::new("/nonexistent/fleetward/tls.crt");
        let e = read_file(missing).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/fleetward/tls.crt: "),
            "{e}"
        );
    }

    #[test]
    fn the_clocks_agree() {
        let ms = unix_millis();
        let ns = unix_nanos();
        assert!(ms > 1_600_000_000_000, "{ms}");
        assert!(ns / 1_000_000 >= ms, "{ns} {ms}");
    }
}
