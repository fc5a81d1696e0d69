"""The simulator changes exactly what it reports, stamped so incremental loads see it."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from demo.generate import generate
from demo.simulate import simulate


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
