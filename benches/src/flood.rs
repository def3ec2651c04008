//! A flood of unauthenticated sockets held open against a broker while another scenario runs:
//! what a hostile client does to fill a broker's pending (before CONNECT) state.
//!
//! Each socket connects and then sends nothing, or with `partial` the first bytes of a CONNECT
//! that never completes. A socket the broker closes is opened again after a pause, so the
//! pressure holds for as long as the flood does; the pause doubles (up to 5 s) while the
//! broker keeps closing a socket within a second of its opening, so a broker that evicts
//! pending sockets is not answered with a reconnect storm that would load the generator more
//! than the broker. Every socket closes with a reset (zero linger) when the flood ends, so
//! runs in a row do not leave tens of thousands of local ports in TIME_WAIT.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Sockets connecting at once: the broker's listen backlog is not the thing measured.
const CONNECTING_AT_ONCE: usize = 64;

/// The pause before a closed socket is opened again, and the longest it grows to.
const REOPEN_PAUSE: Duration = Duration::from_millis(50);
const REOPEN_PAUSE_MAX: Duration = Duration::from_secs(5);

/// A socket held at least this long before the broker closed it is reopened after the
/// shortest pause again.
const HELD_LONG: Duration = Duration::from_secs(1);

/// A TCP connect that takes longer than this counts as failed (a broker whose backlog is
/// full leaves SYNs unanswered).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The start of a CONNECT (fixed header claiming 26 bytes, then the protocol name), for
/// `partial` floods: the broker has begun reading a CONNECT that never ends.
const PARTIAL_CONNECT: [u8; 8] = [0x10, 26, 0, 4, b'M', b'Q', b'T', b'T'];

/// Counters every flood socket updates.
#[derive(Default)]
struct Stats {
    held: AtomicUsize,
    /// Sockets that made their first connect attempt (successful or not).
    tried: AtomicUsize,
    closed_by_server: AtomicU64,
    reopened: AtomicU64,
    connect_errors: AtomicU64,
    /// The fewest held since [`Flood::ready`] returned.
    held_min: AtomicUsize,
    tracking: AtomicBool,
}

/// A running flood. Dropping it closes every socket.
pub struct Flood {
    sockets: usize,
    partial: bool,
    stats: Arc<Stats>,
    tasks: JoinSet<()>,
}

/// What a flood held, for the result line.
#[derive(Clone, Copy, Debug)]
pub struct FloodReport {
    /// Sockets the flood keeps open.
    pub sockets: usize,
    /// Sockets that send a partial CONNECT (else nothing).
    pub partial: bool,
    /// Open at the time of the report.
    pub held: usize,
    /// The fewest open at any time after the flood was first ready.
    pub held_min: usize,
    /// Sockets the broker closed (each then opened again).
    pub closed_by_server: u64,
    /// Sockets set to open again after the broker closed them.
    pub reopened: u64,
    /// TCP connects that failed or timed out.
    pub connect_errors: u64,
}

impl fmt::Display for FloodReport {
    /// `flood=… flood_partial=… flood_held=… flood_held_min=… flood_closed_by_server=…
    /// flood_reopened=… flood_connect_errors=…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flood={} flood_partial={} flood_held={} flood_held_min={} flood_closed_by_server={} flood_reopened={} flood_connect_errors={}",
            self.sockets,
            u8::from(self.partial),
            self.held,
            self.held_min,
            self.closed_by_server,
            self.reopened,
            self.connect_errors
        )
    }
}

impl Flood {
    /// Starts opening `sockets` sockets to `addr`, [`CONNECTING_AT_ONCE`] at a time.
    pub fn start(addr: SocketAddr, sockets: usize, partial: bool) -> Self {
        let stats = Arc::new(Stats {
            held_min: AtomicUsize::new(usize::MAX),
            ..Stats::default()
        });
        let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
        let mut tasks = JoinSet::new();
        for _ in 0..sockets {
            tasks.spawn(hold(addr, partial, stats.clone(), gate.clone()));
        }
        Self {
            sockets,
            partial,
            stats,
            tasks,
        }
    }

    /// Waits until every socket has made its first attempt (or `deadline` passes), then
    /// starts tracking the fewest held. The number held then.
    pub async fn ready(&self, deadline: Duration) -> usize {
        let until = Instant::now() + deadline;
        while self.stats.tried.load(Ordering::Relaxed) < self.sockets && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Closes that follow the last opening closely (a broker evicting its oldest pending
        // sockets) belong to the flood's steady state, not to its start.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let held = self.stats.held.load(Ordering::Relaxed);
        self.stats.held_min.store(held, Ordering::Relaxed);
        self.stats.tracking.store(true, Ordering::Relaxed);
        held
    }

    /// Sockets open now.
    pub fn held(&self) -> usize {
        self.stats.held.load(Ordering::Relaxed)
    }

    /// What the flood held so far.
    pub fn report(&self) -> FloodReport {
        let s = &self.stats;
        let held = s.held.load(Ordering::Relaxed);
        let held_min = s.held_min.load(Ordering::Relaxed);
        FloodReport {
            sockets: self.sockets,
            partial: self.partial,
            held,
            held_min: if held_min == usize::MAX {
                held
            } else {
                held_min
            },
            closed_by_server: s.closed_by_server.load(Ordering::Relaxed),
            reopened: s.reopened.load(Ordering::Relaxed),
            connect_errors: s.connect_errors.load(Ordering::Relaxed),
        }
    }

    /// Closes every socket.
    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

/// One flood socket, for as long as the flood runs: connect, hold until the broker closes
/// it, pause, again.
async fn hold(addr: SocketAddr, partial: bool, stats: Arc<Stats>, gate: Arc<Semaphore>) {
    let mut first = true;
    let mut pause = REOPEN_PAUSE;
    loop {
        let opened = match open(addr, partial, &gate).await {
            Ok(s) => Some(s),
            Err(e) => {
                note_connect_error(&e);
                stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if first {
            stats.tried.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        let Some(mut s) = opened else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REOPEN_PAUSE_MAX);
            continue;
        };
        stats.held.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        // Whatever the broker sends (a refusal) is read and dropped; the end of the stream
        // or an error is its close.
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        drop(s);
        let now = stats.held.fetch_sub(1, Ordering::Relaxed) - 1;
        if stats.tracking.load(Ordering::Relaxed) {
            stats.held_min.fetch_min(now, Ordering::Relaxed);
        }
        stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
        pause = if since.elapsed() >= HELD_LONG {
            REOPEN_PAUSE
        } else {
            (pause * 2).min(REOPEN_PAUSE_MAX)
        };
        tokio::time::sleep(pause).await;
        stats.reopened.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects one socket and sends what a flood socket sends.
async fn open(addr: SocketAddr, partial: bool, gate: &Semaphore) -> anyhow::Result<TcpStream> {
    let _permit = gate.acquire().await?;
    let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("no TCP connect to {addr} within {CONNECT_TIMEOUT:?}"))??;
    s.set_zero_linger()?;
    if partial {
        s.write_all(&PARTIAL_CONNECT).await?;
    }
    Ok(s)
}

/// Connect errors are counted, not printed one by one: a flood against a full backlog would
/// print thousands of lines. The first one is printed, to say what it was.
fn note_connect_error(e: &anyhow::Error) {
    static PRINTED: AtomicBool = AtomicBool::new(false);
    if !PRINTED.swap(true, Ordering::Relaxed) {
        eprintln!("flood: a connect failed (further failures are only counted): {e:#}");
    }
}

/// What holding a flood's sockets cost the broker.
#[derive(Debug)]
pub struct PendingResult {
    /// The broker's RSS before, in KiB.
    pub rss_before_kib: u64,
    /// The broker's RSS with the flood held and settled, in KiB.
    pub rss_after_kib: u64,
    /// Sockets open when the broker was weighed.
    pub held: usize,
    /// Seconds it took to open them all.
    pub open_secs: f64,
}

impl PendingResult {
    /// The broker's RSS per pending socket, in KiB.
    pub fn kib_per_pending(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.held.max(1) as f64
    }
}

/// Weighs the broker process `pid` before and after opening `sockets` flood sockets to
/// `addr`, letting it settle for `settle` each time; the flood keeps running.
pub async fn weigh(
    addr: SocketAddr,
    sockets: usize,
    partial: bool,
    pid: u32,
    settle: Duration,
) -> anyhow::Result<(PendingResult, Flood)> {
    tokio::time::sleep(settle).await;
    let rss_before_kib = crate::conns::rss_kib(pid)?;
    let started = Instant::now();
    let flood = Flood::start(addr, sockets, partial);
    flood.ready(ready_deadline(sockets)).await;
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after_kib = crate::conns::rss_kib(pid)?;
    let held = flood.held();
    anyhow::ensure!(
        held > 0,
        "the broker held none of the {sockets} sockets: nothing to weigh ({})",
        flood.report()
    );
    Ok((
        PendingResult {
            rss_before_kib,
            rss_after_kib,
            held,
            open_secs,
        },
        flood,
    ))
}

/// How long a flood of `sockets` may take to open: generous, as a loaded machine opens a
/// few thousand loopback connections a second.
pub fn ready_deadline(sockets: usize) -> Duration {
    Duration::from_secs(10) + Duration::from_millis(sockets as u64)
}

/// Raises this process's soft open-files limit to its hard limit; the hard limit. A flood
/// holds a descriptor per socket, far past the usual soft limit of 1,024.
pub fn raise_nofile_limit() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live `rlimit` it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the open-files limit");
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the live `rlimit` it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("raising the soft open-files limit to the hard limit");
        }
    }
    Ok(lim.rlim_max)
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A listener that accepts and, when told, closes everything it accepted.
    async fn listener() -> (SocketAddr, tokio::sync::mpsc::Sender<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("address");
        let (close, mut closing) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    a = l.accept() => held.push(a.expect("accept").0),
                    Some(()) = closing.recv() => held.clear(),
                }
            }
        });
        (addr, close)
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_flood_holds_its_sockets_and_reopens_those_the_server_closes() {
        let (addr, close) = listener().await;
        let flood = Flood::start(addr, 20, false);
        assert_eq!(flood.ready(Duration::from_secs(10)).await, 20);
        close.send(()).await.expect("the listener runs");
        until("the closes to be seen", || {
            flood.report().closed_by_server == 20
        })
        .await;
        until("every socket to be open again", || {
            flood.report().reopened == 20 && flood.held() == 20
        })
        .await;
        let r = flood.report();
        assert_eq!(r.held_min, 0, "the server closed all of them at once");
        assert_eq!(r.connect_errors, 0);
        assert!(
            r.to_string()
                .starts_with("flood=20 flood_partial=0 flood_held=20 ")
        );
        flood.stop();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connects_that_fail_are_counted() {
        // A port nothing listens on: bind, take the port, close.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let flood = Flood::start(addr, 3, true);
        assert_eq!(flood.ready(Duration::from_secs(10)).await, 0);
        assert!(flood.report().connect_errors >= 3);
        flood.stop();
    }
}
