"""The shop database's tables, portable across SQLite, PostgreSQL and MariaDB."""

from sqlalchemy import Column, ForeignKey, Index, Integer, MetaData, String, Table
from sqlalchemy import DateTime as _DateTime
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME

# Whole seconds, UTC, naive. On SQLite one text format for every writer and for the bound
# parameters of incremental reads, so string comparison of ``updated_at`` stays correct.
DateTime = _DateTime().with_variant(
    SQLITE_DATETIME(
        storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d",
        regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)",
    ),
    "sqlite",
)

metadata = MetaData()

customers = Table(
    "customers",
    metadata,
    Column("customer_id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("email", String(200), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("deleted_at", DateTime, nullable=True),
    Index("ix_customers_updated_at", "updated_at"),
)

stores = Table(
    "stores",
    metadata,
    Column("store_id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("city", String(100), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("ix_stores_updated_at", "updated_at"),
)

products = Table(
    "products",
    metadata,
    Column("product_id", Integer, primary_key=True, autoincrement=False),
    Column("sku", String(20), nullable=False),
    Column("name", String(100), nullable=False),
    Column("category", String(50), nullable=False),
    Column("price_cents", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("deleted_at", DateTime, nullable=True),
    Index("ix_products_updated_at", "updated_at"),
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", Integer, primary_key=True, autoincrement=False),
    Column("customer_id", Integer, ForeignKey("customers.customer_id"), nullable=False),
    Column("store_id", Integer, ForeignKey("stores.store_id"), nullable=False),
    Column("ordered_at", DateTime, nullable=False),
    Column("status", String(20), nullable=False),
    Column("subtotal_cents", Integer, nullable=False),
    Column("tax_cents", Integer, nullable=False),
    Column("total_cents", Integer, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("ix_orders_updated_at", "updated_at"),
)

order_items = Table(
    "order_items",
    metadata,
    Column("order_item_id", Integer, primary_key=True, autoincrement=False),
    Column("order_id", Integer, ForeignKey("orders.order_id"), nullable=False),
    Column("product_id", Integer, ForeignKey("products.product_id"), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price_cents", Integer, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("ix_order_items_updated_at", "updated_at"),
)

TABLES = (customers, stores, products, orders, order_items)
ORDER_STATUSES = ("placed", "shipped", "completed", "returned", "cancelled")

# The payment provider's own store (always a SQLite file behind the demo API).
PAYMENTS_DDL = """
create table if not exists payments (
    payment_id text primary key,
    order_id integer not null,
    method text not null,
    currency text not null,
    amount integer not null,
    amount_refunded integer not null default 0,
    status text not null,
    created_at text not null,
    updated_at text not null
);
create index if not exists ix_payments_updated on payments (updated_at, payment_id);
create index if not exists ix_payments_order on payments (order_id);
create table if not exists exchange_rates (
    date text not null,
    base text not null,
    quote text not null,
    rate real not null,
    primary key (date, quote)
);
"""
CURRENCIES = ("USD", "EUR", "GBP")
PAYMENT_METHODS = ("card", "paypal", "bank_transfer", "gift_card")
