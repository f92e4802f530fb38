# angela-queue — `make help` lists the targets. Everything runs from a fresh clone with only
# Python 3.11+ on the machine: the first target that needs it creates .venv and installs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help install test test/fast test/pgbouncer lint format typecheck demo bench bench/views bench/batches chaos screenshot check clean

help: ## list the targets
	@grep -E '^[a-zA-Z/_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed ## create .venv and install the package with its dev tools

test: install ## the whole suite on real PostgreSQL (embedded, or ANGELA_QUEUE_TEST_DSN), 2 processes
	$(BIN)/pytest -n 2

test/fast: install ## the suite without the multi-process tests
	$(BIN)/pytest -m "not slow and not pgbouncer"

test/pgbouncer: install ## the tests through PgBouncer in transaction mode (apt-get install pgbouncer)
	$(BIN)/pytest -m pgbouncer

lint: install ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: install ## the "learning workers" demo on the embedded PostgreSQL (or ANGELA_QUEUE_DSN)
	$(BIN)/python scripts/demo.py

bench: install ## enqueue rate, drain rate and wake-up latency (scripts/bench.py)
	$(BIN)/python scripts/bench.py

chaos: install ## every chaos scenario, full length (~12 min; README "Reliability"; exits 1 on a broken promise)
	$(BIN)/python scripts/chaos.py all

bench/batches: install ## routine tasks batched vs unbatched (scripts/bench_batches.py)
	$(BIN)/python scripts/bench_batches.py

bench/views: install ## monitoring views with 1,000,000 finished tasks (scripts/bench_views.py)
	$(BIN)/python scripts/bench_views.py

screenshot: install ## regenerate docs/dashboard.png (needs Debian's chromium)
	$(BIN)/python scripts/dashboard_screenshot.py

check: lint test ## exactly what CI runs

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
