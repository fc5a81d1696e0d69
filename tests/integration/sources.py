"""What the marts must hold, computed straight from the sources: the shop database read with
sqlite3 and the payments/rates read over HTTP — never by re-running the dbt models."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

CENT = Decimal("0.01")


def _dollars(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)


def _timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)


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


@dataclass(frozen=True)
class ExpectedMarts:
    fct_orders: dict[int, dict[str, Any]]
    dim_customers: dict[int, dict[str, Any]]
    fct_daily_revenue: dict[tuple[date, int], dict[str, Any]]


def expected_marts(shop_db: Path, api_url: str, token: str) -> ExpectedMarts:
    with sqlite3.connect(shop_db) as connection:
        orders = connection.execute(
            "select order_id, customer_id, store_id, ordered_at, status, subtotal_cents,"
            " tax_cents, total_cents from orders"
        ).fetchall()
        items = dict(
            connection.execute(
                "select order_id, sum(quantity) from order_items group by order_id"
            ).fetchall()
        )
        # A soft-deleted customer is gone from the shop as far as the marts are concerned.
        customers = connection.execute(
            "select customer_id, name from customers where deleted_at is null"
        ).fetchall()

    rates = fetch_rates(api_url)
    paid_usd: dict[int, float] = defaultdict(float)
    for payment in fetch_payments(api_url, token):
        net = (payment["amount"] if payment["status"] == "succeeded" else 0) - payment[
            "amount_refunded"
        ]
        paid_on = _timestamp(payment["created_at"]).date()
        rate = 1.0 if payment["currency"] == "USD" else rates[(paid_on, payment["currency"])]
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
