"""The shop source, unchanged, against the PostgreSQL and MariaDB servers on this machine:
after a full load and after an incremental one the raw tables equal the source row for row."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from demo.generate import generate
from demo.simulate import simulate
from ingestion.pipeline import run_source
from tributary.settings import Settings

pytestmark = pytest.mark.integration

SERVERS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/",
}
KEYS = {
    "customers": "customer_id",
    "stores": "store_id",
    "products": "product_id",
    "orders": "order_id",
    "order_items": "order_item_id",
}


@pytest.fixture(params=sorted(SERVERS))
def shop_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database on the server, dropped afterwards."""
    admin = create_engine(SERVERS[request.param], isolation_level="AUTOCOMMIT")
    name = f"tributary_test_{secrets.token_hex(4)}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f"create database {name}"))
    except OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{request.param} is not running: {exc}")
        pytest.skip(f"{request.param} is not running")
    try:
        yield make_url(SERVERS[request.param]).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"drop database if exists {name}"))
        admin.dispose()


def _source_rows(url: str, table: str) -> dict[Any, tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            result = connection.execute(text(f"select * from {table}"))
            columns = list(result.keys())
            rows = [dict(zip(columns, row, strict=True)) for row in result]
    finally:
        engine.dispose()
    return {row[KEYS[table]]: tuple(sorted(row.items())) for row in rows}


def _raw_rows(settings: Settings, table: str) -> dict[Any, tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        relation = warehouse.sql(f"select * exclude (_dlt_load_id) from raw_shop.{table}")
        columns = relation.columns
        rows = [dict(zip(columns, row, strict=True)) for row in relation.fetchall()]
        [(count, keys)] = warehouse.sql(
            f"select count(*), count(distinct {KEYS[table]}) from raw_shop.{table}"
        ).fetchall()
    assert count == keys, f"raw_shop.{table}: duplicate keys"
    return {row[KEYS[table]]: tuple(sorted(row.items())) for row in rows}


def _assert_raw_equals_source(settings: Settings, url: str) -> None:
    for table in KEYS:
        source, raw = _source_rows(url, table), _raw_rows(settings, table)
        assert raw.keys() == source.keys(), table
        different = [key for key in source if raw[key] != source[key]]
        assert not different, f"{table}: {len(different)} rows differ, e.g. {different[:3]}"


def test_full_then_incremental_load_equals_the_source(shop_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, shop_url=shop_url)
    generate(shop_url, settings.demo_api_db, orders=300, seed=13)
    first = run_source("shop", settings)
    assert {t.table: t.new for t in first.tables}["orders"] == 300
    _assert_raw_equals_source(settings, shop_url)

    change = simulate(shop_url, settings.demo_api_db, seed=14)
    second = run_source("shop", settings)
    orders = {t.table: t for t in second.tables}["orders"]
    assert orders.new == len(change.new_order_ids)
    assert orders.updated == len(set(change.status_changes) | set(change.late_updated_order_ids)), (
        change.describe()
    )
    _assert_raw_equals_source(settings, shop_url)
