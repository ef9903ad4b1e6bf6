# syntax=docker/dockerfile:1
#
# tandem's container image: a static release build with the lockfile, then the binary alone on
# distroless.
#
# The binary links glibc statically (`-C target-feature=+crt-static`; this toolchain has no musl
# target): one file with no shared-library dependencies, so the final stage is
# gcr.io/distroless/static-debian12 (CA certificates, /etc/passwd, no libc, no shell, no package
# manager). `--target` keeps crt-static off build scripts and proc macros, which must stay dynamic.
# Name lookup needs no NSS plugin: glibc 2.34+ has the `files` and `dns` sources built in. CI builds
# the same binary with the same command and runs the test suite against it.
#
# It runs as uid/gid 1337, not distroless' 65532: transparent mode's iptables rules exempt tandem's
# uid, so an app that also ran as 65532 (the uid of every distroless "nonroot" image) would have its
# own traffic exempted too. 1337 is the uid Istio's proxy uses.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$(rustc --print host-tuple)" \
    && install -D -m 0755 "target/$(rustc --print host-tuple)/release/tandem" /out/tandem

# Transparent mode's init container (`docker build --target iptables -t tandem-iptables .`): the same
# binary beside the iptables tools (legacy and nft), which `tandem iptables` runs directly (no shell
# involved). Debian's package, so the pod's back end is found whichever the node uses. It runs as uid 0
# with NET_ADMIN and NET_RAW for the few milliseconds of the rules, then exits (deploy/transparent).
FROM debian:bookworm-slim AS iptables
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables=1.8.9-2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/tandem /usr/local/bin/tandem
ENTRYPOINT ["tandem"]
CMD ["iptables", "--dry-run"]

# The proxy's image, the default target (last). The ":nonroot" tag differs from the default only in
# its USER, which is set below anyway.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tandem /usr/local/bin/tandem
USER 1337:1337
# inbound, outbound, admin
EXPOSE 15006 15001 15020
# For `docker run`; Kubernetes uses the probes in deploy/ instead. No shell needed: tandem asks its
# own /ready.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["/usr/local/bin/tandem", "await", "--timeout", "2s"]
ENTRYPOINT ["tandem"]
CMD ["run"]
