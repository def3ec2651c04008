#!/usr/bin/env bash
# A local Kubernetes API server for trying Fleetward on a cluster without having one: the
# end-to-end control plane (etcd, kube-apiserver, the garbage-collector and namespace
# controllers in one binary, built by scripts/controlplane.sh; Go must be installed), run in the
# background.
#   scripts/local-cluster.sh start    starts it (or finds it running); prints the kubeconfig path
#   scripts/local-cluster.sh stop     stops it, keeping its objects for the next start
#   scripts/local-cluster.sh delete   stops it and removes its data
# Everything lives in .fleetward/cluster/ of the repository ($FLEETWARD_CLUSTER_DIR): data/,
# controlplane.log, pid, and kubeconfig (the admin's, user in system:masters).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${FLEETWARD_CLUSTER_DIR:-$repo/.fleetward/cluster}"
pid_file="$dir/pid"
log_file="$dir/controlplane.log"
kubeconfig="$dir/kubeconfig"
log() { echo "local-cluster.sh: $*" >&2; }

running_pid() {
  [[ -f "$pid_file" ]] || return 1
  local pid
  pid="$(cat "$pid_file")"
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  if pid="$(running_pid)"; then
    log "already running (pid $pid)"
    echo "$kubeconfig"
    return
  fi
  local binary
  binary="$("$repo/scripts/controlplane.sh" | tail -n1)"
  mkdir -p "$dir/data"
  # A session of its own: closing the terminal or Ctrl-C there does not stop it.
  setsid "$binary" --data-dir "$dir/data" >"$log_file" 2>&1 </dev/null &
  echo $! >"$pid_file"
  log "starting (pid $!, log $log_file)"
  local deadline=$((SECONDS + 180))
  until grep -qsx ready "$log_file"; do
    if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      tail -n 20 "$log_file" >&2
      log "the control plane exited; its log is above and in $log_file"
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "not ready after 180 s; see $log_file"
      exit 1
    fi
    sleep 0.5
  done
  ln -sf "$(sed -n 's/^kubeconfig: //p' "$log_file" | tail -n1)" "$kubeconfig"
  log "ready: $(sed -n 's/^server: //p' "$log_file" | tail -n1); use it with export KUBECONFIG=$kubeconfig"
  echo "$kubeconfig"
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    kill -TERM "$pid"
    for _ in $(seq 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    log "stopped (pid $pid)"
  fi
  rm -f "$pid_file"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  delete) stop && rm -rf "$dir" && log "removed $dir" ;;
  *)
    echo "usage: scripts/local-cluster.sh start|stop|delete" >&2
    exit 2
    ;;
esac
