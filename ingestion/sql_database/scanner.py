"""DuckDB's own PostgreSQL scanner, for the rest of a table read whole.

The scanner (the ``duckdb-ext-postgres`` wheel: the extension for this DuckDB, shipped on PyPI,
loaded from the wheel's folder and never downloaded) reads a table with several binary COPYs
over ranges of its pages under one exported snapshot and decodes them straight into DuckDB's
vectors, where the ADBC stream decodes into arrow in one thread: on two cores it reads 5M rows
in about the time the single COPY alone takes (bench/README). It is used only where it yields
exactly the values dlt's own read of the newest rows gave (``SCANNED_TYPES``).

The source's password goes to DuckDB as a temporary secret, never in the connection string:
the scanner's errors quote the string.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy import Table
from sqlalchemy.engine import URL

from tributary.warehouse import sql_string

# Column types (SQLAlchemy's reflected class names) the scanner and the ADBC read of the newest
# rows turn into the same values. Anything else — numeric, uuid, json, arrays, enums, char(n),
# time, interval, bytea, domains — keeps the table on the ADBC stream.
SCANNED_TYPES = frozenset(
    {
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "BOOLEAN",
        "VARCHAR",
        "TEXT",
        "REAL",
        "DOUBLE_PRECISION",
        "DATE",
        "TIMESTAMP",
    }
)


def extension_directory() -> Path:
    return Path(duckdb.__file__).parent.parent / "duckdb_ext" / "extensions"


@cache
def available() -> bool:
    """The scanner is installed for this DuckDB (a DuckDB upgraded past the wheel falls back
    to the ADBC stream rather than downloading anything)."""
    folder = extension_directory() / f"v{duckdb.__version__}"
    return any(folder.glob("*/postgres_scanner.duckdb_extension"))


def scannable(table: Table, kind: str | None) -> bool:
    """A plain table (``relkind`` ``r``) whose every column is of a type in ``SCANNED_TYPES``.
    The scanner splits a table by its pages: a partitioned table's parent has none, and it
    then reads page ranges up to 2³² and never ends; a view has none either."""
    return kind == "r" and all(
        type(column.type).__name__ in SCANNED_TYPES for column in table.columns
    )


def _quoted_option(value: object) -> str:
    """A value in libpq's keyword form: single quotes, backslash escapes."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def connection_string(url: URL) -> str:
    """libpq's keyword form of ``url`` without its password: host, port, database, user and
    the URL's own query options (``sslmode``, ``sslrootcert``, ``options``, …)."""
    values: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
    }
    options = {key: value for key, value in values.items() if value is not None}
    for key, value in url.query.items():
        options[key] = value[-1] if isinstance(value, tuple) else value
    return " ".join(f"{key}={_quoted_option(value)}" for key, value in options.items())


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextmanager
def attached(connection: Any, url: URL) -> Iterator[str]:
    """The source database attached read-only to ``connection`` (a DuckDB connection) while
    the block runs; yields the catalog's name. Detached, and its secret dropped, after."""
    name = f"tributary_source_{uuid.uuid4().hex[:12]}"
    connection.execute(f"set extension_directory = {sql_string(extension_directory())}")
    connection.execute("load postgres")
    options = "type postgres, read_only"
    if url.password:
        connection.execute(
            f"create temporary secret {name} (type postgres, password ?)", [url.password]
        )
        options += f", secret {name}"
    try:
        connection.execute(f"attach {sql_string(connection_string(url))} as {name} ({options})")
        try:
            yield name
        finally:
            connection.execute(f"detach database if exists {name}")
    finally:
        if url.password:
            connection.execute(f"drop temporary secret if exists {name}")
