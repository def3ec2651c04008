//! The data set: tenants, channels, Things with key Secrets and Connections, applied in bulk by
//! parallel `kubectl apply` streams in steps, and the wait until the operator has enforced each.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(crate) fn namespace_object(ns: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
}

pub(crate) fn tenant(ns: &str) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": ns}, "spec": {},
    })
}

pub(crate) fn channel(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Channel",
        "metadata": {"name": name, "namespace": ns}, "spec": {},
    })
}

pub(crate) fn thing(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Thing",
        "metadata": {"name": name, "namespace": ns}, "spec": {},
    })
}

/// The Secret a Thing brings its own key in (the operator generates the bulk Things' keys).
pub(crate) fn key_secret(thing: &str, key: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{thing}-credentials"), "namespace": NS},
        "type": "Opaque", "stringData": {"key": key},
    })
}

pub(crate) fn connection(
    ns: &str,
    name: &str,
    thing: &str,
    channel: &str,
    actions: &[&str],
) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Connection",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"subject": {"kind": "Thing", "name": thing},
                 "channel": channel, "actions": actions},
    })
}

pub(crate) fn stream(objects: impl IntoIterator<Item = Value>) -> String {
    objects.into_iter().map(|v| format!("{v}\n")).collect()
}

/// Every tenant with its channels, and in [`NS`] the probe and revocation channels and the
/// revocation phase's Things with their keys and grants.
pub(crate) fn heads(p: &Params) -> String {
    let mut objects = vec![channel(NS, PROBE_CHANNEL), channel(NS, REV_CHANNEL)];
    for n in 0..p.namespaces {
        let ns = namespace(n);
        objects.push(tenant(&ns));
        objects.extend((0..p.channels()).map(|j| channel(&ns, &format!("ch{j}"))));
    }
    for (name, key) in [REV_PUBLISHER, REV_SUBSCRIBER, REV_CONTROL] {
        objects.push(key_secret(name, key));
        objects.push(thing(NS, name));
    }
    objects.push(connection(
        NS,
        "rev-pub-publishes",
        REV_PUBLISHER.0,
        REV_CHANNEL,
        &["publish"],
    ));
    objects.push(connection(
        NS,
        "rev-ctl-subscribes",
        REV_CONTROL.0,
        REV_CHANNEL,
        &["subscribe"],
    ));
    objects.push(rev_grant());
    stream(objects)
}

pub(crate) fn rev_grant() -> Value {
    connection(NS, REV_GRANT, REV_SUBSCRIBER.0, REV_CHANNEL, &["subscribe"])
}

/// The bulk Things `t<i>` for `i` in `things` of every namespace, each followed by its grants
/// `g<k>` (publish, subscribe or both; see [`Params::grants_of`]), one stream per apply
/// worker, each a share of the Things.
pub(crate) fn bulk_streams(p: &Params, things: Range<usize>) -> Vec<String> {
    let mut streams = vec![String::new(); APPLY_WORKERS];
    let mut next = 0;
    for n in 0..p.namespaces {
        let ns = namespace(n);
        for i in things.clone() {
            let out = &mut streams[next % APPLY_WORKERS];
            next += 1;
            let name = format!("t{i}");
            out.push_str(&format!("{}\n", thing(&ns, &name)));
            for (k, j) in p.grants_of(i) {
                let actions: &[&str] = match j % 3 {
                    0 => &["publish"],
                    1 => &["subscribe"],
                    _ => &["publish", "subscribe"],
                };
                let grant = connection(&ns, &format!("g{k}"), &name, &format!("ch{j}"), actions);
                out.push_str(&format!("{grant}\n"));
            }
        }
    }
    streams
}

/// What the data set holds at a point of the run: bulk Things `t0…t<things-1>` of every
/// namespace with their grants, the revocation phase's objects, and the probe Connections the
/// push phases left in [`NS`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InPlace {
    pub(crate) things: usize,
    pub(crate) probes: usize,
}

impl InPlace {
    pub(crate) fn things(&self, p: &Params) -> usize {
        self.things * p.namespaces + 3
    }

    pub(crate) fn grants(&self, p: &Params) -> usize {
        let per_namespace: usize = (0..self.things).map(|i| p.grants_of(i).count()).sum();
        per_namespace * p.namespaces + 3 + self.probes
    }

    /// Things and Connections: the "objects" issue 19's sizes count.
    pub(crate) fn objects(&self, p: &Params) -> usize {
        self.things(p) + self.grants(p)
    }

    /// Records of the operator's snapshot: tenants, channels, Things and Connections.
    fn records(&self, p: &Params) -> usize {
        p.namespaces * (1 + p.channels()) + 2 + self.objects(p)
    }
}

/// One step of building the data set: how long its apply took, and how long from the apply's
/// start until everything in place was listed `Ready` and `Enforced`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Growth {
    pub(crate) applied: Duration,
    enforced: Duration,
}

/// Applies what `target` holds beyond `before` (the namespaces and [`heads`] too when nothing
/// is in place yet) with the operator and both dataplanes running, and waits until every Thing
/// and Connection shows `Ready` and `Enforced`. With a `budget`, the bulk goes in tenths and no
/// tenth starts once the apply has taken that long; returns what is then in place.
pub(crate) fn grow(
    kubectl: &Kubectl,
    op: &Operator,
    p: &Params,
    before: InPlace,
    target: InPlace,
    budget: Option<Duration>,
) -> Result<(InPlace, Growth)> {
    let step = match budget {
        Some(_) => p.small_things(),
        None => target.things - before.things,
    };
    let started = Instant::now();
    if before.things == 0 {
        kubectl.apply(&stream(
            (0..p.namespaces).map(|n| namespace_object(&namespace(n))),
        ))?;
        kubectl.apply(&heads(p))?;
    }
    let mut things = before.things;
    while things < target.things && budget.is_none_or(|b| started.elapsed() < b) {
        let next = (things + step).min(target.things);
        kubectl.apply_parallel(&bulk_streams(p, things..next))?;
        things = next;
    }
    let applied = started.elapsed();
    let after = InPlace { things, ..target };
    eprintln!(
        "bench: applied Things t{}…t{} and their grants in {} namespace(s) with {APPLY_WORKERS} \
         kubectl in {applied:.1?}; {} Things and {} Connections in place",
        before.things,
        after.things.saturating_sub(1),
        p.namespaces,
        after.things(p),
        after.grants(p),
    );
    wait_enforced(kubectl, op.admin_addr, p, after, started)?;
    let enforced = started.elapsed();
    Ok((after, Growth { applied, enforced }))
}

/// Waits until the operator's snapshot holds what is in place, both dataplanes applied it, its
/// status writer settled, and a list shows every Thing and Connection `Ready` and `Enforced`.
fn wait_enforced(
    kubectl: &Kubectl,
    admin: SocketAddr,
    p: &Params,
    in_place: InPlace,
    started: Instant,
) -> Result<()> {
    // The operator's counters say when to look; a list of the objects decides. Listing
    // ~100k objects loads the API server, so it is made only once the counters are there.
    let records = in_place.records(p);
    wait_every(
        "the operator's snapshot holds the data set",
        SETUP_TIMEOUT,
        Duration::from_secs(1),
        || {
            Ok(
                sample(admin, "fleetward_operator_snapshot_resources")? >= records as f64
                    && metric(admin, "fleetward_operator_secrets_created_total")?
                        >= (in_place.things * p.namespaces) as f64,
            )
        },
    )?;
    let indexed = started.elapsed();
    wait_every(
        "both dataplanes applied the operator's snapshot",
        SETUP_TIMEOUT,
        Duration::from_millis(200),
        || dataplanes_synced(admin, &["dataplane-a", "dataplane-b"]),
    )?;
    settle(admin)?;
    wait_every(
        "every Thing and Connection Ready and Enforced",
        SETUP_TIMEOUT,
        Duration::from_secs(2),
        || {
            Ok(enforced_count(kubectl, "things")? == in_place.things(p)
                && enforced_count(kubectl, "connections")? == in_place.grants(p))
        },
    )?;
    eprintln!(
        "bench: the operator's snapshot held all {records} records {indexed:.1?} after the \
         apply began; all Ready and Enforced (listed) after {:.1?}; {} status writes",
        started.elapsed(),
        metric(admin, "fleetward_operator_status_writes_total")?
    );
    Ok(())
}

/// The setup figures of the data set in place, built in the steps `first` and `rest`: the
/// apply and the wait for `Enforced` are the sums of the steps' (the push phase between them
/// is not counted).
pub(crate) fn report_setup(p: &Params, in_place: InPlace, first: Growth, rest: Growth) {
    report("setup_namespaces", p.namespaces as f64, "count");
    report("setup_things", in_place.things(p) as f64, "count");
    report(
        "setup_grants",
        (in_place.grants(p) - in_place.probes) as f64,
        "count",
    );
    report(
        "setup_apply",
        (first.applied + rest.applied).as_secs_f64(),
        "s",
    );
    report(
        "setup_enforced",
        (first.enforced + rest.enforced).as_secs_f64(),
        "s",
    );
}

/// How many `kind` objects of every namespace show `Ready` and `Enforced` true, from the API
/// server's table (the printer columns, …, Ready, Enforced, Age), not the whole objects.
pub(crate) fn enforced_count(kubectl: &Kubectl, kind: &str) -> Result<usize> {
    let out = kubectl.run(&["get", kind, "--all-namespaces", "--no-headers"])?;
    Ok(out
        .lines()
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() >= 3 && f[f.len() - 3] == "True" && f[f.len() - 2] == "True"
        })
        .count())
}
