//! The log directory of one end-to-end test, printed and kept when the test fails.

use std::fs;
use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// The most of each log file printed on failure; the whole file stays on disk.
const PRINTED_TAIL_BYTES: u64 = 64 * 1024;

/// Where one test's processes write their logs.
///
/// Under `$FLEETWARD_E2E_LOGS` if set, else `<target dir>/e2e-logs`, as
/// `<test name>-<unix seconds>-<pid>`.
#[derive(Debug, Clone)]
pub struct LogDir {
    path: PathBuf,
}

impl LogDir {
    /// Creates the directory for the test `name`.
    pub fn create(name: &str) -> Result<Self> {
        let root = match std::env::var_os("FLEETWARD_E2E_LOGS") {
            Some(dir) => PathBuf::from(dir),
            None => crate::workspace::target_dir().join("e2e-logs"),
        };
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let path = root.join(format!("{name}-{stamp}-{}", std::process::id()));
        fs::create_dir_all(&path)
            .with_context(|| format!("create the log directory {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Prints the tail of every log file to stderr, where the test harness shows it.
    pub fn print(&self) {
        eprintln!("\n===== logs kept in {} =====", self.path.display());
        let mut files: Vec<PathBuf> = match fs::read_dir(&self.path) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect(),
            Err(err) => {
                eprintln!("cannot list {}: {err}", self.path.display());
                return;
            }
        };
        files.sort();
        for file in files {
            eprintln!("\n----- {} -----", file.display());
            match tail(&file, PRINTED_TAIL_BYTES) {
                Ok(text) => eprintln!("{text}"),
                Err(err) => eprintln!("cannot read it: {err:#}"),
            }
        }
        eprintln!("===== end of logs in {} =====\n", self.path.display());
    }

    fn remove(&self) {
        if std::env::var_os("FLEETWARD_E2E_KEEP_LOGS").is_some() {
            return;
        }
        // Best effort: a leftover log directory is harmless.
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn tail(path: &Path, max: u64) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or_default();
    let mut bytes = Vec::new();
    if len > max {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(len - max))
            .with_context(|| format!("seek in {}", path.display()))?;
        bytes.extend_from_slice(format!("[... first {} bytes cut ...]\n", len - max).as_bytes());
    }
    file.read_to_end(&mut bytes)
        .with_context(|| format!("read {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs one end-to-end test. `body` gets a fresh log directory and owns the
/// guards of everything it starts, so every process is stopped (on return or
/// while a panic unwinds) before the outcome is judged. On an error or a panic
/// the logs are printed and kept, and the test fails; on success they go.
pub fn run_test(name: &str, body: impl FnOnce(&LogDir) -> Result<()>) {
    let logs = match LogDir::create(name) {
        Ok(logs) => logs,
        Err(err) => panic!("{err:#}"),
    };
    match panic::catch_unwind(AssertUnwindSafe(|| body(&logs))) {
        Ok(Ok(())) => logs.remove(),
        Ok(Err(err)) => {
            logs.print();
            panic!(
                "{name} failed: {err:#}\n(logs kept in {})",
                logs.path().display()
            );
        }
        Err(payload) => {
            logs.print();
            panic::resume_unwind(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use anyhow::bail;

    use super::*;
    use crate::process::Process;

    #[test]
    fn a_failed_test_keeps_its_logs_and_a_passed_one_removes_them() {
        let mut kept = None;
        let failed = panic::catch_unwind(AssertUnwindSafe(|| {
            run_test("harness-failing", |logs| {
                kept = Some(logs.path().to_owned());
                fs::write(logs.path().join("server.log"), "what went wrong")?;
                bail!("this test fails on purpose")
            })
        }));
        assert!(failed.is_err(), "an Err from the body must fail the test");
        let kept = kept.expect("the body ran");
        assert_eq!(
            fs::read_to_string(kept.join("server.log")).ok().as_deref(),
            Some("what went wrong")
        );
        let _ = fs::remove_dir_all(&kept);

        let mut removed = None;
        run_test("harness-passing", |logs| {
            removed = Some(logs.path().to_owned());
            fs::write(logs.path().join("server.log"), "all fine")?;
            Ok(())
        });
        let removed = removed.expect("the body ran");
        if std::env::var_os("FLEETWARD_E2E_KEEP_LOGS").is_none() {
            assert!(!removed.exists(), "{} was not removed", removed.display());
        }
    }

    #[test]
    fn a_panicking_test_still_stops_its_processes() {
        let mut pid = None;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            run_test("harness-panicking", |logs| {
                let mut cmd = Command::new("sleep");
                cmd.arg("60");
                let p = Process::spawn("sleeper", cmd, logs.path())?;
                pid = Some(p.pid());
                panic!("this test panics on purpose");
            })
        }));
        assert!(outcome.is_err());
        let pid = pid.expect("the process started");
        let deadline = Instant::now() + Duration::from_secs(15);
        let gone = || {
            fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        };
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone(), "process {pid} outlived its panicking test");
    }
}
