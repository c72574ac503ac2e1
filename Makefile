# Voltgrid's vocabulary. `make run` brings Voltgrid up; `make test` runs every test (CI calls it).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
export VOLTGRID_CLUSTER_DIR ?= /tmp/voltgrid-cluster

.PHONY: install run test unit e2e lint crds chart cluster-up cluster-down cluster-deps k8s-binaries helm bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## Python environment with every dependency

run: install  ## Run Voltgrid: the local cluster when no kube context is reachable, CRDs, operator, gateway
	$(VENV)/bin/voltgrid run

test: install  ## Everything CI runs: lint, unit tests, end-to-end tests on a real cluster
	$(MAKE) lint
	$(MAKE) helm  # the chart's render tests in the unit stage use it (they skip without it outside CI)
	$(MAKE) unit
	$(MAKE) e2e

unit: install  ## Fast tests: no cluster
	$(VENV)/bin/pytest -m 'not e2e' -p no:cacheprovider

e2e: install cluster-deps k8s-binaries helm  ## End-to-end tests against a real Kubernetes (the local one unless VOLTGRID_KUBECONFIG is set)
	$(VENV)/bin/pytest -m e2e -p no:cacheprovider e2e
	bash e2e/cluster/check-clean.sh

lint: install  ## ruff, mypy --strict, import-linter contracts, CRD drift
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/voltgrid crds --check

crds: install  ## Regenerate crds/ and docs/crd-reference.md from the API models (and the chart's copy, and deploy/voltgrid.yaml)
	$(VENV)/bin/voltgrid crds
	$(MAKE) chart

chart: helm  ## Sync crds/ and runtimeclasses/ into the chart and re-render deploy/voltgrid.yaml
	bash scripts/sync-chart.sh
	bash scripts/render-manifest.sh

helm:  ## Build helm from its Go module (cached in ~/.cache/voltgrid)
	bash e2e/cluster/build-helm.sh

cluster-deps:  ## What the local cluster runs on: Debian packages, kube-router (no-op once there; skipped with VOLTGRID_KUBECONFIG)
	@if [ -z "$${VOLTGRID_KUBECONFIG:-}" ]; then bash e2e/cluster/install-deps.sh && bash e2e/cluster/build-kube-router.sh >/dev/null; fi

k8s-binaries:  ## Build the pinned Kubernetes components from Go modules (cached in ~/.cache/voltgrid)
	bash e2e/cluster/build-k8s.sh

cluster-up: k8s-binaries  ## Start the local single-node cluster
	bash e2e/cluster/up.sh

cluster-down:  ## Stop the local cluster and remove everything it made
	bash e2e/cluster/down.sh

bench: install  ## Benchmarks this machine allows, saying what it skipped (cluster ones: BENCH_KUBECONFIG=PATH); see docs/benchmarks.md
	$(PY) bench/run_all.py $(if $(BENCH_KUBECONFIG),--kubeconfig $(BENCH_KUBECONFIG))

clean: cluster-down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
