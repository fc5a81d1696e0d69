"""tributary as production runs it: deployments on a real Prefect server, a real process worker,
runs triggered with `prefect deployment run` as users do, and alerts a real receiver gets."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from demo.paths import shop_sqlite_path
from tests.deploy.conftest import BIN, Stack
from tests.integration.sources import expected_marts
from tributary.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _run_id(output: str) -> str:
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def _api(stack: Stack, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, f"{stack.env['PREFECT_API_URL']}{path}", timeout=30, **kwargs)
    response.raise_for_status()
    return response.json() if response.content else None


def _wait_final(stack: Stack, run_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _api(stack, "GET", f"/flow_runs/{run_id}")
        if run["state"] and run["state"]["type"] in FINAL:
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s")


def _logs(stack: Stack, run_id: str) -> str:
    logs = _api(stack, "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}})
    return "\n".join(entry["message"] for entry in logs)


def _wait_log(stack: Stack, run_id: str, line: str, timeout: float = 60) -> None:
    """Logs reach the server in batches, possibly after the run's final state: poll."""
    deadline = time.monotonic() + timeout
    while line not in (logs := _logs(stack, run_id)):
        assert time.monotonic() < deadline, f"{line!r} not in the run's logs:\n{logs}"
        time.sleep(0.5)


def _trigger(stack: Stack, deployment: str, *args: str) -> str:
    result = stack.prefect("deployment", "run", deployment, *args)
    return _run_id(result.stdout)


def _warehouse(stack: Stack, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(stack.settings.warehouse), read_only=True) as warehouse:
        return warehouse.sql(sql).fetchall()


def _assert_unique_keys(stack: Stack) -> None:
    for table, key in [
        ("raw_shop.orders", "order_id"),
        ("raw_shop.order_items", "order_item_id"),
        ("raw_payments.payments", "payment_id"),
        ("marts.fct_orders", "order_id"),
        ("marts.dim_customers", "customer_id"),
    ]:
        [(rows, keys)] = _warehouse(stack, f"select count(*), count(distinct {key}) from {table}")
        assert rows == keys, f"{table}: {rows} rows, {keys} distinct {key}"


def _wait_alert(stack: Stack, subject: str, timeout: float = 90) -> str:
    """The first alert whose text contains ``subject``; other alerts may arrive meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for alert in list(stack.alerts):
            if subject in alert["text"]:
                return alert["text"]
        time.sleep(0.5)
    raise AssertionError(
        f"no alert with {subject!r} in {timeout} s; got {stack.alerts}\n" + _server_log_tail(stack)
    )


def _server_log_tail(stack: Stack) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text()[-4000:]}" for log in sorted(stack.logs.glob("*.log"))
    )


def test_daily_then_dbt_build_through_the_cli(stack: Stack) -> None:
    result = stack.prefect("deployment", "run", "elt/daily", "--watch", timeout=900)
    run = _api(stack, "GET", f"/flow_runs/{_run_id(result.stdout)}")
    assert run["state"]["type"] == "COMPLETED", result.stdout + _server_log_tail(stack)

    expected = expected_marts(shop_sqlite_path(stack.settings), stack.api_url, stack.token)
    [(orders, order_total)] = _warehouse(
        stack, "select count(*), sum(order_total) from marts.fct_orders"
    )
    assert orders == len(expected.fct_orders)
    assert order_total == sum(row["order_total"] for row in expected.fct_orders.values())
    [(revenue,)] = _warehouse(stack, "select sum(revenue) from marts.fct_daily_revenue")
    assert revenue == sum(day["revenue"] for day in expected.fct_daily_revenue.values())
    _assert_unique_keys(stack)
    [(pipeline_runs,)] = _warehouse(
        stack, f"select count(*) from ops.pipeline_runs where flow_run_id = '{run['id']}'"
    )
    assert pipeline_runs == 1

    built_before = _warehouse(
        stack, "select count(*) from marts.dim_customers"
    )  # the analyst's run rebuilds one model and its tests, nothing else
    run_id = _trigger(
        stack, "dbt/build", "--params", '{"params": {"select": ["fct_daily_revenue"]}}', "--watch"
    )
    run = _wait_final(stack, run_id)
    assert run["state"]["type"] == "COMPLETED", _logs(stack, run_id)
    _wait_log(stack, run_id, "dbt build --select fct_daily_revenue: 1 models built")
    assert _warehouse(stack, "select count(*) from marts.dim_customers") == built_before


def test_parameter_schema_is_enforced(stack: Stack) -> None:
    result = stack.cli(
        str(BIN / "prefect"),
        "--no-prompt",
        "deployment",
        "run",
        "elt/daily",
        "--params",
        '{"params": {"sources": "shop"}}',
    )
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # as wrapped at the terminal
    assert "Validation failed for field 'params.sources'" in output
    assert "Failure reason: 'shop' is not valid under any of the given schemas" in output


def test_an_undeclared_source_is_refused_when_triggered(stack: Stack) -> None:
    """`prefect deploy` puts the names the sources file declares into the parameter schema:
    the server refuses another before a run exists. (A file changed after the deployment is
    checked again by the run itself: tests/flows/test_parameters.py.)"""
    result = stack.cli(
        str(BIN / "prefect"),
        "--no-prompt",
        "deployment",
        "run",
        "elt/daily",
        "--params",
        '{"params": {"sources": ["shop", "nowhere"]}}',
    )
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # as wrapped at the terminal
    assert "Validation failed for field 'params.sources" in output, output
    assert "'nowhere' is not one of ['shop', 'payments', 'fx']" in output, output


def test_two_overlapping_runs_both_complete(stack: Stack) -> None:
    # The worker asks for runs every 10 s and each trigger is a CLI start of a few seconds: a
    # poll between the two triggers started them a poll apart, after the first had finished
    # (CI at stop 18). With the pool paused while both are created, one poll takes both.
    _api(stack, "PATCH", "/work_pools/tributary", json={"is_paused": True})
    try:
        first = _trigger(stack, "elt/incremental")
        second = _trigger(stack, "elt/incremental")
    finally:
        _api(stack, "PATCH", "/work_pools/tributary", json={"is_paused": False})
    runs = [_wait_final(stack, first), _wait_final(stack, second)]
    for run in runs:
        assert run["state"]["type"] == "COMPLETED", _logs(stack, run["id"])
    # Both were running at once: the worker started both, the warehouse lock made one wait.
    earlier, later = sorted(runs, key=lambda run: run["start_time"])
    assert later["start_time"] < earlier["end_time"], (
        "the runs did not overlap; the test proves nothing"
    )
    _assert_unique_keys(stack)
    expected = expected_marts(shop_sqlite_path(stack.settings), stack.api_url, stack.token)
    [(orders,)] = _warehouse(stack, "select count(*) from marts.fct_orders")
    assert orders == len(expected.fct_orders)


def test_failed_run_notifies_with_step_and_cause(stack: Stack) -> None:
    stack.alerts.clear()
    run_id = _trigger(
        stack,
        "elt/daily",
        "--job-variable",
        'env={"SOURCES__PAYMENTS__TOKEN": "wrong-token"}',
    )
    run = _wait_final(stack, run_id)
    assert run["state"]["type"] == "FAILED"
    text = _wait_alert(stack, "tributary: flow `elt` failed")
    assert "Deployment: elt/daily" in text
    assert "Failed step: ingest payments" in text
    assert "401" in text
    assert run_id in text
    assert "wrong-token" not in text


def _flow_run_pid(run_id: str, timeout: float = 120) -> int:
    """The process the worker started for a flow run (its environment names the run)."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    return int(proc.name)
            except OSError:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no process for flow run {run_id}")


def test_killed_run_is_reported_by_the_server(stack: Stack) -> None:
    stack.alerts.clear()
    run_id = _trigger(stack, "elt/daily")
    os.kill(_flow_run_pid(run_id), signal.SIGKILL)
    run = _wait_final(stack, run_id)
    assert run["state"]["type"] == "CRASHED"
    text = _wait_alert(stack, "tributary: flow `elt` crashed")
    assert "Deployment: elt/daily" in text
    assert run_id in text


def test_no_successful_run_for_too_long_alerts(stack: Stack) -> None:
    """The stale-warehouse automation from automations.yaml, with a 15 s horizon instead of
    TRIBUTARY_STALE_AFTER_HOURS, fires when no `elt` run completes in that time."""
    # Over the REST API: Prefect clients or settings made in this process would outlive the
    # test and point later in-process flows' reads at this server.
    from tributary.server import ALERTS_BLOCK, load_automations

    [block] = _api(
        stack,
        "POST",
        "/block_documents/filter",
        json={"block_documents": {"name": {"any_": [ALERTS_BLOCK]}}},
    )
    [stale] = [
        automation.model_copy(update={"name": "tributary-elt-stale-test"})
        for automation in load_automations(block["id"], stale_after_hours=15 / 3600)
        if automation.name == "tributary-elt-stale"
    ]
    created = _api(stack, "POST", "/automations/", json=stale.model_dump(mode="json"))
    try:
        text = _wait_alert(stack, "tributary: no successful `elt` run in", timeout=120)
    finally:
        httpx.delete(f"{stack.env['PREFECT_API_URL']}/automations/{created['id']}", timeout=30)
    assert "going stale" in text


def test_runs_use_the_release_not_a_working_copy_someone_edits(
    stack: Stack, tmp_path: Path
) -> None:
    """A worker pointed at a working copy runs whatever is saved there — an analyst's
    unfinished edit breaks the scheduled run; after `tributary release` the deployments run
    the commit, and the same edit reaches no run."""
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(checkout)], check=True)
    model = checkout / "dbt_project" / "models" / "marts" / "fct_daily_revenue.sql"
    model.write_text(model.read_text() + "\n-- unfinished edit\nwhere no_such_column\n")
    select = ("--params", '{"params": {"select": ["fct_daily_revenue"]}}')
    stack.prefect("variable", "set", "tributary_release", str(checkout), "--overwrite")
    try:
        run_id = _trigger(stack, "dbt/build", *select)
        run = _wait_final(stack, run_id)
        assert run["state"]["type"] == "FAILED", _logs(stack, run_id)
        _wait_log(stack, run_id, "no_such_column")

        released = stack.cli(str(BIN / "tributary"), "release")
        assert released.returncode == 0, released.stdout + released.stderr
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        folder = stack.settings.data_dir.resolve() / "releases" / commit[:12]
        assert f"Released {commit[:12]} (HEAD) in {folder}" in released.stdout
        assert "The deployments' next runs use it" in released.stdout
        assert "unfinished edit" not in (folder / model.relative_to(checkout)).read_text()

        run_id = _trigger(stack, "dbt/build", *select)
        run = _wait_final(stack, run_id)
        assert run["state"]["type"] == "COMPLETED", _logs(stack, run_id)
        _wait_log(stack, run_id, "dbt build --select fct_daily_revenue: 1 models built")
        assert (folder / "dbt_project" / "target" / "manifest.json").is_file()  # ran there
    finally:
        stack.prefect("variable", "unset", "tributary_release")
