# syntax=docker/dockerfile:1
#
# oauth-sidecar container image.
#
#   docker build -t oauth-sidecar:0.1.0 .
#   docker run --rm -p 127.0.0.1:8080:8080 --stop-timeout 30 -e SIDECAR_SHUTDOWN_DELAY=0 \
#     -v "$PWD/secrets:/etc/oauth-sidecar/secrets:ro" -e SIDECAR_SERVICE_KEY=/etc/oauth-sidecar/secrets/key.json \
#     -v "$PWD/users:/etc/oauth-sidecar/users:ro" -e SIDECAR_BASIC_AUTH_FILE=/etc/oauth-sidecar/users \
#     oauth-sidecar:0.1.0
#
# The key's directory is mounted, not the file: a bind mount of one file keeps its first inode, so a key
# replaced by rename on the host would never reach the container (README, Docker). Mounted files must be
# readable by uid 65532, the directory searchable by it (mkdir -m 0755).
#
# Stages: `build` (all dependencies, tsc emits dist/), `prod-deps` (a clean `npm ci --omit=dev`, so no
# devDependency and no build tool reaches the runtime), `runtime` (dist/, production node_modules and
# package.json, nothing else).
#
# Runtime base: gcr.io/distroless/nodejs24-debian12:nonroot, a current Node.js LTS without a shell, a
# package manager or npm (a smaller attack surface than node:24-bookworm-slim, which ships npm, a shell
# and apt), running as uid/gid 65532 by default. Nothing in the image needs a shell: ENTRYPOINT,
# CMD and HEALTHCHECK are exec form and use the image's node binary, /nodejs/bin/node. For interactive
# debugging, build with --build-arg RUNTIME_IMAGE=gcr.io/distroless/nodejs24-debian12:debug-nonroot
# (busybox shell) or use `kubectl debug`.
# Build stages use the Debian-based node image of the same major version, so that what is installed is
# what runs.

ARG NODE_IMAGE=node:24-bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/nodejs24-debian12:nonroot

# ---------------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# Nothing the build needs has an install script (tsc is plain JavaScript).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---------------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /src
COPY package.json package-lock.json ./
# Only "dependencies" of package.json; none of them has an install script.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# ---------------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="oauth-sidecar" \
      org.opencontainers.image.description="Reverse-proxy sidecar adding OAuth 2.0 client-credentials tokens from an SAP BTP service key to plain HTTP calls bound for SAP Cloud Integration" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"

WORKDIR /app
# Owned by root and read-only for the process: the sidecar cannot modify its own code.
COPY --from=prod-deps /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/package.json ./package.json

# Listen on all interfaces inside the container. 0.0.0.0 is not loopback, so `serve` refuses to start
# until inbound control is chosen (protected mode): SIDECAR_BASIC_AUTH_FILE, SIDECAR_ALLOW_CIDRS, or
# SIDECAR_ALLOW_ANY_SENDER=true. `token` and `check` never listen and run without it (`check` warns).
# A pod-local sidecar sets SIDECAR_LISTEN=127.0.0.1:8080 instead.
# The admin listener (/healthz, /readyz, /metrics) must be reachable by the kubelet and by Docker's
# health check; it exposes no secret (route names, states, error codes and counters only) and never
# forwards anything.
ENV SIDECAR_LISTEN=0.0.0.0:8080 \
    SIDECAR_ADMIN_LISTEN=0.0.0.0:9090

# V8's young generation, pinned at what node 20 picks on an unconstrained host (two 16 MB semi-spaces;
# measured on the build machines; the image's newer node is held to the same size).
# Under a container memory limit node sizes it from the limit instead: with the Kubernetes example's
# 192Mi that is 1 MB semi-spaces, and the sidecar spent about 15 % more CPU per request (garbage
# collection pauses 10.7 instead of 1.7 µs per request; README: Benchmarks and soak). Pinned, the
# sidecar runs as benchmarked whatever the limit. Set NODE_OPTIONS yourself to trade CPU for memory
# (e.g. --max-semi-space-size=4: about 24 MB less RSS, 4-11 % more CPU per request and a higher p99
# from more frequent collections). The same
# value as SHIPPED_NODE_FLAGS in bench/lib/contenders.ts (a unit test keeps them equal).
ENV NODE_OPTIONS=--max-semi-space-size=16

EXPOSE 8080 9090

# Numeric, so that Kubernetes' runAsNonRoot can verify it (65532 is distroless' "nonroot").
USER 65532:65532

# Liveness through the admin listener, without a shell or curl: node's own fetch(). It follows
# SIDECAR_ADMIN_LISTEN (a wildcard host is probed on 127.0.0.1); with SIDECAR_ADMIN_LISTEN=off there
# is no endpoint to probe, and the check passes (the container's state is then its process state).
# Kubernetes ignores HEALTHCHECK and uses the probes of the pod spec (config/kubernetes/).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/nodejs/bin/node", "-e", "const a=process.env.SIDECAR_ADMIN_LISTEN||'127.0.0.1:9090';if(a==='off')process.exit(0);const i=a.lastIndexOf(':');let h=a.slice(0,i);if(h===''||h==='0.0.0.0'||h==='[::]')h='127.0.0.1';fetch('http://'+h+':'+a.slice(i+1)+'/healthz',{signal:AbortSignal.timeout(4000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# Node runs as PID 1 and handles SIGTERM/SIGINT itself (readiness fails, in-flight requests drain,
# exit 0); no init process is needed.
ENTRYPOINT ["/nodejs/bin/node", "dist/cli.js"]
CMD ["serve"]
