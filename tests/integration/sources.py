"""What the marts must hold, computed straight from the sources: the shop database read through
SQLAlchemy (SQLite, PostgreSQL or MariaDB) and the payments/rates read over HTTP — never by
re-running the dbt models."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

CENT = Decimal("0.01")


def _dollars(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)


def _timestamp(value: str | datetime) -> datetime:
    """A UTC timestamp as the marts hold it (naive) from ISO text (SQLite, the API) or from a
    driver's datetime (PostgreSQL, MariaDB)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=None)


def shop_url(shop: str | Path) -> str:
    """A SQLAlchemy URL for the shop: given as one, or as the path of its SQLite file."""
    return f"sqlite:///{Path(shop).resolve()}" if isinstance(shop, Path) else shop


def read_shop(shop: str | Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one query on the shop database, whichever database it lives in."""
    engine = create_engine(shop_url(shop))
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    finally:
        engine.dispose()


def fetch_payments(api_url: str, token: str) -> list[dict[str, Any]]:
    """Every payment, following the API's cursor to the end."""
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 250}
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"}) as client:
        while True:
            page = client.get("/payments", params=params).raise_for_status().json()
            rows += page["data"]
            if not page["next_cursor"]:
                return rows
            params["cursor"] = page["next_cursor"]


def fetch_rates(api_url: str) -> dict[tuple[date, str], float]:
    """(date, quote) → units of quote per USD, over every page."""
    rates: dict[tuple[date, str], float] = {}
    with httpx.Client(base_url=api_url) as client:
        page_number = 1
        while True:
            page = (
                client.get("/exchange-rates", params={"page": page_number, "page_size": 200})
                .raise_for_status()
                .json()
            )
            for row in page["data"]:
                rates[(date.fromisoformat(row["date"]), row["quote"])] = row["rate"]
            if page_number >= page["total_pages"]:
                return rates
            page_number += 1


class RateBook:
    """Daily rates looked up as a payment converts: the latest rate of its currency dated on or
    before the payment's day, since rate feeds skip weekends and holidays."""

    def __init__(self, rates: dict[tuple[date, str], float]) -> None:
        self.rates = rates
        self.dates: dict[str, list[date]] = defaultdict(list)
        for day, quote in sorted(rates):
            self.dates[quote].append(day)

    def on_or_before(self, day: date, currency: str) -> tuple[date, float]:
        """(rate date, units of ``currency`` per USD); raises when no rate is that old."""
        dates = self.dates.get(currency, [])
        position = bisect_right(dates, day)
        if position == 0:
            raise LookupError(f"no {currency} rate on or before {day}")
        return dates[position - 1], self.rates[(dates[position - 1], currency)]


@dataclass(frozen=True)
class ExpectedMarts:
    fct_orders: dict[int, dict[str, Any]]
    dim_customers: dict[int, dict[str, Any]]
    fct_daily_revenue: dict[tuple[date, int], dict[str, Any]]


def expected_marts(shop: str | Path, api_url: str, token: str) -> ExpectedMarts:
    """The marts for the shop (a SQLAlchemy URL, or a SQLite file's path) and the API."""
    orders = read_shop(
        shop,
        "select order_id, customer_id, store_id, ordered_at, status, subtotal_cents,"
        " tax_cents, total_cents from orders",
    )
    # MariaDB sums to a decimal
    items = {
        order_id: int(quantity)
        for order_id, quantity in read_shop(
            shop, "select order_id, sum(quantity) from order_items group by order_id"
        )
    }
    # A soft-deleted customer is gone from the shop as far as the marts are concerned.
    customers = read_shop(shop, "select customer_id, name from customers where deleted_at is null")

    rates = RateBook(fetch_rates(api_url))
    paid_usd: dict[int, float] = defaultdict(float)
    for payment in fetch_payments(api_url, token):
        net = (payment["amount"] if payment["status"] == "succeeded" else 0) - payment[
            "amount_refunded"
        ]
        paid_on = _timestamp(payment["created_at"]).date()
        rate = (
            1.0
            if payment["currency"] == "USD"
            else rates.on_or_before(paid_on, payment["currency"])[1]
        )
        paid_usd[payment["order_id"]] += net / 100 / rate

    fct_orders: dict[int, dict[str, Any]] = {}
    for order_id, customer_id, store_id, ordered_at, status, subtotal, tax, total in orders:
        amount_paid = Decimal(str(round(paid_usd.get(order_id, 0.0), 2))).quantize(CENT)
        fct_orders[order_id] = {
            "customer_id": customer_id,
            "store_id": store_id,
            "ordered_at": _timestamp(ordered_at),
            "status": status,
            "subtotal": _dollars(subtotal),
            "tax_paid": _dollars(tax),
            "order_total": _dollars(total),
            "item_count": items[order_id],
            "amount_paid_usd": amount_paid,
            "is_fully_paid": amount_paid >= _dollars(total) - CENT,
        }

    dim_customers: dict[int, dict[str, Any]] = {
        customer_id: {
            "customer_name": name,
            "first_ordered_at": None,
            "last_ordered_at": None,
            "order_count": 0,
            "lifetime_value": Decimal("0.00"),
        }
        for customer_id, name in customers
    }
    daily: dict[tuple[date, int], dict[str, Any]] = {}
    for order in fct_orders.values():
        customer = dim_customers[order["customer_id"]]
        ordered_at = order["ordered_at"]
        customer["first_ordered_at"] = min(filter(None, [customer["first_ordered_at"], ordered_at]))
        customer["last_ordered_at"] = max(filter(None, [customer["last_ordered_at"], ordered_at]))
        customer["order_count"] += 1
        day = daily.setdefault(
            (ordered_at.date(), order["store_id"]),
            {"order_count": 0, "revenue": Decimal("0.00")},
        )
        day["order_count"] += 1
        if order["status"] != "cancelled":
            customer["lifetime_value"] += order["order_total"]
            day["revenue"] += order["order_total"]
    return ExpectedMarts(fct_orders, dim_customers, daily)
