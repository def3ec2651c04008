"""One policy delta on a loaded dataplane (issue 19): the benchmark suite's scenario.

As a module of scripts/bench_suite.py: runs `dataplane/examples/delta_rechecks` (10,000 MQTT
sessions of one tenant, each subscribed under its own grant; 300 one-grant deltas, each
revoking one session's grant, 100 ms apart) and turns its `SUMMARY key=value …` line into the
report's rows. Each round is timed from the encoded delta: to the snapshot published
(decoded, copied, applied, its followers notified), and to the affected session's
subscription revoked (its re-check done).
"""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = "dataplane-delta"


def sizes(cfg):
    """(sessions, rounds): the budget's 10k sessions, or a few for the smoke run."""
    return (200, 20) if cfg.smoke else (10_000, 300)


def build(cfg):
    subprocess.run(["cargo", "build", "--profile", cfg.profile, "-p", "fleetward-dataplane",
                    "--example", "delta_rechecks"], cwd=ROOT, check=True)


def runs(cfg, results, log, parse_kv):
    sessions, rounds = sizes(cfg)
    example = cfg.bin_dir() / "examples" / "delta_rechecks"
    out = subprocess.run([str(example), str(sessions), str(rounds)], capture_output=True,
                         text=True, timeout=900, cwd=ROOT)
    line = next((l for l in out.stdout.splitlines() if l.startswith("SUMMARY ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"delta_rechecks failed: {out.stderr.strip()[-2000:]}{out.stdout[-1000:]}")
    r = parse_kv(line)
    r.update(scenario=SCENARIO, target="fleetward", round=1)
    results.append(r)
    log("dataplane delta " + line)


def _row(results):
    return next((r for r in results if r.get("scenario") == SCENARIO), None)


def missing(results):
    r = _row(results)
    keys = ("apply_p99_ms", "revoked_p99_ms", "rechecks_max")
    return [] if r and all(k in r for k in keys) else [SCENARIO]


def render(cfg, results, fmt, verdict):
    """(budget rows, the section, the reproduce rows)."""
    r = _row(results)
    if r is None:
        return [], [], []
    sessions, rounds = int(r["sessions"]), int(r["rounds"])
    at = f"with {sessions:,} sessions subscribed"
    lo, hi = int(r["rechecks_min"]), int(r["rechecks_max"])
    only_affected = lo == hi == 1
    budget = [
        f"| dataplane: a one-grant delta applied {at} (decoded, copied, applied, published), p99 "
        f"| {fmt(r['apply_p99_ms'], ' ms')} | ≤ 1 ms | {verdict(r['apply_p99_ms'] <= 1)} |",
        f"| dataplane: the same delta to the affected session's subscription revoked (its "
        f"re-check done), p99 | {fmt(r['revoked_p99_ms'], ' ms')} | ≤ 1 ms "
        f"| {verdict(r['revoked_p99_ms'] <= 1)} |",
        f"| dataplane: sessions re-checked per one-grant delta {at} "
        f"| {lo if lo == hi else f'{lo}–{hi}'} | only the affected one "
        f"| {verdict(only_affected)} |",
    ]
    section = [
        "", "### Dataplane: one policy delta", "",
        f"`{example_command(sessions, rounds)}`: {sessions:,} MQTT sessions of one tenant, "
        f"each subscribed under its own grant; {rounds} one-grant deltas, each revoking one "
        "session's grant, 100 ms apart, timed from the encoded delta. CPU is the process's in "
        "the 100 ms from each delta on.", "",
        "| what | p50 | p99 | max |", "|---|---|---|---|",
    ]
    for key, what in (("apply", "decoded, copied, applied, published"),
                      ("revoked", "to the affected subscription revoked"),
                      ("cpu", "process CPU per delta")):
        section.append(f"| {what} | " + " | ".join(
            fmt(r[f"{key}_{p}_ms"], " ms") for p in ("p50", "p99", "max")) + " |")
    reproduce = [f"| one policy delta on a dataplane with {sessions:,} sessions "
                 f"| `cargo build --release -p fleetward-dataplane --example delta_rechecks; "
                 f"{example_command(sessions, rounds)}` |"]
    return budget, section, reproduce


def example_command(sessions, rounds):
    return f"target/release/examples/delta_rechecks {sessions} {rounds}"
