"""The simulator changes exactly what it reports, stamped so incremental loads see it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from demo.generate import generate
from demo.simulate import SimulationResult, simulate
from tests.servers import throwaway_database

END = datetime(2026, 3, 1, 12)
NOW = datetime(2026, 3, 2, 9)
DELETION_FIELDS = {
    "soft_deleted_customer_ids",
    "soft_deleted_product_ids",
    "hard_deleted_order_ids",
    "hard_deleted_order_item_ids",
}


def test_simulation_changes_exactly_what_it_reports(tmp_path: Path) -> None:
    shop, store = tmp_path / "shop.sqlite", tmp_path / "api.sqlite"
    generate(f"sqlite:///{shop}", store, orders=400, seed=2, end=datetime(2026, 3, 1, 12))
    with sqlite3.connect(shop) as connection:
        before = dict(connection.execute("select order_id, status from orders").fetchall())

    result = simulate(f"sqlite:///{shop}", store, now=datetime(2026, 3, 2, 9), seed=4)
    stamp = "2026-03-02 09:00:00"

    with sqlite3.connect(shop) as connection:
        after = dict(connection.execute("select order_id, status from orders").fetchall())
        changed = {
            r[0]
            for r in connection.execute("select order_id from orders where updated_at = ?", [stamp])
        }
        new_customers = [
            r[0]
            for r in connection.execute(
                "select customer_id from customers where updated_at = ?", [stamp]
            )
        ]
    assert sorted(set(after) - set(before)) == result.new_order_ids
    assert new_customers == result.new_customer_ids
    assert {
        o: s for o, s in after.items() if o in before and s != before[o]
    } == result.status_changes
    assert changed == set(result.new_order_ids) | set(result.status_changes) | set(
        result.late_updated_order_ids
    )
    assert set(result.cancelled_order_ids) <= set(result.status_changes)
    assert all(after[o] == "cancelled" for o in result.cancelled_order_ids)
    assert all(after[o] == "returned" for o in result.returned_order_ids)

    with sqlite3.connect(store) as connection:
        touched = {
            r[0]
            for r in connection.execute(
                "select payment_id from payments where updated_at = ?", [stamp]
            )
        }
        refunded = {
            r[0]
            for r in connection.execute(
                "select payment_id from payments where updated_at = ? and amount_refunded = amount"
                " and status = 'succeeded'",
                [stamp],
            )
        }
        [(latest_rate,)] = connection.execute("select max(date) from exchange_rates").fetchall()
    assert touched == set(result.new_payment_ids) | set(result.refunded_payment_ids)
    assert refunded == set(result.refunded_payment_ids)
    assert latest_rate == "2026-03-02"


def test_clock_behind_the_data_still_moves_forward(tmp_path: Path) -> None:
    shop, store = tmp_path / "shop.sqlite", tmp_path / "api.sqlite"
    generate(f"sqlite:///{shop}", store, orders=100, seed=2, end=datetime(2026, 3, 1, 12))
    with sqlite3.connect(shop) as connection:
        [(orders_latest,)] = connection.execute("select max(updated_at) from orders").fetchall()
    with sqlite3.connect(store) as connection:
        [(payments_latest,)] = connection.execute("select max(updated_at) from payments").fetchall()
    result = simulate(f"sqlite:///{shop}", store, now=datetime(2020, 1, 1), seed=1)
    latest = max(datetime.fromisoformat(orders_latest), datetime.fromisoformat(payments_latest))
    assert result.now > latest


@dataclass
class Snapshot:
    """The shop's keys and references, read with plain SQL (not the simulator's code)."""

    orders: dict[int, int]  # order → customer
    order_items: dict[int, tuple[int, int]]  # order item → (order, product)
    customers: dict[int, tuple[str | None, str]]  # customer → (deleted_at, updated_at)
    products: dict[int, tuple[str | None, str]]  # product → (deleted_at, updated_at)


def _stamp(value: object) -> str | None:
    """SQLite hands back text, the servers datetimes: both as 'YYYY-MM-DD HH:MM:SS'."""
    return None if value is None else str(value)


def _snapshot(url: str) -> Snapshot:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:

            def rows(sql: str) -> list[tuple]:
                return [tuple(row) for row in connection.execute(text(sql))]

            return Snapshot(
                orders=dict(rows("select order_id, customer_id from orders")),
                order_items={
                    item: (order, product)
                    for item, order, product in rows(
                        "select order_item_id, order_id, product_id from order_items"
                    )
                },
                customers={
                    key: (_stamp(deleted), _stamp(updated))
                    for key, deleted, updated in rows(
                        "select customer_id, deleted_at, updated_at from customers"
                    )
                },
                products={
                    key: (_stamp(deleted), _stamp(updated))
                    for key, deleted, updated in rows(
                        "select product_id, deleted_at, updated_at from products"
                    )
                },
            )
    finally:
        engine.dispose()


def _paid_orders(store: Path) -> set[int]:
    with sqlite3.connect(store) as connection:
        return {row[0] for row in connection.execute("select order_id from payments")}


def _assert_deletes_are_as_reported(
    before: Snapshot, after: Snapshot, result: SimulationResult, store: Path
) -> None:
    stamp = _stamp(result.now)
    hard = set(result.hard_deleted_order_ids)
    assert hard and hard <= before.orders.keys()
    assert before.orders.keys() - after.orders.keys() == hard
    lines = {item for item, (order, _) in before.order_items.items() if order in hard}
    assert lines and set(result.hard_deleted_order_item_ids) == lines
    assert before.order_items.keys() - after.order_items.keys() == lines
    assert {order for order, _ in after.order_items.values()} <= after.orders.keys()
    assert not hard & _paid_orders(store)

    for table, reported, referenced in (
        ("customers", result.soft_deleted_customer_ids, set(after.orders.values())),
        ("products", result.soft_deleted_product_ids, {p for _, p in after.order_items.values()}),
    ):
        rows_before, rows_after = getattr(before, table), getattr(after, table)
        soft = {key for key, (deleted_at, _) in rows_after.items() if deleted_at is not None}
        assert reported and soft == set(reported), table
        assert soft <= rows_before.keys(), table
        assert all(rows_before[key][0] is None for key in soft), table
        assert all(rows_after[key] == (stamp, stamp) for key in soft), table
        assert not soft & referenced, table

    def listed(noun: str, ids: list[int]) -> str:
        return f"{len(ids)} {noun} ({', '.join(map(str, ids))})"

    assert (
        f"; soft-deleted {listed('customers', result.soft_deleted_customer_ids)} and "
        f"{listed('products', result.soft_deleted_product_ids)}, hard-deleted "
        f"{listed('orders', result.hard_deleted_order_ids)} with {len(lines)} order items"
    ) in result.describe()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def shop_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty shop database on SQLite and on each server (a throwaway database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shop.sqlite'}"
        return
    with throwaway_database(request.param) as url:
        yield url


def test_deletes_remove_exactly_what_they_report(shop_url: str, tmp_path: Path) -> None:
    store = tmp_path / "api.sqlite"
    generate(shop_url, store, orders=400, seed=2, end=END)
    before = _snapshot(shop_url)

    result = simulate(shop_url, store, now=NOW, seed=4, deletes=True)

    _assert_deletes_are_as_reported(before, _snapshot(shop_url), result, store)


def test_deletes_leave_the_rest_of_the_step_alone(tmp_path: Path) -> None:
    results = []
    for name, deletes in (("plain", False), ("deletes", True), ("again", True)):
        shop, store = tmp_path / f"{name}.sqlite", tmp_path / f"{name}-api.sqlite"
        generate(f"sqlite:///{shop}", store, orders=400, seed=2, end=END)
        results.append(
            asdict(simulate(f"sqlite:///{shop}", store, now=NOW, seed=4, deletes=deletes))
        )
    plain, with_deletes, again = results
    assert with_deletes == again
    assert not any(plain[name] for name in DELETION_FIELDS)
    assert all(with_deletes[name] for name in DELETION_FIELDS)
    assert {k: v for k, v in with_deletes.items() if k not in DELETION_FIELDS} == {
        k: v for k, v in plain.items() if k not in DELETION_FIELDS
    }


def test_later_steps_never_touch_deleted_rows(tmp_path: Path) -> None:
    shop, store = tmp_path / "shop.sqlite", tmp_path / "api.sqlite"
    url = f"sqlite:///{shop}"
    generate(url, store, orders=600, seed=11, end=END)
    hard_deleted: set[int] = set()
    for step in range(4):
        before = _snapshot(url)
        result = simulate(url, store, now=NOW + timedelta(days=step), seed=step, deletes=True)
        after = _snapshot(url)
        assert not set(result.new_order_ids) & hard_deleted, step
        hard_deleted |= set(result.hard_deleted_order_ids)
        assert not hard_deleted & after.orders.keys(), step
        assert not hard_deleted & _paid_orders(store), step
        soft_customers = {k for k, (deleted, _) in after.customers.items() if deleted}
        soft_products = {k for k, (deleted, _) in after.products.items() if deleted}
        assert not soft_customers & set(after.orders.values()), step
        assert not soft_products & {p for _, p in after.order_items.values()}, step
        assert all(
            after.customers[k] == before.customers[k]
            for k in soft_customers - set(result.soft_deleted_customer_ids)
        ), step
    assert hard_deleted


def test_a_shop_without_deleted_at_gains_it(tmp_path: Path) -> None:
    shop, store = tmp_path / "shop.sqlite", tmp_path / "api.sqlite"
    generate(f"sqlite:///{shop}", store, orders=200, seed=3, end=END)
    with sqlite3.connect(shop) as connection:
        for table in ("customers", "products"):
            connection.execute(f"alter table {table} drop column deleted_at")

    result = simulate(f"sqlite:///{shop}", store, now=NOW, seed=5, deletes=True)

    after = _snapshot(f"sqlite:///{shop}")
    soft = {k for k, (deleted, _) in after.customers.items() if deleted}
    assert soft == set(result.soft_deleted_customer_ids) and soft
