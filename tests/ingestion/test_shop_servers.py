"""The shop source, unchanged, against the PostgreSQL and MariaDB servers on this machine:
after a full load and after an incremental one the raw tables equal the source row for row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from demo.generate import generate
from demo.simulate import simulate
from ingestion.pipeline import run_source
from ingestion.sql_database import bulk
from tests.servers import throwaway_database
from tests.sourcefiles import scratch_settings
from tributary.settings import Settings

pytestmark = pytest.mark.integration

KEYS = {
    "customers": "customer_id",
    "stores": "store_id",
    "products": "product_id",
    "orders": "order_id",
    "order_items": "order_item_id",
}


@pytest.fixture(params=["mariadb", "postgresql"])
def shop_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty database on the server, dropped afterwards."""
    with throwaway_database(request.param) as url:
        yield url


def _source_rows(url: str, table: str) -> dict[Any, tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            result = connection.execute(text(f"select * from {table}"))
            columns = list(result.keys())
            rows = [dict(zip(columns, row, strict=True)) for row in result]
    finally:
        engine.dispose()
    # a soft-deleted row is one the warehouse must not hold
    rows = [row for row in rows if row.get("deleted_at") is None]
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
    settings = scratch_settings(tmp_path, shop=shop_url)
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

    # The simulator's own deletes: soft ones arrive as changed rows, hard ones by key scan.
    deleting = simulate(shop_url, settings.demo_api_db, seed=15, deletes=True)
    assert deleting.hard_deleted_order_ids and deleting.soft_deleted_customer_ids
    third = {t.table: t for t in run_source("shop", settings).tables}
    assert {table: third[table].deleted for table in KEYS} == {
        "customers": len(deleting.soft_deleted_customer_ids),
        "stores": 0,
        "products": len(deleting.soft_deleted_product_ids),
        "orders": len(deleting.hard_deleted_order_ids),
        "order_items": len(deleting.hard_deleted_order_item_ids),
    }, deleting.describe()
    _assert_raw_equals_source(settings, shop_url)


def _max_updated_at(url: str) -> datetime:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("select max(updated_at) from orders")).scalar_one()
    finally:
        engine.dispose()


def _insert_order(connection: Connection, order_id: int, stamped: datetime) -> None:
    connection.execute(
        text(
            "insert into orders (order_id, customer_id, store_id, ordered_at, status, "
            "subtotal_cents, tax_cents, total_cents, updated_at) "
            "select :id, min(customer_id), min(store_id), :at, 'placed', 100, 10, 110, :at "
            "from customers, stores"
        ),
        {"id": order_id, "at": stamped},
    )


@pytest.mark.parametrize("lag_seconds", [300, 0])
def test_a_row_committed_late_is_found_inside_the_lag_window(
    shop_url: str, tmp_path: Path, lag_seconds: int
) -> None:
    """A write transaction stamps ``updated_at`` before a later one, but commits after the
    pipeline has read past it (dlt#2269). With the lag window the next run finds it; without
    one (lag 0, dlt's default) it is lost for good — the trap the window closes."""
    settings = scratch_settings(tmp_path, shop=shop_url, lag=lag_seconds)
    generate(shop_url, settings.demo_api_db, orders=100, seed=21)
    run_source("shop", settings)
    high = _max_updated_at(shop_url)

    engine = create_engine(shop_url)
    try:
        with engine.connect() as slow:
            slow_transaction = slow.begin()
            _insert_order(slow, 900_001, high + timedelta(seconds=60))  # stamped first …
            with engine.begin() as fast:
                _insert_order(fast, 900_002, high + timedelta(seconds=120))
            read_past = run_source("shop", settings)  # … read while still uncommitted
            slow_transaction.commit()  # … committed last
    finally:
        engine.dispose()
    assert {t.table: t.new for t in read_past.tables}["orders"] == 1

    after = run_source("shop", settings)
    found = {t.table: t for t in after.tables}["orders"]
    if lag_seconds:
        assert (found.new, found.updated, found.deleted) == (1, 0, 0)
        _assert_raw_equals_source(settings, shop_url)
    else:
        assert found.new == 0
        assert 900_001 not in _raw_rows(settings, "orders")


def test_deleted_rows_leave_the_warehouse(shop_url: str, tmp_path: Path) -> None:
    """A soft delete (``deleted_at`` set) and a hard delete (row gone) both remove the row
    from the raw tables; everything else still equals the source, and the counts say so."""
    settings = scratch_settings(tmp_path, shop=shop_url)
    generate(shop_url, settings.demo_api_db, orders=200, seed=31)
    run_source("shop", settings)
    high = _max_updated_at(shop_url)

    engine = create_engine(shop_url)
    try:
        with engine.begin() as connection:
            customer = connection.execute(
                text("select min(customer_id) from customers")
            ).scalar_one()
            connection.execute(
                text(
                    "update customers set deleted_at = :at, updated_at = :at "
                    "where customer_id = :id"
                ),
                {"at": high + timedelta(seconds=30), "id": customer},
            )
            order = connection.execute(text("select max(order_id) from orders")).scalar_one()
            items = connection.execute(
                text("select count(*) from order_items where order_id = :id"), {"id": order}
            ).scalar_one()
            connection.execute(text("delete from order_items where order_id = :id"), {"id": order})
            connection.execute(text("delete from orders where order_id = :id"), {"id": order})
    finally:
        engine.dispose()

    load = {t.table: t for t in run_source("shop", settings).tables}
    assert (load["customers"].deleted, load["orders"].deleted) == (1, 1)
    assert load["order_items"].deleted == items > 0
    assert customer not in _raw_rows(settings, "customers")
    _assert_raw_equals_source(settings, shop_url)

    again = run_source("shop", settings)  # nothing more to delete, nothing came back
    assert all((t.new, t.updated, t.deleted) == (0, 0, 0) for t in again.tables), again
    _assert_raw_equals_source(settings, shop_url)


def test_a_whole_table_read_that_dies_before_its_stream_is_finished_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL tables read whole go in two steps: dlt loads their newest rows, then the rest
    streams in. The process dying between the two (an exception stands in for the kill, at
    exactly that point) leaves a plan behind; the next run streams first, then loads what
    changed, and the warehouse equals the source."""
    with throwaway_database("postgresql") as shop_url:
        settings = scratch_settings(tmp_path, shop=shop_url)
        generate(shop_url, settings.demo_api_db, orders=200, seed=51)

        def killed(*args: object, **kwargs: object) -> int:
            raise SystemExit("killed between the load and the stream")

        monkeypatch.setattr(bulk, "stream_rest", killed)
        with pytest.raises(SystemExit):
            run_source("shop", settings)
        monkeypatch.undo()
        partial = _raw_rows(settings, "orders")
        assert 0 < len(partial) < 200  # only the newest rows made it
        plan = bulk.plan_path(settings.pipelines_dir, "tributary_shop")
        assert {read.table for read in bulk.read_plan(plan)} == set(KEYS)

        change = simulate(shop_url, settings.demo_api_db, seed=52, deletes=True)
        run_source("shop", settings)
        assert not plan.exists()
        _assert_raw_equals_source(settings, shop_url)
        assert change.new_order_ids


def test_a_stream_that_committed_before_its_plan_was_removed_is_not_loaded_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after the stream committed but before its plan was removed (an
    exception stands in for the kill, at exactly that point): the next run streams the same
    rows again, and must skip every one the raw table already holds — no duplicate keys, the
    warehouse equal to the source, the plan gone."""
    with throwaway_database("postgresql") as shop_url:
        settings = scratch_settings(tmp_path, shop=shop_url)
        generate(shop_url, settings.demo_api_db, orders=200, seed=55)
        stream_rest = bulk.stream_rest
        streamed: list[int] = []

        def killed(*args: Any, **kwargs: Any) -> int:
            streamed.append(stream_rest(*args, **kwargs))
            raise SystemExit("killed after the stream committed")

        monkeypatch.setattr(bulk, "stream_rest", killed)
        with pytest.raises(SystemExit):
            run_source("shop", settings)
        monkeypatch.undo()
        plan = bulk.plan_path(settings.pipelines_dir, "tributary_shop")
        assert plan.exists() and streamed and streamed[0] > 0
        first_table = bulk.read_plan(plan)[0].table
        assert len(_raw_rows(settings, first_table)) == len(_source_rows(shop_url, first_table))

        again: list[int] = []
        monkeypatch.setattr(
            bulk, "stream_rest", lambda *a, **k: again.append(stream_rest(*a, **k)) or again[-1]
        )
        run_source("shop", settings)
        monkeypatch.undo()
        assert again[0] == 0  # the committed stream's table: every row already there
        assert not plan.exists()
        _assert_raw_equals_source(settings, shop_url)  # duplicate keys fail in _raw_rows


def test_a_first_load_that_dies_after_planning_its_stream_recovers_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first load dies right after the stream's plan is written (an exception stands in
    for the kill, at exactly that point): the warehouse has no dataset yet, so the next run's
    sync with it discards the pending package, and the plan must go with it — once it was
    kept, and every later run failed on a raw table that did not exist."""
    with throwaway_database("postgresql") as shop_url:
        settings = scratch_settings(tmp_path, shop=shop_url)
        generate(shop_url, settings.demo_api_db, orders=200, seed=53)
        write_plan = bulk.write_plan

        def killed(*args: Any, **kwargs: Any) -> None:
            write_plan(*args, **kwargs)
            raise SystemExit("killed just after the plan was written")

        monkeypatch.setattr(bulk, "write_plan", killed)
        with pytest.raises(SystemExit):
            run_source("shop", settings)
        monkeypatch.undo()
        plan = bulk.plan_path(settings.pipelines_dir, "tributary_shop")
        assert plan.exists()

        run_source("shop", settings)
        assert not plan.exists()
        _assert_raw_equals_source(settings, shop_url)
        run_source("shop", settings)
        _assert_raw_equals_source(settings, shop_url)


def test_a_cursor_from_the_future_on_a_postgresql_whole_table_read(tmp_path: Path) -> None:
    """The bulk path reads only a table's newest rows through dlt; a row stamped in 2099 once
    was those newest rows: quarantined, it would have left the cursor unset and the rest of the
    table never streamed. Newest now means newest not beyond now plus the tolerance."""
    with throwaway_database("postgresql") as shop_url:
        settings = scratch_settings(tmp_path, shop=shop_url)
        generate(shop_url, settings.demo_api_db, orders=200, seed=57)
        engine = create_engine(shop_url)
        try:
            with engine.begin() as connection:
                connection.execute(
                    text("update orders set updated_at = '2099-01-01' where order_id = 5")
                )
        finally:
            engine.dispose()
        load = run_source("shop", settings)
        assert [(c.table, c.rows) for c in load.quarantined] == [("orders", 1)]
        raw = _raw_rows(settings, "orders")
        source = _source_rows(shop_url, "orders")
        assert raw.keys() == source.keys() - {5}
        assert all(raw[key] == source[key] for key in raw)
        assert not bulk.plan_path(settings.pipelines_dir, "tributary_shop").exists()
