"""Schema drift on the real path: a renamed source column once failed every load with
"declared non-nullable but contains nulls"; now drift is told as drift, per table, and the
source's contract mode decides whether the run loads (evolve) or nothing does (freeze)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from demo.generate import generate
from ingestion.guards import GuardError
from ingestion.pipeline import make_pipeline, run_source
from tests.ingestion.test_guards import LOOSE_PAYMENTS
from tests.servers import database_with, run_sql
from tests.sourcefiles import scratch_settings
from tributary.settings import Settings

NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
LATER = (NOW - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
DRIFT = """
alter table orders rename column status to order_status;
alter table customers drop column email;
alter table stores add column region varchar(20) not null default 'north';
update orders set updated_at = '{now}' where order_id <= 3;
update stores set updated_at = '{now}';
"""


def _query(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as connection:
        return connection.sql(sql).fetchall()


@pytest.fixture
def shop(tmp_path: Path) -> Settings:
    shop = tmp_path / "shop.sqlite"
    settings = scratch_settings(tmp_path, shop=shop)
    generate(f"sqlite:///{shop}", settings.demo_api_db, orders=60, seed=9)
    run_source("shop", settings)
    with sqlite3.connect(shop) as connection:
        # stamped after the first load, so the next one reads the changed rows
        connection.executescript(DRIFT.format(now=f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"))
    return settings


def test_evolve_reports_each_change_once_and_loads(shop: Settings) -> None:
    load = run_source("shop", shop)
    assert sorted((c.table, c.column, c.change, c.detail) for c in load.schema_changes) == [
        ("customers", "email", "removed", "was text"),
        ("orders", "order_status", "renamed", "was status, both text"),
        ("stores", "region", "added", "text"),
    ]
    assert (
        _query(shop, "select order_status, status from raw_shop.orders where order_id = 1")[0][1]
        is None
    )
    assert _query(shop, "select distinct region from raw_shop.stores") == [("north",)]
    renamed = _query(
        shop, "select order_id from raw_shop.orders where order_status is not null order by 1"
    )
    assert renamed[:3] == [(1,), (2,), (3,)]  # and those re-read inside the lag window
    # every row holds its status in exactly one of the two columns
    assert _query(
        shop, "select count(*) from raw_shop.orders where (status is null) = (order_status is null)"
    ) == [(0,)]

    assert run_source("shop", shop).schema_changes == []  # told once


def test_freeze_loads_nothing_and_names_the_columns(shop: Settings) -> None:
    frozen = shop.model_copy(update={"schema_contract": {"shop": "freeze"}})
    cursor = make_pipeline("shop", frozen).state["sources"]["shop"]["resources"]
    before = _query(frozen, "select count(*), max(updated_at) from raw_shop.orders")
    with pytest.raises(GuardError) as stop:
        run_source("shop", frozen)
    message = str(stop.value)
    for change in (
        "raw_shop.customers.email removed",
        "raw_shop.orders.order_status renamed (was status, both text)",
        "raw_shop.stores.region added",
    ):
        assert change in message
    assert "freeze" in message and "TRIBUTARY_SCHEMA_CONTRACT" in message
    assert _query(frozen, "select count(*), max(updated_at) from raw_shop.orders") == before
    pipeline = make_pipeline("shop", frozen)
    assert not pipeline.has_pending_data
    assert pipeline.state["sources"]["shop"]["resources"] == cursor

    # Once the contract lets it evolve, the same changes load and are reported.
    assert len(run_source("shop", shop).schema_changes) == 3


def test_an_unknown_source_in_the_contract_setting_is_refused_by_name(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, schema_contract={"shpo": "freeze"})
    with pytest.raises(Exception, match="TRIBUTARY_SCHEMA_CONTRACT: no source shpo"):
        run_source("shop", settings)


def test_an_api_field_that_is_new_or_changes_type_is_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from demo.api import serve_in_background

    settings = Settings(data_dir=tmp_path)
    generate(f"sqlite:///{tmp_path / 'shop.sqlite'}", settings.demo_api_db, orders=30, seed=8)
    with sqlite3.connect(settings.demo_api_db) as connection:
        connection.executescript(LOOSE_PAYMENTS)
    monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "token")
    with serve_in_background(settings.demo_api_db, "token") as url:
        api = scratch_settings(tmp_path, api=url)
        run_source("payments", api)
        with sqlite3.connect(settings.demo_api_db) as connection:
            connection.executescript(
                "alter table payments add column fee integer;"
                f"update payments set fee = 3, updated_at = '{LATER}' where rowid <= 2;"
            )
        frozen = api.model_copy(update={"schema_contract": {"payments": "freeze"}})
        with pytest.raises(GuardError, match=r"raw_payments\.payments\.fee added \(bigint\)"):
            run_source("payments", frozen)
        assert not make_pipeline("payments", frozen).has_pending_data

        load = run_source("payments", api)
        assert [(c.column, c.change) for c in load.schema_changes] == [("fee", "added")]
        [(fees,)] = _query(api, "select count(fee) from raw_payments.payments")
        assert fees == 2

        with sqlite3.connect(settings.demo_api_db) as connection:
            connection.execute(
                f"update payments set fee = 'n/a', updated_at = '{NOW}' where rowid = 1"
            )
        load = run_source("payments", api)
        assert [(c.column, c.change, c.detail) for c in load.schema_changes] == [
            ("fee", "type changed", "now also text, kept in fee__v_text")
        ]


def test_a_column_whose_type_changed_stops_the_run_until_the_table_is_reloaded(
    tmp_path: Path,
) -> None:
    """A source column altered from integer to numeric: loading on would convert the new
    values to the warehouse's bigint (5.75 loaded as 6, the run said Completed)."""
    table = (
        "create table readings (id integer primary key, amount integer, "
        "updated_at timestamp not null); "
        "insert into readings values (1, 5, '2026-01-01'), (2, 7, '2026-01-02')"
    )
    with database_with("postgresql", table) as url:
        sources = tmp_path / "sources.yml"
        lab = {
            "type": "sql_database",
            "credentials": url,
            "defaults": {"mode": "merge", "cursor": "updated_at", "lag": 0},
            "tables": {"readings": None},
        }
        sources.write_text(yaml.safe_dump({"sources": {"lab": lab}}))
        settings = Settings(data_dir=tmp_path / "data", sources_file=sources)
        run_source("lab", settings)
        cursor = make_pipeline("lab", settings).state["sources"]["lab"]["resources"]

        run_sql(
            url,
            "alter table readings alter column amount type numeric(10, 2); "
            "update readings set amount = 5.75, updated_at = '2026-02-01' where id = 1",
        )
        with pytest.raises(GuardError) as stop:
            run_source("lab", settings)
        message = str(stop.value)
        assert "raw_lab.readings.amount type changed (bigint → decimal)" in message
        assert 'full_refresh ["lab.readings"]' in message
        assert _query(settings, "select id, amount from raw_lab.readings order by id") == [
            (1, 5),
            (2, 7),
        ]
        pipeline = make_pipeline("lab", settings)
        assert not pipeline.has_pending_data
        assert pipeline.state["sources"]["lab"]["resources"] == cursor

        reloaded = run_source("lab", settings, refresh_tables=["readings"])
        assert reloaded.schema_changes == []
        source = [(1, Decimal("5.75")), (2, Decimal("7.00"))]
        assert _query(settings, "select id, amount from raw_lab.readings order by id") == source
        assert run_source("lab", settings).schema_changes == []  # the new type is the stored one
        assert _query(settings, "select id, amount from raw_lab.readings order by id") == source
