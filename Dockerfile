# syntax=docker/dockerfile:1
# mailconnect image: built in a full Rust image, run in a slim Debian with only what the binary
# links (libpq for Postgres; SQLite is compiled in) and CA roots, as an unprivileged user.
#   docker build -t mailconnect .
#   docker run --rm -p 50051:50051 -e MAILCONNECT_DATABASE_URL=postgres://… mailconnect

FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
# Cache mounts keep the registry and target between builds; the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mailconnect \
 && install -D target/release/mailconnect /out/mailconnect

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mailconnect \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mailconnect --no-create-home mailconnect \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/mailconnect
COPY --from=build /out/mailconnect /usr/local/bin/mailconnect
ENV MAILCONNECT_LISTEN_ADDR=0.0.0.0:50051 \
    MAILCONNECT_DATA_DIR=/var/lib/mailconnect \
    MAILCONNECT_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/mailconnect
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/mailconnect"]
CMD ["serve"]
