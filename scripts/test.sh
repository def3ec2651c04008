#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (idempotently), builds the end-to-end control plane and the newest release
# baseline's binary (both cached), then runs the
# checks, the unit, property and protocol tests, the end-to-end tests and a
# short fuzz smoke run. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step names the disk space left as it starts: a CI machine's disk is shared, and a run
# that fills it fails wherever it is (this run takes about 20 GB on a fresh machine).
step() { printf '\n==> %s (disk: %s free)\n' "$*" "$(df -h . | awk 'NR == 2 { print $4 }')"; }
started=$(date +%s)

# A clean checkout gains nothing from incremental compilation, and its cache
# costs gigabytes of disk beside the test executables. Set it to 1 to keep it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | awk 'NR == 2 { print "disk: " $4 " free of " $2 }'

step "tools (kubectl, helm, nats-server, mosquitto, paho-mqtt, chromium, puppeteer-core, mqtt.js)"
# shellcheck source=install-tools.sh
source scripts/install-tools.sh

step "end-to-end control plane (etcd, kube-apiserver, garbage collector)"
FLEETWARD_CONTROLPLANE=$(scripts/controlplane.sh | tail -n 1)
export FLEETWARD_CONTROLPLANE

step "PostgreSQL for the history store's tests (a throwaway cluster; CI never skips them)"
FLEETWARD_POSTGRES_URL=$(scripts/postgres.sh | tail -n 1)
export FLEETWARD_POSTGRES_URL

step "the newest release baseline's binary, for the version-skew test (cached)"
newest=$(ls compat | grep -E '^[0-9]+\.[0-9]+\.[0-9]+$' | sort -V | tail -n 1)
FLEETWARD_BASELINE=$(scripts/baseline.sh "$newest" | tail -n 1)
export FLEETWARD_BASELINE

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "unit, property and protocol tests"
cargo test --workspace --all-features

step "end-to-end tests against a real kube-apiserver"
cargo build --bin fleetward
# bench_* are benchmarks (minutes long, budget-checked); BENCHMARKS.md says how to run them.
# fault_* are the fault tests (e2e/tests/fault.rs): scripts/bench-suite.sh runs them all; CI
# runs one, the kill -9 of a dataplane, as their smoke (about 2 minutes).
cargo test -p fleetward-e2e --all-features -- --ignored --test-threads=1 --skip bench_ --skip fault_
cargo test -p fleetward-e2e --all-features --test fault -- --ignored --test-threads=1 \
  --exact fault_kill9_one_dataplane

step "benchmark suite, smoke run (tiny sizes, dev build: checks the harness, not the figures)"
scripts/bench-suite.sh --smoke

step "fuzz smoke run"
# The fuzz builds take about 4 GB (policy/fuzz/target, dataplane/fuzz/target). When less than
# 8 GB is left, the test builds above go first: no later step uses them, and a CI machine's
# disk is shared with other jobs (a CI run once ran out of it while building a fuzz target).
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if (( free_kib < 8 * 1024 * 1024 )); then
  echo "only $((free_kib / 1024)) MiB free: removing target/debug and target/release first"
  rm -rf target/debug target/release
fi
scripts/fuzz-smoke.sh

step "all passed in $(( $(date +%s) - started ))s"
