# syntax=docker/dockerfile:1
#
# dbgrant operator image: a static musl binary on distroless, running as the
# nonroot user (65532). Build: docker build -t ghcr.io/dbgrant/dbgrant:dev .
# The binary is built by deploy/build-binary.sh, the same command CI runs.

# --- builder -------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl

WORKDIR /src
COPY . .

# Registry and target caches persist between builds (BuildKit); the binary is
# copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    deploy/build-binary.sh \
 && cp target/x86_64-unknown-linux-musl/release/dbgrant /dbgrant

# --- runtime -------------------------------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot

LABEL org.opencontainers.image.title="dbgrant" \
      org.opencontainers.image.description="Kubernetes operator that keeps MongoDB and Azure Cosmos DB access in line with Microsoft Entra ID identities" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/dbgrant/dbgrant"

COPY --from=builder --chown=0:0 --chmod=0555 /dbgrant /dbgrant

USER 65532:65532
# Metrics and health (/metrics, /healthz, /readyz).
EXPOSE 8080
ENTRYPOINT ["/dbgrant"]
CMD ["run"]
