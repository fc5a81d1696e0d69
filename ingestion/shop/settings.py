"""Defaults for the shop database source."""

TABLES: tuple[str, ...] = ("customers", "stores", "products", "orders", "order_items")
CURSOR_COLUMN = "updated_at"
# A row whose soft-delete column is set is deleted from the warehouse.
DELETED_COLUMN = "deleted_at"
# Re-read this many seconds behind the last high-water mark, so rows stamped before it but
# committed after the previous read are not skipped. At least the longest write transaction.
LAG_SECONDS = 300.0
# Rows per arrow batch: large enough to amortise per-batch overhead, small enough that
# memory stays flat however large a table grows.
CHUNK_SIZE = 50_000
# The driver for a URL that names only its dialect.
DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}
