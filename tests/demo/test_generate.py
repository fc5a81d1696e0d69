"""The generator: deterministic, sized as asked, internally consistent, payments agree."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime
from pathlib import Path

import pytest

from demo.generate import IDLE_PRODUCTS, MIN_IDLE_CUSTOMERS, generate

END = datetime(2026, 6, 30, 12, 0, 0)


def _dump(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as connection:
        tables = [
            r[0] for r in connection.execute("select name from sqlite_master where type='table'")
        ]
        return {
            t: connection.execute(f"select * from {t} order by 1, 2").fetchall() for t in tables
        }


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("shop")
    generate(
        f"sqlite:///{folder / 'shop.sqlite'}", folder / "api.sqlite", orders=800, seed=7, end=END
    )
    return folder / "shop.sqlite", folder / "api.sqlite"


def test_same_seed_same_shop(shop: tuple[Path, Path], tmp_path: Path) -> None:
    generate(
        f"sqlite:///{tmp_path / 'shop.sqlite'}",
        tmp_path / "api.sqlite",
        orders=800,
        seed=7,
        end=END,
    )
    assert _dump(tmp_path / "shop.sqlite") == _dump(shop[0])
    assert _dump(tmp_path / "api.sqlite") == _dump(shop[1])


def test_another_seed_another_shop(shop: tuple[Path, Path], tmp_path: Path) -> None:
    generate(
        f"sqlite:///{tmp_path / 'shop.sqlite'}",
        tmp_path / "api.sqlite",
        orders=800,
        seed=8,
        end=END,
    )
    assert _dump(tmp_path / "shop.sqlite")["orders"] != _dump(shop[0])["orders"]


def test_orders_are_consistent_with_their_items(shop: tuple[Path, Path]) -> None:
    with sqlite3.connect(shop[0]) as connection:
        assert connection.execute("select count(*) from orders").fetchone()[0] == 800
        [(bad_totals,)] = connection.execute(
            "select count(*) from orders where total_cents != subtotal_cents + tax_cents"
        ).fetchall()
        [(bad_subtotals,)] = connection.execute(
            "select count(*) from orders join (select order_id, sum(quantity * unit_price_cents)"
            " as lines from order_items group by order_id) using (order_id)"
            " where lines != subtotal_cents"
        ).fetchall()
        [(orphans,)] = connection.execute(
            "select count(*) from orders where order_id not in (select order_id from order_items)"
            " or customer_id not in (select customer_id from customers)"
        ).fetchall()
        [(backwards,)] = connection.execute(
            "select count(*) from orders where updated_at < ordered_at or updated_at > ?",
            [END.strftime("%Y-%m-%d %H:%M:%S")],
        ).fetchall()
        statuses = {r[0] for r in connection.execute("select distinct status from orders")}
    assert (bad_totals, bad_subtotals, orphans, backwards) == (0, 0, 0, 0)
    assert statuses == {"placed", "shipped", "completed", "returned", "cancelled"}


def test_payments_agree_with_orders(shop: tuple[Path, Path]) -> None:
    with sqlite3.connect(shop[0]) as connection:
        orders = {
            order_id: (status, total)
            for order_id, status, total in connection.execute(
                "select order_id, status, total_cents from orders"
            )
        }
    with sqlite3.connect(shop[1]) as connection:
        rates = {
            (day, quote): rate
            for day, quote, rate in connection.execute(
                "select date, quote, rate from exchange_rates"
            )
        }
        payments = connection.execute(
            "select order_id, currency, amount, amount_refunded, status, created_at from payments"
        ).fetchall()
    succeeded: dict[int, int] = {}
    for order_id, currency, amount, refunded, status, created_at in payments:
        if status != "succeeded":
            assert refunded == 0
            continue
        succeeded[order_id] = succeeded.get(order_id, 0) + 1
        rate = 1.0 if currency == "USD" else rates[(created_at[:10], currency)]
        total = orders[order_id][1]
        assert abs(amount / rate - total) <= 0.5 / rate + 1e-6, order_id  # within a cent
        refunded_in_full = orders[order_id][0] in {"cancelled", "returned"}
        assert refunded == (amount if refunded_in_full else 0), order_id
    paid_statuses = {"shipped", "completed", "returned"}
    assert all(succeeded.get(o) == 1 for o, (s, _) in orders.items() if s in paid_statuses)
    # Cancelled orders were paid (and refunded) or cancelled before payment: both occur.
    assert {succeeded.get(o, 0) for o, (s, _) in orders.items() if s == "cancelled"} == {0, 1}
    days = {day for day, _ in rates}
    assert min(days) <= min(p[5][:10] for p in payments)
    assert max(days) == END.date().isoformat()
    assert len(days) == (END.date() - date.fromisoformat(min(days))).days + 1


def test_some_rows_nothing_refers_to(shop: tuple[Path, Path]) -> None:
    """Customers who never ordered, products never sold, orders nobody paid for: every shop
    has them, and they are the rows the simulator may delete. Nothing is deleted yet."""
    with sqlite3.connect(shop[0]) as connection:
        connection.execute("attach database ? as api", [str(shop[1])])
        [(idle_customers, idle_products, unpaid_orders, deleted)] = connection.execute(
            "select"
            " (select count(*) from customers where customer_id not in"
            "  (select customer_id from orders)),"
            " (select count(*) from products where product_id not in"
            "  (select product_id from order_items)),"
            " (select count(*) from orders where order_id not in"
            "  (select order_id from api.payments)),"
            " (select count(*) from customers where deleted_at is not null)"
            " + (select count(*) from products where deleted_at is not null)"
        ).fetchall()
    assert (idle_customers, idle_products) == (MIN_IDLE_CUSTOMERS, IDLE_PRODUCTS)
    assert unpaid_orders > 0
    assert deleted == 0


def test_refuses_to_overwrite_without_replace(shop: tuple[Path, Path]) -> None:
    with pytest.raises(FileExistsError, match="already holds orders"):
        generate(f"sqlite:///{shop[0]}", shop[1], orders=10, seed=1)
