//! The control plane itself: owner-reference cascades, namespace deletion and a restart really work.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleetward_e2e::{ControlPlane, Kubectl, run_test, wait_until};
use serde_json::{Value, json};

/// Collection of a known kind's dependents takes about a second; the margin is for a loaded machine.
const COLLECTION_TIMEOUT: Duration = Duration::from_secs(60);

fn uid(kubectl: &Kubectl, args: &[&str]) -> Result<String> {
    let obj = kubectl.get_json(args)?;
    obj["metadata"]["uid"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("kubectl get {} has no metadata.uid", args.join(" ")))
}

fn owned_secret(name: &str, namespace: &str, owner: Value) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner]},
        "stringData": {"key": "not-a-real-key"},
    })
    .to_string()
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn deleting_an_owner_collects_its_dependents_and_orphaning_keeps_them() {
    run_test("owner-reference-cascade", |logs| {
        // The CRDs are installed before the garbage collector starts, as the operator tests do.
        let plane = ControlPlane::start_with_crds(logs)?;
        let kubectl = plane.kubectl();

        // A built-in owner: ConfigMap -> Secret.
        kubectl.run(&["create", "configmap", "owner", "-n", "default"])?;
        let owner_uid = uid(&kubectl, &["configmap", "owner", "-n", "default"])?;
        let owner =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid});
        kubectl.apply(&owned_secret("dependent", "default", owner.clone()))?;
        kubectl.run(&["delete", "configmap", "owner", "-n", "default"])?;
        wait_until(
            "Secret dependent collected after its owner went",
            COLLECTION_TIMEOUT,
            || Ok(!kubectl.exists(&["secret", "dependent", "-n", "default"])?),
        )?;

        // --cascade=orphan: the dependent stays, and loses its owner reference.
        kubectl.run(&["create", "configmap", "keeper", "-n", "default"])?;
        let keeper_uid = uid(&kubectl, &["configmap", "keeper", "-n", "default"])?;
        let keeper =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": keeper_uid});
        kubectl.apply(&owned_secret("orphan", "default", keeper))?;
        kubectl.run(&[
            "delete",
            "configmap",
            "keeper",
            "-n",
            "default",
            "--cascade=orphan",
        ])?;
        wait_until(
            "Secret orphan released by its deleted owner",
            COLLECTION_TIMEOUT,
            || {
                let secret = kubectl.get_json(&["secret", "orphan", "-n", "default"])?;
                Ok(secret["metadata"]["ownerReferences"]
                    .as_array()
                    .is_none_or(Vec::is_empty))
            },
        )?;
        ensure!(
            kubectl.exists(&["secret", "orphan", "-n", "default"])?,
            "an orphaned dependent must not be collected"
        );

        // A Fleetward owner, as the operator sets it: Thing -> its credentials Secret.
        kubectl.run(&["create", "namespace", "acme"])?;
        kubectl.apply(
            &json!({
                "apiVersion": "fleetward.io/v1alpha1",
                "kind": "Thing",
                "metadata": {"name": "sensor-1", "namespace": "acme"},
                "spec": {},
            })
            .to_string(),
        )?;
        let thing_uid = uid(&kubectl, &["thing", "sensor-1", "-n", "acme"])?;
        let thing = json!({
            "apiVersion": "fleetward.io/v1alpha1",
            "kind": "Thing",
            "name": "sensor-1",
            "uid": thing_uid,
            "controller": true,
            "blockOwnerDeletion": true,
        });
        kubectl.apply(&owned_secret("sensor-1-credentials", "acme", thing))?;
        kubectl.run(&["delete", "thing", "sensor-1", "-n", "acme"])?;
        // The collector knows the kind from the start, so collection is prompt.
        let took = wait_until(
            "Secret sensor-1-credentials collected after its Thing went",
            Duration::from_secs(15),
            || Ok(!kubectl.exists(&["secret", "sensor-1-credentials", "-n", "acme"])?),
        )?;
        eprintln!("a Thing's Secret was collected {took:?} after the Thing was deleted");
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn deleting_a_namespace_removes_its_objects_and_completes() {
    run_test("namespace-deletion", |logs| {
        let plane = ControlPlane::start(logs)?;
        plane.apply_crds()?;
        let kubectl = plane.kubectl();
        kubectl.run(&["create", "namespace", "doomed"])?;
        kubectl.run(&["create", "configmap", "settings", "-n", "doomed"])?;
        kubectl.apply(
            &json!({
                "apiVersion": "fleetward.io/v1alpha1",
                "kind": "Channel",
                "metadata": {"name": "telemetry", "namespace": "doomed"},
                "spec": {},
            })
            .to_string(),
        )?;
        kubectl.run(&["delete", "namespace", "doomed", "--wait=false"])?;
        let took = wait_until("namespace doomed deleted", Duration::from_secs(120), || {
            Ok(!kubectl.exists(&["namespace", "doomed"])?)
        })?;
        eprintln!("namespace deletion completed in {took:?}");
        let left = kubectl.run(&["get", "channels,configmaps", "-n", "doomed", "-o", "name"])?;
        ensure!(
            left.trim().is_empty(),
            "objects left in the deleted namespace: {left}"
        );
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn a_restarted_control_plane_keeps_its_objects_and_address() {
    run_test("controlplane-restart", |logs| {
        // With --crds, so the restart also re-installs CRDs that already exist.
        let mut plane = ControlPlane::start_with_crds(logs)?;
        let kubectl = plane.kubectl();
        let server = plane.server().to_owned();
        kubectl.run(&[
            "create",
            "configmap",
            "survivor",
            "-n",
            "default",
            "--from-literal=k=v",
        ])?;
        plane.restart()?;
        ensure!(
            plane.server() == server,
            "the API server moved from {server} to {} on restart",
            plane.server()
        );
        // The same kubectl (same kubeconfig, same credentials) still works.
        let cm = kubectl.get_json(&["configmap", "survivor", "-n", "default"])?;
        ensure!(
            cm["data"]["k"] == "v",
            "configmap survivor lost its data: {cm}"
        );
        Ok(())
    });
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn crds_applied_after_start_become_collectable_once_the_collector_resyncs() {
    run_test("garbage-collector-resync", |logs| {
        let plane = ControlPlane::start(logs)?;
        plane.apply_crds()?;
        let took = plane.wait_for_garbage_collector()?;
        eprintln!(
            "the garbage collector knew the Fleetward kinds {took:?} after they were applied"
        );
        Ok(())
    });
}
