//! The data set: a tenant, channels, Things with key Secrets and Connections, applied in
//! bulk by parallel `kubectl apply` streams, and the wait until the operator has enforced it.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(crate) fn tenant() -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Tenant",
        "metadata": {"name": NS}, "spec": {},
    })
}

pub(crate) fn channel(name: &str) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Channel",
        "metadata": {"name": name, "namespace": NS}, "spec": {},
    })
}

pub(crate) fn thing(name: &str) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Thing",
        "metadata": {"name": name, "namespace": NS}, "spec": {},
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

pub(crate) fn connection(name: &str, thing: &str, channel: &str, actions: &[&str]) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Connection",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"subject": {"kind": "Thing", "name": thing},
                 "channel": channel, "actions": actions},
    })
}

pub(crate) fn stream(objects: impl IntoIterator<Item = Value>) -> String {
    objects.into_iter().map(|v| format!("{v}\n")).collect()
}

/// The tenant, the channels, and the revocation phase's Things with their keys and grants.
pub(crate) fn head(p: &Params) -> String {
    let mut objects = vec![tenant(), channel(PROBE_CHANNEL), channel(REV_CHANNEL)];
    objects.extend((0..p.channels()).map(|j| channel(&format!("ch{j}"))));
    for (name, key) in [REV_PUBLISHER, REV_SUBSCRIBER, REV_CONTROL] {
        objects.push(key_secret(name, key));
        objects.push(thing(name));
    }
    objects.push(connection(
        "rev-pub-publishes",
        REV_PUBLISHER.0,
        REV_CHANNEL,
        &["publish"],
    ));
    objects.push(connection(
        "rev-ctl-subscribes",
        REV_CONTROL.0,
        REV_CHANNEL,
        &["subscribe"],
    ));
    objects.push(rev_grant());
    stream(objects)
}

pub(crate) fn rev_grant() -> Value {
    connection(REV_GRANT, REV_SUBSCRIBER.0, REV_CHANNEL, &["subscribe"])
}

/// The bulk: Things `t<i>` and grants `g<k>` (Thing `t<k mod things>` on channel
/// `ch<k / things>`, publish, subscribe or both), one stream per apply worker, each a share of
/// the Things, every Thing followed by its grants.
pub(crate) fn bulk_streams(p: &Params) -> Vec<String> {
    let mut streams = vec![String::new(); APPLY_WORKERS];
    for i in 0..p.things {
        let out = &mut streams[i % APPLY_WORKERS];
        let name = format!("t{i}");
        out.push_str(&format!("{}\n", thing(&name)));
        for j in 0..p.channels() {
            let k = i + j * p.things;
            if k >= p.grants {
                break;
            }
            let actions: &[&str] = match j % 3 {
                0 => &["publish"],
                1 => &["subscribe"],
                _ => &["publish", "subscribe"],
            };
            let grant = connection(&format!("g{k}"), &name, &format!("ch{j}"), actions);
            out.push_str(&format!("{grant}\n"));
        }
    }
    streams
}

/// Applies the data set with the operator and both dataplanes running, and waits until every
/// Thing and Connection shows `Ready` and `Enforced`.
pub(crate) fn build_data_set(kubectl: &Kubectl, op: &Operator, p: &Params) -> Result<()> {
    let admin = op.admin_addr;
    let streams = bulk_streams(p);
    let started = Instant::now();
    kubectl.apply(&head(p))?;
    kubectl.apply_parallel(&streams)?;
    let applied = started.elapsed();
    eprintln!(
        "bench: applied {} Things and {} Connections with {APPLY_WORKERS} kubectl in {applied:.1?}",
        p.total_things(),
        p.total_grants()
    );

    // The operator's counters say when to look; a list of the objects decides. Listing
    // ~100k objects loads the API server, so it is made only once the counters are there.
    let records = 1 + (p.channels() + 2) + p.total_things() + p.total_grants();
    wait_every(
        "the operator's snapshot holds the data set",
        SETUP_TIMEOUT,
        Duration::from_secs(1),
        || {
            Ok(
                sample(admin, "fleetward_operator_snapshot_resources")? >= records as f64
                    && metric(admin, "fleetward_operator_secrets_created_total")?
                        >= p.things as f64,
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
            Ok(enforced_count(kubectl, "things")? == p.total_things()
                && enforced_count(kubectl, "connections")? == p.total_grants())
        },
    )?;
    let enforced = started.elapsed();
    eprintln!(
        "bench: the operator's snapshot held all {records} records {indexed:.1?} after the \
         apply began; all Ready and Enforced (listed) after {enforced:.1?}; {} status writes",
        metric(admin, "fleetward_operator_status_writes_total")?
    );
    report("setup_things", p.total_things() as f64, "count");
    report("setup_grants", p.total_grants() as f64, "count");
    report("setup_apply", applied.as_secs_f64(), "s");
    report("setup_enforced", enforced.as_secs_f64(), "s");
    Ok(())
}

/// How many `kind` objects of the namespace show `Ready` and `Enforced` true, from the API
/// server's table (the printer columns, …, Ready, Enforced, Age), not the whole objects.
pub(crate) fn enforced_count(kubectl: &Kubectl, kind: &str) -> Result<usize> {
    let out = kubectl.run(&["get", kind, "-n", NS, "--no-headers"])?;
    Ok(out
        .lines()
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() >= 3 && f[f.len() - 3] == "True" && f[f.len() - 2] == "True"
        })
        .count())
}
