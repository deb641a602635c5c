# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain (build.rs needs no
# protoc: it uses a pure-Rust protobuf compiler), run on a slim image as a
# non-root user. `docker compose up` builds this (docker-compose.yml).
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin agent-telemetry \
    && cp target/release/agent-telemetry /usr/local/bin/agent-telemetry

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/agent-telemetry --create-home agent-telemetry
COPY --from=build /usr/local/bin/agent-telemetry /usr/local/bin/agent-telemetry
USER agent-telemetry
# In a container the service must listen beyond loopback; the spool lives
# in a volume so that acknowledged batches survive a restart.
ENV AGENT_TELEMETRY_LISTEN=0.0.0.0:50051 \
    AGENT_TELEMETRY_METRICS_LISTEN=0.0.0.0:9464 \
    AGENT_TELEMETRY_SPOOL_DIR=/var/lib/agent-telemetry/spool \
    AGENT_TELEMETRY_OTLP_GRPC_LISTEN=0.0.0.0:4317 \
    AGENT_TELEMETRY_OTLP_HTTP_LISTEN=0.0.0.0:4318
VOLUME /var/lib/agent-telemetry
EXPOSE 50051 9464 4317 4318
# The gRPC health service, asked by the binary itself (no probe to install).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["agent-telemetry", "health", "--endpoint", "http://127.0.0.1:50051"]
ENTRYPOINT ["agent-telemetry"]
CMD ["serve"]
