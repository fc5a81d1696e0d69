"""Defaults for SQL database sources."""

# Rows per arrow batch: large enough to amortise per-batch overhead, small enough that
# memory stays flat however large a table grows.
CHUNK_SIZE = 50_000
# The driver for a URL that names only its dialect.
DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}
