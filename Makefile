# Every target creates or updates .venv itself, so each works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
ARGS ?=

PYTEST_WORKERS ?= 4

.PHONY: demo test test-fast lint typecheck pytest bench system-deps node-deps golden reliability-report relock clean

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
$(VENV)/.test-installed: pyproject.toml requirements-dev.lock $(VENV)/.run-installed $(VENV)/.sim-installed
	$(PY) -m pip install -q -c requirements.lock -c requirements-dev.lock --group test -e .
	touch $@

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.test-installed
	$(PY) -m pip install -q -c requirements.lock -c requirements-dev.lock --group bench -e .
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

# Four workers on two cores: most of the suite's time is spent waiting on the processes it starts (the
# exporter, the simulator, Prometheus, podman); loadgroup keeps each expensive shared resource on one worker.
pytest: $(VENV)/.test-installed system-deps node-deps
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup $(ARGS)

# The inner loop: the in-process tests only (nothing marked `process`), with ruff, in about a minute.
test-fast: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/pytest -n 2 -m "not process" $(ARGS)

test: lint typecheck pytest

bench: $(VENV)/.bench-installed system-deps
	$(PY) -m bench $(ARGS)

# Regenerate the golden expositions and the dashboard JSON after an intended change.
golden: $(VENV)/.test-installed
	UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/test_golden.py
	$(PY) -m grafana.build

# Regenerate docs/reliability.md from the modules that record cases (the suite fails while it is stale).
reliability-report: $(VENV)/.test-installed system-deps node-deps
	RELIABILITY_REPORT=docs/reliability.md $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup tests/test_bad_input.py tests/test_hostile.py \
		tests/test_soak.py tests/test_e2e_paging.py tests/test_leaks.py tests/test_load.py tests/test_state.py

# Move requirements.lock to the newest releases `pip install .` resolves to: a throwaway venv with no
# constraints, read by the lock printer of tests/test_audit.py (run from .venv, which has what it imports).
# The dependency groups are installed there too, because the test and bench installs above are
# constrained by the lock: a runtime pin they cannot live with would break `make test` (today the SDK
# the tests use as referee caps cryptography below 51). The lock changes only if every step succeeded; the next target installs it.
relock: $(VENV)/.test-installed
	set -euo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade "pip>=25.1"; \
	PIP_CONSTRAINT= "$$tmp/venv/bin/python" -m pip install -q --group test --group bench .; \
	site=$$("$$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"), sysconfig.get_path("platlib"))'); \
	$(PY) tests/test_audit.py lock $$site > "$$tmp/requirements.lock"; \
	"$$tmp/venv/bin/python" -m pip freeze --exclude-editable > "$$tmp/freeze.txt"; \
	$(PY) scripts/devlock.py "$$tmp/freeze.txt" "$$tmp/requirements.lock" > "$$tmp/requirements-dev.lock"; \
	cp "$$tmp/requirements.lock" requirements.lock; cp "$$tmp/requirements-dev.lock" requirements-dev.lock

clean:
	rm -rf $(VENV) tools/node/node_modules .mypy_cache .ruff_cache .pytest_cache
