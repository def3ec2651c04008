"""The fault tests of issue 25 (e2e/tests/fault.rs) as part of the benchmark suite: each
`fault_*` test runs on its own (the real API server, the operator, NATS with JetStream, three
dataplanes, 106 persistent-session MQTT v5 clients under a steady QoS 1 load), and its `FAULT`
lines (accepted, delivered, lost, duplicated, recovery) go into BENCHMARKS.md, with whether the
test held. A failing fault test is reported, not fatal: the suite's other figures still count.

scripts/test.sh runs only `fault_kill9_one_dataplane`, the CI smoke.
"""

import os
import re
import subprocess
import time

TESTS = [
    "fault_kill9_one_dataplane",
    "fault_rolling_restart_of_every_dataplane",
    "fault_nats_restarted",
    "fault_operator_killed_mid_bulk_apply",
    "fault_api_server_restarted",
    "fault_dataplanes_cut_off_from_the_operator_for_60s",
]

# "FAULT <test> <phase>: accepted=… …" (one per phase), or "FAULT <test>: <a sentence>".
PHASE = re.compile(r"^FAULT (\S+) (.+?): (accepted=.*)$")
NOTE = re.compile(r"^FAULT (\S+): (.*)$")


def figures(text):
    """The key=value figures of a phase line."""
    out = {}
    for key in ("accepted", "delivered", "lost", "duplicated", "strays", "unconfirmed",
                "disconnects", "reconnects"):
        m = re.search(rf"\b{key}=(\d+)", text)
        if m:
            out[key] = int(m.group(1))
    m = re.search(r"without DUP (\d+)", text)
    if m:
        out["duplicated_without_dup"] = int(m.group(1))
    m = re.search(r"0x8B (\d+)", text)
    if m:
        out["disconnects_0x8b"] = int(m.group(1))
    m = re.search(r"session_present=(\d+)/", text)
    if m:
        out["session_present"] = int(m.group(1))
    for key in ("reconnected_in", "recovered_in"):
        m = re.search(rf"\b{key}=(\S+)", text)
        if m:
            out[key] = m.group(1)
    return out


def runs(cfg, root, results, log):
    """Runs every fault test (none in a smoke run: scripts/test.sh runs the CI smoke)."""
    if cfg.smoke:
        return
    env = dict(os.environ)
    env["FLEETWARD_BIN"] = str(root / "target" / "release" / "fleetward")
    for test in TESTS:
        started = time.monotonic()
        out = subprocess.run(
            ["cargo", "test", "-p", "fleetward-e2e", "--all-features", "--test", "fault", "--",
             "--ignored", "--test-threads=1", "--nocapture", "--exact", test],
            cwd=root, capture_output=True, text=True, env=env, timeout=1800)
        seconds = time.monotonic() - started
        phases, notes = [], []
        for line in (out.stdout + "\n" + out.stderr).splitlines():
            m = PHASE.match(line.strip())
            if m:
                phases.append({"phase": m.group(2), **figures(m.group(3))})
                continue
            m = NOTE.match(line.strip())
            if m:
                notes.append(m.group(2))
        failure = None
        if out.returncode != 0:
            failure = next((l.strip() for l in out.stderr.splitlines()
                            if " failed: " in l and l.strip().startswith("fault-")), "see its output")
        results.append({"scenario": "fault", "target": "fleetward", "round": 1, "test": test,
                        "held": out.returncode == 0, "seconds": round(seconds, 1),
                        "phases": phases, "notes": notes, "failure": failure})
        log(f"{test}: {'held' if out.returncode == 0 else 'FAILED'} in {seconds:.0f}s, "
            f"{len(phases)} phases")


def render(results):
    """The BENCHMARKS.md section, empty without fault runs."""
    rows = [r for r in results if r.get("scenario") == "fault"]
    if not rows:
        return []
    lines = ["", "### Faults", "",
             "`cargo test -p fleetward-e2e --all-features --test fault -- --ignored "
             "--test-threads=1 <test>` (e2e/tests/fault.rs): three dataplanes on NATS with "
             "JetStream, the operator on the real API server, 50 devices receiving commands and 50 "
             "sensors publishing telemetry to 3 collectors, all persistent sessions, QoS 1, about "
             "200 msg/s; each client moves to another pod when its connection ends. Messages count "
             "in the phase in which they were accepted (PUBACKed); lost must be 0.", "",
             "| test | phase | accepted | delivered | lost | duplicated (without DUP) | "
             "session present / reconnects | disconnects (0x8B) | reconnected in | recovered in |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for p in r["phases"]:
            lines.append(
                f"| {r['test']} | {p['phase']} | {p.get('accepted', '?')} | {p.get('delivered', '?')} "
                f"| {p.get('lost', '?')} | {p.get('duplicated', '?')} ({p.get('duplicated_without_dup', '?')}) "
                f"| {p.get('session_present', '?')} / {p.get('reconnects', '?')} "
                f"| {p.get('disconnects', '?')} ({p.get('disconnects_0x8b', '?')}) "
                f"| {p.get('reconnected_in', '-')} | {p.get('recovered_in', '-')} |")
    lines += ["", "| test | held | seconds | notes |", "|---|---|---|---|"]
    for r in rows:
        notes = "; ".join(r["notes"] + ([r["failure"]] if r["failure"] else []))
        lines.append(f"| {r['test']} | {'yes' if r['held'] else '**no**'} | {r['seconds']} "
                     f"| {notes.replace('|', '/')} |")
    return lines
