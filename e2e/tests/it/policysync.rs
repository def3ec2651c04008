//! PolicySync through the harness: a test client against operator replicas on the real API server sees a full sync, deltas, a resume, a NACK handled, and `Enforced` from a dataplane on a replica that does not lead.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleetward_e2e::fleetward::{OPERATOR_NAMESPACE, Operator, http_get, start_operators};
use fleetward_e2e::policysync::{Resume, SyncClient};
use fleetward_e2e::workspace::examples_dir;
use fleetward_e2e::{ControlPlane, Kubectl, run_test, wait_until};
use serde_json::json;

/// The PolicySync token the replicas are started with.
const TOKEN: &str = "e2e-sync-token";
/// How long an update or a status may take.
const SETTLE: Duration = Duration::from_secs(30);

fn cluster(logs: &fleetward_e2e::LogDir) -> Result<(ControlPlane, Kubectl)> {
    let plane = ControlPlane::start(logs)?;
    let kubectl = plane.kubectl();
    plane.apply_crds()?;
    kubectl.run(&["create", "namespace", OPERATOR_NAMESPACE])?;
    for file in ["acme.yaml", "globex.yaml"] {
        let path = examples_dir().join(file);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        kubectl.apply(&text)?;
    }
    Ok((plane, kubectl))
}

fn thing(kubectl: &Kubectl, name: &str) -> Result<()> {
    let thing = json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Thing",
        "metadata": {"name": name, "namespace": "acme"}, "spec": {},
    });
    kubectl.apply(&thing.to_string())?;
    Ok(())
}

/// `kubectl wait --for=condition=<condition> thing/<name> -n acme`.
fn wait_thing(kubectl: &Kubectl, name: &str, condition: &str) -> Result<()> {
    kubectl.run(&[
        "wait",
        &format!("--for={condition}"),
        &format!("thing/{name}"),
        "-n",
        "acme",
        "--timeout=60s",
    ])?;
    Ok(())
}

/// `(status, reason)` of a Thing's `Enforced` condition.
fn enforced(kubectl: &Kubectl, name: &str) -> Result<(String, String)> {
    let obj = kubectl.get_json(&["thing", name, "-n", "acme"])?;
    let c = obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Enforced")
        .cloned()
        .unwrap_or_default();
    let s = |f: &str| c[f].as_str().unwrap_or_default().to_owned();
    Ok((s("status"), s("reason")))
}

fn wait_enforced(kubectl: &Kubectl, name: &str, status: &str, reason: &str) -> Result<()> {
    wait_until(
        &format!("Thing acme/{name} Enforced={status} ({reason})"),
        SETTLE,
        || Ok(enforced(kubectl, name)? == (status.to_owned(), reason.to_owned())),
    )?;
    Ok(())
}

/// The value of the sample `series` (name and labels, as exposed) on `/metrics`; 0 when absent.
fn sample(addr: SocketAddr, series: &str) -> Result<f64> {
    let (_, text) = http_get(addr, "/metrics")?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

fn is_leader(op: &Operator) -> Result<bool> {
    Ok(sample(op.admin_addr, "fleetward_operator_leader")? == 1.0)
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_client_gets_a_full_sync_then_deltas_and_resumes_from_its_version() {
    run_test("policysync-sync-and-resume", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        let mut ops = start_operators(1, plane.kubeconfig(), TOKEN, logs.path())?;
        wait_thing(&kubectl, "dashboard", "condition=Ready")?;
        wait_enforced(&kubectl, "dashboard", "False", "NoDataplanes")?;

        // Full sync: an empty client gets the whole snapshot.
        let mut client =
            SyncClient::connect(&ops[0].sync_url(), TOKEN, "dp-test", Resume::default())?;
        let first = client.next_update(SETTLE)?;
        client.ack(&first)?;
        let full = &client.seen()[0];
        ensure!(full.full, "the first update is a full snapshot: {full:?}");
        ensure!(
            full.things.contains("acme/dashboard") && full.things.contains("globex/sensor-1"),
            "the snapshot holds the examples' things: {:?}",
            full.things
        );
        wait_thing(&kubectl, "dashboard", "condition=Enforced")?;
        ensure!(
            sample(
                ops[0].admin_addr,
                "fleetward_operator_dataplane_applied_version{node=\"dp-test\"}"
            )? == first.version as f64,
            "the applied version is exported"
        );

        // Deltas: a new Thing arrives as a delta on the version the client has.
        let before = client.applied.version;
        thing(&kubectl, "probe")?;
        let updates = client.ack_until(SETTLE, |s| s.things.contains("acme/probe"))?;
        ensure!(
            updates.iter().all(|s| !s.full),
            "later changes come as deltas: {updates:?}"
        );
        ensure!(
            updates[0].from_version == before,
            "the first delta applies to the version the client has ({before}): {updates:?}"
        );
        wait_thing(&kubectl, "probe", "condition=Enforced")?;

        // The stream drops; a change happens meanwhile; the client resumes with deltas.
        let resume = client.disconnect();
        wait_until("the operator forgets dp-test", SETTLE, || {
            Ok(sample(ops[0].admin_addr, "fleetward_operator_dataplanes_connected")? == 0.0)
        })?;
        thing(&kubectl, "offline")?;
        wait_thing(&kubectl, "offline", "condition=Ready")?;
        wait_enforced(&kubectl, "offline", "False", "NoDataplanes")?;
        let mut client = SyncClient::connect(&ops[0].sync_url(), TOKEN, "dp-test", resume.clone())?;
        let updates = client.ack_until(SETTLE, |s| s.things.contains("acme/offline"))?;
        ensure!(
            !updates[0].full && updates[0].from_version == resume.version,
            "a resumed client gets the deltas since its version {}: {updates:?}",
            resume.version
        );
        wait_thing(&kubectl, "offline", "condition=Enforced")?;

        // The operator restarts: its index is new, so the client's version means nothing to it
        // and it sends a full snapshot, at a version above any it sent before.
        // SIGTERM with the client connected: the stream is ended, the process exits 0.
        let status = ops[0].process.stop()?;
        ensure!(
            status.success(),
            "SIGTERM ends the operator with 0: {status}"
        );
        ensure!(
            client.next_update(Duration::from_secs(5)).is_err(),
            "a draining operator ends the streams"
        );
        let resume = client.disconnect();
        ops.clear();
        let op = Operator::start("operator-0", plane.kubeconfig(), TOKEN, logs.path())?;
        let mut client = SyncClient::connect(&op.sync_url(), TOKEN, "dp-test", resume.clone())?;
        let update = client.next_update(SETTLE)?;
        client.ack(&update)?;
        let s = &client.seen()[0];
        ensure!(
            s.full && s.version > resume.version && s.lineage != resume.lineage,
            "after a restart: a full snapshot above version {}: {s:?}",
            resume.version
        );
        ensure!(s.things.contains("acme/offline") && s.things.contains("acme/probe"));
        wait_thing(&kubectl, "probe", "condition=Enforced")?;
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_nacked_update_is_recorded_exported_and_leaves_the_resource_not_enforced() {
    run_test("policysync-nack", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        let ops = start_operators(1, plane.kubeconfig(), TOKEN, logs.path())?;
        let admin = ops[0].admin_addr;
        wait_thing(&kubectl, "dashboard", "condition=Ready")?;
        let mut client =
            SyncClient::connect(&ops[0].sync_url(), TOKEN, "dp-picky", Resume::default())?;
        let first = client.next_update(SETTLE)?;
        client.ack(&first)?;
        wait_thing(&kubectl, "dashboard", "condition=Enforced")?;

        // The client refuses the update carrying a new Thing, and the full snapshot the
        // operator sends to recover.
        thing(&kubectl, "refused")?;
        let mut refused = 0;
        while refused < 2 {
            let update = client.next_update(SETTLE)?;
            let seen = client.seen();
            let last = seen.last().context("an update was seen")?;
            if last.things.contains("acme/refused") {
                client.nack(&update, "e2e: this dataplane refuses the update")?;
                refused += 1;
            } else {
                client.ack(&update)?;
            }
        }
        let seen = client.seen();
        ensure!(
            seen.last().is_some_and(|s| s.full),
            "a refused delta is followed by a full snapshot: {seen:?}"
        );
        let nacks = "fleetward_operator_dataplane_nacks{node=\"dp-picky\"}";
        wait_until("the NACKs are exported", SETTLE, || {
            Ok(sample(admin, nacks)? == 2.0)
        })?;
        ensure!(
            sample(
                admin,
                "fleetward_operator_dataplane_refusing{node=\"dp-picky\"}"
            )? == 1.0
        );
        wait_thing(&kubectl, "refused", "condition=Ready")?;
        wait_enforced(&kubectl, "refused", "False", "Pending")?;
        ensure!(
            enforced(&kubectl, "dashboard")?.0 == "True",
            "what the client applied before stays enforced"
        );

        // The operator keeps serving: another dataplane gets a full sync, and the picky one
        // takes the next update (a full snapshot, as its version is unknown after a NACK).
        let mut other =
            SyncClient::connect(&ops[0].sync_url(), TOKEN, "dp-other", Resume::default())?;
        let update = other.next_update(SETTLE)?;
        ensure!(other.seen()[0].full && other.seen()[0].things.contains("acme/refused"));
        other.ack(&update)?;
        other.auto_ack()?;
        let refused_at = client.seen().len();
        thing(&kubectl, "later")?;
        client.ack_until(SETTLE, |s| s.things.contains("acme/later"))?;
        ensure!(
            client.seen()[refused_at].full,
            "after a NACK the next update is a full snapshot: {:?}",
            client.seen()
        );
        wait_thing(&kubectl, "refused", "condition=Enforced")?;
        wait_thing(&kubectl, "later", "condition=Enforced")?;
        ensure!(
            sample(
                admin,
                "fleetward_operator_dataplane_refusing{node=\"dp-picky\"}"
            )? == 0.0
        );
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_dataplane_on_the_replica_without_the_lease_makes_resources_enforced() {
    run_test("policysync-enforced-across-replicas", |logs| {
        let (plane, kubectl) = cluster(logs)?;
        let ops = start_operators(2, plane.kubeconfig(), TOKEN, logs.path())?;
        wait_until("one replica leads", SETTLE, || {
            Ok(is_leader(&ops[0])? ^ is_leader(&ops[1])?)
        })?;
        let follower = if is_leader(&ops[0])? {
            &ops[1]
        } else {
            &ops[0]
        };
        wait_thing(&kubectl, "dashboard", "condition=Ready")?;
        wait_enforced(&kubectl, "dashboard", "False", "NoDataplanes")?;

        // A dataplane on the follower only.
        let mut client = SyncClient::connect(
            &follower.sync_url(),
            TOKEN,
            "dp-follower",
            Resume::default(),
        )?;
        client.auto_ack()?;
        wait_thing(&kubectl, "dashboard", "condition=Enforced")?;
        let reports = kubectl.get_json(&[
            "leases",
            "-n",
            OPERATOR_NAMESPACE,
            "-l",
            "fleetward.io/replica-of=fleetward-operator",
        ])?;
        let items = reports["items"].as_array().cloned().unwrap_or_default();
        ensure!(
            items.len() == 1 && items[0]["spec"]["holderIdentity"] == follower.id.as_str(),
            "only the follower, which has a dataplane, reports: {reports}"
        );
        let text = items[0]["metadata"]["annotations"]["fleetward.io/dataplanes"]
            .as_str()
            .unwrap_or_default();
        ensure!(text.contains("dp-follower"), "the report names it: {text}");

        // A new Thing: enforced once the follower's dataplane has applied it.
        thing(&kubectl, "late")?;
        wait_thing(&kubectl, "late", "condition=Enforced")?;

        // The dataplane goes: the follower withdraws its report and nothing is enforced.
        drop(client);
        wait_enforced(&kubectl, "dashboard", "False", "NoDataplanes")?;
        ensure!(
            !kubectl
                .run(&["get", "leases", "-n", OPERATOR_NAMESPACE, "-o", "name"])?
                .contains("dataplanes"),
            "the report Lease is deleted with the last dataplane"
        );
        Ok(())
    });
}
