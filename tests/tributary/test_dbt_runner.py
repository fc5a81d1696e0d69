"""dbt inside a flow: every node of the build that ran is a task run of the flow with the node's
final state, dbt's lines about it and its upstream nodes' task runs as inputs; every model built
is an asset materialization. Reporting them uses the flow's own Prefect settings and client —
no node builds either again (prefect-dbt's runner as shipped does, twice and three times per
node, which made a build several times slower)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Log
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.events.schemas.events import Event
from prefect.logging.handlers import APILogWorker
from prefect.settings.models.root import Settings as PrefectSettings
from prefect_dbt.utilities import format_resource_id

from demo.api import serve_in_background
from demo.generate import generate
from ingestion import registry
from ingestion.pipeline import run_source
from tests.sourcefiles import scratch_settings
from tests.task_runs import recorded_task_runs
from tributary.dbt import DbtFailed, DbtSummary, run_dbt
from tributary.settings import DBT_PROJECT_DIR, Settings

FAILING_TEST = "accepted_values_stg_shop__orders_status"


def _counted(cls: type, name: str, counts: Counter[str]) -> Any:
    original = cls.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        counts[name] += 1
        original(self, *args, **kwargs)

    return counting


@pytest.fixture
def constructions(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many Prefect ``Settings`` and sync API clients are built, counted by wrapping their
    constructors."""
    counts: Counter[str] = Counter()
    monkeypatch.setattr(PrefectSettings, "__init__", _counted(PrefectSettings, "settings", counts))
    monkeypatch.setattr(
        SyncPrefectClient, "__init__", _counted(SyncPrefectClient, "clients", counts)
    )
    return counts


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A warehouse loaded from the demo shop, with one order in a status the staging model's
    ``accepted_values`` test refuses: the build fails that test, and skips what it holds back."""
    shop = tmp_path / "shop.sqlite"
    settings = Settings(data_dir=tmp_path)
    generate(f"sqlite:///{shop}", settings.demo_api_db, orders=80, seed=3)
    with serve_in_background(settings.demo_api_db, "token") as api_url:
        monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "token")
        settings = scratch_settings(tmp_path, shop=shop, api=api_url)
        for source in registry.source_names(settings):
            run_source(source, settings)
    with duckdb.connect(str(settings.warehouse)) as connection:
        connection.execute(
            "update raw_shop.orders set status = 'lost' "
            "where order_id = (select min(order_id) from raw_shop.orders)"
        )
    return settings


def _logs(flow_run_id: UUID) -> list[Log]:
    """Every log line of the flow run the server has, once this process has sent them all."""
    APILogWorker.drain_all()
    logs: list[Log] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            limit=200,
            offset=len(logs),
        ):
            logs += page
    return logs


def _materializations(flow_run_id: UUID, expected: int, timeout: float = 60) -> list[Event]:
    """The flow run's asset materialization events once the server has ``expected`` of them."""
    deadline = time.monotonic() + timeout
    event_filter = EventFilter(
        event=EventNameFilter(prefix=["prefect.asset.materialization."]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(event_filter, limit=50)
            events = list(page.events)
            while page.next_page is not None:
                page = client.read_events_page(page.next_page)
                events += page.events
            if len(events) >= expected:
                return events
            assert time.monotonic() < deadline, f"{len(events)} of {expected} asset events"
            time.sleep(0.5)


def _upstream(manifest: dict[str, Any], unique_id: str) -> set[str]:
    """What a node depends on, an ephemeral model standing for what it depends on."""
    found: set[str] = set()
    for parent in manifest["parent_map"].get(unique_id, []):
        node = manifest["nodes"].get(parent, {})
        if node.get("config", {}).get("materialized") == "ephemeral":
            found |= _upstream(manifest, parent)
        else:
            found.add(parent)
    return found


@pytest.mark.integration
def test_every_node_is_a_task_run_with_its_final_state(
    warehouse: Settings,
    prefect_server: None,
    constructions: Counter[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    built: dict[str, Any] = {}

    @flow(name="dbt-runner-test")
    def build() -> None:
        constructions.clear()
        try:
            built["summary"] = run_dbt(["build"], warehouse)
        except DbtFailed as failed:
            built["summary"] = failed.summary
        built["constructions"] = Counter(constructions)
        built["threads"] = [t.name for t in threading.enumerate() if t.name.startswith("dbt node")]

    started = time.time()
    state = build(return_state=True)
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    summary: DbtSummary = built["summary"]
    reported = [node for node in summary.nodes if node.status != "skipped"]
    failed = [node.unique_id for node in summary.nodes if node.status in {"fail", "error"}]
    assert len(failed) == 1 and FAILING_TEST in failed[0], failed
    assert summary.statuses["skipped"] > 0 and summary.statuses["pass"] > 10, summary.statuses

    runs = recorded_task_runs(flow_run_id, expected=len(reported))
    by_name = {run.name: run for run in runs}
    assert len(by_name) == len(runs) == len(reported)
    manifest = json.loads((DBT_PROJECT_DIR / "target" / "manifest.json").read_text())
    names = {**manifest["nodes"], **manifest["unit_tests"]}
    run_of = {
        node.unique_id: by_name[f"{node.resource_type} {names[node.unique_id]['name']}"]
        for node in reported
    }
    for node in reported:
        run = run_of[node.unique_id]
        assert run.state is not None
        expected = "FAILED" if node.unique_id in failed else "COMPLETED"
        assert run.state.type.value == expected, (node.unique_id, run.state)
        # at dbt's own times, within the flow's
        assert run.start_time is not None and run.end_time is not None, run
        assert started <= run.start_time.timestamp() <= run.end_time.timestamp() <= time.time()
        # waiting for the task runs of the nodes it depends on (through ephemeral models)
        upstream = {
            run_of[parent].id for parent in _upstream(manifest, node.unique_id) if parent in run_of
        }
        assert {link.id for link in run.task_inputs.get("wait_for", [])} == upstream, node
    # a test of the ephemeral model waits for the models the ephemeral one reads
    through = next(
        node
        for node in reported
        if node.unique_id.startswith("test.tributary.unique_int_payments_converted")
    )
    assert len(run_of[through.unique_id].task_inputs["wait_for"]) >= 2

    # Every model, seed or snapshot built is an asset materialized by dbt (as prefect-dbt's
    # materializing tasks report them).
    materialized = {
        format_resource_id("duckdb", names[node.unique_id]["relation_name"])
        for node in reported
        if node.resource_type in {"model", "seed", "snapshot"} and node.status == "success"
    }
    events = _materializations(flow_run_id, expected=len(materialized))
    assert {event.resource.id for event in events} == materialized
    assert {event.event for event in events} == {"prefect.asset.materialization.succeeded"}

    # dbt's lines about each node are logged to that node's task run.
    logs = _logs(flow_run_id)
    assert {log.task_run_id for log in logs} >= {run.id for run in runs}
    assert not [log.message for log in logs if "not reported to Prefect" in log.message]
    # and on the console under the node's name, never as `Task run None`
    unnamed = [
        record.getMessage()
        for record in caplog.records
        if record.name == "prefect.task_runs" and getattr(record, "task_run_name", "") is None
    ]
    assert unnamed == []
    assert any(
        str(getattr(record, "task_run_name", "")).startswith(f"test {FAILING_TEST}")
        and "START" in record.getMessage()
        for record in caplog.records
    )

    # The nodes reported with the flow's own settings and client (prefect-dbt's runner as
    # shipped built 114 settings and 167 clients for this build's 53 task runs).
    assert built["constructions"]["settings"] <= 2, built["constructions"]
    assert built["constructions"]["clients"] <= 2, built["constructions"]
    # Reporting has finished when run_dbt returns, and dbt-duckdb let go of the file: another
    # process can open it for writing.
    assert built["threads"] == []
    subprocess.run(
        [sys.executable, "-c", f"import duckdb; duckdb.connect({str(warehouse.warehouse)!r})"],
        check=True,
    )
