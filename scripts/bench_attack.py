"""The benchmark suite's "under attack" scenario (issue 17), run by scripts/bench_suite.py.

A flood of unauthenticated sockets (`fleetward-bench --flood N`: TCP connections to the MQTT
port that send nothing, each opened again when the broker closes it) is held open while a
legitimate client connects over and over (CONNECT → CONNACK percentiles) and while pairs
publish at a fixed rate (publish → deliver percentiles). The same two scenarios run without
the flood in the same rounds, next to the flooded ones (the order alternates per round), each
on a fresh broker; and the broker is weighed before and after the flood opens
(`fleetward-bench --flood N pending`), for its RSS per pending socket.
"""

import subprocess

# Fleetward, bare rumqttd and Mosquitto: the decision cache plays no part before CONNECT.
TARGETS = ["fleetward", "rumqttd", "mosquitto"]
NAMES = {"fleetward": "Fleetward", "rumqttd": "bare rumqttd", "mosquitto": "Mosquitto"}

# The dataplane's cap on sockets that have not authenticated yet. bench-fleetward is given it,
# sized to the flood, when its --help lists it; the suite works without it (earlier builds).
PENDING_FLAG = "--max-pending-connections"

# bench-fleetward's connect timeout, given (where its --help lists it) past the scenario's
# window: the scenario measures a flood held open. With the dataplane's default of 10 s the
# flood's sockets are closed and opened again in a wave every 10 s, which BENCHMARKS.md measures
# apart ("Misses").
TIMEOUT_FLAG = "--connect-timeout-secs"

# Descriptors each process keeps beside the flood's (the scenario's own clients, the broker's
# listeners and files): the flood is shrunk below the open-files limit by this much, and
# bench-fleetward's --max-connections is the flood plus this.
HEADROOM = 1_000

CONNECT_WORKERS = 1


def flood_size(cfg, limit):
    """The flood's size: cfg.flood, or what the open-files hard limit leaves of it."""
    return max(0, min(cfg.flood, limit - HEADROOM))


def fleetward_flags(cfg, n):
    """bench-fleetward's flags for a flood of n: room for the flood and the legitimate
    clients in --max-connections (a dataplane that counts sockets from accept counts the
    flood there too), --max-pending-connections n where the build has it, and a connect
    timeout past the scenario (TIMEOUT_FLAG)."""
    help_text = subprocess.run([str(cfg.bin_dir() / "bench-fleetward"), "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    flags = ["--max-connections", str(n + HEADROOM)]
    has_pending = PENDING_FLAG in help_text
    if has_pending:
        flags += [PENDING_FLAG, str(n)]
    if TIMEOUT_FLAG in help_text:
        # Longer than a scenario runs, with the flood's opening.
        flags += [TIMEOUT_FLAG, str(int(120 + 3 * (cfg.warmup + cfg.window) + n / 100))]
    return flags, has_pending


def scenarios(cfg, n, things):
    """(key, description, arguments given the broker's pid, the figure, flooded)."""
    flow = ["--warmup", str(cfg.warmup), "--seconds", str(cfg.window)]
    connect = ["connect", "--workers", str(CONNECT_WORKERS), "--things", str(things), *flow]
    latency = ["latency", "--pairs", str(cfg.pairs), "--total-rate", str(cfg.latency_rate),
               "--qos", "0", *flow]
    flood = ["--flood", str(n)]
    settle = "1" if cfg.smoke else "3"
    return [
        ("attack-pending", f"{n:,} pending sockets",
         lambda pid: [*flood, "pending", "--pid", str(pid), "--settle", settle], "kib_per_pending", True),
        ("attack-connect", "CONNECT → CONNACK, one client, unflooded",
         lambda pid: connect, "p99_us", False),
        ("attack-connect-flood", f"CONNECT → CONNACK, one client, under a flood of {n:,}",
         lambda pid: [*flood, *connect], "p99_us", True),
        ("attack-latency", f"QoS 0 at {cfg.latency_rate:,} msg/s over {cfg.pairs} pairs, unflooded",
         lambda pid: latency, "p99_us", False),
        ("attack-latency-flood",
         f"QoS 0 at {cfg.latency_rate:,} msg/s over {cfg.pairs} pairs, under a flood of {n:,}",
         lambda pid: [*flood, *latency], "p99_us", True),
    ]


def runs(cfg, work, results, limit, suite):
    """Every round of the scenario against every target; `suite` is bench_suite (Broker,
    run_generator, log, short, PAIRS_GRANTED)."""
    n = flood_size(cfg, limit)
    if n == 0:
        results.append({"round": 1, "scenario": "attack", "target": "all",
                        "skipped": f"the open-files hard limit is {limit} (ulimit -Hn)"})
        suite.log(f"under attack: skipped, open-files hard limit {limit}")
        return
    fw_flags, has_pending = fleetward_flags(cfg, n)
    suite.log(f"under attack: a flood of {n:,} sockets (open-files hard limit {limit:,}); "
              f"bench-fleetward {' '.join(fw_flags)}"
              + ("" if has_pending else f" (this build has no {PENDING_FLAG})"))
    plan = scenarios(cfg, n, suite.PAIRS_GRANTED)
    timeout = 120 + 3 * (cfg.warmup + cfg.window) + n / 100
    for rnd in range(cfg.rounds):
        order = TARGETS[rnd % len(TARGETS):] + TARGETS[:rnd % len(TARGETS)]
        for target in order:
            # The weighing first, then each unflooded run next to its flooded twin, the twin
            # first in odd rounds.
            this_round = [plan[0]]
            for base, flooded in (plan[1:3], plan[3:5]):
                this_round += [flooded, base] if rnd % 2 else [base, flooded]
            for key, _, args, _, _ in this_round:
                extra = fw_flags if target == "fleetward" else []
                broker = suite.Broker(cfg, target, work, suite.PAIRS_GRANTED + 1, extra)
                try:
                    r = suite.run_generator(cfg, broker, target, args(broker.proc.pid), timeout)
                finally:
                    broker.stop()
                r.update(round=rnd + 1, scenario=key, target=target, flood_size=n,
                         nofile_hard=limit, max_pending_flag=has_pending and target == "fleetward")
                if target == "fleetward":
                    r.update(fleetward_flags=" ".join(fw_flags))
                results.append(r)
                suite.log(f"round {rnd + 1} {key:21} {target:10} " + suite.short(r))


def _flood_size(results):
    return next((int(r["flood_size"]) for r in results if "flood_size" in r), None)


def _limit(results):
    return next((int(r["nofile_hard"]) for r in results if "nofile_hard" in r), None)


def missing(cfg, results, median_of):
    """What the scenario failed to produce: a figure per target, and floods that held nothing."""
    skipped = any(r.get("scenario") == "attack" and "skipped" in r for r in results)
    n = _flood_size(results)
    if skipped:
        return []
    if n is None:
        return ["under attack (no run)"]
    out = []
    for key, _, _, fig, flooded in scenarios(cfg, n, 0):
        for t in TARGETS:
            v = median_of(results, key, t, fig)
            if v is None or (fig == "p99_us" and v <= 0):
                out.append(f"{key}/{t}")
            elif flooded and not median_of(results, key, t, "flood_held"):
                out.append(f"{key}/{t} (the flood held no socket)")
    return out


def render(cfg, results, median_of, fmt, ratio, verdict):
    """(rows of the budget table, the section's lines, rows of "Reproduce one figure")."""
    n = _flood_size(results)
    if n is None:
        return [], [], []
    m = lambda key, t, k: median_of(results, key, t, k)  # noqa: E731
    ms = lambda us: None if us is None else us / 1000  # noqa: E731
    conn = m("attack-connect-flood", "fleetward", "p99_us")
    lat0, lat1 = m("attack-latency", "fleetward", "p99_us"), m("attack-latency-flood", "fleetward", "p99_us")
    kib = m("attack-pending", "fleetward", "kib_per_pending")

    def held(key, k="flood_held_min"):
        # A broker that closes pending sockets (its connect timeout) holds fewer than the flood.
        return f"{fmt_int(m(key, 'fleetward', k))} of {n:,} held, fewest"

    budget = [
        f"| CONNECT → CONNACK p99 under a flood of {n:,} unauthenticated sockets | {fmt(ms(conn), ' ms')} "
        f"({held('attack-connect-flood')}) | ≤ 50 ms | {verdict(None if conn is None else conn <= 50_000)} |",
        f"| p99 publish → deliver at {cfg.latency_rate:,} msg/s under the flood / unflooded, same run | "
        f"{ratio(lat1, lat0)} ({fmt(ms(lat1), ' ms')} / {fmt(ms(lat0), ' ms')}; {held('attack-latency-flood')}) "
        f"| ≤ 2× | {verdict(None if lat0 is None or lat1 is None else lat1 <= 2 * lat0)} |",
        f"| RSS per pending socket ({fmt_int(m('attack-pending', 'fleetward', 'pending_held'))} held) "
        f"| {fmt(kib, ' KiB')} | ≤ 4 KiB | {verdict(None if kib is None else kib <= 4)} |",
    ]
    limit = _limit(results)
    has_pending = any(r.get("max_pending_flag") for r in results)
    fw_flags = next((r["fleetward_flags"] for r in results if "fleetward_flags" in r),
                    f"--max-connections {n + HEADROOM}" + (f" {PENDING_FLAG} {n}" if has_pending else ""))
    lines = [
        "", "### Under attack", "",
        f"A flood of {n:,} unauthenticated sockets (`fleetward-bench --flood {n}`: TCP connections "
        "to the MQTT port that send nothing; one the broker closes, at its connect timeout or to "
        "make room, is opened again, so the pressure holds) while a legitimate client connects over "
        f"and over (one at a time), and while {cfg.pairs} pairs publish at "
        f"{cfg.latency_rate:,} msg/s (QoS 0). The unflooded runs are in the same rounds, next to the "
        "flooded ones, each on a fresh broker. The open-files hard limit was "
        f"{fmt_int(limit)} (`ulimit -Hn`, per process): the generator and the broker each hold one "
        f"descriptor per flood socket. Fleetward ran with `{fw_flags}`"
        + ("" if has_pending else f" (this build has no `{PENDING_FLAG}`: its default pending handling)")
        + (f"; its `{TIMEOUT_FLAG}` is past the scenario, so the flood is held open (with the "
           "default 10 s the flood is closed and opened again in waves: see \"Misses\")."
           if TIMEOUT_FLAG in fw_flags else "."),
        "", "| figure | " + " | ".join(NAMES[t] for t in TARGETS) + " |", "|---|---|---|---|",
    ]

    def row(label, key, k, scale=None, unit=""):
        vals = [m(key, t, k) for t in TARGETS]
        if scale:
            vals = [None if v is None else v * scale for v in vals]
        lines.append(f"| {label} | " + " | ".join(fmt(v, unit) for v in vals) + " |")

    def count_row(label, key, k):
        lines.append(f"| {label} | " + " | ".join(fmt_int(m(key, t, k)) for t in TARGETS) + " |")

    for key, label in (("attack-connect", "unflooded"), ("attack-connect-flood", "under the flood")):
        for q in ("p50", "p99"):
            row(f"CONNECT → CONNACK {q}, {label}", key, f"{q}_us", 1e-3, " ms")
    for key, label in (("attack-latency", "unflooded"), ("attack-latency-flood", "under the flood")):
        for q in ("p50", "p99"):
            row(f"publish → deliver {q} at {cfg.latency_rate:,} msg/s, {label}", key, f"{q}_us", 1e-3, " ms")
    lines.append("| publish → deliver p99, under the flood / unflooded | " + " | ".join(
        ratio(m("attack-latency-flood", t, "p99_us"), m("attack-latency", t, "p99_us")) for t in TARGETS) + " |")
    row("RSS per pending socket", "attack-pending", "kib_per_pending", None, " KiB")
    count_row(f"flood sockets held at the weighing (of {n:,})", "attack-pending", "pending_held")
    for key, what in (("attack-connect-flood", "CONNECT"), ("attack-latency-flood", "publish → deliver")):
        count_row(f"{what} run: flood sockets held, fewest", key, "flood_held_min")
        count_row(f"{what} run: flood sockets the broker closed", key, "flood_closed_by_server")
    lines += ["", "Medians of the rounds; a flood socket the broker closed was opened again after "
              "50 ms (doubling while the broker keeps closing it within a second)."]

    bench = "target/release/fleetward-bench --port 1883"
    reproduce = [
        f"| under attack: RSS per pending socket (start bench-fleetward with `{fw_flags}`) | "
        f"`{bench} --flood {n} pending --pid <broker pid>` |",
        f"| under attack: CONNECT → CONNACK | `{bench} --auth --flood {n} connect --workers {CONNECT_WORKERS} "
        f"--things 10000 --warmup {cfg.warmup} --seconds {cfg.window}` (without `--flood {n}`: unflooded) |",
        f"| under attack: publish → deliver | `{bench} --auth --flood {n} latency --pairs {cfg.pairs} "
        f"--total-rate {cfg.latency_rate} --qos 0 --warmup {cfg.warmup} --seconds {cfg.window}` |",
    ]
    return budget, lines, reproduce


def fmt_int(v):
    return "—" if v is None else f"{round(v):,}"
