"""The shop source on a small real SQLite database: merge, incremental, clear config errors."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import duckdb
import pytest

from ingestion import registry
from ingestion.pipeline import make_pipeline, run_source
from tests.sourcefiles import scratch_settings
from tributary.settings import ConfigurationError, Settings

SCHEMA = """
create table customers(customer_id integer primary key, name varchar(100), email varchar(100),
  created_at datetime, updated_at datetime);
create table stores(store_id integer primary key, name varchar(50), city varchar(50),
  created_at datetime, updated_at datetime);
create table products(product_id integer primary key, sku varchar(20), name varchar(100),
  category varchar(50), price_cents integer, created_at datetime, updated_at datetime);
create table orders(order_id integer primary key, customer_id integer, store_id integer,
  ordered_at datetime, status varchar(20), subtotal_cents integer, tax_cents integer,
  total_cents integer, updated_at datetime);
create table order_items(order_item_id integer primary key, order_id integer,
  product_id integer, quantity integer, unit_price_cents integer, updated_at datetime);
insert into customers values (1, 'Ada', 'ada@example.com', '2026-01-01 10:00:00',
  '2026-01-01 10:00:00'), (2, 'Bo', 'bo@example.com', '2026-01-02 10:00:00', '2026-01-02 10:00:00');
insert into stores values (1, 'Main', 'Leeds', '2025-01-01 00:00:00', '2025-01-01 00:00:00');
insert into products values (1, 'SKU-1', 'Mug', 'kitchen', 500, '2025-01-01 00:00:00',
  '2025-01-01 00:00:00');
insert into orders values (1, 1, 1, '2026-02-01 10:00:00', 'completed', 1000, 100, 1100,
  '2026-02-01 10:00:00');
insert into order_items values (1, 1, 1, 2, 500, '2026-02-01 10:00:00');
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    with sqlite3.connect(tmp_path / "shop.sqlite") as connection:
        connection.executescript(SCHEMA)
    return scratch_settings(tmp_path, shop=tmp_path / "shop.sqlite")


def _shop(settings: Settings) -> Path:
    return settings.data_dir / "shop.sqlite"


def _orders(settings: Settings) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as connection:
        return connection.sql(
            "select order_id, status, total_cents, cast(updated_at as varchar)"
            " from raw_shop.orders order by order_id"
        ).fetchall()


def test_incremental_merge_loads_only_changes_and_replaces_updated_rows(
    settings: Settings,
) -> None:
    first = run_source("shop", settings)
    assert {t.table: (t.loaded, t.new) for t in first.tables} == {
        "customers": (2, 2),
        "stores": (1, 1),
        "products": (1, 1),
        "orders": (1, 1),
        "order_items": (1, 1),
    }

    # Nothing changed: rows re-read inside the lag window merge onto themselves, unchanged.
    again = run_source("shop", settings)
    assert all((t.new, t.updated, t.deleted) == (0, 0, 0) for t in again.tables), again
    assert len(_orders(settings)) == 1

    with sqlite3.connect(_shop(settings)) as connection:
        connection.executescript(
            "update orders set status = 'returned', updated_at = '2026-03-01 00:00:00'"
            " where order_id = 1;"
            "insert into orders values (2, 2, 1, '2026-03-01 10:00:00', 'placed', 500, 50, 550,"
            " '2026-03-01 10:00:00');"
        )
    changed = {t.table: (t.new, t.updated) for t in run_source("shop", settings).tables}
    assert changed["orders"] == (1, 1)
    assert changed["customers"] == (0, 0)
    assert _orders(settings) == [
        (1, "returned", 1100, "2026-03-01 00:00:00"),
        (2, "placed", 550, "2026-03-01 10:00:00"),
    ]


def test_full_refresh_reloads_everything(settings: Settings) -> None:
    run_source("shop", settings)
    refreshed = run_source("shop", settings, full_refresh=True)
    assert {t.table: t.new for t in refreshed.tables}["customers"] == 2
    assert len(_orders(settings)) == 1


def test_missing_shop_database_names_the_setting(tmp_path: Path) -> None:
    shop = tmp_path / "shop.sqlite"
    settings = scratch_settings(tmp_path, shop=shop)
    with pytest.raises(
        ConfigurationError,
        match=f"^sources\\.shop\\.credentials: no SQLite database at {re.escape(str(shop))}; ",
    ):
        run_source("shop", settings)
    assert not settings.warehouse.exists()
    assert not shop.exists()  # not created empty by connecting to it


def test_a_failed_load_is_finished_by_the_next_attempt_which_then_reads_what_changed_since(
    settings: Settings,
) -> None:
    run_source("shop", settings)
    with sqlite3.connect(_shop(settings)) as connection:
        connection.execute(
            "insert into orders values (2, 2, 1, '2026-03-01 10:00:00', 'placed', 500, 50, 550,"
            " '2026-03-01 10:00:00')"
        )
    # An attempt that dies between normalise and load (killed, out of memory) leaves its
    # load package pending — made here with dlt's own steps, as run_source runs them.
    pipeline = make_pipeline("shop", settings)
    pipeline.extract(registry.build("shop", settings).source)
    pipeline.normalize()
    assert pipeline.has_pending_data
    [pending] = pipeline.list_normalized_load_packages()

    # Meanwhile the source moved on. The retry loads what the failed attempt extracted (not
    # extracted again), then what changed since: unlike dlt's `Pipeline.run`, which stops
    # after the pending package and would say Completed without order 3.
    with sqlite3.connect(_shop(settings)) as connection:
        connection.execute(
            "insert into orders values (3, 1, 1, '2026-03-02 10:00:00', 'placed', 700, 70, 770,"
            " '2026-03-02 10:00:00')"
        )
    resumed = run_source("shop", settings)
    assert resumed.resumed
    assert resumed.load_ids[0] == pending and len(resumed.load_ids) == 2
    assert {t.table: (t.new, t.updated) for t in resumed.tables}["orders"] == (2, 0)
    assert [row[0] for row in _orders(settings)] == [1, 2, 3]

    caught_up = run_source("shop", settings)
    assert not caught_up.resumed
    assert {t.table: (t.new, t.updated) for t in caught_up.tables}["orders"] == (0, 0)
    assert [row[0] for row in _orders(settings)] == [1, 2, 3]
