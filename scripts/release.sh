#!/usr/bin/env bash
# Cuts a release: bumps the workspace and chart versions, tags the release commit
# v<VERSION>, and records the release baseline in compat/<VERSION>/ (compat/README.md)
# that later versions are checked against. docs/upgrades.md says when and why.
#
#   scripts/release.sh 0.2.0                # bump, commit, tag, then record and commit the baseline
#   scripts/release.sh --record-only 0.1.0  # only write compat/0.1.0/ from HEAD (no bump, no tag)
#
# The release makes two commits: "release VERSION" (the bump, tagged v<VERSION>) and
# "compat: the VERSION baseline", which records that commit's hash in compat/<VERSION>/COMMIT,
# so tests that build an old release need neither the tag nor the network.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}
die() {
    printf 'release.sh: %s\n' "$*" >&2
    exit 1
}

record_only=false
version=""
for arg in "$@"; do
    case "$arg" in
    --record-only) record_only=true ;;
    -h | --help) usage ;;
    -*) die "unknown option $arg (see --help)" ;;
    *) [[ -z "$version" ]] || die "one VERSION only (got $version and $arg)"; version="$arg" ;;
    esac
done
[[ -n "$version" ]] || usage
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    die "VERSION must be MAJOR.MINOR.PATCH, e.g. 0.2.0 (got '$version')"

out="compat/$version"
[[ ! -e "$out" ]] ||
    die "$out already exists: a release baseline is never rewritten. Pick the next version."

# The baseline and the tag must describe a commit, not a working tree nobody else has.
dirty=$(git status --porcelain)
if [[ -n "$dirty" ]]; then
    printf '%s\n' "$dirty" >&2
    die "the working tree has uncommitted changes (above); commit or stash them first, so the baseline and the tag describe exactly one commit"
fi

step() { printf '\n==> %s\n' "$*"; }

workspace_version() {
    awk '/^\[/ { s = ($0 == "[workspace.package]") }
         s && /^version *= *"/ { gsub(/.*= *"|".*/, ""); print; exit }' Cargo.toml
}

# Sets the first `version = "..."` line of [section] in a Cargo.toml; inherited versions
# (`version.workspace = true`) do not match and stay as they are.
set_version() {
    local file=$1 section=$2
    awk -v sec="[$section]" -v ver="$version" '
        /^\[/ { s = ($0 == sec) }
        s && !done && /^version *= *"/ { sub(/"[^"]*"/, "\"" ver "\""); done = 1 }
        { print }' "$file" >"$file.release.tmp"
    mv "$file.release.tmp" "$file"
}

bump() {
    set_version Cargo.toml workspace.package
    # Workspace members that set their own version; the fuzz crates are outside the
    # workspace, never released, and keep cargo-fuzz's 0.0.0.
    cargo metadata --no-deps --format-version 1 --offline |
        grep -o '"manifest_path":"[^"]*"' | sed 's/^"manifest_path":"//; s/"$//' |
        while read -r manifest; do set_version "$manifest" package; done
    sed -i -E "s/^version: .*/version: $version/; s/^appVersion: .*/appVersion: \"$version\"/" \
        charts/fleetward/Chart.yaml
    # Rewrites the workspace members' versions in Cargo.lock and nothing else.
    cargo update --workspace --offline
    [[ "$(workspace_version)" == "$version" ]] || die "the version bump did not take; check Cargo.toml"
}

# Writes compat/<version>/ from the committed tree at HEAD: the protobuf descriptor set
# (compiled by proto/tests/it/compat, with protox), the generated CRD YAML and the commit.
record() {
    local rev
    rev=$(git rev-parse HEAD)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT # global: the trap runs after this function has returned
    git archive "$rev" proto crds | tar -x -C "$tmp"
    mkdir -p "$out/crds"
    FLEETWARD_COMPAT_PROTO_ROOT="$tmp/proto" FLEETWARD_COMPAT_OUT="$PWD/$out/descriptor-set.binpb" \
        cargo test --quiet -p fleetward-proto --test it -- --ignored --exact compat::record_descriptor_set
    [[ -s "$out/descriptor-set.binpb" ]] || die "no descriptor set was written to $out"
    cp "$tmp"/crds/*.yaml "$out/crds/"
    printf '%s\n' "$rev" >"$out/COMMIT"
}

if ! $record_only; then
    tag="v$version"
    ! git rev-parse --quiet --verify "refs/tags/$tag" >/dev/null ||
        die "tag $tag already exists; pick the next version"
    current=$(workspace_version)
    [[ -n "$current" ]] || die "no [workspace.package] version in Cargo.toml"
    [[ "$current" != "$version" &&
        "$(printf '%s\n%s\n' "$current" "$version" | sort -V | tail -n 1)" == "$version" ]] ||
        die "VERSION $version is not newer than the workspace's $current"
fi

step "the committed CRD YAML matches crds/src"
cargo test --quiet -p fleetward-crds --test it -- generated::committed_crds_match_the_types

if $record_only; then
    step "recording $out from $(git rev-parse --short HEAD) (no bump, no tag)"
    record
    step "wrote $out; review it and commit it"
    exit 0
fi


step "the protobuf and the CRDs are compatible with the newest baseline"
cargo test --quiet -p fleetward-proto --test it -- compat::
cargo test --quiet -p fleetward-crds --test it -- compat::

step "bumping the workspace and chart versions to $version"
bump
git add -u
git commit --quiet -m "release $version"
git tag "$tag"

step "recording $out from $tag"
record
git add "$out"
git commit --quiet -m "compat: the $version release baseline"
step "released $version: tag $tag, baseline $out. Push both: git push && git push origin $tag"
