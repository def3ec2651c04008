#!/usr/bin/env bash
# Builds the end-to-end control plane (e2e/controlplane: etcd, kube-apiserver and
# the garbage-collector and namespace controllers in one binary) and prints the
# binary's path on its last line:
#   export FLEETWARD_CONTROLPLANE="$(scripts/controlplane.sh | tail -n1)"
# The binary is kept under ${XDG_CACHE_HOME:-$HOME/.cache}/fleetward/, named by a
# hash of the Go version, this script, go.mod, go.sum and the .go files: when
# nothing changed the build is skipped, and when something did, Go's build cache
# keeps the rebuild to the changed packages and the link.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/e2e/controlplane"
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/fleetward"
log() { echo "controlplane.sh: $*" >&2; }

# The Go tarball's usual home, for a shell whose PATH does not have it.
[[ -x /usr/local/go/bin/go ]] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { log "Go is needed to build the control plane (go.mod says which version); put it on PATH"; exit 1; }

key="$(
  cd "$src"
  { go env GOVERSION GOOS GOARCH; cat "$repo/scripts/controlplane.sh" go.mod go.sum; find . -name '*.go' -type f | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -c1-16
)"
binary="$cache_dir/controlplane-$key"

if [[ -x "$binary" ]]; then
  log "up to date: $binary"
else
  mkdir -p "$cache_dir"
  log "building $src (a cold build takes several minutes)"
  start=$SECONDS
  tmp="$binary.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  # The API server reports the Kubernetes version of its libraries (k8s.io/apiserver v0.X.Y is
  # Kubernetes v1.X.Y), as a release build does: Helm checks a chart's kubeVersion against it.
  lib=$(sed -n 's/^[[:space:]]*k8s\.io\/apiserver => k8s\.io\/apiserver v0\.\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' "$src/go.mod" | head -n1)
  [[ -n "$lib" ]] || { log "go.mod has no k8s.io/apiserver replace line to take the Kubernetes version from"; exit 1; }
  read -r minor patch <<<"$lib"
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=v1.$minor.$patch -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  (cd "$src" && go build -mod=readonly -buildvcs=false -trimpath -ldflags="$ldflags" -o "$tmp" .)
  mv -f "$tmp" "$binary"
  # Older builds are dead weight (each is about 100 MB).
  find "$cache_dir" -maxdepth 1 -name 'controlplane-*' ! -name "controlplane-$key" -type f -delete
  log "built in $((SECONDS - start))s: $binary"
fi
echo "$binary"
