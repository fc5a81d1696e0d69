"""Move the sample shop forward in time: new customers and orders, status changes, late
updates to old orders, cancellations and refunds, and on request soft and hard deletes — so
incremental loads have work to do."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    exists,
    func,
    inspect,
    select,
    text,
    update,
)

from demo import schema
from demo.generate import utc_now
from demo.rates import convert_cents, rate_walk

NEXT_STATUS = {"placed": "shipped", "shipped": "completed"}
# Deletes per step (fewer when fewer rows qualify).
SOFT_DELETED_CUSTOMERS = 3
SOFT_DELETED_PRODUCTS = 2
HARD_DELETED_ORDERS = 3


@dataclass
class SimulationResult:
    """Exactly what one step changed, for the demo's summary and the tests."""

    now: datetime
    new_customer_ids: list[int] = field(default_factory=list)
    new_order_ids: list[int] = field(default_factory=list)
    status_changes: dict[int, str] = field(default_factory=dict)
    late_updated_order_ids: list[int] = field(default_factory=list)
    cancelled_order_ids: list[int] = field(default_factory=list)
    returned_order_ids: list[int] = field(default_factory=list)
    new_payment_ids: list[str] = field(default_factory=list)
    refunded_payment_ids: list[str] = field(default_factory=list)
    # Rows whose deleted_at (and updated_at) became now; they stay in the shop database.
    soft_deleted_customer_ids: list[int] = field(default_factory=list)
    soft_deleted_product_ids: list[int] = field(default_factory=list)
    # Rows gone from the shop database: orders no payment refers to, and all their items.
    hard_deleted_order_ids: list[int] = field(default_factory=list)
    hard_deleted_order_item_ids: list[int] = field(default_factory=list)

    def describe(self) -> str:
        summary = (
            f"{len(self.new_customer_ids)} new customers, {len(self.new_order_ids)} new orders, "
            f"{len(self.status_changes)} status changes ({len(self.cancelled_order_ids)} "
            f"cancelled, {len(self.returned_order_ids)} returned), "
            f"{len(self.late_updated_order_ids)} late updates, "
            f"{len(self.new_payment_ids)} new payments, {len(self.refunded_payment_ids)} refunds"
        )
        deletions = (
            self.soft_deleted_customer_ids,
            self.soft_deleted_product_ids,
            self.hard_deleted_order_ids,
        )
        if any(deletions):
            summary += (
                f"; soft-deleted {_listed('customers', self.soft_deleted_customer_ids)} and "
                f"{_listed('products', self.soft_deleted_product_ids)}, hard-deleted "
                f"{_listed('orders', self.hard_deleted_order_ids)} with "
                f"{len(self.hard_deleted_order_item_ids)} order items"
            )
        return summary


def _listed(noun: str, ids: list[int]) -> str:
    return f"{len(ids)} {noun} ({', '.join(map(str, ids))})" if ids else f"0 {noun}"


def _as_datetime(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _sample(rng: np.random.Generator, candidates: list, count: int) -> list:
    """Up to ``count`` of the candidates, drawn without replacement, in their order."""
    if not candidates or count <= 0:
        return []
    chosen = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [candidates[i] for i in sorted(chosen)]


def _add_deleted_at(engine: Engine) -> None:
    """Give a shop generated before soft deletes its ``deleted_at`` columns, as a migration
    would, so ``make demo`` keeps moving an existing shop forward."""
    inspector = inspect(engine)
    with engine.begin() as connection:
        for table in (schema.customers, schema.products):
            if "deleted_at" in {column["name"] for column in inspector.get_columns(table.name)}:
                continue
            column_type = table.c.deleted_at.type.dialect_impl(engine.dialect)
            connection.execute(
                text(
                    f"alter table {table.name} add column deleted_at "
                    f"{column_type.compile(dialect=engine.dialect)}"
                )
            )


class _Payments:
    """The provider's store, written in the same transaction-per-step way a provider would."""

    def __init__(self, connection: sqlite3.Connection, seed: int) -> None:
        self.connection = connection
        self.seed = seed
        last = connection.execute("select max(payment_id) from payments").fetchone()[0]
        self.next_number = int(last.removeprefix("pay_")) + 1 if last else 1

    def extend_rates(self, through: date) -> None:
        last = self.connection.execute("select max(date) from exchange_rates").fetchone()[0]
        last_day = date.fromisoformat(last)
        if last_day >= through:
            return
        previous = dict(
            self.connection.execute(
                "select quote, rate from exchange_rates where date = ?", [last]
            ).fetchall()
        )
        rows = rate_walk(last_day + timedelta(days=1), through, self.seed, start=previous)
        self.connection.executemany("insert into exchange_rates values (?, ?, ?, ?)", rows)

    def rate(self, day: date, currency: str) -> float:
        if currency == "USD":
            return 1.0
        return self.connection.execute(
            "select rate from exchange_rates where date = ? and quote = ?",
            [day.isoformat(), currency],
        ).fetchone()[0]

    def pay(
        self, order_id: int, total_cents: int, currency: str, method: str, now: datetime
    ) -> str:
        payment_id = f"pay_{self.next_number:08d}"
        self.next_number += 1
        amount = int(
            convert_cents(np.array([total_cents]), np.array([self.rate(now.date(), currency)]))[0]
        )
        self.connection.execute(
            "insert into payments values (?, ?, ?, ?, ?, 0, 'succeeded', ?, ?)",
            [payment_id, order_id, method, currency, amount, _stamp(now), _stamp(now)],
        )
        return payment_id

    def refund(self, order_id: int, now: datetime) -> list[str]:
        refunded = [
            row[0]
            for row in self.connection.execute(
                "select payment_id from payments where order_id = ? and status = 'succeeded'"
                " and amount_refunded < amount",
                [order_id],
            ).fetchall()
        ]
        self.connection.executemany(
            "update payments set amount_refunded = amount, updated_at = ? where payment_id = ?",
            [(_stamp(now), payment_id) for payment_id in refunded],
        )
        return refunded

    def has_succeeded(self, order_id: int) -> bool:
        return bool(
            self.connection.execute(
                "select count(*) from payments where order_id = ? and status = 'succeeded'",
                [order_id],
            ).fetchone()[0]
        )

    def order_ids(self) -> set[int]:
        """Every order any payment (whatever its status) refers to."""
        return {row[0] for row in self.connection.execute("select distinct order_id from payments")}

    def last_update(self) -> datetime | None:
        value = self.connection.execute("select max(updated_at) from payments").fetchone()[0]
        return datetime.fromisoformat(value) if value else None


def simulate(
    shop_url: str,
    api_db_path: Path,
    *,
    now: datetime | None = None,
    seed: int = 0,
    new_customers: int = 5,
    new_orders: int = 25,
    status_changes: int = 10,
    late_updates: int = 3,
    cancellations: int = 3,
    refunds: int = 2,
    deletes: bool = False,
) -> SimulationResult:
    """One step forward, every change stamped ``updated_at = now`` (default: the current UTC
    second, moved past the newest existing change so incremental loads always see it).

    With ``deletes``, also soft-delete a few customers and products and hard-delete a few
    orders (see ``_delete_rows``); drawn after every other change, so the rest of the step is
    the same with or without them."""
    rng = np.random.default_rng(seed)
    engine = create_engine(shop_url)
    payments_db = sqlite3.connect(api_db_path)
    try:
        _add_deleted_at(engine)
        payments = _Payments(payments_db, seed)
        with engine.begin() as shop:
            latest = [
                shop.execute(select(func.max(table.c.updated_at))).scalar()
                for table in schema.TABLES
            ]
            latest = [_as_datetime(v) for v in latest if v is not None]
            if (paid_last := payments.last_update()) is not None:
                latest.append(paid_last)
            # The shop's clock stays ahead of every change it made, but not of a row stamped
            # in the future by hand (a poisoned timestamp): a real shop's clock ignores those.
            horizon = utc_now() + timedelta(days=1)
            latest = [moment for moment in latest if moment <= horizon]
            now = max([now or utc_now(), *(moment + timedelta(seconds=1) for moment in latest)])
            result = SimulationResult(now=now)
            payments.extend_rates(now.date())

            orders = schema.orders
            next_customer = (
                shop.execute(select(func.max(schema.customers.c.customer_id))).scalar() or 0
            ) + 1
            for customer_id in range(next_customer, next_customer + new_customers):
                shop.execute(
                    schema.customers.insert().values(
                        customer_id=customer_id,
                        name=f"New Customer {customer_id}",
                        email=f"new.customer.{customer_id}@example.com",
                        created_at=now,
                        updated_at=now,
                    )
                )
                result.new_customer_ids.append(customer_id)

            # Only customers and products that are not deleted take part in new orders.
            customer_ids = [
                row[0]
                for row in shop.execute(
                    select(schema.customers.c.customer_id)
                    .where(schema.customers.c.deleted_at.is_(None))
                    .order_by(schema.customers.c.customer_id)
                )
            ]
            store_ids = [row[0] for row in shop.execute(select(schema.stores.c.store_id))]
            prices = dict(
                shop.execute(
                    select(schema.products.c.product_id, schema.products.c.price_cents).where(
                        schema.products.c.deleted_at.is_(None)
                    )
                ).all()
            )
            tax_rates = {
                row.store_id: (row.tax / row.subtotal if row.subtotal else 0.075)
                for row in shop.execute(
                    select(
                        orders.c.store_id,
                        func.sum(orders.c.tax_cents).label("tax"),
                        func.sum(orders.c.subtotal_cents).label("subtotal"),
                    ).group_by(orders.c.store_id)
                )
            }
            next_order = (shop.execute(select(func.max(orders.c.order_id))).scalar() or 0) + 1
            next_item = (
                shop.execute(select(func.max(schema.order_items.c.order_item_id))).scalar() or 0
            ) + 1
            product_ids = sorted(prices)
            for order_id in range(next_order, next_order + new_orders):
                store_id = int(rng.choice(store_ids))
                items = []
                for _ in range(int(rng.integers(1, 4))):
                    product_id = int(rng.choice(product_ids))
                    items.append(
                        {
                            "order_item_id": next_item,
                            "order_id": order_id,
                            "product_id": product_id,
                            "quantity": int(rng.integers(1, 4)),
                            "unit_price_cents": prices[product_id],
                            "updated_at": now,
                        }
                    )
                    next_item += 1
                subtotal = sum(item["quantity"] * item["unit_price_cents"] for item in items)
                tax = round(subtotal * tax_rates.get(store_id, 0.075))
                shop.execute(
                    orders.insert().values(
                        order_id=order_id,
                        customer_id=customer_ids[int(rng.integers(len(customer_ids)))],
                        store_id=store_id,
                        ordered_at=now,
                        status="placed",
                        subtotal_cents=subtotal,
                        tax_cents=tax,
                        total_cents=subtotal + tax,
                        updated_at=now,
                    )
                )
                shop.execute(schema.order_items.insert(), items)
                result.new_order_ids.append(order_id)
                currency = str(rng.choice(schema.CURRENCIES, p=[0.6, 0.25, 0.15]))
                result.new_payment_ids.append(
                    payments.pay(order_id, subtotal + tax, currency, "card", now)
                )

            def pick(
                statuses: list[str], count: int, older_than_days: int = 0
            ) -> list[tuple[int, str, int]]:
                taken = (
                    set(result.status_changes)
                    | set(result.late_updated_order_ids)
                    | set(result.new_order_ids)
                )
                candidates = [
                    (row.order_id, row.status, row.total_cents)
                    for row in shop.execute(
                        select(orders.c.order_id, orders.c.status, orders.c.total_cents)
                        .where(orders.c.status.in_(statuses))
                        .where(orders.c.ordered_at <= now - timedelta(days=older_than_days))
                        .order_by(orders.c.order_id)
                    )
                    if row.order_id not in taken
                ]
                return _sample(rng, candidates, count)

            def set_status(order_id: int, status: str) -> None:
                shop.execute(
                    update(orders)
                    .where(orders.c.order_id == order_id)
                    .values(status=status, updated_at=now)
                )
                result.status_changes[order_id] = status

            for order_id, status, total in pick(["placed", "shipped"], status_changes):
                set_status(order_id, NEXT_STATUS[status])
                if not payments.has_succeeded(order_id):
                    result.new_payment_ids.append(payments.pay(order_id, total, "USD", "card", now))
            for order_id, _, _ in pick(["completed"], late_updates, older_than_days=30):
                shop.execute(
                    update(orders)
                    .where(orders.c.order_id == order_id)
                    .values(
                        tax_cents=orders.c.tax_cents + 25,
                        total_cents=orders.c.total_cents + 25,
                        updated_at=now,
                    )
                )
                result.late_updated_order_ids.append(order_id)
            for order_id, _, _ in pick(["placed", "shipped"], cancellations):
                set_status(order_id, "cancelled")
                result.cancelled_order_ids.append(order_id)
                result.refunded_payment_ids += payments.refund(order_id, now)
            for order_id, _, _ in pick(["completed"], refunds):
                set_status(order_id, "returned")
                result.returned_order_ids.append(order_id)
                result.refunded_payment_ids += payments.refund(order_id, now)
            if deletes:
                _delete_rows(shop, payments.order_ids(), rng, result)
        payments_db.commit()
    finally:
        payments_db.close()
        engine.dispose()
    return result


def _delete_rows(
    shop: Connection, paid_order_ids: set[int], rng: np.random.Generator, result: SimulationResult
) -> None:
    """Delete only rows nothing else refers to, as a shop with foreign keys must, so neither
    the shop nor the payment provider is left pointing at a deleted row: hard-delete orders no
    payment refers to (abandoned, or cancelled before payment) with their lines, then
    soft-delete customers without orders and products without order lines. Rows this step
    created or changed are left alone, and so is the newest order, whose id would be reused."""
    orders, items = schema.orders, schema.order_items
    customers, products = schema.customers, schema.products
    now = result.now

    touched = (
        set(result.new_order_ids) | set(result.status_changes) | set(result.late_updated_order_ids)
    )
    newest = shop.execute(select(func.max(orders.c.order_id))).scalar()
    unpaid = [
        order_id
        for (order_id,) in shop.execute(select(orders.c.order_id).order_by(orders.c.order_id))
        if order_id not in paid_order_ids and order_id not in touched and order_id != newest
    ]
    result.hard_deleted_order_ids = _sample(rng, unpaid, HARD_DELETED_ORDERS)
    if result.hard_deleted_order_ids:
        result.hard_deleted_order_item_ids = [
            row[0]
            for row in shop.execute(
                select(items.c.order_item_id)
                .where(items.c.order_id.in_(result.hard_deleted_order_ids))
                .order_by(items.c.order_item_id)
            )
        ]
        shop.execute(delete(items).where(items.c.order_id.in_(result.hard_deleted_order_ids)))
        shop.execute(delete(orders).where(orders.c.order_id.in_(result.hard_deleted_order_ids)))

    without_orders = [
        row[0]
        for row in shop.execute(
            select(customers.c.customer_id)
            .where(customers.c.deleted_at.is_(None))
            .where(~exists().where(orders.c.customer_id == customers.c.customer_id))
            .order_by(customers.c.customer_id)
        )
        if row[0] not in result.new_customer_ids
    ]
    result.soft_deleted_customer_ids = _sample(rng, without_orders, SOFT_DELETED_CUSTOMERS)
    unsold = [
        row[0]
        for row in shop.execute(
            select(products.c.product_id)
            .where(products.c.deleted_at.is_(None))
            .where(~exists().where(items.c.product_id == products.c.product_id))
            .order_by(products.c.product_id)
        )
    ]
    result.soft_deleted_product_ids = _sample(rng, unsold, SOFT_DELETED_PRODUCTS)
    for table, key, ids in (
        (customers, customers.c.customer_id, result.soft_deleted_customer_ids),
        (products, products.c.product_id, result.soft_deleted_product_ids),
    ):
        if ids:
            shop.execute(update(table).where(key.in_(ids)).values(deleted_at=now, updated_at=now))
