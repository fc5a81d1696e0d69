"""How dbt's events become task runs, fed the events dbt fires for a node that runs long, one
that ends quickly, one that fails, one dbt skips and an ephemeral model, against a real server:
a node is sent once in its final state unless it runs past ``RUNNING_AFTER``, skipped and
ephemeral nodes are no task runs, and a node waits for its upstream task runs through an
ephemeral model. (``test_dbt_runner`` runs a whole build.)"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from dbt.events.types import LogStartLine, NodeFinished, NodeStart, SkippingDetails
from dbt_common.events.base_types import BaseEvent, EventLevel, msg_from_base_event
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.logging.handlers import APILogWorker

from tests.task_runs import recorded_task_runs
from tributary import dbt_nodes
from tributary.dbt import _target_path
from tributary.dbt_nodes import NodeReporter
from tributary.settings import DBT_PROJECT_DIR

MANIFEST = {
    "nodes": {
        "model.p.slow": {"depends_on": {"nodes": ["source.p.raw.t"]}, "config": {}},
        "model.p.eph": {
            "depends_on": {"nodes": ["model.p.slow"]},
            "config": {"materialized": "ephemeral"},
        },
        "model.p.quick": {"depends_on": {"nodes": ["model.p.eph"]}, "config": {}},
        "test.p.fails": {"depends_on": {"nodes": ["model.p.quick"]}, "config": {}},
        "model.p.skipped": {"depends_on": {"nodes": ["model.p.quick"]}, "config": {}},
    },
    "sources": {"source.p.raw.t": {"relation_name": '"prod"."raw"."t"', "config": {}}},
    "unit_tests": {},
}


def _now() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat()


def _node(unique_id: str, materialized: str = "table", **status: str) -> dict[str, Any]:
    kind, _, name = unique_id.split(".")
    return {
        "node_path": f"{name}.sql",
        "node_name": name,
        "unique_id": unique_id,
        "resource_type": kind,
        "materialized": materialized,
        "node_relation": {
            "database": "prod",
            "schema": "marts",
            "alias": name,
            "relation_name": f'"prod"."marts"."{name}"' if kind == "model" else "",
        },
        **status,
    }


def _fire(reporter: NodeReporter, event: BaseEvent, level: EventLevel = EventLevel.INFO) -> None:
    reporter.callback(msg_from_base_event(event, level=level))


def _run(reporter: NodeReporter, unique_id: str, seconds: float, status: str, message: str) -> None:
    """What dbt fires for a node that runs: NodeStart, its start line, NodeFinished; while it
    runs, other nodes start as fast as the reporter takes them."""
    node = _node(unique_id, node_status="started", node_started_at=_now())
    _fire(reporter, NodeStart(node_info=node), EventLevel.DEBUG)
    _fire(reporter, LogStartLine(description=unique_id, index=1, total=5, node_info=node))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # other nodes keep the reporter's queue from idling
        _fire(reporter, NodeStart(node_info=_node("model.p.other")), EventLevel.DEBUG)
    finished = {**node, "node_status": status, "node_finished_at": _now()}
    _fire(
        reporter,
        NodeFinished(node_info=finished, run_result={"status": status, "message": message}),
        EventLevel.DEBUG,
    )


@pytest.mark.integration
def test_nodes_become_task_runs_in_their_final_state(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbt_nodes, "RUNNING_AFTER", 0.3)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    reporters: list[NodeReporter] = []

    @flow(name="dbt-nodes-test")
    def build() -> None:
        reporter = NodeReporter.in_flow(manifest)
        assert reporter is not None
        reporters.append(reporter)
        with reporter:
            _run(reporter, "model.p.slow", 1.0, "success", "OK")
            ephemeral = _node("model.p.eph", "ephemeral", node_started_at=_now())
            _fire(reporter, NodeStart(node_info=ephemeral), EventLevel.DEBUG)
            _run(reporter, "model.p.quick", 0.0, "success", "OK")
            _run(reporter, "test.p.fails", 0.0, "fail", "Got 1 result, configured to fail")
            skipped = _node("model.p.skipped", node_started_at=_now())
            _fire(reporter, NodeStart(node_info=skipped), EventLevel.DEBUG)
            _fire(
                reporter,
                SkippingDetails(
                    resource_type="model",
                    schema="marts",
                    node_name="skipped",
                    index=5,
                    total=5,
                    node_info=skipped,
                ),
            )
            _fire(
                reporter,
                NodeFinished(
                    node_info={**skipped, "node_status": "skipped"},
                    run_result={"status": "skipped"},
                ),
                EventLevel.DEBUG,
            )

    state = build(return_state=True)
    assert state.is_completed(), state.message
    assert reporters[0].failures == []
    flow_run_id = state.state_details.flow_run_id
    runs = {run.name: run for run in recorded_task_runs(flow_run_id, expected=3)}
    assert set(runs) == {"model slow", "model quick", "test fails"}

    with get_client(sync_client=True) as client:
        history = {
            name: [s.type.value for s in client.read_task_run_states(run.id)]
            for name, run in runs.items()
        }
        APILogWorker.drain_all()
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    # Shown Running only past RUNNING_AFTER; otherwise sent once, in the final state.
    assert history == {
        "model slow": ["RUNNING", "COMPLETED"],
        "model quick": ["COMPLETED"],
        "test fails": ["FAILED"],
    }
    slow = runs["model slow"]
    assert slow.start_time is not None and slow.end_time is not None
    assert 1.0 <= (slow.end_time - slow.start_time).total_seconds() < 5
    failed = runs["test fails"].state
    assert failed is not None and failed.message == "dbt fail: Got 1 result, configured to fail"
    # The quick model reads the slow one through the ephemeral model; the test reads the quick.
    assert {link.id for link in runs["model quick"].task_inputs["wait_for"]} == {slow.id}
    assert {link.id for link in runs["test fails"].task_inputs["wait_for"]} == {
        runs["model quick"].id
    }
    assert runs["model slow"].task_inputs["wait_for"] == []
    # Each START line is its node's; the skipped node's line is the flow's.
    by_run = {log.task_run_id: log.message for log in logs if "START" in log.message}
    assert {runs[name].id for name in runs} == set(by_run)
    assert [log.task_run_id for log in logs if "SKIP" in log.message] == [None]


def test_a_malformed_event_is_noted_never_raised_into_dbt(tmp_path: Path) -> None:
    """dbt calls the callback inside a node's run: an error there would fail the node."""
    flow_run = FlowRun(id=uuid4(), name="r", flow_id=uuid4())
    reporter = NodeReporter(flow_run, tmp_path / "manifest.json")
    reporter.callback(SimpleNamespace(info=SimpleNamespace(name="NodeStart"), data=None))
    reporter.callback(SimpleNamespace(info=None))
    reporter.callback(object())
    assert len(reporter.failures) == 3 and "NodeStart" in reporter.failures[0]


def test_the_manifest_is_read_where_the_invocation_writes_it(tmp_path: Path) -> None:
    dev = ["build", "--target", "dev", "--target-path", str(tmp_path / "dev.target")]
    assert _target_path(dev) == tmp_path / "dev.target"
    assert _target_path(["build", "--target-path", "elsewhere"]) == DBT_PROJECT_DIR / "elsewhere"
    assert _target_path(["build", "--select", "fct_orders+"]) == DBT_PROJECT_DIR / "target"
