#!/usr/bin/env bash
# HTTP publish benchmark: throughput and p99 latency with keep-alive, driven by wrk (Debian).
#
# Starts a release dataplane (dataplane/examples/http_bench.rs: one tenant, one publishing thing,
# one MQTT subscriber draining every message), then runs wrk with a Lua script that POSTs a
# small JSON payload with `Authorization: Thing <key>`. Prints wrk's report and a summary line
# checked against the budgets of issue 6 (>= 20k req/s, p99 <= 5 ms).
#
#   scripts/bench-http.sh [duration_s=20] [connections=64] [threads=2]
#
# The machine's other load matters: on a shared 2-core box the load generator and the
# dataplane compete for the same cores, so figures are a floor, not a ceiling.
set -euo pipefail

duration="${1:-20}"
connections="${2:-64}"
threads="${3:-2}"
cd "$(dirname "$0")/.."

log() { echo "bench-http: $*" >&2; }

if ! command -v wrk >/dev/null; then
  log "installing wrk"
  sudo=()
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi

# PROFILE=dev builds unoptimized, to check the harness only (the suite's smoke run).
profile="${PROFILE:-release}"
log "building the benchmark dataplane ($profile)"
cargo build --profile "$profile" -q -p fleetward-dataplane --example http_bench
bin="target/$([[ $profile == dev ]] && echo debug || echo "$profile")/examples/http_bench"

work="$(mktemp -d)"
pid=""
cleanup() {
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" 127.0.0.1:0 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 100); do
  grep -q '^READY' "$work/out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; log "the dataplane exited"; exit 1; }
  sleep 0.1
done
read -r _ http_addr _ key < <(grep '^READY' "$work/out") || { log "the dataplane did not get ready"; exit 1; }

cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.path = "/m/bench/c/telemetry/room1"
wrk.headers["Authorization"] = "Thing $key"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"t":21.5,"h":40}'
local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  local other = 0
  for s, n in pairs(statuses) do
    if s ~= 202 then other = other + n end
  end
  io.write(string.format("SUMMARY rps=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f requests=%d non_202=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests, other,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
LUA

# A short warm-up so the decision cache and the allocator are warm.
wrk -t1 -c4 -d2s -s "$work/post.lua" "http://$http_addr" >/dev/null
log "wrk -t$threads -c$connections -d${duration}s --latency against http://$http_addr (keep-alive)"
wrk -t"$threads" -c"$connections" -d"${duration}s" --latency -s "$work/post.lua" "http://$http_addr" | tee "$work/report"

summary="$(grep '^SUMMARY' "$work/report")"
rps="$(sed -E 's/.*rps=([0-9]+).*/\1/' <<<"$summary")"
p99="$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$summary")"
non202="$(sed -E 's/.*non_202=([0-9]+).*/\1/' <<<"$summary")"
verdict="within budget"
if ((rps < 20000)) || awk -v p="$p99" 'BEGIN { exit !(p > 5) }' || ((non202 > 0)); then
  verdict="OVER BUDGET"
fi
echo "HTTP publish: ${rps} req/s, p99 ${p99} ms, non-202 ${non202} (budget >= 20000 req/s, p99 <= 5 ms): $verdict"
