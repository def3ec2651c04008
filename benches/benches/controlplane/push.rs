//! Phase 1, push convergence: how long a new Connection takes to become `Enforced`, seen by a
//! `kubectl get --watch` of the probes; run after a tenth of the data set and after all of it.

#[allow(clippy::wildcard_imports)]
use super::*;

/// A probe Connection's change, as the watch saw it.
pub(crate) struct Seen {
    /// When the event was read from the watch.
    at: Instant,
    name: String,
    /// `Enforced=True` for the object's current generation.
    enforced: bool,
}

/// `$KUBECTL`, else `kubectl`, as the harness's [`Kubectl`] picks it.
pub(crate) fn kubectl_bin() -> PathBuf {
    std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

/// One `kubectl get --watch -o json` on the probe Connections, started once before the phase:
/// each change is then seen without a kubectl start-up (tens of ms) or a poll interval in the
/// figure. What remains is the API server's watch dispatch and kubectl printing one object,
/// a few ms on loopback.
pub(crate) fn watch_probes(kubectl: &Kubectl, log_dir: &Path) -> Result<(Helper, Receiver<Seen>)> {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig")
        .arg(kubectl.kubeconfig())
        .args(["get", "connections", "-n", NS, "-l"])
        .arg(format!("{PROBE_LABEL}=true"))
        .args(["--watch", "-o", "json"]);
    let mut helper = Helper::spawn("kubectl-watch-probes", cmd, log_dir, false)?;
    let stdout = helper
        .child
        .stdout
        .take()
        .context("the watch's stdout is piped")?;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("probe-watch".into())
        .spawn(move || {
            let objects = serde_json::Deserializer::from_reader(BufReader::new(stdout));
            for object in objects.into_iter::<Value>() {
                let at = Instant::now();
                let Ok(object) = object else { break };
                let seen = Seen {
                    at,
                    name: object["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    enforced: enforced_now(&object),
                };
                if tx.send(seen).is_err() {
                    break;
                }
            }
        })
        .context("start the watch reader")?;
    Ok((helper, rx))
}

/// Whether an object shows `Enforced=True` for its current generation.
pub(crate) fn enforced_now(object: &Value) -> bool {
    let generation = &object["metadata"]["generation"];
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["type"] == "Enforced"
                && c["status"] == "True"
                && (c["observedGeneration"].is_null() || &c["observedGeneration"] == generation)
        })
}

pub(crate) fn probe(name: &str, thing: &str) -> Value {
    let mut grant = connection(NS, name, thing, PROBE_CHANNEL, &["publish"]);
    grant["metadata"]["labels"] = json!({PROBE_LABEL: "true"});
    grant
}

/// Applies one probe Connection and returns (apply call, first sighting, `Enforced`), each
/// from just before the kubectl call started.
pub(crate) fn one_change(
    kubectl: &Kubectl,
    events: &Receiver<Seen>,
    name: &str,
    thing: &str,
) -> Result<(Duration, Duration, Duration)> {
    while events.try_recv().is_ok() {}
    let manifest = probe(name, thing).to_string();
    let started = Instant::now();
    kubectl.apply(&manifest)?;
    let applied = started.elapsed();
    let mut first_seen = None;
    loop {
        let left = (started + STEP_TIMEOUT).saturating_duration_since(Instant::now());
        let seen = events.recv_timeout(left).with_context(|| {
            format!("Connection {NS}/{name} not Enforced within {STEP_TIMEOUT:?} of its apply")
        })?;
        if seen.name != name {
            continue;
        }
        let at = seen.at.saturating_duration_since(started);
        let first = *first_seen.get_or_insert(at);
        if seen.enforced {
            return Ok((applied, first, at));
        }
    }
}

/// One run of the push phase: the data set in place, the bulk Things of [`NS`] its probes
/// grant, what the probes are named and the suffix of its figures' keys.
pub(crate) struct PushStage {
    in_place: InPlace,
    things: Range<usize>,
    probes: &'static str,
    suffix: &'static str,
}

impl PushStage {
    /// After a tenth of the data set: probes `probe-small-<k>`, figures `…_small`.
    pub(crate) fn small(in_place: InPlace) -> Self {
        Self {
            in_place,
            things: 0..in_place.things,
            probes: "probe-small",
            suffix: "_small",
        }
    }

    /// After the whole data set, with probes on the Things the small phase did not grant (so
    /// each probe is a new grant): probes `probe-<k>`, figures under their own names.
    pub(crate) fn full(small: InPlace, in_place: InPlace) -> Self {
        let start = if small.things < in_place.things {
            small.things
        } else {
            0
        };
        Self {
            in_place,
            things: start..in_place.things,
            probes: "probe",
            suffix: "",
        }
    }

    /// The Thing of probe `k` (the warm-up is probe 0).
    fn thing(&self, k: usize) -> String {
        format!("t{}", self.things.start + k % self.things.len())
    }
}

/// Phase 1: one new Connection at a time, from `kubectl apply` to `Enforced` (both dataplanes
/// applied it), through a watch, each a new grant of a bulk Thing in place in [`NS`]; returns
/// the p50 from the apply call to `Enforced`, in ms.
pub(crate) fn push_convergence(
    kubectl: &Kubectl,
    p: &Params,
    stage: &PushStage,
    log_dir: &Path,
) -> Result<f64> {
    let (_watch, events) = watch_probes(kubectl, log_dir)?;
    let probes = stage.probes;
    // The first change also proves the watch is established; it is not counted.
    one_change(
        kubectl,
        &events,
        &format!("{probes}-warmup"),
        &stage.thing(0),
    )?;
    let (mut total, mut after_seen, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..p.changes {
        let thing = stage.thing(k + 1);
        let (applied, first, enforced) =
            one_change(kubectl, &events, &format!("{probes}-{k}"), &thing)?;
        calls.push(ms(applied));
        total.push(ms(enforced));
        after_seen.push(ms(enforced - first));
        thread::sleep(Duration::from_millis(50));
    }
    let objects = stage.in_place.objects(p);
    eprintln!(
        "bench: push convergence over {} changes with {objects} Things and Connections in \
         place: kubectl apply call p50 {:.1} ms; first sighting of the new object to Enforced \
         p50 {:.1} ms, p99 {:.1} ms",
        p.changes,
        percentile(&calls, 0.5),
        percentile(&after_seen, 0.5),
        percentile(&after_seen, 0.99),
    );
    let key = |name: &str| format!("{name}{}", stage.suffix);
    report(&key("push_objects"), objects as f64, "count");
    for (q, name) in [(0.5, "p50"), (0.99, "p99"), (1.0, "max")] {
        report(
            &key(&format!("push_convergence_{name}")),
            percentile(&total, q),
            "ms",
        );
    }
    report(&key("push_apply_call_p50"), percentile(&calls, 0.5), "ms");
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        report(
            &key(&format!("push_created_to_enforced_{name}")),
            percentile(&after_seen, q),
            "ms",
        );
    }
    Ok(percentile(&total, 0.5))
}
