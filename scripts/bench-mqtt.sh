#!/usr/bin/env bash
# QoS 0 publish throughput over publisher/subscriber pairs: the Fleetward dataplane
# (authorization on), bare rumqttd 0.20 (its own listener, the same router settings) and
# Mosquitto, driven by the same load generator (dataplane/examples/mqtt_load.rs), each broker
# started fresh on free ports, in rounds with the order rotated so background load hits
# every broker alike. Prints one table row per run, the ratios of each round, and the
# dataplane's decision-cache hit ratio under the load (from its /metrics).
#
#   scripts/bench-mqtt.sh                 # 3 rounds, 100 pairs, 64-byte payloads
#   ROUNDS=5 PAIRS=100 SECONDS_=10 WARMUP=3 PAYLOAD=64 RATE=0 scripts/bench-mqtt.sh
#
# RATE is messages per second per publisher (0: as fast as each broker reads).
# PROFILE=dev runs unoptimized builds, to check the harness only (its figures mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
PAIRS=${PAIRS:-100}
SECONDS_=${SECONDS_:-10}
WARMUP=${WARMUP:-3}
PAYLOAD=${PAYLOAD:-64}
RATE=${RATE:-0}
BATCH=${BATCH:-16}
PROFILE=${PROFILE:-release}

command -v mosquitto >/dev/null || PATH="$PATH:/usr/sbin"
command -v mosquitto >/dev/null || {
  echo "bench-mqtt: mosquitto is missing; run scripts/install-tools.sh (Debian package mosquitto)" >&2
  exit 1
}

echo "bench-mqtt: building the $PROFILE examples" >&2
cargo build --profile "$PROFILE" -p fleetward-dataplane \
  --example mqtt_load --example bench_dataplane --example bare_rumqttd >&2
bin=target/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")/examples

work=$(mktemp -d)
broker_pid=
cleanup() {
  if [[ -n "$broker_pid" ]]; then kill "$broker_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_listening() {
  local port=$1
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench-mqtt: nothing listens on $port after 10 s; see $work/broker.log" >&2
  cat "$work/broker.log" >&2
  return 1
}

# CPU seconds (user + system) a process has used so far.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

start_broker() {
  local which=$1 port=$2 admin=$3
  case $which in
    fleetward)
      "$bin/bench_dataplane" --mqtt-listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --pairs "$PAIRS" >"$work/broker.log" 2>&1 &
      ;;
    rumqttd)
      "$bin/bare_rumqttd" "127.0.0.1:$port" >"$work/broker.log" 2>&1 &
      ;;
    mosquitto)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$work/mosquitto.conf"
      mosquitto -c "$work/mosquitto.conf" >"$work/broker.log" 2>&1 &
      ;;
  esac
  broker_pid=$!
  wait_listening "$port"
}

stop_broker() {
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=
}

# Runs one broker; sets RESULT (messages/s received), CPU (broker cores used) and HIT.
run_one() {
  local which=$1 port admin auth=() cpu0 cpu1 t0 t1 out
  port=$(free_port)
  admin=$(free_port)
  start_broker "$which" "$port" "$admin"
  [[ $which == fleetward ]] && auth=(--auth)
  cpu0=$(cpu_seconds "$broker_pid")
  t0=$(date +%s.%N)
  out=$("$bin/mqtt_load" --port "$port" --pairs "$PAIRS" --payload "$PAYLOAD" \
    --warmup "$WARMUP" --seconds "$SECONDS_" --batch "$BATCH" --rate "$RATE" \
    --label "$which" "${auth[@]}")
  t1=$(date +%s.%N)
  cpu1=$(cpu_seconds "$broker_pid")
  RESULT=$(sed -n 's/.*received_per_s=\([0-9]*\).*/\1/p' <<<"$out")
  WRITTEN=$(sed -n 's/.*written_per_s=\([0-9]*\).*/\1/p' <<<"$out")
  CPU=$(awk -v a="$cpu0" -v b="$cpu1" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.2f", (b - a) / (t1 - t0) }')
  HIT=-
  if [[ $which == fleetward ]]; then
    HIT=$(curl -fsS "http://127.0.0.1:$admin/metrics" |
      awk '/^fleetward_decision_cache_hit_ratio / { h = $2 }
           /^fleetward_decision_cache_hits_total / { n = $2 }
           /^fleetward_decision_cache_misses_total / { m = $2 }
           END { printf "%.6f (%d hits, %d misses)", h, n, m }')
  fi
  stop_broker
}

echo "bench-mqtt: $ROUNDS rounds, $PAIRS pairs, ${PAYLOAD}-byte QoS 0 payloads, rate ${RATE}/s per publisher (0 = unbounded), ${WARMUP} s warm-up, ${SECONDS_} s window; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-10s %14s %14s %9s  %s\n' round broker "received/s" "written/s" "cpu" "cache hit ratio"
brokers=(fleetward rumqttd mosquitto)
summary=()
for round in $(seq "$ROUNDS"); do
  declare -A got=()
  for k in 0 1 2; do
    which=${brokers[$(((k + round - 1) % 3))]}
    run_one "$which"
    got[$which]=$RESULT
    printf '%-6s %-10s %14s %14s %9s  %s\n' "$round" "$which" "$RESULT" "$WRITTEN" "$CPU" "$HIT"
  done
  summary+=("$(awk -v f="${got[fleetward]}" -v r="${got[rumqttd]}" -v m="${got[mosquitto]}" -v n="$round" \
    'BEGIN { printf "round %s: fleetward/rumqttd %.2fx, fleetward/mosquitto %.2fx, rumqttd/mosquitto %.2fx", n, f / r, f / m, r / m }')")
  unset got
done
printf '\n'
printf '%s\n' "${summary[@]}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
