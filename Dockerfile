# syntax=docker/dockerfile:1
#
# kpush container image.
#
#   docker build -t kpush:dev --build-arg VERSION=$(git describe --tags --always) .
#   docker build --target feed -t kpush-feed:dev .      # the market-feed producer
#
# The go build line below is the one `make build` runs; a test in
# deployments/kubernetes checks that the two stay identical, so a binary built
# on a laptop and one built here differ only in where they were built.

ARG GO_VERSION=1.26

# ---- source: module cache warmed from go.mod/go.sum, then the tree ----------
FROM golang:${GO_VERSION}-bookworm AS source
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .

# ---- build: the kpush gateway -------------------------------------------------
FROM source AS build
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o bin/kpush ./cmd/kpush

# ---- build-feed: the kpush-feed producer (only built for --target feed) ------
FROM source AS build-feed
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o bin/kpush-feed ./cmd/kpush-feed

# ---- feed: runtime image for kpush-feed ---------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot AS feed
COPY --from=build-feed /src/bin/kpush-feed /usr/local/bin/kpush-feed
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/kpush-feed"]

# ---- kpush: the default (last) stage ------------------------------------------
# distroless/static: no shell, no package manager, CA certificates and tzdata
# only. "nonroot" is uid/gid 65532; the Kubernetes manifests pin the same ids.
FROM gcr.io/distroless/static-debian12:nonroot AS kpush
ARG VERSION=dev
LABEL org.opencontainers.image.title="kpush" \
      org.opencontainers.image.description="Kafka-fed WebSocket push gateway" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /src/bin/kpush /usr/local/bin/kpush
# The documented defaults, so `docker run kpush` starts with something sane;
# Kubernetes and compose mount their own file over /etc/kpush.
COPY configs/kpush.yaml /etc/kpush/kpush.yaml
USER nonroot:nonroot
# 8080: WebSocket clients (listen). 9090: /metrics /healthz /readyz /debug/pprof (admin_listen).
EXPOSE 8080 9090
# No shell in the image, so the check is the binary itself (exec form).
# It probes http://127.0.0.1:9090/healthz; pass -url if admin_listen is changed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/kpush", "healthcheck"]
# Docker's default stop signal is SIGTERM, which starts kpush's drain; give it
# `docker stop -t 30` (> gateway.drain_timeout) so the drain can finish.
ENTRYPOINT ["/usr/local/bin/kpush"]
CMD ["-config", "/etc/kpush/kpush.yaml"]
