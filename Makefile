# Two commands for a fresh machine with python3 (3.11+) and make:
#   make demo  — set up, generate the sample shop, serve its API, run the `elt` flow once
#   make test  — set up, lint, and run the whole test suite
# While working: make test-fast (lint + the quick tests), make docs (dbt docs on loopback).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .uv/bin/uv
VENV := .venv
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: setup demo test test-fast lint format docs docs-build bench faults clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --quiet --compile-bytecode
	touch $@

setup: $(VENV)/.synced

# `make bench` also installs the `sling` group (Sling's binary, the DuckDB CLI): ~120 MB that
# CI and `make test` never download. Remade after every plain sync, which removes the group.
$(VENV)/.synced-bench: $(VENV)/.synced
	$(UV) sync --frozen --quiet --compile-bytecode --group sling
	touch $@

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
	$(VENV)/bin/pytest --durations=30

# Lint, then the tests that are not marked integration, start no Prefect server (these use
# the `prefect_server` fixture of tests/conftest.py without the marker) and are not the
# ingestion tests that run real dlt loads again and again (most of the time left otherwise).
SERVER_TESTS := \
	tests/flows/test_elt_failures.py::test_wrong_token_fails_at_once_and_notifies \
	tests/flows/test_source_selection.py::test_a_source_without_models_loads_and_reports \
	tests/tributary/test_runs.py::test_a_killed_run_is_written_with_what_it_had_loaded \
	tests/tributary/test_runs.py::test_a_run_killed_before_its_journal_existed_is_recorded_as_crashed
LOAD_TESTS := $(addprefix tests/ingestion/test_,drift.py guards.py killed_report.py \
	own_database.py rest_sources.py shop.py)
test-fast: lint
	$(VENV)/bin/pytest -m "not integration" $(addprefix --deselect ,$(SERVER_TESTS)) \
		$(addprefix --ignore=,$(LOAD_TESTS)) --durations=5

# dbt docs as one static page (catalog from the published file, read-only) in data/docs,
# served on 127.0.0.1. DOCS_ARGS="--port 8081"; docs-build only builds (CI).
docs: setup
	$(VENV)/bin/python -m tributary.docs $(DOCS_ARGS)

docs-build: setup
	$(VENV)/bin/python -m tributary.docs --no-serve

# Not part of CI: PostgreSQL → DuckDB against the COPY limit, dlt's default backend and Sling,
# then dbt inside a flow against a plain dbt build, then a `make demo` re-run against its plain
# parts. BENCH_ARGS="--rows 5000000" for the large load run; DBT_BENCH_ARGS="--repeats 5" for
# the dbt one; DEMO_BENCH_ARGS="--repeats 3" for the demo one.
bench: $(VENV)/.synced-bench
	$(VENV)/bin/python -m bench.sql_to_duckdb $(BENCH_ARGS)
	$(VENV)/bin/python -m bench.dbt_in_flow $(DBT_BENCH_ARGS)
	$(VENV)/bin/python -m bench.demo_rerun $(DEMO_BENCH_ARGS)

# Not part of CI (tests/faults/test_sample.py is its sample there): break real runs on purpose
# and check nothing was lost. FAULTS_ARGS="--kills 20 --backend sqlite", "--only api-429", ...
FAULTS_ARGS ?= --kills 100
faults: setup
	$(VENV)/bin/python -m tests.faults $(FAULTS_ARGS)

clean:
	-[ -x $(VENV)/bin/tributary ] && $(VENV)/bin/tributary demo stop
	rm -rf data dbt_project/target dbt_project/logs
