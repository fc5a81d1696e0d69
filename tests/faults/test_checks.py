"""The fault suite's checks find what they look for: raw tables copied from a generated shop
compare equal, and each kind of damage done to the copy is counted where it belongs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from demo.api import Faults
from demo.generate import generate
from tests.faults.checks import RAW_TABLES, compare_raw, normal
from tests.faults.stack import Stack


@pytest.fixture
def world(tmp_path: Path) -> Stack:
    """A shop and the provider's store, and a warehouse whose raw tables are their copies."""
    shop_url = f"sqlite:///{tmp_path / 'shop.sqlite'}"
    generate(shop_url, tmp_path / "payments_api.sqlite", orders=40, seed=5)
    world = Stack(
        backend="sqlite",
        root=tmp_path,
        data_dir=tmp_path,
        shop_url=shop_url,
        api_url="http://127.0.0.1:9",
        token="unused",
        faults=Faults(),
        prefect_home=tmp_path / "prefect",
        seed=5,
    )
    with duckdb.connect(str(world.warehouse)) as warehouse:
        for relation, (kind, table, _) in RAW_TABLES.items():
            if kind == "shop":
                columns, rows = world.shop_table(table)
            else:
                columns = [row[1] for row in world.store_rows(f"pragma table_info({table})")]
                rows = world.store_rows(f"select * from {table}")
            copy = pa.Table.from_pylist([dict(zip(columns, row, strict=True)) for row in rows])
            warehouse.register("copy", copy)
            warehouse.execute(f"create schema if not exists {relation.split('.')[0]}")
            warehouse.execute(f"create table {relation} as select *, '1' as _dlt_load_id from copy")
            warehouse.unregister("copy")
    return world


def _counts(world: Stack) -> dict[str, tuple[int, int, int, int]]:
    return {
        relation: (len(diff.lost), len(diff.extra), len(diff.differing), diff.duplicates)
        for relation, diff in compare_raw(world).items()
        if diff.lost or diff.extra or diff.differing or diff.duplicates
    }


def test_copies_compare_equal_and_each_damage_is_counted(world: Stack) -> None:
    assert _counts(world) == {}
    with duckdb.connect(str(world.warehouse)) as warehouse:
        warehouse.execute("delete from raw_shop.orders where order_id = 3")
        warehouse.execute("update raw_shop.customers set email = 'x' where customer_id = 2")
        warehouse.execute(
            "insert into raw_shop.order_items select * from raw_shop.order_items "
            "where order_item_id = 5"
        )
        warehouse.execute(
            "insert into raw_shop.stores select 999, name, city, created_at, updated_at, '1' "
            "from raw_shop.stores limit 1"
        )
        warehouse.execute(
            "update raw_payments.payments set updated_at = '2031-01-01 00:00:00' "
            "where payment_id = (select min(payment_id) from raw_payments.payments)"
        )
    assert _counts(world) == {
        "raw_shop.orders": (1, 0, 0, 0),
        "raw_shop.customers": (0, 0, 1, 0),
        "raw_shop.order_items": (0, 0, 0, 1),
        "raw_shop.stores": (0, 1, 0, 0),
        "raw_payments.payments": (0, 0, 1, 0),
    }


def test_a_soft_deleted_source_row_must_be_gone_from_raw(world: Stack) -> None:
    world.shop("update customers set deleted_at = updated_at where customer_id = 4")
    assert _counts(world) == {"raw_shop.customers": (0, 1, 0, 0)}


def test_values_compare_whatever_each_database_returns() -> None:
    from datetime import UTC, date, datetime
    from decimal import Decimal

    moment = "2026-01-02 03:04:05"
    assert normal("updated_at", moment) == normal("updated_at", "2026-01-02T03:04:05Z")
    assert normal("updated_at", moment) == normal("updated_at", datetime(2026, 1, 2, 3, 4, 5))
    assert normal("updated_at", moment) == normal(
        "updated_at", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    assert normal("date", date(2026, 1, 2)) == normal("date", "2026-01-02")
    assert normal("amount", Decimal("12")) == normal("amount", 12)
