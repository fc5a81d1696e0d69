"""The guards through the real `elt` flow on the small sample shop: a row stamped in 2099 once
moved the orders cursor there and every later change was skipped while the flow said
Completed; an emptied source table once deleted every order from the warehouse silently. Now
the first completes, names the row in its report and alert, and later changes keep arriving;
the second stops before deleting, alerts, and keeps what readers see."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from demo.paths import shop_sqlite_path, shop_url
from demo.simulate import SimulationResult, simulate
from flows.elt import StepFailed, elt
from tests.integration.stack import SEED, Loaded, serving
from tributary.report import RunReport
from tributary.settings import Settings

pytestmark = pytest.mark.integration

POISONED = 7  # the order whose update is stamped 2099-01-01


@dataclass
class Stack:
    settings: Settings
    alerts: list[dict[str, Any]]

    def query(self, sql: str, path: Path | None = None) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(path or self.settings.warehouse), read_only=True) as connection:
            return connection.sql(sql).fetchall()

    def shop(self, sql: str) -> None:
        with sqlite3.connect(shop_sqlite_path(self.settings)) as connection:
            connection.executescript(sql)

    def move(self, step: int) -> SimulationResult:
        return simulate(
            shop_url(self.settings),
            self.settings.demo_api_db,
            now=datetime.now(UTC).replace(tzinfo=None, microsecond=0),
            seed=SEED + step,
            deletes=False,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, loaded_shop: Loaded) -> Iterator[Stack]:
    """A copy of the session's shop after its first run, alerts going to a webhook here."""
    with serving(loaded_shop.copy(tmp_path_factory.mktemp("guards")), webhook=True) as served:
        yield Stack(served.settings, served.alerts)


@pytest.fixture(scope="module")
def poisoned_run(stack: Stack) -> tuple[RunReport, SimulationResult]:
    changes = stack.move(1)
    stack.shop(
        "update orders set status = 'returned', updated_at = '2099-01-01 00:00:00' "
        f"where order_id = {POISONED};"
    )
    return elt(), changes


def test_a_poisoned_cursor_is_named_and_later_changes_keep_arriving(
    stack: Stack, poisoned_run: tuple[RunReport, SimulationResult]
) -> None:
    report, changes = poisoned_run
    [warning] = report.warnings()
    assert warning.startswith("raw_shop.orders: 1 row(s) quarantined: cursor updated_at 2099")
    assert f'"order_id":{POISONED}' in warning
    [alert] = [a for a in stack.alerts if "completed with warnings" in a["text"]]
    assert warning in alert["text"]
    [(quarantined,)] = stack.query(
        "select rows_quarantined from ops.table_loads where table_name = 'orders' "
        "order by loaded_at desc limit 1"
    )
    assert quarantined == 1

    # The run's own changes arrived; the next ones do too, and the row is not told again.
    fct_orders = dict(stack.query("select order_id, status from marts.fct_orders"))
    assert set(changes.new_order_ids) <= fct_orders.keys()
    assert fct_orders[POISONED] != "returned"
    later = stack.move(2)
    again = elt()
    assert again.warnings() == []
    assert len([a for a in stack.alerts if "completed with warnings" in a["text"]]) == 1
    fct_orders = dict(stack.query("select order_id, status from marts.fct_orders"))
    assert set(later.new_order_ids) <= fct_orders.keys()
    for order_id, status in later.status_changes.items():
        assert fct_orders[order_id] == status
    [(times,)] = stack.query("select times_seen from quarantine.rows")
    assert times == 2


def test_an_emptied_source_table_stops_before_deleting_and_alerts(
    stack: Stack, poisoned_run: tuple[RunReport, SimulationResult]
) -> None:
    published = stack.settings.published
    marts_before = stack.query("select count(*) from marts.fct_orders", published)
    [(orders_before,)] = stack.query("select count(*) from raw_shop.orders")
    stack.shop("delete from order_items; delete from orders;")
    with pytest.raises(StepFailed, match="ingest shop") as failure:
        elt()
    assert f"raw_shop.orders: this run would delete {orders_before} of its" in str(failure.value)
    assert "confirm_deletes" in str(failure.value)
    [alert] = [a for a in stack.alerts if "failed" in a["text"].splitlines()[0]]
    assert "raw_shop.orders: this run would delete" in alert["text"]
    # Nothing deleted, nothing published: readers keep what they had.
    assert stack.query("select count(*) from raw_shop.orders") == [(orders_before,)]
    assert stack.query("select count(*) from marts.fct_orders", published) == marts_before
    [(status, error)] = stack.query(
        "select status, error from ops.pipeline_runs order by started_at desc limit 1"
    )
    assert status == "failed" and "would delete" in error


def test_the_confirming_command_works_as_printed(
    stack: Stack, poisoned_run: tuple[RunReport, SimulationResult]
) -> None:
    """After the stop above: the command the failure printed, run by a shell as a user would,
    deletes what the source lost and publishes marts that say so."""
    with pytest.raises(StepFailed) as failure:
        elt()
    [printed] = re.findall(r"`([^`]*--confirm-deletes)`", str(failure.value))
    confirmed = subprocess.run(printed, shell=True, capture_output=True, text=True, timeout=900)
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert stack.query("select count(*) from raw_shop.orders") == [(0,)]
    assert stack.query("select count(*) from marts.fct_orders", stack.settings.published) == [(0,)]
    [(deleted,)] = stack.query(
        "select rows_deleted from ops.table_loads where table_name = 'orders' "
        "order by loaded_at desc limit 1"
    )
    assert deleted > 0
