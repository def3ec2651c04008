//! Phase 2, revocation: how long a live subscription keeps receiving after its grant is deleted,
//! with mosquitto clients on both dataplanes.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Seconds since the Unix epoch, as mosquitto_sub's `%U` prints them.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn mqtt_args(
    cmd: &mut Command,
    dp: &Dataplane,
    (thing, key): (&str, &str),
    client_id: &str,
) {
    cmd.args(["-h", "127.0.0.1", "-p", &dp.mqtt_addr.port().to_string()])
        .args(["-V", "mqttv5", "-q", "0", "-i", client_id])
        .args(["-u", &format!("{NS}/{thing}"), "-P", key]);
}

/// A `mosquitto_sub -V mqttv5` on the revocation channel, recording when each message arrived:
/// its own receive time (`%U`), so the pipe in between adds nothing to the figure.
pub(crate) struct Subscriber {
    helper: Helper,
    arrivals: Arc<Mutex<Vec<f64>>>,
    reader: Option<JoinHandle<()>>,
}

impl Subscriber {
    fn start(dp: &Dataplane, thing: (&str, &str), client_id: &str, log_dir: &Path) -> Result<Self> {
        let mut cmd = Command::new("mosquitto_sub");
        mqtt_args(&mut cmd, dp, thing, client_id);
        cmd.args(["-t", &format!("m/{NS}/c/{REV_CHANNEL}/#"), "-F", "%U %p"]);
        let mut helper = Helper::spawn(client_id, cmd, log_dir, false)?;
        let stdout = helper
            .child
            .stdout
            .take()
            .context("mosquitto_sub's stdout is piped")?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let sink = arrivals.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.split_whitespace().next().and_then(|t| t.parse().ok()) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(at);
                }
            }
        });
        Ok(Self {
            helper,
            arrivals,
            reader: Some(reader),
        })
    }

    fn arrivals(&self) -> Vec<f64> {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends the client and returns every arrival.
    fn stop(mut self) -> Vec<f64> {
        let _ = self.helper.child.kill();
        let _ = self.helper.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.arrivals()
    }
}

/// `mosquitto_pub -l` fed a line every [`PUBLISH_INTERVAL`]: a steady stream from one session.
pub(crate) struct Publisher {
    helper: Helper,
    stop: Arc<AtomicBool>,
    feeder: Option<JoinHandle<Result<u64>>>,
}

impl Publisher {
    fn start(dp: &Dataplane, log_dir: &Path) -> Result<Self> {
        let mut cmd = Command::new("mosquitto_pub");
        mqtt_args(&mut cmd, dp, REV_PUBLISHER, "rev-publisher");
        cmd.args(["-t", &format!("m/{NS}/c/{REV_CHANNEL}/x"), "-l"]);
        let mut helper = Helper::spawn("rev-publisher", cmd, log_dir, true)?;
        let mut stdin = helper
            .child
            .stdin
            .take()
            .context("mosquitto_pub's stdin is piped")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let feeder = thread::spawn(move || -> Result<u64> {
            let mut sent = 0;
            let mut next = Instant::now();
            while !stopping.load(Ordering::Relaxed) {
                writeln!(stdin, "{sent}").context("feed mosquitto_pub")?;
                sent += 1;
                next += PUBLISH_INTERVAL;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(sent)
        });
        Ok(Self {
            helper,
            stop,
            feeder: Some(feeder),
        })
    }

    fn check(&mut self) -> Result<()> {
        ensure!(
            self.helper.running(),
            "{} exited; see its log",
            self.helper.name
        );
        Ok(())
    }

    /// Stops feeding it; how many lines it was fed.
    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.feeder.take().map(JoinHandle::join) {
            Some(Ok(sent)) => sent,
            Some(Err(_)) => bail!("the publisher's feeder panicked"),
            None => Ok(0),
        }
    }
}

/// Phase 2: a subscriber on dataplane B receives what a publisher on dataplane A publishes
/// every 5 ms (over NATS); its grant is deleted; timed from the start of `kubectl delete` to
/// the last message it receives. A control subscriber on B keeps its grant, to show the
/// publisher went on meanwhile.
pub(crate) fn revocation(
    kubectl: &Kubectl,
    a: &Dataplane,
    b: &Dataplane,
    p: &Params,
    log_dir: &Path,
) -> Result<()> {
    let control = Subscriber::start(b, REV_CONTROL, "rev-control", log_dir)?;
    let mut publisher = Publisher::start(a, log_dir)?;
    wait_every(
        "the control subscriber on B receives from A",
        STEP_TIMEOUT,
        POLL,
        || Ok(control.arrivals().len() >= 20),
    )?;
    let mut figures = Vec::new();
    for round in 0..p.revocations {
        if round > 0 {
            kubectl.apply(&rev_grant().to_string())?;
            kubectl.run(&[
                "wait",
                &format!("connection/{REV_GRANT}"),
                "-n",
                NS,
                "--for=condition=Enforced",
                "--timeout=120s",
            ])?;
        }
        figures.push(revoke_once(
            kubectl,
            b,
            round,
            &control,
            &mut publisher,
            log_dir,
        )?);
    }
    let sent = publisher.stop()?;
    let control = control.stop();
    eprintln!(
        "bench: the publisher sent {sent} messages, the control subscriber received {}",
        control.len()
    );
    report_latencies("revocation", &figures);
    Ok(())
}

/// One revocation round: a new subscriber on B receives, its grant is deleted, and the
/// deliveries stop; returns how long after the delete began its last message arrived, in ms.
fn revoke_once(
    kubectl: &Kubectl,
    b: &Dataplane,
    round: usize,
    control: &Subscriber,
    publisher: &mut Publisher,
    log_dir: &Path,
) -> Result<f64> {
    let mut sub = Subscriber::start(b, REV_SUBSCRIBER, &format!("rev-sub-{round}"), log_dir)?;
    wait_every(
        "the subscriber receives before its revocation",
        STEP_TIMEOUT,
        POLL,
        || Ok(sub.arrivals().len() >= 20),
    )?;
    let revoked_before = sample(b.admin_addr, REVOKED_SUBSCRIPTIONS)?;
    let deleted_at = unix_now();
    kubectl.run(&["delete", "connection", REV_GRANT, "-n", NS])?;
    wait_every(
        "dataplane-b drops the revoked subscription",
        STEP_TIMEOUT,
        POLL,
        || {
            Ok(
                sample(b.admin_addr, REVOKED_SUBSCRIPTIONS)? > revoked_before
                    || !sub.helper.running(),
            )
        },
    )?;
    let dropped_at = unix_now();
    thread::sleep(QUIET_WINDOW);
    publisher.check()?;
    let arrivals = sub.stop();
    let last = arrivals.iter().copied().fold(f64::MIN, f64::max);
    let late = arrivals
        .iter()
        .filter(|&&t| t > dropped_at + STRAGGLER_SLACK)
        .count();
    ensure!(
        late == 0,
        "round {round}: {late} messages arrived more than {STRAGGLER_SLACK} s after \
         dataplane-b dropped the subscription: deliveries did not stop"
    );
    let control_after = control
        .arrivals()
        .iter()
        .filter(|&&t| t > dropped_at + STRAGGLER_SLACK)
        .count();
    ensure!(
        control_after > 0,
        "round {round}: the control subscriber received nothing after the revocation, so \
         the publisher had stopped and the revocation shows nothing"
    );
    let took = (last - deleted_at).max(0.0) * 1000.0;
    eprintln!(
        "bench: revocation {round}: last message {took:.1} ms after the delete began; \
         subscription dropped (seen on the metric) after {:.1} ms; {} messages before",
        (dropped_at - deleted_at) * 1000.0,
        arrivals.len()
    );
    Ok(took)
}
