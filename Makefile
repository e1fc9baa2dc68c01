# Every target creates or updates .venv itself, so each works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
ARGS ?=

.PHONY: demo test lint typecheck pytest bench system-deps node-deps golden reliability-report clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"

# The runtime install: the package and its dependencies only, at the audited versions of requirements.lock.
$(VENV)/.run-installed: pyproject.toml requirements.lock | $(BIN)/python
	$(PY) -m pip install -q -c requirements.lock -e .
	touch $@

# The simulator: a second distribution (simulator/pyproject.toml), never part of the runtime install or
# the image; the demo and the tests use it. The exporter's pins hold for what both need.
$(VENV)/.sim-installed: simulator/pyproject.toml $(VENV)/.run-installed
	$(PY) -m pip install -q -c requirements.lock -e ./simulator
	touch $@

# The test install: the runtime, the simulator and the `test` dependency group (PEP 735; pip >= 25.1).
$(VENV)/.test-installed: pyproject.toml $(VENV)/.run-installed $(VENV)/.sim-installed
	$(PY) -m pip install -q -c requirements.lock --group test -e .
	touch $@

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.test-installed
	$(PY) -m pip install -q -c requirements.lock --group bench -e .
	touch $@

demo: $(VENV)/.sim-installed
	$(BIN)/ehpc-image-exporter demo $(ARGS)

# System tools the tests drive for real (Prometheus, Alertmanager, wrk, Node for schema checks).
system-deps:
	bash scripts/install-system-deps.sh

node-deps: system-deps
	cd tools/node && (npm ci --no-audit --no-fund --silent || npm install --no-audit --no-fund --silent)

# lint-imports: the import contracts of pyproject.toml ([tool.importlinter]).
lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

pytest: $(VENV)/.test-installed system-deps node-deps
	$(BIN)/pytest $(ARGS)

test: lint typecheck pytest

bench: $(VENV)/.bench-installed system-deps
	$(PY) -m bench $(ARGS)

# Regenerate the golden expositions and the dashboard JSON after an intended change.
golden: $(VENV)/.test-installed
	UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/test_golden.py
	$(PY) -m grafana.build

# Regenerate docs/reliability.md from the modules that record cases (the suite fails while it is stale).
reliability-report: $(VENV)/.test-installed system-deps node-deps
	RELIABILITY_REPORT=docs/reliability.md $(BIN)/pytest -q tests/test_bad_input.py tests/test_hostile.py \
		tests/test_soak.py tests/test_e2e_paging.py tests/test_leaks.py tests/test_load.py tests/test_state.py

clean:
	rm -rf $(VENV) tools/node/node_modules .mypy_cache .ruff_cache .pytest_cache
