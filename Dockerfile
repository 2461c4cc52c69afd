# fapi-host in a small image: build stage with the Rust toolchain, final stage with only the binary,
# CA roots and a non-root user (no compiler, no shell tools beyond Debian's base).
#   docker build -t fapi-host .          (or: buildah bud -t fapi-host .)
#   docker run --rm -v "$PWD/fapi:/etc/fapi:ro" fapi-host --config /etc/fapi/fapi.toml check

FROM rust:1.95-slim-bookworm AS build
# fapi-host embeds the example plugins of `fapi-host demo`, built for wasm32-wasip2.
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fapi-host --bin fapi-host \
    && cp target/release/fapi-host /fapi-host

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /data fapi \
    && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /fapi-host /usr/local/bin/fapi-host
USER 10001:10001
WORKDIR /data
ENTRYPOINT ["fapi-host"]
CMD ["--help"]
