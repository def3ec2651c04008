//! Phases 3 and 4: the full snapshot a new dataplane receives (its encoded size and sync time) and
//! the operator's cold start, restart and a new replica's start from a running one.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Phase 4: the full snapshot a new dataplane receives (the PolicySync test client: its
/// encoded size and the time from connect to received), then a third dataplane process from
/// spawn to ready (snapshot applied), and the status writes a new dataplane causes.
pub(crate) fn snapshot_and_full_sync(
    op: &Operator,
    config: &DataplaneConfig,
    state: &Path,
    p: &Params,
    in_place: InPlace,
    logs: &LogDir,
) -> Result<()> {
    let admin = op.admin_addr;
    let writes_before = metric(admin, "fleetward_operator_status_writes_total")?;
    let started = Instant::now();
    let mut client = SyncClient::connect(&op.sync_url(), TOKEN, "bench-client", Resume::default())?;
    let update = client.next_update(STEP_TIMEOUT)?;
    let received = started.elapsed();
    client.ack(&update)?;
    client.disconnect();
    let Some(pb::update::Payload::Snapshot(snapshot)) = &update.payload else {
        bail!("a new client's first update is a full snapshot");
    };
    ensure!(
        snapshot.things.len() >= in_place.things(p) && snapshot.grants.len() >= in_place.grants(p),
        "the full snapshot holds the data set: {} things, {} grants",
        snapshot.things.len(),
        snapshot.grants.len()
    );
    report("snapshot_bytes", update.encoded_len() as f64, "bytes");
    report("full_sync_client", ms(received), "ms");

    let started = Instant::now();
    let mut c = Dataplane::launch(
        "dataplane-c",
        &state.join("dataplane-c"),
        config.clone(),
        logs.path(),
    )?;
    wait_every("dataplane-c ready", STEP_TIMEOUT, POLL, || {
        ensure!(c.process.is_running(), "dataplane-c exited; see its log");
        Ok(http_status(c.admin_addr, "/readyz").is_ok_and(|s| s == 200))
    })?;
    report("full_sync", ms(started.elapsed()), "ms");
    c.process.stop()?;
    drop(c);

    let (writes, settled) = settle(admin)?;
    eprintln!(
        "bench: the new client and dataplane-c caused {} status writes; the writer settled \
         {settled:.1?} after",
        writes - writes_before
    );
    report("full_sync_status_writes", writes - writes_before, "count");
    Ok(())
}

// ----- 3. Operator cold start, and a restart with its saved state -----

/// Phase 3: a fresh operator on the stopped one's listeners, with the data set in place: from
/// spawn to `/readyz`, to the first full snapshot a client receives, to both dataplanes
/// re-synced; its status writes until settled; its peak and settled RSS. Its state directory
/// is new, so it lists everything.
pub(crate) fn cold_start(
    plane: &ControlPlane,
    sync_addr: SocketAddr,
    admin_addr: SocketAddr,
    log_dir: &Path,
) -> Result<Operator> {
    let spawned = Instant::now();
    let op = Operator::launch(
        "operator-1",
        plane.kubeconfig(),
        TOKEN,
        log_dir,
        sync_addr,
        admin_addr,
    )?;
    started(op, spawned, "cold start", "operator_cold_start", "", true)
}

/// Phase 3b: `stopped`'s replica started again on its state directory (what a container
/// restart in the chart's pod does): it restores what the stopped one saved and resumes its
/// watches instead of listing. The same figures as the cold start's.
pub(crate) fn warm_start(
    plane: &ControlPlane,
    stopped: &Operator,
    log_dir: &Path,
) -> Result<Operator> {
    let spawned = Instant::now();
    let op = Operator::launch_release(
        &Release::current()?,
        "operator-2",
        &stopped.state_dir,
        plane.kubeconfig(),
        TOKEN,
        log_dir,
        (stopped.sync_addr, stopped.admin_addr),
    )?;
    started(
        op,
        spawned,
        "restart with the saved state",
        "operator_warm_start",
        "_warm",
        true,
    )
}

/// Phase 3c: a new replica beside `running` (a new pod of the chart: an empty state directory,
/// `--seed-from` the operator's Service, which routes to `running`): it fetches `running`'s
/// saved state and starts from it. The same figures as the cold start's, but the dataplanes
/// stay with `running`.
pub(crate) fn seeded_start(
    plane: &ControlPlane,
    running: &Operator,
    log_dir: &Path,
) -> Result<Operator> {
    let [sync, admin] = free_ports()?;
    let spawned = Instant::now();
    let op = Operator::launch_seeded(
        "operator-3",
        plane.kubeconfig(),
        TOKEN,
        log_dir,
        (loopback(sync), loopback(admin)),
        &running.sync_url(),
    )?;
    let op = started(
        op,
        spawned,
        "new replica seeded from a running one",
        "operator_seeded_start",
        "_seeded",
        false,
    )?;
    let log = std::fs::read_to_string(log_dir.join("operator-3.log"))?;
    ensure!(
        log.contains("seeded the state from a running replica"),
        "the new replica started from the running one's state; see operator-3.log"
    );
    Ok(op)
}

/// Times `op`, spawned at `spawned`, to ready, to the first full snapshot a client receives,
/// and when `dataplanes` (they reconnect to it) to both dataplanes re-synced; then counts its
/// status writes until settled and reports its peak and settled RSS
/// (`operator_peak_rss<rss_suffix>`).
fn started(
    mut op: Operator,
    spawned: Instant,
    what: &str,
    figure: &str,
    rss_suffix: &str,
    dataplanes: bool,
) -> Result<Operator> {
    let admin_addr = op.admin_addr;
    let url = op.sync_url();
    let first_snapshot = thread::spawn(move || -> Result<Duration> {
        let deadline = spawned + STEP_TIMEOUT;
        let mut client = loop {
            match SyncClient::connect(&url, TOKEN, "bench-cold-client", Resume::default()) {
                Ok(client) => break client,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => thread::sleep(POLL),
            }
        };
        let update = client.next_update(deadline.saturating_duration_since(Instant::now()))?;
        let at = spawned.elapsed();
        ensure!(
            matches!(update.payload, Some(pb::update::Payload::Snapshot(_))),
            "the first update after a start is a full snapshot"
        );
        client.ack(&update)?;
        Ok(at)
    });
    wait_every("the new operator ready", STEP_TIMEOUT, POLL, || {
        ensure!(
            op.process.is_running(),
            "the new operator exited; see its log"
        );
        Ok(http_status(admin_addr, "/readyz").is_ok_and(|s| s == 200))
    })?;
    let ready = spawned.elapsed();
    let first = first_snapshot
        .join()
        .map_err(|_| anyhow::anyhow!("the start's client panicked"))??;
    if dataplanes {
        wait_every(
            "dataplane-a and dataplane-b re-synced",
            STEP_TIMEOUT,
            Duration::from_millis(50),
            || dataplanes_synced(admin_addr, &["dataplane-a", "dataplane-b"]),
        )?;
        let resynced = spawned.elapsed();
        eprintln!("bench: {what}: both dataplanes re-synced {resynced:.1?} after spawn");
        report(&format!("{figure}_dataplanes_synced"), ms(resynced), "ms");
    }
    let (writes, settled) = settle(admin_addr)?;
    let pid = op.process.pid();
    eprintln!(
        "bench: {what}: ready {ready:.1?}, first snapshot {first:.1?} after spawn; {writes} \
         status writes, settled {settled:.1?} after"
    );
    report(&format!("{figure}_ready"), ms(ready), "ms");
    report(&format!("{figure}_first_snapshot"), ms(first), "ms");
    report(&format!("{figure}_status_writes"), writes, "count");
    report(
        &format!("operator_peak_rss{rss_suffix}"),
        proc_status_mib(pid, "VmHWM")?,
        "MiB",
    );
    report(
        &format!("operator_rss_after{rss_suffix}"),
        proc_status_mib(pid, "VmRSS")?,
        "MiB",
    );
    Ok(op)
}
