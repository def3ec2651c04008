//! Child processes that log to the test's log directory and die with their guard.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// A running child process, in its own process group, torn down (with everything
/// it started) when the guard is dropped, also when a test panics.
///
/// Stderr goes to `<logs>/<name>.log`; stdout goes there too, line by line, and
/// each line is also kept for [`Process::wait_for_line`].
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    stdout: Receiver<String>,
}

impl Process {
    /// Spawns `cmd` as `name`, logging into `log_dir`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let mut stderr_file =
            File::create(&log).with_context(|| format!("create the log file {}", log.display()))?;
        writeln!(stderr_file, "$ {cmd:?}").with_context(|| format!("write {}", log.display()))?;
        let stdout_file = stderr_file
            .try_clone()
            .with_context(|| format!("reopen {}", log.display()))?;

        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file))
            // Its own group, so a teardown also reaches whatever it started.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                // A backstop for a test process killed outright (e.g. a CI timeout):
                // the child hears about it instead of outliving the test.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;

        let (tx, rx) = mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .context("the child's stdout was not captured")?;
        thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || copy_lines(stdout, stdout_file, tx))
            .context("start the stdout reader thread")?;

        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            stdout: rx,
        })
    }

    /// The name the process was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file its output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The OS process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line for which `select` returns a value, and returns it.
    /// Fails when the process exits first or `timeout` passes.
    pub fn wait_for_line<T>(
        &mut self,
        timeout: Duration,
        mut select: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = select(&line) {
                        return Ok(found);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} printed no expected line within {timeout:?}; see {}",
                    self.name,
                    self.log.display()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5));
                    bail!(
                        "{} exited ({}) before printing the expected line; see {}",
                        self.name,
                        status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                        self.log.display()
                    )
                }
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM to the process group, waits up to the grace period, then
    /// SIGKILLs the group. Returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            signal_group(self.child.id(), libc::SIGKILL);
            return Ok(status);
        }
        signal_group(self.child.id(), libc::SIGTERM);
        let status = match self.wait_exit(GRACE) {
            Ok(status) => status,
            Err(_) => {
                signal_group(self.child.id(), libc::SIGKILL);
                self.child
                    .wait()
                    .with_context(|| format!("wait for {} after SIGKILL", self.name))?
            }
        };
        // Anything the process left behind in its group goes too.
        signal_group(self.child.id(), libc::SIGKILL);
        Ok(status)
    }

    /// Kills the process group at once (a crash, as a test may want to cause).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        signal_group(self.child.id(), libc::SIGKILL);
        self.child
            .wait()
            .with_context(|| format!("wait for {} after SIGKILL", self.name))
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("wait for {}", self.name))?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("e2e: could not stop {}: {err:#}", self.name);
        }
    }
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals a process group; it takes no pointers.
    // ESRCH (the group is already gone) is the expected outcome after an exit.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

fn copy_lines(stdout: impl std::io::Read, mut log: File, lines: mpsc::Sender<String>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        // Logging is best effort; losing a log line must not stop the reader.
        let _ = writeln!(log, "{line}");
        let _ = lines.send(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Running or sleeping; a zombie (killed, not yet reaped by init) counts as gone.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit(')')
                    .next()
                    .map(|rest| rest.trim_start().to_owned())
            })
            .is_some_and(|rest| !rest.starts_with('Z'))
    }

    #[test]
    fn reads_stdout_lines_and_logs_them() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo starting; echo 'port: 4222'; echo oops >&2; sleep 30",
        ]);
        let mut p = Process::spawn("printer", cmd, dir.path())?;
        let port = p.wait_for_line(Duration::from_secs(10), |l| {
            l.strip_prefix("port: ").map(str::to_owned)
        })?;
        assert_eq!(port, "4222");
        p.stop()?;
        let log = std::fs::read_to_string(dir.path().join("printer.log"))?;
        assert!(log.contains("starting"), "{log}");
        assert!(log.contains("oops"), "{log}");
        Ok(())
    }

    #[test]
    fn a_line_never_printed_is_an_error_once_the_process_exits() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo nothing useful"]);
        let mut p = Process::spawn("quitter", cmd, dir.path())?;
        let err = p
            .wait_for_line(Duration::from_secs(10), |l| (l == "ready").then_some(()))
            .expect_err("the process exits without printing ready");
        assert!(err.to_string().contains("exited"), "{err:#}");
        Ok(())
    }

    #[test]
    fn drop_kills_the_whole_process_group() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("sh");
        // The grandchild ignores SIGTERM, so only the group SIGKILL ends it.
        cmd.args([
            "-c",
            "sh -c 'trap \"\" TERM; echo grandchild $$; exec sleep 60' & wait",
        ]);
        let mut p = Process::spawn("parent", cmd, dir.path())?;
        let grandchild: i32 = p.wait_for_line(Duration::from_secs(10), |l| {
            l.strip_prefix("grandchild ")
                .and_then(|pid| pid.parse().ok())
        })?;
        assert!(alive(grandchild));
        drop(p);
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(grandchild) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !alive(grandchild),
            "grandchild {grandchild} survived teardown"
        );
        Ok(())
    }
}
