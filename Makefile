# Custody — every entry point a platform team or CI uses. Recipes run on the
# project's own Node 24 (the npm devDependency `node`), not the machine's.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)
NODE := $(CURDIR)/node_modules/.bin/node
ENV_DIR := $(CURDIR)/.local/env
ENV_SH := $(CURDIR)/.local/env.sh
# The local API server calls the webhook here (no Service, no kube-proxy locally).
WEBHOOK_PORT ?= 8443

.PHONY: help deps build env-build up down status run test test-unit test-integration demo bench generate check-generated lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

deps: node_modules/.installed ## install npm dependencies (Node 24 included)

build: deps ## compile TypeScript to dist/ (what images, make run and benchmarks execute)
	tsc -p tsconfig.build.json

env-build: ## build kube-apiserver, controller-manager, kubectl, etcd, helm and fetch Kafka into the cache
	@test/env/build.sh >/dev/null

up: deps env-build ## start etcd, kube-apiserver, kube-controller-manager and Kafka on 127.0.0.1
	@test/env/up.sh $(ENV_DIR) $(ENV_SH)
	@echo
	@echo "  Local environment is up. Use it from your shell with:"
	@echo "    source .local/env.sh && kubectl get --raw /readyz"
	@echo "  Users in the kubeconfig: admin (current), alice, bob, mallory (kubectl --context alice ...)."
	@echo "  Stop everything with: make down"

down: ## stop the local environment and the demo's operator (no process left behind)
	@scripts/demo.sh stop
	@test/env/down.sh $(ENV_DIR)

status: ## show which local processes run
	@test/env/status.sh $(ENV_DIR)

run: build ## install the CRDs and policies into the environment of .local/env.sh; run the operator and its admission webhook in the foreground
	@test -f $(ENV_SH) || { echo "no local environment: run 'make up' first" >&2; exit 1; }
	@source $(ENV_SH) && kubectl apply --server-side --force-conflicts -f crds/ -f webhook/manifests/ >/dev/null && \
	  { kubectl get namespace custody-system >/dev/null 2>&1 || kubectl create namespace custody-system >/dev/null; } && \
	  CUSTODY_WEBHOOK_ADDR=127.0.0.1:$(WEBHOOK_PORT) CUSTODY_WEBHOOK_URL=https://127.0.0.1:$(WEBHOOK_PORT) \
	  CUSTODY_WEBHOOK_REMOVE_ON_EXIT=true \
	  exec $(NODE) --disable-warning=TimeoutNegativeWarning dist/operator/main.js

test: deps env-build ## unit and integration tests (starts its own throwaway environment)
	vitest run $(VITEST_ARGS)

test-unit: deps ## unit tests only (no environment)
	vitest run --project unit

test-integration: deps env-build ## integration tests only
	vitest run --project integration

demo: up build ## from a fresh clone: environment, chart, operator, examples/; prints the tasks, the tree and an audit answer (stays up; make down stops it)
	@scripts/demo.sh

bench: up build ## benchmarks that print numbers (starts the local environment if needed; BENCH=name runs one)
	$(NODE) bench/run.ts $(BENCH)

generate: deps ## write crds/ and the chart's CRD and admission-policy templates (from the zod schemas and webhook/manifests)
	$(NODE) scripts/generate.ts

check-generated: deps ## fail when generated files are stale
	$(NODE) scripts/generate.ts --check

lint: deps ## biome (lint + format check) and the TypeScript type check
	biome check .
	tsc -p tsconfig.json --noEmit

format: deps ## apply biome's formatting and safe fixes
	biome check --write .

clean: down ## remove local state (the build cache outside the clone is kept)
	rm -rf .local
