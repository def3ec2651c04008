# syntax=docker/dockerfile:1
# The Fleetward image: one binary, `fleetward`, run as `fleetward operator` or
# `fleetward dataplane` (the Helm chart passes the subcommand as the first argument).
#
#   docker build -t ghcr.io/fleetward/fleetward:0.1.0 .
#
# The same contents as scripts/image.sh, which builds the image without an engine and which the
# tests check (e2e/tests/it/image.rs): the root filesystem comes from that script here too.

ARG RUST_VERSION=1.95

# Build: the workspace, release profile, the fleetward binary only.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin fleetward \
    && install -D -m 0755 target/release/fleetward /out/fleetward

# Assemble: the binary, the libraries ldd lists and the CA bundle from Debian packages,
# passwd/group with nonroot (65532).
FROM debian:bookworm AS assemble
COPY scripts/image.sh charts/fleetward/Chart.yaml /src/
COPY --from=build /out/fleetward /out/fleetward
RUN apt-get update -qq \
    && mkdir -p /src/scripts /src/charts/fleetward \
    && mv /src/image.sh /src/scripts/ && mv /src/Chart.yaml /src/charts/fleetward/ \
    && /src/scripts/image.sh --binary /out/fleetward --out /tmp/image --rootfs-only /rootfs

# Run: nothing but what the assemble stage put in /rootfs; no shell.
FROM scratch
COPY --from=assemble /rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /
EXPOSE 1883 8883 8080 8081 50051
ENTRYPOINT ["/usr/local/bin/fleetward"]
CMD ["--help"]
