#!/usr/bin/env bash
# Fetches cert-manager's CRDs (Certificate, Issuer, ClusterIssuer, CertificateRequest) for the
# end-to-end tests and prints the path of one YAML stream holding them on its last line:
#   export FLEETWARD_CERT_MANAGER_CRDS="$(scripts/cert-manager-crds.sh | tail -n1)"
# They come from cert-manager's Go module (the Go module proxy serves its source zip, whose
# deploy/crds/ holds the CRDs of the release), so no container registry or GitHub download
# is needed. The file is kept under ${XDG_CACHE_HOME:-$HOME/.cache}/fleetward/, named by the
# version: a second run fetches nothing.
set -euo pipefail

version="${CERT_MANAGER_VERSION:-v1.16.2}"
module=github.com/cert-manager/cert-manager
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/fleetward"
out="$cache_dir/cert-manager-crds-$version.yaml"
log() { echo "cert-manager-crds.sh: $*" >&2; }

if [[ -s "$out" ]]; then
  log "up to date: $out"
  echo "$out"
  exit 0
fi

[[ -x /usr/local/go/bin/go ]] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { log "Go is needed to fetch cert-manager's module; put it on PATH"; exit 1; }
mkdir -p "$cache_dir"
# A module download needs no go.mod; GOFLAGS keeps a surrounding one from interfering.
dir="$(cd "$cache_dir" && GOFLAGS=-mod=mod go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$dir/deploy/crds" ]] || { log "$module@$version has no deploy/crds/ (looked in ${dir:-nothing})"; exit 1; }

tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
for kind in certificates certificaterequests issuers clusterissuers; do
  file="$dir/deploy/crds/crd-$kind.yaml"
  [[ -f "$file" ]] || { log "missing $file"; exit 1; }
  echo "---"
  # The files are Helm templates whose directives sit in comments and label values; the labels
  # become plain ones, the rest is already valid YAML.
  sed -e "s/'{{ template \"cert-manager.name\" . }}'/cert-manager/" \
      -e "s/'{{ .Release.Name }}'/cert-manager/" \
      -e '/{{/{/^[[:space:]]*#/!d}' "$file"
done >"$tmp"
mv "$tmp" "$out"
log "wrote $out from $module@$version"
echo "$out"
