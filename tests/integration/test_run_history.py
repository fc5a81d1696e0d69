"""Every run ends up in the history with its final state, and no process outlives its run:
a run whose main process is SIGKILLed leaves no orphan (Prefect's temporary server included)
and the next run records it as crashed, in `ops` and in Prefect; a run that fails while a
reader holds the warehouse is recorded by the next run."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Running

from demo.generate import generate
from demo.paths import shop_url
from flows.dbt_build import build
from flows.elt import EltParameters, StepFailed, elt
from tests.integration.stack import serving
from tests.processes import Process, living, processes
from tributary.report import RunReport
from tributary.runs import flush
from tributary.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

ORDERS = 200
SERVER = "prefect.server.api.server:create_app"  # how Prefect's temporary server shows in ps


@dataclass
class Shop:
    settings: Settings
    api_url: str
    token: str
    alerts: list[dict[str, Any]]  # what the in-process runs posted to the webhook

    def env(self) -> dict[str, str]:
        """A local run's environment: no PREFECT_API_URL, so Prefect starts its own server."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TRIBUTARY_", "SOURCES__", "PREFECT_API_URL"))
        }
        env.update(
            TRIBUTARY_DATA_DIR=str(self.settings.data_dir),
            TRIBUTARY_PAYMENTS_API_URL=self.api_url,
            TRIBUTARY_FX_API_URL=self.api_url,
            SOURCES__PAYMENTS__TOKEN=self.token,
            PREFECT_HOME=str(self.settings.data_dir / "prefect"),
            DBT_LOG_LEVEL="warn",
        )
        return env

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.settings.warehouse), read_only=True) as warehouse:
            return warehouse.execute(sql, list(args)).fetchall()

    def journal(self) -> list[Path]:
        """The run journal's files, where the README says they are."""
        return sorted((self.settings.data_dir / "ops" / "runs").glob("*.json"))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, prefect_server: None) -> Iterator[Shop]:
    data_dir = tmp_path_factory.mktemp("history")
    settings = Settings(data_dir=data_dir)
    generate(shop_url(settings), settings.demo_api_db, orders=ORDERS, seed=17)
    with serving(data_dir, secrets.token_urlsafe(12), webhook=True) as served:
        yield Shop(served.settings, served.api_url, served.token, served.alerts)


@dataclass(frozen=True)
class Killed:
    pid: int
    journal: list[dict[str, Any]]  # the run journal's entries just after the kill
    left: list[Process]  # the run's other processes just before the kill
    survivors: list[Process]  # those still running 15 s after it
    killed_at: datetime
    output: str


@pytest.fixture(scope="module")
def killed(shop: Shop) -> Iterator[Killed]:
    """`python -m flows.elt` in its own process group, its main process SIGKILLed (alone) once
    the run is loading the shop."""
    run = subprocess.Popen(
        [sys.executable, "-m", "flows.elt"],
        cwd=PROJECT_ROOT,
        env=shop.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("ingest-shop" in line for line in lines):
            assert run.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "the run never started loading"
            time.sleep(0.2)
        left = [p for p in processes().values() if p.pgrp == run.pid and p.pid != run.pid]
        run.send_signal(signal.SIGKILL)
        run.wait()
        journal = [json.loads(path.read_text()) for path in shop.journal()]
        killed_at = datetime.now(UTC)
        deadline = time.monotonic() + 15
        while living(left) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = living(left)
        reader.join(timeout=10)
        yield Killed(run.pid, journal, left, survivors, killed_at, "".join(lines))
    finally:
        # Whatever the code under test left behind: this test's own process group.
        with suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def recovery(shop: Shop, killed: Killed) -> RunReport:
    """The next run, in-process."""
    return elt()


def test_a_killed_run_leaves_no_process_behind(killed: Killed) -> None:
    servers = [p for p in killed.left if SERVER in p.command]
    assert len(servers) == 1, [p.command for p in killed.left]
    assert killed.survivors == [], [p.command for p in killed.survivors]
    assert f"tributary: process {killed.pid} died and left" in killed.output


def test_the_next_run_records_the_killed_one_as_crashed(
    shop: Shop, killed: Killed, recovery: RunReport
) -> None:
    [entry] = killed.journal
    assert (entry["status"], entry["pid"]) == ("running", killed.pid)
    rows = shop.query(
        "select flow_run_id, flow_name, status, error, started_at, finished_at "
        "from ops.pipeline_runs order by started_at"
    )
    [(crashed_id, _, crashed, error, started_at, finished_at), (_, flow_name, status, *_)] = rows
    assert (crashed_id, crashed) == (entry["flow_run_id"], "crashed")
    assert f"process {killed.pid} ended without finishing the run" in error
    assert started_at <= finished_at <= killed.killed_at
    assert (flow_name, status) == ("elt", "completed")
    assert recovery.loads and shop.journal() == []
    # Its Prefect server went with it, so no automation saw the crash: the next run says so.
    [alert] = [a["text"] for a in shop.alerts if entry["flow_run_id"] in a["text"]]
    assert alert.startswith("tributary: flow `elt` crashed")
    assert f"process {killed.pid} ended without finishing the run" in alert
    [(orders,)] = shop.query("select count(*) from marts.fct_orders")
    assert orders == ORDERS


def test_a_dead_run_is_marked_crashed_in_prefect_once_its_process_is_gone(
    shop: Shop, recovery: RunReport
) -> None:
    @flow(name="elt")
    def placeholder() -> None:
        """Stands for an `elt` run whose process a worker started."""

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(placeholder)
        client.set_flow_run_state(flow_run.id, Running(), force=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from tributary.runs import RunJournal\n"
            "from tributary.settings import Settings\n"
            f"RunJournal.open(Settings(data_dir={str(shop.settings.data_dir)!r}), "
            f"flow_run_id={str(flow_run.id)!r}, flow_name='elt', deployment='elt/daily')\n"
            "print('open', flush=True)\n"
            "time.sleep(600)\n",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        # Alive: its lock is held, so nothing is recorded and Prefect is left alone.
        assert flush(shop.settings, found_by="a-later-run") == []
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.id).state
        assert state is not None and state.type == StateType.RUNNING
    finally:
        holder.kill()
        holder.wait()

    [row] = flush(shop.settings, found_by="a-later-run")
    assert (row.flow_run_id, row.status, row.deployment) == (
        str(flow_run.id),
        "crashed",
        "elt/daily",
    )
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.type == StateType.CRASHED
    assert f"process {holder.pid} ended without finishing the run" in (state.message or "")
    assert shop.query(
        "select status, deployment from ops.pipeline_runs where flow_run_id = ?", str(flow_run.id)
    ) == [("crashed", "elt/daily")]
    assert shop.journal() == []
    # Written once: a later flush finds nothing more.
    assert flush(shop.settings, found_by="a-later-run") == []


def test_a_run_failed_while_a_reader_held_the_warehouse_is_recorded_later(
    shop: Shop, recovery: RunReport
) -> None:
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb\n"
            f"connection = duckdb.connect({str(shop.settings.warehouse)!r}, read_only=True)\n"
            "print('reading', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        with pytest.raises(StepFailed, match="ingest fx") as failure:
            elt(EltParameters(sources=["fx"]))
        [kept] = shop.journal()
        entry = json.loads(kept.read_text())
        assert (entry["status"], entry["final"]["error"]) == ("failed", str(failure.value))
    finally:
        assert reader.stdin is not None
        reader.stdin.close()
        reader.wait(timeout=30)

    summary = build()
    assert summary.models_built > 0
    rows = shop.query(
        "select flow_run_id, flow_name, status, error from ops.pipeline_runs "
        "order by started_at desc limit 2"
    )
    [(_, dbt_flow, dbt_status, _), (failed_id, elt_flow, elt_status, error)] = rows
    assert (dbt_flow, dbt_status) == ("dbt", "completed")
    assert (failed_id, elt_flow, elt_status) == (entry["flow_run_id"], "elt", "failed")
    assert error == str(failure.value) and "lock" in error.lower()
    assert shop.journal() == []
