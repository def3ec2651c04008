//! Metrics, polling and the `BENCH <key> <value> <unit>` lines every figure is printed as.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The value of the sample `series` (name and labels, as exposed) on `/metrics`; 0 when absent.
pub(crate) fn sample(addr: SocketAddr, series: &str) -> Result<f64> {
    let (_, text) = http_get(addr, "/metrics")?;
    Ok(series_in(&text, series))
}

pub(crate) fn series_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every sample of metric `name` (all label sets); 0 when absent.
pub(crate) fn metric(addr: SocketAddr, name: &str) -> Result<f64> {
    let (_, text) = http_get(addr, "/metrics")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v))
}

/// Whether each of `nodes` is connected to the operator and has applied its snapshot version.
pub(crate) fn dataplanes_synced(admin: SocketAddr, nodes: &[&str]) -> Result<bool> {
    let (_, text) = http_get(admin, "/metrics")?;
    let version = series_in(&text, "fleetward_operator_snapshot_version");
    Ok(version > 0.0
        && nodes.iter().all(|node| {
            series_in(
                &text,
                &format!("fleetward_operator_dataplane_applied_version{{node=\"{node}\"}}"),
            ) >= version
        }))
}

/// Waits until the operator's status writer has written nothing for [`SETTLED`]; returns its
/// accepted status writes and how long it took to settle.
pub(crate) fn settle(admin: SocketAddr) -> Result<(f64, Duration)> {
    let started = Instant::now();
    let mut last = metric(admin, "fleetward_operator_status_writes_total")?;
    let mut since = Instant::now();
    while since.elapsed() < SETTLED {
        if started.elapsed() > SETUP_TIMEOUT {
            bail!("the status writer did not settle within {SETUP_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(500));
        let now = metric(admin, "fleetward_operator_status_writes_total")?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    Ok((last, since.saturating_duration_since(started)))
}

/// A line of `/proc/<pid>/status` in kB (`VmHWM`, `VmRSS`), in MiB.
pub(crate) fn proc_status_mib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank `q` quantile of `samples` (0 when empty).
pub(crate) fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len().max(1)) - 1)
        .copied()
        .unwrap_or(0.0)
}

/// `<key>_p50`, `<key>_p99` and `<key>_max`, in ms.
pub(crate) fn report_latencies(key: &str, samples_ms: &[f64]) {
    report(&format!("{key}_p50"), percentile(samples_ms, 0.5), "ms");
    report(&format!("{key}_p99"), percentile(samples_ms, 0.99), "ms");
    report(&format!("{key}_max"), percentile(samples_ms, 1.0), "ms");
}

/// One machine-readable figure on stdout: `BENCH <key> <value> <unit>`.
pub(crate) fn report(key: &str, value: f64, unit: &str) {
    match unit {
        "count" | "bytes" => println!("BENCH {key} {value:.0} {unit}"),
        "ratio" => println!("BENCH {key} {value:.2} {unit}"),
        _ => println!("BENCH {key} {value:.1} {unit}"),
    }
}
