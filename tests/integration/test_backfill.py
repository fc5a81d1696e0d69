"""`elt/backfill`'s two tools on a real warehouse: a window reloads what the API holds for it
(and leaves the incremental state alone); a confirmed full refresh of one table makes it equal
the source again and leaves the other tables as they were."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest

from demo.generate import generate
from demo.paths import shop_sqlite_path, shop_url
from flows.elt import EltParameters, elt
from tests.integration.sources import fetch_payments
from tests.integration.stack import serving
from tributary.settings import Settings

pytestmark = pytest.mark.integration

END = datetime(2026, 6, 30, 12, 0, 0)
WINDOW = (date(2026, 3, 1), date(2026, 4, 1))
# These tests are about raw tables; dbt builds one small model (and its tests) to stay quick.
DBT_MINIMAL = ["stg_fx__exchange_rates"]


@pytest.fixture
def loaded(tmp_path: Path, prefect_server: None) -> Iterator[tuple[Settings, str]]:
    settings = Settings(data_dir=tmp_path)
    generate(shop_url(settings), settings.demo_api_db, orders=400, seed=9, end=END)
    with serving(tmp_path) as served:
        elt(EltParameters(dbt_select=DBT_MINIMAL))
        yield served.settings, served.api_url


def _sql(settings: Settings, sql: str, read_only: bool = True) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=read_only) as warehouse:
        return warehouse.sql(sql).fetchall()


def test_window_reloads_the_api_sources_without_moving_their_state(
    loaded: tuple[Settings, str],
) -> None:
    settings, api_url = loaded
    start, end = (f"{d.isoformat()} 00:00:00" for d in WINDOW)
    in_window = f"updated_at >= '{start}' and updated_at < '{end}'"
    with duckdb.connect(str(settings.warehouse)) as warehouse:
        warehouse.execute(f"delete from raw_payments.payments where {in_window}")
        warehouse.execute(
            f"delete from raw_fx.exchange_rates where date >= '{WINDOW[0]}' "
            f"and date < '{WINDOW[1]}'"
        )
    window_payments = {
        row["payment_id"]
        for row in fetch_payments(api_url, "token")
        if start <= row["updated_at"].replace("T", " ").rstrip("Z") < end
    }
    assert window_payments, "the window holds no payments; the test proves nothing"

    report = elt(
        EltParameters(
            sources=["payments", "fx"],
            window_start=WINDOW[0],
            window_end=WINDOW[1],
            dbt_select=DBT_MINIMAL,
        )
    )
    [payments] = [load for load in report.loads if load.source == "payments"]
    assert payments.rows_loaded == len(window_payments)
    loaded_ids = {
        row[0]
        for row in _sql(settings, f"select payment_id from raw_payments.payments where {in_window}")
    }
    assert loaded_ids == window_payments
    [(rows, keys)] = _sql(
        settings, "select count(*), count(distinct payment_id) from raw_payments.payments"
    )
    assert rows == keys == len(fetch_payments(api_url, "token"))
    [(days,)] = _sql(
        settings,
        f"select count(distinct date) from raw_fx.exchange_rates "
        f"where date >= '{WINDOW[0]}' and date < '{WINDOW[1]}'",
    )
    assert days == (WINDOW[1] - WINDOW[0]).days

    # The incremental cursor stayed at the newest payment: a normal run fetches nothing old.
    normal = elt(EltParameters(sources=["payments"], dbt_select=DBT_MINIMAL))
    [again] = normal.loads
    assert again.rows_loaded <= 1  # at most the newest row, which the cursor includes


def test_confirmed_full_refresh_of_one_table(loaded: tuple[Settings, str]) -> None:
    settings, _ = loaded
    with duckdb.connect(str(settings.warehouse)) as warehouse:
        warehouse.execute("delete from raw_shop.orders where order_id % 7 = 0")
        warehouse.execute("update raw_shop.orders set total_cents = -1 where order_id % 5 = 0")
    customers_before = _sql(settings, "select customer_id, _dlt_load_id from raw_shop.customers")

    report = elt(
        EltParameters(
            sources=["shop"],
            full_refresh=["shop.orders"],
            confirm_full_refresh=True,
            dbt_select=DBT_MINIMAL,
        )
    )
    [shop] = report.loads
    assert [table.table for table in shop.tables] == ["orders"]

    with sqlite3.connect(shop_sqlite_path(settings)) as source:
        want = sorted(source.execute("select order_id, total_cents from orders").fetchall())
    got = sorted(_sql(settings, "select order_id, total_cents from raw_shop.orders"))
    assert got == want
    assert _sql(settings, "select customer_id, _dlt_load_id from raw_shop.customers") == (
        customers_before
    )
