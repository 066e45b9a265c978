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

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: venv
venv: $(STAMP) ## Create the virtualenv with the package and dev tools

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

.PHONY: verify
verify: $(STAMP) ## Fail when generated files (crds/, the chart's copies) differ from the models
	$(BIN)/pytest -q tests/unit/test_crds.py tests/unit/test_chart_files.py

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
test: $(STAMP) control-plane nginx helm hydra ## Unit and integration tests against a real local kube-apiserver + etcd
	$(BIN)/pytest tests $(PYTEST_ARGS)

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
