# syntax=docker/dockerfile:1
# The Custody operator image (the chart's image.repository): TypeScript
# compiled to dist/ as `make build` does, production dependencies only, on a
# distroless Node 24 runtime (no shell, no package manager), as the numeric
# non-root user 65532 that the chart's securityContext expects.
#
#   docker build -t ghcr.io/custody-dev/custody-operator:0.1.0 .
#
# Pin the bases by digest (FROM image:tag@sha256:...) in a release pipeline.
ARG NODE_VERSION=24.21.0

# ---- deps: every dependency, from the lockfile only (cached until it changes).
# --ignore-scripts: no dependency needs an install script to compile, and the
# devDependency `node` (the Node the Makefile uses) would download a second
# Node; this stage's own Node runs the compiler.
FROM node:${NODE_VERSION}-bookworm-slim AS deps
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

# ---- build: tsc -p tsconfig.build.json → dist/ (core, shells, operator, webhook, cli).
FROM deps AS build
COPY tsconfig.json tsconfig.build.json ./
COPY core ./core
COPY shells ./shells
COPY operator ./operator
COPY webhook ./webhook
COPY cli ./cli
RUN node node_modules/typescript/bin/tsc -p tsconfig.build.json

# ---- prod-deps: only what dist/ imports at run time.
FROM node:${NODE_VERSION}-bookworm-slim AS prod-deps
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# ---- runtime: Debian 12 distroless with Node 24 at /nodejs/bin/node.
FROM gcr.io/distroless/nodejs24-debian12:nonroot
WORKDIR /app
# `node` on PATH for the exec-form ENTRYPOINT below (the base's own entrypoint
# is /nodejs/bin/node, which we replace).
ENV NODE_ENV=production \
    PATH=/nodejs/bin:/usr/local/bin:/usr/bin:/bin
# package.json carries "type": "module", which dist/*.js needs to load as ESM.
COPY --from=prod-deps --chown=0:0 /src/package.json ./package.json
COPY --from=prod-deps --chown=0:0 /src/node_modules ./node_modules
COPY --from=build --chown=0:0 /src/dist ./dist
# Files owned by root and not writable by the process; the chart also mounts
# the root filesystem read-only.
USER 65532:65532
# 8443: admission webhook (CUSTODY_WEBHOOK_ADDR); 8081: /livez, /readyz, /metrics (CUSTODY_HEALTH_ADDR).
EXPOSE 8443 8081
ENTRYPOINT ["node", "dist/operator/main.js"]
