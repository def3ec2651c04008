# syntax=docker/dockerfile:1
# The Fleetward image: one binary, `fleetward`, run as `fleetward operator` or
# `fleetward dataplane` (the Helm chart passes the subcommand as the first argument).
#
#   docker build -t ghcr.io/fleetward/fleetward:0.1.0 .
#
# Not built by this repository's tests (no container engine runs where they run).

ARG RUST_VERSION=1.95

# Build: the workspace, release profile, the fleetward binary only.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin fleetward \
    && install -D -m 0755 target/release/fleetward /out/fleetward

# Run: glibc and libgcc only, no shell, user 65532 (nonroot). The chart mounts the state
# directory and the secrets; the root filesystem can stay read-only.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/fleetward /usr/local/bin/fleetward
USER 65532:65532
EXPOSE 1883 8883 8080 8081 50051
ENTRYPOINT ["/usr/local/bin/fleetward"]
CMD ["--help"]
