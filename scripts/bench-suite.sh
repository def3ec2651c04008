#!/usr/bin/env bash
# The whole benchmark suite in one command, from a fresh machine: installs the tools
# (mosquitto, wrk, kubectl, nats-server, …), builds the control plane (cached) and the
# benchmark binaries, runs every broker scenario against Fleetward, Fleetward without its
# decision cache, bare rumqttd and Mosquitto (interleaved, median of the rounds), HTTP publish,
# one policy delta on a dataplane with 10,000 sessions (--skip-delta), the control-plane
# benchmarks and the fault tests (e2e/tests/fault.rs, about 15 minutes; --skip-faults), and
# rewrites the generated part of BENCHMARKS.md.
#
#   scripts/bench-suite.sh                 # the full suite (about an hour on 2 cores)
#   scripts/bench-suite.sh --smoke         # tiny sizes, dev build: what CI runs (a few minutes);
#                                          # writes target/bench-suite/smoke.md, not BENCHMARKS.md
#   scripts/bench-suite.sh --only-brokers  # the broker scenarios only
#   scripts/bench-suite.sh --only-attack   # the "under attack" scenario only (a flood of
#                                          # unauthenticated sockets); writes target/bench-suite/attack.md
#
# Every run's raw figures: target/bench-suite/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=install-tools.sh
source scripts/install-tools.sh >/dev/null
command -v mosquitto >/dev/null || PATH="$PATH:/usr/sbin"
if [[ " $* " != *" --only-brokers "* && " $* " != *" --only-attack "* \
      && " $* " != *" --skip-controlplane "* ]]; then
  FLEETWARD_CONTROLPLANE=$(scripts/controlplane.sh | tail -n 1)
  export FLEETWARD_CONTROLPLANE
fi
exec python3 scripts/bench_suite.py "$@"
