# Tessera: every target sets up what it needs, so `make run` and `make test` work on a fresh machine.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Versions of Kubernetes and etcd are pinned in operator/tessera/envtest/assets.py only.
PYTEST_ARGS ?=
BENCH_OUT ?= bench-results.json

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'

LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
COMPILE = $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links \
	--build-deps-for wheel pyproject.toml

# The virtualenv installs exactly the dev lock (hash-checked), then the package itself without deps.
$(STAMP): pyproject.toml $(DEV_LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

.PHONY: venv
venv: $(STAMP) ## Create the virtualenv with the package and dev tools

.PHONY: lock
lock: ## Re-resolve the dependency pins: requirements.lock (image) and requirements-dev.lock (venv, CI)
	@test -x $(BIN)/pip-compile || $(BIN)/python -m pip install --quiet pip-tools
	$(COMPILE) --upgrade --extra dev -o $(DEV_LOCK)
	$(COMPILE) -o $(LOCK) --constraint $(DEV_LOCK)

.PHONY: control-plane
control-plane: $(STAMP) ## Build (once, cached) or find kube-apiserver, etcd, kubectl; print their folder
	@if [ -z "$${TESSERA_USE_EXISTING_CLUSTER:-}" ]; then $(BIN)/python -m tessera.envtest build; fi

.PHONY: nginx
nginx: $(STAMP) ## Find or unpack (once, cached) Debian's nginx for the sidecar tests; print its path
	$(BIN)/python -m tessera.envtest.nginx

.PHONY: helm
helm: $(STAMP) ## Find or build (once, cached) helm for the chart tests; print its path
	$(BIN)/python -m tessera.envtest.helm

.PHONY: hydra
hydra: $(STAMP) ## Find or build (once, cached) Ory Hydra for the issuer tests; print its path
	$(BIN)/python -m tessera.envtest.hydra

.PHONY: crds
crds: $(STAMP) ## Generate crds/ from the pydantic models and copy them into the chart
	$(BIN)/tessera crds --out crds
	rm -f charts/tessera/crds/iam.tessera.dev_*.yaml
	cp crds/*.yaml charts/tessera/crds/

.PHONY: schema
schema: $(STAMP) ## Generate docs/trust-bundle.schema.json from the trust bundle model (tessera.trustbundle)
	$(BIN)/python -c 'from tessera import trustbundle; print(trustbundle.schema_text(), end="")' > docs/trust-bundle.schema.json

.PHONY: verify
verify: $(STAMP) ## Fail when generated files (crds/, the chart's copies, the bundle schema) differ from the models
	$(BIN)/pytest -q tests/unit/test_crds.py tests/unit/test_chart_files.py tests/unit/test_trustbundle.py

.PHONY: lint
lint: $(STAMP) ## ruff, ruff format --check, mypy --strict, import layering
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: test-unit
test-unit: $(STAMP) ## Unit tests only (no control plane)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: test
test: test-integration e2e ## Every test: unit, integration (API server), end-to-end (a real node; root)

.PHONY: test-integration
test-integration: $(STAMP) control-plane nginx helm hydra ## Unit and integration tests against a real local kube-apiserver + etcd
	$(BIN)/pytest tests/unit tests/integration $(PYTEST_ARGS)

.PHONY: node-binaries
node-binaries: $(STAMP) control-plane ## Build (once, cached) kubelet, kube-scheduler, kube-proxy, CoreDNS; print their folder
	$(BIN)/python -c 'from tessera.envtest import assets; print(assets.ensure_node())'

.PHONY: host-packages
host-packages: $(STAMP) ## Install (apt, root) the Debian packages a node needs when missing: containerd, runc, CNI plugins, buildah, debootstrap, iptables
	$(BIN)/python -c 'from tessera.envtest import hostpkgs; hostpkgs.ensure()'

.PHONY: images
images: $(STAMP) host-packages ## Build (cached by content) the images a node runs: pause, base, tessera (the Dockerfile), e2e apps
	$(BIN)/python -m tessera.envtest images

.PHONY: node-start
node-start: $(STAMP) host-packages control-plane node-binaries ## Start a real one-node cluster (root), the project's and example apps' images loaded
	$(BIN)/python -m tessera.envtest node start --images

.PHONY: node-stop
node-stop: $(STAMP) ## Stop the node and restore every machine setting it changed
	$(BIN)/python -m tessera.envtest node stop

.PHONY: e2e
e2e: $(STAMP) host-packages control-plane node-binaries helm ## End-to-end tests in a real node: helm install, examples, Pods (root)
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

.PHONY: run
run: $(STAMP) control-plane ## Start a local control plane, install CRDs and examples, run the operator
	$(BIN)/python -m tessera.envtest run

.PHONY: bench
bench: $(STAMP) control-plane nginx ## Benchmarks against the local control plane; figures go to $(BENCH_OUT)
	$(BIN)/python -m tests.bench --out $(BENCH_OUT)

.PHONY: clean
clean: ## Remove the virtualenv and local state (the control-plane cache in ~/.cache/tessera stays)
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache $(BENCH_OUT)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
