# Multi-stage build: compile with the Rust toolchain, run on a slim image as
# a non-root user. protoc is not needed (build.rs uses a pure-Rust compiler).
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin agent-telemetry

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 agent-telemetry
COPY --from=build /src/target/release/agent-telemetry /usr/local/bin/agent-telemetry
USER agent-telemetry
EXPOSE 50051 9464
ENTRYPOINT ["agent-telemetry"]
CMD ["serve"]
