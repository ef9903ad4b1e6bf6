# syntax=docker/dockerfile:1
#
# tandem's container image: a release build with the lockfile, then the binary alone on distroless.
#
# The final stage is gcr.io/distroless/cc-debian12 (glibc, libgcc, CA certificates, no shell, no
# package manager): this toolchain has no musl target, so the binary links glibc dynamically; the
# build stage uses the same Debian release (bookworm, glibc 2.36). CI builds the same binary with the
# same command (`cargo build --release --locked`) and runs the test suite against it.
#
# It runs as uid/gid 1337, not distroless' 65532: transparent mode's iptables rules exempt tandem's
# uid, so an app that also ran as 65532 (the uid of every distroless "nonroot" image) would have its
# own traffic exempted too. 1337 is the uid Istio's proxy uses, for the same reason.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/tandem /out/tandem

# The ":nonroot" tag differs from the default only in its USER, which is set below anyway.
FROM gcr.io/distroless/cc-debian12:nonroot
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
