# Two commands for a fresh machine with python3 (3.11+) and make:
#   make demo  — set up, generate the sample shop, serve its API, run the `elt` flow once
#   make test  — set up, lint, and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .uv/bin/uv
VENV := .venv
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: setup demo test lint format bench faults clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet --compile-bytecode
	touch $@

setup: $(VENV)/.synced

demo: setup
	$(VENV)/bin/tributary demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/sqlfluff lint dbt_project --disable-progress-bar
	$(VENV)/bin/lint-imports --no-cache

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/sqlfluff fix dbt_project --disable-progress-bar

test: lint
	$(VENV)/bin/pytest --durations=10

# Not part of CI: PostgreSQL → DuckDB against the COPY limit and dlt's default backend.
# BENCH_ARGS="--rows 5000000" for the large run.
bench: setup
	$(UV) sync --frozen --quiet --compile-bytecode --group bench
	$(VENV)/bin/python -m bench.sql_to_duckdb $(BENCH_ARGS)

# Not part of CI (tests/faults/test_sample.py is its sample there): break real runs on purpose
# and check nothing was lost. FAULTS_ARGS="--kills 20 --backend sqlite", "--only api-429", ...
FAULTS_ARGS ?= --kills 100
faults: setup
	$(VENV)/bin/python -m tests.faults $(FAULTS_ARGS)

clean:
	rm -rf data dbt_project/target dbt_project/logs
