#!/usr/bin/env bash
# Builds the `fleetward` binary of a release baseline (compat/<VERSION>/COMMIT) for the
# version-skew test, and prints the directory holding it on its last line:
#   export FLEETWARD_BASELINE="$(scripts/baseline.sh 0.1.0 | tail -n1)"
# The directory has `fleetward` (a debug build, like the binary under test) and `chart/`,
# the release's Helm chart, which renders the command lines its pods ran with.
#
# The source is the release commit exported from this clone's history (`git archive`: no
# tag, no network, no worktree to prune), built in its own target directory, which is
# deleted afterwards: only the binary and the chart are kept, under
# ${XDG_CACHE_HOME:-$HOME/.cache}/fleetward/baseline-<VERSION>-<commit>/. When that exists
# the build is skipped.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { echo "baseline.sh: $*" >&2; }
die() { log "$*"; exit 1; }

version="${1:-}"
[[ -n "$version" ]] || die "usage: scripts/baseline.sh VERSION (one of: $(ls "$repo/compat" | grep -E '^[0-9]+\.' | tr '\n' ' '))"
commit_file="$repo/compat/$version/COMMIT"
[[ -f "$commit_file" ]] || die "$commit_file does not exist: no release baseline $version (scripts/release.sh records one)"
commit="$(tr -d '[:space:]' <"$commit_file")"
git -C "$repo" cat-file -e "$commit^{commit}" 2>/dev/null ||
    die "commit $commit of release $version is not in this clone; a shallow clone needs \`git fetch --unshallow\`"

cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/fleetward"
out="$cache_dir/baseline-$version-${commit:0:12}"
if [[ -x "$out/fleetward" && -f "$out/chart/Chart.yaml" ]]; then
    log "up to date: $out"
    echo "$out"
    exit 0
fi

work="$out.build.$$"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
log "building release $version ($commit) in $work (a cold build takes several minutes)"
start=$SECONDS
git -C "$repo" archive "$commit" | tar -x -C "$work/src"
(
    cd "$work/src"
    # The release's own lockfile, so the build is the one that shipped.
    CARGO_TARGET_DIR="$work/target" CARGO_INCREMENTAL=0 cargo build --locked --bin fleetward
)
rm -rf "$out"
mkdir -p "$out"
cp "$work/target/debug/fleetward" "$out/fleetward"
cp -a "$work/src/charts/fleetward" "$out/chart"
echo "$commit" >"$out/COMMIT"
# Builds of other commits of this version are dead weight.
find "$cache_dir" -maxdepth 1 -name "baseline-$version-*" ! -name "baseline-$version-${commit:0:12}" -type d -exec rm -rf {} +
log "built in $((SECONDS - start))s: $out"
echo "$out"
