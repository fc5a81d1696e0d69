"""Defaults for the shop database source."""

TABLES: tuple[str, ...] = ("customers", "stores", "products", "orders", "order_items")
CURSOR_COLUMN = "updated_at"
# Rows per arrow batch: large enough to amortise per-batch overhead, small enough that
# memory stays flat however large a table grows.
CHUNK_SIZE = 50_000
