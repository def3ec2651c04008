#!/usr/bin/env python3
"""Persistent sessions on JetStream (issue 25): the benchmark suite's scenario, and the A/B of
the broker before and after the change.

As a module of scripts/bench_suite.py: runs `dataplane/examples/durable_bench` (its own
`nats-server -js` on free ports, four in-process dataplanes, rumqttc v5 clients; `--smoke` in
the smoke run) and turns its `RESULT {json}` lines into the report's rows.

As a script, the A/B (BENCHMARKS.md, "Persistent sessions on JetStream"): the suite's QoS 0
and QoS 1 pairs scenarios against two bench-fleetward binaries, rounds alternating, the same
load generator for both:

  python3 scripts/bench_durable.py ab --before /work/wt/before/target/release/bench-fleetward \
      --after target/release/bench-fleetward [--rounds 5]
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Throughput modes of the example: (mode, description).
MODES = [
    ("q1-persistent-cross", "QoS 1 1:1, persistent subscriber, publisher on A, subscriber on B"),
    ("q1-clean-cross", "QoS 1 1:1, clean subscriber, publisher on A, subscriber on B, on a channel no persistent session follows"),
    ("q1-persistent-same", "QoS 1 1:1, persistent subscriber, both on A"),
    ("q1-clean-same", "QoS 1 1:1, clean subscriber, both on A, on a channel no persistent session follows"),
    ("q1-clean-cross-followed", "QoS 1 1:1, clean, A → B, on the channel persistent sessions follow (stored: the PUBACK waits)"),
    ("q1-clean-cross-unstored", "QoS 1 1:1, clean, A → B, pods without JetStream storage"),
    ("q1-clean-same-unstored", "QoS 1 1:1, clean, both on A, pods without JetStream storage"),
    ("q0-cross", "QoS 0 1:1, A → B"),
    ("q0-cross-unstored", "QoS 0 1:1, A → B, pods without JetStream storage"),
]


def example(cfg):
    return cfg.bin_dir() / "examples" / "durable_bench"


def build(cfg):
    subprocess.run(["cargo", "build", "--profile", cfg.profile, "-p", "fleetward-dataplane",
                    "--example", "durable_bench"], cwd=ROOT, check=True)


def runs(cfg, results, log):
    cmd = [str(example(cfg))] + (["--smoke"] if cfg.smoke else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"durable_bench failed: {out.stderr.strip()[-2000:]}")
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            r.setdefault("round", 1)
            r["target"] = "fleetward"
            results.append(r)
        else:
            log("durable " + line)


def _of(results, scenario, **kw):
    return [r for r in results if r.get("scenario") == scenario
            and all(r.get(k) == v for k, v in kw.items())]


def _median(rows, *path):
    vals = []
    for r in rows:
        for p in path:
            r = r.get(p) if isinstance(r, dict) else None
        if isinstance(r, (int, float)):
            vals.append(r)
    return statistics.median(vals) if vals else None


def _tp(results, mode):
    return _median(_of(results, "durable-throughput", mode=mode), "received_per_s")


def missing(results):
    """What the smoke run asserts: every figure is there, and no acknowledged QoS 1 message was
    lost on the way to a persistent session."""
    out = []
    resume = _of(results, "durable-resume")
    if not resume:
        out.append("durable-resume")
    for r in resume:
        if r["lost"] or r["session_absent"]:
            out.append(f"durable-resume: {r['lost']} lost, {r['session_absent']} without session present")
    for mode, _ in MODES:
        v = _tp(results, mode)
        if not v:
            out.append(f"durable-throughput/{mode}")
    for r in _of(results, "durable-throughput", persistent=True):
        if r["missing"]:
            out.append(f"durable-throughput/{r['mode']}: {r['missing']} acknowledged not delivered")
    for kind in ("persistent", "clean"):
        if not _of(results, "durable-latency", subscribers=kind):
            out.append(f"durable-latency/{kind}")
    for r in _of(results, "durable-latency", subscribers="persistent"):
        if r["lost"]:
            out.append(f"durable-latency: {r['lost']} lost")
    return out


def render(cfg, results, fmt, ratio, verdict):
    """(budget rows, the section's lines, reproduce rows)."""
    resume = _of(results, "durable-resume")
    lat = _of(results, "durable-latency", subscribers="persistent")
    clean_lat = _of(results, "durable-latency", subscribers="clean")
    if not (resume or lat):
        return [], [], []
    last99 = _median(resume, "last_ms", "p99")
    pc = {m: _tp(results, m) for m, _ in MODES}
    l99 = _median(lat, "latency_ms", "p99")
    rate = lat[0]["rate"] if lat else 0
    sustained = _median(lat, "delivered_per_s")
    budget = [
        f"| persistent session resumed on another pod: CONNECT → 100th queued message, p99 | "
        f"{fmt(last99, ' ms')} | ≤ 1 s | {verdict(None if last99 is None else last99 <= 1000)} |",
    ]
    for where in ("cross", "same"):
        p, c = pc[f"q1-persistent-{where}"], pc[f"q1-clean-{where}"]
        budget.append(f"| QoS 1 1:1, persistent ÷ clean sessions ({'A → B' if where == 'cross' else 'one pod'}) | "
                      f"{ratio(p, c)} ({fmt(p)} / {fmt(c)} msg/s) | ≥ 0.5× | "
                      f"{verdict(None if not (p and c) else p / c >= 0.5)} |")
    budget.append(f"| p99 publish → deliver at {rate:,} msg/s, QoS 1, persistent sessions | "
                  f"{fmt(l99, ' ms')} ({fmt(sustained)} msg/s delivered) | ≤ 5 ms | "
                  f"{verdict(None if l99 is None else l99 <= 5 and sustained >= 0.98 * rate)} |")
    lines = ["", "Persistent sessions on JetStream (`dataplane/examples/durable_bench`: its own "
             "`nats-server -js`, pods A and B storing QoS 1 in JetStream, pods C and D not; "
             "medians of the rounds):", "",
             "| what | p50 | p99 | max | lost / duplicated |", "|---|---|---|---|---|"]
    if resume:
        lost = sum(r["lost"] for r in resume)
        dups = sum(r["duplicates"] for r in resume)
        absent = sum(r["session_absent"] for r in resume)
        n = sum(r["resumes"] for r in resume)
        lines.append(f"| resumed on B ({n}×, {resume[0]['queued']} queued): CONNECT → CONNACK "
                     f"(session present absent {absent}×) | {fmt(_median(resume, 'connack_ms', 'p50'), ' ms')} | "
                     f"{fmt(_median(resume, 'connack_ms', 'p99'), ' ms')} | {fmt(_median(resume, 'connack_ms', 'max'), ' ms')} | — |")
        lines.append(f"| resumed on B: CONNECT → the last queued message | {fmt(_median(resume, 'last_ms', 'p50'), ' ms')} | "
                     f"{fmt(last99, ' ms')} | {fmt(_median(resume, 'last_ms', 'max'), ' ms')} | {lost} / {dups} |")
    for kind, rows in (("persistent", lat), ("clean", clean_lat)):
        if rows:
            lines.append(f"| publish → deliver at {rate:,} msg/s, QoS 1, {kind} subscribers on B "
                         f"({fmt(_median(rows, 'delivered_per_s'))} msg/s delivered, publisher behind "
                         f"schedule at most {fmt(_median(rows, 'max_send_lag_ms'), ' ms')}) | "
                         f"{fmt(_median(rows, 'latency_ms', 'p50'), ' ms')} | {fmt(_median(rows, 'latency_ms', 'p99'), ' ms')} | "
                         f"{fmt(_median(rows, 'latency_ms', 'max'), ' ms')} | "
                         f"{sum(r['lost'] for r in rows)} / {sum(r['duplicates'] for r in rows)} |")
    lines += ["", "| 1:1 throughput (one rumqttc v5 publisher, 32 in flight, 64 B) | msg/s delivered |",
              "|---|---|"]
    for mode, desc in MODES:
        lines.append(f"| {desc} | {fmt(pc[mode])} |")
    reproduce = [f"| persistent sessions on JetStream | `cargo run --{'profile dev' if cfg.smoke else 'release'} "
                 f"-p fleetward-dataplane --example durable_bench{' -- --smoke' if cfg.smoke else ''}` |"]
    return budget, lines, reproduce


def ab(args):
    """Before/after A/B with the suite's pairs scenarios, rounds alternating."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_suite as suite

    class Cfg(suite.Config):
        def bin_dir(self):
            return Path(args.after).resolve().parent

    cfg = Cfg(False)
    binaries = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    scen = {k: a for k, _, a, _ in cfg.scenarios() if k in args.scenarios.split(",")}
    results = []
    for rnd in range(args.rounds):
        for key, gen_args in scen.items():
            order = ["before", "after"] if rnd % 2 == 0 else ["after", "before"]
            for label in order:
                cfg.bin_dir = lambda b=binaries[label]: b.parent  # noqa: E731 (its bench-fleetward)
                broker = suite.Broker(cfg, "fleetward", Path(args.work), suite.PAIRS_GRANTED + 1)
                cfg.bin_dir = lambda: binaries["after"].parent  # noqa: E731 (one load generator)
                try:
                    r = suite.run_generator(cfg, broker, label, gen_args, 120)
                finally:
                    broker.stop()
                r.update(round=rnd + 1, scenario=key, target=label)
                results.append(r)
                print(json.dumps(r, sort_keys=True), flush=True)
    for key in scen:
        b = suite.median_of(results, key, "before", "received_per_s")
        a = suite.median_of(results, key, "after", "received_per_s")
        print(f"{key}: before {b:,.0f} after {a:,.0f} msg/s = {a / b:.3f}× "
              f"(rounds: before {[round(r['received_per_s']) for r in results if r['scenario'] == key and r['target'] == 'before']}, "
              f"after {[round(r['received_per_s']) for r in results if r['scenario'] == key and r['target'] == 'after']})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="bench-fleetward before/after A/B")
    p.add_argument("mode", choices=["ab"])
    p.add_argument("--before", required=True, help="the bench-fleetward binary before the change")
    p.add_argument("--after", required=True, help="the bench-fleetward binary after it (its "
                   "directory's fleetward-bench is the load generator for both)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--scenarios", default="qos0-pairs,qos1-pairs", help="the suite's scenarios to run")
    p.add_argument("--work", default="/tmp", help="where the brokers' logs go")
    ab(p.parse_args())
