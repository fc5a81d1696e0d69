"""Generate the sample shop and its payment provider's data, deterministically from a seed.

Vectorised with numpy: a million orders take a couple of minutes, most of it writing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.engine import make_url

from demo import schema
from demo.rates import convert_cents, rate_walk

HISTORY_DAYS = 365
CHUNK_ROWS = 50_000
# Rows nothing refers to, as every real shop has them: customers who signed up in the last
# month and never ordered (a share of the others, at least the minimum), products not sold
# yet. The simulator soft-deletes only such rows, so no order is left pointing at one.
IDLE_CUSTOMER_SHARE = 0.05
MIN_IDLE_CUSTOMERS = 5
IDLE_PRODUCTS = 6
IDLE_DAYS = 30
# Cancelled orders cancelled before anyone paid: no payment at all, so the simulator can
# hard-delete them without the payment provider still pointing at them.
UNPAID_CANCELLED_SHARE = 0.5
FIRST_NAMES = [
    "Ada",
    "Alan",
    "Ana",
    "Ben",
    "Bo",
    "Cara",
    "Chen",
    "Dana",
    "Eli",
    "Eva",
    "Finn",
    "Gus",
    "Hana",
    "Ivan",
    "Ines",
    "Jay",
    "Kai",
    "Lea",
    "Liam",
    "Lina",
    "Max",
    "Mia",
    "Nia",
    "Noah",
    "Omar",
    "Pia",
    "Raj",
    "Rosa",
    "Sam",
    "Sara",
    "Tom",
    "Uma",
    "Vera",
    "Wes",
    "Yara",
    "Zoe",
]
LAST_NAMES = [
    "Abbott",
    "Berg",
    "Chowdhury",
    "Diaz",
    "Evans",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ito",
    "Jensen",
    "Kowalski",
    "Larsen",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Patel",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Ueda",
    "Varga",
    "Weber",
    "Xu",
    "Young",
    "Zhang",
]
CITIES = ("Leeds", "Lyon", "Austin", "Porto", "Dublin", "Kyoto", "Denver", "Graz")
CATEGORIES = ("kitchen", "garden", "books", "toys", "office", "outdoor")
PRODUCT_WORDS = ("Mug", "Lamp", "Chair", "Kite", "Notebook", "Pan", "Tent", "Vase", "Clock")


@dataclass(frozen=True)
class GenerationSummary:
    customers: int
    stores: int
    products: int
    orders: int
    order_items: int
    payments: int
    exchange_rates: int


def utc_now() -> datetime:
    """The current UTC time as the shop stores it: naive, whole seconds."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def to_text(seconds: np.ndarray) -> list[str]:
    """Epoch seconds → 'YYYY-MM-DD HH:MM:SS' (UTC), the form SQLite's DATETIME columns hold."""
    text = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s")
    return np.char.replace(text, "T", " ").tolist()


def epoch(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp())


def _choice(rng: np.random.Generator, options: Sequence[Any], n: int, p=None) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.choice(len(options), size=n, p=p)]


def _shop_tables(rng: np.random.Generator, orders: int, end: int) -> dict[str, dict[str, Any]]:
    """Column arrays for every shop table, plus what the payments need (tax, currency)."""
    start = end - HISTORY_DAYS * 86_400
    n_customers = max(10, orders // 8)
    n_stores = 6
    n_products = 120

    store_created = np.full(n_stores, start - 90 * 86_400)
    stores = {
        "store_id": np.arange(1, n_stores + 1),
        "name": [f"{city} store" for city in CITIES[:n_stores]],
        "city": list(CITIES[:n_stores]),
        "created_at": store_created,
        "updated_at": store_created,
    }
    store_tax_bp = rng.integers(500, 1001, n_stores)

    price = rng.integers(300, 12_000, n_products)
    product_created = np.full(n_products, start - 60 * 86_400)
    products = {
        "product_id": np.arange(1, n_products + 1),
        "sku": [f"SKU-{i:05d}" for i in range(1, n_products + 1)],
        "name": [
            f"{word} {i}" for i, word in enumerate(_choice(rng, PRODUCT_WORDS, n_products), 1)
        ],
        "category": _choice(rng, CATEGORIES, n_products).tolist(),
        "price_cents": price,
        "created_at": product_created,
        "updated_at": product_created,
    }

    customer_ids = np.arange(1, n_customers + 1)
    first = _choice(rng, FIRST_NAMES, n_customers)
    last = _choice(rng, LAST_NAMES, n_customers)
    customer_created = (
        start - 30 * 86_400 + rng.integers(0, (HISTORY_DAYS + 20) * 86_400, n_customers)
    )
    customer_created = np.minimum(customer_created, end - 86_400)
    customers = {
        "customer_id": customer_ids,
        "name": [f"{f} {s}" for f, s in zip(first, last, strict=True)],
        "email": [
            f"{f.lower()}.{s.lower()}.{i}@example.com"
            for f, s, i in zip(first, last, customer_ids, strict=True)
        ],
        "created_at": customer_created,
        "updated_at": customer_created,
    }

    customer = rng.integers(1, n_customers + 1, orders)
    created = customer_created[customer - 1]
    ordered_at = created + (rng.random(orders) * (end - created)).astype(np.int64)
    ordered_at.sort()  # order ids follow time, as an auto-increment key would
    customer = customer[np.argsort(rng.random(orders))]
    ordered_at = np.maximum(ordered_at, customer_created[customer - 1])
    store = rng.integers(1, n_stores + 1, orders)

    age_days = (end - ordered_at) / 86_400
    roll = rng.random(orders)
    status = np.select(
        [
            age_days < 2,
            age_days < 7,
        ],
        [
            np.where(roll < 0.6, "placed", np.where(roll < 0.92, "shipped", "cancelled")),
            np.where(roll < 0.5, "shipped", np.where(roll < 0.95, "completed", "cancelled")),
        ],
        default=np.where(roll < 0.88, "completed", np.where(roll < 0.94, "returned", "cancelled")),
    )
    delay_hours = np.select(
        [status == "shipped", status == "completed", status == "returned", status == "cancelled"],
        [24, 72, 240, 3],
        default=0,
    )
    order_updated = np.minimum(ordered_at + delay_hours * 3_600, end)

    items_per_order = rng.integers(1, 6, orders)
    item_order_index = np.repeat(np.arange(orders), items_per_order)
    n_items = item_order_index.size
    product = rng.integers(1, n_products + 1, n_items)
    quantity = rng.integers(1, 4, n_items)
    unit_price = price[product - 1]
    subtotal = np.bincount(item_order_index, weights=quantity * unit_price, minlength=orders)
    subtotal = subtotal.astype(np.int64)
    tax = (subtotal * store_tax_bp[store - 1] + 5_000) // 10_000
    order_ids = np.arange(1, orders + 1)

    return {
        "customers": customers,
        "stores": stores,
        "products": products,
        "orders": {
            "order_id": order_ids,
            "customer_id": customer,
            "store_id": store,
            "ordered_at": ordered_at,
            "status": status,
            "subtotal_cents": subtotal,
            "tax_cents": tax,
            "total_cents": subtotal + tax,
            "updated_at": order_updated,
        },
        "order_items": {
            "order_item_id": np.arange(1, n_items + 1),
            "order_id": order_ids[item_order_index],
            "product_id": product,
            "quantity": quantity,
            "unit_price_cents": unit_price,
            "updated_at": ordered_at[item_order_index],
        },
    }


def _payments(
    rng: np.random.Generator, orders: dict[str, Any], n_customers: int, end: int, rates: dict
) -> dict[str, Any]:
    """One succeeded payment per order past 'placed' (some after a failed attempt) except those
    cancelled before payment, pending or none for placed orders, full refunds for cancelled and
    returned ones."""
    n = orders["order_id"].size
    customer_currency = _choice(rng, ("USD", "EUR", "GBP"), n_customers + 1, p=[0.6, 0.25, 0.15])
    currency = customer_currency[orders["customer_id"]]
    method = _choice(
        rng, ("card", "paypal", "bank_transfer", "gift_card"), n, p=[0.6, 0.2, 0.15, 0.05]
    )
    status = orders["status"]
    placed = status == "placed"
    roll = rng.random(n)
    # The roll decides pending-or-none for placed orders; for cancelled ones, which it does not
    # touch otherwise, whether they were cancelled before payment (no new draw, so every
    # other order's payments come out as before).
    unpaid_cancelled = (status == "cancelled") & (roll < UNPAID_CANCELLED_SHARE)
    paid = np.where(placed, roll < 0.5, ~unpaid_cancelled)
    pay_status = np.where(placed, "pending", "succeeded")
    created = np.minimum(orders["ordered_at"] + rng.integers(30, 900, n), end)
    refunded = np.isin(status, ["cancelled", "returned"])
    updated = np.where(refunded, np.maximum(orders["updated_at"], created), created)

    failed = ~placed & (rng.random(n) < 0.05)
    failed_created = np.minimum(
        orders["ordered_at"][failed] + rng.integers(0, 30, failed.sum()), created[failed]
    )

    order_id = np.concatenate([orders["order_id"][paid], orders["order_id"][failed]])
    currency = np.concatenate([currency[paid], currency[failed]])
    created_at = np.concatenate([created[paid], failed_created])
    updated_at = np.concatenate([updated[paid], failed_created])
    state = np.concatenate([pay_status[paid], np.full(failed.sum(), "failed")])
    methods = np.concatenate([method[paid], method[failed]])
    total = orders["total_cents"][order_id - 1]
    days = to_text(created_at)
    rate = np.array(
        [1.0 if c == "USD" else rates[(d[:10], c)] for c, d in zip(currency, days, strict=True)]
    )
    amount = convert_cents(total, rate)
    amount_refunded = np.where(
        np.concatenate([refunded[paid], np.zeros(failed.sum(), bool)]) & (state == "succeeded"),
        amount,
        0,
    )
    sequence = np.lexsort((order_id, created_at))
    return {
        "payment_id": [f"pay_{i:08d}" for i in range(1, sequence.size + 1)],
        "order_id": order_id[sequence],
        "method": methods[sequence],
        "currency": currency[sequence],
        "amount": amount[sequence],
        "amount_refunded": amount_refunded[sequence],
        "status": state[sequence],
        "created_at": created_at[sequence],
        "updated_at": updated_at[sequence],
    }


def _add_idle_rows(tables: dict[str, dict[str, Any]], end: int) -> None:
    """Append the customers who never ordered and the products never sold, after every random
    draw and without one of their own, so the other rows stay exactly as the seed made them."""
    start = end - IDLE_DAYS * 86_400
    customers = tables["customers"]
    first_id = len(customers["customer_id"]) + 1
    count = max(MIN_IDLE_CUSTOMERS, round(len(customers["customer_id"]) * IDLE_CUSTOMER_SHARE))
    ids = np.arange(first_id, first_id + count)
    first = [FIRST_NAMES[i % len(FIRST_NAMES)] for i in ids]
    last = [LAST_NAMES[i * 7 % len(LAST_NAMES)] for i in ids]
    signed_up = start + np.arange(count) * (IDLE_DAYS * 86_400 // count)
    tables["customers"] = {
        "customer_id": np.concatenate([customers["customer_id"], ids]),
        "name": customers["name"] + [f"{f} {s}" for f, s in zip(first, last, strict=True)],
        "email": customers["email"]
        + [
            f"{f.lower()}.{s.lower()}.{i}@example.com"
            for f, s, i in zip(first, last, ids, strict=True)
        ],
        "created_at": np.concatenate([customers["created_at"], signed_up]),
        "updated_at": np.concatenate([customers["updated_at"], signed_up]),
    }

    products = tables["products"]
    first_id = len(products["product_id"]) + 1
    ids = np.arange(first_id, first_id + IDLE_PRODUCTS)
    listed = start + np.arange(IDLE_PRODUCTS) * (IDLE_DAYS * 86_400 // IDLE_PRODUCTS)
    tables["products"] = {
        "product_id": np.concatenate([products["product_id"], ids]),
        "sku": products["sku"] + [f"SKU-{i:05d}" for i in ids],
        "name": products["name"] + [f"{PRODUCT_WORDS[i % len(PRODUCT_WORDS)]} {i}" for i in ids],
        "category": products["category"] + [CATEGORIES[i % len(CATEGORIES)] for i in ids],
        "price_cents": np.concatenate([products["price_cents"], 1_000 + 500 * (ids % 10)]),
        "created_at": np.concatenate([products["created_at"], listed]),
        "updated_at": np.concatenate([products["updated_at"], listed]),
    }


def _rows(columns: dict[str, Any], chunk: slice) -> list[tuple]:
    """Rows for one chunk; timestamp columns (``*_at``) rendered as UTC text."""
    values = [
        to_text(np.asarray(col[chunk])) if name.endswith("_at") else np.asarray(col[chunk]).tolist()
        for name, col in columns.items()
    ]
    return list(zip(*values, strict=True))


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    with Progress(transient=False) as progress:
        yield progress


def _write_sqlite(path: Path, tables: dict[str, dict[str, Any]], progress: Progress | None) -> None:
    with sqlite3.connect(path) as connection:
        for name, columns in tables.items():
            size = len(next(iter(columns.values())))
            task = progress.add_task(f"writing {name}", total=size) if progress else None
            marks = ", ".join("?" * len(columns))
            sql = f"insert into {name} ({', '.join(columns)}) values ({marks})"
            for offset in range(0, size, CHUNK_ROWS):
                connection.executemany(sql, _rows(columns, slice(offset, offset + CHUNK_ROWS)))
                if progress is not None and task is not None:
                    progress.advance(task, min(CHUNK_ROWS, size - offset))


def _write_sqlalchemy(
    url: str, tables: dict[str, dict[str, Any]], progress: Progress | None
) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in schema.TABLES:
            columns = tables[table.name]
            size = len(next(iter(columns.values())))
            task = progress.add_task(f"writing {table.name}", total=size) if progress else None
            for offset in range(0, size, CHUNK_ROWS):
                rows = [
                    {
                        name: datetime.fromisoformat(value) if name.endswith("_at") else value
                        for name, value in zip(columns, row, strict=True)
                    }
                    for row in _rows(columns, slice(offset, offset + CHUNK_ROWS))
                ]
                connection.execute(table.insert(), rows)
                if progress is not None and task is not None:
                    progress.advance(task, len(rows))
    engine.dispose()


def _prepare_shop(url: str, replace: bool) -> None:
    engine = create_engine(url)
    try:
        existing = set(inspect(engine).get_table_names())
        if existing & {t.name for t in schema.TABLES} and not replace:
            with engine.connect() as connection:
                if connection.execute(select(func.count()).select_from(schema.orders)).scalar():
                    raise FileExistsError(
                        f"the shop database {make_url(url).render_as_string(hide_password=True)} "
                        "already holds orders; pass replace=True (--replace) to regenerate it"
                    )
        schema.metadata.drop_all(engine)
        schema.metadata.create_all(engine)
    finally:
        engine.dispose()


def _prepare_api_store(path: Path, replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with sqlite3.connect(path) as connection:
            tables = {r[0] for r in connection.execute("select name from sqlite_master")}
            holds_payments = "payments" in tables and bool(
                connection.execute("select count(*) from payments").fetchone()[0]
            )
        if holds_payments and not replace:
            raise FileExistsError(
                f"the payments store {path} already holds payments; "
                "pass replace=True (--replace) to regenerate it"
            )
        path.unlink()
    with sqlite3.connect(path) as connection:
        connection.executescript(schema.PAYMENTS_DDL)


def generate(
    shop_url: str,
    api_db_path: Path,
    *,
    orders: int = 10_000,
    seed: int = 42,
    end: datetime | None = None,
    replace: bool = False,
    progress: bool = False,
) -> GenerationSummary:
    """Create the shop database and the payment provider's store with a year of history up to
    ``end`` (default: now, UTC). The same seed and end give the same data."""
    if orders < 1:
        raise ValueError(f"orders must be at least 1, got {orders}")
    end_s = epoch(end or utc_now())
    if make_url(shop_url).get_backend_name() == "sqlite":
        database = make_url(shop_url).database
        if database:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    _prepare_shop(shop_url, replace)
    _prepare_api_store(Path(api_db_path), replace)

    rng = np.random.default_rng(seed)
    tables = _shop_tables(rng, orders, end_s)
    first_day = datetime.fromtimestamp(int(tables["orders"]["ordered_at"].min()), UTC).date()
    last_day = datetime.fromtimestamp(end_s, UTC).date()
    rate_rows = rate_walk(first_day - timedelta(days=1), last_day, seed)
    rates = {(day, quote): rate for day, _, quote, rate in rate_rows}
    payments = _payments(
        rng, tables["orders"], len(tables["customers"]["customer_id"]), end_s, rates
    )
    _add_idle_rows(tables, end_s)

    with _progress(progress) as bar:
        if make_url(shop_url).get_backend_name() == "sqlite":
            _write_sqlite(Path(make_url(shop_url).database or ""), tables, bar)
        else:
            _write_sqlalchemy(shop_url, tables, bar)
        _write_sqlite(Path(api_db_path), {"payments": payments}, bar)
        with sqlite3.connect(api_db_path) as connection:
            connection.executemany("insert into exchange_rates values (?, ?, ?, ?)", rate_rows)

    return GenerationSummary(
        customers=len(tables["customers"]["customer_id"]),
        stores=len(tables["stores"]["store_id"]),
        products=len(tables["products"]["product_id"]),
        orders=orders,
        order_items=len(tables["order_items"]["order_item_id"]),
        payments=len(payments["payment_id"]),
        exchange_rates=len(rate_rows),
    )
