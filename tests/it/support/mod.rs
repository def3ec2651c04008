//! What the workspace's process tests share: the `fleetward` binary run as a user runs it,
//! a child process whose log lines arrive on a channel, and scratch dirs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The key `acme/sensor-1` brings in `examples/acme.yaml`.
pub const SENSOR_KEY: &str = "p5OR2zf95euo-SDM6r3HQBkSsWKpSI1eT71WQ5jOhP8";

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fleetward"))
}

/// A fresh scratch directory for one test of this process.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fleetward-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A child process whose output lines (one stream of them) arrive on a channel; killed on
/// drop.
pub struct Running {
    pub name: &'static str,
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Spawns `cmd` with the stream `stderr` or stdout piped into the line channel (and
    /// echoed to the test's output, prefixed with `name`).
    pub fn spawn(name: &'static str, mut cmd: Command, stderr: bool) -> Self {
        if stderr {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("{name} does not start ({e}); run scripts/install-tools.sh")
        });
        let stream: Box<dyn std::io::Read + Send> =
            match (stderr, child.stderr.take(), child.stdout.take()) {
                (true, Some(err), _) => Box::new(err),
                (false, _, Some(out)) => Box::new(out),
                _ => panic!("{name}: the stream was not piped"),
            };
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { name, child, lines }
    }

    /// Waits for a line containing `needle`, returning it.
    pub fn expect(&self, needle: &str, within: Duration) -> String {
        let [line] = self.expect_all([needle], within);
        line
    }

    /// Waits for one line containing each needle, in any order.
    pub fn expect_all<const N: usize>(&self, needles: [&str; N], within: Duration) -> [String; N] {
        let found = self.expect_each(&needles, within);
        std::array::from_fn(|i| found[i].clone())
    }

    /// Waits for one line containing each needle, in any order.
    pub fn expect_each(&self, needles: &[&str], within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut found: Vec<Option<String>> = vec![None; needles.len()];
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!(
                    "{} printed no lines with {needles:?} within {within:?}: {found:?}",
                    self.name
                );
            };
            for (slot, needle) in found.iter_mut().zip(needles) {
                if slot.is_none() && line.contains(needle) {
                    *slot = Some(line.clone());
                }
            }
        }
        found.into_iter().map(Option::unwrap_or_default).collect()
    }

    /// Lines that contain `needle` during `window`.
    pub fn count(&self, needle: &str, window: Duration) -> usize {
        let deadline = Instant::now() + window;
        let mut n = 0;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            n += usize::from(line.contains(needle));
        }
        n
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to run `fleetward start`: its directories, extra flags, and a command to run it under
/// (such as `prlimit --nofile=512:512`).
pub struct StartOptions {
    manifests: PathBuf,
    state: PathBuf,
    args: Vec<String>,
    wrapper: Vec<String>,
}

impl StartOptions {
    pub fn new(manifests: &Path, state: &Path) -> Self {
        Self {
            manifests: manifests.to_owned(),
            state: state.to_owned(),
            args: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// Adds flags after the ones the harness gives (`--max-connections=10`, ...).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the binary as the last argument of this command line.
    pub fn under<I: IntoIterator<Item = S>, S: Into<String>>(mut self, wrapper: I) -> Self {
        self.wrapper = wrapper.into_iter().map(Into::into).collect();
        self
    }

    /// Starts it on ports the kernel picks (read back from its log) and waits until its MQTT
    /// listener accepts. Picking a free port first and handing it over would race: another
    /// test's outgoing connections draw their local ports from the same range.
    pub fn run(self) -> Start {
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(bin()),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
        };
        cmd.args(["start", "--manifests"])
            .arg(&self.manifests)
            .arg("--state-dir")
            .arg(&self.state)
            .args(["--mqtt-listen=127.0.0.1:0", "--http-listen=127.0.0.1:0"])
            .arg("--admin-listen=127.0.0.1:0")
            .args(&self.args)
            .env("RUST_LOG", "info,rumqttd=warn")
            .env("NO_COLOR", "1");
        let process = Running::spawn("start", cmd, true);
        let mut needles = vec!["MQTT listening", "WebSocket streams listening", "admin API"];
        // The TLS listeners, when asked for, are logged among the others.
        let tls = [
            ("--mqtts-listen", "MQTT over TLS listening"),
            (
                "--https-listen",
                "HTTPS (the HTTP listener's API over TLS) listening",
            ),
        ];
        for (flag, needle) in tls {
            if self.args.iter().any(|a| a.starts_with(flag)) {
                needles.push(needle);
            }
        }
        let lines = process.expect_each(&needles, Duration::from_secs(20));
        let addr_of = |needle: &str| {
            let i = needles.iter().position(|n| *n == needle)?;
            Some(listening_addr(&lines[i]))
        };
        let (mqtt, http, admin) = (
            listening_addr(&lines[0]),
            listening_addr(&lines[1]),
            listening_addr(&lines[2]),
        );
        let start = Start {
            process,
            mqtt,
            mqtts: addr_of(tls[0].1),
            https: addr_of(tls[1].1),
            http,
            admin,
            state: self.state,
            manifests: self.manifests,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(mqtt).is_err() {
            assert!(Instant::now() < deadline, "nothing listens on {mqtt}");
            thread::sleep(Duration::from_millis(50));
        }
        start
    }
}

/// The address in a listener's log line (`... listening addr=127.0.0.1:1883`).
fn listening_addr(line: &str) -> SocketAddr {
    line.split_once("addr=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no listening address in {line:?}"))
}

/// A running `fleetward start`, its log on the line channel.
pub struct Start {
    pub process: Running,
    pub mqtt: SocketAddr,
    /// The MQTT over TLS listener, when `--mqtts-listen` was given.
    pub mqtts: Option<SocketAddr>,
    /// The HTTPS listener, when `--https-listen` was given.
    pub https: Option<SocketAddr>,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub state: PathBuf,
    pub manifests: PathBuf,
}

impl Start {
    /// `fleetward start` over `manifests`, keeping its state in `state`, with default flags.
    pub fn run(manifests: &Path, state: &Path) -> Self {
        StartOptions::new(manifests, state).run()
    }

    /// Waits for a log line containing `needle`, returning it.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        self.process.expect(needle, within)
    }

    /// Runs `fleetward <args>` over the same manifests and state.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--manifests")
            .arg(&self.manifests)
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .expect("fleetward runs")
    }

    /// The key of `tenant/thing`, as `fleetward credentials` prints it.
    pub fn key_of(&self, thing: &str) -> String {
        let out = self.cli(&["credentials", thing]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("text");
        text.lines().last().expect("a key line").to_owned()
    }

    /// The process id of the server (the wrapper, if any, execs it).
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The server's resident set, in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    /// Whether the server is still running.
    pub fn alive(&mut self) -> bool {
        self.process.alive()
    }
}

/// A `mosquitto_sub` (v5, verbose, with debug lines), subscribed once it returns.
pub fn mosquitto_sub(addr: SocketAddr, user: &str, key: &str, filter: &str) -> Running {
    // mosquitto_sub block-buffers a pipe; stdbuf makes it hand over every line.
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args([
            "-V", "mqttv5", "-u", user, "-P", key, "-t", filter, "-v", "-d",
        ]);
    let sub = Running::spawn("mosquitto_sub", cmd, false);
    sub.expect("received SUBACK", Duration::from_secs(10));
    sub
}
