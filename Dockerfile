# syntax=docker/dockerfile:1
# The impersonate-proxy image: a release build on Debian bookworm, run on
# distroless (glibc and libgcc, no shell, no package manager) as uid 65532.
#
#   docker build -t impersonate-proxy:0.1.0 .
#   docker run --rm impersonate-proxy:0.1.0 --version
#
# The process writes nothing to disk except an [audit] file you configure,
# so it runs with a read-only root filesystem. Mount the config and the CA
# (deploy/kubernetes/ does) and run:
#   impersonate-proxy run --config /etc/impersonate-proxy/config/proxy.toml

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build between image builds; the
# binary is copied out because the target directory is not in the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin impersonate-proxy \
    && cp target/release/impersonate-proxy /impersonate-proxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /impersonate-proxy /usr/local/bin/impersonate-proxy
# nonroot is 65532:65532; said again so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 9091
ENTRYPOINT ["/usr/local/bin/impersonate-proxy"]
CMD ["run", "--config", "/etc/impersonate-proxy/config/proxy.toml"]
