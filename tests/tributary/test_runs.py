"""The run journal on its own, without a flow: a run's final rows wait in its journal while a
reader (another process) holds the warehouse, and the next flush writes them exactly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import duckdb
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL

from ingestion.drift import SchemaChange
from ingestion.pipeline import SourceLoad, TableLoad
from tests.readers import held_connection
from tributary.dbt import DbtSummary, NodeResult
from tributary.report import RunReport
from tributary.runs import START_TAG, RunJournal, _write, flush
from tributary.settings import PROJECT_ROOT, Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path)
    duckdb.connect(str(settings.warehouse)).close()
    return settings


REPORT_LOADS = [
    SourceLoad(
        source="shop",
        dataset="raw_shop",
        load_ids=["1767.1", "1767.2"],
        tables=[TableLoad("orders", 12, 7, 3, 2, quarantined=1), TableLoad("customers", 4, 4, 0)],
        schema_changes=[SchemaChange("customers", "phone", "added", "varchar")],
    )
]


def test_final_rows_wait_in_the_journal_while_the_warehouse_is_held(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    report = RunReport(
        warehouse=settings.warehouse,
        loads=REPORT_LOADS,
        dbt=DbtSummary(
            "build",
            [
                NodeResult("model.t.fct_orders", "model", "success", 1.0),
                NodeResult("test.t.unique_x", "test", "fail", 0.1),
                NodeResult("model.t.dim_x", "model", "skipped", 0.0),
            ],
        ),
    )
    journal = RunJournal.open(settings, flow_run_id="run-1", flow_name="elt", deployment=None)
    with held_connection(settings.warehouse):
        assert journal.finish("failed", "dbt build: 1 test failed", report) == []
    assert (
        "Could not write this run to ops.pipeline_runs (WarehouseBusy: TRIBUTARY_WAREHOUSE_PATH: "
        f"another process holds {settings.warehouse} open" in caplog.text
    )
    [kept] = settings.runs_dir.glob("*.json")
    assert kept.name == "run-1.json"
    assert not (settings.runs_dir / "run-1.lock").exists()

    [row] = flush(settings, found_by="run-2")
    assert (row.flow_run_id, row.status, row.error) == (
        "run-1",
        "failed",
        "dbt build: 1 test failed",
    )
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        runs = warehouse.sql(
            "select flow_run_id, flow_name, status, error, rows_loaded, dbt_nodes_passed, "
            "dbt_nodes_failed, dbt_nodes_skipped, finished_at >= started_at "
            "from ops.pipeline_runs"
        ).fetchall()
        tables = warehouse.sql(
            "select dataset, table_name, load_ids, rows_loaded, rows_new, rows_updated, "
            "rows_deleted, rows_quarantined from ops.table_loads order by table_name"
        ).fetchall()
        changes = warehouse.sql(
            "select flow_run_id, dataset, table_name, column_name, change, detail "
            "from ops.schema_changes"
        ).fetchall()
    assert runs == [("run-1", "elt", "failed", "dbt build: 1 test failed", 16, 1, 1, 1, True)]
    assert tables == [
        ("raw_shop", "customers", ["1767.1", "1767.2"], 4, 4, 0, 0, 0),
        ("raw_shop", "orders", ["1767.1", "1767.2"], 12, 7, 3, 2, 1),
    ]
    assert changes == [("run-1", "raw_shop", "customers", "phone", "added", "varchar")]
    assert list(settings.runs_dir.glob("*.json")) == []


def test_a_running_run_is_left_alone_and_other_warehouses_are_not_ours(
    settings: Settings, tmp_path: Path
) -> None:
    running = RunJournal.open(settings, flow_run_id="run-1", flow_name="elt", deployment=None)
    other = settings.model_copy(update={"warehouse_path": tmp_path / "other.duckdb"})
    elsewhere = RunJournal.open(other, flow_run_id="run-3", flow_name="dbt", deployment=None)
    duckdb.connect(str(other.warehouse)).close()
    with held_connection(other.warehouse):  # its history stays in the journal
        elsewhere.finish("completed", None, RunReport(warehouse=other.warehouse))
    assert flush(settings, found_by="run-2") == []  # run-1 holds its lock; run-3 is not ours
    assert sorted(p.name for p in settings.runs_dir.glob("*.json")) == ["run-1.json", "run-3.json"]
    running.finish("completed", None, RunReport(warehouse=settings.warehouse))
    [row] = flush(other, found_by="run-2")
    assert (row.flow_run_id, row.flow_name, row.status) == ("run-3", "dbt", "completed")


def test_a_run_writing_its_own_history_is_left_to_it(settings: Settings) -> None:
    """Another run's flush found this run's journal already final while this run was writing
    it to ops: it wrote and removed the file, and this run then failed on the missing file
    (`FileNotFoundError` from `finish`; two overlapping deployment runs, one CI run)."""
    journal = RunJournal.open(settings, flow_run_id="run-1", flow_name="elt", deployment=None)
    report = RunReport(warehouse=settings.warehouse)
    final = journal._row("completed", None, report)
    journal.entry = journal.entry.model_copy(update={"status": "completed", "final": final})
    _write(journal.path, journal.entry)  # as `finish` leaves it before it writes ops
    assert flush(settings, found_by="run-2") == []
    assert journal.path.exists()
    journal.finish("completed", None, report)
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        runs = warehouse.sql("select flow_run_id, status from ops.pipeline_runs").fetchall()
    assert runs == [("run-1", "completed")]
    assert list(settings.runs_dir.iterdir()) == []


def test_an_unreadable_journal_file_is_skipped_and_said(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.runs_dir.mkdir(parents=True)
    (settings.runs_dir / "torn.json").write_text('{"flow_run_id": "torn", "flow_na')
    with caplog.at_level(logging.WARNING):
        assert flush(settings, found_by="run-2") == []
    assert "torn.json cannot be read, skipped" in caplog.text


def _killed_once_it_says(script: str, line: str, env: dict[str, str] | None = None) -> int:
    """Run ``script`` in another Python process, SIGKILL it as soon as it prints ``line``;
    returns its PID."""
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == f"{line}\n"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return process.pid


def test_a_killed_run_is_written_with_what_it_had_loaded(
    settings: Settings, prefect_server: None
) -> None:
    """A run SIGKILLed after a source had loaded, before the run ended: its loads once never
    reached ops.table_loads, so the counts there no longer added up to the raw tables (found
    by the fault suite, tests/faults)."""
    flow_run_id = str(uuid4())
    _killed_once_it_says(
        "import sys, time\n"
        "from tests.tributary.test_runs import REPORT_LOADS\n"
        "from tributary.report import RunReport\n"
        "from tributary.runs import RunJournal\n"
        "from tributary.settings import Settings\n"
        f"settings = Settings(data_dir={str(settings.data_dir)!r})\n"
        f"journal = RunJournal.open(settings, flow_run_id={flow_run_id!r}, "
        "flow_name='elt', deployment=None)\n"
        "journal.record(RunReport(warehouse=settings.warehouse, loads=REPORT_LOADS))\n"
        "print('loaded', flush=True)\n"
        "time.sleep(600)\n",
        "loaded",
    )

    [row] = flush(settings, found_by="run-2")
    assert (row.flow_run_id, row.status, row.rows_loaded) == (flow_run_id, "crashed", 16)
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        tables = warehouse.sql(
            "select flow_run_id, table_name, load_ids, rows_new, rows_updated, rows_deleted "
            "from ops.table_loads order by table_name"
        ).fetchall()
        changes = warehouse.sql("select flow_run_id, column_name from ops.schema_changes")
        assert changes.fetchall() == [(flow_run_id, "phone")]
    assert tables == [
        (flow_run_id, "customers", ["1767.1", "1767.2"], 4, 0, 0),
        (flow_run_id, "orders", ["1767.1", "1767.2"], 7, 3, 2),
    ]


def test_a_run_killed_before_its_journal_existed_is_recorded_as_crashed(
    settings: Settings, prefect_server: None
) -> None:
    """Prefect marks a flow run RUNNING before the flow's first line writes its journal; a
    process SIGKILLed in between left the run RUNNING for ever and out of the history (the
    fault suite: 2 of 60 kills of the main process). Here the flow never writes one."""
    pid = _killed_once_it_says(
        "import time\n"
        "from prefect import flow\n"
        "from tributary.runs import local_run\n"
        "@flow(name='elt')\n"
        "def stuck() -> None:\n"
        "    print('running', flush=True)\n"
        "    time.sleep(600)\n"
        "with local_run('elt'):\n"
        "    stuck()\n",
        "running",
        env={
            **os.environ,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "TRIBUTARY_DATA_DIR": str(settings.data_dir),
        },
    )
    [marker] = settings.runs_dir.glob("*.start")
    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"{START_TAG}{marker.stem}"])
            )
        )
        assert flow_run.state is not None and flow_run.state.type == StateType.RUNNING

    [row] = flush(settings, found_by="run-2")
    assert (row.flow_run_id, row.flow_name, row.status) == (str(flow_run.id), "elt", "crashed")
    assert f"process {pid} ended without finishing the run" in (row.error or "")
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
        assert state is not None and state.type == StateType.CRASHED
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        runs = warehouse.sql("select flow_run_id, status from ops.pipeline_runs").fetchall()
    assert runs == [(str(flow_run.id), "crashed")]
    assert list(settings.runs_dir.iterdir()) == []
    assert flush(settings, found_by="run-3") == []
