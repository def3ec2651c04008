#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the history tests and benchmarks (Debian's
# `postgresql` package: scripts/install-tools.sh installs it) and prints its URL on its last
# line:
#   export FLEETWARD_POSTGRES_URL="$(scripts/postgres.sh | tail -n1)"
#   scripts/postgres.sh stop     # stops it and removes its directory
#   scripts/postgres.sh pause    # stops it and keeps its data (run the script again to start it)
# Idempotent: a cluster already running is reused. It lives in
# ${FLEETWARD_POSTGRES_DIR:-${TMPDIR:-/tmp}/fleetward-postgres-<uid>}, listens on 127.0.0.1 and a
# socket in that directory, port ${FLEETWARD_POSTGRES_PORT:-55432}, and trusts local
# connections (it holds test data only). PostgreSQL refuses to run as root: as root, the
# cluster runs as the `postgres` user the package creates (or ${FLEETWARD_POSTGRES_OS_USER}).
set -euo pipefail

dir="${FLEETWARD_POSTGRES_DIR:-${TMPDIR:-/tmp}/fleetward-postgres-$(id -u)}"
port="${FLEETWARD_POSTGRES_PORT:-55432}"
log() { echo "postgres.sh: $*" >&2; }

bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[[ -n "$bin" && -x "$bin/initdb" ]] || { log "no /usr/lib/postgresql/*/bin/initdb: run scripts/install-tools.sh (it installs Debian's postgresql)"; exit 1; }

as_user=()
if [[ "$(id -u)" -eq 0 ]]; then
  os_user="${FLEETWARD_POSTGRES_OS_USER:-postgres}"
  id "$os_user" >/dev/null 2>&1 || { log "running as root, and there is no user $os_user to run PostgreSQL as: set FLEETWARD_POSTGRES_OS_USER to a non-root user"; exit 1; }
  as_user=(runuser -u "$os_user" --)
fi
pg_ctl() { "${as_user[@]}" "$bin/pg_ctl" -D "$dir/data" "$@"; }

if [[ "${1:-}" == "pause" ]]; then
  pg_ctl -m fast -w stop >/dev/null 2>&1 || true
  log "paused $dir (data kept)"
  exit 0
fi

if [[ "${1:-}" == "stop" ]]; then
  if [[ -d "$dir/data" ]]; then
    pg_ctl -m fast stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    log "stopped and removed $dir"
  fi
  exit 0
fi

if [[ ! -f "$dir/data/PG_VERSION" ]]; then
  rm -rf "$dir"
  mkdir -p "$dir"
  [[ ${#as_user[@]} -eq 0 ]] || chown "$os_user" "$dir"
  log "initdb in $dir"
  "${as_user[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    { log "initdb failed: see $dir/initdb.log"; exit 1; }
fi

if pg_ctl status >/dev/null 2>&1; then
  log "already running in $dir"
else
  # Parallel tests each open a small pool in a database of their own.
  pg_ctl -w -t 60 -l "$dir/server.log" \
    -o "-k $dir -p $port -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null ||
    { log "the server did not start: see $dir/server.log (is port $port taken? set FLEETWARD_POSTGRES_PORT)"; exit 1; }
  log "started in $dir, port $port"
fi
echo "postgres://postgres@127.0.0.1:$port/postgres"
