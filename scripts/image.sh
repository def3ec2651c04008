#!/usr/bin/env bash
# Assembles the Fleetward OCI image without a container engine, as an OCI archive:
#   - the fleetward binary at /usr/local/bin/fleetward (the entrypoint);
#   - only the shared libraries `ldd` says it loads, and the CA certificates (one bundle at
#     /etc/ssl/certs/ca-certificates.crt), taken from Debian packages with `apt-get download`
#     and `dpkg-deb -x` (the machine's own files are never copied);
#   - /etc/passwd and /etc/group with root and nonroot (65532), the user the image runs as;
#   - a layer and config written by umoci.
# The Dockerfile builds the same contents for people with an engine.
#
#   scripts/image.sh                      # cargo build --release --bin fleetward, then the image
#   scripts/image.sh --debug              # target/debug/fleetward (cargo build --bin fleetward)
#   scripts/image.sh --binary PATH        # a binary built elsewhere (same Debian release)
#   options: --out DIR (default target/image), --tag TAG (default: the chart's appVersion)
#   scripts/image.sh --binary PATH --rootfs-only DIR   # only the root filesystem, in DIR
#                                                      # (the Dockerfile's assemble stage)
#
# Prints the archive's path on its last line. Push it with
#   skopeo copy oci-archive:target/image/fleetward-0.1.0.tar:0.1.0 docker://REGISTRY/fleetward:0.1.0
# Needs: umoci, dpkg-deb, apt-get (scripts/install-tools.sh installs umoci and skopeo).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "image: $*" >&2; }
die() { log "$*"; exit 1; }

profile=release binary="" out=target/image rootfs_only=""
tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/fleetward/Chart.yaml)
while (($#)); do
  case "$1" in
    --debug) profile=debug ;;
    --binary) binary="${2:?--binary needs a path}"; shift ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --tag) tag="${2:?--tag needs a tag}"; shift ;;
    --rootfs-only) rootfs_only="${2:?--rootfs-only needs a directory}"; shift ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *) die "unknown option $1; see scripts/image.sh --help" ;;
  esac
  shift
done
[[ -n "$tag" ]] || die "no tag: charts/fleetward/Chart.yaml has no appVersion; pass --tag"
tools=(dpkg-deb apt-get ldd)
[[ -n "$rootfs_only" ]] || tools+=(umoci)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || die "$tool is missing: run scripts/install-tools.sh (or apt-get install umoci)"
done

if [[ -z "$binary" ]]; then
  if [[ "$profile" == release ]]; then
    cargo build --release --locked --bin fleetward >&2
  else
    cargo build --locked --bin fleetward >&2
  fi
  binary="target/$profile/fleetward"
fi
[[ -x "$binary" ]] || die "$binary is not an executable"

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="${rootfs_only:-$work/rootfs}"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/var/lib/fleetward"
install -m 0755 "$binary" "$rootfs/usr/local/bin/fleetward"

# The Debian package owning a file: dpkg knows it under the path ldd prints or, with merged
# /usr, under the other of /lib… and /usr/lib….
owner() {
  local path=$1 alt
  case "$path" in /usr/*) alt=${path#/usr} ;; *) alt=/usr$path ;; esac
  dpkg -S "$path" 2>/dev/null | head -n1 | cut -d: -f1 && return 0
  dpkg -S "$alt" 2>/dev/null | head -n1 | cut -d: -f1 && return 0
  return 1
}

# Downloads a package once per version into the cache and unpacks it under $work/pkg/NAME.
debs="$out/debs"
mkdir -p "$debs"
# As root, apt hands downloads to user _apt, who cannot write the cache directory.
apt_opts=(-qq)
[[ "$(id -u)" -ne 0 ]] || apt_opts+=(-o APT::Sandbox::User=root)
unpack() {
  local pkg=$1
  [[ -d "$work/pkg/$pkg" ]] && return 0
  local deb
  deb=$(ls "$debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
  if [[ -z "$deb" ]]; then
    (cd "$debs" && apt-get "${apt_opts[@]}" download "$pkg" >&2) ||
      die "apt-get download $pkg failed: run apt-get update, or check the machine's apt sources"
    deb=$(ls "$debs/${pkg}"_*.deb | head -n1)
  fi
  mkdir -p "$work/pkg/$pkg"
  dpkg-deb -x "$deb" "$work/pkg/$pkg"
}

# Copies one file (and the symlink chain to it) from package $1's tree into the rootfs, at
# the path the dynamic loader looks for it.
copy_from_package() {
  local pkg=$1 path=$2 tree="$work/pkg/$1" src
  local hops target
  for src in "$tree$path" "$tree/usr$path" "$tree${path#/usr}"; do
    [[ -e "$src" || -L "$src" ]] || continue
    # Follows symlinks inside the package tree: an absolute target names the package's own
    # file (ld-linux's /lib64 link), never the machine's.
    hops=0
    while [[ -L "$src" ]] && ((hops++ < 10)); do
      target=$(readlink "$src")
      case "$target" in /*) src="$tree$target" ;; *) src="$(dirname "$src")/$target" ;; esac
    done
    [[ -f "$src" ]] || die "package $pkg: $path leads to $src, which it does not hold"
    mkdir -p "$rootfs$(dirname "$path")"
    cp "$src" "$rootfs$path"
    return 0
  done
  die "package $pkg has no $path"
}

libs=$(ldd "$binary" | grep -o '/[^ ]*' | sort -u)
[[ -n "$libs" ]] || die "ldd lists no libraries for $binary; is it dynamically linked for this machine?"
if ldd "$binary" | grep -q 'not found'; then
  die "ldd: $(ldd "$binary" | grep 'not found')"
fi
for lib in $libs; do
  pkg=$(owner "$lib") || die "no Debian package owns $lib: the image cannot take it from a package"
  unpack "$pkg"
  copy_from_package "$pkg" "$lib"
  log "$lib from $pkg"
done

# The CA bundle update-ca-certificates would build from the package's certificates.
unpack ca-certificates
find "$work/pkg/ca-certificates/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z |
  xargs -0 cat >"$rootfs/etc/ssl/certs/ca-certificates.crt"
[[ -s "$rootfs/etc/ssl/certs/ca-certificates.crt" ]] || die "the ca-certificates package held no certificates"
log "/etc/ssl/certs/ca-certificates.crt from ca-certificates ($(grep -c 'BEGIN CERTIFICATE' "$rootfs/etc/ssl/certs/ca-certificates.crt") certificates)"

cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
chmod 1777 "$rootfs/tmp"
# Owned by nonroot so the dataplane's default state directory works outside the chart too.
chown 65532:65532 "$rootfs/var/lib/fleetward" 2>/dev/null ||
  log "not root: /var/lib/fleetward stays owned by $(id -u); the chart mounts a volume there anyway"

if [[ -n "$rootfs_only" ]]; then
  log "root filesystem in $rootfs"
  exit 0
fi

layout="$work/layout"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci insert --image "$layout:$tag" "$rootfs" /
umoci config --image "$layout:$tag" \
  --os linux --architecture amd64 \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/fleetward --config.cmd --help \
  --config.env PATH=/usr/local/bin:/usr/bin:/bin \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.workingdir / \
  --config.exposedports 1883/tcp --config.exposedports 8883/tcp --config.exposedports 8080/tcp \
  --config.exposedports 8081/tcp --config.exposedports 50051/tcp \
  --config.label org.opencontainers.image.title=fleetward \
  --config.label "org.opencontainers.image.version=$tag" \
  --config.label org.opencontainers.image.source=https://github.com/fleetward/fleetward
umoci gc --layout "$layout"

archive="$out/fleetward-$tag.tar"
tar -C "$layout" -cf "$archive.partial" .
mv "$archive.partial" "$archive"
log "$archive ($(du -h "$archive" | cut -f1)), tag $tag, $(basename "$binary") from $binary"
echo "$archive"
