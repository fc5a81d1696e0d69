"""Transient failures are retried until the load completes, with nothing lost or doubled;
permanent ones fail at the first attempt. Attempts are counted on the Prefect server."""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

import duckdb
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from demo.api import Faults, serve_in_background
from demo.generate import generate
from demo.paths import shop_url
from flows.elt import EltParameters, elt
from tests.integration.sources import fetch_payments
from tributary.settings import get_settings

pytestmark = pytest.mark.integration


def _attempts(flow_run_id: UUID, timeout: float = 120) -> dict[str, int]:
    """Attempts per ingest task run, once the server has recorded their final states (it
    records task runs from events, which can trail the flow by seconds on a busy server)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [
                run
                for run in client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
                if run.name.startswith("ingest-")
            ]
            if runs and all(run.state is not None and run.state.is_final() for run in runs):
                return {run.name: run.run_count for run in runs}
            assert time.monotonic() < deadline, f"task runs not recorded: {runs}"
            time.sleep(0.5)


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRIBUTARY_DATA_DIR", str(tmp_path))
    # dlt's own HTTP retries off: every fault reaches the task, whose retries are under test.
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "1")
    get_settings.cache_clear()
    settings = get_settings()
    generate(shop_url(settings), settings.demo_api_db, orders=60, seed=8)
    yield tmp_path
    get_settings.cache_clear()


def test_transient_faults_are_retried_and_the_load_is_exact(
    shop: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    # With this seed the API answers 429, 503, 429, then 200: one request per attempt here.
    faults = Faults(error_rate=0.4, rate_limit_rate=0.3, seed=26)
    with serve_in_background(settings.demo_api_db, "token", faults=faults) as api_url:
        monkeypatch.setenv("TRIBUTARY_PAYMENTS_API_URL", api_url)
        monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "token")
        get_settings.cache_clear()
        state = elt(
            EltParameters(sources=["payments"], dbt_select=["stg_payments__payments"]),
            return_state=True,
        )
        assert state.is_completed(), state.message
        attempts = _attempts(state.state_details.flow_run_id)
    with serve_in_background(settings.demo_api_db, "token") as clean_url:
        expected = {
            row["payment_id"]: row["updated_at"] for row in fetch_payments(clean_url, "token")
        }

    assert attempts == {"ingest-payments": 4}
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        rows = warehouse.sql("select payment_id from raw_payments.payments").fetchall()
    assert len(rows) == len({row[0] for row in rows}) == len(expected)
    assert {row[0] for row in rows} == set(expected)


def test_a_permanent_failure_is_not_retried(
    shop: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    with serve_in_background(settings.demo_api_db, "the-right-token") as api_url:
        monkeypatch.setenv("TRIBUTARY_PAYMENTS_API_URL", api_url)
        monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "a-wrong-token")
        get_settings.cache_clear()
        state = elt(EltParameters(sources=["payments"]), return_state=True)
    assert state.is_failed()
    assert "401" in state.message
    assert _attempts(state.state_details.flow_run_id) == {"ingest-payments": 1}
